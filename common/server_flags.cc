#include "common/server_flags.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/identity.h"
#include "common/log.h"
#include "common/server_util.h"
#include "common/status.h"
#include "common/validate.h"

namespace atomq {

void AddServerFlags(CLI::App& app, ServerFlags* f, const std::string& id_help,
                    const std::string& data_dir_help) {
  app.add_option("--id", f->id, id_help)->required();
  app.add_option("--listen", f->listen, "host:port to serve gRPC on")->required();
  app.add_option("--data_dir", f->data_dir, data_dir_help)->required();
  app.add_option("--metrics_listen", f->metrics_listen,
                 "host:port to serve Prometheus /metrics on (default: off)");
  AddCheckedFlag(app, "--lmdb_map_size_mb", f->lmdb.map_size_mb,
                 "LMDB map size (the store's largest size)",
                 CLI::Range(uint64_t{1}, uint64_t{1} << 24));
  AddCheckedFlag(app, "--lazy_write_delay_ms", f->lmdb.lazy_delay_ms,
                 "how long a write nobody waits on may wait to share an fsync",
                 CLI::Range(0u, 10000u));
  AddCheckedFlag(app, "--group_commit_batches_max", f->lmdb.batches_per_commit_max,
                 "batches applied in one LMDB transaction / fsync", CLI::Range(1u, 1000000u));
  AddCheckedFlag(app, "--message_bytes_max", f->message_bytes_max, "largest gRPC request accepted",
                 CLI::Range(1024u, 1u << 30));
  app.add_option("--cluster_id", f->cluster_id,
                 "the cluster this node belongs to; recorded when its data dir is initialised "
                 "and checked at every later start")
      ->capture_default_str();
  AddCheckedFlag(app, "--channels_max", f->channels_max,
                 "outbound gRPC channels kept open (the least recently used is closed past it)",
                 CLI::Range(1u, 1000000u));
  AddCheckedFlag(app, "--loop_threads", f->loop_threads,
                 "threads that run every gRPC event and the protocol on the same thread "
                 "(more than one trade the poller role on every event: see README)",
                 CLI::Range(1u, 64u));
  AddTlsFlags(app, &f->tls, /*server=*/true);
  app.add_flag("--metrics_allow_remote", f->metrics_remote,
               "serve /metrics (plain HTTP) on a non-loopback --metrics_listen too");
  AddCheckedFlag(app, "--list_limit_max", f->list_limit_max,
                 "rows in one ListTransactions page (a larger limit asked is cut to it)",
                 CLI::Range(1u, 1000000u));
  AddCheckedFlag(app, "--drain_ms", f->drain_ms,
                 "at shutdown, health reports NOT_SERVING this long while calls are still "
                 "served",
                 CLI::Range(0u, 600000u));
  app.add_flag("--init", f->init,
               "initialise a data dir that is not empty but has no data file (a missing or "
               "empty dir is initialised on its first start without it)");
  AddAccessFlags(app, &f->access);
}

void AddOpLimitFlags(CLI::App& app, const std::string& ops_help, const std::string& item,
                     const OpLimitFields& to) {
  AddCheckedFlag(app, "--ops_per_txn_max", *to.ops_per_txn_max, ops_help, CLI::Range(1u, 1000000u));
  AddCheckedFlag(app, "--payload_bytes_max", *to.payload_bytes_max,
                 "bytes of one " + item + ": its payload and its headers' keys and values together",
                 CLI::Range(0u, 64u << 20));
  AddCheckedFlag(app, "--headers_max", *to.headers_max, "headers of one " + item,
                 CLI::Range(0u, 100000u));
  AddCheckedFlag(app, "--header_bytes_max", *to.header_bytes_max,
                 "bytes of the headers' keys and values of one " + item, CLI::Range(0u, 64u << 20));
  AddCheckedFlag(app, "--txn_bytes_max", *to.txn_bytes_max,
                 "bytes of all messages of one transaction (payloads and headers)",
                 CLI::Range(uint64_t{0}, uint64_t{1} << 40));
}

void AddResendFlags(CLI::App& app, const std::string& initial_help, const std::string& max_help,
                    uint32_t* resend_initial_ms, uint32_t* resend_max_ms) {
  AddCheckedFlag(app, "--resend_initial_ms", *resend_initial_ms, initial_help,
                 CLI::Range(1u, 600000u));
  AddCheckedFlag(app, "--resend_max_ms", *resend_max_ms, max_help, CLI::Range(1u, 3600000u));
}

void AddRetentionFlags(CLI::App& app, const std::string& what, uint64_t* retention_ms,
                       uint32_t* gc_interval_ms, uint32_t* gc_batch_max) {
  AddCheckedFlag(app, "--retention_ms", *retention_ms, what + " are kept this long, then erased",
                 CLI::Range(uint64_t{1}, uint64_t{1} << 40));
  AddCheckedFlag(app, "--gc_interval_ms", *gc_interval_ms,
                 "how often to erase " + what + " past --retention_ms", CLI::Range(1u, 3600000u));
  AddCheckedFlag(app, "--gc_batch_max", *gc_batch_max, what + " erased per look",
                 CLI::Range(1u, 1000000u));
}

bool IsLoopbackAddress(const std::string& host_port) {
  for (const char* local : {"127.", "localhost:", "[::1]:"}) {
    if (absl::StartsWith(host_port, local)) return true;
  }
  return false;
}

// /metrics is plain HTTP: on loopback only unless asked otherwise.
absl::Status CheckMetricsListen(const ServerFlags& f) {
  if (f.metrics_listen.empty() || f.metrics_remote) return absl::OkStatus();
  const std::string& a = f.metrics_listen;
  if (IsLoopbackAddress(a)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("--metrics_listen=", a,
                   " is not a loopback address: /metrics is plain HTTP; add "
                   "--metrics_allow_remote to serve it there anyway"));
}

absl::StatusOr<Store> OpenStore(ServerFlags& f, std::vector<std::string> dbs,
                                const std::string& meta_db) {
  if (absl::Status st = ValidateNodeId(f.id); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--id: ", st.message()));
  }
  ATOMQ_RETURN_IF_ERROR(CheckTlsFlags(f.tls, /*server=*/true));
  ATOMQ_RETURN_IF_ERROR(CheckMetricsListen(f));
  ATOMQ_ASSIGN_OR_RETURN(std::shared_ptr<const Access> access,
                         LoadAccess(f.access, f.tls.plaintext));
  if (absl::Status st = ValidateNodeId(f.cluster_id); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--cluster_id: ", st.message()));
  }
  ATOMQ_ASSIGN_OR_RETURN(const bool fresh, MayCreateDataFile(f.data_dir, f.init));
  f.lmdb.dir = f.data_dir;
  f.lmdb.dbs = std::move(dbs);
  f.lmdb.create = fresh;
  Store out;
  ATOMQ_ASSIGN_OR_RETURN(out.storage, OpenLmdbStorage(f.lmdb));
  const IdentityOptions identity{f.id, f.cluster_id, f.data_dir, fresh,
                                 absl::ToUnixMillis(absl::Now())};
  ATOMQ_ASSIGN_OR_RETURN(out.meta, StartFromIdentity(out.storage.get(), meta_db, identity));
  out.access = std::move(access);
  return out;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> StartMetrics(const ServerFlags& f,
                                                            std::function<std::string()> render) {
  if (f.metrics_listen.empty()) return std::unique_ptr<MetricsServer>();
  return MetricsServer::Start(f.metrics_listen, std::move(render));
}

void AwaitShutdownSignal() {
  int sig = WaitForSignal();
  LogLine(absl::StrCat("signal ", sig, ": shutting down"));
}

void Drain(const ServerFlags& f, LoopHealth* health) {
  health->Set(false);
  if (f.drain_ms == 0) return;
  LogLine(absl::StrCat("draining for ", f.drain_ms, " ms (health: NOT_SERVING)"));
  absl::SleepFor(absl::Milliseconds(f.drain_ms));
}

}  // namespace atomq
