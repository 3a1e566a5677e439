// Status helpers. Debian's Abseil (20220623) has no RETURN_IF_ERROR.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ATOMQ_CONCAT_INNER_(a, b) a##b
#define ATOMQ_CONCAT_(a, b) ATOMQ_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define ATOMQ_RETURN_IF_ERROR(expr)                  \
  do {                                               \
    ::absl::Status atomq_status_ = (expr);           \
    if (!atomq_status_.ok()) return atomq_status_;   \
  } while (0)

// `lhs = value of expr` (an absl::StatusOr<T>), or returns its status.
#define ATOMQ_ASSIGN_OR_RETURN(lhs, expr) \
  ATOMQ_ASSIGN_OR_RETURN_IMPL_(ATOMQ_CONCAT_(atomq_sor_, __LINE__), lhs, expr)
#define ATOMQ_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
