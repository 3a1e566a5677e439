#include "common/log.h"

#include <cstdio>
#include <ctime>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace atomq {

void LogLine(std::string_view line) {
  std::string ts = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  std::string out = absl::StrFormat("%s %s\n", ts, line);
  std::fwrite(out.data(), 1, out.size(), stderr);
}

}  // namespace atomq
