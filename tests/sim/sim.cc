#include "tests/sim/sim.h"

#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/clock.h"
#include "common/codec.h"
#include "common/log.h"
#include "coordinator/core/coordinator_core.h"
#include "participant/core/participant_core.h"
#include "replication/raft_log.h"
#include "replication/replicated_storage.h"
#include "tests/sim/checker.h"
#include "tests/sim/sim_store.h"

namespace atomq::sim {
namespace {

using coordinator::CoordinatorCore;
using participant::ParticipantCore;

constexpr char kCoordinator[] = "c1";
constexpr char kClient[] = "client";
const char* const kParticipants[] = {"p1", "p2", "p3"};
constexpr int kParticipantCount = 3;

// Simulated milliseconds.
constexpr int64_t kChaosMs = 3000;  // faults happen only before this
constexpr int64_t kIssueMs = 1500;  // the client starts transactions before this
constexpr int64_t kMajorityPhaseMs = 8000;
constexpr int64_t kHealedPhaseMs = 15000;
constexpr int64_t kRpcTimeoutMs = 300;
constexpr int64_t kExecuteTimeoutMs = 1500;
// Replica groups: elections well within the chaos phase, and a log
// compacted often enough that members behind it copy another's state.
constexpr uint32_t kElectionMs = 150;
constexpr uint32_t kHeartbeatMs = 30;
constexpr uint64_t kSnapshotEntries = 20;
constexpr uint32_t kSnapshotTrailing = 5;

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  uint64_t Next() { return gen_(); }
  // Uniform in [lo, hi].
  int64_t Range(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(gen_() % static_cast<uint64_t>(hi - lo + 1));
  }
  bool Chance(double p) { return static_cast<double>(gen_() >> 11) * 0x1.0p-53 < p; }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[gen_() % v.size()];
  }

 private:
  std::mt19937_64 gen_;
};

// Lease tokens for a node's incarnation, from the run's seed: a replay
// makes the same ones, and drawing them leaves the run's other choices be.
std::function<void(uint8_t*, size_t)> SeededBytes(uint64_t seed, const std::string& node,
                                                  uint64_t incarnation) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a of the node id
  for (unsigned char c : node) h = (h ^ c) * 0x100000001b3ull;
  auto gen = std::make_shared<std::mt19937_64>(seed ^ h ^ (incarnation * 0x9E3779B97F4A7C15ull));
  return [gen](uint8_t* out, size_t n) {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>((*gen)() >> 56);
  };
}

enum class Kind {
  kPrepare,
  kPreCommit,
  kCommit,
  kAbort,
  kQuery,
  kPromise,
  kAccept,
  kExecute,
  kForget  // the coordinator's END notice: one way, nothing answers it
};

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kPrepare:
      return "Prepare";
    case Kind::kPreCommit:
      return "PreCommit";
    case Kind::kCommit:
      return "Commit";
    case Kind::kAbort:
      return "Abort";
    case Kind::kQuery:
      return "QueryState";
    case Kind::kPromise:
      return "Promise";
    case Kind::kAccept:
      return "Accept";
    case Kind::kExecute:
      return "Execute";
    case Kind::kForget:
      return "Forget";
  }
  return "?";
}

struct Request {
  Kind kind = Kind::kQuery;
  std::string txn_id;
  v1::PrepareRequest prepare;
  v1::ExecuteRequest execute;
  uint64_t ballot = 0;
  v1::TxnState value = v1::TXN_STATE_UNSPECIFIED;
};

struct Answer {
  absl::Status status;
  participant::ReplyBody body;                     // from a participant
  v1::ExecuteResponse execute;                     // from the coordinator's Execute
  v1::TxnState state = v1::TXN_STATE_UNSPECIFIED;  // from the coordinator's QueryState
};

using Callback = std::function<void(const Answer&)>;

// An RPC under way: completed once, by the first reply or by its deadline.
struct Call {
  std::string from;
  uint64_t from_incarnation = 0;
  Callback done;
};

// A request a core is working on: where its reply goes.
struct Route {
  uint64_t call = 0;
  Kind kind = Kind::kQuery;
  std::string txn_id;
  uint64_t ballot = 0;
};

class Sim;

// How one replica reaches the others of its group: the simulated network.
class ReplicaLink : public replication::Transport {
 public:
  ReplicaLink(Sim* sim, std::string node, uint64_t member)
      : sim_(sim), node_(std::move(node)), member_(member) {}
  void Send(uint64_t to, const std::string& address, replication::RaftMessage message) override;
  void FetchState(uint64_t to, const std::string& address, uint64_t bytes_max,
                  FetchedFn done) override;
  void Probe(uint64_t to, const std::string& address, ProbedFn done) override;

 private:
  Sim* const sim_;
  const std::string node_;
  const uint64_t member_;
};

// One replica of a participant group, on its own disk.
struct Replica {
  uint64_t member = 0;
  std::string name;  // on the network: "p1/2"
  std::unique_ptr<SimStore> store;
  std::unique_ptr<ReplicaLink> link;
  std::unique_ptr<replication::ReplicatedStorage> group;  // null while down
  uint64_t incarnation = 0;
};

struct Group {
  std::vector<Replica> replicas;  // member j is replicas[j - 1]
  uint64_t host = 0;              // the member whose store the core runs on (0: none)
  uint64_t serving_term = 0;
  uint64_t version = 0;                  // the highest index any replica applied
  std::map<uint64_t, uint64_t> hash_at;  // version -> hash of the group's state there
  bool wiped = false;                    // at most one wiped disk per group and run
};

struct Node {
  std::string id;
  bool is_coordinator = false;
  bool up = true;
  uint64_t incarnation = 1;  // raised by every crash: stale events are dropped
  Disk disk;
  std::deque<Batch> unsynced;
  size_t syncing = 0;  // a prefix of `unsynced` under fsync
  std::unique_ptr<coordinator::DurableView> coordinator_view;
  std::unique_ptr<participant::DurableView> participant_view;
  std::unique_ptr<CoordinatorCore> coordinator;
  std::unique_ptr<ParticipantCore> participant;
  std::map<uint64_t, Route> routes;  // core RequestId -> route
  uint64_t next_request = 1;
  // A participant run as a group: `disk` is then what the group committed
  // (each index as the first replica applied it), `up` whether a replica
  // serves and hosts the core, on that replica's store.
  std::unique_ptr<Group> group;
};

template <typename Rec>
std::optional<Rec> Lookup(const Disk& disk, const char* db, const std::string& key) {
  auto d = disk.find(db);
  if (d == disk.end()) return std::nullopt;
  auto it = d->second.find(key);
  if (it == d->second.end()) return std::nullopt;
  Rec rec;
  if (!DecodeRecord(it->second, &rec).ok()) return std::nullopt;
  return rec;
}

class CoordinatorView : public coordinator::DurableView {
 public:
  explicit CoordinatorView(const Node* n) : n_(n) {}
  std::optional<v1::CoordinatorTxnRecord> FindTxn(const std::string& txn_id) const override {
    return Lookup<v1::CoordinatorTxnRecord>(n_->disk, coordinator::kTxnDb, txn_id);
  }

 private:
  const Node* n_;
};

class ParticipantView : public participant::DurableView {
 public:
  explicit ParticipantView(const Disk* disk) : disk_(disk) {}
  std::optional<v1::OutcomeRecord> FindOutcome(const std::string& txn_id) const override {
    return Lookup<v1::OutcomeRecord>(*disk_, participant::kOutcomesDb, txn_id);
  }
  absl::StatusOr<std::vector<uint64_t>> ScanMessages(uint64_t queue_id, uint64_t from, uint64_t to,
                                                     uint32_t limit) const override {
    std::vector<uint64_t> seqs;
    auto d = disk_->find(participant::kMessagesDb);
    if (d == disk_->end()) return seqs;
    for (auto it = d->second.lower_bound(MessageKey(queue_id, from));
         it != d->second.end() && seqs.size() < limit; ++it) {
      if (it->first.size() != 16 || DecodeU64(it->first) != queue_id) break;
      const uint64_t seq = DecodeU64(it->first.substr(8));
      if (seq >= to) break;
      seqs.push_back(seq);
    }
    return seqs;
  }

