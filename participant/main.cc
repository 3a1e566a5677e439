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
#include "common/server_flags.h"
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
  atomq::InitServerProcess();

  CLI::App app{"atomq-participant: a durable queue node in atomq transactions"};
  atomq::ServerFlags sf;
  atomq::AddServerFlags(app, &sf, "participant id (as the coordinator's --participants names it)",
                        "directory of the queues and log (LMDB)");
  atomq::participant::Config cfg;
  atomq::participant::ServerOptions opts;
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
  app.add_option("--operator_note_bytes_max", cfg.operator_note_bytes_max,
                 "longest operator note of a Resolve (heuristic outcome)")
      ->check(CLI::Range(0u, 1048576u))
      ->capture_default_str();
  app.add_option("--outcome_cache_max", cfg.outcome_cache_max,
                 "finished transactions kept in memory (older ones are read from disk)")
      ->check(CLI::Range(0u, 100000000u))
      ->capture_default_str();
  // Counted from the coordinator's END notice.
  atomq::AddRetentionFlags(app, "outcomes of ended transactions", &cfg.retention_ms,
                           &opts.gc_interval_ms, &opts.gc_batch_max);
  app.add_option("--queue_memory_window", cfg.queue_memory_window,
                 "ready messages of one queue kept in memory; a longer backlog stays on disk "
                 "and is read in as consumers drain the queue")
      ->check(CLI::Range(1u, 100000000u))
      ->capture_default_str();
  app.add_option("--rpc_timeout_ms", opts.rpc_timeout_ms, "deadline of one outbound query")
      ->check(CLI::Range(1u, 600000u))
      ->capture_default_str();
  app.add_option("--batch_items_max", opts.batch_items_max, "protocol messages in one Batch call")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (cfg.lease_ms > cfg.lease_ms_max) return Fail("--lease_ms exceeds --lease_ms_max");
  if (cfg.resend_initial_ms > cfg.resend_max_ms) {
    return Fail("--resend_initial_ms exceeds --resend_max_ms");
  }

  namespace p = atomq::participant;
  absl::StatusOr<atomq::Store> store = atomq::OpenStore(
      sf, {p::kQueuesDb, p::kMessagesDb, p::kPreparedDb, p::kOutcomesDb, p::kDedupDb, p::kMetaDb,
           p::kHeuristicDb, p::kForgettableDb},
      p::kMetaDb);
  if (!store.ok()) return Fail(std::string(store.status().message()));
  const std::string& id = sf.id;
  const std::string& listen = sf.listen;
  const atomq::v1::MetaRecord* meta = &store->meta;
  std::unique_ptr<atomq::Storage>* storage = &store->storage;

  cfg.participant_id = id;
  cfg.boot_count = meta->boot_count();
  auto node = p::ParticipantNode::Create(cfg, opts, storage->get());
  if (!node.ok()) return Fail(absl::StrCat("recovery failed: ", node.status().message()));
  auto server = atomq::StartServer(listen, {(*node)->txn_service(), (*node)->queue_service()},
                                   sf.message_bytes_max);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  atomq::LogLine(absl::StrCat("atomq-participant ", id, " serving on ", listen, " (boot ",
                              meta->boot_count(), ")"));

  std::unique_ptr<atomq::MetricsServer> metrics;
  if (const std::string& metrics_listen = sf.metrics_listen; !metrics_listen.empty()) {
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
