#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/validate.h"
#include "participant/core/node.h"

namespace atomq::participant {

void Node::CreateQueue(RequestId r, const v1::CreateQueueRequest& req, int64_t now_ms) {
  const std::string& name = req.name();
  const Waiter w{ReplyKind::kCreate, r};
  absl::Status s = ValidateQueueName(name);
  if (!s.ok()) return Fail(w, s);
  auto it = queues_.by_name.find(name);
  if (it != queues_.by_name.end() && it->second.delete_token != 0) {
    return Fail(w, absl::FailedPreconditionError(
                       absl::StrCat("queue \"", name, "\" is being deleted; retry")));
  }
  if (it != queues_.by_name.end() || queues_.creating.count(name) > 0) {
    return Fail(w, absl::AlreadyExistsError(
                       absl::StrCat("queue \"", name, "\" exists on ", config_.participant_id)));
  }
  if (queues_.by_name.size() + queues_.creating.size() >= config_.queues_max) {
    return Fail(w, absl::ResourceExhaustedError(
                       absl::StrCat(queues_.by_name.size() + queues_.creating.size(),
                                    " queues; --queues_max=", config_.queues_max)));
  }
  s = ValidateQueueOptions(req);
  if (!s.ok()) return Fail(w, s);
  v1::QueueRecord rec;
  rec.set_max_deliveries(req.max_deliveries());
  rec.set_dead_letter_queue(req.dead_letter_queue());
  rec.set_name(name);
  rec.set_id(queues_.next_queue_id++);
  rec.set_next_sequence(1);  // 0 means "no sequence" in CommitResponse
  rec.set_created_unix_ms(now_ms);
  v1::MetaRecord meta;
  meta.set_node_id(config_.participant_id);
  meta.set_boot_count(config_.boot_count);
  meta.set_next_queue_id(queues_.next_queue_id);
  uint64_t token =
      Submit({Put(kQueuesDb, schema::QueueKey(name), rec), Put(kMetaDb, kMetaKey, meta)},
             CreateQueueBatch{{{w}}, name});
  queues_.creating.emplace(name, std::make_pair(std::move(rec), token));
}

void Node::CreateDone(const CreateQueueBatch& p, const absl::Status& status) {
  auto it = queues_.creating.find(p.name);
  ATOMQ_CHECK(it != queues_.creating.end(), "a queue being created is tracked");
  v1::QueueRecord rec = std::move(it->second.first);
  queues_.creating.erase(it);
  if (!status.ok()) {
    for (const Waiter& w : p.waiters) Fail(w, status);
    return;
  }
  ATOMQ_CHECK(queues_.names.count(rec.id()) == 0, "queue ids are unique");
  Queue& q = queues_.by_name[rec.name()];
  q.rec = rec;
  q.durable_next_sequence = rec.next_sequence();
  queues_.names[rec.id()] = rec.name();
  v1::CreateQueueResponse resp;
  *resp.mutable_queue() = queues_.Info(q);
  for (const Waiter& w : p.waiters) Answer(w.request, absl::OkStatus(), resp);
}

void Node::DeleteQueue(RequestId r, const std::string& name, int64_t now_ms) {
  const Waiter w{ReplyKind::kDelete, r};
  absl::Status s = ValidateQueueName(name);
  if (!s.ok()) return Fail(w, s);
  auto it = queues_.by_name.find(name);
  if (it == queues_.by_name.end()) return Fail(w, queues_.NoQueue(name));
  Queue& q = it->second;
  if (q.delete_token != 0) {
    WaitersOf(q.delete_token).push_back(w);
    return;
  }
  if (q.txn_refs > 0) {
    return Fail(w, absl::FailedPreconditionError(absl::StrCat(
                       "queue \"", name, "\" is used by ", Plural(q.txn_refs, "transaction"),
                       " prepared here; retry when they finish")));
  }
  s = CheckDeletable(q);
  if (!s.ok()) return Fail(w, s);
  std::vector<Write> writes;
  writes.push_back(Erase(kQueuesDb, schema::QueueKey(name)));
  for (const auto& [seq, m] : q.messages)
    writes.push_back(Erase(kMessagesDb, schema::MessageKey(q.rec.id(), seq)));
  if (q.on_disk > 0) {
    s = queues_.EraseBacklog(q, &writes);
    if (!s.ok()) return Fail(w, s);
  }
  producers_.EraseAll(q.rec.id(), &writes);
  q.delete_token = Submit(std::move(writes), DeleteQueueBatch{{{w}}, name, q.rec.id()});
}

void Node::DeleteDone(const DeleteQueueBatch& p, const absl::Status& status) {
  Queue* q = queues_.FindById(p.queue_id);
  ATOMQ_CHECK(q != nullptr && q->delete_token != 0, "a queue being deleted stays until durable");
  if (!status.ok()) {
    q->delete_token = 0;
    for (const Waiter& w : p.waiters) Fail(w, status);
    return;
  }
  ATOMQ_CHECK(q->txn_refs == 0, "no transaction prepared on a deleted queue");
  producers_.Forget(p.queue_id);
  queues_.names.erase(p.queue_id);
  queues_.by_name.erase(p.name);
  for (const Waiter& w : p.waiters) Answer(w.request, absl::OkStatus(), v1::DeleteQueueResponse());
}

absl::Status Node::ValidateQueueOptions(const v1::CreateQueueRequest& req) const {
  if (req.max_deliveries() > config_.max_deliveries_max) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_deliveries is ", req.max_deliveries(),
                     "; at most --max_deliveries_max=", config_.max_deliveries_max));
  }
  const std::string& dlq = req.dead_letter_queue();
  if (dlq.empty()) {
    if (req.max_deliveries() == 0) return absl::OkStatus();
    return absl::InvalidArgumentError(
        "max_deliveries needs a dead_letter_queue (where messages go after it)");
  }
  absl::Status s = ValidateQueueName(dlq);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("dead_letter_queue: ", s.message()));
  if (dlq == req.name()) {
    return absl::InvalidArgumentError("a queue cannot be its own dead_letter_queue");
  }
  auto it = queues_.by_name.find(dlq);
  if (it == queues_.by_name.end() || it->second.delete_token != 0) {
    return absl::NotFoundError(absl::StrCat("dead-letter queue \"", dlq, "\" does not exist on ",
                                            config_.participant_id, "; create it first"));
  }
  return absl::OkStatus();
}

