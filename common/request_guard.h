// Requests that are not what their method takes (not protobuf at all, or a
// string field that is not UTF-8) never reach a handler: gRPC's callback API
// answers them UNIMPLEMENTED with an empty message, which reads as "this
// server lacks the method". This interceptor turns that answer into
// INVALID_ARGUMENT naming the method, so the client learns what it did wrong.
// Unary methods only: for a stream, gRPC reports a message it cannot parse
// to the handler as the end of the client's messages (docs/design.md 11).
#pragma once

#include <memory>

#include "grpcpp/support/server_interceptor.h"

namespace atomq {

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MalformedRequestGuard();

}  // namespace atomq
