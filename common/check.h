// Always-on invariant checks: a broken invariant logs and aborts, in every
// build, because continuing could corrupt a log or break agreement.
#pragma once

#include <cstdio>
#include <cstdlib>

#define ATOMQ_CHECK(cond, msg)                                                \
  do {                                                                        \
    if (!(cond)) {                                                            \
      std::fprintf(stderr, "%s:%d: ATOMQ_CHECK failed: %s: %s\n", __FILE__,   \
                   __LINE__, #cond, (msg));                                   \
      std::fflush(stderr);                                                    \
      std::abort();                                                           \
    }                                                                         \
  } while (0)
