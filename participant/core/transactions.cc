#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/op_limits.h"
#include "common/validate.h"
#include "participant/core/node.h"

namespace atomq::participant {

using v1::TxnState;

namespace {

std::vector<Waiter> WaitersFor(std::optional<Waiter> w) {
  if (!w) return {};
  return {*w};
}

}  // namespace

void Node::EraseTxn(const std::string& id) {
  auto it = txns_.find(id);
  ATOMQ_CHECK(it != txns_.end(), "erasing a known transaction");
  ATOMQ_CHECK(prepared_bytes_ >= it->second.bytes, "prepared bytes add up");
  prepared_bytes_ -= it->second.bytes;
  timers_.erase(it->second.timer_id);
  txns_.erase(it);
}

absl::Status Node::ValidatePrepare(const v1::PrepareRequest& req) const {
  absl::Status s = ValidateTxnId(req.txn_id());
  if (!s.ok()) return s;
  s = ValidateNodeId(req.participant());
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("participant: ", s.message()));
  // A misrouted Prepare must not be kept under another node's name:
  // cooperative termination would then ask the wrong peers.
  if (!config_.participant_id.empty() && req.participant() != config_.participant_id) {
    return absl::InvalidArgumentError(absl::StrCat("Prepare for participant \"", req.participant(),
                                                   "\" reached \"", config_.participant_id, "\""));
  }
  if (req.protocol() != v1::TWO_PC && req.protocol() != v1::THREE_PC) {
    return absl::InvalidArgumentError(
        absl::StrCat("protocol ", static_cast<int>(req.protocol()), " is neither 2PC nor 3PC"));
  }
  // Each peer is one this node may have to ask, and is kept with the record.
  if (static_cast<uint32_t>(req.participants_size()) > config_.participants_per_txn_max) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Prepare names ", req.participants_size(),
        " participants; at most --participants_per_txn_max=", config_.participants_per_txn_max));
  }
  for (const v1::PeerAddress& p : req.participants()) {
    if (absl::Status s = ValidateNodeId(p.participant()); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("participants: ", s.message()));
    }
  }
  for (int i = 0; i < req.ops_size(); ++i) {
    const v1::Op& op = req.ops(i);
    if (op.participant() != req.participant()) {
      return absl::InvalidArgumentError(absl::StrCat("op ", i, " is for participant \"",
                                                     Clip(op.participant()), "\", not \"",
                                                     req.participant(), "\""));
    }
    if (!op.has_enqueue() && !op.has_ack()) {
      return absl::InvalidArgumentError(absl::StrCat("op ", i, " is neither enqueue nor ack"));
    }
  }
  return absl::OkStatus();
}

std::string Node::TooOld(const v1::PrepareRequest& req, int64_t now_ms) const {
  const int64_t age = now_ms - req.created_unix_ms();
  if (req.created_unix_ms() == 0 || age <= static_cast<int64_t>(config_.retention_ms / 2)) {
    return "";
  }
  return absl::StrCat("the Prepare is ", age,
                      " ms old, older than half of --retention_ms=", config_.retention_ms,
                      " (a presumed abort of the id may be forgotten)");
}

