// The queue model: queues, the window of their messages kept in memory,
// paging of a backlog kept on disk only, leases and the holds of prepared
// transactions (pins). Node (node.h) drives it; it submits no batches itself.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "atomq/v1/participant.pb.h"
#include "atomq/v1/records.pb.h"
#include "common/storage.h"
#include "participant/core/participant_core.h"

namespace atomq::participant {

// A committed, durable message. Payloads stay in storage.
struct Message {
  uint32_t delivery_count = 0;
  std::string lease_token;  // empty: never leased, or the lease was returned
  int64_t lease_expires_ms = 0;
  std::string pinned_by;   // a prepared transaction (or staged work) that acks it
  uint64_t ack_token = 0;  // batch of a plain Ack or a dead-lettering in flight
};

// A message in memory sits in exactly one of: `ready`, `leases` (leased,
// neither pinned nor being acked), or neither (pinned or being acked).
// The backlog on disk: `on_disk` visible messages are in storage only, none
// below `disk_from`, and every visible message below `disk_from` is in
// `messages`. While on_disk > 0, ready messages in memory precede them all.
struct Queue {
  v1::QueueRecord rec;                 // next_sequence: the next one to assign
  uint64_t durable_next_sequence = 1;  // what the disk says; the visible version
  std::map<uint64_t, Message> messages;
  std::set<uint64_t> ready;
  uint64_t on_disk = 0;
  uint64_t disk_from = 0;
  std::set<std::pair<int64_t, uint64_t>> leases;  // (expires_ms, sequence)
  uint64_t pinned = 0;                            // messages pinned by prepared transactions
  uint64_t pending_enqueues = 0;  // enqueues of prepared transactions, not yet committed
  uint32_t txn_refs = 0;          // prepared transactions touching the queue
  uint64_t delete_token = 0;      // a DeleteQueue in flight
  // A PurgeQueue in flight: its held messages in memory and those of the
  // backlog on disk it erases (still counted in on_disk; none is paged in).
  uint64_t purge_token = 0;
  uint64_t purging_in_memory = 0;
  uint64_t purging_on_disk = 0;
  ParticipantCore::QueueCounts counts;  // since this start
};

struct QueueModel {
  QueueModel(const Config& config, const DurableView* view, Output& out)
      : config(config), view(view), out(out) {}

  // Not being deleted.
  Queue* Find(const std::string& name);
  const Queue* Find(const std::string& name) const;
  // Also one being deleted.
  Queue* FindById(uint64_t id);
  absl::Status NoQueue(const std::string& name) const;
  // Puts a message that is neither pinned nor being acked back where its
  // lease says.
  void Restore(Queue& q, uint64_t seq, Message& m, int64_t now_ms);
  // A message a durable batch made visible (commit, Send, dead-lettering).
  // In memory while the queue's backlog is all there and the window has
  // room; else on disk only, after the rest of the backlog.
  void Visible(Queue& q, uint64_t seq);
  // Stored messages of `q` in [from, to), to capped at what is reported
  // durable (a later batch may be in storage already, not yet reported).
  absl::StatusOr<std::vector<uint64_t>> ScanDisk(const Queue& q, uint64_t from, uint64_t to,
                                                 uint32_t limit) const;
  // Reads the next part of the backlog on disk into memory, up to the window.
  absl::Status PageIn(Queue& q);
  // Erases of the backlog on disk, read in chunks of the window.
  absl::Status EraseBacklog(const Queue& q, std::vector<Write>* writes) const;
  // Pins the message `seq` of `q` for transaction `id` (out of ready/leases).
  void PinMessage(Queue& q, uint64_t seq, Message& m, const std::string& id);
  // Undoes PinMessage if `id` pinned `seq`; `restore` puts it back where its
  // lease says. False when `id` did not pin it.
  bool UnpinMessage(Queue& q, uint64_t seq, const std::string& id, bool restore, int64_t now_ms);
  // A fresh lease token: kLeaseTokenBytes from Config::random_bytes, in hex.
  // A restart forgets every lease, so a token from before it is refused.
  std::string NewLeaseToken();
  v1::QueueInfo Info(const Queue& q) const;
  // Names `q` in Output::ready_queues, once per output.
  void Woke(const Queue& q);
  std::vector<v1::QueueInfo> List() const;

  const Config& config;
  const DurableView* view;
  Output& out;
  uint64_t next_queue_id = 1;
  std::map<std::string, Queue> by_name;
  std::map<uint64_t, std::string> names;                                 // id -> name
  std::map<std::string, std::pair<v1::QueueRecord, uint64_t>> creating;  // name -> (rec, token)
  std::set<std::string> woke;            // names in out.ready_queues
  std::map<uint64_t, uint32_t> inbound;  // queue id -> Sends and moves in flight into it
};

bool Expired(const Message& m, int64_t now_ms);
// Whether `token` is the lease `m` is under (compared in constant time, so
// that the time of a refusal tells nothing of the token).
bool CurrentLease(const Message& m, const std::string& token);
// How much of a client's token an error message shows: enough to tell
// tokens apart, not to give one back whole.
inline constexpr size_t kLeaseTokenEcho = 8;
// Takes a message out of `ready`/`leases`, e.g. to pin it.
void Detach(Queue& q, uint64_t seq, const Message& m);
// Whether `m` goes to the dead-letter queue rather than back to ready.
bool MaxedOut(const Queue& q, const Message& m);
std::set<std::string> TouchedQueues(const v1::PreparedRecord& rec);
// The queue an op touches.
const std::string& OpQueue(const v1::Op& op);
// "queue/sequence", for messages in answers.
std::string MessageName(const std::string& queue, uint64_t sequence);

}  // namespace atomq::participant
