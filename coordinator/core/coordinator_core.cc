#include "coordinator/core/coordinator_core.h"

#include <algorithm>
#include <deque>
#include <set>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/validate.h"

namespace atomq::coordinator {
namespace {

enum class Vote { kPending, kYes, kNo, kReadOnly, kFailed, kUnknown };

// Where the transaction stands, and so what of it is durable. A decision
// phase ending in "-ing" has its record written but not yet reported
// durable. Every change goes through MoveTo, which checks kPhaseAfter.
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
constexpr size_t kPhases = static_cast<size_t>(Phase::kAbortEnded) + 1;

// For each phase, the phases it may follow (kNew: a transaction rebuilt from
// its record, or one decided on arrival).
struct PhaseRule {
  Phase phase;
  std::vector<Phase> after;
};
const std::vector<PhaseRule>& PhaseRules() {
  static const std::vector<PhaseRule> rules = {
      {Phase::kNew, {}},
      {Phase::kPreparing, {Phase::kNew}},
      {Phase::kProbing, {Phase::kNew}},
      {Phase::kFencing, {Phase::kPreparing}},
      {Phase::kFetching, {Phase::kFencing}},
      {Phase::kPrecommitting, {Phase::kPreparing}},
      {Phase::kPrecommitted, {Phase::kNew, Phase::kPrecommitting}},
      {Phase::kCommitting, {Phase::kPreparing, Phase::kProbing}},
      {Phase::kCommittingPrecommitted, {Phase::kPrecommitted}},
      {Phase::kCommitted,
       {Phase::kNew, Phase::kPreparing, Phase::kProbing, Phase::kFencing, Phase::kFetching,
        Phase::kCommitting, Phase::kCommittingPrecommitted}},
      {Phase::kAborting,
       {Phase::kNew, Phase::kPreparing, Phase::kProbing, Phase::kFencing, Phase::kFetching,
        Phase::kPrecommitting, Phase::kPrecommitted, Phase::kCommitting}},
      {Phase::kAborted, {Phase::kNew, Phase::kAborting}},
      {Phase::kCommitEnded, {Phase::kNew, Phase::kCommitted}},
      {Phase::kAbortEnded, {Phase::kNew, Phase::kAborted}},
  };
  return rules;
}

// kBallot: a PRECOMMITTED record carrying a new termination ballot.
// kStage: parallel commit's PREPARING record, written beside the prepares.
enum class RecordKind { kPrecommit, kCommit, kAbort, kEnd, kBallot, kStage };
enum class TimerKind { kDeadline, kResend, kPersistRetry, kTerminate };

// A 3PC termination round the coordinator leads (its ballot is on disk
// before any message carries it). Parties by index.
struct Term {
  uint64_t ballot = 0;  // 0: none running
  bool accepting = false;
  v1::TxnState value = v1::TXN_STATE_UNSPECIFIED;
  std::set<size_t> promised;
  std::set<size_t> accepted;
  bool has_best = false;
  uint64_t best_ballot = 0;
  v1::TxnState best_value = v1::TXN_STATE_UNSPECIFIED;
  uint64_t highest_seen = 0;
};

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

struct Party {
  std::string id;
  std::string address;
  std::vector<int> ops;  // request op indices, in request order
  Vote vote = Vote::kPending;
  Answer answer = Answer::kNone;
  uint32_t backoff_ms = 0;
  uint64_t resend_timer = 0;
};

bool Acked(const Party& p) {
  return p.answer == Answer::kAcked || p.answer == Answer::kAckedOtherOutcome;
}
bool Refused(const Party& p) {
  return p.answer == Answer::kPrecommitRefused || p.answer == Answer::kAckedOtherOutcome;
}
// The outcome is owed again (a new decision): an earlier acknowledgement no
// longer counts; a PreCommit answer still tells what it holds.
void Reopen(Party& p) {
  if (Acked(p)) p.answer = Answer::kNone;
}
// NO and READ_ONLY voters kept nothing: no outcome message is owed them.
void SetOwed(Party& p, bool owed) {
  if (!owed) {
    p.answer = Answer::kAcked;
  } else {
    Reopen(p);
  }
}

// Whether the transaction's PREPARING record (parallel commit) was written.
enum class PreparingRecord { kNone, kInFlight, kDurable };
// What let a 3PC transaction write its COMMITTED record.
enum class CommitBy { kVotes, kPrecommitMajority, kTermination };

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
  // One-phase commit (a single participant; see "one-phase commit" below).
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
  bool in_flight = false;  // counted in in_flight_
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

bool PhaseMayFollow(Phase next, Phase prev) {
  for (const PhaseRule& r : PhaseRules()) {
    if (r.phase == next) return std::find(r.after.begin(), r.after.end(), prev) != r.after.end();
  }
  return false;
}

void MoveTo(Txn& t, Phase next) {
  ATOMQ_CHECK(PhaseMayFollow(next, t.phase), "a transaction phase change the table allows");
  t.phase = next;
}

// Votes still being collected (Prepares or, after a restart, queries out).
bool Collecting(const Txn& t) {
  return t.phase == Phase::kPreparing || t.phase == Phase::kProbing || t.phase == Phase::kFencing ||
         t.phase == Phase::kFetching;
}
bool Fencing(const Txn& t) { return t.phase == Phase::kFencing || t.phase == Phase::kFetching; }
bool PrecommitDurable(const Txn& t) {
  return t.phase == Phase::kPrecommitted || t.phase == Phase::kCommittingPrecommitted;
}
bool Committed(const Txn& t) {
  return t.phase == Phase::kCommitted || t.phase == Phase::kCommitEnded;
}
bool Aborted(const Txn& t) {
  return t.phase == Phase::kAborting || t.phase == Phase::kAborted || t.phase == Phase::kAbortEnded;
}
bool AbortDurable(const Txn& t) {
  return t.phase == Phase::kAborted || t.phase == Phase::kAbortEnded;
}
bool DecisionDurable(const Txn& t) { return Committed(t) || AbortDurable(t); }
bool Ended(const Txn& t) { return t.phase == Phase::kCommitEnded || t.phase == Phase::kAbortEnded; }

struct TokenRef {
  std::string txn_id;
  RecordKind kind;
};

struct TimerRef {
  std::string txn_id;
  TimerKind kind;
  size_t party = 0;
};

const char* ProtocolName(v1::Protocol p) { return p == v1::THREE_PC ? "3pc" : "2pc"; }

bool AllAcked(const Txn& t) {
  for (const Party& p : t.parties) {
    if (!Acked(p)) return false;
  }
  return true;
}

size_t CountVotes(const Txn& t, Vote v) {
  size_t n = 0;
  for (const Party& p : t.parties) n += p.vote == v ? 1 : 0;
  return n;
}

// 3PC: acks of a majority of all participants decide; with fewer YES voters
// than a majority, all of them.
size_t PrecommitAcksNeeded(const Txn& t) {
  return std::min(t.parties.size() / 2 + 1, CountVotes(t, Vote::kYes));
}

size_t PrecommitAcks(const Txn& t) {
  size_t n = 0;
  for (const Party& p : t.parties) n += p.answer == Answer::kPrecommitAcked ? 1 : 0;
  return n;
}

// Records have no outcome field; every abort carries a reason and no commit
// does, which tells an ENDED record's outcome.
bool RecordCommitted(const v1::CoordinatorTxnRecord& r) {
  switch (r.state()) {
    case v1::STATE_COMMITTED:
      return true;
    case v1::ENDED:
      return r.reason().empty();
    default:
      return false;
  }
}

v1::TxnState QueryAnswerFromRecord(const v1::CoordinatorTxnRecord& r) {
  switch (r.state()) {
    case v1::PRECOMMITTED:
      return v1::PRECOMMITTED;
    case v1::STATE_COMMITTED:
    case v1::ENDED:
      return RecordCommitted(r) ? v1::STATE_COMMITTED : v1::STATE_ABORTED;
    case v1::STATE_ABORTED:
      return v1::STATE_ABORTED;
    default:
      // Not a state this coordinator writes: do not guess an outcome.
      return v1::PREPARING;
  }
}

absl::Status ValidateOp(const Config& config, int i, const v1::Op& op) {
  std::string at = absl::StrCat("op ", i, ": ");
  if (config.participants.find(op.participant()) == config.participants.end()) {
    return absl::InvalidArgumentError(absl::StrCat(at, "participant \"", op.participant(),
                                                   "\" is not known to this coordinator"));
  }
  switch (op.kind_case()) {
    case v1::Op::kEnqueue: {
      const v1::Enqueue& e = op.enqueue();
      absl::Status s = ValidateQueueName(e.queue());
      if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(at, s.message()));
      if (e.payload().size() > config.payload_bytes_max) {
        return absl::InvalidArgumentError(absl::StrCat(at, "payload is ", e.payload().size(),
                                                       " bytes; at most ", config.payload_bytes_max,
                                                       " allowed"));
      }
      if (static_cast<size_t>(e.headers().size()) > config.headers_max) {
        return absl::InvalidArgumentError(absl::StrCat(at, e.headers().size(), " headers; at most ",
                                                       config.headers_max, " allowed"));
      }
      return absl::OkStatus();
    }
    case v1::Op::kAck: {
      const v1::Ack& a = op.ack();
      absl::Status s = ValidateQueueName(a.queue());
      if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(at, s.message()));
      if (a.sequence() == 0) {
        return absl::InvalidArgumentError(absl::StrCat(at, "ack sequence must be > 0"));
      }
      if (a.lease_token().empty()) {
        return absl::InvalidArgumentError(absl::StrCat(at, "ack lease_token is empty"));
      }
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat(at, "neither enqueue nor ack is set"));
  }
}

}  // namespace

struct CoordinatorCore::Impl {
  Config config;
  const DurableView* view;
  Output out;
  std::map<std::string, Txn> txns;  // ordered: ListTransactions is deterministic
  std::deque<std::string> finished;
  std::unordered_map<uint64_t, TokenRef> tokens;
  std::unordered_map<uint64_t, TimerRef> timers;
  // END notices waiting for the next message to their participant.
  std::map<std::string, std::vector<OutMessage>> held_forgets;
  uint64_t next_token = 1;
  uint64_t next_timer = 1;
  uint64_t next_minted = 1;
  size_t in_flight = 0;
  bool started = false;

  Impl(Config c, const DurableView* v) : config(std::move(c)), view(v) {}

  // ---- plumbing ----

  uint64_t SetTimer(const Txn& t, TimerKind kind, size_t party, int64_t at_ms) {
    uint64_t id = next_timer++;
    timers.emplace(id, TimerRef{t.id, kind, party});
    out.timers.push_back(TimerRequest{id, at_ms});
    return id;
  }

  v1::CoordinatorTxnRecord MakeRecord(const Txn& t, v1::TxnState state) const {
    v1::CoordinatorTxnRecord r;
    r.set_txn_id(t.id);
    r.set_protocol(t.protocol);
    r.set_state(state);
    r.set_created_unix_ms(t.created_ms);
    r.set_ops_digest(t.digest);
    for (const Party& p : t.parties) {
      r.add_participants(p.id);
      if (Acked(p)) r.add_acknowledged(p.id);
    }
    r.set_reason(t.reason);
    for (uint64_t s : t.sequences) r.add_sequences(s);
    for (uint32_t i : t.op_party) r.add_op_participant(i);
    r.set_decided_unix_ms(t.decided_ms);
    r.set_ballot(t.ballot);
    r.set_interactive(t.interactive);
    return r;
  }

