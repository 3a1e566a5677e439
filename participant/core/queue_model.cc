#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/op_limits.h"
#include "common/validate.h"
#include "participant/core/node.h"

namespace atomq::participant {

Queue* QueueModel::Find(const std::string& name) {
  auto it = by_name.find(name);
  if (it == by_name.end() || it->second.delete_token != 0) return nullptr;
  return &it->second;
}

const Queue* QueueModel::Find(const std::string& name) const {
  auto it = by_name.find(name);
  if (it == by_name.end() || it->second.delete_token != 0) return nullptr;
  return &it->second;
}

Queue* QueueModel::FindById(uint64_t id) {
  auto it = names.find(id);
  if (it == names.end()) return nullptr;
  auto q = by_name.find(it->second);
  return q == by_name.end() ? nullptr : &q->second;
}

absl::Status QueueModel::NoQueue(const std::string& name) const {
  return absl::NotFoundError(
      absl::StrCat("queue \"", name, "\" does not exist on ", config.participant_id));
}

bool Expired(const Message& m, int64_t now_ms) { return now_ms >= m.lease_expires_ms; }

// Takes a message out of `ready`/`leases`, e.g. to pin it.
void Detach(Queue& q, uint64_t seq, const Message& m) {
  if (q.ready.erase(seq) == 0) q.leases.erase({m.lease_expires_ms, seq});
}

// Puts a message that is neither pinned nor being acked back where its
// lease says.
void QueueModel::Restore(Queue& q, uint64_t seq, Message& m, int64_t now_ms) {
  ATOMQ_CHECK(m.pinned_by.empty() && m.ack_token == 0, "restoring a held message");
  if (!m.lease_token.empty() && !Expired(m, now_ms)) {
    q.leases.insert({m.lease_expires_ms, seq});
  } else if (q.on_disk > 0 && seq >= q.disk_from && m.delivery_count == 0) {
    // Pinned since recovery, never delivered: back to the backlog on disk,
    // so that delivery stays in sequence order.
    q.messages.erase(seq);
    q.on_disk++;
    Woke(q);
  } else {
    m.lease_token.clear();
    q.ready.insert(seq);
    Woke(q);
  }
}

// A message a durable batch made visible (commit, Send, dead-lettering).
// In memory while the queue's backlog is all there and the window has
// room; else on disk only, after the rest of the backlog.
void QueueModel::Visible(Queue& q, uint64_t seq) {
  q.counts.enqueued++;
  ATOMQ_CHECK(seq >= q.durable_next_sequence && q.messages.count(seq) == 0,
              "a queue's sequences become durable in ascending order");
  q.durable_next_sequence = seq + 1;
  if (q.on_disk == 0 && q.ready.size() < config.queue_memory_window) {
    q.messages.emplace(seq, Message{});
    q.ready.insert(seq);
  } else {
    if (q.on_disk == 0) q.disk_from = seq;
    ATOMQ_CHECK(seq >= q.disk_from, "the backlog on disk grows at its end");
    q.on_disk++;
  }
  Woke(q);
}

// Stored messages of `q` in [from, to), to capped at what is reported
// durable (a later batch may be in storage already, not yet reported).
absl::StatusOr<std::vector<uint64_t>> QueueModel::ScanDisk(const Queue& q, uint64_t from,
                                                           uint64_t to, uint32_t limit) const {
  ATOMQ_CHECK(view != nullptr, "a backlog on disk is read through the DurableView");
  return view->ScanMessages(q.rec.id(), from, std::min(to, q.durable_next_sequence), limit);
}

// Reads the next part of the backlog on disk into memory, up to the window.
absl::Status QueueModel::PageIn(Queue& q) {
  const uint32_t window = config.queue_memory_window;
  const uint32_t limit =
      q.ready.size() < window ? window - static_cast<uint32_t>(q.ready.size()) : 1;
  absl::StatusOr<std::vector<uint64_t>> seqs =
      ScanDisk(q, q.disk_from, q.durable_next_sequence, limit);
  if (!seqs.ok()) {
    out.log.push_back(
        absl::StrCat("queue ", q.rec.name(),
                     ": reading its backlog from storage failed: ", seqs.status().ToString()));
    return seqs.status();
  }
  for (uint64_t seq : *seqs) {
    ATOMQ_CHECK(seq >= q.disk_from, "a backlog scan reads ascending from where it stopped");
    if (!q.messages.emplace(seq, Message{}).second) continue;  // pinned since recovery
    ATOMQ_CHECK(q.on_disk > 0, "the backlog on disk holds what it counts");
    q.on_disk--;
    q.ready.insert(seq);
  }
  const bool whole = seqs->size() < limit;
  q.disk_from = whole ? q.durable_next_sequence : seqs->back() + 1;
  ATOMQ_CHECK(!whole || q.on_disk == 0, "a whole backlog scan finds every message it counts");
  return absl::OkStatus();
}

// Erases of the backlog on disk, read in chunks of the window.
absl::Status QueueModel::EraseBacklog(const Queue& q, std::vector<Write>* writes) const {
  const uint32_t chunk = std::max<uint32_t>(1, config.queue_memory_window);
  uint64_t from = q.disk_from, found = 0;
  for (;;) {
    absl::StatusOr<std::vector<uint64_t>> seqs = ScanDisk(q, from, q.durable_next_sequence, chunk);
    if (!seqs.ok()) return seqs.status();
    for (uint64_t seq : *seqs) {
      if (q.messages.count(seq) > 0) continue;  // erased with those in memory
      writes->push_back(Erase(kMessagesDb, schema::MessageKey(q.rec.id(), seq)));
      found++;
    }
    if (seqs->size() < chunk) break;
    from = seqs->back() + 1;
  }
  ATOMQ_CHECK(found == q.on_disk, "the backlog on disk holds what it counts");
  return absl::OkStatus();
}

// Expired leases: back to ready, or to the dead-letter queue once the
// message reached max_deliveries.
void Node::ExpireQueueLeases(Queue& q, int64_t now_ms) {
  while (!q.leases.empty() && q.leases.begin()->first <= now_ms) {
    uint64_t seq = q.leases.begin()->second;
    q.leases.erase(q.leases.begin());
    Message& m = q.messages.at(seq);
    m.lease_token.clear();
    if (MaxedOut(q, m) && StartMove(q, seq, "max-deliveries", std::nullopt, now_ms)) continue;
    q.ready.insert(seq);
    queues_.Woke(q);
  }
}

v1::QueueInfo QueueModel::Info(const Queue& q) const {
  v1::QueueInfo info;
  info.set_name(q.rec.name());
  info.set_version(q.durable_next_sequence);
  // What a purge in flight erases is neither ready nor leased any more.
  info.set_ready(q.ready.size() + q.on_disk - q.purging_on_disk);
  info.set_leased(q.messages.size() - q.ready.size() - q.pinned - q.purging_in_memory);
  info.set_pending_in_txn(q.pending_enqueues + q.pinned);
  info.set_created_unix_ms(q.rec.created_unix_ms());
  info.set_max_deliveries(q.rec.max_deliveries());
  info.set_dead_letter_queue(q.rec.dead_letter_queue());
  info.set_enqueued_total(q.counts.enqueued);
  info.set_delivered_total(q.counts.delivered);
  info.set_redelivered_total(q.counts.redelivered);
  info.set_acked_total(q.counts.acked);
  info.set_dead_lettered_total(q.counts.dead_lettered);
  return info;
}

std::set<std::string> TouchedQueues(const v1::PreparedRecord& rec) {
  std::set<std::string> names;
  for (const v1::Op& op : rec.ops()) {
    names.insert(op.has_enqueue() ? op.enqueue().queue() : op.ack().queue());
  }
  return names;
}

void Node::Pin(Txn& t) {
  const std::string& id = t.rec.txn_id();
  ATOMQ_CHECK(t.bytes == 0, "a transaction is pinned once");
  t.bytes = EnqueueBytes(t.rec.ops());
  prepared_bytes_ += t.bytes;
  for (const std::string& name : TouchedQueues(t.rec)) {
    Queue* q = queues_.Find(name);
    ATOMQ_CHECK(q != nullptr, "a prepared transaction's queue exists");
    q->txn_refs++;
  }
  for (const v1::Op& op : t.rec.ops()) {
    if (op.has_enqueue()) {
      queues_.by_name.at(op.enqueue().queue()).pending_enqueues++;
      t.enqueues++;
      continue;
    }
    t.acks++;
    Queue& q = queues_.by_name.at(op.ack().queue());
    auto m = q.messages.find(op.ack().sequence());
    // Recover may find a message gone; the commit then erases nothing.
    if (m == q.messages.end()) continue;
    queues_.PinMessage(q, m->first, m->second, id);
  }
}

void Node::Unpin(Txn& t, int64_t now_ms) {
  for (const v1::Op& op : t.rec.ops()) {
    if (op.has_enqueue()) {
      Queue& q = queues_.by_name.at(op.enqueue().queue());
      ATOMQ_CHECK(q.pending_enqueues > 0, "a queue counts the enqueues pending on it");
      q.pending_enqueues--;
      continue;
    }
    queues_.UnpinMessage(queues_.by_name.at(op.ack().queue()), op.ack().sequence(), t.rec.txn_id(),
                         true, now_ms);
  }
  for (const std::string& name : TouchedQueues(t.rec)) queues_.by_name.at(name).txn_refs--;
}

absl::StatusOr<const Queue*> Node::ReceivableQueue(const std::string& name,
                                                   uint32_t* max_messages) const {
  absl::Status s = ValidateQueueName(name);
  if (!s.ok()) return s;
  const Queue* q = queues_.Find(name);
  if (q == nullptr) return queues_.NoQueue(name);
  if (*max_messages == 0) *max_messages = 1;
  if (*max_messages > config_.receive_max) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_messages is ", *max_messages, "; at most --receive_max=", config_.receive_max));
  }
  return q;
}