 private:
  const Disk* disk_;
};

// The simulator's time, as the replicas read it.
class SimClock : public Clock {
 public:
  explicit SimClock(const int64_t* now) : now_(now) {}
  int64_t NowMs() const override { return *now_; }

 private:
  const int64_t* now_;
};

struct ClientTxn {
  v1::ExecuteRequest request;
  bool answered = false;
  bool in_flight = false;
};

class Sim : public World, public Timers {
 public:
  explicit Sim(const Options& o)
      : options_(o),
        rng_(o.seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull),
        // A reply is checked against what its node holds: for a group, the
        // store of the replica that hosts the core (what it applied, all
        // of it committed; the group may have committed more, the core's
        // own later batches, which its replies are ordered before).
        checker_([this](const std::string& id) -> const Disk& { return CoreDisk(node(id)); }) {
    SetLogSink([this](std::string_view line) { Trace(std::string(line)); });
  }
  ~Sim() override {
    for (auto& [id, n] : nodes_) {
      if (n.group == nullptr) continue;
      for (Replica& r : n.group->replicas) r.group.reset();
    }
    SetLogSink(nullptr);
  }

  Result Run();

  // --- events (World, Timers) ---
  int64_t Now() const override { return now_; }
  void At(int64_t at, std::function<void()> fn) override {
    events_.emplace(std::make_pair(std::max(at, now_), next_seq_++), std::move(fn));
  }
  int64_t FsyncDelay() override {
    return rng_.Chance(slow_fsync_) ? rng_.Range(40, 400) : rng_.Range(1, 8);
  }

  // --- between the replicas of a group (ReplicaLink) ---
  void SendRaft(const std::string& id, uint64_t from, uint64_t to, replication::RaftMessage m);
  void FetchRaftState(const std::string& id, uint64_t from, uint64_t to, uint64_t bytes_max,
                      replication::Transport::FetchedFn done);
  void ProbeRaft(const std::string& id, uint64_t from, uint64_t to,
                 replication::Transport::ProbedFn done);

 private:
  // Runs events until `until`; false when none is left.
  void RunUntil(int64_t until);
  void Trace(const std::string& line) {
    if (options_.verbose)
      std::fprintf(stderr, "%8lld %s\n", static_cast<long long>(now_), line.c_str());
  }

  Node& node(const std::string& id) {
    auto it = nodes_.find(id);
    ATOMQ_CHECK(it != nodes_.end(), "a simulated node exists");
    return it->second;
  }
  bool Up(const std::string& id) { return id == kClient || node(id).up; }
  uint64_t Incarnation(const std::string& id) { return id == kClient ? 1 : node(id).incarnation; }

  // --- network ---
  bool Cut(const std::string& a, const std::string& b) const {
    return cuts_.count({std::min(a, b), std::max(a, b)}) > 0;
  }
  void Deliver(const std::string& from, const std::string& to, std::function<void()> arrive);
  void Rpc(const std::string& from, const std::string& to, Request req, int64_t timeout_ms,
           Callback done);
  void Complete(uint64_t call, const Answer& a);
  void Handle(const std::string& to, uint64_t call, const Request& req);
  void Reply(Node& n, uint64_t request, Answer a);

  // --- nodes ---
  void Boot(Node& n);
  void Crash(Node& n);
  void Drain(Node& n);
  void DrainCoordinator(Node& n);
  void DrainParticipant(Node& n);
  void MaybeSync(Node& n);
  void SyncDone(const std::string& id, uint64_t incarnation);
  void PlantEarlyReply(Node& n, const Batch& b);
  // The store the core reads: the hosting replica's, or the node's disk.
  Disk& CoreDisk(Node& n);

  // --- replica groups (replicas > 1) ---
  Replica& replica(Node& n, uint64_t member) { return n.group->replicas.at(member - 1); }
  void MakeGroup(Node& n);
  void StartReplica(Node& n, uint64_t member);
  void StopReplica(Node& n, uint64_t member);
  void WipeReplica(Node& n, uint64_t member);
  void StartGroup(Node& n);  // every replica that is down
  void StopGroup(Node& n);
  // Hosts the core on the replica that serves, rebuilt whenever that changes.
  void Reconcile(const std::string& id);
  void Unhost(Node& n);
  void SubmitToGroup(Node& n, Batch b);
  // A batch landed on a replica's disk: an applied index feeds the group's
  // state and checks the replica holds the group's state at that version.
  void ReplicaSynced(const std::string& id, uint64_t member, const Batch& b);
  void GroupFault(Node& n);
  void Restart(Node& n) {
    if (n.group != nullptr) {
      StartGroup(n);
    } else if (!n.up) {
      Boot(n);
    }
  }
  // A durable step on a group takes three fsyncs in a row (the leader's
  // log, a follower's, the apply), each of them slow at times: a deadline
  // shorter than that would make every termination round time out.
  int64_t RpcTimeoutMs() const { return options_.replicas > 1 ? 3 * kRpcTimeoutMs : kRpcTimeoutMs; }
  void Down(Node& n) { n.group ? StopGroup(n) : Crash(n); }

  // --- workload and faults ---
  void IssueTxn(int index);
  void SendExecute(const std::string& txn_id);
  void Fault();
  // A participant's outcome collection, as its adapter runs it: every
  // gc_interval_ms_, the durable forgettable entries past the retention.
  void CollectOutcomes(const std::string& id);
  // A consumer that leases from "q" on a participant and never acks.
  void Consume();
  void DrainQueues();

  Options options_;
  Rng rng_;
  Checker checker_;
  int64_t now_ = 0;
  uint64_t next_seq_ = 0;
  uint64_t steps_ = 0;
  uint64_t hash_ = 1469598103934665603ull;
  std::map<std::pair<int64_t, uint64_t>, std::function<void()>> events_;
  std::map<std::string, Node> nodes_;
  std::map<uint64_t, Call> calls_;
  uint64_t next_call_ = 1;
  std::set<std::pair<std::string, std::string>> cuts_;
  bool faults_ = true;
  std::map<std::string, ClientTxn> client_;
  std::set<std::string> keep_down_;  // nodes the liveness phase keeps down

  // Per-seed knobs.
  double drop_ = 0, duplicate_ = 0, slow_net_ = 0, slow_fsync_ = 0;
  uint32_t in_doubt_after_ms_ = 100;
  uint32_t termination_after_ms_ = 200;
  // Outcome collection: a retention longer than any message stays in flight
  // (at most 200 ms), and short enough that outcomes go during the run.
  uint32_t retention_ms_ = 500;
  uint32_t gc_interval_ms_ = 100;
  uint32_t gc_batch_max_ = 2;
  uint64_t outcomes_collected_ = 0;
  uint32_t queue_memory_window_ = 2;  // tiny, so that backlogs page in from disk
  SimClock clock_{&now_};
  uint64_t state_copies_ = 0;
  uint64_t leaderships_ = 0;
};

void Sim::RunUntil(int64_t until) {
  while (!events_.empty() && events_.begin()->first.first <= until) {
    auto it = events_.begin();
    now_ = it->first.first;
    std::function<void()> fn = std::move(it->second);
    hash_ = (hash_ ^ static_cast<uint64_t>(now_)) * 1099511628211ull;
    hash_ = (hash_ ^ it->first.second) * 1099511628211ull;
    events_.erase(it);
    fn();
    ++steps_;
    checker_.AfterStep();
  }
  now_ = std::max(now_, until);
}