absl::Status Node::CheckDeletable(const Queue& q) const {
  if (q.purge_token != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("queue \"", q.rec.name(), "\" is being purged; retry when that is answered"));
  }
  auto in = queues_.inbound.find(q.rec.id());
  if (in != queues_.inbound.end() && in->second > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("queue \"", q.rec.name(), "\" has ", Plural(in->second, "message"),
                     " being written (Send or dead-lettering); retry"));
  }
  auto names_it = [&](const v1::QueueRecord& rec) {
    return rec.dead_letter_queue() == q.rec.name() && rec.name() != q.rec.name();
  };
  for (const auto& [name, other] : queues_.by_name) {
    if (other.delete_token == 0 && names_it(other.rec)) {
      return absl::FailedPreconditionError(
          absl::StrCat("queue \"", q.rec.name(), "\" is the dead-letter queue of \"", name, "\""));
    }
  }
  for (const auto& [name, c] : queues_.creating) {
    if (names_it(c.first)) {
      return absl::FailedPreconditionError(
          absl::StrCat("queue \"", q.rec.name(), "\" is the dead-letter queue of \"", name, "\""));
    }
  }
  return absl::OkStatus();
}

bool Node::StartMove(Queue& q, uint64_t seq, const std::string& reason,
                     std::optional<RequestId> nack, int64_t now_ms) {
  Message& m = q.messages.at(seq);
  ATOMQ_CHECK(m.pinned_by.empty() && m.ack_token == 0, "only a free message is dead-lettered");
  Queue* dlq = queues_.Find(q.rec.dead_letter_queue());
  if (dlq == nullptr) return false;
  std::optional<v1::MessageRecord> rec =
      view_ == nullptr ? std::nullopt : view_->FindMessage(q.rec.id(), seq);
  if (!rec) {
    Log(absl::StrCat("queue ", q.rec.name(), " message ", seq,
                     " could not be read for dead-lettering; left in the queue"));
    return false;
  }
  auto& headers = *rec->mutable_headers();
  headers["x-dead-letter-queue"] = q.rec.name();
  headers["x-dead-letter-sequence"] = absl::StrCat(seq);
  headers["x-dead-letter-reason"] = reason;
  headers["x-delivery-count"] = absl::StrCat(m.delivery_count);
  rec->set_enqueued_unix_ms(now_ms);
  const uint64_t to_seq = dlq->rec.next_sequence();
  ATOMQ_CHECK(dlq->messages.count(to_seq) == 0 && to_seq >= dlq->durable_next_sequence,
              "a sequence is never reused");
  dlq->rec.set_next_sequence(to_seq + 1);
  Detach(q, seq, m);
  m.lease_token.clear();
  m.ack_token = Submit({Put(kMessagesDb, schema::MessageKey(dlq->rec.id(), to_seq), *rec),
                        Put(kQueuesDb, schema::QueueKey(dlq->rec.name()), dlq->rec),
                        Erase(kMessagesDb, schema::MessageKey(q.rec.id(), seq))},
                       MoveBatch{q.rec.id(), seq, dlq->rec.id(), to_seq, nack});
  queues_.inbound[dlq->rec.id()]++;
  return true;
}

