// A replica of a group as a Storage (docs/design.md 10.2): on the leader,
// Submit turns a batch into one log entry, and its DoneFn runs only once
// that entry is committed in the group (stored on a majority's disks) and
// applied to this replica's store, with the applied index in the same
// transaction. Every replica applies the committed log in order; reads go
// to the local store. A server's core is unchanged: it waits for its
// batches as it does on a single disk.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/plant.h"
#include "common/storage.h"
#include "common/timer_queue.h"
#include "replication/fresh_start.h"
#include "replication/raft_engine.h"
#include "replication/raft_log.h"
#include "replication/state_transfer.h"

namespace atomq::replication {

// How a replica reaches the other members. Send never blocks and never
// calls back into the sender (delivery is asynchronous); messages may be
// lost, and the engine resends.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual void Send(uint64_t to, const std::string& address, RaftMessage message) = 0;
  // Copies member `to`'s state (its StateSource, to the end of one
  // version) and calls `done` once, on another thread (not at all once
  // the transport stops): RESOURCE_EXHAUSTED
  // past `bytes_max` of keys and values.
  using FetchedFn = std::function<void(absl::StatusOr<std::vector<atomq::Write>>)>;
  virtual void FetchState(uint64_t to, const std::string& address, uint64_t bytes_max,
                          FetchedFn done) = 0;
  // Asks member `to` what its log holds (fresh_start.h); `done` as for
  // FetchState.
  using ProbedFn = std::function<void(absl::StatusOr<PeerLog>)>;
  virtual void Probe(uint64_t to, const std::string& address, ProbedFn done) = 0;
};

struct GroupStatus {
  uint64_t id = 0;
  RaftState state = RaftState::kUnavailable;
  uint64_t term = 0;
  uint64_t leader_id = 0;
  std::string leader_address;
  uint64_t commit_index = 0;
  uint64_t applied_index = 0;   // this replica's version
  bool serving = false;         // the leader, with everything committed applied
  std::string fault;            // why this replica takes no part (its disk was replaced)
  std::vector<Member> members;  // the configuration as this replica knows it
  // On the leader: the last index each member is known to store.
  std::map<uint64_t, uint64_t> match;
  uint64_t last_index = 0;      // the log's last entry, stored or being stored
  uint64_t snapshot_index = 0;  // the log starts after it
  bool installing = false;      // copying another member's state
  uint64_t copies = 0;          // states installed since it started
};

// A change of a group's members (docs/design.md 10.2): one at a time, on
// the serving leader.
enum class MemberChange {
  kAdd,      // a new member, as a standby: sent the log, counted in nothing
  kPromote,  // a standby caught up in rounds, then made a voter
  kRemove,   // a member leaves the configuration (not the leader itself)
};

// "leader", "candidate", "follower" or "unavailable".
const char* RoleName(RaftState state);

class ReplicatedStorage : public Storage {
 public:
  struct Options {
    RaftEngine::Options engine;
    // The members a brand-new group starts with (only used on an empty
    // disk; a disk that holds a log keeps its own configuration).
    std::vector<Member> bootstrap;
    // An empty disk waits to be sent the group's log (a member being
    // added) instead of starting a group.
    bool join = false;
    // Every `snapshot_entries` applied entries (--snapshot_entries; 0:
    // never) the log is compacted to a snapshot point, keeping the last
    // `snapshot_trailing` (--snapshot_trailing) so that a member a little
    // behind is sent entries, not the whole state.
    uint64_t snapshot_entries = 8192;
    uint32_t snapshot_trailing = 1024;
    // The most of another member's state (keys and values) one copy may
    // hold (--state_transfer_mb_max): it is held in memory, then written
    // in one transaction.
    uint64_t state_bytes_max = 1ull << 30;
    StateSource::Options source;
    // Time for the engine and the timers (null: the real clock); it must
    // outlive the replica.
    const Clock* clock = nullptr;
    // TEST ONLY (the simulator): kReplyBeforeReplicated.
    Plant plant = Plant::kNone;
  };

  // Opens the replica on `local` (a store opened with Dbs() among its
  // sub-databases). `local`, `transport` and `timers` must outlive it.
  // FAILED_PRECONDITION when the group's registry names another disk for
  // this member: its data was lost, and it must be replaced, not rejoined.
  static absl::StatusOr<std::unique_ptr<ReplicatedStorage>> Open(const Options& options,
                                                                 Storage* local,
                                                                 Transport* transport,
                                                                 Timers* timers);
  ~ReplicatedStorage() override;

