// atomq-coordinator: drives 2PC/3PC across participants; its decision log is
// an LMDB environment in --data_dir.
#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/crash.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/server_util.h"
#include "common/validate.h"
#include "coordinator/server/coordinator_server.h"

namespace {

int Fail(const std::string& msg) {
  std::fprintf(stderr, "atomq-coordinator: %s\n", msg.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  atomq::InitSignals();
  atomq::InitCrashPoints();
  // Abseil's deadlock detector keeps a lock graph on every Mutex operation;
  // the lock order here is fixed and small, so that work buys nothing.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  atomq::LmdbOptions lo;
  CLI::App app{"atomq-coordinator: atomic enqueue across queue nodes (2PC / 3PC)"};
  std::string id, listen, advertise, data_dir, participants, protocol = "2pc";
  atomq::coordinator::Config cfg;
  atomq::coordinator::ServerOptions opts;
  uint64_t map_size_mb = 65536;
  uint32_t batches_per_commit_max = 4096;
  uint32_t message_bytes_max = 64 << 20;
  app.add_option("--id", id, "coordinator id; minted transaction ids begin with it")->required();
  app.add_option("--listen", listen, "host:port to serve gRPC on")->required();
  app.add_option("--advertise", advertise,
                 "host:port participants reach this coordinator at (default: --listen)");
  app.add_option("--data_dir", data_dir, "directory of the decision log (LMDB)")->required();
  app.add_option("--participants", participants, "id=host:port,... of every participant")
      ->required();
  app.add_option("--default_protocol", protocol, "2pc or 3pc, for requests that name none")
      ->check(CLI::IsMember({"2pc", "3pc"}))
      ->capture_default_str();
  app.add_option("--txn_timeout_ms", cfg.txn_timeout_ms,
                 "default time to collect votes before aborting")
      ->check(CLI::Range(1u, 3600000u))
      ->capture_default_str();
  app.add_option("--txn_timeout_ms_max", cfg.txn_timeout_ms_max, "largest timeout a client may ask")
      ->check(CLI::Range(1u, 3600000u))
      ->capture_default_str();
  app.add_option("--ops_per_txn_max", cfg.ops_per_txn_max, "ops in one transaction")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  app.add_option("--payload_bytes_max", cfg.payload_bytes_max, "payload bytes of one enqueue")
      ->check(CLI::Range(0u, 64u << 20))
      ->capture_default_str();
  app.add_option("--headers_max", cfg.headers_max, "headers of one enqueue")
      ->check(CLI::Range(0u, 100000u))
      ->capture_default_str();
  app.add_option("--txns_in_flight_max", cfg.txns_in_flight_max,
                 "transactions undecided or unanswered at once; more get RESOURCE_EXHAUSTED")
      ->check(CLI::Range(1u, 10000000u))
      ->capture_default_str();
  app.add_option("--resend_initial_ms", cfg.resend_initial_ms,
                 "first wait before resending an unacknowledged commit/abort")
      ->check(CLI::Range(1u, 600000u))
      ->capture_default_str();
  app.add_option("--resend_max_ms", cfg.resend_max_ms, "longest wait between resends")
      ->check(CLI::Range(1u, 3600000u))
      ->capture_default_str();
  app.add_option("--termination_after_ms", cfg.termination_after_ms,
                 "3PC: precommitted this long without a decision, run a termination round")
      ->check(CLI::Range(1u, 3600000u))
      ->capture_default_str();
  app.add_option("--finished_cache_max", cfg.finished_cache_max,
                 "finished transactions kept in memory (older ones are read from disk)")
      ->check(CLI::Range(0u, 100000000u))
      ->capture_default_str();
  app.add_option("--rpc_timeout_ms", opts.rpc_timeout_ms, "deadline of one participant RPC")
      ->check(CLI::Range(1u, 600000u))
      ->capture_default_str();
  app.add_option("--participant_calls_in_flight_max", opts.participant_calls_in_flight_max,
                 "Batch calls under way to one participant (messages meanwhile are batched)")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  app.add_option("--batch_items_max", opts.batch_items_max, "protocol messages in one Batch call")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  app.add_option("--lmdb_map_size_mb", map_size_mb, "LMDB map size (the log's largest size)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 24))
      ->capture_default_str();
  app.add_option("--lazy_write_delay_ms", lo.lazy_delay_ms,
                 "how long a write nobody waits on may wait to share an fsync")
      ->check(CLI::Range(0u, 10000u))
      ->capture_default_str();
  app.add_option("--group_commit_batches_max", batches_per_commit_max,
                 "batches applied in one LMDB transaction / fsync")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  app.add_option("--message_bytes_max", message_bytes_max, "largest gRPC request accepted")
      ->check(CLI::Range(1024u, 1u << 30))
      ->capture_default_str();
  std::string metrics_listen;
  app.add_option("--metrics_listen", metrics_listen,
                 "host:port to serve Prometheus /metrics on (default: off)");
  CLI11_PARSE(app, argc, argv);

  if (absl::Status st = atomq::ValidateNodeId(id); !st.ok())
    return Fail(absl::StrCat("--id: ", st.message()));
  absl::StatusOr<std::map<std::string, std::string>> peers = atomq::ParsePeerList(participants);
  if (!peers.ok()) return Fail(absl::StrCat("--participants: ", peers.status().message()));
  if (peers->empty()) return Fail("--participants: at least one participant is needed");
  if (cfg.txn_timeout_ms > cfg.txn_timeout_ms_max)
    return Fail("--txn_timeout_ms exceeds --txn_timeout_ms_max");
  if (cfg.resend_initial_ms > cfg.resend_max_ms)
    return Fail("--resend_initial_ms exceeds --resend_max_ms");

  lo.dir = data_dir;
  lo.dbs = {atomq::coordinator::kTxnDb, atomq::coordinator::kMetaDb};
  lo.map_size_mb = map_size_mb;
  lo.batches_per_commit_max = batches_per_commit_max;
  absl::StatusOr<std::unique_ptr<atomq::Storage>> storage = atomq::OpenLmdbStorage(lo);
  if (!storage.ok()) return Fail(std::string(storage.status().message()));

  absl::StatusOr<atomq::v1::MetaRecord> meta =
      atomq::BumpBootCount(storage->get(), atomq::coordinator::kMetaDb, id, data_dir);
  if (!meta.ok()) return Fail(std::string(meta.status().message()));

  cfg.coordinator_id = id;
  cfg.coordinator_address = advertise.empty() ? listen : advertise;
  cfg.participants = *peers;
  cfg.boot_count = meta->boot_count();
  cfg.default_protocol = protocol == "3pc" ? atomq::v1::THREE_PC : atomq::v1::TWO_PC;

  auto service = atomq::coordinator::CoordinatorServer::Create(cfg, opts, storage->get());
  if (!service.ok()) return Fail(absl::StrCat("recovery failed: ", service.status().message()));
  auto server = atomq::StartServer(listen, {service->get()}, message_bytes_max);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  atomq::LogLine(absl::StrCat("atomq-coordinator ", id, " serving on ", listen, " (boot ",
                              meta->boot_count(), ", ", peers->size(), " participants)"));

  std::unique_ptr<atomq::MetricsServer> metrics;
  if (!metrics_listen.empty()) {
    auto* target = (*service).get();
    auto m =
        atomq::MetricsServer::Start(metrics_listen, [target] { return target->RenderMetrics(); });
    if (!m.ok()) return Fail(std::string(m.status().message()));
    metrics = std::move(*m);
  }

  int sig = atomq::WaitForSignal();
  atomq::LogLine(absl::StrCat("signal ", sig, ": shutting down"));
  metrics.reset();
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  (*service)->Stop();
  server->reset();
  service->reset();
  storage->reset();
  return 0;
}
