// One-line logs to stderr with a UTC timestamp. Decisions are logged one
// line each; nothing else on the hot path logs.
#pragma once

#include <string_view>

namespace atomq {

void LogLine(std::string_view line);

}  // namespace atomq
