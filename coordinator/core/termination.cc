// 3PC termination: the coordinator as a proposer of single-decree Paxos
// (common/paxos.h) over the transaction's participants.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {

using paxos::Decided;

uint32_t CoordinatorCore::Impl::TerminationPatienceMs() const {
  return std::max({config.termination_after_ms, config.resend_max_ms, 1u});
}

void CoordinatorCore::Impl::ArmTermination(Txn& t, int64_t now_ms) {
  t.term_backoff_ms = t.term_backoff_ms == 0
                          ? std::max<uint32_t>(1, config.termination_after_ms)
                          : std::min(t.term_backoff_ms * 2, TerminationPatienceMs());
  t.term_timer = SetTimer(t, TimerKind::kTerminate, 0, now_ms + t.term_backoff_ms);
}

// Writes a ballot above every ballot seen, in the coordinator's ballot
// space (multiples of participants + 1); the round begins once durable.
void CoordinatorCore::Impl::StartTermination(Txn& t, int64_t now_ms) {
  if (t.phase != Phase::kPrecommitted || t.ballot_token != 0 || t.parties.empty()) return;
  const int64_t patience = TerminationPatienceMs();
  if (t.term.running() && now_ms - t.term_started_ms < patience) return;
  if (now_ms - t.foreign_ballot_ms < patience) return;
  const uint64_t seen = std::max(t.ballot, t.term.highest_seen());
  const uint64_t ballot = paxos::FreshBallot(seen, t.parties.size(), paxos::kCoordinatorSlot);
  t.ballot = ballot;
  t.term.End();
  t.term.Saw(seen);
  Log(absl::StrCat("txn ", t.id, ": 3PC termination round, ballot ", ballot));
  Persist(t, RecordKind::kBallot, v1::PRECOMMITTED);
}

void CoordinatorCore::Impl::SendBallot(const Txn& t, size_t i, MsgType type, uint64_t ballot,
                                       v1::TxnState value) {
  OutMessage m;
  m.participant = t.parties[i].id;
  m.address = t.parties[i].address;
  m.type = type;
  m.txn_id = t.id;
  m.ballot = ballot;
  m.value = value;
  out.send.push_back(std::move(m));
}

void CoordinatorCore::Impl::BeginTermination(Txn& t, int64_t now_ms) {
  t.term.Begin(t.ballot, t.parties.size());
  t.term_started_ms = now_ms;
  for (size_t i = 0; i < t.parties.size(); ++i) {
    // A READ_ONLY voter (only in records from before 3PC participants
    // always prepared) kept nothing: it could only answer ABORTED.
    if (t.parties[i].vote == Vote::kReadOnly) continue;
    SendBallot(t, i, MsgType::kPromise, t.ballot, v1::TXN_STATE_UNSPECIFIED);
  }
}

// What a round (or a participant that decided) says is chosen.
void CoordinatorCore::Impl::Learn(Txn& t, v1::TxnState value, const std::string& how,
                                  int64_t now_ms) {
  if (t.phase != Phase::kPrecommitted) return;
  t.term.End();
  if (value == v1::STATE_COMMITTED) {
    Log(absl::StrCat("txn ", t.id, ": 3PC termination learnt COMMIT (", how, ")"));
    return PersistCommit(t, CommitBy::kTermination);
  }
  AbortChosen(t, absl::StrCat("a 3PC termination round chose ABORT (", how, ")"), now_ms);
}

void CoordinatorCore::Impl::AbortChosen(Txn& t, std::string reason, int64_t now_ms) {
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

void CoordinatorCore::Impl::OnPromiseReply(const std::string& txn_id,
                                           const std::string& participant, uint64_t ballot,
                                           const absl::StatusOr<v1::PromiseResponse>& reply,
                                           int64_t now_ms) {
  int i = -1;
  Txn* t = RoundOf(txn_id, participant, ballot, /*accepting=*/false, &i);
  if (t == nullptr || !reply.ok()) return;
  if (AnsweredOtherwise(*t, participant, reply->state(), reply->promised(),
                        reply->promised_ballot(), now_ms)) {
    return;
  }
  Term& r = t->term;
  if (!r.Promised(participant, {reply->accepted_ballot(), reply->accepted_value()})) return;
  r.Propose(r.Proposal());
  for (size_t k = 0; k < t->parties.size(); ++k) {
    if (t->parties[k].vote == Vote::kReadOnly) continue;
    SendBallot(*t, k, MsgType::kAccept, r.ballot(), r.value());
  }
}

void CoordinatorCore::Impl::OnAcceptReply(const std::string& txn_id, const std::string& participant,
                                          uint64_t ballot,
                                          const absl::StatusOr<v1::AcceptResponse>& reply,
                                          int64_t now_ms) {
  int i = -1;
  Txn* t = RoundOf(txn_id, participant, ballot, /*accepting=*/true, &i);
  if (t == nullptr || !reply.ok()) return;
  if (AnsweredOtherwise(*t, participant, reply->state(), reply->accepted(),
                        reply->promised_ballot(), now_ms)) {
    return;
  }
  Term& r = t->term;
  if (r.AcceptedBy(participant)) {
    Learn(*t, r.value(), absl::StrCat("ballot ", r.ballot(), " accepted by a majority"), now_ms);
  }
}

// The transaction whose running round, at the stage `accepting` names, a
// reply to `ballot` belongs to (and the participant's index in it).
Txn* CoordinatorCore::Impl::RoundOf(const std::string& txn_id, const std::string& participant,
                                    uint64_t ballot, bool accepting, int* index) {
  Txn* t = Find(txn_id);
  if (t == nullptr || t->phase != Phase::kPrecommitted) return nullptr;
  *index = PartyIndex(*t, participant);
  const Term& r = t->term;
  if (*index < 0 || !r.running() || r.ballot() != ballot || r.accepting() != accepting) {
    return nullptr;
  }
  return t;
}

// A reply that does not grant the ballot: the participant decided (that
// value is learnt), or it promised a higher ballot. True when it was one.
bool CoordinatorCore::Impl::AnsweredOtherwise(Txn& t, const std::string& participant,
                                              v1::TxnState state, bool granted,
                                              uint64_t promised_ballot, int64_t now_ms) {
  if (Decided(state)) {
    Learn(t, state, absl::StrCat(participant, " decided it"), now_ms);
    return true;
  }
  if (granted) return false;
  t.term.Saw(promised_ballot);
  t.foreign_ballot_ms = now_ms;
  return true;
}

void CoordinatorCore::Impl::OnBallotDurable(Txn& t, uint64_t token, const absl::Status& status,
                                            int64_t now_ms) {
  if (t.ballot_token == token) t.ballot_token = 0;
  if (t.after_ballot) {
    const auto [kind, state] = *t.after_ballot;
    t.after_ballot.reset();
    return Persist(t, kind, state);
  }
  // A failed write: the termination timer tries again.
  if (status.ok() && t.phase == Phase::kPrecommitted) BeginTermination(t, now_ms);
}

void CoordinatorCore::Impl::OnTerminationTimer(Txn& t, int64_t now_ms) {
  if (t.phase != Phase::kPrecommitted) return;
  StartTermination(t, now_ms);
  ArmTermination(t, now_ms);
}

}  // namespace atomq::coordinator