void Sim::Deliver(const std::string& from, const std::string& to, std::function<void()> arrive) {
  if (Cut(from, to)) return;
  if (faults_ && rng_.Chance(drop_)) return;
  const int copies = faults_ && rng_.Chance(duplicate_) ? 2 : 1;
  auto shared = std::make_shared<std::function<void()>>(std::move(arrive));
  for (int i = 0; i < copies; ++i) {
    int64_t delay = rng_.Chance(slow_net_) ? rng_.Range(20, 200) : rng_.Range(0, 6);
    At(now_ + delay, [this, from, to, shared] {
      if (Cut(from, to)) return;  // partitioned while in flight
      (*shared)();
    });
  }
}

void Sim::Rpc(const std::string& from, const std::string& to, Request req, int64_t timeout_ms,
              Callback done) {
  const uint64_t id = next_call_++;
  calls_[id] = Call{from, Incarnation(from), std::move(done)};
  Trace(absl::StrCat(from, " -> ", to, " ", KindName(req.kind), " ", req.txn_id,
                     req.ballot ? absl::StrCat(" ballot ", req.ballot) : "",
                     req.value != v1::TXN_STATE_UNSPECIFIED
                         ? absl::StrCat(" ", v1::TxnState_Name(req.value))
                         : ""));
  auto shared = std::make_shared<Request>(std::move(req));
  Deliver(from, to, [this, to, id, shared] { Handle(to, id, *shared); });
  At(now_ + timeout_ms, [this, id] {
    Complete(id, Answer{absl::DeadlineExceededError("rpc deadline"), {}, {}, {}});
  });
}

void Sim::Complete(uint64_t id, const Answer& a) {
  auto it = calls_.find(id);
  if (it == calls_.end()) return;
  Call c = std::move(it->second);
  calls_.erase(it);
  if (!Up(c.from) || Incarnation(c.from) != c.from_incarnation) return;
  c.done(a);
}

void Sim::Handle(const std::string& to, uint64_t call, const Request& req) {
  if (to == kClient) return;
  Node& n = node(to);
  if (!n.up) return;
  if (req.kind == Kind::kForget) {
    n.participant->Forget(req.txn_id, now_);
    return Drain(n);
  }
  const uint64_t rid = n.next_request++;
  n.routes[rid] = Route{call, req.kind, req.txn_id, req.ballot};
  if (n.is_coordinator) {
    if (req.kind == Kind::kExecute) n.coordinator->Execute(rid, req.execute, now_);
    if (req.kind == Kind::kQuery) n.coordinator->QueryState(rid, req.txn_id, now_);
  } else {
    ParticipantCore& c = *n.participant;
    switch (req.kind) {
      case Kind::kPrepare:
        c.Prepare(rid, req.prepare, now_);
        break;
      case Kind::kPreCommit:
        c.PreCommit(rid, req.txn_id, now_);
        break;
      case Kind::kCommit:
        c.Commit(rid, req.txn_id, now_);
        break;
      case Kind::kAbort:
        c.Abort(rid, req.txn_id, now_);
        break;
      case Kind::kQuery:
        c.QueryState(rid, req.txn_id, now_);
        break;
      case Kind::kPromise:
        c.Promise(rid, req.txn_id, req.ballot, now_);
        break;
      case Kind::kAccept:
        c.Accept(rid, req.txn_id, req.ballot, req.value, now_);
        break;
      case Kind::kExecute:
      case Kind::kForget:
        break;
    }
  }
  Drain(n);
}

void Sim::Reply(Node& n, uint64_t request, Answer a) {
  auto r = n.routes.find(request);
  if (r == n.routes.end()) return;  // answered early (a plant), or from before a crash
  const uint64_t call = r->second.call;
  n.routes.erase(r);
  auto c = calls_.find(call);
  if (c == calls_.end()) return;  // the caller gave up
  const std::string to = c->second.from;
  auto shared = std::make_shared<Answer>(std::move(a));
  Deliver(n.id, to, [this, call, shared] { Complete(call, *shared); });
}

void Sim::Boot(Node& n) {
  n.up = true;
  if (n.is_coordinator) {
    coordinator::Config c;
    c.coordinator_id = n.id;
    c.coordinator_address = n.id;
    for (const char* p : kParticipants) c.participants[p] = p;
    c.boot_count = n.incarnation;
    c.txn_timeout_ms = 300;
    c.resend_initial_ms = 10;
    c.resend_max_ms = options_.replicas > 1 ? 600 : 200;  // as for a participant, below
    c.termination_after_ms = termination_after_ms_;
    if (options_.plant == Plant::kCommitWithoutVotes || options_.plant == Plant::kOnePhaseMulti ||
        options_.plant == Plant::kOnePhasePresumedAbort ||
        options_.plant == Plant::kPreparingPresumedAbort) {
      c.plant = options_.plant;
    }
    // Parallel commit in every other seed (always for the plant that breaks it).
    c.parallel_commit = options_.seed % 2 == 0 || options_.plant == Plant::kPreparingPresumedAbort;
    n.coordinator_view = std::make_unique<CoordinatorView>(&n);
    n.coordinator = std::make_unique<CoordinatorCore>(std::move(c), n.coordinator_view.get());
    std::vector<v1::CoordinatorTxnRecord> records;
    for (const auto& [key, value] : n.disk[coordinator::kTxnDb]) {
      v1::CoordinatorTxnRecord rec;
      ATOMQ_CHECK(DecodeRecord(value, &rec).ok(), "simulated disks hold valid records");
      records.push_back(std::move(rec));
    }
    n.coordinator->Recover(std::move(records), now_);
  } else {
    participant::Config c;
    c.participant_id = n.id;
    c.boot_count = n.incarnation;
    c.in_doubt_after_ms = in_doubt_after_ms_;
    c.resend_initial_ms = 10;
    // A termination round waits this long before another preempts it: on a
    // group, longer than a durable step (RpcTimeoutMs), or rounds duel.
    c.resend_max_ms = options_.replicas > 1 ? 600 : 200;
    c.queue_memory_window = queue_memory_window_;
    c.retention_ms = retention_ms_;
    c.random_bytes = SeededBytes(options_.seed, n.id, n.incarnation);
    if (options_.plant == Plant::kLeaderIgnoresAccepted ||
        options_.plant == Plant::kForgetBeforeEnd) {
      c.plant = options_.plant;
    }
    n.participant_view = std::make_unique<ParticipantView>(&CoreDisk(n));
    n.participant = std::make_unique<ParticipantCore>(std::move(c), n.participant_view.get());
    // As the adapter does: every record of every database.
    absl::StatusOr<participant::RecoveredState> state = participant::schema::LoadRecoveredState(
        [&](const char* db, const participant::schema::RecordFn& fn) {
          for (const auto& [key, value] : CoreDisk(n)[db]) {
            if (!fn(key, value)) break;
          }
          return absl::OkStatus();
        });
    ATOMQ_CHECK(state.ok(), "simulated disks hold valid records");
    n.participant->Recover(*std::move(state), now_);
  }
  Trace(absl::StrCat(n.id, " up (incarnation ", n.incarnation, ")"));
  Drain(n);
}

void Sim::Crash(Node& n) {
  if (!n.up) return;
  Trace(absl::StrCat(n.id, " CRASH (", n.unsynced.size(), " unsynced batches lost)"));
  n.up = false;
  ++n.incarnation;
  n.unsynced.clear();
  n.syncing = 0;
  n.routes.clear();
  n.coordinator.reset();
  n.participant.reset();
  if (options_.plant == Plant::kForgetPrepared && !n.is_coordinator) {
    // TEST ONLY: a disk that loses PREPARED records (never really synced).
    auto& prepared = n.disk[participant::kPreparedDb];
    for (auto it = prepared.begin(); it != prepared.end();) {
      v1::PreparedRecord rec;
      if (DecodeRecord(it->second, &rec).ok() && rec.state() == v1::PREPARED) {
        it = prepared.erase(it);
      } else {
        ++it;
      }
    }
  }
}

