#include "common/op_limits.h"

#include "absl/strings/str_cat.h"

namespace atomq {

absl::Status CheckMessageLimits(const MessageLimits& limits, absl::string_view at,
                                const std::string& payload,
                                const google::protobuf::Map<std::string, std::string>& headers) {
  if (payload.size() > limits.payload_bytes_max) {
    return absl::InvalidArgumentError(
        absl::StrCat(at, "payload is ", payload.size(),
                     " bytes; at most --payload_bytes_max=", limits.payload_bytes_max));
  }
  if (headers.size() > limits.headers_max) {
    return absl::InvalidArgumentError(
        absl::StrCat(at, headers.size(), " headers; at most --headers_max=", limits.headers_max));
  }
  return absl::OkStatus();
}

absl::Status CheckOpCount(uint64_t ops, uint64_t ops_per_txn_max) {
  if (ops <= ops_per_txn_max) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(ops, " ops; at most --ops_per_txn_max=", ops_per_txn_max));
}

}  // namespace atomq
