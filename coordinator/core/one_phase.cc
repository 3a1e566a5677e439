// One-phase commit (a single participant; PrepareRequest.one_phase).
// The participant's own durable COMMITTED outcome is the decision, so this
// path forces nothing here: a YES (it carries the sequences) is answered
// COMMITTED at once, and an ENDED record follows, not waited on, so that a
// retry with the same id finds the outcome. A crash before that record is
// durable forgets the transaction; a retry with the same id then sends the
// same one-phase Prepare, which the participant answers from its outcome
// (the same sequences, or NO): it never commits twice. The participant is
// never in doubt, so it never asks QueryState about the id (which would
// presume abort here).
// A group between leaders is asked again until the deadline (PrepareAgain).
// A NO is final at the participant (it records ABORTED before it answers),
// so the abort is decided as under 2PC. An unknown outcome (a failed
// Prepare RPC, a reply that is no vote, the deadline) is NOT an abort: the
// participant may have committed. Abort is then sent until answered: OK
// means ABORTED is durable there and it can never commit, so the abort is
// decided; FAILED_PRECONDITION means it committed, and the one-phase
// Prepare is resent until its YES brings the sequences.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {

bool CoordinatorCore::Impl::OnePhaseFor(const Txn& t) const {
  if (!config.one_phase || t.interactive) return false;
  // TEST ONLY: "one-phase-multi" commits every participant on its own.
  return t.parties.size() == 1 || config.plant == Plant::kOnePhaseMulti;
}

v1::PrepareRequest CoordinatorCore::Impl::OnePhasePrepare(const Txn& t, size_t i) const {
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

void CoordinatorCore::Impl::SendOnePhase(Txn& t, size_t i, MsgType type, int64_t now_ms) {
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

void CoordinatorCore::Impl::OnOnePhaseReply(Txn& t, size_t i,
                                            const absl::StatusOr<v1::PrepareResponse>& reply,
                                            int64_t now_ms) {
  Party& p = t.parties[i];
  if (!reply.ok()) {
    if (PrepareAgain(t, i, reply.status(), now_ms)) return;
    return FenceOnePhase(
        t, absl::StrCat(p.id, " did not answer the one-phase prepare: ", reply.status().ToString()),
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

void CoordinatorCore::Impl::OnePhaseYes(Txn& t, size_t i, const v1::PrepareResponse& resp,
                                        int64_t now_ms) {
  Party& p = t.parties[i];
  p.vote = Vote::kYes;
  p.resend_timer = 0;
  // Its sequences follow its ops in request order (the PrepareRequest's order).
  for (size_t k = 0; k < p.ops.size() && static_cast<int>(k) < resp.sequences_size(); ++k) {
    t.sequences[p.ops[k]] = resp.sequences(static_cast<int>(k));
  }
  MaybeCommitOnePhase(t, now_ms);
}

void CoordinatorCore::Impl::MaybeCommitOnePhase(Txn& t, int64_t now_ms) {
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

void CoordinatorCore::Impl::FenceOnePhase(Txn& t, std::string reason, int64_t now_ms) {
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

void CoordinatorCore::Impl::ResendOnePhase(Txn& t, size_t i, int64_t now_ms) {
  Party& p = t.parties[i];
  if (p.vote != Vote::kPending) return;
  BackOff(p);
  SendOnePhase(t, i, t.phase == Phase::kFetching ? MsgType::kPrepare : MsgType::kAbort, now_ms);
}

void CoordinatorCore::Impl::OnFenceReply(Txn& t, const std::string& participant,
                                         const absl::Status& status, int64_t now_ms) {
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

}  // namespace atomq::coordinator
