// One replica's consensus engine: C-Raft's I/O-free state machine
// (replication/raft_c.h) with the log it does not keep. Pure: events in
// (time, a message, "persisted up to", a submission), a RaftUpdate out
// (term and vote to persist first, entries to persist, messages to send,
// the commit index, the next timeout). The host does every I/O and owns the
// clock, so the simulator drives the same engine as the servers
// (docs/design.md 13).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct aq_raft;

namespace atomq::replication {

enum class EntryType { kCommand = 1, kBarrier = 2, kChange = 3 };
enum class RaftState { kUnavailable = 0, kFollower = 1, kCandidate = 2, kLeader = 3 };
// A member's role in its group: a voter counts in elections and commits, a
// standby receives the log without counting (a replica being caught up).
enum class MemberRole { kStandby = 0, kVoter = 1, kSpare = 2 };

struct LogEntry {
  uint64_t term = 0;
  EntryType type = EntryType::kCommand;
  std::string data;
  bool operator==(const LogEntry& o) const {
    return term == o.term && type == o.type && data == o.data;
  }
};

struct Member {
  uint64_t id = 0;
  std::string address;
  MemberRole role = MemberRole::kVoter;
};

// The bytes of a configuration entry (kChange), and back.
std::string EncodeConfiguration(const std::vector<Member>& members);
absl::StatusOr<std::vector<Member>> DecodeConfiguration(const std::string& bytes);

enum class MessageType {
  kAppendEntries = 1,
  kAppendEntriesResult = 2,
  kRequestVote = 3,
  kRequestVoteResult = 4,
  kInstallSnapshot = 5,
  kTimeoutNow = 6
};

// One engine message. Which fields count depends on `type` (see
// replication/raft_c.h); `peer` is the receiver when sent, the sender when
// received.
struct RaftMessage {
  MessageType type = MessageType::kAppendEntries;
  uint64_t peer = 0;
  std::string peer_address;
  uint32_t version = 0;
  uint64_t term = 0;
  uint64_t candidate_id = 0, last_log_index = 0, last_log_term = 0;
  bool disrupt_leader = false, pre_vote = false, vote_granted = false;
  uint64_t prev_log_index = 0, prev_log_term = 0, leader_commit = 0;
  std::vector<LogEntry> entries;
  uint64_t rejected = 0;
  uint32_t features = 0, capacity = 0;
  uint64_t snapshot_index = 0, snapshot_term = 0, conf_index = 0;
  std::string conf;  // InstallSnapshot: the configuration as of conf_index
};

// A snapshot's place in the log: the state up to `index` (of `term`) and the
// configuration committed at `conf_index`.
struct SnapshotPoint {
  uint64_t index = 0;
  uint64_t term = 0;
  std::string conf;
  uint64_t conf_index = 0;
};

// What the host must do after an event, in this order: persist term and
// vote (synchronously, before anything is sent), persist `entries` from
// `entries_index` on (dropping what the log holds from there) as write
// number `write`, install a received snapshot, send the messages.
struct RaftUpdate {
  bool term_or_vote = false;
  uint64_t term = 0;
  uint64_t vote = 0;
  std::optional<uint64_t> entries_index;
  std::vector<LogEntry> entries;
  uint64_t write = 0;                    // with entries: report it to PersistedEntries when durable
  std::optional<SnapshotPoint> install;  // then PersistedSnapshot()
  std::vector<RaftMessage> messages;
  bool state_changed = false;
  bool commit_changed = false;
  uint64_t commit_index = 0;
  uint64_t next_timeout = 0;
};

// What a replica's disk holds when it starts.
struct DurableState {
  uint64_t term = 0;
  uint64_t vote = 0;
  std::optional<SnapshotPoint> snapshot;
  uint64_t first_index = 1;  // of `entries`
  std::vector<LogEntry> entries;
};

class RaftEngine {
 public:
  struct Options {
    uint64_t id = 0;  // > 0, unique in the group
    std::string address;
    uint32_t seed = 0;
    uint32_t election_timeout = 1000;  // in the host's time unit
    uint32_t heartbeat_timeout = 100;
  };
  static absl::StatusOr<std::unique_ptr<RaftEngine>> Create(const Options& options);
  ~RaftEngine();
  RaftEngine(const RaftEngine&) = delete;
  RaftEngine& operator=(const RaftEngine&) = delete;

