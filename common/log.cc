#include "common/log.h"

#include <cstdio>
#include <ctime>
#include <string>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace atomq {
namespace {
std::function<void(std::string_view)>& Sink() {
  static std::function<void(std::string_view)> sink;
  return sink;
}
}  // namespace

void SetLogSink(std::function<void(std::string_view line)> sink) { Sink() = std::move(sink); }

void LogLine(std::string_view line) {
  if (Sink()) return Sink()(line);
  std::string ts = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  std::string out = absl::StrFormat("%s %s\n", ts, line);
  std::fwrite(out.data(), 1, out.size(), stderr);
}

}  // namespace atomq
