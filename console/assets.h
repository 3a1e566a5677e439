// The console's pages, scripts and styles (console/assets), built into the
// binary: nothing is fetched from outside the machine.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace atomq::console {

// The bytes of console/assets/NAME for `path` "/NAME"; nullopt for any
// other path.
std::optional<std::string_view> Asset(const std::string& path);

}  // namespace atomq::console