std::string Node::CheckOps(const v1::PrepareRequest& req, int64_t now_ms) {
  if (std::string old = TooOld(req, now_ms); !old.empty()) return old;
  if (absl::Status s = CheckOpCount(static_cast<uint64_t>(req.ops_size()), config_.ops_per_txn_max);
      !s.ok()) {
    return std::string(s.message());
  }
  if (absl::Status s =
          CheckTxnBytes(message_limits(), "the transaction has ", EnqueueBytes(req.ops()));
      !s.ok()) {
    return std::string(s.message());
  }
  std::set<std::pair<std::string, uint64_t>> acked;
  for (int i = 0; i < req.ops_size(); ++i) {
    const v1::Op& op = req.ops(i);
    const std::string& name = op.has_enqueue() ? op.enqueue().queue() : op.ack().queue();
    absl::Status s = ValidateQueueName(name);
    if (!s.ok()) return absl::StrCat("op ", i, ": ", s.message());
    Queue* q = queues_.Find(name);
    if (q == nullptr) return std::string(queues_.NoQueue(name).message());
    if (op.has_enqueue()) {
      const v1::Enqueue& e = op.enqueue();
      s = CheckMessageLimits(message_limits(), absl::StrCat("op ", i, ": "), e.payload(),
                             e.headers());
      if (!s.ok()) return std::string(s.message());
      continue;
    }
    const v1::Ack& a = op.ack();
    const std::string msg = MessageName(name, a.sequence());
    if (!acked.insert({name, a.sequence()}).second) {
      return absl::StrCat("op ", i, ": acks ", msg, " twice");
    }
    auto m = q->messages.find(a.sequence());
    if (m == q->messages.end() && q->on_disk > 0 && a.sequence() >= q->disk_from &&
        a.sequence() < q->durable_next_sequence) {
      return absl::StrCat("message ", msg, " is not leased (stale lease token)");
    }
    if (m == q->messages.end()) {
      return absl::StrCat("message ", msg, " does not exist on ", config_.participant_id,
                          " (already acked, or never committed)");
    }
    if (!m->second.pinned_by.empty()) {
      return absl::StrCat("message ", msg, " is held by prepared transaction ",
                          m->second.pinned_by);
    }
    if (m->second.ack_token != 0) return absl::StrCat("message ", msg, " is being acked");
    if (m->second.lease_token.empty()) {
      return absl::StrCat("message ", msg, " is not leased (stale lease token)");
    }
    if (!CurrentLease(m->second, a.lease_token())) {
      return absl::StrCat("lease token \"", Clip(a.lease_token(), kLeaseTokenEcho),
                          "\" is not the current lease of ", msg, " (stale or foreign token)");
    }
    if (Expired(m->second, now_ms)) {
      return absl::StrCat("lease on ", msg, " expired at ", m->second.lease_expires_ms,
                          " ms (stale lease)");
    }
  }
  return "";
}

void Node::Prepare(RequestId r, const v1::PrepareRequest& req, int64_t now_ms) {
  absl::Status s = ValidatePrepare(req);
  if (!s.ok()) return Fail({ReplyKind::kPrepare, r}, s);
  const std::string& id = req.txn_id();
  if (AnswerRepeatedPrepare(r, id, OpsDigest(req.ops()))) return;
  // Under 3PC a participant with nothing to change still prepares: it is
  // an acceptor of termination rounds, and one that kept nothing would
  // answer a Promise with a presumed ABORT.
  if (req.ops_size() == 0 && req.protocol() != v1::THREE_PC) return Vote(r, v1::READ_ONLY);
  std::string reason = CheckOps(req, now_ms);
  if (!reason.empty()) return Vote(r, v1::NO, std::move(reason));
  s = CheckPreparedRoom(EnqueueBytes(req.ops()));
  if (!s.ok()) return Fail({ReplyKind::kPrepare, r}, s);
  StartPrepare({ReplyKind::kPrepare, r}, AddTxn(req, req.ops(), now_ms));
}

bool Node::AnswerRepeatedPrepare(RequestId r, const std::string& id,
                                 std::optional<uint64_t> digest) {
  auto it = txns_.find(id);
  if (it != txns_.end()) {
    Txn& t = it->second;
    if (t.one_phase) {
      Vote(r, v1::NO, OnePhaseOnly(id));
    } else if (digest && t.rec.ops_digest() != *digest) {
      Vote(r, v1::NO, absl::StrCat("transaction ", id, " is prepared here with other ops"));
    } else if (!t.durable) {
      PrepareBatch* p = TxnBatch<PrepareBatch>(t);
      ATOMQ_CHECK(p != nullptr, "a transaction is durable once prepared");
      p->waiters.push_back({ReplyKind::kPrepare, r});
    } else {
      Vote(r, v1::YES);
    }
    return true;
  }
  std::optional<CachedOutcome> o = outcomes_.Find(id);
  if (!o) return false;
  if (o->rec.state() == v1::STATE_ABORTED) {
    Vote(r, v1::NO, "already aborted here");
  } else if (o->rec.one_phase()) {
    Vote(r, v1::NO, OnePhaseOnly(id));
  } else if (digest && o->rec.ops_digest() != *digest) {
    Vote(r, v1::NO, absl::StrCat("transaction ", id, " committed here with other ops"));
  } else {
    Vote(r, v1::YES);
  }
  return true;
}

