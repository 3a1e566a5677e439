#include "common/loop_unary.h"

namespace atomq {

grpc::Status MalformedRequest(const std::string& method) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("the request is not a valid message for ", method,
                                   ": not protobuf, or a string field (an id, a queue name, a "
                                   "header key) that is not UTF-8"));
}

}  // namespace atomq
