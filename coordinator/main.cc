// atomq-coordinator: drives 2PC/3PC across participants; its decision log is
// an LMDB environment in --data_dir.
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "atomq_version.h"
#include "common/log.h"
#include "common/loop_health.h"
#include "common/metrics.h"
#include "common/rpc_loop.h"
#include "common/server_flags.h"
#include "common/server_util.h"
#include "console/console.h"
#include "coordinator/server/coordinator_server.h"
#include "replication/group_flags.h"

namespace {

using atomq::AddCheckedFlag;
using atomq::coordinator::Config;
using atomq::coordinator::ServerOptions;

struct CoordinatorFlags {
  atomq::ServerFlags server;
  std::string advertise;
  std::string participants;
  std::string protocol = "2pc";
  atomq::replication::GroupFlags group;  // replication (none: one disk)
  atomq::console::ConsoleFlags console;
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
  atomq::replication::AddGroupFlags(app, &f->group, "coordinator");
  atomq::console::AddConsoleFlags(app, &f->console);
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
  for (const auto& [id, address] : f->cfg.participants) {
    if (address.find('|') != std::string::npos) f->cfg.participant_groups.insert(id);
  }
  if (absl::Status st = atomq::replication::CheckGroupFlags(&f->group); !st.ok()) {
    return Fail(std::string(st.message()));
  }
  if (absl::Status st = atomq::console::CheckConsoleFlags(f->console, f->server.tls); !st.ok()) {
    return Fail(std::string(st.message()));
  }
  return 0;
}

const std::vector<std::string>& Services() {
  static const std::vector<std::string> services = {atomq::v1::Coordinator::service_full_name()};
  return services;
}

// The coordinator and what serves it on the client address: the loop every
// gRPC event runs on (common/rpc_loop.h), health, the server.
class ServedCoordinator final : public atomq::replication::Leading {
 public:
  // Recovers from `storage`, then calls `release` (which frees the address
  // of the stand-in that holds it) and serves, `group_status` too unless
  // null (a group member's Replica.Status).
  static absl::StatusOr<std::unique_ptr<ServedCoordinator>> Start(
      CoordinatorFlags* f, atomq::Storage* storage, const std::function<void()>& release,
      grpc::Service* group_status = nullptr) {
    namespace c = atomq::coordinator;
    std::unique_ptr<ServedCoordinator> s(
        new ServedCoordinator(static_cast<int>(f->server.loop_threads)));
    auto service = c::CoordinatorServer::Create(f->cfg, f->opts, storage, &s->loop_);
    if (!service.ok()) {
      return absl::Status(service.status().code(),
                          absl::StrCat("recovery failed: ", service.status().message()));
    }
    s->service_ = std::move(*service);
    release();
    s->health_ = std::make_unique<atomq::LoopHealth>(&s->loop_, Services());
    std::vector<grpc::Service*> services = {s->service_.get(), s->health_->service()};
    if (group_status != nullptr) services.push_back(group_status);
    auto server = atomq::StartServer(f->server.listen, services, f->server.message_bytes_max,
                                     atomq::ServerCredentials(f->server.tls), &s->loop_);
    if (!server.ok()) return server.status();
    s->server_ = std::move(*server);
    s->health_->Set(true);
    return s;
  }
  ~ServedCoordinator() override {
    Stop();
    server_.reset();
    service_.reset();
  }
  atomq::LoopHealth* health() { return health_.get(); }
  void Stop() override {
    if (stopped_) return;
    stopped_ = true;
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    service_->Stop();
    loop_.Shutdown();
  }
  std::string RenderMetrics() override { return service_->RenderMetrics(); }

