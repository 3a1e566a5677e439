// atomq-coordinator: drives 2PC/3PC across participants; its decision log is
// an LMDB environment in --data_dir.
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/loop_health.h"
#include "common/metrics.h"
#include "common/rpc_loop.h"
#include "common/server_flags.h"
#include "common/server_util.h"
#include "coordinator/server/coordinator_server.h"

namespace {

using atomq::AddCheckedFlag;
using atomq::coordinator::Config;
using atomq::coordinator::ServerOptions;

struct CoordinatorFlags {
  atomq::ServerFlags server;
  std::string advertise;
  std::string participants;
  std::string protocol = "2pc";
  Config cfg;
  ServerOptions opts;
};

int Fail(const std::string& msg) {
  std::fprintf(stderr, "atomq-coordinator: %s\n", msg.c_str());
  return 2;
}

// Where participants reach it, whom it drives, and how.
void AddClusterFlags(CLI::App& app, CoordinatorFlags* f) {
  app.add_option("--advertise", f->advertise,
                 "host:port participants reach this coordinator at (default: --listen)");
  app.add_option("--participants", f->participants,
                 "id=host:port,... of every participant; a participant that is a group of "
                 "replicas is id=host:port|host:port|host:port (its members' client addresses)")
      ->required();
  AddCheckedFlag(app, "--default_protocol", f->protocol, "2pc or 3pc, for requests that name none",
                 CLI::IsMember({"2pc", "3pc"}));
}

void AddTxnLimitFlags(CLI::App& app, Config* cfg) {
  AddCheckedFlag(app, "--txn_timeout_ms", cfg->txn_timeout_ms,
                 "default time to collect votes before aborting", CLI::Range(1u, 3600000u));
  AddCheckedFlag(app, "--txn_timeout_ms_max", cfg->txn_timeout_ms_max,
                 "largest timeout a client may ask", CLI::Range(1u, 3600000u));
  atomq::AddOpLimitFlags(app, "ops in one transaction", "enqueue",
                         {&cfg->ops_per_txn_max, &cfg->payload_bytes_max, &cfg->headers_max,
                          &cfg->header_bytes_max, &cfg->txn_bytes_max});
  AddCheckedFlag(app, "--txns_in_flight_max", cfg->txns_in_flight_max,
                 "transactions undecided or unanswered at once; more get RESOURCE_EXHAUSTED",
                 CLI::Range(1u, 10000000u));
  AddCheckedFlag(app, "--txns_unended_max", cfg->txns_unended_max,
                 "transactions in memory not yet acknowledged by every participant; more new "
                 "ones get RESOURCE_EXHAUSTED",
                 CLI::Range(1u, 10000000u));
}

// Resends of decisions and 3PC's termination rounds.
void AddRecoveryTimingFlags(CLI::App& app, Config* cfg) {
  atomq::AddResendFlags(app, "first wait before resending an unacknowledged commit/abort",
                        "longest wait between resends", &cfg->resend_initial_ms,
                        &cfg->resend_max_ms);
  AddCheckedFlag(app, "--termination_after_ms", cfg->termination_after_ms,
                 "3PC: precommitted this long without a decision, run a termination round",
                 CLI::Range(1u, 3600000u));
}

// The rounds and forced writes a transaction takes.
void AddProtocolFlags(CLI::App& app, Config* cfg) {
  app.add_option("--one_phase", cfg->one_phase,
                 "commit a transaction with a single participant in one round (its own commit "
                 "record decides); false: full 2PC/3PC")
      ->capture_default_str();
  app.add_option("--parallel_commit", cfg->parallel_commit,
                 "2PC with several participants: force the transaction's record beside the "
                 "prepares, so that the votes plus that record are the commit (one forced "
                 "write before the decision instead of two); false: a COMMITTED record after "
                 "the votes")
      ->capture_default_str();
}

// Finished transactions: kept in memory, then on disk until erased.
void AddFinishedFlags(CLI::App& app, CoordinatorFlags* f) {
  AddCheckedFlag(app, "--finished_cache_max", f->cfg.finished_cache_max,
                 "finished transactions kept in memory (older ones are read from disk)",
                 CLI::Range(0u, 100000000u));
}

void AddParticipantCallFlags(CLI::App& app, ServerOptions* opts) {
  AddCheckedFlag(app, "--rpc_timeout_ms", opts->rpc_timeout_ms, "deadline of one participant RPC",
                 CLI::Range(1u, 600000u));
  AddCheckedFlag(app, "--participant_calls_in_flight_max", opts->participant_calls_in_flight_max,
                 "Batch calls under way to one participant (messages meanwhile are batched)",
                 CLI::Range(1u, 1024u));
}

void AddBatchFlags(CLI::App& app, ServerOptions* opts) {
  AddCheckedFlag(app, "--batch_items_max", opts->batch_items_max,
                 "protocol messages in one Batch call", CLI::Range(1u, 1000000u));
  AddCheckedFlag(app, "--stream_items_max", opts->stream_items_max,
                 "transactions in one ExecuteStream message", CLI::Range(1u, 1000000u));
  AddCheckedFlag(app, "--stream_in_flight_max", opts->stream_in_flight_max,
                 "unanswered transactions of one ExecuteStream call before it is read no further",
                 CLI::Range(1u, 1000000u));
  AddCheckedFlag(app, "--stream_replies_buffered_max", opts->stream_replies_buffered_max,
                 "results of one ExecuteStream call waiting for its client to read them before "
                 "the call is read no further",
                 CLI::Range(1u, 10000000u));
  AddCheckedFlag(app, "--stream_stalled_ms_max", opts->stream_stalled_ms_max,
                 "how long an ExecuteStream call's results may stay at "
                 "--stream_replies_buffered_max before the call ends RESOURCE_EXHAUSTED",
                 CLI::Range(1u, 3600000u));
}

// In the order --help lists them.
void AddCoordinatorFlags(CLI::App& app, CoordinatorFlags* f) {
  atomq::AddServerFlags(app, &f->server, "coordinator id; minted transaction ids begin with it",
                        "directory of the decision log (LMDB)");
  AddClusterFlags(app, f);
  AddTxnLimitFlags(app, &f->cfg);
  AddRecoveryTimingFlags(app, &f->cfg);
  AddProtocolFlags(app, &f->cfg);
  AddFinishedFlags(app, f);
  AddParticipantCallFlags(app, &f->opts);
  atomq::AddRetentionFlags(app, "finished transaction records", &f->opts.retention_ms,
                           &f->opts.gc_interval_ms, &f->opts.gc_batch_max);
  AddBatchFlags(app, &f->opts);
}

// Checks what one flag alone cannot; fills in the participants.
int CheckFlags(CoordinatorFlags* f) {
  absl::StatusOr<std::map<std::string, std::string>> peers = atomq::ParsePeerList(f->participants);
  if (!peers.ok()) return Fail(absl::StrCat("--participants: ", peers.status().message()));
  if (peers->empty()) return Fail("--participants: at least one participant is needed");
  if (f->cfg.txn_timeout_ms > f->cfg.txn_timeout_ms_max) {
    return Fail("--txn_timeout_ms exceeds --txn_timeout_ms_max");
  }
  if (f->cfg.resend_initial_ms > f->cfg.resend_max_ms) {
    return Fail("--resend_initial_ms exceeds --resend_max_ms");
  }
  f->cfg.participants = *peers;
  return 0;
}

// Recovers from the decision log, serves until SIGINT/SIGTERM, then stops.
int Serve(CoordinatorFlags* f) {
  namespace c = atomq::coordinator;
  absl::StatusOr<atomq::Store> store =
      atomq::OpenStore(f->server, {c::kTxnDb, c::kMetaDb, c::kEndedDb}, c::kMetaDb);
  if (!store.ok()) return Fail(std::string(store.status().message()));
  f->opts.access = store->access;
  const std::string& id = f->server.id;
  const std::string& listen = f->server.listen;
  Config& cfg = f->cfg;
  cfg.coordinator_id = id;
  cfg.coordinator_address = f->advertise.empty() ? listen : f->advertise;
  cfg.boot_count = store->meta.boot_count();
  f->opts.channels_max = f->server.channels_max;
  cfg.retention_ms = f->opts.retention_ms;  // the core decides which records go
  cfg.default_protocol = f->protocol == "3pc" ? atomq::v1::THREE_PC : atomq::v1::TWO_PC;

  f->opts.list_limit_max = f->server.list_limit_max;

  atomq::SetDialCredentials(atomq::ChannelCredentials(f->server.tls));
  const std::vector<std::string> services = {atomq::v1::Coordinator::service_full_name()};
  // Every gRPC event, in and out, runs on the loop (common/rpc_loop.h).
  atomq::RpcLoop loop(static_cast<int>(f->server.loop_threads));
  // Health says NOT_SERVING (and calls UNAVAILABLE) until recovery is done.
  auto recovering =
      atomq::StandInServer::Start(listen, services, atomq::ServerCredentials(f->server.tls));
  if (!recovering.ok()) return Fail(std::string(recovering.status().message()));
  auto service = c::CoordinatorServer::Create(cfg, f->opts, store->storage.get(), &loop);
  if (!service.ok()) return Fail(absl::StrCat("recovery failed: ", service.status().message()));
  recovering->reset();
  atomq::LoopHealth health(&loop, services);
  auto server = atomq::StartServer(listen, {service->get(), health.service()},
                                   f->server.message_bytes_max,
                                   atomq::ServerCredentials(f->server.tls), &loop);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  health.Set(true);
  atomq::LogLine(absl::StrCat("atomq-coordinator ", id, " serving on ", listen, " (boot ",
                              store->meta.boot_count(), ", ", cfg.participants.size(),
                              " participants)"));
  c::CoordinatorServer* target = service->get();
  auto metrics = atomq::StartMetrics(f->server, [target] { return target->RenderMetrics(); });
  if (!metrics.ok()) return Fail(std::string(metrics.status().message()));

  atomq::AwaitShutdownSignal();
  atomq::Drain(f->server, &health);
  metrics->reset();
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  (*service)->Stop();
  loop.Shutdown();
  server->reset();
  // The store first: its writer reports the last batches to the core, which
  // must still be there to hear them.
  store->storage.reset();
  service->reset();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  atomq::InitServerProcess();
  CLI::App app{"atomq-coordinator: atomic enqueue across queue nodes (2PC / 3PC)"};
  CoordinatorFlags f;
  AddCoordinatorFlags(app, &f);
  CLI11_PARSE(app, argc, argv);
  if (int rc = CheckFlags(&f); rc != 0) return rc;
  return Serve(&f);
}
