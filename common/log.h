// One-line logs to stderr with a UTC timestamp. Decisions are logged one
// line each; nothing else on the hot path logs.
#pragma once

#include <functional>
#include <string_view>

namespace atomq {

void LogLine(std::string_view line);

// Where LogLine's lines go instead of stderr (the simulator's trace); null
// restores stderr. Set it before any thread logs.
void SetLogSink(std::function<void(std::string_view line)> sink);

}  // namespace atomq
