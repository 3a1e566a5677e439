#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/validate.h"
#include "participant/core/node.h"

namespace atomq::participant {

using v1::TxnState;

const char* Node::Word(TxnState s) {
  return s == v1::STATE_COMMITTED ? "committed" : s == v1::STATE_ABORTED ? "aborted" : "undecided";
}

void Node::ResolveReply(RequestId r, absl::Status s, const v1::OutcomeRecord* o) {
  v1::ResolveResponse resp;
  if (o != nullptr) {
    resp.set_state(o->state());
    resp.set_heuristic(o->has_heuristic());
    *resp.mutable_sequences() = o->sequences();
  }
  Answer(r, std::move(s), std::move(resp));
}

void Node::Resolve(RequestId r, const v1::ResolveRequest& req, int64_t now_ms,
                   const std::string& identity) {
  const std::string& id = req.txn_id();
  absl::Status s = ValidateTxnId(id);
  if (!s.ok()) return ResolveReply(r, s);
  const TxnState outcome = req.outcome() == v1::COMMITTED ? v1::STATE_COMMITTED
                           : req.outcome() == v1::ABORTED ? v1::STATE_ABORTED
                                                          : v1::TXN_STATE_UNSPECIFIED;
  if (!Decided(outcome)) {
    return ResolveReply(
        r, absl::InvalidArgumentError(absl::StrCat("outcome is ", v1::Outcome_Name(req.outcome()),
                                                   "; want COMMITTED or ABORTED")));
  }
  if (req.operator_note().size() > config_.operator_note_bytes_max) {
    return ResolveReply(
        r, absl::InvalidArgumentError(absl::StrCat(
               "operator_note is ", req.operator_note().size(),
               " bytes; at most --operator_note_bytes_max=", config_.operator_note_bytes_max)));
  }
  auto it = txns_.find(id);
  if (it == txns_.end()) return ResolveNotPrepared(r, id, outcome);
  Txn& t = it->second;
  s = CheckResolvable(t, now_ms);
  if (!s.ok()) return ResolveReply(r, s);
  v1::HeuristicOutcome h;
  h.set_txn_id(id);
  h.set_state(outcome);
  h.set_resolved_unix_ms(now_ms);
  h.set_operator_note(req.operator_note());
  h.set_resolved_by(identity);
  h.set_resolved_from(t.rec.state());
  h.set_coordinator_id(t.rec.coordinator_id());
  *h.mutable_participants() = t.rec.participants();
  // The protocol's own path: same batch, sequences, acks, then the marks.
  const std::string by = "an operator (heuristic)";
  if (outcome == v1::STATE_COMMITTED) {
    CommitTxn(std::nullopt, id, now_ms, by);
  } else {
    AbortTxn(std::nullopt, id, now_ms, by);
  }
  ATOMQ_CHECK(t.batch != 0 && t.outcome.state() == outcome,
              "a resolution submits its outcome at once");
  MarkHeuristic(t, h);
  Resolution resolution{r, std::move(h)};
  if (CommitBatch* commit = TxnBatch<CommitBatch>(t)) {
    commit->resolution = std::move(resolution);
  } else {
    AbortBatch* abort = TxnBatch<AbortBatch>(t);
    ATOMQ_CHECK(abort != nullptr, "a resolution rides on a commit or an abort");
    abort->resolution = std::move(resolution);
  }
}

absl::Status Node::CheckResolvable(const Txn& t, int64_t now_ms) const {
  const std::string& id = t.rec.txn_id();
  const auto refuse = [&](const std::string& why) {
    return absl::FailedPreconditionError(absl::StrCat("transaction ", id, " ", why));
  };
  if (!t.durable) return refuse("is still being prepared here: not in doubt");
  if (t.batch != 0) {
    const BatchRecord& b = batches_.at(t.batch);
    const CommitBatch* commit = std::get_if<CommitBatch>(&b);
    const AbortBatch* abort = std::get_if<AbortBatch>(&b);
    if (commit != nullptr || abort != nullptr) {
      const std::string& settled_by = commit != nullptr ? commit->settled_by : abort->settled_by;
      const std::string who = settled_by.empty() ? "" : absl::StrCat(" (told by ", settled_by, ")");
      return refuse(absl::StrCat("is being ", commit != nullptr ? "committed" : "aborted", " here",
                                 who, ": not in doubt"));
    }
    const BallotBatch* ballot = std::get_if<BallotBatch>(&b);
    if (ballot != nullptr && ballot->lead_ballot != 0) {
      return refuse(absl::StrCat("is starting a 3PC termination round led here (ballot ",
                                 ballot->lead_ballot, "); retry when it ends"));
    }
    return absl::UnavailableError(
        absl::StrCat("transaction ", id, ": a write for it is in flight here; retry"));
  }
  if (!t.in_doubt) {
    return refuse(absl::StrCat("was prepared here ", now_ms - t.rec.prepared_unix_ms(),
                               " ms ago and is not in doubt yet (the coordinator may still "
                               "settle it; in doubt after --in_doubt_after_ms=",
                               config_.in_doubt_after_ms, "); retry later"));
  }
  if (RoundUnderWay(t, now_ms)) {
    return refuse(absl::StrCat("has a 3PC termination round led here (ballot ",
                               t.round.paxos.ballot(), ") waiting for ",
                               Plural(t.round.awaiting, "answer"), "; retry when it ends"));
  }
  return absl::OkStatus();
}

void Node::MarkHeuristic(Txn& t, const v1::HeuristicOutcome& h) {
  const std::string& id = t.rec.txn_id();
  *t.outcome.mutable_heuristic() = h;
  for (Batch& b : out_.persist) {
    if (b.token != t.batch) continue;
    for (Write& w : b.writes) {
      if (w.db != kOutcomesDb || w.key != id || w.erase) continue;
      w.value = EncodeRecord(t.outcome);
      b.writes.push_back(Put(kHeuristicDb, id, h));
      return;
    }
  }
  ATOMQ_CHECK(false, "a resolution's batch writes the outcome");
}

void Node::ResolveNotPrepared(RequestId r, const std::string& id, TxnState outcome) {
  if (std::optional<CachedOutcome> o = outcomes_.Find(id)) {
    if (o->token != 0) {
      return ResolveReply(r, absl::UnavailableError(absl::StrCat(
                                 "transaction ", id, ": its outcome is being written; retry")));
    }
    // A retry, or the protocol got there first (e.g. a peer resolved by
    // an operator answered this node's query): the outcome asked for holds.
    if (o->rec.state() == outcome) return ResolveReply(r, absl::OkStatus(), &o->rec);
    return ResolveReply(
        r, absl::FailedPreconditionError(absl::StrCat(
               "transaction ", id, " was already ", Word(o->rec.state()), " here",
               o->rec.has_heuristic() ? " by an operator (heuristic)" : " by the protocol",
               ": not in doubt, nothing to resolve")));
  }
  if (staged_.txns.count(id) > 0) {
    return ResolveReply(r, absl::FailedPreconditionError(absl::StrCat(
                               "transaction ", id,
                               " is only staged here, not prepared: "
                               "nothing is in doubt (roll it back, or let it expire)")));
  }
  ResolveReply(r, absl::NotFoundError(absl::StrCat("transaction ", id,
                                                   " is not prepared here and has no "
                                                   "outcome here")));
}

void Node::ResolveDone(std::optional<Resolution>& resolution, const absl::Status& status) {
  if (!resolution) return;
  const RequestId r = resolution->request;
  v1::HeuristicOutcome h = std::move(resolution->heuristic);
  const std::string id = h.txn_id();
  if (!status.ok()) {
    Log(absl::StrCat("txn ", id,
                     " heuristic resolution not written (still in doubt): ", status.ToString()));
    return ResolveReply(r, status);
  }
  std::optional<CachedOutcome> o = outcomes_.Find(id);
  ATOMQ_CHECK(o && o->rec.has_heuristic() && o->rec.state() == h.state(),
              "a durable resolution leaves its heuristic outcome");
  Log(absl::StrCat("HEURISTIC DECISION: txn ", id, " ",
                   h.state() == v1::STATE_COMMITTED ? "COMMITTED" : "ABORTED",
                   " here by an operator (was ", v1::TxnState_Name(h.resolved_from()),
                   ", coordinator ", h.coordinator_id(), ", note \"", h.operator_note(),
                   "\"); it may contradict the coordinator and the other participants"));
  heuristics_[id] = std::move(h);
  ResolveReply(r, absl::OkStatus(), &o->rec);
}

void Node::HeuristicMixed(const CachedOutcome& o, TxnState other, const std::string& by,
                          int64_t now_ms) {
  const std::string& id = o.rec.txn_id();
  Log(absl::StrCat("ALARM heuristic mixed: txn ", id, " was ", Word(o.rec.state()),
                   " here by an operator, but ", by, " says ", Word(other), "; it stays ",
                   Word(o.rec.state()), " here: repair by hand (atomqctl txn list)"));
  if (o.rec.heuristic().conflicting_state() != v1::TXN_STATE_UNSPECIFIED) return;
  for (const auto& [token, b] : batches_) {
    const auto* conflict = std::get_if<HeuristicConflictBatch>(&b);
    if (conflict != nullptr && conflict->txn_id == id) return;  // being recorded
  }
  v1::OutcomeRecord rec = o.rec;
  v1::HeuristicOutcome* h = rec.mutable_heuristic();
  h->set_conflicting_state(other);
  h->set_conflict_by(by);
  h->set_conflict_unix_ms(now_ms);
  std::vector<Write> writes{Put(kOutcomesDb, id, rec), Put(kHeuristicDb, id, *h)};
  Submit(std::move(writes), HeuristicConflictBatch{id, std::move(rec)});
}

void Node::HeuristicDone(const HeuristicConflictBatch& b, const absl::Status& status) {
  ATOMQ_CHECK(b.record.txn_id() == b.txn_id, "a heuristic conflict writes its own outcome");
  v1::OutcomeRecord rec = b.record;
  const std::string& id = b.txn_id;
  if (!status.ok()) {
    Log(absl::StrCat("txn ", id, " heuristic conflict not recorded: ", status.ToString()));
    return;
  }
  heuristics_[id] = rec.heuristic();
  auto cached = outcomes_.cache.find(id);
  if (cached != outcomes_.cache.end() && cached->second.token == 0)
    cached->second.rec = std::move(rec);
}

void Node::HeuristicQueryReply(const std::string& id, const std::string& target,
                               const absl::StatusOr<v1::QueryStateResponse>& reply,
                               int64_t now_ms) {
  if (!reply.ok() || !Decided(reply->state())) return;
  std::optional<CachedOutcome> o = outcomes_.Find(id);
  if (!o || o->token != 0 || !o->rec.has_heuristic() || o->rec.state() == reply->state()) {
    return;
  }
  const v1::HeuristicOutcome& h = o->rec.heuristic();
  std::string by;
  if (target == h.coordinator_id()) by = absl::StrCat("coordinator ", target);
  for (const v1::PeerAddress& p : h.participants()) {
    if (p.participant() == target) by = absl::StrCat("peer ", target);
  }
  if (!by.empty()) HeuristicMixed(*o, reply->state(), by, now_ms);
}

std::vector<v1::HeuristicOutcome> Node::HeuristicOutcomes() const {
  std::vector<v1::HeuristicOutcome> list;
  for (const auto& [id, h] : heuristics_) list.push_back(h);
  return list;
}

}  // namespace atomq::participant