absl::Status Node::CheckPreparedRoom(uint64_t bytes) const {
  if (txns_.size() >= config_.prepared_max) {
    return absl::ResourceExhaustedError(absl::StrCat(
        txns_.size(), " transactions prepared here; --prepared_max=", config_.prepared_max));
  }
  if (prepared_bytes_ + bytes > config_.prepared_bytes_max) {
    return absl::ResourceExhaustedError(
        absl::StrCat(prepared_bytes_, " bytes of messages prepared here and ", bytes,
                     " more would pass --prepared_bytes_max=", config_.prepared_bytes_max));
  }
  return absl::OkStatus();
}

Txn& Node::AddTxn(const v1::PrepareRequest& req, google::protobuf::RepeatedPtrField<v1::Op> ops,
                  int64_t now_ms) {
  const std::string& id = req.txn_id();
  const bool fresh = txns_.count(id) == 0;
  ATOMQ_CHECK(fresh, "one entry per transaction");
  Txn& t = txns_[id];
  t.rec.set_txn_id(id);
  t.rec.set_protocol(req.protocol());
  t.rec.set_state(v1::PREPARED);
  t.rec.set_coordinator_id(req.coordinator_id());
  t.rec.set_coordinator_address(req.coordinator_address());
  t.rec.set_participant(req.participant());
  *t.rec.mutable_participants() = req.participants();
  *t.rec.mutable_ops() = std::move(ops);
  t.rec.set_ops_digest(OpsDigest(t.rec.ops()));
  t.rec.set_prepared_unix_ms(now_ms);
  return t;
}

void Node::StartPrepare(const Waiter& w, Txn& t) {
  Pin(t);
  const std::string& id = t.rec.txn_id();
  t.batch = Submit({Put(kPreparedDb, id, t.rec)}, PrepareBatch{{{w}}, id});
}

bool Node::DeferIfBusy(Txn& t, std::vector<Waiter>* join, std::optional<Waiter> w, Call call,
                       const std::string& by) {
  if (t.batch == 0) return false;
  if (join != nullptr) {
    if (w) join->push_back(*w);
  } else {
    t.deferred.push_back(Deferred{call, w ? w->request : 0, by});
  }
  return true;
}

void Node::PreCommit(RequestId r, const std::string& id, int64_t now_ms) {
  const Waiter w{ReplyKind::kPreCommit, r};
  auto it = txns_.find(id);
  if (it != txns_.end()) {
    Txn& t = it->second;
    if (DeferIfBusy(t, JoinableWaiters<PreCommitBatch>(t), w, Call::kPreCommit, "")) return;
    const auto [accepted_ballot, accepted_value] = AcceptedOf(t.rec);
    if (accepted_ballot == 0 && accepted_value == v1::STATE_COMMITTED)
      return Answer(r, absl::OkStatus(), v1::PreCommitResponse());
    // PreCommit is ballot 0's accept of COMMIT: a promise of a higher
    // ballot (a termination round) refuses it.
    if (t.rec.promised_ballot() > 0) {
      return Fail(w, absl::FailedPreconditionError(absl::StrCat(
                         "transaction ", id, ": a termination round holds ballot ",
                         t.rec.promised_ballot(), " here; PreCommit (ballot 0) refused")));
    }
    v1::PreparedRecord rec = t.rec;
    rec.set_state(v1::PRECOMMITTED);
    rec.set_accepted_ballot(0);
    rec.set_accepted_value(v1::STATE_COMMITTED);
    t.batch = Submit({Put(kPreparedDb, id, rec)}, PreCommitBatch{{{w}}, id});
    return;
  }
  std::optional<CachedOutcome> o = outcomes_.Find(id);
  if (o && o->rec.state() == v1::STATE_COMMITTED) {
    return Answer(r, absl::OkStatus(), v1::PreCommitResponse());
  }
  Fail(w, absl::FailedPreconditionError(
              absl::StrCat("transaction ", id, o ? " was aborted here" : " is not prepared here")));
}

