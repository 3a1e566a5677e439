#include "participant/core/node.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/validate.h"

namespace atomq::participant {

using v1::TxnState;

Node::Node(Config config, const DurableView* view)
    : config_(std::move(config)),
      view_(view),
      queues_(config_, view_, out_),
      producers_(config_),
      outcomes_(config_, view_) {
  ATOMQ_CHECK(config_.queue_memory_window > 0, "a queue keeps at least one message in memory");
  ATOMQ_CHECK(static_cast<bool>(config_.random_bytes), "lease tokens need a source of randomness");
}

void Node::RequireRecovered() const { ATOMQ_CHECK(recovered_, "Recover() must come first"); }

Output Node::TakeOutput() {
  queues_.woke.clear();
  return std::exchange(out_, Output{});
}

uint64_t Node::NewTimerId() { return next_timer_id_++; }

void Node::Answer(RequestId r, absl::Status s, ReplyBody body) {
  out_.replies.push_back(Reply{r, std::move(s), std::move(body)});
}

ReplyBody Node::EmptyBody(ReplyKind k) {
  switch (k) {
    case ReplyKind::kPrepare:
      return v1::PrepareResponse();
    case ReplyKind::kPreCommit:
      return v1::PreCommitResponse();
    case ReplyKind::kCommit:
      return v1::CommitResponse();
    case ReplyKind::kAbort:
      return v1::AbortResponse();
    case ReplyKind::kQuery:
      return v1::QueryStateResponse();
    case ReplyKind::kCreate:
      return v1::CreateQueueResponse();
    case ReplyKind::kDelete:
      return v1::DeleteQueueResponse();
    case ReplyKind::kAck:
      return v1::AckResponse();
    case ReplyKind::kPromise:
      return v1::PromiseResponse();
    case ReplyKind::kAccept:
      return v1::AcceptResponse();
    case ReplyKind::kNack:
      return v1::NackResponse();
    case ReplyKind::kSend:
      return v1::SendResponse();
    case ReplyKind::kPurge:
      return v1::PurgeQueueResponse();
  }
  return v1::AckResponse();
}

void Node::Fail(const Waiter& w, absl::Status s) {
  Answer(w.request, std::move(s), EmptyBody(w.kind));
}

void Node::Vote(RequestId r, v1::Vote vote, std::string reason) {
  v1::PrepareResponse resp;
  resp.set_vote(vote);
  resp.set_reason(std::move(reason));
  Answer(r, absl::OkStatus(), resp);
}

void Node::AnswerState(RequestId r, TxnState state, bool heuristic) {
  v1::QueryStateResponse resp;
  resp.set_state(state);
  resp.set_heuristic(heuristic);
  Answer(r, absl::OkStatus(), resp);
}

void Node::AnswerSequences(RequestId r, const google::protobuf::RepeatedField<uint64_t>& seqs) {
  v1::CommitResponse resp;
  *resp.mutable_sequences() = seqs;
  Answer(r, absl::OkStatus(), resp);
}

void Node::Log(std::string line) { out_.log.push_back(std::move(line)); }

absl::Status Node::ValidateId(const Waiter& w, const std::string& id) {
  absl::Status s = ValidateTxnId(id);
  if (!s.ok()) Fail(w, s);
  return s;
}

}  // namespace atomq::participant
