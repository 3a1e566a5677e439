// Validation of identifiers that cross a process boundary.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

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

// A ListTransactions page: how many rows it may hold (`limit` asked; 0 or
// above `limit_max` give `limit_max`, which must be > 0), once its
// page_token is empty or a transaction id (where the page before ended);
// INVALID_ARGUMENT otherwise.
absl::StatusOr<uint32_t> PageLimit(uint32_t limit, uint32_t limit_max, std::string_view page_token);

// `s` made safe to echo in an error message or a log line: bytes outside
// printable ASCII (newlines, quotes' escapes, non-UTF-8) become \xNN, and
// past `max_bytes` of input it ends in "...(N bytes)". A log line then cannot
// be forged by its contents, nor a reply swollen by an echo.
std::string Clip(absl::string_view s, size_t max_bytes = 64);

// Equal contents, in time that depends only on the lengths: for secrets a
// caller presents (bearer tokens, lease tokens).
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

}  // namespace atomq