void Node::CommitTxn(std::optional<Waiter> w, const std::string& id, int64_t now_ms,
                     const std::string& by) {
  auto it = txns_.find(id);
  if (it != txns_.end()) {
    Txn& t = it->second;
    if (DeferIfBusy(t, JoinableWaiters<CommitBatch>(t), w, w ? Call::kCommit : Call::kSettleCommit,
                    by)) {
      return;
    }
    ATOMQ_CHECK(t.durable, "only a durable PREPARED record is committed");
    StartCommit(t, w, now_ms, by);
    return;
  }
  std::optional<CachedOutcome> o = outcomes_.Find(id);
  if (!o && !w) return;
  if (!o) {
    Log(absl::StrCat("txn ", id,
                     " Commit for a transaction unknown here: answered OK (late duplicate "
                     "after forgetting)"));
    if (w) AnswerSequences(w->request, {});
    return;
  }
  if (o->rec.state() == v1::STATE_COMMITTED) {
    if (w) AnswerSequences(w->request, o->rec.sequences());
    return;
  }
  if (o->rec.has_heuristic()) {
    HeuristicMixed(*o, v1::STATE_COMMITTED, w ? "a Commit (coordinator or peer)" : by, now_ms);
  }
  Log(absl::StrCat("txn ", id, " protocol alarm: told to commit by ", w ? "Commit" : by,
                   " but it ABORTED here"));
  if (w) {
    Fail(*w, absl::FailedPreconditionError(absl::StrCat("transaction ", id, " was aborted here")));
  }
}

v1::OutcomeRecord Node::DecidedOutcome(const Txn& t, TxnState state, int64_t now_ms) {
  v1::OutcomeRecord o;
  o.set_txn_id(t.rec.txn_id());
  o.set_state(state);
  for (uint64_t s : t.sequences) o.add_sequences(s);
  o.set_decided_unix_ms(now_ms);
  o.set_ops_digest(t.rec.ops_digest());
  o.set_one_phase(t.one_phase);
  return o;
}

void Node::StartCommit(Txn& t, std::optional<Waiter> w, int64_t now_ms, const std::string& by) {
  const std::string& id = t.rec.txn_id();
  std::vector<Write> writes;
  std::set<std::string> touched;
  t.sequences.clear();
  for (const v1::Op& op : t.rec.ops()) {
    if (op.has_ack()) {
      Queue& q = queues_.by_name.at(op.ack().queue());
      writes.push_back(Erase(kMessagesDb, schema::MessageKey(q.rec.id(), op.ack().sequence())));
      t.sequences.push_back(0);
      continue;
    }
    const v1::Enqueue& e = op.enqueue();
    Queue& q = queues_.by_name.at(e.queue());
    const uint64_t seq = q.rec.next_sequence();
    ATOMQ_CHECK(q.messages.count(seq) == 0 && seq >= q.durable_next_sequence,
                "a sequence is never reused");
    q.rec.set_next_sequence(seq + 1);
    t.sequences.push_back(seq);
    touched.insert(e.queue());
    v1::MessageRecord m;
    m.set_payload(e.payload());
    *m.mutable_headers() = e.headers();
    m.set_txn_id(id);
    m.set_enqueued_unix_ms(now_ms);
    writes.push_back(Put(kMessagesDb, schema::MessageKey(q.rec.id(), seq), m));
  }
  for (const std::string& name : touched) {
    writes.push_back(Put(kQueuesDb, schema::QueueKey(name), queues_.by_name.at(name).rec));
  }
  if (!t.one_phase) writes.push_back(Erase(kPreparedDb, id));  // one phase wrote no PREPARED
  t.outcome = DecidedOutcome(t, v1::STATE_COMMITTED, now_ms);
  writes.push_back(Put(kOutcomesDb, id, t.outcome));
  if (t.one_phase) {
    t.batch = Submit(std::move(writes), OnePhaseBatch{{WaitersFor(w)}, id, by});
  } else {
    t.batch = Submit(std::move(writes), CommitBatch{{WaitersFor(w)}, id, by, std::nullopt});
  }
}

