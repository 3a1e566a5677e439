// Flags and start-up steps both servers share: identity, listening address,
// the LMDB store, gRPC message size and the metrics endpoint.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "atomq/v1/records.pb.h"
#include "common/storage.h"

namespace atomq {

struct ServerFlags {
  std::string id;
  std::string listen;
  std::string data_dir;
  std::string metrics_listen;  // empty: no /metrics
  LmdbOptions lmdb;            // dir and dbs are set by OpenStore
  uint32_t message_bytes_max = 64 << 20;
  std::string cluster_id = "atomq";  // --cluster_id
  bool init = false;                 // --init
};

// Registers --id, --listen, --data_dir, --metrics_listen, --lmdb_map_size_mb,
// --lazy_write_delay_ms, --group_commit_batches_max, --message_bytes_max,
// --cluster_id and --init.
void AddServerFlags(CLI::App& app, ServerFlags* flags, const std::string& id_help,
                    const std::string& data_dir_help);

// Registers --retention_ms, --gc_interval_ms and --gc_batch_max: how long
// finished-transaction state (`what`) is kept and how it is erased.
void AddRetentionFlags(CLI::App& app, const std::string& what, uint64_t* retention_ms,
                       uint32_t* gc_interval_ms, uint32_t* gc_batch_max);

struct Store {
  std::unique_ptr<Storage> storage;
  v1::MetaRecord meta;  // with this start's boot count
};

// Validates --id, opens the LMDB environment with `dbs`, checks (or on a
// first start writes) the directory's identity in `meta_db` and raises the
// boot count (common/identity.h). The error message is ready to print.
absl::StatusOr<Store> OpenStore(ServerFlags& flags, std::vector<std::string> dbs,
                                const std::string& meta_db);

}  // namespace atomq