  // A new group's first entry: the configuration every member starts with.
  static DurableState Bootstrap(const std::vector<Member>& members);

  absl::StatusOr<RaftUpdate> Start(uint64_t now, const DurableState& disk);
  // INVALID_ARGUMENT for a message the engine would not survive.
  absl::StatusOr<RaftUpdate> Receive(uint64_t now, const RaftMessage& message);
  // Write number `write` (and every one before it) is durable. Writes are
  // reported in order. A write that a later one cut short (a conflicting
  // suffix replaced) counts only up to the cut, so the engine is never told
  // an entry is stored when the disk holds the one it replaced.
  absl::StatusOr<RaftUpdate> PersistedEntries(uint64_t now, uint64_t write);
  absl::StatusOr<RaftUpdate> PersistedSnapshot(uint64_t now);
  // A kChange entry at `index` was committed (the host applies in order).
  absl::StatusOr<RaftUpdate> Configuration(uint64_t now, uint64_t index);
  // The state up to `index` is durable outside the log (applied to the
  // store): the engine may send a snapshot from here on, and the log keeps
  // `trailing` entries before it. At most applicable_index(): a state copied
  // from another replica may be further on than this disk's log.
  absl::StatusOr<RaftUpdate> Snapshot(uint64_t now, uint64_t index, const std::string& conf,
                                      uint64_t conf_index, uint32_t trailing);
  absl::StatusOr<RaftUpdate> Timeout(uint64_t now);
  // FAILED_PRECONDITION when not the leader (or handing leadership over).
  absl::StatusOr<RaftUpdate> Submit(uint64_t now, const std::vector<LogEntry>& entries);
  absl::StatusOr<RaftUpdate> Transfer(uint64_t now, uint64_t id);
  // Membership, one change at a time (FAILED_PRECONDITION while another is
  // under way, or when not the leader): `members` becomes the group's
  // configuration as soon as its entry is appended, and is committed as
  // any entry is.
  absl::StatusOr<RaftUpdate> ChangeMembers(uint64_t now, const std::vector<Member>& members);
  // The leader starts bringing standby `id` up to date, in rounds, before
  // it is made a voter (catch_up says how it goes).
  absl::StatusOr<RaftUpdate> CatchUp(uint64_t now, uint64_t id);
  enum class CatchUpState { kNone, kRunning, kAborted, kFinished };
  CatchUpState catch_up(uint64_t id) const;
  // On the leader: the last index member `id` is known to store (0 otherwise).
  uint64_t match_index(uint64_t id) const;
  // The current configuration (its last change, committed or not); empty
  // for a member that joins and has not been sent the log yet.
  std::vector<Member> members() const;
  // A configuration change or a catch-up is under way.
  bool changing() const;

  uint64_t id() const { return id_; }
  uint64_t term() const;
  uint64_t commit_index() const;
  // How far the host may apply: committed and stored on this replica's disk
  // as the log holds it. Applying further (a committed entry this disk has
  // not stored yet) would leave, after a crash, a state ahead of a disk log
  // that may hold another entry at that index.
  uint64_t applicable_index() const;
  uint64_t last_index() const;
  uint64_t next_timeout() const;
  RaftState state() const;
  // The leader this replica knows of (0 when none).
  uint64_t leader_id() const;
  std::string leader_address() const;
  // The entry at `index` of the log this engine asked to persist, or null
  // (compacted, or beyond the end).
  const LogEntry* entry(uint64_t index) const;
  uint64_t first_index() const { return first_index_; }

 private:
  explicit RaftEngine(aq_raft* raft, uint64_t id) : raft_(raft), id_(id) {}
  absl::Status Failed(int rv, const char* what) const;
  RaftUpdate Idle() const;  // nothing changed
  absl::StatusOr<RaftUpdate> Translate(int rv, const char* what, const void* update);

  aq_raft* const raft_;
  const uint64_t id_;
  // The log from first_index_ on: what the engine asked to persist.
  std::deque<LogEntry> log_;
  uint64_t first_index_ = 1;
  std::optional<SnapshotPoint> snapshot_;  // the last one taken or installed
  struct PendingWrite {
    uint64_t write;
    uint64_t last;  // the last index it stores that the log still holds
  };
  std::deque<PendingWrite> writes_;
  uint64_t next_write_ = 1;
  uint64_t stored_ = 0;  // the engine's last stored index, as told
};

}  // namespace atomq::replication