void Node::AbortTxn(std::optional<Waiter> w, const std::string& id, int64_t now_ms,
                    const std::string& by) {
  auto it = txns_.find(id);
  if (it != txns_.end()) {
    Txn& t = it->second;
    if (DeferIfBusy(t, JoinableWaiters<AbortBatch>(t), w, w ? Call::kAbort : Call::kSettleAbort,
                    by)) {
      return;
    }
    ATOMQ_CHECK(t.durable, "only a durable PREPARED record is aborted");
    t.outcome = DecidedOutcome(t, v1::STATE_ABORTED, now_ms);
    t.batch = Submit({Erase(kPreparedDb, id), Put(kOutcomesDb, id, t.outcome)},
                     AbortBatch{{WaitersFor(w)}, id, by, std::nullopt});
    return;
  }
  std::optional<CachedOutcome> o = outcomes_.Find(id);
  if (o && o->rec.state() == v1::STATE_COMMITTED) {
    if (o->rec.has_heuristic()) {
      HeuristicMixed(*o, v1::STATE_ABORTED, w ? "an Abort (coordinator or peer)" : by, now_ms);
    }
    Log(absl::StrCat("txn ", id, " protocol alarm: told to abort by ", w ? "Abort" : by,
                     " but it COMMITTED here"));
    if (w) {
      Fail(*w,
           absl::FailedPreconditionError(absl::StrCat("transaction ", id, " was committed here")));
    }
    return;
  }
  if (!w) return;  // a resolution for a transaction already finished
  if (o) return AnswerAborted(*w, *o);
  PresumeAbort(*w, id, now_ms);
}

void Node::AnswerAborted(const Waiter& w, const CachedOutcome& o) {
  if (o.token != 0) {
    WaitersOf(o.token).push_back(w);
    return;
  }
  if (w.kind == ReplyKind::kQuery) {
    return AnswerState(w.request, v1::STATE_ABORTED, o.rec.has_heuristic());
  }
  if (w.kind == ReplyKind::kPromise || w.kind == ReplyKind::kAccept) {
    return AnswerDecided(w, v1::STATE_ABORTED);
  }
  Answer(w.request, absl::OkStatus(), v1::AbortResponse());
}

// The record is forgettable from the start (a kForgettableDb entry in the
// same batch): no coordinator will send an END notice for an id it may
// never have heard of, and a stranger's questions must not grow storage
// for good. It goes after --retention_ms. Whoever asks about a real
// transaction asks after its Prepares were sent, so a Prepare arriving
// after that is older than half the window and TooOld refuses it
// (docs/design.md section 3.11).
void Node::PresumeAbort(const Waiter& w, const std::string& id, int64_t now_ms) {
  v1::OutcomeRecord o;
  o.set_txn_id(id);
  o.set_state(v1::STATE_ABORTED);
  o.set_decided_unix_ms(now_ms);
  uint64_t token = Submit({Put(kOutcomesDb, id, o),
                           Write{kForgettableDb, schema::ForgettableKey(now_ms, id), "", false}},
                          PresumedAbortBatch{{{w}}, id, ""});
  outcomes_.Remember(std::move(o), token);
}