  void Persist(Txn& t, RecordKind kind, v1::TxnState state) {
    // One write per transaction in flight, so that storage order never
    // matters: a decision waits for a termination ballot's record.
    if ((kind == RecordKind::kCommit || kind == RecordKind::kAbort) && t.ballot_token != 0) {
      t.after_ballot = std::make_pair(kind, state);
      return;
    }
    uint64_t token = next_token++;
    tokens.emplace(token, TokenRef{t.id, kind});
    Batch b;
    b.token = token;
    b.writes.push_back(Write{kTxnDb, t.id, EncodeRecord(MakeRecord(t, state)), false});
    if (kind == RecordKind::kEnd) {
      b.writes.push_back(
          Write{kEndedDb, EncodeU64(static_cast<uint64_t>(t.decided_ms)) + t.id, "", false});
    }
    // Nobody waits on END (presumed abort): let it share a later fsync.
    b.sync = kind != RecordKind::kEnd;
    out.persist.push_back(std::move(b));
    if (kind == RecordKind::kBallot) {
      t.ballot_token = token;
    } else if (kind != RecordKind::kEnd && kind != RecordKind::kStage) {
      t.decision_token = token;
    }
  }

  void Send(Txn& t, size_t i, MsgType type, int64_t now_ms) {
    Party& p = t.parties[i];
    if (type == MsgType::kCommit) {
      ATOMQ_CHECK(Committed(t), "Commit sent before the commit record is durable");
    }
    if (type == MsgType::kAbort) {
      // The phase table keeps an abort from following a COMMITTED decision,
      // and a PRECOMMITTED one unless a termination round chose it.
      ATOMQ_CHECK(Aborted(t), "Abort sent without an abort decision");
    }
    if (type == MsgType::kPreCommit) {
      ATOMQ_CHECK(PrecommitDurable(t), "PreCommit sent before PRECOMMITTED is durable");
    }
    OutMessage m;
    m.participant = p.id;
    m.address = p.address;
    m.type = type;
    m.txn_id = t.id;
    out.send.push_back(std::move(m));
    p.resend_timer = SetTimer(t, TimerKind::kResend, i, now_ms + p.backoff_ms);
  }

  // First message of a round: backoff restarts.
  void SendRound(Txn& t, size_t i, MsgType type, int64_t now_ms) {
    // A refusal of the previous round's message.
    if (t.parties[i].answer == Answer::kPrecommitRefused) t.parties[i].answer = Answer::kNone;
    t.parties[i].backoff_ms = std::max<uint32_t>(1, config.resend_initial_ms);
    Send(t, i, type, now_ms);
  }

  void Log(std::string line) { out.log.push_back(std::move(line)); }

  // ---- replies ----

  v1::ExecuteResponse Response(const Txn& t, int op_count) const {
    v1::ExecuteResponse r;
    r.set_txn_id(t.id);
    bool committed = Committed(t);
    r.set_outcome(committed ? v1::COMMITTED : v1::ABORTED);
    if (!committed) r.set_reason(t.reason);
    for (int i = 0; i < op_count; ++i) {
      uint64_t seq = committed && static_cast<size_t>(i) < t.sequences.size() ? t.sequences[i] : 0;
      r.add_results()->set_sequence(seq);
    }
    if (t.interactive) AddStagedResults(t, committed, &r);
    return r;
  }

  void ReplyError(RequestId request, absl::Status status, const std::string& txn_id) {
    ExecuteReply r;
    r.request = request;
    r.status = std::move(status);
    r.response.set_txn_id(txn_id);
    out.replies.push_back(std::move(r));
  }

  // Whether a client may be told the outcome now.
  bool OutcomeReady(const Txn& t) const {
    if (Aborted(t)) return AbortDurable(t);
    return Committed(t) && t.replied;
  }

  void ReplyAll(Txn& t) {
    ATOMQ_CHECK(DecisionDurable(t), "client reply before the decision is durable");
    for (const Waiter& w : t.waiters) {
      out.replies.push_back(ExecuteReply{w.request, absl::OkStatus(), Response(t, w.op_count)});
    }
    t.waiters.clear();
    t.replied = true;
    if (t.in_flight) {
      ATOMQ_CHECK(in_flight > 0, "in-flight count underflow");
      t.in_flight = false;
      --in_flight;
    }
  }

  void MaybeReplyCommitted(Txn& t, int64_t now_ms) {
    if (!Committed(t)) return;
    if (t.replied && t.waiters.empty()) return;
    if (t.replied || t.reply_at_decision || AllAcked(t) || now_ms >= t.deadline_ms) {
      ReplyAll(t);
    }
  }

  void ReplyStates(Txn& t) {
    ATOMQ_CHECK(AbortDurable(t), "state reply before the abort is durable");
    for (RequestId r : t.state_waiters)
      out.state_replies.push_back(StateReply{r, v1::STATE_ABORTED});
    t.state_waiters.clear();
  }

  // ---- lifecycle ----

  void MaybeEnd(Txn& t) {
    if (!AllAcked(t)) return;
    if (t.phase != Phase::kCommitted && t.phase != Phase::kAborted) return;
    MoveTo(t, t.phase == Phase::kCommitted ? Phase::kCommitEnded : Phase::kAbortEnded);
    // Not waited on: without it, recovery merely resends an outcome.
    Persist(t, RecordKind::kEnd, v1::ENDED);
  }

  // Participants may collect their outcome once ENDED is durable, not
  // before: until then a crash here recovers the COMMIT/ABORT record and
  // resends the outcome, and a one-phase commit has no record at all, so a
  // client retry would run the id again and must find the outcome there.
  // READ_ONLY voters keep nothing. Not resent: a lost one leaves an outcome.
  // A notice waits for the next protocol message to its participant and
  // leaves with it (TakeOutput), so that it never calls an idle participant
  // on its own: a call to one that is down would put the channel into
  // reconnect backoff and fail the next Prepare after it is back. Held
  // notices are bounded by the transactions in flight: each one that ends
  // sent its participant a message first, which took the older notices.
  void SendForget(const Txn& t) {
    for (const Party& p : t.parties) {
      if (p.vote != Vote::kReadOnly) Forget(t.id, p.id, p.address);
    }
  }
  // The same from the durable record (votes unknown: every participant).
  void SendForget(const std::string& id) {
    std::optional<v1::CoordinatorTxnRecord> rec = view ? view->FindTxn(id) : std::nullopt;
    if (!rec || rec->state() != v1::ENDED) return;
    for (const std::string& p : rec->participants()) {
      auto it = config.participants.find(p);
      if (it != config.participants.end()) Forget(id, p, it->second);
    }
  }
  void Forget(const std::string& id, const std::string& participant, const std::string& address) {
    OutMessage m;
    m.participant = participant;
    m.address = address;
    m.type = MsgType::kForget;
    m.txn_id = id;
    held_forgets[participant].push_back(std::move(m));
  }

  // Held notices join the messages to their participants that leave now.
  void ReleaseForgets() {
    if (held_forgets.empty()) return;
    std::set<std::string> called;
    for (const OutMessage& m : out.send) {
      // Promise/Accept go one RPC each; the others share Batch calls.
      if (m.type != MsgType::kPromise && m.type != MsgType::kAccept && m.type != MsgType::kForget &&
          m.type != MsgType::kQuery) {
        called.insert(m.participant);
      }
    }
    for (const std::string& p : called) {
      auto it = held_forgets.find(p);
      if (it == held_forgets.end()) continue;
      for (OutMessage& m : it->second) out.send.push_back(std::move(m));
      held_forgets.erase(it);
    }
  }

  void MaybeFinish(Txn& t) {
    if (t.finished || !Ended(t) || !t.replied || !t.waiters.empty() || !t.state_waiters.empty()) {
      return;
    }
    t.finished = true;
    t.deadline_timer = 0;
    t.retry_timer = 0;
    for (Party& p : t.parties) p.resend_timer = 0;
    // Payloads can be large and finished transactions many.
    t.ops.Clear();
    finished.push_back(t.id);
  }

  // Called last in every input, so no reference into `txns` outlives it.
  void EvictFinished() {
    while (finished.size() > config.finished_cache_max) {
      auto it = txns.find(finished.front());
      finished.pop_front();
      if (it != txns.end() && it->second.finished) txns.erase(it);
    }
  }

  // ---- decisions ----

  void Abort(Txn& t, std::string reason, int64_t now_ms) {
    ATOMQ_CHECK(t.phase != Phase::kPrecommitted,
                "abort after a durable PRECOMMITTED decision (only a round may choose it)");
    ATOMQ_CHECK(!reason.empty(), "an abort needs a reason (it tells ENDED records apart)");
    MoveTo(t, Phase::kAborting);
    t.reason = std::move(reason);
    t.decided_ms = now_ms;
    t.deadline_timer = 0;
    Log(absl::StrCat("txn ", t.id, " ABORTED: ", t.reason));
    size_t targets = 0;
    for (size_t i = 0; i < t.parties.size(); ++i) {
      Party& p = t.parties[i];
      // NO and READ_ONLY voters kept nothing; everyone else may have prepared.
      SetOwed(p, p.vote != Vote::kNo && p.vote != Vote::kReadOnly);
      if (!Acked(p)) {
        ++targets;
        // With a PREPARING record on disk (or on its way), Abort waits for
        // the ABORT record: a crash before it would leave a recovery that
        // asks the participants, and one that got this Abort late could
        // then disagree with a commit decided from the others' PREPARED.
        if (t.preparing_record == PreparingRecord::kNone) SendRound(t, i, MsgType::kAbort, now_ms);
      }
    }
    ATOMQ_CHECK(targets >= CountVotes(t, Vote::kYes), "a YES voter left without an Abort");
    Persist(t, RecordKind::kAbort, v1::STATE_ABORTED);
  }

  void PersistCommit(Txn& t, CommitBy by) {
    ATOMQ_CHECK(CountVotes(t, Vote::kYes) + CountVotes(t, Vote::kReadOnly) == t.parties.size() &&
                    CountVotes(t, Vote::kYes) > 0,
                "COMMIT without all YES/READ_ONLY votes");
    ATOMQ_CHECK(t.protocol != v1::THREE_PC ||
                    (t.phase == Phase::kPrecommitted &&
                     (by == CommitBy::kTermination || PrecommitAcks(t) >= PrecommitAcksNeeded(t))),
                "3PC COMMIT before a majority acknowledged PRECOMMITTED or a round chose it");
    // Parallel commit's fallback is in kCommitting already.
    if (t.phase == Phase::kPrecommitted) {
      MoveTo(t, Phase::kCommittingPrecommitted);
    } else if (t.phase != Phase::kCommitting) {
      MoveTo(t, Phase::kCommitting);
    }
    Persist(t, RecordKind::kCommit, v1::STATE_COMMITTED);
  }

  // Every participant voted YES or READ_ONLY.
  void DecideCommit(Txn& t, int64_t now_ms) {
    size_t yes = CountVotes(t, Vote::kYes);
    ATOMQ_CHECK(yes + CountVotes(t, Vote::kReadOnly) == t.parties.size(),
                "commit decision with a vote missing");
    t.decided_ms = now_ms;
    for (Party& p : t.parties) SetOwed(p, p.vote != Vote::kReadOnly);
    if (yes == 0) {
      // Nothing changes anywhere, so nothing needs forcing and no second round.
      // ENDED is still written (not waited on) so a retry finds the outcome.
      MoveTo(t, Phase::kCommitted);
      Log(absl::StrCat("txn ", t.id, " COMMITTED (", ProtocolName(t.protocol), ", ",
                       t.parties.size(), " participants, read-only)"));
      ReplyAll(t);
      MaybeEnd(t);
      MaybeFinish(t);
      return;
    }
    if (t.protocol == v1::THREE_PC) {
      MoveTo(t, Phase::kPrecommitting);
      Persist(t, RecordKind::kPrecommit, v1::PRECOMMITTED);
    } else if (t.preparing_record != PreparingRecord::kNone &&
               CountVotes(t, Vote::kYes) == t.parties.size()) {
      // Parallel commit: the PREPARING record plus every PREPARED record is
      // the decision; a recovery that asks finds all of them prepared.
      MoveTo(t, Phase::kCommitting);
      if (t.preparing_record == PreparingRecord::kDurable) OnCommitDurable(t, now_ms);
    } else {
      PersistCommit(t, CommitBy::kVotes);
    }
  }

