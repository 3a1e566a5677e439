// The facade: each input runs the implementation, then evicts finished
// transactions beyond the cache (so no reference into the map outlives it).

#include "coordinator/core/coordinator_core.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {

CoordinatorCore::CoordinatorCore(Config config, const DurableView* view)
    : impl_(std::make_unique<Impl>(std::move(config), view)) {}

CoordinatorCore::~CoordinatorCore() = default;

void CoordinatorCore::Recover(std::vector<v1::CoordinatorTxnRecord> records, int64_t now_ms) {
  ATOMQ_CHECK(!impl_->started, "Recover must be the first input, once");
  impl_->started = true;
  impl_->Recover(records, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::Execute(RequestId request, const v1::ExecuteRequest& req, int64_t now_ms) {
  impl_->started = true;
  impl_->Execute(request, req, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnPrepareReply(const std::string& txn_id, const std::string& participant,
                                     const absl::StatusOr<v1::PrepareResponse>& reply,
                                     int64_t now_ms) {
  impl_->started = true;
  impl_->OnPrepareReply(txn_id, participant, reply, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnPreCommitReply(const std::string& txn_id, const std::string& participant,
                                       const absl::Status& status, int64_t now_ms) {
  impl_->started = true;
  impl_->OnPreCommitReply(txn_id, participant, status, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnCommitReply(const std::string& txn_id, const std::string& participant,
                                    const absl::StatusOr<v1::CommitResponse>& reply,
                                    int64_t now_ms) {
  impl_->started = true;
  impl_->OnCommitReply(txn_id, participant, reply, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnQueryReply(const std::string& txn_id, const std::string& participant,
                                   const absl::StatusOr<v1::QueryStateResponse>& reply,
                                   int64_t now_ms) {
  impl_->started = true;
  impl_->OnQueryReply(txn_id, participant, reply, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnAbortReply(const std::string& txn_id, const std::string& participant,
                                   const absl::Status& status, int64_t now_ms) {
  impl_->started = true;
  impl_->OnAbortReply(txn_id, participant, status, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnPromiseReply(const std::string& txn_id, const std::string& participant,
                                     uint64_t ballot,
                                     const absl::StatusOr<v1::PromiseResponse>& reply,
                                     int64_t now_ms) {
  impl_->started = true;
  impl_->OnPromiseReply(txn_id, participant, ballot, reply, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnAcceptReply(const std::string& txn_id, const std::string& participant,
                                    uint64_t ballot,
                                    const absl::StatusOr<v1::AcceptResponse>& reply,
                                    int64_t now_ms) {
  impl_->started = true;
  impl_->OnAcceptReply(txn_id, participant, ballot, reply, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnTimer(uint64_t timer_id, int64_t now_ms) {
  impl_->started = true;
  if (!impl_->OnOpenTimer(timer_id, now_ms)) impl_->OnTimer(timer_id, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::OnPersisted(uint64_t token, const absl::Status& status, int64_t now_ms) {
  impl_->started = true;
  impl_->OnPersisted(token, status, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::QueryState(RequestId request, const std::string& txn_id, int64_t now_ms) {
  impl_->started = true;
  if (!impl_->AnswerOpen(request, txn_id)) impl_->QueryState(request, txn_id, now_ms);
  impl_->EvictFinished();
}

absl::StatusOr<v1::BeginTxnResponse> CoordinatorCore::Begin(const v1::BeginTxnRequest& req,
                                                            int64_t now_ms) {
  impl_->started = true;
  absl::StatusOr<v1::BeginTxnResponse> r = impl_->Begin(req, now_ms);
  impl_->EvictFinished();
  return r;
}

void CoordinatorCore::Commit(RequestId request, const v1::CommitTxnRequest& req, int64_t now_ms) {
  impl_->started = true;
  impl_->CommitInteractive(request, req, now_ms);
  impl_->EvictFinished();
}

void CoordinatorCore::Rollback(RequestId request, const v1::RollbackTxnRequest& req,
                               int64_t now_ms) {
  impl_->started = true;
  impl_->RollbackInteractive(request, req, now_ms);
  impl_->EvictFinished();
}

size_t CoordinatorCore::open_transactions() const { return impl_->open.size(); }

absl::StatusOr<v1::TransactionInfo> CoordinatorCore::GetTransaction(
    const std::string& txn_id) const {
  return impl_->GetTransaction(txn_id);
}

absl::StatusOr<v1::ListTransactionsResponse> CoordinatorCore::ListTransactions(
    const v1::ListTransactionsRequest& req, uint32_t limit_max) const {
  return impl_->ListTransactions(req, limit_max);
}

size_t CoordinatorCore::CollectRecords(const std::vector<std::string>& keys, int64_t now_ms) {
  impl_->started = true;
  const size_t taken = impl_->CollectRecords(keys, now_ms);
  impl_->EvictFinished();
  return taken;
}

uint64_t CoordinatorCore::records_erased() const { return impl_->records_erased; }

size_t CoordinatorCore::in_flight() const { return impl_->in_flight; }

Output CoordinatorCore::TakeOutput() {
  impl_->ReleaseForgets();
  Output o = std::move(impl_->out);
  impl_->out = Output();
  return o;
}

}  // namespace atomq::coordinator