absl::StatusOr<std::vector<Lease>> Node::Peek(const v1::ReceiveRequest& req) const {
  if (req.auto_ack() || req.wait_ms() > 0) {
    return absl::InvalidArgumentError(
        "peek takes neither auto_ack nor wait_ms: it delivers nothing and answers at once");
  }
  uint32_t max = req.max_messages();
  absl::StatusOr<const Queue*> found = ReceivableQueue(req.queue(), &max);
  if (!found.ok()) return found.status();
  const Queue& q = **found;
  std::vector<Lease> out;
  auto add = [&](uint64_t seq, uint32_t delivery_count) {
    out.push_back(Lease{req.queue(), q.rec.id(), seq, delivery_count, "", 0});
  };
  for (uint64_t seq : q.ready) {
    if (out.size() == max) return out;
    const Message& m = q.messages.at(seq);
    if (!MaxedOut(q, m)) add(seq, m.delivery_count);  // else a Receive dead-letters it
  }
  // The backlog on disk follows, read where it is (a purge in flight erases it).
  uint64_t from = q.disk_from;
  while (out.size() < max && q.on_disk > 0 && q.purge_token == 0) {
    const uint32_t want = max - static_cast<uint32_t>(out.size());
    absl::StatusOr<std::vector<uint64_t>> seqs =
        queues_.ScanDisk(q, from, q.durable_next_sequence, want);
    if (!seqs.ok()) {
      if (out.empty()) return seqs.status();
      break;
    }
    for (uint64_t seq : *seqs) {
      if (q.messages.count(seq) == 0) add(seq, 0);  // else pinned since recovery
    }
    if (seqs->size() < want) break;
    from = seqs->back() + 1;
  }
  return out;
}

