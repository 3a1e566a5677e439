// atomq-participant: a durable queue node that takes part in atomq
// transactions; its queues and protocol records live in LMDB in --data_dir.
#include <sys/random.h>

#include <cerrno>
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
#include "common/check.h"
#include "common/log.h"
#include "common/loop_health.h"
#include "common/metrics.h"
#include "common/rpc_loop.h"
#include "common/server_flags.h"
#include "common/server_util.h"
#include "console/console.h"
#include "participant/server/participant_server.h"
#include "replication/group_flags.h"

namespace {

using atomq::AddCheckedFlag;
using atomq::participant::Config;
using atomq::participant::ServerOptions;

struct ParticipantFlags {
  atomq::ServerFlags server;
  std::string coordinators;              // --coordinators
  std::string peers;                     // --peers
  atomq::replication::GroupFlags group;  // replication (none: one disk)
  atomq::console::ConsoleFlags console;
  Config cfg;
  ServerOptions opts;
};

// Lease tokens: the kernel's CSPRNG. It never fails for a few bytes once
// the system is up; should it, no token may be made, so the node stops.
void KernelRandomBytes(uint8_t* out, size_t n) {
  while (n > 0) {
    const ssize_t got = getrandom(out, n, 0);
    if (got < 0 && errno == EINTR) continue;
    ATOMQ_CHECK(got > 0, "getrandom failed");
    out += got;
    n -= static_cast<size_t>(got);
  }
}

int Fail(const std::string& msg) {
  std::fprintf(stderr, "atomq-participant: %s\n", msg.c_str());
  return 2;
}

// What one transaction may hold here, and how much this node holds at once.
void AddNodeLimitFlags(CLI::App& app, Config* cfg) {
  atomq::AddOpLimitFlags(app, "ops of one transaction on this node", "message",
                         {&cfg->ops_per_txn_max, &cfg->payload_bytes_max, &cfg->headers_max,
                          &cfg->header_bytes_max, &cfg->txn_bytes_max});
  AddCheckedFlag(app, "--prepared_max", cfg->prepared_max,
                 "transactions prepared here at once; more vote NO with RESOURCE_EXHAUSTED",
                 CLI::Range(1u, 10000000u));
  AddCheckedFlag(app, "--participants_per_txn_max", cfg->participants_per_txn_max,
                 "participants one Prepare may name (its peers)", CLI::Range(1u, 100000u));
  AddCheckedFlag(app, "--prepared_bytes_max", cfg->prepared_bytes_max,
                 "bytes of the messages of all transactions prepared here at once (payloads and "
                 "headers); more vote NO with RESOURCE_EXHAUSTED",
                 CLI::Range(uint64_t{1}, uint64_t{1} << 40));
  AddCheckedFlag(app, "--queues_max", cfg->queues_max, "queues on this node",
                 CLI::Range(1u, 10000000u));
}

// Leases, redeliveries and Send deduplication.
void AddDeliveryFlags(CLI::App& app, Config* cfg) {
  AddCheckedFlag(app, "--lease_ms", cfg->lease_ms, "default lease of a received message",
                 CLI::Range(1u, 86400000u));
  AddCheckedFlag(app, "--lease_ms_max", cfg->lease_ms_max, "longest lease a consumer may ask",
                 CLI::Range(1u, 86400000u));
  AddCheckedFlag(app, "--max_deliveries_max", cfg->max_deliveries_max,
                 "largest max_deliveries a queue may be created with", CLI::Range(1u, 1000000u));
  AddCheckedFlag(app, "--producers_max", cfg->producers_max,
                 "producers remembered for Send deduplication (least recently used evicted)",
                 CLI::Range(1u, 100000000u));
}

// Consumers: long-poll Receives and Subscribe streams.
void AddConsumerFlags(CLI::App& app, ParticipantFlags* f) {
  AddCheckedFlag(app, "--receive_wait_ms_max", f->opts.receive_wait_ms_max,
                 "longest a Receive may wait for a message (long-poll)", CLI::Range(0u, 3600000u));
  AddCheckedFlag(app, "--waiters_max", f->opts.waiters_max,
                 "long-poll Receives waiting at once; more get RESOURCE_EXHAUSTED",
                 CLI::Range(0u, 10000000u));
  AddCheckedFlag(app, "--subscriptions_max", f->opts.subscriptions_max,
                 "Subscribe streams open at once; more get RESOURCE_EXHAUSTED",
                 CLI::Range(0u, 10000000u));
  AddCheckedFlag(app, "--waiters_per_identity_max", f->opts.waiters_per_identity_max,
                 "of --waiters_max, what one identity may hold (default: a quarter of it)",
                 CLI::Range(0u, 10000000u));
  AddCheckedFlag(app, "--subscriptions_per_identity_max", f->opts.subscriptions_per_identity_max,
                 "of --subscriptions_max, what one identity may hold (default: a quarter of it)",
                 CLI::Range(0u, 10000000u));
  AddCheckedFlag(app, "--lease_sweep_ms", f->opts.lease_sweep_ms,
                 "how often expired leases return their messages (and wake consumers)",
                 CLI::Range(1u, 60000u));
  AddCheckedFlag(app, "--receive_max", f->cfg.receive_max, "messages one Receive may return",
                 CLI::Range(1u, 1000000u));
}

// When an in-doubt transaction asks for its outcome, and how often again.
void AddRecoveryTimingFlags(CLI::App& app, Config* cfg) {
  AddCheckedFlag(app, "--in_doubt_after_ms", cfg->in_doubt_after_ms,
                 "time prepared without an outcome before asking the coordinator and peers",
                 CLI::Range(1u, 3600000u));
  atomq::AddResendFlags(app, "first wait between outcome queries",
                        "longest wait between outcome queries", &cfg->resend_initial_ms,
                        &cfg->resend_max_ms);
}

// Work staged by interactive transactions.
void AddStagingFlags(CLI::App& app, Config* cfg) {
  AddCheckedFlag(app, "--staged_txns_max", cfg->staged_txns_max,
                 "interactive transactions with staged (unprepared) work; more get "
                 "RESOURCE_EXHAUSTED",
                 CLI::Range(1u, 10000000u));
  AddCheckedFlag(app, "--staged_bytes_max", cfg->staged_bytes_max,
                 "payload and header bytes staged in memory, all transactions together",
                 CLI::Range(uint64_t{0}, uint64_t{1} << 40));
  AddCheckedFlag(app, "--staged_bytes_per_identity_max", cfg->staged_bytes_per_identity_max,
                 "of --staged_bytes_max, what one identity's transactions may hold (default: a "
                 "quarter of it)",
                 CLI::Range(uint64_t{0}, uint64_t{1} << 40));
  AddCheckedFlag(app, "--stage_timeout_ms_max", cfg->stage_timeout_ms_max,
                 "longest time staged work is kept, whatever its expires_unix_ms says",
                 CLI::Range(1u, 86400000u));
}

// Outcomes: operators' notes, the memory cache, and how long they are kept.
void AddOutcomeFlags(CLI::App& app, ParticipantFlags* f) {
  AddCheckedFlag(app, "--operator_note_bytes_max", f->cfg.operator_note_bytes_max,
                 "longest operator note of a Resolve (heuristic outcome)",
                 CLI::Range(0u, 1048576u));
  AddCheckedFlag(app, "--outcome_cache_max", f->cfg.outcome_cache_max,
                 "finished transactions kept in memory (older ones are read from disk)",
                 CLI::Range(0u, 100000000u));
  // Counted from the coordinator's END notice.
  atomq::AddRetentionFlags(app, "outcomes of ended transactions", &f->cfg.retention_ms,
                           &f->opts.gc_interval_ms, &f->opts.gc_batch_max);
}

void AddQueueMemoryFlags(CLI::App& app, Config* cfg) {
  AddCheckedFlag(app, "--queue_memory_window", cfg->queue_memory_window,
                 "ready messages of one queue kept in memory; a longer backlog stays on disk "
                 "and is read in as consumers drain the queue",
                 CLI::Range(1u, 100000000u));
}

// Whom this node asks about outcomes and runs termination rounds with: only
// these addresses are ever dialled, never one a request names.
void AddClusterFlags(CLI::App& app, ParticipantFlags* f) {
  app.add_option("--coordinators", f->coordinators,
                 "id=host:port,... of every coordinator that may prepare transactions here "
                 "(a Prepare from another is refused)")
      ->required();
  app.add_option("--peers", f->peers,
                 "id=host:port,... of the other participants, asked about in-doubt "
                 "transactions and joined in 3PC termination rounds (default: none)");
}

// Calls to the coordinator and peers.
void AddCallFlags(CLI::App& app, ServerOptions* opts) {
  AddCheckedFlag(app, "--rpc_timeout_ms", opts->rpc_timeout_ms, "deadline of one outbound query",
                 CLI::Range(1u, 600000u));
  AddCheckedFlag(app, "--batch_items_max", opts->batch_items_max,
                 "protocol messages in one Batch call", CLI::Range(1u, 1000000u));
  AddCheckedFlag(app, "--list_reply_bytes_max", opts->list_reply_bytes_max,
                 "bytes of one ListTransactions page (it always holds one row)",
                 CLI::Range(uint64_t{1024}, uint64_t{1} << 30));
}

// In the order --help lists them.
void AddParticipantFlags(CLI::App& app, ParticipantFlags* f) {
  atomq::AddServerFlags(app, &f->server,
                        "participant id (as the coordinator's --participants names it)",
                        "directory of the queues and log (LMDB)");
  AddNodeLimitFlags(app, &f->cfg);
  AddDeliveryFlags(app, &f->cfg);
  AddConsumerFlags(app, f);
  AddRecoveryTimingFlags(app, &f->cfg);
  AddStagingFlags(app, &f->cfg);
  AddOutcomeFlags(app, f);
  AddQueueMemoryFlags(app, &f->cfg);
  AddClusterFlags(app, f);
  atomq::replication::AddGroupFlags(app, &f->group, "participant");
  atomq::console::AddConsoleFlags(app, &f->console);
  AddCallFlags(app, &f->opts);
}

// A per-identity share not given is a quarter of its budget: room for
// three other clients at least.
void DefaultShares(const CLI::App& app, ParticipantFlags* f) {
  if (app.count("--waiters_per_identity_max") == 0) {
    f->opts.waiters_per_identity_max = (f->opts.waiters_max + 3) / 4;
  }
  if (app.count("--subscriptions_per_identity_max") == 0) {
    f->opts.subscriptions_per_identity_max = (f->opts.subscriptions_max + 3) / 4;
  }
  if (app.count("--staged_bytes_per_identity_max") == 0) {
    f->cfg.staged_bytes_per_identity_max = f->cfg.staged_bytes_max / 4;
  }
}

// Checks what one flag alone cannot; fills in the coordinators and peers.
int CheckFlags(ParticipantFlags* f) {
  const Config& cfg = f->cfg;
  auto coordinators = atomq::ParsePeerList(f->coordinators, "coordinator");
  if (!coordinators.ok())
    return Fail(absl::StrCat("--coordinators: ", coordinators.status().message()));
  if (coordinators->empty()) return Fail("--coordinators: at least one coordinator is needed");
  auto peers = atomq::ParsePeerList(f->peers, "peer");
  if (!peers.ok()) return Fail(absl::StrCat("--peers: ", peers.status().message()));
  f->opts.coordinators = *std::move(coordinators);
  f->opts.peers = *std::move(peers);
  if (cfg.lease_ms > cfg.lease_ms_max) return Fail("--lease_ms exceeds --lease_ms_max");
  if (absl::Status st = atomq::replication::CheckGroupFlags(&f->group); !st.ok()) {
    return Fail(std::string(st.message()));
  }
  if (cfg.resend_initial_ms > cfg.resend_max_ms) {
    return Fail("--resend_initial_ms exceeds --resend_max_ms");
  }
  if (absl::Status st = atomq::console::CheckConsoleFlags(f->console, f->server.tls); !st.ok()) {
    return Fail(std::string(st.message()));
  }
  return 0;
}

// The node and what serves it on the client address: the loop every gRPC
// event runs on, health, the server.
class ServedNode final : public atomq::replication::Leading {
 public:
  // Recovers from `storage`, then calls `release` (which frees the address
  // of the stand-in that holds it) and serves, `group_status` too unless
  // null (a group member's Replica.Status).
  static absl::StatusOr<std::unique_ptr<ServedNode>> Start(ParticipantFlags* f,
                                                           atomq::Storage* storage,
                                                           const std::function<void()>& release,
                                                           grpc::Service* group_status = nullptr) {
    namespace p = atomq::participant;
    std::unique_ptr<ServedNode> s(new ServedNode(static_cast<int>(f->server.loop_threads)));
    auto node = p::ParticipantNode::Create(f->cfg, f->opts, storage, &s->loop_);
    if (!node.ok()) {
      return absl::Status(node.status().code(),
                          absl::StrCat("recovery failed: ", node.status().message()));
    }
    s->node_ = std::move(*node);
    release();
    s->health_ = std::make_unique<atomq::LoopHealth>(&s->loop_, Services());
    std::vector<grpc::Service*> services = {s->node_->txn_service(), s->node_->queue_service(),
                                            s->health_->service()};
    if (group_status != nullptr) services.push_back(group_status);
    auto server = atomq::StartServer(f->server.listen, services, f->server.message_bytes_max,
                                     atomq::ServerCredentials(f->server.tls), &s->loop_);
    if (!server.ok()) return server.status();
    s->server_ = std::move(*server);
    s->health_->Set(true);
    return s;
  }
  static std::vector<std::string> Services() {
    return {atomq::v1::ParticipantTxn::service_full_name(), atomq::v1::Queue::service_full_name()};
  }
  ~ServedNode() override {
    Stop();
    server_.reset();
    node_.reset();
  }
  atomq::LoopHealth* health() { return health_.get(); }
  void Stop() override {
    if (stopped_) return;
    stopped_ = true;
    node_->StopConsumers();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    node_->Stop();
    loop_.Shutdown();
  }
  std::string RenderMetrics() override { return node_->RenderMetrics(); }

