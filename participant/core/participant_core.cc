// The facade: validates what every call shares and forwards to the node
// (node.h), whose methods live in files named for their responsibility.
#include "participant/core/participant_core.h"

#include <memory>
#include <utility>

#include "participant/core/node.h"

namespace atomq::participant {

ParticipantCore::ParticipantCore(Config config, const DurableView* view)
    : node_(std::make_unique<Node>(std::move(config), view)) {}

ParticipantCore::~ParticipantCore() = default;

void ParticipantCore::Recover(RecoveredState state, int64_t now_ms) {
  node_->Recover(std::move(state), now_ms);
}

void ParticipantCore::Prepare(RequestId request, const v1::PrepareRequest& req, int64_t now_ms) {
  node_->RequireRecovered();
  if (req.one_phase()) return node_->PrepareOnePhase(request, req, now_ms);
  if (req.use_staged()) return node_->PrepareStaged(request, req, now_ms);
  // Staged work under an id prepared with explicit ops can never be taken.
  node_->DropStaged(req.txn_id(), now_ms, "a Prepare with explicit ops came for the id");
  node_->Prepare(request, req, now_ms);
}

void ParticipantCore::PreCommit(RequestId request, const std::string& txn_id, int64_t now_ms) {
  node_->RequireRecovered();
  if (!node_->ValidateId({ReplyKind::kPreCommit, request}, txn_id).ok()) return;
  node_->PreCommit(request, txn_id, now_ms);
}

void ParticipantCore::Commit(RequestId request, const std::string& txn_id, int64_t now_ms) {
  node_->RequireRecovered();
  const Waiter w{ReplyKind::kCommit, request};
  if (!node_->ValidateId(w, txn_id).ok()) return;
  node_->CommitTxn(w, txn_id, now_ms, "");
}

void ParticipantCore::Abort(RequestId request, const std::string& txn_id, int64_t now_ms) {
  node_->RequireRecovered();
  const Waiter w{ReplyKind::kAbort, request};
  if (!node_->ValidateId(w, txn_id).ok()) return;
  node_->DropStaged(txn_id, now_ms, "aborted");
  node_->AbortTxn(w, txn_id, now_ms, "");
}

void ParticipantCore::QueryState(RequestId request, const std::string& txn_id, int64_t now_ms) {
  node_->RequireRecovered();
  if (!node_->ValidateId({ReplyKind::kQuery, request}, txn_id).ok()) return;
  // The answer for an id not prepared here is ABORTED, recorded: staged work
  // under it could never commit.
  node_->DropStaged(txn_id, now_ms, "its outcome was asked before it was prepared");
  node_->QueryState(request, txn_id, now_ms);
}

void ParticipantCore::Promise(RequestId request, const std::string& txn_id, uint64_t ballot,
                              int64_t now_ms) {
  node_->RequireRecovered();
  if (!node_->ValidateId({ReplyKind::kPromise, request}, txn_id).ok()) return;
  node_->Promise(request, txn_id, ballot, now_ms);
}

void ParticipantCore::Accept(RequestId request, const std::string& txn_id, uint64_t ballot,
                             v1::TxnState value, int64_t now_ms) {
  node_->RequireRecovered();
  if (!node_->ValidateId({ReplyKind::kAccept, request}, txn_id).ok()) return;
  node_->Accept(request, txn_id, ballot, value, now_ms);
}

void ParticipantCore::OnPromiseReply(const std::string& txn_id, const std::string& from,
                                     uint64_t ballot,
                                     const absl::StatusOr<v1::PromiseResponse>& reply,
                                     int64_t now_ms) {
  node_->RequireRecovered();
  node_->OnPromiseReply(txn_id, from, ballot, reply, now_ms);
}

void ParticipantCore::OnAcceptReply(const std::string& txn_id, const std::string& from,
                                    uint64_t ballot,
                                    const absl::StatusOr<v1::AcceptResponse>& reply,
                                    int64_t now_ms) {
  node_->RequireRecovered();
  node_->OnAcceptReply(txn_id, from, ballot, reply, now_ms);
}

void ParticipantCore::OnQueryReply(const std::string& txn_id, const std::string& target,
                                   const absl::StatusOr<v1::QueryStateResponse>& reply,
                                   int64_t now_ms) {
  node_->RequireRecovered();
  node_->OnQueryReply(txn_id, target, reply, now_ms);
}

void ParticipantCore::OnTimer(uint64_t timer_id, int64_t now_ms) {
  node_->RequireRecovered();
  if (node_->OnStageTimer(timer_id, now_ms)) return;
  node_->OnTimer(timer_id, now_ms);
}

absl::StatusOr<v1::StageResponse> ParticipantCore::Stage(const v1::StageRequest& req,
                                                         int64_t now_ms,
                                                         const std::string& identity) {
  node_->RequireRecovered();
  return node_->Stage(req, now_ms, identity);
}

size_t ParticipantCore::staged_transactions() const { return node_->staged_transactions(); }

std::vector<std::pair<std::string, ParticipantCore::QueueCounts>> ParticipantCore::queue_counts()
    const {
  return node_->queue_counts();
}

ParticipantCore::PreparedGauges ParticipantCore::prepared_gauges() const {
  return node_->prepared_gauges();
}

void ParticipantCore::OnPersisted(uint64_t token, const absl::Status& status, int64_t now_ms) {
  node_->RequireRecovered();
  node_->OnPersisted(token, status, now_ms);
}

void ParticipantCore::CreateQueue(RequestId request, const std::string& name, int64_t now_ms) {
  node_->RequireRecovered();
  v1::CreateQueueRequest req;
  req.set_name(name);
  node_->CreateQueue(request, req, now_ms);
}

void ParticipantCore::CreateQueue(RequestId request, const v1::CreateQueueRequest& req,
                                  int64_t now_ms) {
  node_->RequireRecovered();
  node_->CreateQueue(request, req, now_ms);
}

void ParticipantCore::Nack(RequestId request, const v1::NackRequest& req, int64_t now_ms) {
  node_->RequireRecovered();
  node_->Nack(request, req, now_ms);
}

void ParticipantCore::Send(RequestId request, const v1::SendRequest& req, int64_t now_ms) {
  node_->RequireRecovered();
  node_->SendMessage(request, req, now_ms);
}

void ParticipantCore::ExpireLeases(int64_t now_ms) {
  node_->RequireRecovered();
  node_->ExpireAllLeases(now_ms);
}

void ParticipantCore::DeleteQueue(RequestId request, const std::string& name, int64_t now_ms) {
  node_->RequireRecovered();
  node_->DeleteQueue(request, name, now_ms);
}

std::vector<v1::QueueInfo> ParticipantCore::ListQueues() const { return node_->ListQueues(); }

absl::StatusOr<std::vector<Lease>> ParticipantCore::Peek(const v1::ReceiveRequest& req) const {
  return node_->Peek(req);
}

void ParticipantCore::PurgeQueue(RequestId request, const std::string& queue) {
  node_->RequireRecovered();
  node_->PurgeQueue(request, queue);
}

absl::StatusOr<std::vector<Lease>> ParticipantCore::Receive(const std::string& queue,
                                                            uint32_t max_messages,
                                                            uint32_t lease_ms, int64_t now_ms) {
  node_->RequireRecovered();
  return node_->Receive(queue, max_messages, lease_ms, now_ms);
}

void ParticipantCore::Ack(RequestId request, const std::string& queue, uint64_t sequence,
                          const std::string& lease_token, int64_t now_ms) {
  node_->RequireRecovered();
  node_->Ack(request, queue, sequence, lease_token, now_ms);
}

absl::StatusOr<v1::ListParticipantTxnsResponse> ParticipantCore::ListTransactions(
    const v1::ListParticipantTxnsRequest& req, uint32_t limit_max, uint64_t bytes_max) const {
  return node_->ListTransactions(req, limit_max, bytes_max);
}

void ParticipantCore::Resolve(RequestId request, const v1::ResolveRequest& req, int64_t now_ms,
                              const std::string& identity) {
  node_->RequireRecovered();
  node_->Resolve(request, req, now_ms, identity);
}

void ParticipantCore::Forget(const std::string& txn_id, int64_t now_ms) {
  node_->RequireRecovered();
  node_->Forget(txn_id, now_ms);
}

size_t ParticipantCore::CollectOutcomes(const std::vector<std::string>& keys, int64_t now_ms) {
  node_->RequireRecovered();
  return node_->CollectOutcomes(keys, now_ms);
}

uint64_t ParticipantCore::outcomes_erased() const { return node_->outcomes_erased(); }

std::vector<v1::HeuristicOutcome> ParticipantCore::HeuristicOutcomes() const {
  return node_->HeuristicOutcomes();
}

Output ParticipantCore::TakeOutput() { return node_->TakeOutput(); }

}  // namespace atomq::participant
