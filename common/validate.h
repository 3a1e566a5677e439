// Validation of identifiers that cross a process boundary.
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace atomq {

inline constexpr size_t kTxnIdBytesMax = 128;
inline constexpr size_t kNodeIdBytesMax = 128;
inline constexpr size_t kQueueNameBytesMax = 255;

// 1..kTxnIdBytesMax bytes of [A-Za-z0-9._:-]; INVALID_ARGUMENT otherwise,
// with a message that names `what` and the offending byte.
absl::Status ValidateTxnId(std::string_view id);
// Participant and coordinator ids: same alphabet, 1..kNodeIdBytesMax.
absl::Status ValidateNodeId(std::string_view id);
// Queue names: same alphabet, 1..kQueueNameBytesMax.
absl::Status ValidateQueueName(std::string_view name);

}  // namespace atomq
