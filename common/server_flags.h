// Flags and start-up and shutdown steps both servers share: identity,
// listening address, the LMDB store, gRPC message size, the metrics endpoint,
// and the flags of limits both servers have.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "atomq/v1/records.pb.h"
#include "common/access.h"
#include "common/loop_health.h"
#include "common/metrics.h"
#include "common/storage.h"
#include "common/tls.h"
#include "grpcpp/grpcpp.h"

namespace atomq {

struct ServerFlags {
  std::string id;
  std::string listen;
  std::string data_dir;
  std::string metrics_listen;  // empty: no /metrics
  LmdbOptions lmdb;            // dir and dbs are set by OpenStore
  uint32_t message_bytes_max = 64 << 20;
  TlsFlags tls;                      // --tls_*, --plaintext
  bool metrics_remote = false;       // --metrics_allow_remote
  std::string cluster_id = "atomq";  // --cluster_id
  bool init = false;                 // --init
  uint32_t list_limit_max = 1000;    // --list_limit_max: rows in one ListTransactions page
  // --drain_ms: at SIGINT/SIGTERM, how long health reports NOT_SERVING while
  // calls are still served, before the server stops.
  uint32_t drain_ms = 0;
  uint32_t channels_max = 1024;  // --channels_max: outbound channels kept (ChannelCache)
  uint32_t loop_threads = 1;     // --loop_threads: threads of the RpcLoop
  AccessFlags access;            // --roles_file, --tokens_file, --allow_anyone, --token_file
};

// Registers an option whose value `check` validates and whose default shows
// in --help.
template <typename T>
CLI::Option* AddCheckedFlag(CLI::App& app, const std::string& name, T& value,
                            const std::string& help, const CLI::Validator& check) {
  return app.add_option(name, value, help)->check(check)->capture_default_str();
}

// Registers --id, --listen, --data_dir, --metrics_listen, --lmdb_map_size_mb,
// --lazy_write_delay_ms, --group_commit_batches_max, --message_bytes_max,
// --cluster_id, --init, --list_limit_max, --drain_ms, --channels_max,
// --loop_threads and the
// access flags (common/access.h).
void AddServerFlags(CLI::App& app, ServerFlags* flags, const std::string& id_help,
                    const std::string& data_dir_help);

// Where AddOpLimitFlags stores what it parses: fields of a core's Config.
struct OpLimitFields {
  uint32_t* ops_per_txn_max;
  uint32_t* payload_bytes_max;
  uint32_t* headers_max;
  uint32_t* header_bytes_max;
  uint64_t* txn_bytes_max;
};

// Registers --ops_per_txn_max ("ops_help"), --payload_bytes_max,
// --headers_max, --header_bytes_max and --txn_bytes_max: the size of one
// transaction and of each of its `item`s ("enqueue", "message"), counted as
// common/op_limits.h says.
void AddOpLimitFlags(CLI::App& app, const std::string& ops_help, const std::string& item,
                     const OpLimitFields& to);

// Registers --resend_initial_ms and --resend_max_ms: the backoff of a
// message repeated until answered.
void AddResendFlags(CLI::App& app, const std::string& initial_help, const std::string& max_help,
                    uint32_t* resend_initial_ms, uint32_t* resend_max_ms);

// Registers --retention_ms, --gc_interval_ms and --gc_batch_max: how long
// finished-transaction state (`what`) is kept and how it is erased.
void AddRetentionFlags(CLI::App& app, const std::string& what, uint64_t* retention_ms,
                       uint32_t* gc_interval_ms, uint32_t* gc_batch_max);

struct Store {
  std::unique_ptr<Storage> storage;
  v1::MetaRecord meta;                   // with this start's boot count
  std::shared_ptr<const Access> access;  // from the access flags
};

// Whether a host:port names a loopback address (127.x, localhost, [::1]):
// where a plain-HTTP endpoint may listen without being asked to go wider.
bool IsLoopbackAddress(const std::string& host_port);

// Validates --id, the TLS flags and --metrics_listen, loads the access flags
// (LoadAccess, common/access.h: the dial token too), opens the LMDB environment with `dbs`, checks
// (or on a first start writes) the directory's identity in `meta_db` and raises the boot count
// (common/identity.h). The error message is ready to print.
absl::StatusOr<Store> OpenStore(ServerFlags& flags, std::vector<std::string> dbs,
                                const std::string& meta_db);

// Serves /metrics on --metrics_listen with what `render` returns; null when
// the flag is empty. The error message is ready to print.
absl::StatusOr<std::unique_ptr<MetricsServer>> StartMetrics(const ServerFlags& flags,
                                                            std::function<std::string()> render);

// Blocks until SIGINT or SIGTERM (see WaitForSignal) and logs that the
// server shuts down.
void AwaitShutdownSignal();

// After AwaitShutdownSignal: `health` says NOT_SERVING (load balancers stop
// sending) while the server still serves calls for --drain_ms.
void Drain(const ServerFlags& flags, LoopHealth* health);

}  // namespace atomq
