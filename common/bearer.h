// The bearer token a process presents when it dials (docs/design.md section
// 11): atomqctl's and atomq-bench's calls, and a server's own calls to
// participants, peers and coordinators when it has no client certificate.
// Every channel made by DialChannel sends it as "authorization: Bearer T".
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/support/client_interceptor.h"

namespace atomq {

// Whether a file of secrets (a token, a tokens table) at `path` is kept
// private: readable by its owner only, or, when root owns it, by its group
// too (how Kubernetes mounts a Secret for a pod's fsGroup; PostgreSQL takes
// its key file the same way). FAILED_PRECONDITION saying how to fix it.
absl::Status CheckPrivateFile(const std::string& path);

// The token in `path`: its one non-empty, non-comment line (no white space
// inside). FAILED_PRECONDITION when the file cannot be read or others may
// read it (CheckPrivateFile); INVALID_ARGUMENT (naming file and line) when it holds no token,
// several, or a line with white space (a tokens table given by mistake).
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// The token of `token_file` when given, else of the environment's
// ATOMQ_TOKEN when `from_env` (clients), else none; then SetDialToken.
absl::Status SetDialTokenFrom(const std::string& token_file, bool from_env);

// What DialChannel sends from now on; empty: no authorization metadata.
void SetDialToken(std::string token);

// Adds "authorization: Bearer `token`" to every call of a channel.
std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface> BearerInterceptor(
    std::string token);

// A channel to `address` with DialCredentials() (common/tls.h) and, when a
// dial token is set, BearerInterceptor of it.
std::shared_ptr<grpc::Channel> DialChannel(const std::string& address,
                                           const grpc::ChannelArguments& args);

}  // namespace atomq