  // Where the applied index lives (key "applied").
  static constexpr char kAppliedDb[] = "raft_applied";
  // The group's disk registry (replicated): member id (8 bytes) -> the id
  // of the disk it first spoke from.
  static constexpr char kDisksDb[] = "raft_disks";
  // Every sub-database a replica needs: RaftLog's, kAppliedDb, kDisksDb.
  static const std::vector<std::string>& ReplicaDbs();
  // What Open writes first on an empty disk, `disk_id` as its id: for a
  // caller whose store cannot be waited on (the simulator), which submits
  // it before Open.
  static Batch DiskIdWrite(const std::string& disk_id);

  // This replica's disk id: random, made when its log was first written,
  // kept in its own raft_meta. Sent with every message (DeliverRequest.disk).
  const std::string& disk() const { return disk_; }
  // Whether a message from `member`, speaking from `disk`, may be taken
  // (docs/design.md 10.2, amnesia): FAILED_PRECONDITION when the registry
  // names another disk for it (it lost its data and could vote twice), or,
  // before the registry names one, when this replica heard it from another
  // disk. A member not registered yet is taken, and the serving leader
  // registers it.
  absl::Status CheckPeer(uint64_t member, const std::string& disk) ABSL_LOCKS_EXCLUDED(mu_);
  // `peer` refused this replica's messages (CheckPeer's refusal there):
  // shown as its fault (Status) and logged once. Safety does not rest on
  // it: the others refuse it whatever it believes.
  void Refused(uint64_t peer, const std::string& why) ABSL_LOCKS_EXCLUDED(mu_);
  // Whether the registry names a disk for `member`.
  bool Registered(uint64_t member) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return disks_.count(member) > 0;
  }
  // Whether this replica knows a disk for `member`: registered, or heard
  // from before (what a member starting on an empty disk asks).
  bool KnowsDisk(uint64_t member) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return disks_.count(member) > 0 || heard_.count(member) > 0;
  }

  // Storage. Submit on a replica that is not the serving leader fails at
  // once UNAVAILABLE, naming the leader when known. A batch submitted
  // while leading whose leadership is lost before it commits fails
  // UNAVAILABLE too: it may still commit under the next leader. Either way
  // the node that submitted it stops (common/core_driver.h) and is rebuilt
  // on the next serving leader. A batch the serving leader's engine
  // refuses (during a leadership transfer) fails FAILED_PRECONDITION:
  // nothing of it is in the log.
  void Submit(Batch batch, DoneFn done) override;
  absl::StatusOr<std::optional<std::string>> Get(const std::string& db,
                                                 const std::string& key) override;
  absl::Status Scan(const std::string& db, const std::string& prefix,
                    const std::function<bool(std::string_view, std::string_view)>& fn) override;
  StorageStats Stats() const override;
  std::vector<std::string> Dbs() const override { return local_->Dbs(); }
  absl::StatusOr<std::unique_ptr<StoreReader>> Read(
      const std::vector<std::string>& except) override {
    return local_->Read(except);
  }

  // A message from member `message.peer`, from any thread.
  void Receive(RaftMessage message) ABSL_LOCKS_EXCLUDED(mu_);
  // Called (outside the lock, one call at a time) when this replica starts
  // or stops serving; `term` counts the times it began serving, so that two
  // calls with `serving` true and different terms mean it stopped between.
  using ServingHook = std::function<void(bool serving, uint64_t term)>;
  void SetServingHook(ServingHook hook) ABSL_LOCKS_EXCLUDED(mu_);
  // Submit for a node built in serving term `term` (the hook's): refused
  // UNAVAILABLE in any other, so that a node built on an earlier leadership
  // never writes in a later one.
  void SubmitIn(uint64_t term, Batch batch, DoneFn done) ABSL_LOCKS_EXCLUDED(mu_);
  GroupStatus Status() ABSL_LOCKS_EXCLUDED(mu_);
  // Where other members copy this replica's state from.
  StateSource* source() { return &source_; }
  // Hands leadership to member `to`. FAILED_PRECONDITION when this replica
  // does not lead; the engine's refusal otherwise.
  absl::Status Transfer(uint64_t to) ABSL_LOCKS_EXCLUDED(mu_);
  // Changes the group's members (`member.address` only for kAdd); `done`
  // runs, never on the caller's thread, once the new configuration is
  // committed and applied here, or with why not: FAILED_PRECONDITION when
  // this replica does not serve as leader or another change is under way,
  // INVALID_ARGUMENT for a change that does not fit the members,
  // UNAVAILABLE when a standby did not catch up or leadership was lost.
  void ChangeMembers(MemberChange change, Member member, DoneFn done) ABSL_LOCKS_EXCLUDED(mu_);
  // The configuration as this replica knows it (empty while it joins).
  std::vector<Member> Members() ABSL_LOCKS_EXCLUDED(mu_);
  // Stops timers and callbacks; later events are dropped, and what waits
  // for a commit fails UNAVAILABLE.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until every DoneFn handed out has returned and none waits (or,
  // stopped, is left), so that what they call may be destroyed. Call it
  // once the node that submitted no longer submits.
  void Settle() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  ReplicatedStorage(const Options& options, Storage* local, Transport* transport, Timers* timers,
                    std::unique_ptr<RaftEngine> engine, const DurableState& disk, uint64_t applied,
                    std::string disk_id, std::map<uint64_t, std::string> disks,
                    std::map<uint64_t, std::string> heard);
  // Submit's work, under the lock; a refusal's DoneFn runs Later.
  void SubmitLocked(uint64_t term, Batch batch, DoneFn done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The serving leader writes `member` -> `disk` into the registry, once.
  void Register(uint64_t member, const std::string& disk) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A registry write being applied: learnt, and checked against this disk.
  void Registered(const atomq::Write& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A registry entry learnt: a fault when it names another disk for this one.
  void Learn(uint64_t member, const std::string& disk) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t Now() const { return clock_->NowMs(); }
  // Carries out an update: persist, send (after term and vote are durable),
  // apply what became applicable, arm the timer.
  void Handle(absl::StatusOr<RaftUpdate> update) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Send(std::vector<RaftMessage> messages) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Tells the engine which restored configuration entries are committed,
  // and learns the configuration as of the applied index.
  void RestoreConfiguration(const DurableState& disk) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Apply() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Compacts the log once snapshot_entries were applied since the last time.
  void Compact() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The engine asked to install a snapshot: copy a member's state for it.
  void BeginInstall(const SnapshotPoint& point) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Asks the next member in turn for its state (each in turn, then again
  // a second later).
  void FetchNext() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Fetched(uint64_t from, absl::StatusOr<std::vector<atomq::Write>> copy)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The copy's applied index, once it is checked to be a whole state at
  // or past the snapshot point and this replica's own.
  absl::StatusOr<uint64_t> CheckCopy(const std::vector<atomq::Write>& copy)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Installed(uint64_t applied, absl::Status status) ABSL_LOCKS_EXCLUDED(mu_);
  void Applied(uint64_t index, absl::Status status) ABSL_LOCKS_EXCLUDED(mu_);
  void Arm(uint64_t at) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnTimer() ABSL_LOCKS_EXCLUDED(mu_);
  void CheckServing() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The configuration `change` makes of the current one, or why it cannot.
  absl::StatusOr<std::vector<Member>> Changed(MemberChange change, const Member& member)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Submits `members` as the configuration; `done` when it is applied.
  void SubmitMembers(const std::vector<Member>& members, DoneFn done)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A standby being caught up: made a voter once it is, failed if it is not.
  void CheckPromotion() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailPending(const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An empty disk given members to start with (fresh_start.h): asks the
  // others what they hold, then starts the group, or waits, or refuses.
  void Probe() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Probed(uint64_t round, uint64_t member, absl::StatusOr<PeerLog> answer)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ProbeDone(uint64_t round) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartNewGroup() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // TEST ONLY (kReplyBeforeReplicated): answers what waits up to `index`
  // as soon as this replica stored it.
  void ReleaseStored(uint64_t index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues `fns` to run with `status` on the timer thread (or in Settle).
  void Later(std::vector<DoneFn> fns, absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs what Later queued, outside the lock; false when nothing was.
  bool RunLater() ABSL_LOCKS_EXCLUDED(mu_);
  // Runs `fns` outside the lock, counted in callbacks_ by the caller.
  void RunCallbacks(std::vector<std::pair<DoneFn, absl::Status>> fns) ABSL_LOCKS_EXCLUDED(mu_);
  void RunHook() ABSL_LOCKS_EXCLUDED(mu_);
  // `fn(self, args...)` as a callback that does nothing once this is gone.
  template <typename Fn>
  auto Guarded(Fn fn);

  struct Life;
  Storage* const local_;
  const std::string disk_;
  Transport* const transport_;
  Timers* const timers_;
  const Clock* const clock_;
  const Plant plant_;
  const std::shared_ptr<Life> life_;
  absl::Mutex mu_;
  std::unique_ptr<RaftEngine> engine_ ABSL_GUARDED_BY(mu_);
  RaftLog log_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t submitted_apply_ ABSL_GUARDED_BY(mu_);  // last index handed to the store
  uint64_t applied_ ABSL_GUARDED_BY(mu_);          // last index the store holds
  // The last index Apply went past: applied, or in a state copied from
  // another member (its configuration entries are still told the engine).
  uint64_t seen_ ABSL_GUARDED_BY(mu_) = 0;
  std::string conf_ ABSL_GUARDED_BY(mu_);  // the configuration as of seen_
  uint64_t conf_index_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t snapshot_index_ ABSL_GUARDED_BY(mu_) = 0;  // the last compaction or install
  const uint64_t snapshot_entries_;
  const uint32_t snapshot_trailing_;
  const uint64_t state_bytes_max_;
  StateSource source_;
  // A snapshot being installed: the members to copy it from, in turn.
  struct Installing {
    SnapshotPoint point;
    std::vector<Member> members;  // as of the snapshot point
    std::vector<uint64_t> from;
    size_t next = 0;
  };
  std::optional<Installing> installing_ ABSL_GUARDED_BY(mu_);
  uint64_t snapshot_sender_ ABSL_GUARDED_BY(mu_) = 0;  // of the last InstallSnapshot
  uint64_t copies_ ABSL_GUARDED_BY(mu_) = 0;           // states installed
  uint64_t barrier_ ABSL_GUARDED_BY(mu_) = 0;          // this term's first entry, as leader
  bool serving_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t serving_term_ ABSL_GUARDED_BY(mu_) = 0;  // times serving began
  bool hook_due_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t armed_at_ ABSL_GUARDED_BY(mu_) = UINT64_MAX;
  std::map<uint64_t, DoneFn> pending_ ABSL_GUARDED_BY(mu_);  // index -> Submit's done
  std::vector<std::pair<DoneFn, absl::Status>> later_ ABSL_GUARDED_BY(mu_);  // to run
  int callbacks_ ABSL_GUARDED_BY(mu_) = 0;  // DoneFn runs under way
  ServingHook hook_ ABSL_GUARDED_BY(mu_);
  absl::Mutex hook_mu_;                                         // one hook call at a time, in order
  std::map<uint64_t, std::string> disks_ ABSL_GUARDED_BY(mu_);  // the registry, as applied
  // The first disk this replica heard each member speak from, kept on its
  // own disk: a member that answered from one disk and comes back from
  // another before the registry names either lost what it answered.
  std::map<uint64_t, std::string> heard_ ABSL_GUARDED_BY(mu_);
  std::set<uint64_t> registering_ ABSL_GUARDED_BY(mu_);  // entries in flight
  std::string fault_ ABSL_GUARDED_BY(mu_);
  // The member being caught up before it may vote, and who waits for it.
  uint64_t promoting_ ABSL_GUARDED_BY(mu_) = 0;
  // Probing (an empty disk that may start a new group): messages are
  // dropped until it starts.
  const RaftEngine::Options engine_options_;
  const std::vector<Member> bootstrap_;
  bool probing_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t probe_round_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, PeerLog> answers_ ABSL_GUARDED_BY(mu_);
  bool probe_logged_ ABSL_GUARDED_BY(mu_) = false;
  DoneFn promoted_ ABSL_GUARDED_BY(mu_);
};

// Callbacks from the store, the timer and the transport outlive nothing:
// they reach the replica through this, cleared when it goes.
struct ReplicatedStorage::Life {
  absl::Mutex mu;
  ReplicatedStorage* self ABSL_GUARDED_BY(mu);
};

template <typename Fn>
auto ReplicatedStorage::Guarded(Fn fn) {
  return [life = life_, fn = std::move(fn)](auto&&... args) {
    absl::MutexLock lock(&life->mu);
    if (life->self != nullptr) fn(life->self, std::forward<decltype(args)>(args)...);
  };
}

}  // namespace atomq::replication