  void OnCommitDurable(Txn& t, int64_t now_ms) {
    ATOMQ_CHECK(t.phase == Phase::kCommitting || t.phase == Phase::kCommittingPrecommitted,
                "commit record durable outside kCommitting");
    MoveTo(t, Phase::kCommitted);
    Log(absl::StrCat("txn ", t.id, " COMMITTED (", ProtocolName(t.protocol), ", ", t.parties.size(),
                     t.preparing_record != PreparingRecord::kNone
                         ? " participants, parallel commit)"
                         : " participants)"));
    for (size_t i = 0; i < t.parties.size(); ++i) {
      if (!Acked(t.parties[i])) SendRound(t, i, MsgType::kCommit, now_ms);
    }
    MaybeReplyCommitted(t, now_ms);
    MaybeEnd(t);
    MaybeFinish(t);
  }

  void ScheduleRetry(Txn& t, RecordKind kind, const absl::Status& status, int64_t now_ms) {
    Log(absl::StrCat("txn ", t.id, ": decision log write failed, retrying: ", status.ToString()));
    t.retry_kind = kind;
    t.retry_backoff_ms = t.retry_backoff_ms == 0
                             ? std::max<uint32_t>(1, config.resend_initial_ms)
                             : std::min(t.retry_backoff_ms * 2, config.resend_max_ms);
    t.retry_timer = SetTimer(t, TimerKind::kPersistRetry, 0, now_ms + t.retry_backoff_ms);
  }

  Txn* Find(const std::string& id) {
    auto it = txns.find(id);
    return it == txns.end() ? nullptr : &it->second;
  }

  // Index of `participant` in `t`, or -1.
  static int PartyIndex(const Txn& t, const std::string& participant) {
    for (size_t i = 0; i < t.parties.size(); ++i) {
      if (t.parties[i].id == participant) return static_cast<int>(i);
    }
    return -1;
  }

  // ---- info ----

  // The state GetTransaction and ListTransactions show.
  static v1::TxnState TxnStateOf(const Txn& t) {
    switch (t.phase) {
      case Phase::kNew:
      case Phase::kPreparing:
      case Phase::kProbing:
      case Phase::kFencing:
      case Phase::kFetching:
      case Phase::kPrecommitting:
      case Phase::kCommitting:
        return v1::PREPARING;
      case Phase::kPrecommitted:
      case Phase::kCommittingPrecommitted:
        return v1::PRECOMMITTED;
      case Phase::kCommitted:
        return v1::STATE_COMMITTED;
      case Phase::kAborting:
      case Phase::kAborted:
        return v1::STATE_ABORTED;
      case Phase::kCommitEnded:
      case Phase::kAbortEnded:
        return v1::ENDED;
    }
    return v1::TXN_STATE_UNSPECIFIED;
  }

  static v1::TxnState PartyStateOf(const Txn& t, const Party& p) {
    if (p.vote == Vote::kReadOnly) return v1::ENDED;  // left the transaction
    if (p.vote == Vote::kNo) return v1::STATE_ABORTED;
    const bool mixed = p.answer == Answer::kAckedOtherOutcome;
    if (Committed(t) && Acked(p)) return mixed ? v1::STATE_ABORTED : v1::STATE_COMMITTED;
    if (Aborted(t) && Acked(p)) return mixed ? v1::STATE_COMMITTED : v1::STATE_ABORTED;
    if (p.answer == Answer::kPrecommitAcked) return v1::PRECOMMITTED;
    switch (p.vote) {
      case Vote::kPending:
        // Once decided, an unanswered Prepare may or may not have prepared it.
        return Collecting(t) ? v1::PREPARING : v1::UNKNOWN;
      case Vote::kYes:
      case Vote::kUnknown:
        return v1::PREPARED;
      default:
        return v1::UNKNOWN;
    }
  }

  v1::TransactionInfo InfoOf(const Txn& t, bool with_ops) const {
    v1::TransactionInfo info;
    info.set_txn_id(t.id);
    info.set_protocol(t.protocol);
    info.set_state(TxnStateOf(t));
    bool committed = Committed(t);
    info.set_outcome(committed ? v1::COMMITTED : Aborted(t) ? v1::ABORTED : v1::PENDING);
    info.set_reason(t.reason);
    info.set_created_unix_ms(t.created_ms);
    for (const Party& p : t.parties) {
      v1::ParticipantStatus* ps = info.add_participants();
      ps->set_participant(p.id);
      ps->set_state(PartyStateOf(t, p));
      ps->set_acknowledged(Acked(p) && (committed || Aborted(t)));
    }
    for (uint64_t s : t.sequences) info.add_results()->set_sequence(committed ? s : 0);
    if (with_ops) *info.mutable_ops() = t.ops;
    return info;
  }

  static v1::TransactionInfo InfoOfRecord(const v1::CoordinatorTxnRecord& r) {
    v1::TransactionInfo info;
    info.set_txn_id(r.txn_id());
    info.set_protocol(r.protocol());
    info.set_state(r.state());
    bool committed = RecordCommitted(r);
    bool aborted = r.state() == v1::STATE_ABORTED || (r.state() == v1::ENDED && !committed);
    info.set_outcome(committed ? v1::COMMITTED : aborted ? v1::ABORTED : v1::PENDING);
    info.set_reason(r.reason());
    info.set_created_unix_ms(r.created_unix_ms());
    for (const std::string& id : r.participants()) {
      bool acked =
          std::find(r.acknowledged().begin(), r.acknowledged().end(), id) != r.acknowledged().end();
      v1::ParticipantStatus* ps = info.add_participants();
      ps->set_participant(id);
      ps->set_acknowledged(acked && (committed || aborted));
      if (acked && committed) {
        ps->set_state(v1::STATE_COMMITTED);
      } else if (acked && aborted) {
        ps->set_state(v1::STATE_ABORTED);
      } else {
        ps->set_state(r.state() == v1::PRECOMMITTED ? v1::PRECOMMITTED : v1::PREPARED);
      }
    }
    for (uint64_t s : r.sequences()) info.add_results()->set_sequence(committed ? s : 0);
    return info;
  }

  // ---- 3PC termination: the coordinator as a proposer ----

  static bool Decided(v1::TxnState s) { return s == v1::STATE_COMMITTED || s == v1::STATE_ABORTED; }

  static size_t Majority(const Txn& t) { return t.parties.size() / 2 + 1; }

  uint32_t TerminationPatienceMs() const {
    return std::max({config.termination_after_ms, config.resend_max_ms, 1u});
  }

  void ArmTermination(Txn& t, int64_t now_ms) {
    t.term_backoff_ms = t.term_backoff_ms == 0
                            ? std::max<uint32_t>(1, config.termination_after_ms)
                            : std::min(t.term_backoff_ms * 2, TerminationPatienceMs());
    t.term_timer = SetTimer(t, TimerKind::kTerminate, 0, now_ms + t.term_backoff_ms);
  }

  // Writes a ballot above every ballot seen, in the coordinator's ballot
  // space (multiples of participants + 1); the round begins once durable.
  void StartTermination(Txn& t, int64_t now_ms) {
    if (t.phase != Phase::kPrecommitted || t.ballot_token != 0 || t.parties.empty()) return;
    const int64_t patience = TerminationPatienceMs();
    if (t.term.ballot != 0 && now_ms - t.term_started_ms < patience) return;
    if (now_ms - t.foreign_ballot_ms < patience) return;
    const uint64_t n = t.parties.size() + 1;
    const uint64_t seen = std::max(t.ballot, t.term.highest_seen);
    const uint64_t ballot = (seen / n + 1) * n;
    ATOMQ_CHECK(ballot > seen && ballot % n == 0, "a coordinator ballot is fresh and its own");
    t.ballot = ballot;
    t.term = Term{};
    t.term.highest_seen = seen;
    Log(absl::StrCat("txn ", t.id, ": 3PC termination round, ballot ", ballot));
    Persist(t, RecordKind::kBallot, v1::PRECOMMITTED);
  }

  void SendBallot(const Txn& t, size_t i, MsgType type, uint64_t ballot, v1::TxnState value) {
    OutMessage m;
    m.participant = t.parties[i].id;
    m.address = t.parties[i].address;
    m.type = type;
    m.txn_id = t.id;
    m.ballot = ballot;
    m.value = value;
    out.send.push_back(std::move(m));
  }

  void BeginTermination(Txn& t, int64_t now_ms) {
    const uint64_t seen = t.term.highest_seen;
    t.term = Term{};
    t.term.highest_seen = seen;
    t.term.ballot = t.ballot;
    t.term_started_ms = now_ms;
    for (size_t i = 0; i < t.parties.size(); ++i) {
      // A READ_ONLY voter (only in records from before 3PC participants
      // always prepared) kept nothing: it could only answer ABORTED.
      if (t.parties[i].vote == Vote::kReadOnly) continue;
      SendBallot(t, i, MsgType::kPromise, t.ballot, v1::TXN_STATE_UNSPECIFIED);
    }
  }

  // What a round (or a participant that decided) says is chosen.
  void Learn(Txn& t, v1::TxnState value, const std::string& how, int64_t now_ms) {
    if (t.phase != Phase::kPrecommitted) return;
    const uint64_t seen = t.term.highest_seen;
    t.term = Term{};
    t.term.highest_seen = seen;
    if (value == v1::STATE_COMMITTED) {
      Log(absl::StrCat("txn ", t.id, ": 3PC termination learnt COMMIT (", how, ")"));
      return PersistCommit(t, CommitBy::kTermination);
    }
    AbortChosen(t, absl::StrCat("a 3PC termination round chose ABORT (", how, ")"), now_ms);
  }

  void AbortChosen(Txn& t, std::string reason, int64_t now_ms) {
    ATOMQ_CHECK(t.phase == Phase::kPrecommitted,
                "a chosen ABORT reaches a coordinator that did not commit");
    MoveTo(t, Phase::kAborting);
    t.reason = std::move(reason);
    t.decided_ms = now_ms;
    t.deadline_timer = 0;
    t.term_timer = 0;
    Log(absl::StrCat("txn ", t.id, " ABORTED: ", t.reason));
    for (size_t i = 0; i < t.parties.size(); ++i) {
      Party& p = t.parties[i];
      SetOwed(p, p.vote != Vote::kNo && p.vote != Vote::kReadOnly);
      if (!Acked(p)) SendRound(t, i, MsgType::kAbort, now_ms);
    }
    Persist(t, RecordKind::kAbort, v1::STATE_ABORTED);
  }

  void OnPromiseReply(const std::string& txn_id, const std::string& participant, uint64_t ballot,
                      const absl::StatusOr<v1::PromiseResponse>& reply, int64_t now_ms) {
    Txn* t = Find(txn_id);
    if (t == nullptr || t->phase != Phase::kPrecommitted) return;
    Term& r = t->term;
    const int i = PartyIndex(*t, participant);
    if (i < 0 || r.ballot == 0 || r.ballot != ballot || r.accepting || !reply.ok()) return;
    if (Decided(reply->state())) {
      return Learn(*t, reply->state(), absl::StrCat(participant, " decided it"), now_ms);
    }
    if (!reply->promised()) {
      r.highest_seen = std::max(r.highest_seen, reply->promised_ballot());
      t->foreign_ballot_ms = now_ms;
      return;
    }
    if (!r.promised.insert(static_cast<size_t>(i)).second) return;
    if (Decided(reply->accepted_value()) &&
        (!r.has_best || reply->accepted_ballot() > r.best_ballot)) {
      r.has_best = true;
      r.best_ballot = reply->accepted_ballot();
      r.best_value = reply->accepted_value();
    }
    if (r.promised.size() < Majority(*t)) return;
    r.accepting = true;
    r.value = r.has_best ? r.best_value : v1::STATE_ABORTED;
    for (size_t k = 0; k < t->parties.size(); ++k) {
      if (t->parties[k].vote == Vote::kReadOnly) continue;
      SendBallot(*t, k, MsgType::kAccept, r.ballot, r.value);
    }
  }

