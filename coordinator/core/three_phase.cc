// 3PC: the PreCommit round (ballot 0 of the participants' termination).

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {

void CoordinatorCore::Impl::OnPreCommitReply(const std::string& txn_id,
                                             const std::string& participant,
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

void CoordinatorCore::Impl::OnPrecommitDurable(Txn& t, const absl::Status& status, int64_t now_ms) {
  ATOMQ_CHECK(t.phase == Phase::kPrecommitting, "PRECOMMITTED durable out of phase");
  if (!status.ok()) {
    return Abort(t, absl::StrCat("decision log write failed: ", status.ToString()), now_ms);
  }
  MoveTo(t, Phase::kPrecommitted);
  for (size_t i = 0; i < t.parties.size(); ++i) {
    if (t.parties[i].vote == Vote::kYes) SendRound(t, i, MsgType::kPreCommit, now_ms);
  }
  ArmTermination(t, now_ms);
}

}  // namespace atomq::coordinator
