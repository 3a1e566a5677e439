// The simulator's pieces (tests/sim/sim.h), shared by sim.cc (the cores,
// the network, the workload and faults) and sim_groups.cc (participants as
// groups of replicas). Nothing outside tests/sim includes it.
#pragma once

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
#include "tests/sim/sim.h"
#include "tests/sim/sim_store.h"

namespace atomq::sim::internal {

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
// Per batch a core hands its group: the host crashes once it committed,
// before the core hears; the host is cut off from its group just after.
constexpr double kCrashAfterCommit = 0.01;
constexpr double kIsolateAfterSubmit = 0.01;

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
inline std::function<void(uint8_t*, size_t)> SeededBytes(uint64_t seed, const std::string& node,
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

inline const char* KindName(Kind k) {
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

// One replica of a group (a participant or the coordinator), on its own
// disk.
struct Replica {
  uint64_t member = 0;
  std::string name;  // on the network: "p1/2"
  std::unique_ptr<SimStore> store;
  std::unique_ptr<ReplicaLink> link;
  std::unique_ptr<replication::ReplicatedStorage> group;  // null while down
  uint64_t incarnation = 0;
  // With Options::membership: the spare, in no configuration until it
  // joins (--join) to replace a member; and the member it replaced, whose
  // disk is lost and which never starts again.
  bool spare = false;
  bool joined = false;
  bool retired = false;
};

struct Group {
  std::vector<Replica> replicas;  // member j is replicas[j - 1]
  uint64_t host = 0;              // the member whose store the core runs on (0: none)
  uint64_t serving_term = 0;
  uint64_t version = 0;                  // the highest index any replica applied
  std::map<uint64_t, uint64_t> hash_at;  // version -> hash of the group's state there
  bool wiped = false;                    // at most one wiped disk per group and run
  uint64_t replacing = 0;                // the member the spare replaces (0: none)
  bool replaced = false;                 // the old member removed: the change is done
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
  // A node run as a group: `disk` is then what the group committed (each
  // index as the first replica applied it), `up` whether a replica serves
  // and hosts the core, on that replica's store.
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
  explicit CoordinatorView(const Disk* disk) : disk_(disk) {}
  std::optional<v1::CoordinatorTxnRecord> FindTxn(const std::string& txn_id) const override {
    return Lookup<v1::CoordinatorTxnRecord>(*disk_, coordinator::kTxnDb, txn_id);
  }

 private:
  const Disk* disk_;
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
  // A write that became durable on `n`: its disk, and the checker, take it.
  void Durable(Node& n, const Write& w);
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
  // Crashes a replica and restarts it a little later.
  void CrashReplica(Node& n, uint64_t member);
  // Cuts a replica off from the rest of its group for a while.
  void IsolateReplica(Node& n, uint64_t member);
  // Member `old` loses its disk and the spare replaces it, one change at a
  // time as atomqctl cluster replace makes them for a member that is gone:
  // the old one removed, the spare added as a standby, promoted once caught
  // up.
  void ReplaceMember(Node& n, uint64_t old);
  // As an operator replaces a member: through a serving leader, once every
  // member is past its fresh start (one still asking on an empty disk
  // would wait for the lost one for good, fresh_start.h).
  bool ReplaceableNow(Node& n);
  // The next change of a replacement, asked of the serving replica; retried
  // until the configuration shows it made (a reply can be lost with a
  // leadership).
  void AdvanceReplacement(const std::string& id);
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

// The queue and meta records every participant's disk starts with.
void SeedParticipant(const std::string& id, Disk* disk);
// What node `n`'s disks start with: a participant's seed, or nothing.
void SeedNode(const Node& n, Disk* disk);

}  // namespace atomq::sim::internal
