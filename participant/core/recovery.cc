#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/validate.h"
#include "participant/core/node.h"

namespace atomq::participant {

void Node::Recover(RecoveredState state, int64_t now_ms) {
  ATOMQ_CHECK(!recovered_, "Recover() runs once");
  recovered_ = true;
  if (state.meta) queues_.next_queue_id = std::max<uint64_t>(1, state.meta->next_queue_id());
  for (v1::QueueRecord& rec : state.queues) {
    ATOMQ_CHECK(queues_.names.count(rec.id()) == 0, "queue ids are unique");
    queues_.next_queue_id = std::max(queues_.next_queue_id, rec.id() + 1);
    queues_.names[rec.id()] = rec.name();
    Queue& q = queues_.by_name[rec.name()];
    if (rec.next_sequence() == 0) rec.set_next_sequence(1);
    q.rec = std::move(rec);
  }
  for (const auto& [queue_id, backlog] : state.messages) {
    Queue* q = queues_.FindById(queue_id);
    if (q == nullptr) continue;  // no queue record: unreachable, and erased with it
    // Guards "never reused" even against a queue record older than its messages.
    if (backlog.count > 0 && backlog.last_sequence >= q->rec.next_sequence()) {
      q->rec.set_next_sequence(backlog.last_sequence + 1);
    }
    // All on disk; Receive pages them in.
    q->on_disk = backlog.count;
    q->disk_from = 0;
  }
  for (auto& [name, q] : queues_.by_name) q.durable_next_sequence = q.rec.next_sequence();
  producers_.Recover(std::move(state.dedup),
                     [this](uint64_t id) { return queues_.FindById(id) != nullptr; });
  for (v1::HeuristicOutcome& h : state.heuristic) heuristics_[h.txn_id()] = std::move(h);
  for (v1::PreparedRecord& rec : state.prepared) {
    const std::string id = rec.txn_id();
    ATOMQ_CHECK(txns_.count(id) == 0, "one prepared record per transaction");
    Txn& t = txns_[id];
    t.rec = std::move(rec);
    t.durable = true;
    t.in_doubt = true;
    LoadAcked(t);
    Pin(t);
    t.backoff_ms = std::max<uint32_t>(1, config_.resend_initial_ms);
    ArmTimer(t, now_ms);
  }
}

void Node::LoadAcked(const Txn& t) {
  for (const v1::Op& op : t.rec.ops()) {
    if (!op.has_ack()) continue;
    Queue* q = queues_.Find(op.ack().queue());
    const uint64_t seq = op.ack().sequence();
    if (q == nullptr || q->on_disk == 0 || q->messages.count(seq) > 0) continue;
    absl::StatusOr<std::vector<uint64_t>> found = queues_.ScanDisk(*q, seq, seq + 1, 1);
    ATOMQ_CHECK(found.ok(), "storage is readable at recovery");
    if (found->empty()) continue;
    q->messages.emplace(seq, Message{});
    q->on_disk--;
  }
}

std::vector<v1::QueueInfo> Node::ListQueues() const { return queues_.List(); }

}  // namespace atomq::participant
