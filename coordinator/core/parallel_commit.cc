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

}  // namespace atomq::coordinator