void Sim::MaybeSync(Node& n) {
  if (n.syncing > 0 || n.unsynced.empty()) return;
  n.syncing = n.unsynced.size();
  const int64_t d = rng_.Chance(slow_fsync_) ? rng_.Range(40, 400) : rng_.Range(1, 8);
  At(now_ + d, [this, id = n.id, inc = n.incarnation] { SyncDone(id, inc); });
}

void Sim::SyncDone(const std::string& id, uint64_t incarnation) {
  Node& n = node(id);
  if (!n.up || n.incarnation != incarnation) return;
  const size_t k = n.syncing;
  n.syncing = 0;
  std::vector<uint64_t> tokens;
  for (size_t i = 0; i < k && !n.unsynced.empty(); ++i) {
    Batch b = std::move(n.unsynced.front());
    n.unsynced.pop_front();
    for (const Write& w : b.writes) {
      if (w.erase) {
        checker_.OnErase(n.id, w.db, w.key);
        const size_t gone = n.disk[w.db].erase(w.key);
        if (w.db == participant::kOutcomesDb) outcomes_collected_ += gone;
      } else {
        checker_.OnPut(n.id, w.db, w.key, w.value);
        n.disk[w.db][w.key] = w.value;
      }
    }
    tokens.push_back(b.token);
  }
  for (uint64_t token : tokens) {
    if (n.is_coordinator) {
      n.coordinator->OnPersisted(token, absl::OkStatus(), now_);
    } else {
      n.participant->OnPersisted(token, absl::OkStatus(), now_);
    }
    Drain(n);
  }
  MaybeSync(n);
}

void Sim::Drain(Node& n) {
  if (!n.up) return;
  if (n.is_coordinator) {
    DrainCoordinator(n);
  } else {
    DrainParticipant(n);
  }
}

// TEST ONLY ("reply-before-durable"): answers COMMITTED as soon as the
// COMMIT record is handed to the disk, the bug the checker must catch.
void Sim::PlantEarlyReply(Node& n, const Batch& b) {
  for (const Write& w : b.writes) {
    v1::CoordinatorTxnRecord rec;
    if (w.erase || w.db != coordinator::kTxnDb || !DecodeRecord(w.value, &rec).ok() ||
        rec.state() != v1::STATE_COMMITTED) {
      continue;
    }
    std::vector<uint64_t> requests;
    for (const auto& [rid, route] : n.routes) {
      if (route.kind == Kind::kExecute && route.txn_id == rec.txn_id()) requests.push_back(rid);
    }
    for (uint64_t rid : requests) {
      Answer a;
      a.execute.set_txn_id(rec.txn_id());
      a.execute.set_outcome(v1::COMMITTED);
      Reply(n, rid, std::move(a));
    }
  }
}

void Sim::DrainCoordinator(Node& n) {
  coordinator::Output out = n.coordinator->TakeOutput();
  for (const std::string& line : out.log) Trace(absl::StrCat(n.id, ": ", line));
  for (Batch& b : out.persist) {
    if (options_.plant == Plant::kReplyBeforeDurable) PlantEarlyReply(n, b);
    n.unsynced.push_back(std::move(b));
  }
  MaybeSync(n);
  for (coordinator::OutMessage& m : out.send) {
    Request req;
    req.txn_id = m.txn_id;
    req.ballot = m.ballot;
    req.value = m.value;
    switch (m.type) {
      case coordinator::MsgType::kPrepare:
        req.kind = Kind::kPrepare;
        req.prepare = std::move(m.prepare);
        break;
      case coordinator::MsgType::kPreCommit:
        req.kind = Kind::kPreCommit;
        break;
      case coordinator::MsgType::kCommit:
        req.kind = Kind::kCommit;
        break;
      case coordinator::MsgType::kAbort:
        req.kind = Kind::kAbort;
        break;
      case coordinator::MsgType::kPromise:
        req.kind = Kind::kPromise;
        break;
      case coordinator::MsgType::kAccept:
        req.kind = Kind::kAccept;
        break;
      case coordinator::MsgType::kForget:
        req.kind = Kind::kForget;
        break;
      case coordinator::MsgType::kQuery:
        req.kind = Kind::kQuery;
        break;
    }
    const Kind kind = req.kind;
    const std::string txn = m.txn_id, p = m.participant;
    const uint64_t ballot = m.ballot;
    Rpc(n.id, m.address, std::move(req), RpcTimeoutMs(),
        [this, kind, txn, p, ballot](const Answer& a) {
          Node& c = node(kCoordinator);
          CoordinatorCore& core = *c.coordinator;
          switch (kind) {
            case Kind::kPrepare:
              core.OnPrepareReply(txn, p,
                                  a.status.ok() ? absl::StatusOr<v1::PrepareResponse>(
                                                      std::get<v1::PrepareResponse>(a.body))
                                                : a.status,
                                  now_);
              break;
            case Kind::kPreCommit:
              core.OnPreCommitReply(txn, p, a.status, now_);
              break;
            case Kind::kCommit:
              core.OnCommitReply(txn, p,
                                 a.status.ok() ? absl::StatusOr<v1::CommitResponse>(
                                                     std::get<v1::CommitResponse>(a.body))
                                               : a.status,
                                 now_);
              break;
            case Kind::kAbort:
              core.OnAbortReply(txn, p, a.status, now_);
              break;
            case Kind::kQuery:
              core.OnQueryReply(txn, p,
                                a.status.ok() ? absl::StatusOr<v1::QueryStateResponse>(
                                                    std::get<v1::QueryStateResponse>(a.body))
                                              : absl::StatusOr<v1::QueryStateResponse>(a.status),
                                now_);
              break;
            case Kind::kPromise:
              core.OnPromiseReply(txn, p, ballot,
                                  a.status.ok() ? absl::StatusOr<v1::PromiseResponse>(
                                                      std::get<v1::PromiseResponse>(a.body))
                                                : a.status,
                                  now_);
              break;
            case Kind::kAccept:
              core.OnAcceptReply(txn, p, ballot,
                                 a.status.ok() ? absl::StatusOr<v1::AcceptResponse>(
                                                     std::get<v1::AcceptResponse>(a.body))
                                               : a.status,
                                 now_);
              break;
            default:
              break;
          }
          Drain(c);
        });
  }
  for (const coordinator::TimerRequest& t : out.timers) {
    At(t.at_ms, [this, inc = n.incarnation, id = t.timer_id] {
      Node& c = node(kCoordinator);
      if (!c.up || c.incarnation != inc) return;
      c.coordinator->OnTimer(id, now_);
      Drain(c);
    });
  }
  for (coordinator::ExecuteReply& r : out.replies) {
    Answer a;
    a.status = r.status;
    a.execute = std::move(r.response);
    Reply(n, r.request, std::move(a));
  }
  for (const coordinator::StateReply& r : out.state_replies) {
    Answer a;
    a.state = r.state;
    Reply(n, r.request, std::move(a));
  }
}

