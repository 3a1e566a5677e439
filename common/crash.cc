#include "common/crash.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"

namespace atomq {
namespace {
std::string armed_point;
int armed_count = 1;
std::atomic<int> hits{0};
}  // namespace

void InitCrashPoints() {
  const char* v = std::getenv("ATOMQ_CRASH_AT");
  if (v == nullptr || *v == '\0') return;
  std::string s(v);
  size_t colon = s.rfind(':');
  int n = 0;
  if (colon != std::string::npos && absl::SimpleAtoi(s.substr(colon + 1), &n) && n > 0) {
    armed_count = n;
    s.resize(colon);
  }
  armed_point = s;
  std::fprintf(stderr, "crash point armed: %s (hit %d)\n", armed_point.c_str(), armed_count);
}

bool CrashArmed(std::string_view point) {
  return !armed_point.empty() && point == armed_point;
}

void CrashPoint(std::string_view point) {
  if (armed_point.empty() || point != armed_point) return;
  if (hits.fetch_add(1) + 1 < armed_count) return;
  std::fprintf(stderr, "crash point reached: %s\n", armed_point.c_str());
  std::fflush(stderr);
  _exit(kCrashExitCode);
}

}  // namespace atomq
