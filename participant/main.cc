// atomq-participant: a durable queue node that takes part in atomq
// transactions; its queues and protocol records live in LMDB in --data_dir.
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
#include "participant/server/participant_server.h"

namespace {

int Fail(const std::string& msg) {
  std::fprintf(stderr, "atomq-participant: %s\n", msg.c_str());
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
  CLI::App app{"atomq-participant: a durable queue node in atomq transactions"};
  std::string id, listen, data_dir;
  atomq::participant::Config cfg;
  atomq::participant::ServerOptions opts;
  uint64_t map_size_mb = 65536;
  uint32_t batches_per_commit_max = 4096;
  uint32_t message_bytes_max = 64 << 20;
  app.add_option("--id", id, "participant id (as the coordinator's --participants names it)")
      ->required();
  app.add_option("--listen", listen, "host:port to serve gRPC on")->required();
  app.add_option("--data_dir", data_dir, "directory of the queues and log (LMDB)")->required();
  app.add_option("--ops_per_txn_max", cfg.ops_per_txn_max, "ops of one transaction on this node")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  app.add_option("--payload_bytes_max", cfg.payload_bytes_max, "payload bytes of one message")
      ->check(CLI::Range(0u, 64u << 20))
      ->capture_default_str();
  app.add_option("--headers_max", cfg.headers_max, "headers of one message")
      ->check(CLI::Range(0u, 100000u))
      ->capture_default_str();
  app.add_option("--prepared_max", cfg.prepared_max,
                 "transactions prepared here at once; more vote NO with RESOURCE_EXHAUSTED")
      ->check(CLI::Range(1u, 10000000u))
      ->capture_default_str();
  app.add_option("--queues_max", cfg.queues_max, "queues on this node")
      ->check(CLI::Range(1u, 10000000u))
      ->capture_default_str();
  app.add_option("--lease_ms", cfg.lease_ms, "default lease of a received message")
      ->check(CLI::Range(1u, 86400000u))
      ->capture_default_str();
  app.add_option("--lease_ms_max", cfg.lease_ms_max, "longest lease a consumer may ask")
      ->check(CLI::Range(1u, 86400000u))
      ->capture_default_str();
  app.add_option("--max_deliveries_max", cfg.max_deliveries_max,
                 "largest max_deliveries a queue may be created with")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  app.add_option("--producers_max", cfg.producers_max,
                 "producers remembered for Send deduplication (least recently used evicted)")
      ->check(CLI::Range(1u, 100000000u))
      ->capture_default_str();
  app.add_option("--receive_wait_ms_max", opts.receive_wait_ms_max,
                 "longest a Receive may wait for a message (long-poll)")
      ->check(CLI::Range(0u, 3600000u))
      ->capture_default_str();
  app.add_option("--waiters_max", opts.waiters_max,
                 "long-poll Receives waiting at once; more get RESOURCE_EXHAUSTED")
      ->check(CLI::Range(0u, 10000000u))
      ->capture_default_str();
  app.add_option("--subscriptions_max", opts.subscriptions_max,
                 "Subscribe streams open at once; more get RESOURCE_EXHAUSTED")
      ->check(CLI::Range(0u, 10000000u))
      ->capture_default_str();
  app.add_option("--lease_sweep_ms", opts.lease_sweep_ms,
                 "how often expired leases return their messages (and wake consumers)")
      ->check(CLI::Range(1u, 60000u))
      ->capture_default_str();
  app.add_option("--receive_max", cfg.receive_max, "messages one Receive may return")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  app.add_option("--in_doubt_after_ms", cfg.in_doubt_after_ms,
                 "time prepared without an outcome before asking the coordinator and peers")
      ->check(CLI::Range(1u, 3600000u))
      ->capture_default_str();
  app.add_option("--resend_initial_ms", cfg.resend_initial_ms, "first wait between outcome queries")
      ->check(CLI::Range(1u, 600000u))
      ->capture_default_str();
  app.add_option("--resend_max_ms", cfg.resend_max_ms, "longest wait between outcome queries")
      ->check(CLI::Range(1u, 3600000u))
      ->capture_default_str();
  app.add_option("--staged_txns_max", cfg.staged_txns_max,
                 "interactive transactions with staged (unprepared) work; more get "
                 "RESOURCE_EXHAUSTED")
      ->check(CLI::Range(1u, 10000000u))
      ->capture_default_str();
  app.add_option("--staged_bytes_max", cfg.staged_bytes_max,
                 "payload and header bytes staged in memory, all transactions together")
      ->check(CLI::Range(uint64_t{0}, uint64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--stage_timeout_ms_max", cfg.stage_timeout_ms_max,
                 "longest time staged work is kept, whatever its expires_unix_ms says")
      ->check(CLI::Range(1u, 86400000u))
      ->capture_default_str();
  app.add_option("--outcome_cache_max", cfg.outcome_cache_max,
                 "finished transactions kept in memory (older ones are read from disk)")
      ->check(CLI::Range(0u, 100000000u))
      ->capture_default_str();
  app.add_option("--rpc_timeout_ms", opts.rpc_timeout_ms, "deadline of one outbound query")
      ->check(CLI::Range(1u, 600000u))
      ->capture_default_str();
  app.add_option("--batch_items_max", opts.batch_items_max, "protocol messages in one Batch call")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  app.add_option("--lmdb_map_size_mb", map_size_mb, "LMDB map size (the store's largest size)")
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

  if (absl::Status st = atomq::ValidateNodeId(id); !st.ok()) {
    return Fail(absl::StrCat("--id: ", st.message()));
  }
  if (cfg.lease_ms > cfg.lease_ms_max) return Fail("--lease_ms exceeds --lease_ms_max");
  if (cfg.resend_initial_ms > cfg.resend_max_ms) {
    return Fail("--resend_initial_ms exceeds --resend_max_ms");
  }

  namespace p = atomq::participant;
  lo.dir = data_dir;
  lo.dbs = {p::kQueuesDb, p::kMessagesDb, p::kPreparedDb, p::kOutcomesDb, p::kDedupDb, p::kMetaDb};
  lo.map_size_mb = map_size_mb;
  lo.batches_per_commit_max = batches_per_commit_max;
  absl::StatusOr<std::unique_ptr<atomq::Storage>> storage = atomq::OpenLmdbStorage(lo);
  if (!storage.ok()) return Fail(std::string(storage.status().message()));
  absl::StatusOr<atomq::v1::MetaRecord> meta =
      atomq::BumpBootCount(storage->get(), p::kMetaDb, id, data_dir);
  if (!meta.ok()) return Fail(std::string(meta.status().message()));

  cfg.participant_id = id;
  cfg.boot_count = meta->boot_count();
  auto node = p::ParticipantNode::Create(cfg, opts, storage->get());
  if (!node.ok()) return Fail(absl::StrCat("recovery failed: ", node.status().message()));
  auto server = atomq::StartServer(listen, {(*node)->txn_service(), (*node)->queue_service()},
                                   message_bytes_max);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  atomq::LogLine(absl::StrCat("atomq-participant ", id, " serving on ", listen, " (boot ",
                              meta->boot_count(), ")"));

  std::unique_ptr<atomq::MetricsServer> metrics;
  if (!metrics_listen.empty()) {
    auto* target = (*node).get();
    auto m =
        atomq::MetricsServer::Start(metrics_listen, [target] { return target->RenderMetrics(); });
    if (!m.ok()) return Fail(std::string(m.status().message()));
    metrics = std::move(*m);
  }

  int sig = atomq::WaitForSignal();
  atomq::LogLine(absl::StrCat("signal ", sig, ": shutting down"));
  metrics.reset();
  (*node)->StopConsumers();
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  (*node)->Stop();
  server->reset();
  node->reset();
  storage->reset();
  return 0;
}