absl::StatusOr<std::vector<Lease>> Node::Receive(const std::string& name, uint32_t max_messages,
                                                 uint32_t lease_ms, int64_t now_ms) {
  absl::StatusOr<const Queue*> found = ReceivableQueue(name, &max_messages);
  if (!found.ok()) return found.status();
  Queue* q = queues_.Find(name);
  if (lease_ms == 0) lease_ms = config_.lease_ms;
  if (lease_ms > config_.lease_ms_max) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease_ms is ", lease_ms, "; at most --lease_ms_max=", config_.lease_ms_max));
  }
  ExpireQueueLeases(*q, now_ms);
  std::vector<Lease> leases;
  absl::Status paged;
  while (leases.size() < max_messages) {
    // Not while a purge erases the backlog.
    if (paged.ok() && q->on_disk > 0 && q->purge_token == 0 &&
        q->ready.size() * 2 < config_.queue_memory_window) {
      paged = queues_.PageIn(*q);
    }
    if (q->ready.empty()) break;
    const uint64_t seq = *q->ready.begin();
    q->ready.erase(q->ready.begin());
    Message& m = q->messages.at(seq);
    ATOMQ_CHECK(m.pinned_by.empty() && m.ack_token == 0, "a held message is never delivered");
    ATOMQ_CHECK(q->on_disk == 0 || seq < q->disk_from,
                "ready messages in memory precede the backlog on disk");
    if (MaxedOut(*q, m) && StartMove(*q, seq, "max-deliveries", std::nullopt, now_ms)) continue;
    m.delivery_count++;
    q->counts.delivered++;
    if (m.delivery_count > 1) q->counts.redelivered++;
    m.lease_token = queues_.NewLeaseToken();
    m.lease_expires_ms = now_ms + lease_ms;
    q->leases.insert({m.lease_expires_ms, seq});
    leases.push_back(
        Lease{name, q->rec.id(), seq, m.delivery_count, m.lease_token, m.lease_expires_ms});
  }
  if (leases.empty() && !paged.ok()) return paged;
  return leases;
}

absl::Status Node::NotCurrentLease(const std::string& token, const std::string& msg) {
  return absl::FailedPreconditionError(absl::StrCat("lease token \"", Clip(token, kLeaseTokenEcho),
                                                    "\" is not the current lease of ", msg));
}

bool CurrentLease(const Message& m, const std::string& token) {
  return !m.lease_token.empty() && ConstantTimeEquals(m.lease_token, token);
}

