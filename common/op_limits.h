// The size limits of one message (an enqueue, a Send), checked the same way
// and worded the same way wherever a message enters: the coordinator's
// Execute, a participant's Prepare, Stage and Send.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/map.h"

namespace atomq {

struct MessageLimits {
  uint64_t payload_bytes_max = 1 << 20;  // --payload_bytes_max
  uint64_t headers_max = 64;             // --headers_max
};

// INVALID_ARGUMENT "<at>payload is N bytes; at most --payload_bytes_max=M"
// or "<at>N headers; at most --headers_max=M"; OK within the limits. `at`
// names the op ("op 3: ") or is empty.
absl::Status CheckMessageLimits(const MessageLimits& limits, absl::string_view at,
                                const std::string& payload,
                                const google::protobuf::Map<std::string, std::string>& headers);

// INVALID_ARGUMENT "N ops; at most --ops_per_txn_max=M" past the limit.
absl::Status CheckOpCount(uint64_t ops, uint64_t ops_per_txn_max);

}  // namespace atomq
