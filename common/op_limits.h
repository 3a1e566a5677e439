// The size limits of one message (an enqueue, a Send) and of one
// transaction, checked the same way and worded the same way wherever a
// message enters: the coordinator's Execute, a participant's Prepare, Stage
// and Send.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "atomq/v1/types.pb.h"
#include "google/protobuf/map.h"
#include "google/protobuf/repeated_ptr_field.h"

namespace atomq {

struct MessageLimits {
  // --payload_bytes_max: a message's bytes, its payload and its headers'
  // keys and values together.
  uint64_t payload_bytes_max = 1 << 20;
  uint64_t headers_max = 64;             // --headers_max: headers of one message
  uint64_t header_bytes_max = 64 << 10;  // --header_bytes_max: their keys and values
  uint64_t txn_bytes_max = 64 << 20;     // --txn_bytes_max: messages of one transaction
};

using Headers = google::protobuf::Map<std::string, std::string>;

// Keys and values of `headers`.
uint64_t HeaderBytes(const Headers& headers);
// What a message counts against --payload_bytes_max and --txn_bytes_max:
// its payload and HeaderBytes.
uint64_t MessageBytes(const std::string& payload, const Headers& headers);

// MessageBytes of the enqueues among `ops`.
uint64_t EnqueueBytes(const google::protobuf::RepeatedPtrField<v1::Op>& ops);

// INVALID_ARGUMENT, first of "<at>N headers; at most --headers_max=M",
// "<at>headers are N bytes; at most --header_bytes_max=M", "<at>payload is N
// bytes; at most --payload_bytes_max=M" (or "payload and headers are N
// bytes" when it has headers); OK within the limits. `at` names the op
// ("op 3: ") or is empty.
absl::Status CheckMessageLimits(const MessageLimits& limits, absl::string_view at,
                                const std::string& payload, const Headers& headers);

// INVALID_ARGUMENT "<what> N bytes of messages; at most --txn_bytes_max=M"
// when the MessageBytes of a transaction's enqueues (`bytes`) pass it.
absl::Status CheckTxnBytes(const MessageLimits& limits, absl::string_view what, uint64_t bytes);

// INVALID_ARGUMENT "N ops; at most --ops_per_txn_max=M" past the limit.
absl::Status CheckOpCount(uint64_t ops, uint64_t ops_per_txn_max);

}  // namespace atomq