absl::StatusOr<Message*> Node::HeldLease(Queue& q, const std::string& msg, uint64_t seq,
                                         const std::string& token) {
  auto it = q.messages.find(seq);
  if (it == q.messages.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("message ", msg, " is not leased (already acked, or never delivered)"));
  }
  Message& m = it->second;
  if (!m.pinned_by.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("message ", msg, " is held by prepared transaction ", m.pinned_by));
  }
  if (!CurrentLease(m, token)) return NotCurrentLease(token, msg);
  return &m;
}

void Node::Ack(RequestId r, const std::string& name, uint64_t seq, const std::string& token,
               int64_t now_ms) {
  const Waiter w{ReplyKind::kAck, r};
  absl::Status s = ValidateQueueName(name);
  if (!s.ok()) return Fail(w, s);
  Queue* q = queues_.Find(name);
  if (q == nullptr) return Fail(w, queues_.NoQueue(name));
  const std::string msg = MessageName(name, seq);
  absl::StatusOr<Message*> held = HeldLease(*q, msg, seq, token);
  if (!held.ok()) return Fail(w, held.status());
  Message& m = **held;
  if (m.ack_token != 0) {
    WaitersOf(m.ack_token).push_back(w);
    return;
  }
  if (Expired(m, now_ms)) {
    return Fail(w, absl::FailedPreconditionError(
                       absl::StrCat("lease on ", msg, " expired at ", m.lease_expires_ms, " ms")));
  }
  Detach(*q, seq, m);
  m.ack_token = Submit({Erase(kMessagesDb, schema::MessageKey(q->rec.id(), seq))},
                       AckBatch{{{w}}, q->rec.id(), seq});
}

void Node::AckDone(const AckBatch& p, const absl::Status& status, int64_t now_ms) {
  Queue* q = queues_.FindById(p.queue_id);
  auto it = q ? q->messages.find(p.sequence) : std::map<uint64_t, Message>::iterator();
  if (q != nullptr && it != q->messages.end()) {
    ATOMQ_CHECK(it->second.ack_token != 0, "an acked message is held until durable");
    it->second.ack_token = 0;
    if (status.ok()) {
      q->messages.erase(it);
      q->counts.acked++;
    } else {
      queues_.Restore(*q, p.sequence, it->second, now_ms);
    }
  }
  for (const Waiter& w : p.waiters) {
    if (status.ok()) {
      Answer(w.request, absl::OkStatus(), v1::AckResponse());
    } else {
      Fail(w, status);
    }
  }
}

void QueueModel::Woke(const Queue& q) {
  if (woke.insert(q.rec.name()).second) out.ready_queues.push_back(q.rec.name());
}

bool MaxedOut(const Queue& q, const Message& m) {
  return q.rec.max_deliveries() > 0 && m.delivery_count >= q.rec.max_deliveries() &&
         !q.rec.dead_letter_queue().empty();
}

void Node::ExpireAllLeases(int64_t now_ms) {
  for (auto& [name, q] : queues_.by_name) {
    if (q.delete_token == 0 && !q.leases.empty() && q.leases.begin()->first <= now_ms) {
      ExpireQueueLeases(q, now_ms);
    }
  }
}

std::vector<v1::QueueInfo> QueueModel::List() const {
  std::vector<v1::QueueInfo> infos;
  for (const auto& [name, q] : by_name) {
    if (q.delete_token == 0) infos.push_back(Info(q));
  }
  return infos;
}

void QueueModel::PinMessage(Queue& q, uint64_t seq, Message& m, const std::string& id) {
  ATOMQ_CHECK(m.pinned_by.empty() && m.ack_token == 0, "a message is pinned by one transaction");
  Detach(q, seq, m);
  m.pinned_by = id;
  q.pinned++;
}

bool QueueModel::UnpinMessage(Queue& q, uint64_t seq, const std::string& id, bool restore,
                              int64_t now_ms) {
  auto m = q.messages.find(seq);
  if (m == q.messages.end() || m->second.pinned_by != id) return false;
  m->second.pinned_by.clear();
  ATOMQ_CHECK(q.pinned > 0, "a queue counts the messages pinned in it");
  q.pinned--;
  if (restore) Restore(q, m->first, m->second, now_ms);
  return true;
}

std::string QueueModel::NewLeaseToken() {
  uint8_t bytes[kLeaseTokenBytes];
  config.random_bytes(bytes, sizeof bytes);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof bytes));
}

const std::string& OpQueue(const v1::Op& op) {
  return op.has_enqueue() ? op.enqueue().queue() : op.ack().queue();
}

std::string MessageName(const std::string& queue, uint64_t sequence) {
  return absl::StrCat(queue, "/", sequence);
}

}  // namespace atomq::participant