void Node::QueryState(RequestId r, const std::string& id, int64_t now_ms) {
  const Waiter w{ReplyKind::kQuery, r};
  auto it = txns_.find(id);
  if (it != txns_.end()) {
    Txn& t = it->second;
    if (DeferIfBusy(t, nullptr, w, Call::kQuery, "")) return;
    return AnswerState(r, t.rec.state());
  }
  std::optional<CachedOutcome> o = outcomes_.Find(id);
  if (o && o->rec.state() == v1::STATE_COMMITTED) {
    return AnswerState(r, v1::STATE_COMMITTED, o->rec.has_heuristic());
  }
  if (o) return AnswerAborted(w, *o);
  PresumeAbort(w, id, now_ms);
}

void Node::Replay(std::vector<Deferred> deferred, const std::string& id, int64_t now_ms) {
  for (Deferred& d : deferred) {
    switch (d.call) {
      case Call::kPreCommit:
        PreCommit(d.request, id, now_ms);
        break;
      case Call::kCommit:
        CommitTxn(Waiter{ReplyKind::kCommit, d.request}, id, now_ms, "");
        break;
      case Call::kAbort:
        AbortTxn(Waiter{ReplyKind::kAbort, d.request}, id, now_ms, "");
        break;
      case Call::kQuery:
        QueryState(d.request, id, now_ms);
        break;
      case Call::kSettleCommit:
        CommitTxn(std::nullopt, id, now_ms, d.by);
        break;
      case Call::kSettleAbort:
        AbortTxn(std::nullopt, id, now_ms, d.by);
        break;
      case Call::kPromise:
        Promise(d.request, id, d.ballot, now_ms);
        break;
      case Call::kAccept:
        Accept(d.request, id, d.ballot, d.value, now_ms);
        break;
    }
  }
}

void Node::PrepareDone(Txn& t, const PrepareBatch& p, const absl::Status& status, int64_t now_ms) {
  if (!status.ok()) {
    for (const Waiter& w : p.waiters) {
      Vote(w.request, v1::NO, absl::StrCat("storage: ", status.ToString()));
    }
    Unpin(t, now_ms);
    EraseTxn(p.txn_id);
    return;
  }
  t.durable = true;
  for (const Waiter& w : p.waiters) Vote(w.request, v1::YES);
  t.backoff_ms = std::max<uint32_t>(1, config_.resend_initial_ms);
  ArmTimer(t, now_ms + config_.in_doubt_after_ms);
}

void Node::PreCommitDone(Txn& t, const PreCommitBatch& p, const absl::Status& status) {
  if (status.ok()) {
    t.rec.set_state(v1::PRECOMMITTED);
    t.rec.set_accepted_ballot(0);
    t.rec.set_accepted_value(v1::STATE_COMMITTED);
  }
  for (const Waiter& w : p.waiters) {
    if (status.ok()) {
      Answer(w.request, absl::OkStatus(), v1::PreCommitResponse());
    } else {
      Fail(w, status);
    }
  }
}

std::string Node::Summary(const Txn& t, const std::string& by) const {
  return absl::StrCat("(", Plural(t.enqueues, "enqueue"), ", ", Plural(t.acks, "ack"),
                      by.empty() ? "" : "; settled by ", by, ")");
}

