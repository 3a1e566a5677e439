#include "common/op_limits.h"

#include "absl/strings/str_cat.h"

namespace atomq {

uint64_t HeaderBytes(const Headers& headers) {
  uint64_t bytes = 0;
  for (const auto& [k, v] : headers) bytes += k.size() + v.size();
  return bytes;
}

uint64_t MessageBytes(const std::string& payload, const Headers& headers) {
  return payload.size() + HeaderBytes(headers);
}

uint64_t EnqueueBytes(const google::protobuf::RepeatedPtrField<v1::Op>& ops) {
  uint64_t bytes = 0;
  for (const v1::Op& op : ops) {
    if (op.has_enqueue()) bytes += MessageBytes(op.enqueue().payload(), op.enqueue().headers());
  }
  return bytes;
}

absl::Status CheckMessageLimits(const MessageLimits& limits, absl::string_view at,
                                const std::string& payload, const Headers& headers) {
  if (headers.size() > limits.headers_max) {
    return absl::InvalidArgumentError(
        absl::StrCat(at, headers.size(), " headers; at most --headers_max=", limits.headers_max));
  }
  const uint64_t header_bytes = HeaderBytes(headers);
  if (header_bytes > limits.header_bytes_max) {
    return absl::InvalidArgumentError(
        absl::StrCat(at, "headers are ", header_bytes,
                     " bytes; at most --header_bytes_max=", limits.header_bytes_max));
  }
  const uint64_t bytes = payload.size() + header_bytes;
  if (bytes > limits.payload_bytes_max) {
    return absl::InvalidArgumentError(
        absl::StrCat(at, headers.empty() ? "payload is " : "payload and headers are ", bytes,
                     " bytes; at most --payload_bytes_max=", limits.payload_bytes_max));
  }
  return absl::OkStatus();
}

absl::Status CheckTxnBytes(const MessageLimits& limits, absl::string_view what, uint64_t bytes) {
  if (bytes <= limits.txn_bytes_max) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      what, bytes, " bytes of messages; at most --txn_bytes_max=", limits.txn_bytes_max));
}

absl::Status CheckOpCount(uint64_t ops, uint64_t ops_per_txn_max) {
  if (ops <= ops_per_txn_max) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(ops, " ops; at most --ops_per_txn_max=", ops_per_txn_max));
}

}  // namespace atomq