void Node::MoveDone(uint64_t token, const MoveBatch& mv, const absl::Status& status,
                    int64_t now_ms) {
  if (--queues_.inbound[mv.to_queue_id] == 0) queues_.inbound.erase(mv.to_queue_id);
  Queue* from = queues_.FindById(mv.from_queue_id);
  Message* m = nullptr;
  if (from != nullptr) {
    auto f = from->messages.find(mv.from_sequence);
    if (f != from->messages.end() && f->second.ack_token == token) m = &f->second;
  }
  if (!status.ok()) {
    if (m != nullptr) {
      m->ack_token = 0;
      queues_.Restore(*from, mv.from_sequence, *m, now_ms);
    }
    if (mv.nack) Answer(*mv.nack, status, v1::NackResponse());
    return;
  }
  if (m != nullptr) {
    from->messages.erase(mv.from_sequence);
    from->counts.dead_lettered++;
  }
  Queue* to = queues_.FindById(mv.to_queue_id);
  ATOMQ_CHECK(to != nullptr, "a dead-letter queue outlives the moves into it");
  queues_.Visible(*to, mv.to_sequence);
  if (mv.nack) {
    v1::NackResponse resp;
    resp.set_dead_lettered(true);
    resp.set_dead_letter_sequence(mv.to_sequence);
    Answer(*mv.nack, absl::OkStatus(), resp);
  }
}

void Node::Nack(RequestId r, const v1::NackRequest& req, int64_t now_ms) {
  const Waiter w{ReplyKind::kNack, r};
  const std::string& name = req.queue();
  const uint64_t seq = req.sequence();
  absl::Status s = ValidateQueueName(name);
  if (!s.ok()) return Fail(w, s);
  if (req.reason().size() > config_.payload_bytes_max) {
    return Fail(w, absl::InvalidArgumentError(absl::StrCat(
                       "reason is ", req.reason().size(),
                       " bytes; at most --payload_bytes_max=", config_.payload_bytes_max)));
  }
  Queue* q = queues_.Find(name);
  if (q == nullptr) return Fail(w, queues_.NoQueue(name));
  const std::string msg = MessageName(name, seq);
  absl::StatusOr<Message*> held = HeldLease(*q, msg, seq, req.lease_token());
  if (!held.ok()) return Fail(w, held.status());
  Message& m = **held;
  if (m.ack_token != 0) return Fail(w, NotCurrentLease(req.lease_token(), msg));
  if (Expired(m, now_ms)) {
    return Fail(w, absl::FailedPreconditionError(
                       absl::StrCat("lease on ", msg, " expired at ", m.lease_expires_ms, " ms")));
  }
  if (req.dead_letter() && q->rec.dead_letter_queue().empty()) {
    return Fail(w, absl::FailedPreconditionError(
                       absl::StrCat("queue \"", name, "\" has no dead-letter queue")));
  }
  if (req.dead_letter() || MaxedOut(*q, m)) {
    const std::string reason = !req.dead_letter()     ? "max-deliveries"
                               : req.reason().empty() ? "nack"
                                                      : req.reason();
    if (StartMove(*q, seq, reason, r, now_ms)) return;
    if (req.dead_letter()) {
      return Fail(
          w, absl::InternalError(absl::StrCat("message ", msg, " could not be read; not moved")));
    }
  }
  Detach(*q, seq, m);
  m.lease_token.clear();
  q->ready.insert(seq);
  queues_.Woke(*q);
  Answer(r, absl::OkStatus(), v1::NackResponse());
}

}  // namespace atomq::participant
