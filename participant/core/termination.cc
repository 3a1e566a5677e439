#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/validate.h"
#include "participant/core/node.h"

namespace atomq::participant {

using v1::TxnState;

// --- the transaction's record as Paxos sees it ---

paxos::Accepted AcceptedOf(const v1::PreparedRecord& rec) {
  if (rec.accepted_value() == v1::TXN_STATE_UNSPECIFIED && rec.state() == v1::PRECOMMITTED) {
    return {0, v1::STATE_COMMITTED};
  }
  return {rec.accepted_ballot(), rec.accepted_value()};
}

int SelfIndex(const v1::PreparedRecord& rec) {
  for (int i = 0; i < rec.participants_size(); ++i) {
    if (rec.participants(i).participant() == rec.participant()) return i;
  }
  return -1;
}

bool IsParticipant(const v1::PreparedRecord& rec, const std::string& id) {
  for (const v1::PeerAddress& p : rec.participants()) {
    if (p.participant() == id) return true;
  }
  return false;
}

// --- the node's rounds, as acceptor and as leader ---

absl::Status Node::NotThreePc(const std::string& id) {
  return absl::FailedPreconditionError(absl::StrCat(
      "transaction ", id, " runs 2PC here: no termination rounds (ask with QueryState)"));
}

void Node::AnswerPromise(RequestId r, const Txn& t, bool promised) {
  v1::PromiseResponse resp;
  resp.set_promised(promised);
  resp.set_state(t.rec.state());
  resp.set_promised_ballot(t.rec.promised_ballot());
  const paxos::Accepted accepted = AcceptedOf(t.rec);
  resp.set_accepted_ballot(accepted.ballot);
  resp.set_accepted_value(accepted.value);
  Answer(r, absl::OkStatus(), resp);
}

void Node::AnswerAccept(RequestId r, TxnState state, bool accepted, uint64_t promised) {
  v1::AcceptResponse resp;
  resp.set_accepted(accepted);
  resp.set_state(state);
  resp.set_promised_ballot(promised);
  Answer(r, absl::OkStatus(), resp);
}

void Node::AnswerDecided(const Waiter& w, TxnState outcome) {
  if (w.kind == ReplyKind::kPromise) {
    v1::PromiseResponse resp;
    resp.set_promised(true);
    resp.set_state(outcome);
    return Answer(w.request, absl::OkStatus(), resp);
  }
  ATOMQ_CHECK(w.kind == ReplyKind::kAccept, "a decided answer goes to Promise or Accept");
  AnswerAccept(w.request, outcome, true, 0);
}

bool Node::DeferBallot(Txn& t, Call call, RequestId r, uint64_t ballot, TxnState value) {
  if (t.batch == 0) return false;
  Deferred d{call, r, ""};
  d.ballot = ballot;
  d.value = value;
  t.deferred.push_back(std::move(d));
  return true;
}

void Node::WriteBallot(Txn& t, v1::PreparedRecord rec, std::optional<Waiter> w, uint64_t lead) {
  ATOMQ_CHECK(t.durable && t.batch == 0, "a ballot is written over a durable PREPARED record");
  ATOMQ_CHECK(rec.promised_ballot() >= t.rec.promised_ballot(), "promised ballots only grow");
  const std::string id = rec.txn_id();
  t.writing = rec;
  BallotBatch b;
  b.txn_id = id;
  if (w) b.waiters.push_back(*w);
  b.lead_ballot = lead;
  t.batch = Submit({Put(kPreparedDb, id, rec)}, std::move(b));
}

void Node::BallotDone(Txn& t, const BallotBatch& p, const absl::Status& status, int64_t now_ms) {
  if (!status.ok()) {
    for (const Waiter& w : p.waiters) Fail(w, status);
    return;  // a round this node meant to lead starts again at the next timer
  }
  t.rec = std::move(t.writing);
  t.writing.Clear();
  if (!p.waiters.empty() && t.rec.promised_ballot() != t.round.paxos.ballot()) {
    t.foreign_ballot_ms = now_ms;
  }
  for (const Waiter& w : p.waiters) {
    if (w.kind == ReplyKind::kPromise) {
      AnswerPromise(w.request, t, true);
    } else {
      ATOMQ_CHECK(w.kind == ReplyKind::kAccept, "a ballot write answers Promise or Accept");
      AnswerAccept(w.request, t.rec.state(), true, t.rec.promised_ballot());
    }
  }
  if (p.lead_ballot != 0) BeginRound(t, p.lead_ballot, now_ms);
}

void Node::Promise(RequestId r, const std::string& id, uint64_t ballot, int64_t now_ms) {
  const Waiter w{ReplyKind::kPromise, r};
  if (ballot == 0) {
    return Fail(w, absl::InvalidArgumentError(
                       "ballot 0 is the coordinator's PreCommit; a Promise needs a ballot > 0"));
  }
  auto it = txns_.find(id);
  if (it != txns_.end()) {
    Txn& t = it->second;
    if (DeferBallot(t, Call::kPromise, r, ballot, v1::TXN_STATE_UNSPECIFIED)) return;
    if (t.rec.protocol() != v1::THREE_PC) return Fail(w, NotThreePc(id));
    const paxos::Answer a = paxos::OnPromise(t.rec.promised_ballot(), ballot);
    if (a != paxos::Answer::kWrite) return AnswerPromise(r, t, a == paxos::Answer::kGrant);
    v1::PreparedRecord rec = t.rec;
    rec.set_promised_ballot(ballot);
    return WriteBallot(t, std::move(rec), w, 0);
  }
  std::optional<CachedOutcome> o = outcomes_.Find(id);
  if (o && o->rec.state() == v1::STATE_COMMITTED) return AnswerDecided(w, v1::STATE_COMMITTED);
  if (o) return AnswerAborted(w, *o);
  // Never prepared here, so never voted YES: presumed abort, made durable
  // so that this node votes NO should the Prepare arrive later.
  PresumeAbort(w, id, now_ms);
}

void Node::Accept(RequestId r, const std::string& id, uint64_t ballot, TxnState value,
                  int64_t now_ms) {
  const Waiter w{ReplyKind::kAccept, r};
  if (ballot == 0) {
    return Fail(w, absl::InvalidArgumentError(
                       "ballot 0 is the coordinator's PreCommit; an Accept needs a ballot > 0"));
  }
  if (!Decided(value)) {
    return Fail(
        w, absl::InvalidArgumentError(absl::StrCat("value ", v1::TxnState_Name(value),
                                                   " is not STATE_COMMITTED or STATE_ABORTED")));
  }
  auto it = txns_.find(id);
  if (it != txns_.end()) {
    Txn& t = it->second;
    if (DeferBallot(t, Call::kAccept, r, ballot, value)) return;
    if (t.rec.protocol() != v1::THREE_PC) return Fail(w, NotThreePc(id));
    const paxos::Answer a =
        paxos::OnAccept(t.rec.promised_ballot(), AcceptedOf(t.rec), ballot, value);
    if (a != paxos::Answer::kWrite) {
      return AnswerAccept(r, t.rec.state(), a == paxos::Answer::kGrant, t.rec.promised_ballot());
    }
    v1::PreparedRecord rec = t.rec;
    rec.set_promised_ballot(ballot);
    rec.set_accepted_ballot(ballot);
    rec.set_accepted_value(value);
    rec.set_state(value == v1::STATE_COMMITTED ? v1::PRECOMMITTED : v1::PREPARED);
    return WriteBallot(t, std::move(rec), w, 0);
  }
  AcceptSettled(w, id, ballot, value, now_ms);
}

void Node::AcceptSettled(const Waiter& w, const std::string& id, uint64_t ballot, TxnState value,
                         int64_t now_ms) {
  const RequestId r = w.request;
  std::optional<CachedOutcome> o = outcomes_.Find(id);
  if (o && o->rec.state() == value) {
    if (value == v1::STATE_COMMITTED) return AnswerDecided(w, value);
    return AnswerAborted(w, *o);
  }
  if (o) {
    if (o->token != 0) {
      return Fail(w, absl::UnavailableError(absl::StrCat("transaction ", id,
                                                         ": its outcome is being written; retry")));
    }
    if (o->rec.has_heuristic()) {
      Log(absl::StrCat("ALARM heuristic mixed: txn ", id, " was resolved ",
                       v1::TxnState_Name(o->rec.state()),
                       " here by an operator, but a "
                       "termination round proposes ",
                       v1::TxnState_Name(value), " at ballot ", ballot));
    }
    Log(absl::StrCat("txn ", id, " protocol alarm: asked to accept ", v1::TxnState_Name(value),
                     " at ballot ", ballot, " but it is ", v1::TxnState_Name(o->rec.state()),
                     " here"));
    return AnswerAccept(r, o->rec.state(), false, 0);
  }
  if (value == v1::STATE_ABORTED) return PresumeAbort(w, id, now_ms);
  Log(absl::StrCat("txn ", id, " protocol alarm: asked to accept COMMIT at ballot ", ballot,
                   " but it was never prepared here"));
  AnswerAccept(r, v1::UNKNOWN, false, 0);
}

// The ballot space of participant i of n is ballot mod (n + 1) == 1 + i.
void Node::StartRound(Txn& t, int64_t now_ms) {
  if (t.rec.protocol() != v1::THREE_PC || !t.durable || t.batch != 0) return;
  const int64_t patience = std::max<uint32_t>(config_.resend_max_ms, config_.resend_initial_ms);
  if (t.round.paxos.running() && now_ms - t.round_started_ms < patience) return;
  if (now_ms - t.foreign_ballot_ms < patience) return;
  const int self = SelfIndex(t.rec);
  if (self < 0) return;  // not in its own participant list: cannot lead
  const uint64_t seen = std::max({t.rec.promised_ballot(), t.rec.proposed_ballot(),
                                  t.rec.accepted_ballot(), t.round.paxos.highest_seen()});
  const uint64_t ballot = paxos::FreshBallot(seen, static_cast<size_t>(t.rec.participants_size()),
                                             static_cast<uint64_t>(self) + 1);
  t.round = Round{};
  v1::PreparedRecord rec = t.rec;
  rec.set_proposed_ballot(ballot);
  rec.set_promised_ballot(ballot);
  WriteBallot(t, std::move(rec), std::nullopt, ballot);
}

void Node::BeginRound(Txn& t, uint64_t ballot, int64_t now_ms) {
  ATOMQ_CHECK(t.rec.proposed_ballot() == ballot && t.rec.promised_ballot() == ballot,
              "a round begins with its ballot durable");
  Round& r = t.round;
  r = Round{};
  r.paxos.Begin(ballot, static_cast<size_t>(t.rec.participants_size()));
  t.round_started_ms = now_ms;
  // Its own promise is the ballot it just made durable.
  const bool majority = r.paxos.Promised(t.rec.participant(), AcceptedOf(t.rec));
  for (const v1::PeerAddress& p : t.rec.participants()) {
    if (p.participant() == t.rec.participant()) continue;
    out_.peer_msgs.push_back(OutPeerMsg{PeerMsgType::kPromise, t.rec.txn_id(), p.participant(),
                                        ballot, v1::TXN_STATE_UNSPECIFIED});
    r.awaiting++;
  }
  if (majority) ProposeRound(t);
}

void Node::ProposeRound(Txn& t) {
  Round& r = t.round;
  TxnState value = r.paxos.Proposal();
  // TEST ONLY: a broken leader, for tests/sim to show its checker catches it.
  if (config_.plant == Plant::kLeaderIgnoresAccepted) value = v1::STATE_ABORTED;
  r.paxos.Propose(value);
  for (const v1::PeerAddress& p : t.rec.participants()) {
    out_.peer_msgs.push_back(
        OutPeerMsg{PeerMsgType::kAccept, t.rec.txn_id(), p.participant(), r.paxos.ballot(), value});
    r.awaiting++;
  }
}

// The transaction whose round this node leads at `ballot`, at the stage
// `accepting` names, that an answer from `from` belongs to; nullptr for a
// stale or foreign answer. Every answer to the round counts as received.
Txn* Node::RoundOf(const std::string& id, const std::string& from, uint64_t ballot,
                   bool accepting) {
  auto it = txns_.find(id);
  if (it == txns_.end()) return nullptr;
  Txn& t = it->second;
  Round& r = t.round;
  const bool ours = r.paxos.running() && r.paxos.ballot() == ballot;
  if (ours && r.awaiting > 0) r.awaiting--;
  if (!ours || r.paxos.accepting() != accepting || !IsParticipant(t.rec, from)) return nullptr;
  return &t;
}

void Node::OnPromiseReply(const std::string& id, const std::string& from, uint64_t ballot,
                          const absl::StatusOr<v1::PromiseResponse>& reply, int64_t now_ms) {
  Txn* found = RoundOf(id, from, ballot, /*accepting=*/false);
  if (found == nullptr || !reply.ok()) return;  // the next timer starts another round
  Txn& t = *found;
  Round& r = t.round;
  if (Decided(reply->state())) {
    return DecideRound(t, reply->state(), absl::StrCat("peer ", from, ", which decided"), now_ms);
  }
  if (!reply->promised()) return r.paxos.Saw(reply->promised_ballot());
  if (r.paxos.Promised(from, {reply->accepted_ballot(), reply->accepted_value()})) ProposeRound(t);
}

void Node::OnAcceptReply(const std::string& id, const std::string& from, uint64_t ballot,
                         const absl::StatusOr<v1::AcceptResponse>& reply, int64_t now_ms) {
  Txn* found = RoundOf(id, from, ballot, /*accepting=*/true);
  if (found == nullptr || !reply.ok()) return;
  Txn& t = *found;
  Round& r = t.round;
  if (Decided(reply->state())) {
    return DecideRound(t, reply->state(), absl::StrCat("peer ", from, ", which decided"), now_ms);
  }
  if (!reply->accepted()) return r.paxos.Saw(reply->promised_ballot());
  if (r.paxos.AcceptedBy(from)) {
    DecideRound(t, r.paxos.value(), absl::StrCat("termination ballot ", r.paxos.ballot()), now_ms);
  }
}

void Node::DecideRound(Txn& t, TxnState value, const std::string& by, int64_t now_ms) {
  ATOMQ_CHECK(Decided(value), "a round decides COMMIT or ABORT");
  const std::string id = t.rec.txn_id();
  t.round.paxos.End();
  t.round.awaiting = 0;
  const PeerMsgType type =
      value == v1::STATE_COMMITTED ? PeerMsgType::kCommit : PeerMsgType::kAbort;
  for (const v1::PeerAddress& p : t.rec.participants()) {
    if (p.participant() == t.rec.participant()) continue;
    out_.peer_msgs.push_back(OutPeerMsg{type, id, p.participant(), 0, v1::TXN_STATE_UNSPECIFIED});
  }
  if (value == v1::STATE_COMMITTED) return CommitTxn(std::nullopt, id, now_ms, by);
  AbortTxn(std::nullopt, id, now_ms, by);
}

bool Node::RoundUnderWay(const Txn& t, int64_t now_ms) const {
  const int64_t patience = std::max<uint32_t>(config_.resend_max_ms, config_.resend_initial_ms);
  return t.round.paxos.running() && t.round.awaiting > 0 && now_ms - t.round_started_ms < patience;
}

}  // namespace atomq::participant