void Sim::DrainParticipant(Node& n) {
  participant::Output out = n.participant->TakeOutput();
  for (const std::string& line : out.log) Trace(absl::StrCat(n.id, ": ", line));
  for (Batch& b : out.persist) {
    if (n.group != nullptr) {
      SubmitToGroup(n, std::move(b));
    } else {
      n.unsynced.push_back(std::move(b));
    }
  }
  MaybeSync(n);
  const std::string self = n.id;
  for (participant::OutQuery& q : out.queries) {
    Request req;
    req.kind = Kind::kQuery;
    req.txn_id = q.txn_id;
    const bool to_coordinator = q.to_coordinator;
    const std::string txn = q.txn_id, target = q.target;
    Rpc(self, q.target, std::move(req), RpcTimeoutMs(),
        [this, self, txn, target, to_coordinator](const Answer& a) {
          Node& me = node(self);
          v1::QueryStateResponse resp;
          if (a.status.ok()) {
            if (to_coordinator) {
              resp.set_state(a.state);
            } else {
              resp = std::get<v1::QueryStateResponse>(a.body);
            }
          }
          absl::StatusOr<v1::QueryStateResponse> r =
              a.status.ok() ? absl::StatusOr<v1::QueryStateResponse>(resp) : a.status;
          me.participant->OnQueryReply(txn, target, r, now_);
          Drain(me);
        });
  }
  for (participant::OutPeerMsg& m : out.peer_msgs) {
    Request req;
    req.txn_id = m.txn_id;
    req.ballot = m.ballot;
    req.value = m.value;
    switch (m.type) {
      case participant::PeerMsgType::kPromise:
        req.kind = Kind::kPromise;
        break;
      case participant::PeerMsgType::kAccept:
        req.kind = Kind::kAccept;
        break;
      case participant::PeerMsgType::kCommit:
        req.kind = Kind::kCommit;
        break;
      case participant::PeerMsgType::kAbort:
        req.kind = Kind::kAbort;
        break;
    }
    const Kind kind = req.kind;
    const std::string txn = m.txn_id, target = m.target;
    const uint64_t ballot = m.ballot;
    Rpc(self, m.target, std::move(req), RpcTimeoutMs(),
        [this, self, kind, txn, target, ballot](const Answer& a) {
          Node& me = node(self);
          if (kind == Kind::kPromise) {
            me.participant->OnPromiseReply(
                txn, target, ballot,
                a.status.ok()
                    ? absl::StatusOr<v1::PromiseResponse>(std::get<v1::PromiseResponse>(a.body))
                    : a.status,
                now_);
          } else if (kind == Kind::kAccept) {
            me.participant->OnAcceptReply(txn, target, ballot,
                                          a.status.ok() ? absl::StatusOr<v1::AcceptResponse>(
                                                              std::get<v1::AcceptResponse>(a.body))
                                                        : a.status,
                                          now_);
          }
          Drain(me);
        });
  }
  for (const participant::TimerRequest& t : out.timers) {
    At(t.at_ms, [this, self, inc = n.incarnation, id = t.timer_id] {
      Node& me = node(self);
      if (!me.up || me.incarnation != inc) return;
      me.participant->OnTimer(id, now_);
      Drain(me);
    });
  }
  for (participant::Reply& r : out.replies) {
    auto route = n.routes.find(r.request);
    if (route != n.routes.end() && r.status.ok()) {
      const Route& rt = route->second;
      if (const auto* v = std::get_if<v1::PrepareResponse>(&r.body); v && v->vote() == v1::YES) {
        checker_.OnVoteYes(self, rt.txn_id);
      }
      if (rt.kind == Kind::kPreCommit) checker_.OnPreCommitAck(self, rt.txn_id);
      if (rt.kind == Kind::kCommit) checker_.OnCommitAck(self, rt.txn_id);
      if (const auto* v = std::get_if<v1::PromiseResponse>(&r.body); v && v->promised()) {
        checker_.OnPromised(self, rt.txn_id, rt.ballot, v->state());
      }
      if (const auto* v = std::get_if<v1::AcceptResponse>(&r.body); v && v->accepted()) {
        checker_.OnAccepted(self, rt.txn_id, rt.ballot, v->state());
      }
    }
    Answer a;
    a.status = r.status;
    a.body = std::move(r.body);
    Reply(n, r.request, std::move(a));
  }
}

void Sim::SendExecute(const std::string& txn_id) {
  ClientTxn& c = client_.at(txn_id);
  if (c.answered || c.in_flight) return;
  c.in_flight = true;
  Request req;
  req.kind = Kind::kExecute;
  req.txn_id = txn_id;
  req.execute = c.request;
  Rpc(kClient, kCoordinator, std::move(req), kExecuteTimeoutMs, [this, txn_id](const Answer& a) {
    ClientTxn& c = client_.at(txn_id);
    c.in_flight = false;
    if (a.status.ok() && !c.answered &&
        (a.execute.outcome() == v1::COMMITTED || a.execute.outcome() == v1::ABORTED)) {
      c.answered = true;
      Trace(absl::StrCat("client: ", txn_id, " ", v1::Outcome_Name(a.execute.outcome()), " ",
                         a.execute.reason()));
      checker_.OnClientOutcome(txn_id, a.execute.outcome());
      return;
    }
    if (a.status.ok()) return;
    // Retry with the same id (idempotent) after a pause.
    At(now_ + rng_.Range(50, 400), [this, txn_id] { SendExecute(txn_id); });
  });
}

void Sim::IssueTxn(int index) {
  const std::string id = absl::StrCat("t", index);
  v1::Protocol protocol = options_.mode == ProtocolMode::k2pc   ? v1::TWO_PC
                          : options_.mode == ProtocolMode::k3pc ? v1::THREE_PC
                          : rng_.Chance(0.5)                    ? v1::TWO_PC
                                                                : v1::THREE_PC;
  // One, two or three of the participants, in a random order. One
  // participant commits in one phase (its own COMMITTED outcome decides).
  std::vector<std::string> parties(kParticipants, kParticipants + kParticipantCount);
  for (int i = kParticipantCount - 1; i > 0; --i) {
    std::swap(parties[i], parties[rng_.Range(0, i)]);
  }
  const int64_t shape = rng_.Range(0, 99);
  parties.resize(shape < 25 ? 1 : shape < 70 ? 3 : 2);
  // Sometimes one part cannot be applied (a missing queue): a NO vote.
  const int no_voter = rng_.Chance(0.15) ? static_cast<int>(rng_.Range(0, parties.size() - 1)) : -1;
  ClientTxn c;
  c.request.set_txn_id(id);
  c.request.set_protocol(protocol);
  c.request.set_timeout_ms(static_cast<uint32_t>(rng_.Range(100, 1000)));
  // Half the transactions are answered at the decision, before they are
  // applied (chosen by id, not by the random stream, so seeds stay the same).
  c.request.set_reply_at_decision(id.back() % 2 == 0);
  for (size_t i = 0; i < parties.size(); ++i) {
    v1::Op* op = c.request.add_ops();
    op->set_participant(parties[i]);
    op->mutable_enqueue()->set_queue(static_cast<int>(i) == no_voter ? "missing" : "q");
    op->mutable_enqueue()->set_payload(absl::StrCat(id, "/", parties[i]));
  }
  std::vector<std::string> sorted = parties;
  std::sort(sorted.begin(), sorted.end());
  checker_.AddTxn(id, protocol, sorted);
  client_.emplace(id, std::move(c));
  Trace(absl::StrCat("client: issue ", id, " ", v1::Protocol_Name(protocol)));
  SendExecute(id);
}

void Sim::Fault() {
  if (!faults_) return;
  std::vector<std::string> all = {kCoordinator, "p1", "p2", "p3"};
  const int64_t what = rng_.Range(0, 9);
  if (what < 4) {
    Node& n = node(rng_.Pick(all));
    if (n.group != nullptr) {
      GroupFault(n);
    } else if (n.up) {
      Crash(n);
      At(now_ + rng_.Range(5, 700), [this, id = n.id, inc = n.incarnation] {
        Node& x = node(id);
        if (!x.up && x.incarnation == inc && keep_down_.count(id) == 0) Boot(x);
      });
    }
  } else if (what < 7) {
    all.push_back(kClient);
    std::string a = rng_.Pick(all), b = rng_.Pick(all);
    if (a != b) {
      auto cut = std::make_pair(std::min(a, b), std::max(a, b));
      cuts_.insert(cut);
      Trace(absl::StrCat("partition ", a, " | ", b));
      At(now_ + rng_.Range(10, 900), [this, cut] {
        cuts_.erase(cut);
        Trace(absl::StrCat("heal ", cut.first, " | ", cut.second));
      });
    }
  }
  At(now_ + rng_.Range(30, 400), [this] { Fault(); });
}