void Node::CommitDone(Txn& t, const std::string& settled_by, const std::vector<Waiter>& waiters,
                      const absl::Status& status) {
  if (!status.ok()) {
    // The assigned sequences stay burnt: later batches may already carry
    // next_sequence past them.
    t.sequences.clear();
    for (const Waiter& w : waiters) Fail(w, status);
    return;
  }
  const std::string id = t.rec.txn_id();
  ATOMQ_CHECK(static_cast<int>(t.sequences.size()) == t.rec.ops_size() &&
                  t.outcome.state() == v1::STATE_COMMITTED,
              "a commit in flight carries one sequence per op");
  v1::OutcomeRecord o = std::move(t.outcome);
  for (int i = 0; i < t.rec.ops_size(); ++i) {
    const v1::Op& op = t.rec.ops(i);
    const uint64_t seq = t.sequences[i];
    if (op.has_ack()) {
      Queue& q = queues_.by_name.at(op.ack().queue());
      auto m = q.messages.find(op.ack().sequence());
      if (m == q.messages.end()) continue;
      ATOMQ_CHECK(m->second.pinned_by == id, "an acked message is pinned by its transaction");
      q.messages.erase(m);
      q.counts.acked++;
      ATOMQ_CHECK(q.pinned > 0, "a queue counts the messages pinned in it");
      q.pinned--;
      continue;
    }
    Queue& q = queues_.by_name.at(op.enqueue().queue());
    ATOMQ_CHECK(seq < q.rec.next_sequence() && q.messages.count(seq) == 0,
                "a committed message gets a fresh sequence");
    // Visible only now: the batch carrying it is durable.
    queues_.Visible(q, seq);
    q.pending_enqueues--;
  }
  for (const std::string& name : TouchedQueues(t.rec)) queues_.by_name.at(name).txn_refs--;
  Log(absl::StrCat("txn ", id, " COMMITTED here ", Summary(t, settled_by)));
  for (const Waiter& w : waiters) AnswerSequences(w.request, o.sequences());
  EraseTxn(id);
  outcomes_.Remember(std::move(o), 0);
  PlantForget(id);
}

void Node::AbortDone(Txn& t, const AbortBatch& p, const absl::Status& status, int64_t now_ms) {
  if (!status.ok()) {
    for (const Waiter& w : p.waiters) Fail(w, status);
    return;
  }
  const std::string id = t.rec.txn_id();
  std::optional<CachedOutcome> prior = outcomes_.Find(id);
  ATOMQ_CHECK(!prior || prior->rec.state() != v1::STATE_COMMITTED,
              "a committed transaction is never aborted");
  v1::OutcomeRecord o = std::move(t.outcome);
  ATOMQ_CHECK(o.state() == v1::STATE_ABORTED, "an abort in flight writes ABORTED");
  Log(absl::StrCat("txn ", id, " ABORTED here ", Summary(t, p.settled_by)));
  Unpin(t, now_ms);
  EraseTxn(id);
  for (const Waiter& w : p.waiters) Answer(w.request, absl::OkStatus(), v1::AbortResponse());
  outcomes_.Remember(std::move(o), 0);
}

void Node::PresumedAbortDone(uint64_t token, const PresumedAbortBatch& p,
                             const absl::Status& status) {
  auto it = outcomes_.cache.find(p.txn_id);
  ATOMQ_CHECK(it != outcomes_.cache.end() && it->second.token == token,
              "an outcome in flight stays cached");
  if (!status.ok()) {
    outcomes_.cache.erase(it);
    for (const Waiter& w : p.waiters) Fail(w, status);
    return;
  }
  ATOMQ_CHECK(it->second.rec.state() == v1::STATE_ABORTED, "presumed abort records ABORTED");
  it->second.token = 0;
  Log(absl::StrCat("txn ", p.txn_id, " ABORTED here (",
                   p.reason.empty() ? "never prepared here; presumed abort" : p.reason, ")"));
  for (const Waiter& w : p.waiters) {
    if (w.kind == ReplyKind::kQuery) {
      AnswerState(w.request, v1::STATE_ABORTED);
    } else if (w.kind == ReplyKind::kPromise || w.kind == ReplyKind::kAccept) {
      AnswerDecided(w, v1::STATE_ABORTED);
    } else if (w.kind == ReplyKind::kPrepare) {
      Vote(w.request, v1::NO, p.reason.empty() ? "already aborted here" : p.reason);
    } else {
      Answer(w.request, absl::OkStatus(), v1::AbortResponse());
    }
  }
  outcomes_.Evict();
}

}  // namespace atomq::participant
