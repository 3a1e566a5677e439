// Parallel commit: the PREPARING record and its recovery by asking the
// participants.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {

void CoordinatorCore::Impl::OnQueryReply(const std::string& txn_id, const std::string& participant,
                                         const absl::StatusOr<v1::QueryStateResponse>& reply,
                                         int64_t now_ms) {
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

void CoordinatorCore::Impl::OnPreparingRecordDurable(Txn& t, const absl::Status& status,
                                                     int64_t now_ms) {
  if (!status.ok()) {
    // Nothing on disk says commit: go on as plain 2PC (a COMMITTED
    // record if every vote is YES, an abort otherwise).
    Log(absl::StrCat("txn ", t.id, ": PREPARING record write failed, committing without it: ",
                     status.ToString()));
    t.preparing_record = PreparingRecord::kNone;
    if (t.phase == Phase::kCommitting && t.decision_token == 0) {
      PersistCommit(t, CommitBy::kVotes);
    }
    return;
  }
  t.preparing_record = PreparingRecord::kDurable;
  if (t.phase == Phase::kCommitting && t.decision_token == 0) OnCommitDurable(t, now_ms);
}

// Committed iff every participant holds it prepared (or committed it): ask
// them all.
void CoordinatorCore::Impl::RecoverPreparing(Txn& t, int64_t now_ms) {
  for (Party& p : t.parties) {
    p.vote = Vote::kPending;
    SetOwed(p, true);
  }
  MoveTo(t, Phase::kProbing);
  t.preparing_record = PreparingRecord::kDurable;
  t.replied = false;  // a retry waits for the decision
  t.deadline_ms = now_ms + config.txn_timeout_ms;
  for (size_t i = 0; i < t.parties.size(); ++i) SendRound(t, i, MsgType::kQuery, now_ms);
}

// Beside the Prepares of a 2PC Execute with several participants.
void CoordinatorCore::Impl::MaybeWritePreparingRecord(Txn& t) {
  if (!config.parallel_commit || t.one_phase || t.protocol != v1::TWO_PC || t.parties.size() < 2) {
    return;
  }
  t.preparing_record = PreparingRecord::kInFlight;
  Persist(t, RecordKind::kPreparing, v1::PREPARING);
}

}  // namespace atomq::coordinator