void Sim::Consume() {
  if (!faults_) return;
  Node& n = node(kParticipants[rng_.Range(0, kParticipantCount - 1)]);
  if (n.up) {
    const uint32_t max = static_cast<uint32_t>(rng_.Range(1, 3));
    const uint32_t lease_ms = static_cast<uint32_t>(rng_.Range(20, 300));
    absl::StatusOr<std::vector<participant::Lease>> got =
        n.participant->Receive("q", max, lease_ms, now_);
    ATOMQ_CHECK(got.ok(), "a simulated participant's queue can be received from");
    for (const participant::Lease& l : *got) {
      Trace(absl::StrCat(n.id, ": delivered q/", l.sequence, " (delivery ", l.delivery_count, ")"));
      checker_.OnDelivered(n.id, n.incarnation, l.sequence, l.delivery_count);
    }
    Drain(n);
  }
  At(now_ + rng_.Range(20, 300), [this] { Consume(); });
}

// Every lease has expired by now: all of "q" is ready again.
void Sim::DrainQueues() {
  for (const char* p : kParticipants) {
    Node& n = node(p);
    if (!n.up) continue;
    uint64_t counted = 0;
    for (const v1::QueueInfo& q : n.participant->ListQueues()) {
      if (q.name() == "q") counted = q.ready() + q.leased();
    }
    std::vector<uint64_t> drained;
    for (;;) {
      absl::StatusOr<std::vector<participant::Lease>> got =
          n.participant->Receive("q", 1000, 60000, now_);
      ATOMQ_CHECK(got.ok(), "a simulated participant's queue can be received from");
      if (got->empty()) break;
      for (const participant::Lease& l : *got) drained.push_back(l.sequence);
    }
    Drain(n);
    checker_.CheckDrained(n.id, 1, drained, counted);
  }
}

void Sim::CollectOutcomes(const std::string& id) {
  Node& n = node(id);
  if (n.up) {
    const int64_t cutoff = now_ - static_cast<int64_t>(retention_ms_);
    std::vector<std::string> keys;
    for (const auto& [key, value] : CoreDisk(n)[participant::kForgettableDb]) {
      if (keys.size() >= gc_batch_max_ ||
          (key.size() > 8 && static_cast<int64_t>(DecodeU64(key)) >= cutoff)) {
        break;
      }
      keys.push_back(key);
    }
    if (!keys.empty()) {
      n.participant->CollectOutcomes(keys, now_);
      Drain(n);
    }
  }
  At(now_ + gc_interval_ms_, [this, id] { CollectOutcomes(id); });
}

void SeedParticipant(const std::string& id, Disk* disk) {
  v1::QueueRecord q;
  q.set_name("q");
  q.set_id(1);
  q.set_next_sequence(1);
  (*disk)[participant::kQueuesDb]["q"] = EncodeRecord(q);
  v1::MetaRecord meta;
  meta.set_node_id(id);
  meta.set_boot_count(1);
  meta.set_next_queue_id(2);
  (*disk)[participant::kMetaDb]["meta"] = EncodeRecord(meta);
}

// A replica's state: every sub-database but the log's own.
uint64_t StateHash(const Disk& disk) {
  const std::vector<std::string>& own = replication::RaftLog::Dbs();
  uint64_t h = 1469598103934665603ull;
  auto fold = [&h](const std::string& s) {
    for (unsigned char c : EncodeU64(s.size()) + s) h = (h ^ c) * 1099511628211ull;
  };
  for (const auto& [db, records] : disk) {
    if (std::find(own.begin(), own.end(), db) != own.end() || records.empty()) continue;
    fold(db);
    for (const auto& [key, value] : records) {
      fold(key);
      fold(value);
    }
  }
  return h;
}

void ReplicaLink::Send(uint64_t to, const std::string&, replication::RaftMessage message) {
  sim_->SendRaft(node_, member_, to, std::move(message));
}

void ReplicaLink::FetchState(uint64_t to, const std::string&, uint64_t bytes_max, FetchedFn done) {
  sim_->FetchRaftState(node_, member_, to, bytes_max, std::move(done));
}

void ReplicaLink::Probe(uint64_t to, const std::string&, ProbedFn done) {
  sim_->ProbeRaft(node_, member_, to, std::move(done));
}

void Sim::ProbeRaft(const std::string& id, uint64_t from, uint64_t to,
                    replication::Transport::ProbedFn done) {
  auto shared = std::make_shared<replication::Transport::ProbedFn>(std::move(done));
  const std::string asker = replica(node(id), from).name;
  At(now_ + rng_.Range(1, 10), [this, id, from, to, asker, shared] {
    Node& x = node(id);
    absl::StatusOr<replication::PeerLog> answer = absl::UnavailableError("unreachable");
    if (to >= 1 && to <= x.group->replicas.size()) {
      Replica& target = replica(x, to);
      if (target.group != nullptr && !Cut(asker, target.name)) {
        const replication::GroupStatus s = target.group->Status();
        answer =
            replication::PeerLog{s.last_index, s.snapshot_index, target.group->Registered(from)};
      }
    }
    auto result = std::make_shared<absl::StatusOr<replication::PeerLog>>(std::move(answer));
    At(now_ + rng_.Range(1, 10), [shared, result] { (*shared)(std::move(*result)); });
  });
}

Disk& Sim::CoreDisk(Node& n) {
  if (n.group == nullptr || n.group->host == 0) return n.disk;
  return replica(n, n.group->host).store->disk();
}

void Sim::MakeGroup(Node& n) {
  n.group = std::make_unique<Group>();
  n.up = false;  // until a replica serves
  std::vector<std::string> dbs = {participant::kQueuesDb,    participant::kMessagesDb,
                                  participant::kPreparedDb,  participant::kOutcomesDb,
                                  participant::kDedupDb,     participant::kMetaDb,
                                  participant::kHeuristicDb, participant::kForgettableDb};
  for (const std::string& db : replication::ReplicatedStorage::ReplicaDbs()) dbs.push_back(db);
  for (int j = 1; j <= options_.replicas; ++j) {
    Replica r;
    r.member = uint64_t(j);
    r.name = absl::StrCat(n.id, "/", j);
    r.store = std::make_unique<SimStore>(
        this, dbs, [this, id = n.id, j](const Batch& b) { ReplicaSynced(id, uint64_t(j), b); });
    SeedParticipant(n.id, &r.store->disk());
    r.link = std::make_unique<ReplicaLink>(this, n.id, uint64_t(j));
    n.group->replicas.push_back(std::move(r));
  }
  // Index 0: the seeded state every replica starts from.
  n.group->hash_at[0] = StateHash(replica(n, 1).store->disk());
}