  void OnAcceptReply(const std::string& txn_id, const std::string& participant, uint64_t ballot,
                     const absl::StatusOr<v1::AcceptResponse>& reply, int64_t now_ms) {
    Txn* t = Find(txn_id);
    if (t == nullptr || t->phase != Phase::kPrecommitted) return;
    Term& r = t->term;
    const int i = PartyIndex(*t, participant);
    if (i < 0 || r.ballot == 0 || r.ballot != ballot || !r.accepting || !reply.ok()) return;
    if (Decided(reply->state())) {
      return Learn(*t, reply->state(), absl::StrCat(participant, " decided it"), now_ms);
    }
    if (!reply->accepted()) {
      r.highest_seen = std::max(r.highest_seen, reply->promised_ballot());
      t->foreign_ballot_ms = now_ms;
      return;
    }
    r.accepted.insert(static_cast<size_t>(i));
    if (r.accepted.size() >= Majority(*t)) {
      Learn(*t, r.value, absl::StrCat("ballot ", r.ballot, " accepted by a majority"), now_ms);
    }
  }

  // ---- recovery ----

  void RecoverOne(const v1::CoordinatorTxnRecord& r, int64_t now_ms, std::map<int, int>* counts) {
    if (r.txn_id().empty() || txns.count(r.txn_id()) > 0) return;
    Txn t;
    t.id = r.txn_id();
    t.protocol = r.protocol() == v1::THREE_PC ? v1::THREE_PC : v1::TWO_PC;
    t.digest = r.ops_digest();
    t.presumed = r.participants_size() == 0;
    t.interactive = r.interactive();
    t.created_ms = r.created_unix_ms();
    t.decided_ms = r.decided_unix_ms();
    t.reason = r.reason();
    t.replied = true;  // the original client is gone; retries get the outcome at once
    for (const std::string& id : r.participants()) {
      Party p;
      p.id = id;
      auto a = config.participants.find(id);
      if (a != config.participants.end()) {
        p.address = a->second;
      } else {
        Log(absl::StrCat("txn ", t.id, ": participant \"", id,
                         "\" is no longer configured; its messages have no address"));
      }
      SetOwed(p, std::find(r.acknowledged().begin(), r.acknowledged().end(), id) ==
                     r.acknowledged().end());
      t.parties.push_back(std::move(p));
    }
    for (int i = 0; i < r.op_participant_size(); ++i) {
      uint32_t pi = r.op_participant(i);
      if (pi >= t.parties.size()) {
        Log(absl::StrCat("txn ", t.id, ": record maps op ", i, " to participant index ", pi, " of ",
                         t.parties.size(), "; op sequences dropped"));
        t.op_party.clear();
        for (Party& p : t.parties) p.ops.clear();
        break;
      }
      t.op_party.push_back(pi);
      t.parties[pi].ops.push_back(i);
    }
    t.sequences.assign(t.op_party.size(), 0);
    for (size_t i = 0; i < t.sequences.size() && static_cast<int>(i) < r.sequences_size(); ++i) {
      t.sequences[i] = r.sequences(i);
    }

    auto [it, inserted] = txns.emplace(t.id, std::move(t));
    Txn& x = it->second;
    ++(*counts)[r.state()];
    switch (r.state()) {
      case v1::PRECOMMITTED:
        // Acknowledged here means READ_ONLY: they take no part in the rounds.
        for (Party& p : x.parties) p.vote = Acked(p) ? Vote::kReadOnly : Vote::kYes;
        if (CountVotes(x, Vote::kYes) == 0) {
          // Not a record this coordinator writes; include everyone to be safe.
          for (Party& p : x.parties) {
            p.vote = Vote::kYes;
            SetOwed(p, true);
          }
        }
        MoveTo(x, Phase::kPrecommitted);
        x.replied = false;  // a retry waits for the decision
        x.ballot = r.ballot();
        // Which participants accepted ballot 0 is not known: a round learns
        // the decision (it may be ABORT, if participants ran one meanwhile).
        StartTermination(x, now_ms);
        ArmTermination(x, now_ms);
        break;
      case v1::STATE_COMMITTED:
        for (Party& p : x.parties) p.vote = Vote::kYes;
        MoveTo(x, Phase::kCommitted);
        for (size_t i = 0; i < x.parties.size(); ++i) {
          if (!Acked(x.parties[i])) SendRound(x, i, MsgType::kCommit, now_ms);
        }
        MaybeEnd(x);
        MaybeFinish(x);
        break;
      case v1::PREPARING:
        if (config.plant != Plant::kStagedPresumedAbort) {
          // Parallel commit: committed iff every participant holds it
          // prepared (or committed it). Ask them all.
          for (Party& p : x.parties) {
            p.vote = Vote::kPending;
            SetOwed(p, true);
          }
          MoveTo(x, Phase::kProbing);
          x.preparing_record = PreparingRecord::kDurable;
          x.replied = false;  // a retry waits for the decision
          x.deadline_ms = now_ms + config.txn_timeout_ms;
          for (size_t i = 0; i < x.parties.size(); ++i) SendRound(x, i, MsgType::kQuery, now_ms);
          break;
        }
        // TEST ONLY: "staged-presumed-abort" takes it for an ABORT record.
        x.reason = "aborted before a restart";
        [[fallthrough]];
      case v1::STATE_ABORTED:
        for (Party& p : x.parties) p.vote = Vote::kUnknown;
        MoveTo(x, Phase::kAborted);
        if (x.reason.empty()) x.reason = "aborted before a restart";
        for (size_t i = 0; i < x.parties.size(); ++i) {
          if (!Acked(x.parties[i])) SendRound(x, i, MsgType::kAbort, now_ms);
        }
        MaybeEnd(x);
        MaybeFinish(x);
        break;
      case v1::ENDED:
        for (Party& p : x.parties) {
          p.vote = Vote::kUnknown;
          SetOwed(p, false);
        }
        MoveTo(x, RecordCommitted(r) ? Phase::kCommitEnded : Phase::kAbortEnded);
        MaybeFinish(x);
        break;
      default:
        Log(absl::StrCat("txn ", x.id, ": record state ", v1::TxnState_Name(r.state()),
                         " is not one the coordinator writes; ignored"));
        txns.erase(it);
        break;
    }
  }

  // ---- inputs ----

