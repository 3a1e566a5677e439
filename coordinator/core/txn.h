// The coordinator's in-memory transaction: one state machine (Phase, changed
// only by MoveTo against the table of allowed transitions) and its
// participants (Party). Internal to coordinator/core.

#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "atomq/v1/coordinator.pb.h"
#include "atomq/v1/records.pb.h"
#include "common/paxos.h"
#include "coordinator/core/coordinator_core.h"

namespace atomq::coordinator {

enum class Vote { kPending, kYes, kNo, kReadOnly, kFailed, kUnknown };

// Where the transaction stands, and so what of it is durable. A decision
// phase ending in "-ing" has its record written but not yet reported
// durable. Every change goes through MoveTo, which checks PhaseRules().
enum class Phase {
  kNew,                     // in memory only: nothing sent, nothing written
  kPreparing,               // Prepares sent, votes being collected
  kProbing,                 // recovered from a PREPARING record: each participant asked
  kFencing,                 // one phase, outcome unknown: Abort sent to learn or settle it
  kFetching,                // one phase, that Abort was refused (it committed): Prepare resent
  kPrecommitting,           // 3PC: PRECOMMITTED record in flight
  kPrecommitted,            // 3PC: PRECOMMITTED durable, PreCommit sent
  kCommitting,              // 2PC: COMMITTED record (or parallel commit's PREPARING) in flight
  kCommittingPrecommitted,  // 3PC: COMMITTED record in flight, PRECOMMITTED durable
  kCommitted,               // COMMITTED durable (or all READ_ONLY, or one phase), Commit sent
  kAborting,                // ABORT decided, its record in flight
  kAborted,                 // ABORT durable
  kCommitEnded,             // committed, ENDED written (lazily: nobody waits on it)
  kAbortEnded,              // aborted, ENDED written
};

// For each phase, the phases it may follow. kNew precedes the phases a
// transaction rebuilt from its record starts in, and an abort decided on
// arrival (presumed abort, an expired or unknown interactive id).
struct PhaseRule {
  Phase phase;
  std::vector<Phase> after;
};
const std::vector<PhaseRule>& PhaseRules();
const char* PhaseName(Phase p);
bool PhaseMayFollow(Phase next, Phase prev);

// What a participant answered the latest PreCommit or outcome message.
enum class Answer {
  kNone,               // nothing yet (the latest round's message unanswered)
  kPrecommitAcked,     // acknowledged PreCommit (ballot 0's accept)
  kPrecommitRefused,   // refused PreCommit: settled otherwise, resending cannot help
  kAcked,              // needs no further outcome message: acknowledged it, or
                       // never needed one (voted NO or READ_ONLY)
  kAckedOtherOutcome,  // answered the outcome with FAILED_PRECONDITION: it holds
                       // the other outcome (an alarm)
};

// Whether the transaction's PREPARING record (parallel commit) was written.
enum class PreparingRecord { kNone, kInFlight, kDurable };
// What let a 3PC transaction write its COMMITTED record.
enum class CommitBy { kVotes, kPrecommitMajority, kTermination };

// kBallot: a PRECOMMITTED record carrying a new termination ballot.
// kPreparing: parallel commit's PREPARING record, written beside the prepares.
enum class RecordKind { kPrecommit, kCommit, kAbort, kEnd, kBallot, kPreparing };
enum class TimerKind { kDeadline, kResend, kPersistRetry, kTerminate };

// A 3PC termination round the coordinator leads (its ballot is on disk
// before any message carries it); voters are participant ids.
using Term = paxos::Round;

struct Party {
  std::string id;
  std::string address;
  std::vector<int> ops;  // request op indices, in request order
  Vote vote = Vote::kPending;
  Answer answer = Answer::kNone;
  uint32_t backoff_ms = 0;
  uint64_t resend_timer = 0;
};

bool Acked(const Party& p);
bool Refused(const Party& p);
// The outcome is owed again (a new decision): an earlier acknowledgement no
// longer counts; a PreCommit answer still tells what it holds.
void Reopen(Party& p);
// `owed` false: no outcome message is owed (NO and READ_ONLY voters kept
// nothing, or it acknowledged).
void SetOwed(Party& p, bool owed);

struct Waiter {
  RequestId request;
  int op_count;  // results to return (a presumed-abort txn has no ops of its own)
};

struct Txn {
  std::string id;
  v1::Protocol protocol = v1::TWO_PC;
  uint64_t digest = 0;
  // Created by QueryState for an id nobody knew: its ops are unknown, so any
  // later Execute with the id gets this (aborted) outcome.
  bool presumed = false;
  // Begun by Begin and committed/rolled back by Commit/Rollback: it has no
  // ops here; each participant prepares what it staged.
  bool interactive = false;
  // One-phase commit (a single participant; one_phase.cc).
  bool one_phase = false;
  std::string fence_reason;  // kFencing: the abort's reason should the Abort be accepted
  int64_t created_ms = 0;
  int64_t deadline_ms = 0;
  int64_t decided_ms = 0;
  uint32_t timeout_ms = 0;
  bool reply_at_decision = false;                             // ExecuteRequest.reply_at_decision
  PreparingRecord preparing_record = PreparingRecord::kNone;  // parallel commit
  google::protobuf::RepeatedPtrField<v1::Op> ops;             // cleared when finished
  std::vector<Party> parties;
  std::vector<uint32_t> op_party;   // per request op
  std::vector<uint64_t> sequences;  // per request op
  Phase phase = Phase::kNew;        // changed by MoveTo only
  std::string reason;
  bool replied = false;
  bool in_flight = false;  // counted in Impl::in_flight
  bool finished = false;   // in the finished FIFO
  std::vector<Waiter> waiters;
  std::vector<RequestId> state_waiters;
  uint64_t deadline_timer = 0;
  uint64_t decision_token = 0;  // batch of the latest decision record
  uint64_t retry_timer = 0;
  uint32_t retry_backoff_ms = 0;
  RecordKind retry_kind = RecordKind::kAbort;
  // 3PC termination.
  Term term;
  uint64_t ballot = 0;        // highest ballot used (in the record)
  uint64_t ballot_token = 0;  // its record in flight
  uint64_t term_timer = 0;
  uint32_t term_backoff_ms = 0;
  // Dueling proposers never finish: a round of its own, or a higher ballot
  // seen from a participant's round, gets time to complete.
  int64_t term_started_ms = 0;
  int64_t foreign_ballot_ms = INT64_MIN / 2;
  std::optional<std::pair<RecordKind, v1::TxnState>> after_ballot;  // a decision record waiting
};

// The one way a transaction changes phase: checks PhaseRules().
void MoveTo(Txn& t, Phase next);

// Votes still being collected (Prepares or, after a restart, queries out).
bool Collecting(const Txn& t);
bool Fencing(const Txn& t);  // one phase, outcome unknown
bool PrecommitDurable(const Txn& t);
bool Committed(const Txn& t);  // COMMIT durable
bool Aborted(const Txn& t);    // ABORT decided (its record maybe in flight)
bool AbortDurable(const Txn& t);
bool DecisionDurable(const Txn& t);
bool Ended(const Txn& t);

bool AllAcked(const Txn& t);
size_t CountVotes(const Txn& t, Vote v);
// 3PC: acks of a majority of all participants decide; with fewer YES voters
// than a majority, all of them.
size_t PrecommitAcksNeeded(const Txn& t);
size_t PrecommitAcks(const Txn& t);
// Index of `participant` in `t`, or -1.
int PartyIndex(const Txn& t, const std::string& participant);
const char* ProtocolName(v1::Protocol p);

// Records have no outcome field; every abort carries a reason and no commit
// does, which tells an ENDED record's outcome.
bool RecordCommitted(const v1::CoordinatorTxnRecord& r);
// What GetTransaction shows of a record alone (a transaction no longer in
// memory; atomqctl reading a data dir without its server).
v1::TransactionInfo TransactionInfoOf(const v1::CoordinatorTxnRecord& r);

struct TokenRef {
  std::string txn_id;
  RecordKind kind;
};

struct TimerRef {
  std::string txn_id;
  TimerKind kind;
  size_t party = 0;
};

}  // namespace atomq::coordinator