void Sim::StartReplica(Node& n, uint64_t member) {
  Replica& r = replica(n, member);
  if (r.group != nullptr) return;
  ++r.incarnation;
  replication::ReplicatedStorage::Options o;
  o.engine.id = member;
  o.engine.address = r.name;
  o.engine.seed = static_cast<uint32_t>(rng_.Next());
  o.engine.election_timeout = kElectionMs;
  o.engine.heartbeat_timeout = kHeartbeatMs;
  for (const Replica& m : n.group->replicas) {
    o.bootstrap.push_back(replication::Member{m.member, m.name, replication::MemberRole::kVoter});
  }
  o.snapshot_entries = kSnapshotEntries;
  o.snapshot_trailing = kSnapshotTrailing;
  o.clock = &clock_;
  if (options_.plant == Plant::kReplyBeforeReplicated ||
      options_.plant == Plant::kRejoinWithAmnesia) {
    o.plant = options_.plant;
  }
  if (!r.store->Get(replication::RaftLog::Dbs()[1], "disk").value().has_value()) {
    // A fresh (or wiped) disk: what Open would write first, written now.
    r.store->set_immediate(true);
    r.store->Submit(
        replication::ReplicatedStorage::DiskIdWrite(absl::StrCat(r.name, "#", r.incarnation)),
        [](absl::Status) {});
    if (options_.plant == Plant::kRejoinWithAmnesia) {
      // What the planted Open writes on an empty disk: a new group, at once.
      r.store->Submit(replication::RaftLog{replication::DurableState{}}.Initialize(
                          replication::RaftEngine::Bootstrap(o.bootstrap)),
                      [](absl::Status) {});
    }
    r.store->set_immediate(false);
  }
  absl::StatusOr<std::unique_ptr<replication::ReplicatedStorage>> s =
      replication::ReplicatedStorage::Open(o, r.store.get(), r.link.get(), this);
  if (!s.ok()) {
    Trace(absl::StrCat(r.name, " does not start: ", s.status().ToString()));
    return;
  }
  r.group = *std::move(s);
  r.group->SetServingHook(
      [this, id = n.id](bool, uint64_t) { At(now_, [this, id] { Reconcile(id); }); });
  Trace(absl::StrCat(r.name, " up (incarnation ", r.incarnation, ")"));
}

void Sim::StopReplica(Node& n, uint64_t member) {
  Replica& r = replica(n, member);
  if (r.group == nullptr) return;
  if (n.group->host == member) Unhost(n);
  Trace(absl::StrCat(r.name, " CRASH"));
  r.group.reset();
  r.store->Crash();
  At(now_, [this, id = n.id] { Reconcile(id); });
}

void Sim::WipeReplica(Node& n, uint64_t member) {
  StopReplica(n, member);
  Replica& r = replica(n, member);
  Trace(absl::StrCat(r.name, " DISK WIPED"));
  r.store->disk().clear();
  SeedParticipant(n.id, &r.store->disk());
  n.group->wiped = true;
}

void Sim::StartGroup(Node& n) {
  for (Replica& r : n.group->replicas) StartReplica(n, r.member);
}

void Sim::StopGroup(Node& n) {
  for (Replica& r : n.group->replicas) StopReplica(n, r.member);
}

void Sim::Unhost(Node& n) {
  if (n.group->host == 0) return;
  Trace(absl::StrCat(n.id, " core stops on ", replica(n, n.group->host).name));
  n.up = false;
  ++n.incarnation;
  n.routes.clear();
  n.participant.reset();
  n.group->host = 0;
}

void Sim::Reconcile(const std::string& id) {
  Node& n = node(id);
  uint64_t serving = 0, term = 0;
  for (Replica& r : n.group->replicas) {
    if (r.group == nullptr) continue;
    replication::GroupStatus s = r.group->Status();
    if (s.serving && keep_down_.count(id) == 0) {
      serving = r.member;
      term = r.group->Status().term;
    }
  }
  // The serving term as the hook counts it is the replica's own; the
  // engine's term tells one leadership from the next.
  if (serving == n.group->host && term == n.group->serving_term) return;
  Unhost(n);
  if (serving == 0) return;
  n.group->host = serving;
  n.group->serving_term = term;
  ++leaderships_;
  ++n.incarnation;
  Trace(absl::StrCat(n.id, " core starts on ", replica(n, serving).name, " (term ", term, ")"));
  Boot(n);
}

void Sim::SubmitToGroup(Node& n, Batch b) {
  Replica& r = replica(n, n.group->host);
  const uint64_t token = b.token;
  auto done = [this, id = n.id, inc = n.incarnation, token](absl::Status st) {
    Node& x = node(id);
    if (!x.up || x.incarnation != inc) return;
    x.participant->OnPersisted(token, st, now_);
    Drain(x);
  };
  r.group->Submit(std::move(b), std::move(done));
}

void Sim::ReplicaSynced(const std::string& id, uint64_t member, const Batch& b) {
  std::optional<uint64_t> index;
  bool copy = false;
  for (const Write& w : b.writes) {
    if (w.db == replication::ReplicatedStorage::kAppliedDb && w.key == "applied" && !w.erase) {
      index = DecodeU64(w.value);
    }
    copy |= w.clear;
  }
  if (!index.has_value()) return;
  Node& n = node(id);
  Group& g = *n.group;
  Replica& r = replica(n, member);
  if (copy) ++state_copies_;
  const uint64_t hash = StateHash(r.store->disk());
  if (*index > g.version + 1 || (*index == g.version + 1 && copy)) {
    checker_.GroupViolation(absl::StrCat(r.name, " reached version ", *index,
                                         " before any replica applied ", g.version + 1));
    return;
  }
  if (*index == g.version + 1) {
    // First applied anywhere: committed in the group, so durable.
    for (const Write& w : b.writes) {
      if (w.db == replication::ReplicatedStorage::kAppliedDb) continue;
      if (w.erase) {
        checker_.OnErase(id, w.db, w.key);
        const size_t gone = n.disk[w.db].erase(w.key);
        if (w.db == participant::kOutcomesDb) outcomes_collected_ += gone;
      } else {
        checker_.OnPut(id, w.db, w.key, w.value);
        n.disk[w.db][w.key] = w.value;
      }
    }
    g.version = *index;
    g.hash_at[*index] = hash;
    Trace(absl::StrCat(id, " version ", *index, " (first on ", r.name, ")"));
    return;
  }
  auto at = g.hash_at.find(*index);
  if (at != g.hash_at.end() && at->second != hash) {
    checker_.GroupViolation(
        absl::StrCat(r.name, " holds another state than the group's at version ", *index));
  }
}

void Sim::SendRaft(const std::string& id, uint64_t from, uint64_t to, replication::RaftMessage m) {
  Node& n = node(id);
  if (to == 0 || to > n.group->replicas.size()) return;
  Replica& sender = replica(n, from);
  if (sender.group == nullptr) return;
  m.peer = from;
  m.peer_address = sender.name;
  const std::string disk = sender.group->disk();
  auto shared = std::make_shared<replication::RaftMessage>(std::move(m));
  Deliver(sender.name, replica(n, to).name, [this, id, from, to, disk, shared] {
    Node& x = node(id);
    Replica& target = replica(x, to);
    if (target.group == nullptr) return;
    if (options_.plant != Plant::kRejoinWithAmnesia) {
      absl::Status st = target.group->CheckPeer(from, disk);
      if (!st.ok()) {
        Replica& back = replica(x, from);
        if (back.group != nullptr && back.group->disk() == disk) {
          back.group->Refused(to, std::string(st.message()));
        }
        return;
      }
    }
    target.group->Receive(*shared);
  });
}

void Sim::FetchRaftState(const std::string& id, uint64_t from, uint64_t to, uint64_t bytes_max,
                         replication::Transport::FetchedFn done) {
  Node& n = node(id);
  auto shared = std::make_shared<replication::Transport::FetchedFn>(std::move(done));
  const std::string asker = replica(n, from).name;
  At(now_ + rng_.Range(1, 10), [this, id, to, bytes_max, asker, shared] {
    Node& x = node(id);
    Replica* source = to >= 1 && to <= x.group->replicas.size() ? &replica(x, to) : nullptr;
    absl::StatusOr<std::vector<Write>> copy = absl::UnavailableError("unreachable");
    if (source != nullptr && source->group != nullptr && !Cut(asker, source->name)) {
      std::vector<Write> records;
      uint64_t transfer = 0, bytes = 0;
      for (uint64_t seq = 0;; ++seq) {
        absl::StatusOr<replication::StateSource::Piece> p =
            source->group->source()->Next(transfer, seq, now_);
        if (!p.ok()) {
          copy = p.status();
          break;
        }
        transfer = p->transfer;
        for (Write& w : p->records) {
          bytes += w.key.size() + w.value.size();
          records.push_back(std::move(w));
        }
        if (bytes > bytes_max) {
          copy = absl::ResourceExhaustedError("over bytes_max");
          break;
        }
        if (p->last) {
          copy = std::move(records);
          break;
        }
      }
    }
    auto result = std::make_shared<absl::StatusOr<std::vector<Write>>>(std::move(copy));
    At(now_ + rng_.Range(1, 10), [shared, result] { (*shared)(std::move(*result)); });
  });
}

