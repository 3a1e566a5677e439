// Queue.PurgeQueue: a queue's ready messages erased in one batch, answered
// with their count once durable (as RabbitMQ's queue.purge).
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/validate.h"
#include "participant/core/node.h"

namespace atomq::participant {

void Node::PurgeQueue(RequestId r, const std::string& name) {
  const Waiter w{ReplyKind::kPurge, r};
  absl::Status s = ValidateQueueName(name);
  if (!s.ok()) return Fail(w, s);
  Queue* q = queues_.Find(name);
  if (q == nullptr) return Fail(w, queues_.NoQueue(name));
  if (q->purge_token != 0) {
    return Fail(w, absl::UnavailableError(absl::StrCat(
                       "a purge of queue \"", name, "\" is in flight; retry when it is answered")));
  }
  // Ready messages only: leased, pinned and held ones are not in `ready`,
  // nor in the backlog on disk (which is never delivered).
  std::vector<uint64_t> in_memory(q->ready.begin(), q->ready.end());
  std::vector<Write> writes;
  for (uint64_t seq : in_memory) {
    writes.push_back(Erase(kMessagesDb, schema::MessageKey(q->rec.id(), seq)));
  }
  if (q->on_disk > 0) {
    s = queues_.EraseBacklog(*q, &writes);
    if (!s.ok()) return Fail(w, s);
  }
  if (writes.empty()) return Answer(r, absl::OkStatus(), v1::PurgeQueueResponse());
  const uint64_t token =
      Submit(std::move(writes), PurgeQueueBatch{{{w}}, q->rec.id(), in_memory, q->on_disk});
  for (uint64_t seq : in_memory) q->messages.at(seq).ack_token = token;
  q->ready.clear();
  q->purge_token = token;
  q->purging_in_memory = in_memory.size();
  q->purging_on_disk = q->on_disk;
}

void Node::PurgeDone(uint64_t token, const PurgeQueueBatch& b, const absl::Status& status,
                     int64_t now_ms) {
  Queue* q = queues_.FindById(b.queue_id);
  ATOMQ_CHECK(q != nullptr && q->purge_token == token, "a queue being purged stays until durable");
  q->purge_token = 0;
  q->purging_in_memory = 0;
  q->purging_on_disk = 0;
  for (uint64_t seq : b.in_memory) {
    auto it = q->messages.find(seq);
    ATOMQ_CHECK(it != q->messages.end() && it->second.ack_token == token,
                "a purged message is held until durable");
    it->second.ack_token = 0;
    if (status.ok()) {
      q->messages.erase(it);
    } else {
      queues_.Restore(*q, seq, it->second, now_ms);
    }
  }
  if (!status.ok()) {
    // The backlog on disk stays as it was counted: nothing was erased.
    for (const Waiter& w : b.waiters) Fail(w, status);
    return;
  }
  ATOMQ_CHECK(q->on_disk >= b.on_disk, "a purge erases the backlog it counted");
  // The erased backlog was its front: disk_from stays a lower bound of the rest.
  q->on_disk -= b.on_disk;
  const uint64_t purged = b.in_memory.size() + b.on_disk;
  out_.log.push_back(absl::StrCat("queue ", q->rec.name(), ": purged ", Plural(purged, "message")));
  v1::PurgeQueueResponse resp;
  resp.set_purged(purged);
  for (const Waiter& w : b.waiters) Answer(w.request, absl::OkStatus(), resp);
}

}  // namespace atomq::participant
