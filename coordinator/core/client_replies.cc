// Replies to clients (Execute, Commit, Rollback) and to QueryState waiters.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {

v1::ExecuteResponse CoordinatorCore::Impl::Response(const Txn& t, int op_count) const {
  v1::ExecuteResponse r;
  r.set_txn_id(t.id);
  bool committed = Committed(t);
  r.set_outcome(committed ? v1::COMMITTED : v1::ABORTED);
  if (!committed) r.set_reason(t.reason);
  for (int i = 0; i < op_count; ++i) {
    uint64_t seq = committed && static_cast<size_t>(i) < t.sequences.size() ? t.sequences[i] : 0;
    r.add_results()->set_sequence(seq);
  }
  if (t.interactive) AddStagedResults(t, committed, &r);
  return r;
}

void CoordinatorCore::Impl::ReplyError(RequestId request, absl::Status status,
                                       const std::string& txn_id) {
  ExecuteReply r;
  r.request = request;
  r.status = std::move(status);
  r.response.set_txn_id(txn_id);
  out.replies.push_back(std::move(r));
}

// Whether a client may be told the outcome now.
bool CoordinatorCore::Impl::OutcomeReady(const Txn& t) const {
  if (Aborted(t)) return AbortDurable(t);
  return Committed(t) && t.replied;
}

void CoordinatorCore::Impl::ReplyAll(Txn& t) {
  ATOMQ_CHECK(DecisionDurable(t), "client reply before the decision is durable");
  for (const Waiter& w : t.waiters) {
    out.replies.push_back(ExecuteReply{w.request, absl::OkStatus(), Response(t, w.op_count)});
  }
  t.waiters.clear();
  t.replied = true;
  if (t.in_flight) {
    ATOMQ_CHECK(in_flight > 0, "in-flight count underflow");
    t.in_flight = false;
    --in_flight;
  }
}

void CoordinatorCore::Impl::MaybeReplyCommitted(Txn& t, int64_t now_ms) {
  if (!Committed(t)) return;
  if (t.replied && t.waiters.empty()) return;
  if (t.replied || t.reply_at_decision || AllAcked(t) || now_ms >= t.deadline_ms) {
    ReplyAll(t);
  }
}

void CoordinatorCore::Impl::ReplyStates(Txn& t) {
  ATOMQ_CHECK(AbortDurable(t), "state reply before the abort is durable");
  for (RequestId r : t.state_waiters) out.state_replies.push_back(StateReply{r, v1::STATE_ABORTED});
  t.state_waiters.clear();
}

void CoordinatorCore::Impl::ReplyFromRecord(RequestId request, const v1::CoordinatorTxnRecord& r,
                                            int op_count) {
  if (r.state() == v1::PRECOMMITTED || r.state() == v1::PREPARING) {
    ReplyError(request,
               absl::UnavailableError(
                   absl::StrCat("transaction ", r.txn_id(), " is being recovered; retry")),
               r.txn_id());
    return;
  }
  v1::ExecuteResponse resp;
  resp.set_txn_id(r.txn_id());
  bool committed = RecordCommitted(r);
  resp.set_outcome(committed ? v1::COMMITTED : v1::ABORTED);
  if (!committed) resp.set_reason(r.reason());
  for (int i = 0; i < op_count; ++i) {
    resp.add_results()->set_sequence(committed && i < r.sequences_size() ? r.sequences(i) : 0);
  }
  out.replies.push_back(ExecuteReply{request, absl::OkStatus(), std::move(resp)});
}

void CoordinatorCore::Impl::Attach(Txn& t, RequestId request, int op_count) {
  if (OutcomeReady(t)) {
    out.replies.push_back(ExecuteReply{request, absl::OkStatus(), Response(t, op_count)});
    return;
  }
  t.waiters.push_back(Waiter{request, op_count});
}

}  // namespace atomq::coordinator
