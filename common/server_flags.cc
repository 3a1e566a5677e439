#include "common/server_flags.h"

#include "absl/strings/str_cat.h"
#include "common/server_util.h"
#include "common/validate.h"

namespace atomq {

void AddServerFlags(CLI::App& app, ServerFlags* f, const std::string& id_help,
                    const std::string& data_dir_help) {
  app.add_option("--id", f->id, id_help)->required();
  app.add_option("--listen", f->listen, "host:port to serve gRPC on")->required();
  app.add_option("--data_dir", f->data_dir, data_dir_help)->required();
  app.add_option("--metrics_listen", f->metrics_listen,
                 "host:port to serve Prometheus /metrics on (default: off)");
  app.add_option("--lmdb_map_size_mb", f->lmdb.map_size_mb, "LMDB map size (the store's largest size)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 24))
      ->capture_default_str();
  app.add_option("--lazy_write_delay_ms", f->lmdb.lazy_delay_ms,
                 "how long a write nobody waits on may wait to share an fsync")
      ->check(CLI::Range(0u, 10000u))
      ->capture_default_str();
  app.add_option("--group_commit_batches_max", f->lmdb.batches_per_commit_max,
                 "batches applied in one LMDB transaction / fsync")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  app.add_option("--message_bytes_max", f->message_bytes_max, "largest gRPC request accepted")
      ->check(CLI::Range(1024u, 1u << 30))
      ->capture_default_str();
}

void AddRetentionFlags(CLI::App& app, const std::string& what, uint64_t* retention_ms,
                       uint32_t* gc_interval_ms, uint32_t* gc_batch_max) {
  app.add_option("--retention_ms", *retention_ms,
                 what + " are kept this long, then erased")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--gc_interval_ms", *gc_interval_ms,
                 "how often to erase " + what + " past --retention_ms")
      ->check(CLI::Range(1u, 3600000u))
      ->capture_default_str();
  app.add_option("--gc_batch_max", *gc_batch_max, what + " erased per look")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
}

absl::StatusOr<Store> OpenStore(ServerFlags& f, std::vector<std::string> dbs,
                                const std::string& meta_db) {
  if (absl::Status st = ValidateNodeId(f.id); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--id: ", st.message()));
  }
  f.lmdb.dir = f.data_dir;
  f.lmdb.dbs = std::move(dbs);
  Store out;
  absl::StatusOr<std::unique_ptr<Storage>> storage = OpenLmdbStorage(f.lmdb);
  if (!storage.ok()) return storage.status();
  out.storage = std::move(*storage);
  absl::StatusOr<v1::MetaRecord> meta = BumpBootCount(out.storage.get(), meta_db, f.id, f.data_dir);
  if (!meta.ok()) return meta.status();
  out.meta = *meta;
  return out;
}

}  // namespace atomq