 private:
  explicit ServedCoordinator(int threads) : loop_(threads) {}
  atomq::RpcLoop loop_;
  std::unique_ptr<atomq::coordinator::CoordinatorServer> service_;
  std::unique_ptr<atomq::LoopHealth> health_;
  std::unique_ptr<grpc::Server> server_;
  bool stopped_ = false;
};

// The decision log, and the configuration that comes from the flags.
absl::StatusOr<atomq::Store> Open(CoordinatorFlags* f) {
  namespace c = atomq::coordinator;
  std::vector<std::string> dbs = {c::kTxnDb, c::kMetaDb, c::kEndedDb};
  if (f->group.enabled()) {
    for (const std::string& db : atomq::replication::ReplicatedStorage::ReplicaDbs())
      dbs.push_back(db);
  }
  absl::StatusOr<atomq::Store> store = atomq::OpenStore(f->server, dbs, c::kMetaDb);
  if (!store.ok()) return store.status();
  f->opts.access = store->access;
  Config& cfg = f->cfg;
  cfg.coordinator_id = f->server.id;
  cfg.coordinator_address = f->advertise;
  if (cfg.coordinator_address.empty()) {
    cfg.coordinator_address = atomq::replication::CallerAddresses(f->group, f->server.listen);
  }
  cfg.boot_count = store->meta.boot_count();
  f->opts.channels_max = f->server.channels_max;
  cfg.retention_ms = f->opts.retention_ms;  // the core decides which records go
  cfg.default_protocol = f->protocol == "3pc" ? atomq::v1::THREE_PC : atomq::v1::TWO_PC;
  f->opts.list_limit_max = f->server.list_limit_max;
  f->opts.data_dir = f->server.data_dir;
  return store;
}

// One disk: recovers from the decision log, serves until SIGINT/SIGTERM,
// then stops.
int ServeAlone(CoordinatorFlags* f, atomq::Store* store) {
  const std::string& listen = f->server.listen;
  // Health says NOT_SERVING (and calls UNAVAILABLE) until recovery is done.
  auto stand_in =
      atomq::StandInServer::Start(listen, Services(), atomq::ServerCredentials(f->server.tls));
  if (!stand_in.ok()) return Fail(std::string(stand_in.status().message()));
  auto served = ServedCoordinator::Start(f, store->storage.get(), [&] { stand_in->reset(); });
  if (!served.ok()) return Fail(std::string(served.status().message()));
  atomq::LogLine(absl::StrCat("atomq-coordinator ", f->server.id, " serving on ", listen, " (boot ",
                              store->meta.boot_count(), ", ", f->cfg.participants.size(),
                              " participants)"));
  ServedCoordinator* target = served->get();
  auto metrics = atomq::StartMetrics(f->server, [target] { return target->RenderMetrics(); });
  if (!metrics.ok()) return Fail(std::string(metrics.status().message()));

  atomq::AwaitShutdownSignal();
  atomq::Drain(f->server, (*served)->health());
  metrics->reset();
  (*served)->Stop();
  // The store first: its writer reports the last batches to the core, which
  // must still be there to hear them.
  store->storage.reset();
  served->reset();
  return 0;
}

// A replica of the coordinator's group: serves while it leads. Its
// decision log is committed in the group before it is acted on, and each
// leadership mints transaction ids under its own epoch.
int ServeInGroup(CoordinatorFlags* f, atomq::Store* store) {
  namespace r = atomq::replication;
  absl::Status st = r::ServeInGroup(
      f->group, f->server, Services(), f->opts.access, store->storage.get(),
      [f](atomq::Storage* replica, uint64_t epoch, const std::function<void()>& release,
          grpc::Service* group_status) -> absl::StatusOr<std::unique_ptr<r::Leading>> {
        f->cfg.boot_count = epoch;
        auto served = ServedCoordinator::Start(f, replica, release, group_status);
        if (!served.ok()) return served.status();
        return std::unique_ptr<r::Leading>(std::move(*served));
      });
  if (!st.ok()) return Fail(std::string(st.message()));
  store->storage.reset();
  return 0;
}

// The console knows this coordinator (its group) and every participant.
atomq::console::ConsoleOptions ConsoleOptionsOf(const CoordinatorFlags& f) {
  atomq::console::ConsoleOptions o;
  o.flags = f.console;
  o.tls = f.server.tls;
  o.access = f.opts.access;
  o.node_id = f.server.id;
  o.node_role = "coordinator";
  o.version = ATOMQ_VERSION;
  o.coordinators[f.server.id] = atomq::replication::CallerAddresses(f.group, f.server.listen);
  o.participants = f.cfg.participants;
  for (const auto& [id, m] : f.group.members) o.group_peers.push_back(m.peer);
  return o;
}

int Serve(CoordinatorFlags* f) {
  absl::StatusOr<atomq::Store> store = Open(f);
  if (!store.ok()) return Fail(std::string(store.status().message()));
  atomq::SetDialCredentials(atomq::ChannelCredentials(f->server.tls));
  auto console = atomq::console::ConsoleServer::Start(ConsoleOptionsOf(*f));
  if (!console.ok()) return Fail(std::string(console.status().message()));
  return f->group.enabled() ? ServeInGroup(f, &*store) : ServeAlone(f, &*store);
}

}  // namespace

int main(int argc, char** argv) {
  atomq::InitServerProcess();
  CLI::App app{"atomq-coordinator: atomic enqueue across queue nodes (2PC / 3PC)"};
  app.set_version_flag("--version", ATOMQ_VERSION);
  atomq::SetBuildVersion(ATOMQ_VERSION);
  CoordinatorFlags f;
  AddCoordinatorFlags(app, &f);
  CLI11_PARSE(app, argc, argv);
  if (int rc = CheckFlags(&f); rc != 0) return rc;
  return Serve(&f);
}
