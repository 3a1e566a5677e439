// Recovery: the in-memory transaction rebuilt from its record.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {

void CoordinatorCore::Impl::RecoverOne(const v1::CoordinatorTxnRecord& r, int64_t now_ms,
                                       std::map<int, int>* counts) {
  if (r.txn_id().empty() || txns.count(r.txn_id()) > 0) return;
  Txn rebuilt = TxnFromRecord(r);
  auto [it, inserted] = txns.emplace(rebuilt.id, std::move(rebuilt));
  Txn& t = it->second;
  ++(*counts)[r.state()];
  switch (r.state()) {
    case v1::PRECOMMITTED:
      return RecoverPrecommitted(t, r.ballot(), now_ms);
    case v1::STATE_COMMITTED:
      return RecoverCommitted(t, now_ms);
    case v1::PREPARING:
      if (config.plant != Plant::kPreparingPresumedAbort) return RecoverPreparing(t, now_ms);
      // TEST ONLY: "preparing-presumed-abort" takes it for an ABORT record.
      t.reason = "aborted before a restart";
      return RecoverAborted(t, now_ms);
    case v1::STATE_ABORTED:
      return RecoverAborted(t, now_ms);
    case v1::ENDED:
      for (Party& p : t.parties) {
        p.vote = Vote::kUnknown;
        SetOwed(p, false);
      }
      MoveTo(t, RecordCommitted(r) ? Phase::kCommitEnded : Phase::kAbortEnded);
      return MaybeFinish(t);
    default:
      Log(absl::StrCat("txn ", t.id, ": record state ", v1::TxnState_Name(r.state()),
                       " is not one the coordinator writes; ignored"));
      txns.erase(it);
      return;
  }
}

// What the record says, in phase kNew; the caller moves it on.
Txn CoordinatorCore::Impl::TxnFromRecord(const v1::CoordinatorTxnRecord& r) {
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
  return t;
}

void CoordinatorCore::Impl::RecoverPrecommitted(Txn& t, uint64_t ballot, int64_t now_ms) {
  // Acknowledged here means READ_ONLY: they take no part in the rounds.
  for (Party& p : t.parties) p.vote = Acked(p) ? Vote::kReadOnly : Vote::kYes;
  if (CountVotes(t, Vote::kYes) == 0) {
    // Not a record this coordinator writes; include everyone to be safe.
    for (Party& p : t.parties) {
      p.vote = Vote::kYes;
      SetOwed(p, true);
    }
  }
  MoveTo(t, Phase::kPrecommitted);
  t.replied = false;  // a retry waits for the decision
  t.ballot = ballot;
  // Which participants accepted ballot 0 is not known: a round learns
  // the decision (it may be ABORT, if participants ran one meanwhile).
  StartTermination(t, now_ms);
  ArmTermination(t, now_ms);
}

void CoordinatorCore::Impl::RecoverCommitted(Txn& t, int64_t now_ms) {
  for (Party& p : t.parties) p.vote = Vote::kYes;
  MoveTo(t, Phase::kCommitted);
  for (size_t i = 0; i < t.parties.size(); ++i) {
    if (!Acked(t.parties[i])) SendRound(t, i, MsgType::kCommit, now_ms);
  }
  MaybeEnd(t);
  MaybeFinish(t);
}

void CoordinatorCore::Impl::RecoverAborted(Txn& t, int64_t now_ms) {
  for (Party& p : t.parties) p.vote = Vote::kUnknown;
  MoveTo(t, Phase::kAborted);
  if (t.reason.empty()) t.reason = "aborted before a restart";
  for (size_t i = 0; i < t.parties.size(); ++i) {
    if (!Acked(t.parties[i])) SendRound(t, i, MsgType::kAbort, now_ms);
  }
  MaybeEnd(t);
  MaybeFinish(t);
}

void CoordinatorCore::Impl::Recover(const std::vector<v1::CoordinatorTxnRecord>& records,
                                    int64_t now_ms) {
  std::map<int, int> counts;
  for (const v1::CoordinatorTxnRecord& r : records) RecoverOne(r, now_ms, &counts);
  Log(absl::StrCat("recovered ", records.size(),
                   " transaction records: ", counts[v1::STATE_COMMITTED],
                   " committed (resending Commit), ", counts[v1::STATE_ABORTED],
                   " aborted (resending Abort), ", counts[v1::PRECOMMITTED],
                   " precommitted (termination round), ", counts[v1::ENDED], " ended"));
}
}  // namespace atomq::coordinator