  absl::Status Validate(const v1::ExecuteRequest& req) const {
    if (!req.txn_id().empty()) {
      absl::Status s = ValidateTxnId(req.txn_id());
      if (!s.ok()) return s;
    }
    if (req.ops_size() == 0) {
      return absl::InvalidArgumentError("ops is empty: a transaction needs at least one op");
    }
    if (static_cast<size_t>(req.ops_size()) > config.ops_per_txn_max) {
      return absl::InvalidArgumentError(
          absl::StrCat(req.ops_size(), " ops; at most ", config.ops_per_txn_max, " allowed"));
    }
    if (req.protocol() != v1::PROTOCOL_UNSPECIFIED && req.protocol() != v1::TWO_PC &&
        req.protocol() != v1::THREE_PC) {
      return absl::InvalidArgumentError(
          absl::StrCat("protocol ", static_cast<int>(req.protocol()), " is unknown"));
    }
    for (int i = 0; i < req.ops_size(); ++i) {
      absl::Status s = ValidateOp(config, i, req.ops(i));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  std::string MintId() {
    for (;;) {
      std::string id =
          absl::StrCat(config.coordinator_id, "-", config.boot_count, "-", next_minted++);
      // A client may have picked an id of this shape.
      if (txns.count(id) == 0 && open.count(id) == 0 &&
          !(view != nullptr && view->FindTxn(id).has_value())) {
        return id;
      }
    }
  }

  void ReplyFromRecord(RequestId request, const v1::CoordinatorTxnRecord& r, int op_count) {
    if (r.state() == v1::PRECOMMITTED || r.state() == v1::PREPARING) {
      ReplyError(request,
                 absl::UnavailableError(
                     absl::StrCat("transaction ", r.txn_id(), " is being recovered; retry")),
                 r.txn_id());
      return;
    }
    v1::ExecuteResponse resp;
    resp.set_txn_id(r.txn_id());
    bool committed = RecordCommitted(r);
    resp.set_outcome(committed ? v1::COMMITTED : v1::ABORTED);
    if (!committed) resp.set_reason(r.reason());
    for (int i = 0; i < op_count; ++i) {
      resp.add_results()->set_sequence(committed && i < r.sequences_size() ? r.sequences(i) : 0);
    }
    out.replies.push_back(ExecuteReply{request, absl::OkStatus(), std::move(resp)});
  }

  void Attach(Txn& t, RequestId request, int op_count) {
    if (OutcomeReady(t)) {
      out.replies.push_back(ExecuteReply{request, absl::OkStatus(), Response(t, op_count)});
      return;
    }
    t.waiters.push_back(Waiter{request, op_count});
  }

  void Execute(RequestId request, const v1::ExecuteRequest& req, int64_t now_ms) {
    absl::Status s = Validate(req);
    if (!s.ok()) return ReplyError(request, s, req.txn_id());
    uint64_t digest = OpsDigest(req.ops());
    if (!req.txn_id().empty()) {
      const std::string& id = req.txn_id();
      if (open.count(id) > 0) {
        return ReplyError(request,
                          absl::AlreadyExistsError(absl::StrCat(
                              "transaction id \"", id, "\" is open (begun by Begin); use Commit")),
                          id);
      }
      if (Txn* t = Find(id)) {
        if (!t->presumed && t->digest != digest) {
          return ReplyError(request,
                            absl::AlreadyExistsError(absl::StrCat(
                                "transaction id \"", id, "\" was already used with different ops")),
                            id);
        }
        return Attach(*t, request, req.ops_size());
      }
      if (view != nullptr) {
        if (std::optional<v1::CoordinatorTxnRecord> r = view->FindTxn(id)) {
          if (r->participants_size() > 0 && r->ops_digest() != digest) {
            return ReplyError(
                request,
                absl::AlreadyExistsError(absl::StrCat("transaction id \"", id,
                                                      "\" was already used with different ops")),
                id);
          }
          return ReplyFromRecord(request, *r, req.ops_size());
        }
      }
    }
    if (in_flight >= config.txns_in_flight_max) {
      return ReplyError(request,
                        absl::ResourceExhaustedError(absl::StrCat(
                            in_flight, " transactions in flight; at most ",
                            config.txns_in_flight_max, " allowed (--txns_in_flight_max)")),
                        req.txn_id());
    }

    Txn t;
    t.id = req.txn_id().empty() ? MintId() : req.txn_id();
    t.protocol =
        req.protocol() == v1::PROTOCOL_UNSPECIFIED ? config.default_protocol : req.protocol();
    t.digest = digest;
    t.created_ms = now_ms;
    t.timeout_ms = req.timeout_ms() == 0 ? config.txn_timeout_ms : req.timeout_ms();
    t.timeout_ms = std::min(t.timeout_ms, config.txn_timeout_ms_max);
    t.reply_at_decision = req.reply_at_decision();
    t.deadline_ms = now_ms + t.timeout_ms;
    t.ops = req.ops();
    std::map<std::string, uint32_t> index;
    for (int i = 0; i < req.ops_size(); ++i) {
      const std::string& pid = req.ops(i).participant();
      auto [it, fresh] = index.emplace(pid, static_cast<uint32_t>(t.parties.size()));
      if (fresh) {
        Party p;
        p.id = pid;
        p.address = config.participants.at(pid);
        t.parties.push_back(std::move(p));
      }
      t.op_party.push_back(it->second);
      t.parties[it->second].ops.push_back(i);
    }
    t.sequences.assign(req.ops_size(), 0);
    ATOMQ_CHECK(!t.parties.empty() && t.op_party.size() == static_cast<size_t>(req.ops_size()),
                "every op maps to a participant");
    t.one_phase = OnePhaseFor(t);
    t.waiters.push_back(Waiter{request, req.ops_size()});
    t.in_flight = true;
    ++in_flight;

    auto [it, inserted] = txns.emplace(t.id, std::move(t));
    ATOMQ_CHECK(inserted, "a new transaction id is not in memory");
    Txn& x = it->second;
    MoveTo(x, Phase::kPreparing);
    for (size_t i = 0; i < x.parties.size(); ++i) {
      OutMessage m = PrepareTo(x, i);
      for (int op : x.parties[i].ops) *m.prepare.add_ops() = x.ops.Get(op);
      if (x.one_phase) m.prepare = OnePhasePrepare(x, i);
      out.send.push_back(std::move(m));
    }
    if (config.parallel_commit && !x.one_phase && x.protocol == v1::TWO_PC &&
        x.parties.size() >= 2) {
      x.preparing_record = PreparingRecord::kInFlight;
      Persist(x, RecordKind::kStage, v1::PREPARING);
    }
    x.deadline_timer = SetTimer(x, TimerKind::kDeadline, 0, x.deadline_ms);
  }

  void OnPrepareReply(const std::string& txn_id, const std::string& participant,
                      const absl::StatusOr<v1::PrepareResponse>& reply, int64_t now_ms) {
    Txn* t = Find(txn_id);
    if (t == nullptr || !Collecting(*t)) return;  // late: decided already
    int i = PartyIndex(*t, participant);
    if (i < 0 || t->parties[i].vote != Vote::kPending) return;  // stray or duplicate
    if (t->one_phase) return OnOnePhaseReply(*t, static_cast<size_t>(i), reply, now_ms);
    Party& p = t->parties[i];
    if (!reply.ok()) {
      p.vote = Vote::kFailed;
      absl::StatusCode c = reply.status().code();
      const char* what = c == absl::StatusCode::kUnavailable ||
                                 c == absl::StatusCode::kDeadlineExceeded ||
                                 c == absl::StatusCode::kCancelled
                             ? " unreachable: "
                             : " failed to prepare: ";
      return Abort(*t, absl::StrCat(p.id, what, reply.status().ToString()), now_ms);
    }
    switch (reply->vote()) {
      case v1::YES:
        p.vote = Vote::kYes;
        break;
      case v1::READ_ONLY:
        p.vote = Vote::kReadOnly;
        break;
      case v1::NO:
        // TEST ONLY: a broken coordinator, for tests/sim to show its checker catches it.
        if (config.plant == Plant::kCommitWithoutVotes) {
          p.vote = Vote::kYes;
          break;
        }
        p.vote = Vote::kNo;
        return Abort(*t,
                     reply->reason().empty() ? absl::StrCat(p.id, " voted NO")
                                             : absl::StrCat(p.id, " voted NO: ", reply->reason()),
                     now_ms);
      default:
        // Not a vote: it may still have prepared, so it gets an Abort.
        p.vote = Vote::kFailed;
        return Abort(*t,
                     absl::StrCat(p.id, " sent vote ", static_cast<int>(reply->vote()),
                                  ", which is not a vote"),
                     now_ms);
    }
    if (CountVotes(*t, Vote::kPending) == 0) DecideCommit(*t, now_ms);
  }

  // ---- one-phase commit (a single participant; PrepareRequest.one_phase) ----
  // The participant's own durable COMMITTED outcome is the decision, so this
  // path forces nothing here: a YES (it carries the sequences) is answered
  // COMMITTED at once, and an ENDED record follows, not waited on, so that a
  // retry with the same id finds the outcome. A crash before that record is
  // durable forgets the transaction; a retry with the same id then sends the
  // same one-phase Prepare, which the participant answers from its outcome
  // (the same sequences, or NO): it never commits twice. The participant is
  // never in doubt, so it never asks QueryState about the id (which would
  // presume abort here).
  // A NO is final at the participant (it records ABORTED before it answers),
  // so the abort is decided as under 2PC. An unknown outcome (a failed
  // Prepare RPC, a reply that is no vote, the deadline) is NOT an abort: the
  // participant may have committed. Abort is then sent until answered: OK
  // means ABORTED is durable there and it can never commit, so the abort is
  // decided; FAILED_PRECONDITION means it committed, and the one-phase
  // Prepare is resent until its YES brings the sequences.

  bool OnePhaseFor(const Txn& t) const {
    if (!config.one_phase || t.interactive) return false;
    // TEST ONLY: "one-phase-multi" commits every participant on its own.
    return t.parties.size() == 1 || config.plant == Plant::kOnePhaseMulti;
  }

  v1::PrepareRequest OnePhasePrepare(const Txn& t, size_t i) const {
    const Party& p = t.parties[i];
    v1::PrepareRequest pr;
    pr.set_txn_id(t.id);
    pr.set_protocol(t.protocol);
    pr.set_coordinator_id(config.coordinator_id);
    pr.set_coordinator_address(config.coordinator_address);
    pr.set_participant(p.id);
    v1::PeerAddress* pa = pr.add_participants();  // the only one (but under the plant)
    pa->set_participant(p.id);
    pa->set_address(p.address);
    for (int op : p.ops) *pr.add_ops() = t.ops.Get(op);
    pr.set_one_phase(true);
    return pr;
  }

  void SendOnePhase(Txn& t, size_t i, MsgType type, int64_t now_ms) {
    ATOMQ_CHECK(t.one_phase && Fencing(t), "one-phase resends only while the outcome is unknown");
    ATOMQ_CHECK(type == (t.phase == Phase::kFetching ? MsgType::kPrepare : MsgType::kAbort),
                "Abort until it is refused, then the Prepare that reports the commit");
    Party& p = t.parties[i];
    OutMessage m;
    m.participant = p.id;
    m.address = p.address;
    m.type = type;
    m.txn_id = t.id;
    if (type == MsgType::kPrepare) m.prepare = OnePhasePrepare(t, i);
    out.send.push_back(std::move(m));
    p.resend_timer = SetTimer(t, TimerKind::kResend, i, now_ms + p.backoff_ms);
  }

  void OnOnePhaseReply(Txn& t, size_t i, const absl::StatusOr<v1::PrepareResponse>& reply,
                       int64_t now_ms) {
    Party& p = t.parties[i];
    if (!reply.ok()) {
      return FenceOnePhase(
          t,
          absl::StrCat(p.id, " did not answer the one-phase prepare: ", reply.status().ToString()),
          now_ms);
    }
    switch (reply->vote()) {
      case v1::YES:
        return OnePhaseYes(t, i, *reply, now_ms);
      case v1::READ_ONLY:
        p.vote = Vote::kReadOnly;
        return MaybeCommitOnePhase(t, now_ms);
      case v1::NO:
        // TEST ONLY: a broken coordinator, for tests/sim to show its checker catches it.
        if (config.plant == Plant::kCommitWithoutVotes) {
          return OnePhaseYes(t, i, v1::PrepareResponse(), now_ms);
        }
        p.vote = Vote::kNo;
        return Abort(t,
                     reply->reason().empty() ? absl::StrCat(p.id, " voted NO")
                                             : absl::StrCat(p.id, " voted NO: ", reply->reason()),
                     now_ms);
      default:
        return FenceOnePhase(t,
                             absl::StrCat(p.id, " sent vote ", static_cast<int>(reply->vote()),
                                          ", which is not a vote"),
                             now_ms);
    }
  }

  void OnePhaseYes(Txn& t, size_t i, const v1::PrepareResponse& resp, int64_t now_ms) {
    Party& p = t.parties[i];
    p.vote = Vote::kYes;
    p.resend_timer = 0;
    // Its sequences follow its ops in request order (the PrepareRequest's order).
    for (size_t k = 0; k < p.ops.size() && static_cast<int>(k) < resp.sequences_size(); ++k) {
      t.sequences[p.ops[k]] = resp.sequences(static_cast<int>(k));
    }
    MaybeCommitOnePhase(t, now_ms);
  }

  void MaybeCommitOnePhase(Txn& t, int64_t now_ms) {
    if (CountVotes(t, Vote::kPending) > 0) return;                       // only under the plant
    if (CountVotes(t, Vote::kYes) == 0) return DecideCommit(t, now_ms);  // read-only
    ATOMQ_CHECK(CountVotes(t, Vote::kYes) + CountVotes(t, Vote::kReadOnly) == t.parties.size(),
                "a one-phase commit with every vote YES or READ_ONLY");
    // The participant's COMMITTED outcome is durable before its YES.
    MoveTo(t, Phase::kCommitted);
    t.decided_ms = now_ms;
    t.deadline_timer = 0;
    for (Party& q : t.parties) {
      SetOwed(q, false);  // nothing more to tell anyone
      q.resend_timer = 0;
    }
    Log(absl::StrCat("txn ", t.id, " COMMITTED (one phase at ", t.parties[0].id, ", ",
                     ProtocolName(t.protocol), ")"));
    ReplyAll(t);
    MaybeEnd(t);
    MaybeFinish(t);
  }

  void FenceOnePhase(Txn& t, std::string reason, int64_t now_ms) {
    if (Fencing(t)) return;  // the resend timers carry on
    // TEST ONLY: "one-phase-presumed-abort" decides ABORT at once, the bug
    // this path exists to avoid (the participant may have committed).
    if (config.plant == Plant::kOnePhasePresumedAbort) {
      for (Party& p : t.parties) p.vote = p.vote == Vote::kPending ? Vote::kFailed : p.vote;
      return Abort(t, std::move(reason), now_ms);
    }
    MoveTo(t, Phase::kFencing);
    t.fence_reason = std::move(reason);
    t.deadline_timer = 0;
    Log(absl::StrCat("txn ", t.id, ": one-phase outcome unknown (", t.fence_reason,
                     "); sending Abort to learn or settle it"));
    for (size_t i = 0; i < t.parties.size(); ++i) {
      if (t.parties[i].vote != Vote::kPending) continue;
      t.parties[i].backoff_ms = std::max<uint32_t>(1, config.resend_initial_ms);
      SendOnePhase(t, i, MsgType::kAbort, now_ms);
    }
  }

  void ResendOnePhase(Txn& t, size_t i, int64_t now_ms) {
    Party& p = t.parties[i];
    if (p.vote != Vote::kPending) return;
    p.backoff_ms = std::min(std::max<uint32_t>(1, p.backoff_ms) * 2, config.resend_max_ms);
    SendOnePhase(t, i, t.phase == Phase::kFetching ? MsgType::kPrepare : MsgType::kAbort, now_ms);
  }

  void OnFenceReply(Txn& t, const std::string& participant, const absl::Status& status,
                    int64_t now_ms) {
    const int i = PartyIndex(t, participant);
    if (i < 0 || t.parties[i].vote != Vote::kPending || t.phase == Phase::kFetching) return;
    Party& p = t.parties[i];
    if (status.ok()) {
      // ABORTED is durable there: it kept nothing and never will commit.
      p.vote = Vote::kNo;
      p.resend_timer = 0;
      return Abort(t, t.fence_reason, now_ms);
    }
    if (status.code() != absl::StatusCode::kFailedPrecondition) return;  // resend
    // It committed: the same one-phase Prepare is answered YES with the sequences.
    Log(absl::StrCat("txn ", t.id, ": ", p.id,
                     " committed it in one phase; asking for the sequences"));
    MoveTo(t, Phase::kFetching);
    p.backoff_ms = std::max<uint32_t>(1, config.resend_initial_ms);
    SendOnePhase(t, static_cast<size_t>(i), MsgType::kPrepare, now_ms);
  }

  void OnPreCommitReply(const std::string& txn_id, const std::string& participant,
                        const absl::Status& status, int64_t now_ms) {
    Txn* t = Find(txn_id);
    // Late acks after the decision (COMMIT, or ABORT chosen by a round) must
    // not touch the outcome's resend timers.
    if (t == nullptr || !PrecommitDurable(*t)) return;
    int i = PartyIndex(*t, participant);
    if (i < 0) return;
    Party& p = t->parties[i];
    if (p.vote != Vote::kYes || p.answer != Answer::kNone) return;
    if (status.code() == absl::StatusCode::kFailedPrecondition) {
      // It was settled otherwise (e.g. a termination round): resending cannot help.
      p.answer = Answer::kPrecommitRefused;
      p.resend_timer = 0;
      Log(absl::StrCat("txn ", t->id, ": ", p.id, " refused PreCommit: ", status.ToString()));
      size_t possible = 0;
      for (const Party& q : t->parties) {
        possible += q.vote == Vote::kYes && !Refused(q) ? 1 : 0;
      }
      // A majority of ballot-0 accepts cannot come: a round decides.
      if (t->phase == Phase::kPrecommitted && possible < PrecommitAcksNeeded(*t)) {
        StartTermination(*t, now_ms);
      }
      return;
    }
    if (!status.ok()) return;  // the resend timer tries again
    p.answer = Answer::kPrecommitAcked;
    p.resend_timer = 0;
    if (t->phase == Phase::kPrecommitted && PrecommitAcks(*t) >= PrecommitAcksNeeded(*t)) {
      PersistCommit(*t, CommitBy::kPrecommitMajority);
    }
  }

  void OnCommitReply(const std::string& txn_id, const std::string& participant,
                     const absl::StatusOr<v1::CommitResponse>& reply, int64_t now_ms) {
    Txn* t = Find(txn_id);
    // Every participant owed the outcome after the decision was sent a Commit.
    if (t == nullptr || !Committed(*t)) return;
    int i = PartyIndex(*t, participant);
    if (i < 0 || Acked(t->parties[i])) return;
    Party& p = t->parties[i];
    if (!reply.ok()) {
      if (reply.status().code() != absl::StatusCode::kFailedPrecondition) return;  // resend
      Log(absl::StrCat("ALARM txn ", t->id, ": ", p.id,
                       " refused Commit (it aborted): ", reply.status().ToString()));
      p.answer = Answer::kAckedOtherOutcome;
    } else {
      AdoptStagedOps(*t, static_cast<size_t>(i), reply->sequences_size());
      // Its sequences follow its ops in request order (the PrepareRequest's order).
      for (size_t k = 0; k < p.ops.size() && static_cast<int>(k) < reply->sequences_size(); ++k) {
        t->sequences[p.ops[k]] = reply->sequences(static_cast<int>(k));
      }
      p.answer = Answer::kAcked;
    }
    p.resend_timer = 0;
    MaybeReplyCommitted(*t, now_ms);
    MaybeEnd(*t);
    MaybeFinish(*t);
  }

  void OnAbortReply(const std::string& txn_id, const std::string& participant,
                    const absl::Status& status, int64_t now_ms) {
    Txn* t = Find(txn_id);
    if (t != nullptr && Fencing(*t)) return OnFenceReply(*t, participant, status, now_ms);
    if (t == nullptr || !Aborted(*t)) return;
    int i = PartyIndex(*t, participant);
    if (i < 0 || Acked(t->parties[i])) return;
    Party& p = t->parties[i];
    if (!status.ok()) {
      if (status.code() != absl::StatusCode::kFailedPrecondition) return;  // resend
      Log(absl::StrCat("ALARM txn ", t->id, ": ", p.id,
                       " refused Abort (it committed): ", status.ToString()));
      p.answer = Answer::kAckedOtherOutcome;
    } else {
      p.answer = Answer::kAcked;
    }
    p.resend_timer = 0;
    MaybeEnd(*t);
    MaybeFinish(*t);
  }

  void OnTimer(uint64_t timer_id, int64_t now_ms) {
    auto tit = timers.find(timer_id);
    if (tit == timers.end()) return;
    TimerRef ref = std::move(tit->second);
    timers.erase(tit);
    Txn* t = Find(ref.txn_id);
    if (t == nullptr) return;
    switch (ref.kind) {
      case TimerKind::kDeadline: {
        if (t->deadline_timer != timer_id) return;
        t->deadline_timer = 0;
        if (Collecting(*t)) {
          std::vector<std::string> missing;
          for (const Party& p : t->parties) {
            if (p.vote == Vote::kPending) missing.push_back(p.id);
          }
          ATOMQ_CHECK(!missing.empty(), "still preparing with every vote in");
          if (t->one_phase) {
            return FenceOnePhase(*t,
                                 absl::StrCat("one-phase prepare timed out after ", t->timeout_ms,
                                              " ms waiting for ", absl::StrJoin(missing, ", ")),
                                 now_ms);
          }
          return Abort(*t,
                       absl::StrCat("prepare timed out after ", t->timeout_ms, " ms waiting for ",
                                    absl::StrJoin(missing, ", ")),
                       now_ms);
        }
        MaybeReplyCommitted(*t, now_ms);
        return MaybeFinish(*t);
      }
      case TimerKind::kResend: {
        if (ref.party >= t->parties.size()) return;
        Party& p = t->parties[ref.party];
        if (p.resend_timer != timer_id) return;
        p.resend_timer = 0;
        if (Fencing(*t)) return ResendOnePhase(*t, ref.party, now_ms);
        MsgType type;
        if (t->phase == Phase::kProbing) {
          if (p.vote != Vote::kPending) return;
          type = MsgType::kQuery;
        } else if (PrecommitDurable(*t)) {
          if (p.answer != Answer::kNone) return;
          type = MsgType::kPreCommit;
        } else if (Committed(*t)) {
          if (Acked(p)) return;
          type = MsgType::kCommit;
        } else if (Aborted(*t)) {
          if (Acked(p)) return;
          type = MsgType::kAbort;
        } else {
          return;
        }
        p.backoff_ms = std::min(std::max<uint32_t>(1, p.backoff_ms) * 2, config.resend_max_ms);
        return Send(*t, ref.party, type, now_ms);
      }
      case TimerKind::kTerminate: {
        if (t->term_timer != timer_id) return;
        t->term_timer = 0;
        if (t->phase != Phase::kPrecommitted) return;
        StartTermination(*t, now_ms);
        return ArmTermination(*t, now_ms);
      }
      case TimerKind::kPersistRetry: {
        if (t->retry_timer != timer_id) return;
        t->retry_timer = 0;
        if (t->retry_kind == RecordKind::kCommit) {
          ATOMQ_CHECK(t->phase == Phase::kCommittingPrecommitted,
                      "commit record retried outside 3PC kCommitting");
          return Persist(*t, RecordKind::kCommit, v1::STATE_COMMITTED);
        }
        ATOMQ_CHECK(t->phase == Phase::kAborting, "abort record retried when not pending");
        return Persist(*t, RecordKind::kAbort, v1::STATE_ABORTED);
      }
    }
  }

  void OnPersisted(uint64_t token, const absl::Status& status, int64_t now_ms) {
    auto kit = tokens.find(token);
    if (kit == tokens.end()) return;
    TokenRef ref = std::move(kit->second);
    tokens.erase(kit);
    Txn* t = Find(ref.txn_id);
    if (t == nullptr) {
      // Evicted from memory already (a small --finished_cache_max).
      if (ref.kind == RecordKind::kEnd && status.ok()) SendForget(ref.txn_id);
      return;
    }
    if (ref.kind == RecordKind::kBallot) {
      if (t->ballot_token == token) t->ballot_token = 0;
      if (t->after_ballot) {
        const auto [kind, state] = *t->after_ballot;
        t->after_ballot.reset();
        return Persist(*t, kind, state);
      }
      // A failed write: the termination timer tries again.
      if (status.ok() && t->phase == Phase::kPrecommitted) BeginTermination(*t, now_ms);
      return;
    }
    if (ref.kind == RecordKind::kEnd) {
      if (!status.ok()) {
        Log(absl::StrCat("txn ", t->id,
                         ": ENDED record write failed (recovery will resend "
                         "the outcome): ",
                         status.ToString()));
        return;
      }
      return SendForget(*t);
    }
    if (ref.kind == RecordKind::kStage) {
      if (!status.ok()) {
        // Nothing on disk says commit: go on as plain 2PC (a COMMITTED
        // record if every vote is YES, an abort otherwise).
        Log(absl::StrCat("txn ", t->id, ": PREPARING record write failed, committing without it: ",
                         status.ToString()));
        t->preparing_record = PreparingRecord::kNone;
        if (t->phase == Phase::kCommitting && t->decision_token == 0) {
          PersistCommit(*t, CommitBy::kVotes);
        }
        return;
      }
      t->preparing_record = PreparingRecord::kDurable;
      if (t->phase == Phase::kCommitting && t->decision_token == 0) OnCommitDurable(*t, now_ms);
      return;
    }
    if (t->decision_token != token) return;  // superseded
    t->decision_token = 0;
    switch (ref.kind) {
      case RecordKind::kPrecommit:
        ATOMQ_CHECK(t->phase == Phase::kPrecommitting, "PRECOMMITTED durable out of phase");
        if (!status.ok()) {
          return Abort(*t, absl::StrCat("decision log write failed: ", status.ToString()), now_ms);
        }
        MoveTo(*t, Phase::kPrecommitted);
        for (size_t i = 0; i < t->parties.size(); ++i) {
          if (t->parties[i].vote == Vote::kYes) SendRound(*t, i, MsgType::kPreCommit, now_ms);
        }
        ArmTermination(*t, now_ms);
        return;
      case RecordKind::kCommit:
        if (!status.ok()) {
          // After PRECOMMITTED the outcome is commit: only the record is missing.
          if (PrecommitDurable(*t)) return ScheduleRetry(*t, RecordKind::kCommit, status, now_ms);
          return Abort(*t, absl::StrCat("decision log write failed: ", status.ToString()), now_ms);
        }
        t->retry_backoff_ms = 0;
        return OnCommitDurable(*t, now_ms);
      case RecordKind::kAbort:
        ATOMQ_CHECK(t->phase == Phase::kAborting, "abort record durable out of phase");
        if (!status.ok()) {
          // The reply must wait: a retry with this id after a restart would
          // otherwise find nothing and could commit.
          return ScheduleRetry(*t, RecordKind::kAbort, status, now_ms);
        }
        t->retry_backoff_ms = 0;
        MoveTo(*t, Phase::kAborted);
        if (t->preparing_record != PreparingRecord::kNone) {
          for (size_t i = 0; i < t->parties.size(); ++i) {
            if (!Acked(t->parties[i])) SendRound(*t, i, MsgType::kAbort, now_ms);
          }
        }
        ReplyAll(*t);
        ReplyStates(*t);
        MaybeEnd(*t);
        return MaybeFinish(*t);
      case RecordKind::kEnd:
      case RecordKind::kBallot:
      case RecordKind::kStage:
        return;
    }
  }

  void OnQueryReply(const std::string& txn_id, const std::string& participant,
                    const absl::StatusOr<v1::QueryStateResponse>& reply, int64_t now_ms) {
    Txn* t = Find(txn_id);
    if (t == nullptr || t->phase != Phase::kProbing) return;
    int i = PartyIndex(*t, participant);
    if (i < 0 || t->parties[i].vote != Vote::kPending) return;
    if (!reply.ok()) return;  // asked again when the resend timer fires
    Party& p = t->parties[i];
    // An operator resolved it while it was prepared: it voted YES.
    const v1::TxnState state = reply->heuristic() ? v1::PREPARED : reply->state();
    switch (state) {
      case v1::PREPARED:
      case v1::STATE_COMMITTED:
        p.vote = Vote::kYes;
        p.resend_timer = 0;
        break;
      case v1::STATE_ABORTED:
        // It never prepared (and now never will), or it aborted.
        p.vote = Vote::kNo;
        p.resend_timer = 0;
        return Abort(*t,
                     absl::StrCat("recovered from a PREPARING record: ", p.id,
                                  " does not hold the transaction prepared"),
                     now_ms);
      default:
        return;  // not settled there yet: asked again
    }
    if (CountVotes(*t, Vote::kPending) == 0) {
      Log(absl::StrCat("txn ", t->id, ": every participant holds it prepared"));
      DecideCommit(*t, now_ms);
    }
  }

  void QueryState(RequestId request, const std::string& txn_id, int64_t now_ms) {
    if (!ValidateTxnId(txn_id).ok()) {
      // No transaction can have this id, so none can commit with it.
      out.state_replies.push_back(StateReply{request, v1::STATE_ABORTED});
      return;
    }
    if (Txn* t = Find(txn_id)) {
      if (t->phase == Phase::kAborting) {
        t->state_waiters.push_back(request);
        return;
      }
      // An ENDED transaction answers its outcome.
      v1::TxnState s = TxnStateOf(*t);
      if (s == v1::ENDED) s = Committed(*t) ? v1::STATE_COMMITTED : v1::STATE_ABORTED;
      out.state_replies.push_back(StateReply{request, s});
      return;
    }
    if (view != nullptr) {
      if (std::optional<v1::CoordinatorTxnRecord> r = view->FindTxn(txn_id)) {
        out.state_replies.push_back(StateReply{request, QueryAnswerFromRecord(*r)});
        return;
      }
    }
    // Presumed abort, made durable so that the id can never commit later.
    Txn t;
    t.id = txn_id;
    t.presumed = true;
    t.protocol = config.default_protocol;
    t.created_ms = now_ms;
    t.replied = true;
    t.state_waiters.push_back(request);
    auto [it, inserted] = txns.emplace(txn_id, std::move(t));
    Abort(it->second, "presumed abort: the coordinator has no decision for it", now_ms);
  }

  // ---- interactive transactions: Begin / Commit / Rollback ----
  // An open transaction is memory only: a crash forgets it, and presumed
  // abort plus the participants' expiry of staged work cover that. Commit
  // turns it into an ordinary Txn whose Prepares say use_staged.

  struct OpenTxn {
    v1::Protocol protocol = v1::TWO_PC;
    uint32_t timeout_ms = 0;
    int64_t expires_ms = 0;
    uint64_t timer = 0;
  };
  std::map<std::string, OpenTxn> open;
  std::unordered_map<uint64_t, std::string> open_timers;  // expiry timer -> txn id

  using Parts = google::protobuf::RepeatedPtrField<v1::TxnParticipant>;

  // Tells a Commit retry with the same participants from one with others.
  static uint64_t PartsDigest(const Parts& parts) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    auto mix = [&h](const std::string& s) {
      for (unsigned char c : s) {
        h ^= c;
        h *= 1099511628211ull;
      }
      h ^= 0xff;
      h *= 1099511628211ull;
    };
    mix("interactive");
    for (const v1::TxnParticipant& p : parts) {
      mix(p.participant());
      mix(std::to_string(p.staged_ops()));
    }
    return h;
  }

  absl::Status ValidateParts(const Parts& parts, bool allow_empty) const {
    if (parts.empty() && !allow_empty) {
      return absl::InvalidArgumentError(
          "participants is empty: name every participant that staged work");
    }
    std::set<std::string> seen;
    for (const v1::TxnParticipant& p : parts) {
      if (config.participants.find(p.participant()) == config.participants.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("participant \"", p.participant(), "\" is not known to this coordinator"));
      }
      if (!seen.insert(p.participant()).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("participant \"", p.participant(), "\" is named twice"));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<v1::BeginTxnResponse> Begin(const v1::BeginTxnRequest& req, int64_t now_ms) {
    if (!req.txn_id().empty()) {
      absl::Status s = ValidateTxnId(req.txn_id());
      if (!s.ok()) return s;
    }
    if (req.protocol() != v1::PROTOCOL_UNSPECIFIED && req.protocol() != v1::TWO_PC &&
        req.protocol() != v1::THREE_PC) {
      return absl::InvalidArgumentError(
          absl::StrCat("protocol ", static_cast<int>(req.protocol()), " is unknown"));
    }
    v1::BeginTxnResponse resp;
    if (!req.txn_id().empty()) {
      const std::string& id = req.txn_id();
      auto it = open.find(id);
      if (it != open.end()) {  // a retry of this Begin
        resp.set_txn_id(id);
        resp.set_expires_unix_ms(it->second.expires_ms);
        return resp;
      }
      if (Find(id) != nullptr || (view != nullptr && view->FindTxn(id).has_value())) {
        return absl::AlreadyExistsError(
            absl::StrCat("transaction id \"", id, "\" was already used"));
      }
    }
    if (in_flight >= config.txns_in_flight_max) {
      return absl::ResourceExhaustedError(
          absl::StrCat(in_flight, " transactions open or in flight; at most ",
                       config.txns_in_flight_max, " allowed (--txns_in_flight_max)"));
    }
    OpenTxn o;
    o.protocol =
        req.protocol() == v1::PROTOCOL_UNSPECIFIED ? config.default_protocol : req.protocol();
    o.timeout_ms = std::min(req.timeout_ms() == 0 ? config.txn_timeout_ms : req.timeout_ms(),
                            config.txn_timeout_ms_max);
    o.expires_ms = now_ms + o.timeout_ms;
    const std::string id = req.txn_id().empty() ? MintId() : req.txn_id();
    o.timer = next_timer++;
    open_timers.emplace(o.timer, id);
    out.timers.push_back(TimerRequest{o.timer, o.expires_ms});
    ++in_flight;  // handed on to the Txn that Commit/Rollback/expiry makes of it
    open.emplace(id, o);
    resp.set_txn_id(id);
    resp.set_expires_unix_ms(o.expires_ms);
    return resp;
  }

  // A Txn for an interactive transaction. `counted`: it was open, and its
  // in-flight slot passes to the Txn.
  Txn& Enlist(const std::string& id, v1::Protocol protocol, const Parts& parts, bool counted,
              int64_t now_ms) {
    ATOMQ_CHECK(open.count(id) == 0 && txns.count(id) == 0, "an id is open or a Txn, not both");
    Txn t;
    t.id = id;
    t.interactive = true;
    t.protocol = protocol;
    t.digest = PartsDigest(parts);
    t.created_ms = now_ms;
    t.timeout_ms = config.txn_timeout_ms;
    t.deadline_ms = now_ms + t.timeout_ms;
    for (const v1::TxnParticipant& tp : parts) {
      Party p;
      p.id = tp.participant();
      p.address = config.participants.at(p.id);
      t.parties.push_back(std::move(p));
    }
    t.in_flight = counted;
    auto [it, inserted] = txns.emplace(id, std::move(t));
    return it->second;
  }

  OpenTxn Close(std::map<std::string, OpenTxn>::iterator it) {
    OpenTxn o = it->second;
    open_timers.erase(o.timer);
    open.erase(it);
    return o;
  }

  // Returns true when `timer_id` was an open transaction's expiry.
  bool OnOpenTimer(uint64_t timer_id, int64_t now_ms) {
    auto tit = open_timers.find(timer_id);
    if (tit == open_timers.end()) return false;
    const std::string id = tit->second;
    auto it = open.find(id);
    if (it == open.end() || it->second.timer != timer_id) {
      open_timers.erase(tit);
      return true;
    }
    OpenTxn o = Close(it);
    // Recorded aborted, so a late Commit (even after a restart) learns why.
    // No participant is known: each drops its staged work at the same expiry.
    Txn& t = Enlist(id, o.protocol, Parts(), true, now_ms);
    t.presumed = true;
    Abort(
        t,
        absl::StrCat("transaction expired: not committed within its ", o.timeout_ms, " ms timeout"),
        now_ms);
    return true;
  }

  // Abort messages, not tracked, to `parts` outside `t`: they may hold staged
  // work for an id already aborted here (it also expires on its own).
  void TellToDrop(const Txn& t, const Parts& parts) {
    for (const v1::TxnParticipant& tp : parts) {
      if (PartyIndex(t, tp.participant()) >= 0) continue;
      OutMessage m;
      m.participant = tp.participant();
      m.address = config.participants.at(tp.participant());
      m.type = MsgType::kAbort;
      m.txn_id = t.id;
      out.send.push_back(std::move(m));
    }
  }

  // A Prepare to party i without its work (ops or staged count): who the
  // coordinator and the other participants are.
  OutMessage PrepareTo(const Txn& x, size_t i) const {
    const Party& p = x.parties[i];
    OutMessage m;
    m.participant = p.id;
    m.address = p.address;
    m.type = MsgType::kPrepare;
    m.txn_id = x.id;
    v1::PrepareRequest& pr = m.prepare;
    pr.set_txn_id(x.id);
    pr.set_protocol(x.protocol);
    pr.set_coordinator_id(config.coordinator_id);
    pr.set_coordinator_address(config.coordinator_address);
    pr.set_participant(p.id);
    for (const Party& q : x.parties) {
      v1::PeerAddress* pa = pr.add_participants();
      pa->set_participant(q.id);
      pa->set_address(q.address);
    }
    return m;
  }

  void SendStagedPrepares(Txn& x, const Parts& parts) {
    ATOMQ_CHECK(x.interactive && x.parties.size() == static_cast<size_t>(parts.size()),
                "one party per named participant");
    for (size_t i = 0; i < x.parties.size(); ++i) {
      OutMessage m = PrepareTo(x, i);
      m.prepare.set_use_staged(true);
      m.prepare.set_staged_ops(parts.Get(static_cast<int>(i)).staged_ops());
      out.send.push_back(std::move(m));
    }
    MoveTo(x, Phase::kPreparing);
    x.deadline_timer = SetTimer(x, TimerKind::kDeadline, 0, x.deadline_ms);
  }

  void AddStagedResults(const Txn& t, bool committed, v1::ExecuteResponse* r) const {
    for (const Party& p : t.parties) {
      v1::StagedResult* sr = r->add_staged();
      sr->set_participant(p.id);
      if (!committed) continue;
      for (int op : p.ops) {
        sr->add_sequences(static_cast<size_t>(op) < t.sequences.size() ? t.sequences[op] : 0);
      }
    }
  }

  // The commit reply of an interactive party lists its staged ops: they
  // become the party's ops (and the record's), in staging order.
  void AdoptStagedOps(Txn& t, size_t party, int count) {
    if (!t.interactive || party >= t.parties.size() || !t.parties[party].ops.empty()) return;
    for (int k = 0; k < count; ++k) {
      t.parties[party].ops.push_back(static_cast<int>(t.sequences.size()));
      t.op_party.push_back(static_cast<uint32_t>(party));
      t.sequences.push_back(0);
    }
    ATOMQ_CHECK(t.op_party.size() == t.sequences.size(), "one party per adopted op");
  }

  void ReplyInteractiveFromRecord(RequestId request, const v1::CoordinatorTxnRecord& r) {
    v1::ExecuteResponse resp;
    resp.set_txn_id(r.txn_id());
    bool committed = RecordCommitted(r);
    resp.set_outcome(committed ? v1::COMMITTED : v1::ABORTED);
    if (!committed) resp.set_reason(r.reason());
    for (int pi = 0; pi < r.participants_size(); ++pi) {
      v1::StagedResult* sr = resp.add_staged();
      sr->set_participant(r.participants(pi));
      if (!committed) continue;
      for (int i = 0; i < r.op_participant_size() && i < r.sequences_size(); ++i) {
        if (r.op_participant(i) == static_cast<uint32_t>(pi)) sr->add_sequences(r.sequences(i));
      }
    }
    out.replies.push_back(ExecuteReply{request, absl::OkStatus(), std::move(resp)});
  }

  void CommitInteractive(RequestId request, const v1::CommitTxnRequest& req, int64_t now_ms) {
    absl::Status s = ValidateTxnId(req.txn_id());
    if (s.ok()) s = ValidateParts(req.participants(), false);
    if (!s.ok()) return ReplyError(request, s, req.txn_id());
    const std::string& id = req.txn_id();
    auto oit = open.find(id);
    if (oit != open.end()) {
      OpenTxn o = Close(oit);
      Txn& t = Enlist(id, o.protocol, req.participants(), true, now_ms);
      t.waiters.push_back(Waiter{request, 0});
      if (now_ms >= o.expires_ms) {
        return Abort(t,
                     absl::StrCat("transaction expired: Commit came ", now_ms - o.expires_ms,
                                  " ms after its ", o.timeout_ms, " ms timeout"),
                     now_ms);
      }
      return SendStagedPrepares(t, req.participants());
    }
    if (Txn* t = Find(id)) {
      if (!t->interactive) {
        return ReplyError(request,
                          absl::FailedPreconditionError(absl::StrCat(
                              "transaction ", id,
                              " was run by Execute; Commit is for transactions begun by Begin")),
                          id);
      }
      if (Aborted(*t)) {
        TellToDrop(*t, req.participants());
      } else if (t->digest != PartsDigest(req.participants())) {
        return ReplyError(request,
                          absl::AlreadyExistsError(absl::StrCat(
                              "transaction ", id, " is committing with other participants")),
                          id);
      }
      return Attach(*t, request, 0);
    }
    if (view != nullptr) {
      if (std::optional<v1::CoordinatorTxnRecord> r = view->FindTxn(id)) {
        if (!r->interactive() && r->participants_size() > 0) {
          return ReplyError(request,
                            absl::FailedPreconditionError(absl::StrCat(
                                "transaction ", id,
                                " was run by Execute; Commit is for transactions begun by Begin")),
                            id);
        }
        if (RecordCommitted(*r) && r->ops_digest() != PartsDigest(req.participants())) {
          return ReplyError(request,
                            absl::AlreadyExistsError(absl::StrCat(
                                "transaction ", id, " committed with other participants")),
                            id);
        }
        return ReplyInteractiveFromRecord(request, *r);
      }
    }
    Txn& t = Enlist(id, config.default_protocol, req.participants(), false, now_ms);
    t.waiters.push_back(Waiter{request, 0});
    Abort(t,
          absl::StrCat("transaction ", id,
                       " is not open at this coordinator (never begun, expired and forgotten, "
                       "or lost in a coordinator restart)"),
          now_ms);
  }

  void RollbackInteractive(RequestId request, const v1::RollbackTxnRequest& req, int64_t now_ms) {
    absl::Status s = ValidateTxnId(req.txn_id());
    if (s.ok()) s = ValidateParts(req.participants(), true);
    if (!s.ok()) return ReplyError(request, s, req.txn_id());
    const std::string& id = req.txn_id();
    auto oit = open.find(id);
    if (oit != open.end()) {
      OpenTxn o = Close(oit);
      Txn& t = Enlist(id, o.protocol, req.participants(), true, now_ms);
      t.waiters.push_back(Waiter{request, 0});
      return Abort(t, "rolled back by the client", now_ms);
    }
    auto refuse = [&] {
      ReplyError(request,
                 absl::FailedPreconditionError(
                     absl::StrCat("transaction ", id,
                                  " committed (or its commit is decided); it cannot be "
                                  "rolled back")),
                 id);
    };
    if (Txn* t = Find(id)) {
      if (!t->interactive && !t->presumed) {
        return ReplyError(request,
                          absl::FailedPreconditionError(absl::StrCat(
                              "transaction ", id,
                              " was run by Execute; Rollback is for transactions begun by Begin")),
                          id);
      }
      if (Collecting(*t)) {
        Abort(*t, "rolled back by the client while its commit was preparing", now_ms);
      }
      if (!Aborted(*t)) return refuse();

      TellToDrop(*t, req.participants());
      return Attach(*t, request, 0);
    }
    if (view != nullptr) {
      if (std::optional<v1::CoordinatorTxnRecord> r = view->FindTxn(id)) {
        if (RecordCommitted(*r) || r->state() == v1::PRECOMMITTED) return refuse();
        out.replies.push_back(ExecuteReply{request, absl::OkStatus(), v1::ExecuteResponse()});
        return;
      }
    }
    Txn& t = Enlist(id, config.default_protocol, req.participants(), false, now_ms);
    t.waiters.push_back(Waiter{request, 0});
    Abort(t, "rolled back by the client (it was not open at this coordinator)", now_ms);
  }

  // A participant asking about an open id: undecided, and it cannot commit
  // without a Commit here.
  bool AnswerOpen(RequestId request, const std::string& txn_id) {
    if (open.count(txn_id) == 0) return false;
    out.state_replies.push_back(StateReply{request, v1::PREPARING});
    return true;
  }
};

CoordinatorCore::CoordinatorCore(Config config, const DurableView* view)
    : impl_(std::make_unique<Impl>(std::move(config), view)) {}

CoordinatorCore::~CoordinatorCore() = default;

void CoordinatorCore::Recover(std::vector<v1::CoordinatorTxnRecord> records, int64_t now_ms) {
  ATOMQ_CHECK(!impl_->started, "Recover must be the first input, once");
  impl_->started = true;
  std::map<int, int> counts;
  for (const v1::CoordinatorTxnRecord& r : records) impl_->RecoverOne(r, now_ms, &counts);
  impl_->Log(absl::StrCat("recovered ", records.size(),
                          " transaction records: ", counts[v1::STATE_COMMITTED],
                          " committed (resending Commit), ", counts[v1::STATE_ABORTED],
                          " aborted (resending Abort), ", counts[v1::PRECOMMITTED],
                          " precommitted (termination round), ", counts[v1::ENDED], " ended"));
  impl_->EvictFinished();
}

void CoordinatorCore::Execute(RequestId request, const v1::ExecuteRequest& req, int64_t now_ms) {
  impl_->started = true;
  impl_->Execute(request, req, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnPrepareReply(const std::string& txn_id, const std::string& participant,
                                     const absl::StatusOr<v1::PrepareResponse>& reply,
                                     int64_t now_ms) {
  impl_->started = true;
  impl_->OnPrepareReply(txn_id, participant, reply, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnPreCommitReply(const std::string& txn_id, const std::string& participant,
                                       const absl::Status& status, int64_t now_ms) {
  impl_->started = true;
  impl_->OnPreCommitReply(txn_id, participant, status, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnCommitReply(const std::string& txn_id, const std::string& participant,
                                    const absl::StatusOr<v1::CommitResponse>& reply,
                                    int64_t now_ms) {
  impl_->started = true;
  impl_->OnCommitReply(txn_id, participant, reply, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnQueryReply(const std::string& txn_id, const std::string& participant,
                                   const absl::StatusOr<v1::QueryStateResponse>& reply,
                                   int64_t now_ms) {
  impl_->started = true;
  impl_->OnQueryReply(txn_id, participant, reply, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnAbortReply(const std::string& txn_id, const std::string& participant,
                                   const absl::Status& status, int64_t now_ms) {
  impl_->started = true;
  impl_->OnAbortReply(txn_id, participant, status, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnPromiseReply(const std::string& txn_id, const std::string& participant,
                                     uint64_t ballot,
                                     const absl::StatusOr<v1::PromiseResponse>& reply,
                                     int64_t now_ms) {
  impl_->started = true;
  impl_->OnPromiseReply(txn_id, participant, ballot, reply, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnAcceptReply(const std::string& txn_id, const std::string& participant,
                                    uint64_t ballot,
                                    const absl::StatusOr<v1::AcceptResponse>& reply,
                                    int64_t now_ms) {
  impl_->started = true;
  impl_->OnAcceptReply(txn_id, participant, ballot, reply, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnTimer(uint64_t timer_id, int64_t now_ms) {
  impl_->started = true;
  if (!impl_->OnOpenTimer(timer_id, now_ms)) impl_->OnTimer(timer_id, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnPersisted(uint64_t token, const absl::Status& status, int64_t now_ms) {
  impl_->started = true;
  impl_->OnPersisted(token, status, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::QueryState(RequestId request, const std::string& txn_id, int64_t now_ms) {
  impl_->started = true;
  if (!impl_->AnswerOpen(request, txn_id)) impl_->QueryState(request, txn_id, now_ms);
  impl_->EvictFinished();
}

absl::StatusOr<v1::BeginTxnResponse> CoordinatorCore::Begin(const v1::BeginTxnRequest& req,
                                                            int64_t now_ms) {
  impl_->started = true;
  absl::StatusOr<v1::BeginTxnResponse> r = impl_->Begin(req, now_ms);
  impl_->EvictFinished();
  return r;
}

void CoordinatorCore::Commit(RequestId request, const v1::CommitTxnRequest& req, int64_t now_ms) {
  impl_->started = true;
  impl_->CommitInteractive(request, req, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::Rollback(RequestId request, const v1::RollbackTxnRequest& req,
                               int64_t now_ms) {
  impl_->started = true;
  impl_->RollbackInteractive(request, req, now_ms);
  impl_->EvictFinished();
}

size_t CoordinatorCore::open_transactions() const { return impl_->open.size(); }

absl::StatusOr<v1::TransactionInfo> CoordinatorCore::GetTransaction(
    const std::string& txn_id) const {
  absl::Status s = ValidateTxnId(txn_id);
  if (!s.ok()) return s;
  auto it = impl_->txns.find(txn_id);
  if (it != impl_->txns.end()) return impl_->InfoOf(it->second, true);
  if (impl_->view != nullptr) {
    if (std::optional<v1::CoordinatorTxnRecord> r = impl_->view->FindTxn(txn_id)) {
      return Impl::InfoOfRecord(*r);
    }
  }
  return absl::NotFoundError(absl::StrCat("transaction ", txn_id, " is not known"));
}

std::vector<v1::TransactionInfo> CoordinatorCore::ListTransactions(
    const std::vector<v1::TxnState>& states, size_t limit) const {
  if (limit == 0) limit = 1000;
  std::vector<v1::TransactionInfo> result;
  for (const auto& [id, t] : impl_->txns) {
    if (result.size() >= limit) break;
    v1::TxnState s = Impl::TxnStateOf(t);
    bool wanted = states.empty() ? s != v1::ENDED
                                 : std::find(states.begin(), states.end(), s) != states.end();
    if (wanted) result.push_back(impl_->InfoOf(t, false));
  }
  return result;
}

size_t CoordinatorCore::in_flight() const { return impl_->in_flight; }

Output CoordinatorCore::TakeOutput() {
  impl_->ReleaseForgets();
  Output o = std::move(impl_->out);
  impl_->out = Output();
  return o;
}

}  // namespace atomq::coordinator
