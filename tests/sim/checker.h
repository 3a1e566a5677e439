// The simulator's invariant checker (docs/design.md section 4), kept apart from
// the code it checks: it sees only what a test can see from outside the
// cores, namely every write that reaches a simulated disk, every reply a core
// releases, and what the client was told. It runs after every step.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "atomq/v1/records.pb.h"
#include "atomq/v1/types.pb.h"

namespace atomq::sim {

// db -> key -> value: what is durable on one node.
using Disk = std::map<std::string, std::map<std::string, std::string>>;

class Checker {
 public:
  // `disk(node)` returns the node's durable contents.
  explicit Checker(std::function<const Disk&(const std::string&)> disk);

  // A transaction the client issued, with its participants.
  void AddTxn(const std::string& txn_id, v1::Protocol protocol, std::vector<std::string> parties);

  // A write that became durable on `node` (applied in batch order).
  void OnPut(const std::string& node, const std::string& db, const std::string& key,
             const std::string& value);
  // An erase that became durable on `node`: a committed message must never
  // go; a collected ABORTED outcome lets its id run anew there.
  void OnErase(const std::string& node, const std::string& db, const std::string& key);

  // Replies as a core releases them, checked against the node's disk.
  void OnVoteYes(const std::string& node, const std::string& txn_id);
  void OnPreCommitAck(const std::string& node, const std::string& txn_id);
  void OnCommitAck(const std::string& node, const std::string& txn_id);
  void OnPromised(const std::string& node, const std::string& txn_id, uint64_t ballot,
                  v1::TxnState state);
  void OnAccepted(const std::string& node, const std::string& txn_id, uint64_t ballot,
                  v1::TxnState state);
  // What the client was told (COMMITTED/ABORTED).
  void OnClientOutcome(const std::string& txn_id, v1::Outcome outcome);
  // A lease a participant's Receive returned during its `incarnation`: first
  // deliveries come in ascending sequence (commit) order, also when the
  // queue's backlog is paged in from disk.
  void OnDelivered(const std::string& node, uint64_t incarnation, uint64_t sequence,
                   uint32_t delivery_count);
  // At the end, with every lease expired: `drained` is what Receive returned
  // until it returned nothing and `counted` the queue's ready + leased count
  // before. Both must match the messages of `queue_id` on the node's disk,
  // drained in sequence order.
  void CheckDrained(const std::string& node, uint64_t queue_id,
                    const std::vector<uint64_t>& drained, uint64_t counted);

  // A replica group broke an invariant of its own (docs/design.md 10.2:
  // replicas at one version hold one state).
  void GroupViolation(const std::string& what) { violations_.push_back(what); }

  // The invariants over every transaction touched since the last call.
  void AfterStep();

  // Liveness, with the coordinator down and only `up` participants running:
  // every 3PC transaction with a majority of its participants up is decided
  // at each of them.
  void CheckMajorityProgress(const std::set<std::string>& up);
  // Liveness with everything up and healed: every transaction is answered
  // and decided everywhere, and every participant of a committed one committed.
  void CheckAllDecided();

  const std::vector<std::string>& violations() const { return violations_; }
  const std::vector<std::string>& blocked() const { return blocked_; }
  std::optional<v1::Outcome> told(const std::string& txn_id) const;

 private:
  struct Txn {
    v1::Protocol protocol = v1::TWO_PC;
    std::vector<std::string> parties;
    std::map<std::string, v1::TxnState> outcomes;  // participant -> durable outcome
    std::set<std::string> prepared_ever;           // participants whose PREPARED became durable
    // Participants whose COMMITTED outcome came from a one-phase Prepare
    // (OutcomeRecord.one_phase): valid only as the single participant.
    std::set<std::string> one_phase;
    std::optional<bool> coordinator_commit;  // the coordinator's durable decision
    bool staged = false;                     // a parallel commit's PREPARING record became durable
    std::optional<v1::Outcome> told;
    bool reported = false;  // one violation line per transaction is enough
  };

  Txn& T(const std::string& txn_id);
  void Violation(const std::string& txn_id, const std::string& what);
  std::optional<v1::PreparedRecord> Prepared(const std::string& node,
                                             const std::string& txn_id) const;
  std::optional<v1::OutcomeRecord> Outcome(const std::string& node,
                                           const std::string& txn_id) const;

  std::function<const Disk&(const std::string&)> disk_;
  std::map<std::string, Txn> txns_;
  std::set<std::string> dirty_;
  // (node, message key) -> txn of every committed message; nothing in the
  // simulation acks, so none may ever be erased.
  std::map<std::pair<std::string, std::string>, std::string> committed_messages_;
  std::map<std::pair<std::string, std::string>, std::string> payloads_;  // (node, payload) -> key
  // node -> (incarnation, highest sequence first delivered in it)
  std::map<std::string, std::pair<uint64_t, uint64_t>> first_delivered_;
  std::vector<std::string> violations_;
  std::vector<std::string> blocked_;
};

}  // namespace atomq::sim
