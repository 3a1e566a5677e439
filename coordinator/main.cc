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
#include "common/server_flags.h"
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
  atomq::InitServerProcess();

  CLI::App app{"atomq-coordinator: atomic enqueue across queue nodes (2PC / 3PC)"};
  atomq::ServerFlags sf;
  atomq::AddServerFlags(app, &sf, "coordinator id; minted transaction ids begin with it",
                        "directory of the decision log (LMDB)");
  std::string advertise, participants, protocol = "2pc";
  atomq::coordinator::Config cfg;
  atomq::coordinator::ServerOptions opts;
  app.add_option("--advertise", advertise,
                 "host:port participants reach this coordinator at (default: --listen)");
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
  app.add_option("--one_phase", cfg.one_phase,
                 "commit a transaction with a single participant in one round (its own commit "
                 "record decides); false: full 2PC/3PC")
      ->capture_default_str();
  app.add_option("--parallel_commit", cfg.parallel_commit,
                 "2PC with several participants: force the transaction's record beside the "
                 "prepares, so that the votes plus that record are the commit (one forced "
                 "write before the decision instead of two); false: a COMMITTED record after "
                 "the votes")
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
  atomq::AddRetentionFlags(app, "finished transaction records", &opts.retention_ms,
                           &opts.gc_interval_ms, &opts.gc_batch_max);
  app.add_option("--batch_items_max", opts.batch_items_max, "protocol messages in one Batch call")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  app.add_option("--stream_items_max", opts.stream_items_max,
                 "transactions in one ExecuteStream message")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  app.add_option("--stream_in_flight_max", opts.stream_in_flight_max,
                 "unanswered transactions of one ExecuteStream call before it is read no further")
      ->check(CLI::Range(1u, 1000000u))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  absl::StatusOr<std::map<std::string, std::string>> peers = atomq::ParsePeerList(participants);
  if (!peers.ok()) return Fail(absl::StrCat("--participants: ", peers.status().message()));
  if (peers->empty()) return Fail("--participants: at least one participant is needed");
  if (cfg.txn_timeout_ms > cfg.txn_timeout_ms_max)
    return Fail("--txn_timeout_ms exceeds --txn_timeout_ms_max");
  if (cfg.resend_initial_ms > cfg.resend_max_ms)
    return Fail("--resend_initial_ms exceeds --resend_max_ms");

  absl::StatusOr<atomq::Store> store = atomq::OpenStore(
      sf, {atomq::coordinator::kTxnDb, atomq::coordinator::kMetaDb, atomq::coordinator::kEndedDb},
      atomq::coordinator::kMetaDb);
  if (!store.ok()) return Fail(std::string(store.status().message()));
  const std::string& id = sf.id;
  const std::string& listen = sf.listen;
  const atomq::v1::MetaRecord* meta = &store->meta;
  std::unique_ptr<atomq::Storage>* storage = &store->storage;

  cfg.coordinator_id = id;
  cfg.coordinator_address = advertise.empty() ? listen : advertise;
  cfg.participants = *peers;
  cfg.boot_count = meta->boot_count();
  cfg.retention_ms = opts.retention_ms;  // the core decides which records go
  cfg.default_protocol = protocol == "3pc" ? atomq::v1::THREE_PC : atomq::v1::TWO_PC;

  auto service = atomq::coordinator::CoordinatorServer::Create(cfg, opts, storage->get());
  if (!service.ok()) return Fail(absl::StrCat("recovery failed: ", service.status().message()));
  auto server = atomq::StartServer(listen, {service->get()}, sf.message_bytes_max);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  atomq::LogLine(absl::StrCat("atomq-coordinator ", id, " serving on ", listen, " (boot ",
                              meta->boot_count(), ", ", peers->size(), " participants)"));

  std::unique_ptr<atomq::MetricsServer> metrics;
  if (const std::string& metrics_listen = sf.metrics_listen; !metrics_listen.empty()) {
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
