// Transaction info and listing, and the cache of finished transactions.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/validate.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {

void CoordinatorCore::Impl::MaybeFinish(Txn& t) {
  if (t.finished || !Ended(t) || !t.replied || !t.waiters.empty() || !t.state_waiters.empty()) {
    return;
  }
  t.finished = true;
  t.deadline_timer = 0;
  t.retry_timer = 0;
  for (Party& p : t.parties) p.resend_timer = 0;
  // Payloads can be large and finished transactions many.
  t.ops.Clear();
  finished.push_back(t.id);
}

// Called last in every input, so no reference into `txns` outlives it.
void CoordinatorCore::Impl::EvictFinished() {
  while (finished.size() > config.finished_cache_max) {
    auto it = txns.find(finished.front());
    finished.pop_front();
    if (it != txns.end() && it->second.finished) txns.erase(it);
  }
}

// The state GetTransaction and ListTransactions show.
v1::TxnState CoordinatorCore::Impl::TxnStateOf(const Txn& t) {
  switch (t.phase) {
    case Phase::kNew:
    case Phase::kPreparing:
    case Phase::kProbing:
    case Phase::kFencing:
    case Phase::kFetching:
    case Phase::kPrecommitting:
    case Phase::kCommitting:
      return v1::PREPARING;
    case Phase::kPrecommitted:
    case Phase::kCommittingPrecommitted:
      return v1::PRECOMMITTED;
    case Phase::kCommitted:
      return v1::STATE_COMMITTED;
    case Phase::kAborting:
    case Phase::kAborted:
      return v1::STATE_ABORTED;
    case Phase::kCommitEnded:
    case Phase::kAbortEnded:
      return v1::ENDED;
  }
  return v1::TXN_STATE_UNSPECIFIED;
}

v1::TxnState CoordinatorCore::Impl::PartyStateOf(const Txn& t, const Party& p) {
  if (p.vote == Vote::kReadOnly) return v1::ENDED;  // left the transaction
  if (p.vote == Vote::kNo) return v1::STATE_ABORTED;
  const bool mixed = p.answer == Answer::kAckedOtherOutcome;
  if (Committed(t) && Acked(p)) return mixed ? v1::STATE_ABORTED : v1::STATE_COMMITTED;
  if (Aborted(t) && Acked(p)) return mixed ? v1::STATE_COMMITTED : v1::STATE_ABORTED;
  if (p.answer == Answer::kPrecommitAcked) return v1::PRECOMMITTED;
  switch (p.vote) {
    case Vote::kPending:
      // Once decided, an unanswered Prepare may or may not have prepared it.
      return Collecting(t) ? v1::PREPARING : v1::UNKNOWN;
    case Vote::kYes:
    case Vote::kUnknown:
      return v1::PREPARED;
    default:
      return v1::UNKNOWN;
  }
}

v1::TransactionInfo CoordinatorCore::Impl::InfoOf(const Txn& t, bool with_ops) const {
  v1::TransactionInfo info;
  info.set_txn_id(t.id);
  info.set_protocol(t.protocol);
  info.set_state(TxnStateOf(t));
  bool committed = Committed(t);
  info.set_outcome(committed ? v1::COMMITTED : Aborted(t) ? v1::ABORTED : v1::PENDING);
  info.set_reason(t.reason);
  info.set_created_unix_ms(t.created_ms);
  for (const Party& p : t.parties) {
    v1::ParticipantStatus* ps = info.add_participants();
    ps->set_participant(p.id);
    ps->set_state(PartyStateOf(t, p));
    ps->set_acknowledged(Acked(p) && (committed || Aborted(t)));
  }
  for (uint64_t s : t.sequences) info.add_results()->set_sequence(committed ? s : 0);
  if (with_ops) *info.mutable_ops() = t.ops;
  return info;
}

absl::StatusOr<v1::TransactionInfo> CoordinatorCore::Impl::GetTransaction(
    const std::string& txn_id) const {
  absl::Status s = ValidateTxnId(txn_id);
  if (!s.ok()) return s;
  auto it = txns.find(txn_id);
  if (it != txns.end()) return InfoOf(it->second, true);
  if (view != nullptr) {
    if (std::optional<v1::CoordinatorTxnRecord> r = view->FindTxn(txn_id)) {
      return TransactionInfoOf(*r);
    }
  }
  return absl::NotFoundError(absl::StrCat("transaction ", txn_id, " is not known"));
}

absl::StatusOr<v1::ListTransactionsResponse> CoordinatorCore::Impl::ListTransactions(
    const v1::ListTransactionsRequest& req, uint32_t limit_max) const {
  const std::string& after = req.page_token();
  absl::StatusOr<uint32_t> limit = PageLimit(req.limit(), limit_max, after);
  if (!limit.ok()) return limit.status();
  for (int s : req.states()) {
    if (!v1::TxnState_IsValid(s)) {
      return absl::InvalidArgumentError(absl::StrCat("states: ", s, " is not a transaction state"));
    }
  }
  auto wanted = [&req](v1::TxnState s) {
    return req.states().empty()
               ? s != v1::ENDED
               : std::find(req.states().begin(), req.states().end(), s) != req.states().end();
  };
  v1::ListTransactionsResponse resp;
  for (auto it = after.empty() ? txns.begin() : txns.upper_bound(after); it != txns.end(); ++it) {
    if (!wanted(TxnStateOf(it->second))) continue;
    if (static_cast<uint32_t>(resp.transactions_size()) == *limit) {
      resp.set_next_page_token(resp.transactions().rbegin()->txn_id());
      break;
    }
    *resp.add_transactions() = InfoOf(it->second, false);
  }
  return resp;
}

}  // namespace atomq::coordinator