 private:
  explicit ServedNode(int threads) : loop_(threads) {}
  atomq::RpcLoop loop_;
  std::unique_ptr<atomq::participant::ParticipantNode> node_;
  std::unique_ptr<atomq::LoopHealth> health_;
  std::unique_ptr<grpc::Server> server_;
  bool stopped_ = false;
};

absl::StatusOr<atomq::Store> Open(ParticipantFlags* f) {
  namespace p = atomq::participant;
  std::vector<std::string> dbs = {p::kQueuesDb, p::kMessagesDb, p::kPreparedDb,  p::kOutcomesDb,
                                  p::kDedupDb,  p::kMetaDb,     p::kHeuristicDb, p::kForgettableDb};
  if (f->group.enabled()) {
    for (const std::string& db : atomq::replication::ReplicatedStorage::ReplicaDbs())
      dbs.push_back(db);
  }
  absl::StatusOr<atomq::Store> store = atomq::OpenStore(f->server, dbs, p::kMetaDb);
  if (!store.ok()) return store.status();
  f->opts.access = store->access;
  f->cfg.participant_id = f->server.id;
  f->cfg.boot_count = store->meta.boot_count();
  f->opts.channels_max = f->server.channels_max;
  f->opts.self_address = f->server.listen;
  f->opts.list_limit_max = f->server.list_limit_max;
  f->opts.data_dir = f->server.data_dir;
  f->cfg.random_bytes = KernelRandomBytes;
  return store;
}

// One disk: recovers from the store, serves until SIGINT/SIGTERM, then stops.
int ServeAlone(ParticipantFlags* f, atomq::Store* store) {
  const std::string& listen = f->server.listen;
  // Health says NOT_SERVING (and calls UNAVAILABLE) until recovery is done.
  auto stand_in = atomq::StandInServer::Start(listen, ServedNode::Services(),
                                              atomq::ServerCredentials(f->server.tls));
  if (!stand_in.ok()) return Fail(std::string(stand_in.status().message()));
  auto served = ServedNode::Start(f, store->storage.get(), [&] { stand_in->reset(); });
  if (!served.ok()) return Fail(std::string(served.status().message()));
  atomq::LogLine(absl::StrCat("atomq-participant ", f->server.id, " serving on ", listen, " (boot ",
                              store->meta.boot_count(), ")"));
  ServedNode* target = served->get();
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

// A replica of the participant's group: serves while it leads, each time
// as a new start (boot) numbered by the group's leadership epoch.
int ServeInGroup(ParticipantFlags* f, atomq::Store* store) {
  namespace r = atomq::replication;
  absl::Status st = r::ServeInGroup(
      f->group, f->server, ServedNode::Services(), f->opts.access, store->storage.get(),
      [f](atomq::Storage* replica, uint64_t epoch, const std::function<void()>& release,
          grpc::Service* group_status) -> absl::StatusOr<std::unique_ptr<r::Leading>> {
        f->cfg.boot_count = epoch;
        auto served = ServedNode::Start(f, replica, release, group_status);
        if (!served.ok()) return served.status();
        return std::unique_ptr<r::Leading>(std::move(*served));
      });
  if (!st.ok()) return Fail(std::string(st.message()));
  store->storage.reset();
  return 0;
}

// The console knows this participant (its group), its peers and its
// coordinators.
atomq::console::ConsoleOptions ConsoleOptionsOf(const ParticipantFlags& f) {
  atomq::console::ConsoleOptions o;
  o.flags = f.console;
  o.tls = f.server.tls;
  o.access = f.opts.access;
  o.node_id = f.server.id;
  o.node_role = "participant";
  o.version = ATOMQ_VERSION;
  o.coordinators = f.opts.coordinators;
  o.participants = f.opts.peers;
  o.participants[f.server.id] = atomq::replication::CallerAddresses(f.group, f.server.listen);
  for (const auto& [id, m] : f.group.members) o.group_peers.push_back(m.peer);
  return o;
}

int Serve(ParticipantFlags* f) {
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
  CLI::App app{"atomq-participant: a durable queue node in atomq transactions"};
  app.set_version_flag("--version", ATOMQ_VERSION);
  atomq::SetBuildVersion(ATOMQ_VERSION);
  ParticipantFlags f;
  AddParticipantFlags(app, &f);
  CLI11_PARSE(app, argc, argv);
  DefaultShares(app, &f);
  if (int rc = CheckFlags(&f); rc != 0) return rc;
  return Serve(&f);
}
