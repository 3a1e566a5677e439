#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "participant/core/node.h"

namespace atomq::participant {

uint64_t Node::Submit(std::vector<Write> writes, BatchRecord record) {
  uint64_t token = next_token_++;
  out_.persist.push_back(Batch{token, std::move(writes)});
  const bool fresh = batches_.emplace(token, std::move(record)).second;
  ATOMQ_CHECK(fresh, "a batch token is used once");
  return token;
}

std::vector<Waiter>& Node::WaitersOf(uint64_t token) {
  Waiting* waiting = std::visit(
      [](auto& b) -> Waiting* {
        if constexpr (std::is_base_of_v<Waiting, std::decay_t<decltype(b)>>) {
          return &b;
        } else {
          return nullptr;
        }
      },
      batches_.at(token));
  ATOMQ_CHECK(waiting != nullptr, "requests wait only for batches that answer them");
  return waiting->waiters;
}

void Node::OnPersisted(uint64_t token, const absl::Status& status, int64_t now_ms) {
  auto it = batches_.find(token);
  ATOMQ_CHECK(it != batches_.end(), "OnPersisted for a batch in flight");
  BatchRecord record = std::move(it->second);
  batches_.erase(it);
  std::visit([&](auto& b) { Reported(token, b, status, now_ms); }, record);
}

template <typename Done>
void Node::ReportTxn(uint64_t token, const std::string& id, int64_t now_ms, Done done) {
  Txn& t = txns_.at(id);
  ATOMQ_CHECK(t.batch == token, "one batch in flight per transaction");
  t.batch = 0;
  std::vector<Deferred> deferred = std::exchange(t.deferred, {});
  done(t);  // may erase `t`
  Replay(std::move(deferred), id, now_ms);
}

// --- a transaction's batch: its transition, then the calls deferred behind it ---

void Node::Reported(uint64_t token, PrepareBatch& b, const absl::Status& status, int64_t now_ms) {
  ReportTxn(token, b.txn_id, now_ms, [&](Txn& t) { PrepareDone(t, b, status, now_ms); });
}

void Node::Reported(uint64_t token, PreCommitBatch& b, const absl::Status& status, int64_t now_ms) {
  ReportTxn(token, b.txn_id, now_ms, [&](Txn& t) { PreCommitDone(t, b, status); });
}

void Node::Reported(uint64_t token, CommitBatch& b, const absl::Status& status, int64_t now_ms) {
  ReportTxn(token, b.txn_id, now_ms,
            [&](Txn& t) { CommitDone(t, b.settled_by, b.waiters, status); });
  ResolveDone(b.resolution, status);
}

void Node::Reported(uint64_t token, AbortBatch& b, const absl::Status& status, int64_t now_ms) {
  ReportTxn(token, b.txn_id, now_ms, [&](Txn& t) { AbortDone(t, b, status, now_ms); });
  ResolveDone(b.resolution, status);
}

void Node::Reported(uint64_t token, BallotBatch& b, const absl::Status& status, int64_t now_ms) {
  ReportTxn(token, b.txn_id, now_ms, [&](Txn& t) { BallotDone(t, b, status, now_ms); });
}

void Node::Reported(uint64_t token, OnePhaseBatch& b, const absl::Status& status, int64_t now_ms) {
  ReportTxn(token, b.txn_id, now_ms, [&](Txn& t) { OnePhaseDone(t, b, status, now_ms); });
}

// --- the others ---

void Node::Reported(uint64_t token, PresumedAbortBatch& b, const absl::Status& status, int64_t) {
  PresumedAbortDone(token, b, status);
}

void Node::Reported(uint64_t, HeuristicConflictBatch& b, const absl::Status& status, int64_t) {
  HeuristicDone(b, status);
}

void Node::Reported(uint64_t, ForgettableBatch& b, const absl::Status& status, int64_t) {
  if (!status.ok()) {
    Log(absl::StrCat("END notices (txn ", b.txn_id,
                     " and any sent with it) not recorded: ", status.ToString()));
  }
}

void Node::Reported(uint64_t, CollectBatch& b, const absl::Status& status, int64_t) {
  CollectDone(b, status);
}

void Node::Reported(uint64_t, CreateQueueBatch& b, const absl::Status& status, int64_t) {
  CreateDone(b, status);
}

void Node::Reported(uint64_t, DeleteQueueBatch& b, const absl::Status& status, int64_t) {
  DeleteDone(b, status);
}

void Node::Reported(uint64_t token, PurgeQueueBatch& b, const absl::Status& status,
                    int64_t now_ms) {
  PurgeDone(token, b, status, now_ms);
}

void Node::Reported(uint64_t, AckBatch& b, const absl::Status& status, int64_t now_ms) {
  AckDone(b, status, now_ms);
}

void Node::Reported(uint64_t token, MoveBatch& b, const absl::Status& status, int64_t now_ms) {
  MoveDone(token, b, status, now_ms);
}

void Node::Reported(uint64_t token, SendBatch& b, const absl::Status& status, int64_t) {
  SendDone(token, b, status);
}

}  // namespace atomq::participant
