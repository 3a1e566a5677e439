// 2PC: prepare replies, the commit/abort decision, the outcome round (Commit and
// Abort replies), and the outcome participants ask for (QueryState).

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/check.h"
#include "common/validate.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {
namespace {

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

}  // namespace

void CoordinatorCore::Impl::Abort(Txn& t, std::string reason, int64_t now_ms) {
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

void CoordinatorCore::Impl::PersistCommit(Txn& t, CommitBy by) {
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
void CoordinatorCore::Impl::DecideCommit(Txn& t, int64_t now_ms) {
  size_t yes = CountVotes(t, Vote::kYes);
  ATOMQ_CHECK(yes + CountVotes(t, Vote::kReadOnly) == t.parties.size(),
              "commit decision with a vote missing");
  t.decided_ms = now_ms;
  for (Party& p : t.parties) SetOwed(p, p.vote != Vote::kReadOnly);
  if (yes == 0) {
    // Nothing changes anywhere, so nothing needs forcing and no second round.
    // ENDED is still written (not waited on) so a retry finds the outcome.
    MoveTo(t, Phase::kCommitted);
    Log(absl::StrCat("txn ", t.id, " COMMITTED (", ProtocolName(t.protocol), ", ", t.parties.size(),
                     " participants, read-only)"));
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

void CoordinatorCore::Impl::OnCommitDurable(Txn& t, int64_t now_ms) {
  ATOMQ_CHECK(t.phase == Phase::kCommitting || t.phase == Phase::kCommittingPrecommitted,
              "commit record durable outside kCommitting");
  MoveTo(t, Phase::kCommitted);
  Log(absl::StrCat("txn ", t.id, " COMMITTED (", ProtocolName(t.protocol), ", ", t.parties.size(),
                   t.preparing_record != PreparingRecord::kNone ? " participants, parallel commit)"
                                                                : " participants)"));
  for (size_t i = 0; i < t.parties.size(); ++i) {
    if (!Acked(t.parties[i])) SendRound(t, i, MsgType::kCommit, now_ms);
  }
  MaybeReplyCommitted(t, now_ms);
  MaybeEnd(t);
  MaybeFinish(t);
}

bool CoordinatorCore::Impl::Unreachable(absl::StatusCode c) {
  return c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kDeadlineExceeded ||
         c == absl::StatusCode::kCancelled;
}

// A group between leaders: its Prepare (one-phase too) is asked again
// (Resend) until the deadline. Sending it again is safe: a group's new
// leader serves only once it applied every entry of earlier terms, so a
// Prepare the old one wrote is found, not done twice.
bool CoordinatorCore::Impl::PrepareAgain(Txn& t, size_t i, const absl::Status& failed,
                                         int64_t now_ms) {
  Party& p = t.parties[i];
  if (!Unreachable(failed.code()) || t.phase != Phase::kPreparing || t.interactive ||
      config.participant_groups.count(p.id) == 0) {
    return false;
  }
  p.backoff_ms = p.backoff_ms == 0 ? std::max<uint32_t>(1, config.resend_initial_ms)
                                   : std::min(p.backoff_ms * 2, config.resend_max_ms);
  p.resend_timer = SetTimer(t, TimerKind::kResend, i, now_ms + p.backoff_ms);
  return true;
}

void CoordinatorCore::Impl::OnPrepareReply(const std::string& txn_id,
                                           const std::string& participant,
                                           const absl::StatusOr<v1::PrepareResponse>& reply,
                                           int64_t now_ms) {
  Txn* t = Find(txn_id);
  if (t == nullptr || !Collecting(*t)) return;  // late: decided already
  int i = PartyIndex(*t, participant);
  if (i < 0 || t->parties[i].vote != Vote::kPending) return;  // stray or duplicate
  if (t->one_phase) return OnOnePhaseReply(*t, static_cast<size_t>(i), reply, now_ms);
  Party& p = t->parties[i];
  if (!reply.ok()) {
    if (PrepareAgain(*t, static_cast<size_t>(i), reply.status(), now_ms)) return;
    p.vote = Vote::kFailed;
    const char* what =
        Unreachable(reply.status().code()) ? " unreachable: " : " failed to prepare: ";
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

void CoordinatorCore::Impl::OnCommitReply(const std::string& txn_id, const std::string& participant,
                                          const absl::StatusOr<v1::CommitResponse>& reply,
                                          int64_t now_ms) {
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

void CoordinatorCore::Impl::OnAbortReply(const std::string& txn_id, const std::string& participant,
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

void CoordinatorCore::Impl::QueryState(RequestId request, const std::string& txn_id,
                                       int64_t now_ms) {
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

void CoordinatorCore::Impl::OnCommitRecordDurable(Txn& t, const absl::Status& status,
                                                  int64_t now_ms) {
  if (!status.ok()) {
    // After PRECOMMITTED the outcome is commit: only the record is missing.
    if (PrecommitDurable(t)) return ScheduleRetry(t, RecordKind::kCommit, status, now_ms);
    return Abort(t, absl::StrCat("decision log write failed: ", status.ToString()), now_ms);
  }
  t.retry_backoff_ms = 0;
  OnCommitDurable(t, now_ms);
}

void CoordinatorCore::Impl::OnAbortRecordDurable(Txn& t, const absl::Status& status,
                                                 int64_t now_ms) {
  ATOMQ_CHECK(t.phase == Phase::kAborting, "abort record durable out of phase");
  if (!status.ok()) {
    // The reply must wait: a retry with this id after a restart would
    // otherwise find nothing and could commit.
    return ScheduleRetry(t, RecordKind::kAbort, status, now_ms);
  }
  t.retry_backoff_ms = 0;
  MoveTo(t, Phase::kAborted);
  if (t.preparing_record != PreparingRecord::kNone) {
    for (size_t i = 0; i < t.parties.size(); ++i) {
      if (!Acked(t.parties[i])) SendRound(t, i, MsgType::kAbort, now_ms);
    }
  }
  ReplyAll(t);
  ReplyStates(t);
  MaybeEnd(t);
  MaybeFinish(t);
}

// The votes did not all come in time; past the decision, a commit reply
// waiting for acknowledgements leaves without them.
void CoordinatorCore::Impl::OnDeadline(Txn& t, int64_t now_ms) {
  if (Collecting(t)) {
    std::vector<std::string> missing;
    for (const Party& p : t.parties) {
      if (p.vote == Vote::kPending) missing.push_back(p.id);
    }
    ATOMQ_CHECK(!missing.empty(), "still preparing with every vote in");
    if (t.one_phase) {
      return FenceOnePhase(t,
                           absl::StrCat("one-phase prepare timed out after ", t.timeout_ms,
                                        " ms waiting for ", absl::StrJoin(missing, ", ")),
                           now_ms);
    }
    return Abort(t,
                 absl::StrCat("prepare timed out after ", t.timeout_ms, " ms waiting for ",
                              absl::StrJoin(missing, ", ")),
                 now_ms);
  }
  MaybeReplyCommitted(t, now_ms);
  MaybeFinish(t);
}

}  // namespace atomq::coordinator
