// The web console (docs/design.md 9.1): each server serves it on
// --http_listen, over HTTPS with the server's own certificate unless the
// server runs --plaintext. Its pages are files built into the binary; its
// JSON API (proto/atomq/v1/console.proto) answers by calling the cluster's
// gRPC API as the browser's user: the bearer token the user signed in with
// goes with every call, so every role check and audit line is the gRPC
// API's own.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/access.h"
#include "common/tls.h"

namespace atomq::console {

struct ConsoleFlags {
  std::string http_listen;          // --http_listen; empty: no console
  bool http_allow_remote = false;   // --http_allow_remote: plaintext off loopback
  uint32_t http_threads = 4;        // --http_threads
  uint32_t body_bytes_max = 65536;  // --http_body_bytes_max
  uint32_t rpc_timeout_ms = 2000;   // --console_rpc_timeout_ms
  uint32_t sample_ms = 5000;        // --console_sample_ms
  uint32_t history_samples = 120;   // --console_history_samples
  uint32_t queues_max = 1000;       // --console_queues_max: queues one sample keeps
};

// Registers the flags above.
void AddConsoleFlags(CLI::App& app, ConsoleFlags* flags);

// INVALID_ARGUMENT for a --http_listen that is not host:port, or that is
// plain HTTP (a --plaintext server) off loopback without
// --http_allow_remote: tokens would cross the network in the clear.
absl::Status CheckConsoleFlags(const ConsoleFlags& flags, const TlsFlags& tls);

struct ConsoleOptions {
  ConsoleFlags flags;
  TlsFlags tls;
  std::shared_ptr<const Access> access;
  std::string node_id;
  std::string node_role;  // coordinator or participant
  std::string version;
  // The nodes it knows, id -> their members' client addresses ("a|b|c").
  std::map<std::string, std::string> coordinators;
  std::map<std::string, std::string> participants;
  // Its own group's replicas' peer addresses (empty: not replicated).
  std::vector<std::string> group_peers;
};

class ConsoleServer {
 public:
  // Listens on --http_listen and starts sampling the queues. Null when the
  // flag is empty; FAILED_PRECONDITION when it cannot be bound or the
  // certificate cannot be read.
  static absl::StatusOr<std::unique_ptr<ConsoleServer>> Start(ConsoleOptions options);
  ~ConsoleServer();

  class Impl;

 private:
  explicit ConsoleServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace atomq::console
