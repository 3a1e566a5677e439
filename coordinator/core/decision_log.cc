// The decision log: the transaction record, Persist, and what each durable batch
// releases (OnPersisted).

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {

v1::CoordinatorTxnRecord CoordinatorCore::Impl::MakeRecord(const Txn& t, v1::TxnState state) const {
  v1::CoordinatorTxnRecord r;
  r.set_txn_id(t.id);
  r.set_protocol(t.protocol);
  r.set_state(state);
  r.set_created_unix_ms(t.created_ms);
  r.set_ops_digest(t.digest);
  for (const Party& p : t.parties) {
    r.add_participants(p.id);
    if (Acked(p)) r.add_acknowledged(p.id);
  }
  r.set_reason(t.reason);
  for (uint64_t s : t.sequences) r.add_sequences(s);
  for (uint32_t i : t.op_party) r.add_op_participant(i);
  r.set_decided_unix_ms(t.decided_ms);
  r.set_ballot(t.ballot);
  r.set_interactive(t.interactive);
  return r;
}

void CoordinatorCore::Impl::Persist(Txn& t, RecordKind kind, v1::TxnState state) {
  // One write per transaction in flight, so that storage order never
  // matters: a decision waits for a termination ballot's record.
  if ((kind == RecordKind::kCommit || kind == RecordKind::kAbort) && t.ballot_token != 0) {
    t.after_ballot = std::make_pair(kind, state);
    return;
  }
  uint64_t token = next_token++;
  tokens.emplace(token, TokenRef{t.id, kind});
  Batch b;
  b.token = token;
  b.writes.push_back(Write{kTxnDb, t.id, EncodeRecord(MakeRecord(t, state)), false});
  if (kind == RecordKind::kEnd) {
    b.writes.push_back(
        Write{kEndedDb, EncodeU64(static_cast<uint64_t>(t.decided_ms)) + t.id, "", false});
  }
  // Nobody waits on END (presumed abort): let it share a later fsync.
  b.sync = kind != RecordKind::kEnd;
  out.persist.push_back(std::move(b));
  if (kind == RecordKind::kBallot) {
    t.ballot_token = token;
  } else if (kind != RecordKind::kEnd && kind != RecordKind::kPreparing) {
    t.decision_token = token;
  }
}

void CoordinatorCore::Impl::MaybeEnd(Txn& t) {
  if (!AllAcked(t)) return;
  if (t.phase != Phase::kCommitted && t.phase != Phase::kAborted) return;
  MoveTo(t, t.phase == Phase::kCommitted ? Phase::kCommitEnded : Phase::kAbortEnded);
  // Not waited on: without it, recovery merely resends an outcome.
  Persist(t, RecordKind::kEnd, v1::ENDED);
}

void CoordinatorCore::Impl::ScheduleRetry(Txn& t, RecordKind kind, const absl::Status& status,
                                          int64_t now_ms) {
  Log(absl::StrCat("txn ", t.id, ": decision log write failed, retrying: ", status.ToString()));
  t.retry_kind = kind;
  t.retry_backoff_ms = t.retry_backoff_ms == 0
                           ? std::max<uint32_t>(1, config.resend_initial_ms)
                           : std::min(t.retry_backoff_ms * 2, config.resend_max_ms);
  t.retry_timer = SetTimer(t, TimerKind::kPersistRetry, 0, now_ms + t.retry_backoff_ms);
}

void CoordinatorCore::Impl::OnPersisted(uint64_t token, const absl::Status& status,
                                        int64_t now_ms) {
  if (OnCollected(token, status)) return;
  auto kit = tokens.find(token);
  if (kit == tokens.end()) return;
  TokenRef ref = std::move(kit->second);
  tokens.erase(kit);
  Txn* t = Find(ref.txn_id);
  if (t == nullptr) {
    // Evicted from memory already (a small --finished_cache_max).
    if (ref.kind == RecordKind::kEnd && status.ok()) SendForget(ref.txn_id);
    return;
  }
  // A decision record counts only while it is the latest one written.
  auto latest = [t, token] {
    if (t->decision_token != token) return false;
    t->decision_token = 0;
    return true;
  };
  switch (ref.kind) {
    case RecordKind::kBallot:
      return OnBallotDurable(*t, token, status, now_ms);
    case RecordKind::kEnd:
      return OnEndDurable(*t, status);
    case RecordKind::kPreparing:
      return OnPreparingRecordDurable(*t, status, now_ms);
    case RecordKind::kPrecommit:
      if (latest()) OnPrecommitDurable(*t, status, now_ms);
      return;
    case RecordKind::kCommit:
      if (latest()) OnCommitRecordDurable(*t, status, now_ms);
      return;
    case RecordKind::kAbort:
      if (latest()) OnAbortRecordDurable(*t, status, now_ms);
      return;
  }
}

void CoordinatorCore::Impl::OnEndDurable(Txn& t, const absl::Status& status) {
  if (!status.ok()) {
    Log(absl::StrCat("txn ", t.id,
                     ": ENDED record write failed (recovery will resend "
                     "the outcome): ",
                     status.ToString()));
    return;
  }
  SendForget(t);
}

void CoordinatorCore::Impl::OnPersistRetry(Txn& t) {
  if (t.retry_kind == RecordKind::kCommit) {
    ATOMQ_CHECK(t.phase == Phase::kCommittingPrecommitted,
                "commit record retried outside 3PC kCommitting");
    return Persist(t, RecordKind::kCommit, v1::STATE_COMMITTED);
  }
  ATOMQ_CHECK(t.phase == Phase::kAborting, "abort record retried when not pending");
  Persist(t, RecordKind::kAbort, v1::STATE_ABORTED);
}

}  // namespace atomq::coordinator
