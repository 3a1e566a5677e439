#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/op_limits.h"
#include "common/status.h"
#include "common/validate.h"
#include "participant/core/node.h"

namespace atomq::participant {

absl::Status Node::ValidateSend(const v1::SendRequest& req, Queue** q) {
  absl::Status s = ValidateQueueName(req.queue());
  if (!s.ok()) return s;
  *q = queues_.Find(req.queue());
  if (*q == nullptr) return queues_.NoQueue(req.queue());
  ATOMQ_RETURN_IF_ERROR(CheckMessageLimits(message_limits(), "", req.payload(), req.headers()));
  if (!req.producer_id().empty()) {
    s = ValidateNodeId(req.producer_id());
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("producer_id: ", s.message()));
  } else if (req.producer_sequence() != 0) {
    return absl::InvalidArgumentError("producer_sequence without producer_id");
  }
  return absl::OkStatus();
}

bool Node::AnswerDuplicate(RequestId r, const v1::SendRequest& req, const std::string& key) {
  auto p = producers_.by_key.find(key);
  if (p == producers_.by_key.end() || req.producer_sequence() > p->second.last) return false;
  v1::SendResponse resp;
  resp.set_duplicate(true);
  if (req.producer_sequence() == p->second.last) resp.set_sequence(p->second.msg_sequence);
  producers_.Touch(key, p->second);
  // Not "done" before the original is durable.
  if (p->second.token != 0) {
    std::get<SendBatch>(batches_.at(p->second.token)).waits.emplace_back(r, std::move(resp));
  } else {
    Answer(r, absl::OkStatus(), std::move(resp));
  }
  return true;
}

void Node::SendMessage(RequestId r, const v1::SendRequest& req, int64_t now_ms) {
  Queue* q = nullptr;
  absl::Status s = ValidateSend(req, &q);
  if (!s.ok()) return Fail(Waiter{ReplyKind::kSend, r}, s);
  std::string key;
  if (!req.producer_id().empty()) {
    key = schema::ProducerKey(q->rec.id(), req.producer_id());
    if (AnswerDuplicate(r, req, key)) return;
  }
  std::vector<Write> writes;
  if (!key.empty() && producers_.by_key.count(key) == 0) {
    s = producers_.MakeRoom(&writes);
    if (!s.ok()) return Fail(Waiter{ReplyKind::kSend, r}, s);
  }
  const uint64_t seq = q->rec.next_sequence();
  ATOMQ_CHECK(q->messages.count(seq) == 0 && seq >= q->durable_next_sequence,
              "a sequence is never reused");
  q->rec.set_next_sequence(seq + 1);
  v1::MessageRecord m;
  m.set_payload(req.payload());
  *m.mutable_headers() = req.headers();
  m.set_enqueued_unix_ms(now_ms);
  writes.push_back(Put(kMessagesDb, schema::MessageKey(q->rec.id(), seq), m));
  writes.push_back(Put(kQueuesDb, schema::QueueKey(q->rec.name()), q->rec));
  if (!key.empty()) {
    Producer& p = producers_.by_key[key];
    p.last = req.producer_sequence();
    p.msg_sequence = seq;
    producers_.Touch(key, p);
    v1::DedupRecord rec;
    rec.set_queue_id(q->rec.id());
    rec.set_producer_id(req.producer_id());
    rec.set_producer_sequence(p.last);
    rec.set_sequence(seq);
    rec.set_used(p.used);
    writes.push_back(Put(kDedupDb, key, rec));
  }
  SendBatch b{q->rec.id(), seq, key, req.producer_sequence(), {}};
  v1::SendResponse resp;
  resp.set_sequence(seq);
  b.waits.emplace_back(r, std::move(resp));
  const uint64_t token = Submit(std::move(writes), std::move(b));
  if (!key.empty()) producers_.by_key.at(key).token = token;
  queues_.inbound[q->rec.id()]++;
}

void Node::SendDone(uint64_t token, SendBatch& f, const absl::Status& status) {
  if (--queues_.inbound[f.queue_id] == 0) queues_.inbound.erase(f.queue_id);
  auto p =
      f.producer_key.empty() ? producers_.by_key.end() : producers_.by_key.find(f.producer_key);
  if (!status.ok()) {
    // The sequence stays burnt; the dedup entry goes back to what is durable.
    if (p != producers_.by_key.end() && p->second.token == token) {
      if (p->second.durable) {
        p->second.last = p->second.durable_last;
        p->second.msg_sequence = p->second.durable_msg_sequence;
        p->second.token = 0;
      } else {
        producers_.Drop(p);
      }
    }
    for (const auto& [request, resp] : f.waits) Answer(request, status, v1::SendResponse());
    return;
  }
  if (p != producers_.by_key.end()) {
    if (!p->second.durable || f.producer_sequence >= p->second.durable_last) {
      p->second.durable_last = f.producer_sequence;
      p->second.durable_msg_sequence = f.sequence;
    }
    p->second.durable = true;
    if (p->second.token == token) p->second.token = 0;
  }
  Queue* q = queues_.FindById(f.queue_id);
  ATOMQ_CHECK(q != nullptr, "a queue outlives the Sends into it");
  ATOMQ_CHECK(q->messages.count(f.sequence) == 0, "a sent message gets a fresh sequence");
  queues_.Visible(*q, f.sequence);
  for (const auto& [request, resp] : f.waits) Answer(request, absl::OkStatus(), resp);
}

}  // namespace atomq::participant