void Sim::GroupFault(Node& n) {
  const uint64_t member = static_cast<uint64_t>(rng_.Range(1, options_.replicas));
  Replica& r = replica(n, member);
  const int64_t what = rng_.Range(0, 19);
  if (what < 9) {
    if (r.group == nullptr) return;
    StopReplica(n, member);
    At(now_ + rng_.Range(5, 700), [this, id = n.id, member, inc = r.incarnation] {
      Node& x = node(id);
      if (replica(x, member).incarnation == inc && keep_down_.count(id) == 0) {
        StartReplica(x, member);
      }
    });
  } else if (what < 14) {
    // Cut off from the other replicas (not from the coordinator).
    std::vector<std::pair<std::string, std::string>> cuts;
    for (const Replica& o : n.group->replicas) {
      if (o.member == member) continue;
      cuts.emplace_back(std::min(r.name, o.name), std::max(r.name, o.name));
    }
    for (const auto& c : cuts) cuts_.insert(c);
    Trace(absl::StrCat("partition ", r.name, " from its group"));
    At(now_ + rng_.Range(10, 900), [this, cuts, name = r.name] {
      for (const auto& c : cuts) cuts_.erase(c);
      Trace(absl::StrCat("heal ", name));
    });
  } else if (what < 18) {
    // Leadership handed over, maybe in the middle of a transaction.
    if (n.group->host == 0 || replica(n, n.group->host).group == nullptr) return;
    absl::Status st = replica(n, n.group->host).group->Transfer(member);
    Trace(absl::StrCat(n.id, ": leadership to member ", member, ": ", st.ToString()));
  } else if (!n.group->wiped && (options_.wipes || options_.plant == Plant::kRejoinWithAmnesia)) {
    WipeReplica(n, member);
    At(now_ + rng_.Range(5, 700), [this, id = n.id, member] {
      if (keep_down_.count(id) == 0) StartReplica(node(id), member);
    });
  }
}

Result Sim::Run() {
  // Per-seed knobs, so that seeds differ in kind, not only in order.
  drop_ = std::vector<double>{0, 0.01, 0.03, 0.1}[rng_.Range(0, 3)];
  duplicate_ = std::vector<double>{0, 0.02, 0.1}[rng_.Range(0, 2)];
  slow_net_ = std::vector<double>{0, 0.05, 0.2}[rng_.Range(0, 2)];
  slow_fsync_ = std::vector<double>{0, 0.05, 0.3}[rng_.Range(0, 2)];
  in_doubt_after_ms_ = static_cast<uint32_t>(rng_.Range(20, 400));
  termination_after_ms_ = static_cast<uint32_t>(rng_.Range(30, 400));
  queue_memory_window_ = static_cast<uint32_t>(rng_.Range(1, 3));
  retention_ms_ = static_cast<uint32_t>(rng_.Range(250, 1500));
  gc_interval_ms_ = static_cast<uint32_t>(rng_.Range(20, 300));
  gc_batch_max_ = static_cast<uint32_t>(rng_.Range(1, 4));

  Node& c = nodes_[kCoordinator];
  c.id = kCoordinator;
  c.is_coordinator = true;
  for (const char* p : kParticipants) {
    Node& n = nodes_[p];
    n.id = p;
    SeedParticipant(p, &n.disk);
    if (options_.replicas > 1) MakeGroup(n);
  }
  for (auto& [id, n] : nodes_) {
    if (n.group != nullptr) {
      StartGroup(n);
    } else {
      Boot(n);
    }
  }

  const int txns = static_cast<int>(rng_.Range(3, 8));
  for (int i = 1; i <= txns; ++i) At(rng_.Range(0, kIssueMs), [this, i] { IssueTxn(i); });
  At(rng_.Range(0, 100), [this] { Fault(); });
  for (const char* p : kParticipants) At(rng_.Range(0, 300), [this, p] { CollectOutcomes(p); });
  At(rng_.Range(0, 300), [this] { Consume(); });
  RunUntil(kChaosMs);

  // Liveness. Faults stop; the network heals.
  faults_ = false;
  cuts_.clear();
  bool any_3pc = false;
  for (const auto& [id, t] : client_) any_3pc |= t.request.protocol() == v1::THREE_PC;
  if (any_3pc) {
    // 3PC: the coordinator stays down, and so does one participant; every
    // transaction with a majority of its participants up must decide.
    const std::string down = kParticipants[rng_.Range(0, kParticipantCount - 1)];
    keep_down_ = {kCoordinator, down};
    Crash(node(kCoordinator));
    Down(node(down));
    std::set<std::string> up;
    for (const char* p : kParticipants) {
      if (down == p) continue;
      up.insert(p);
      Restart(node(p));
    }
    RunUntil(now_ + kMajorityPhaseMs);
    checker_.CheckMajorityProgress(up);
    keep_down_.clear();
  }
  for (auto& [id, n] : nodes_) {
    if (n.group != nullptr) {
      StartGroup(n);
    } else if (!n.up) {
      Boot(n);
    }
  }
  // The client retries whatever it was not told.
  for (auto& [id, t] : client_) {
    if (!t.answered) At(now_ + rng_.Range(0, 50), [this, id = id] { SendExecute(id); });
  }
  const int64_t end = now_ + kHealedPhaseMs;
  for (int64_t t = now_ + 1000; t < end; t += 1000) {
    At(t, [this] {
      for (auto& [id, x] : client_) {
        if (!x.answered && !x.in_flight) SendExecute(id);
      }
    });
  }
  RunUntil(end);
  checker_.CheckAllDecided();
  DrainQueues();

  Result r;
  r.seed = options_.seed;
  r.txns = client_.size();
  for (const auto& [id, t] : client_) {
    std::optional<v1::Outcome> o = checker_.told(id);
    r.commits += o == v1::COMMITTED;
    r.aborts += o == v1::ABORTED;
    r.one_phase_commits += o == v1::COMMITTED && t.request.ops_size() == 1;
  }
  r.steps = steps_;
  r.outcomes_collected = outcomes_collected_;
  r.state_copies = state_copies_;
  r.leaderships = leaderships_;
  r.trace_hash = hash_;
  r.violations = checker_.violations();
  r.blocked = checker_.blocked();
  return r;
}

}  // namespace

Result RunSeed(const Options& options) {
  Sim sim(options);
  return sim.Run();
}

const std::vector<std::string>& Plants() { return PlantNames(); }

const char* ModeName(ProtocolMode mode) {
  switch (mode) {
    case ProtocolMode::k2pc:
      return "2pc";
    case ProtocolMode::k3pc:
      return "3pc";
    case ProtocolMode::kMixed:
      return "mixed";
  }
  return "?";
}

std::string ReplayCommand(const Options& options) {
  return absl::StrCat(
      "build/bin/atomq-sim --seed=", options.seed, " --protocol=", ModeName(options.mode),
      options.replicas > 1 ? absl::StrCat(" --replicas=", options.replicas) : "",
      options.wipes ? " --wipes" : "",
      options.plant == Plant::kNone ? "" : absl::StrCat(" --plant=", PlantName(options.plant)),
      " --verbose");
}

}  // namespace atomq::sim
