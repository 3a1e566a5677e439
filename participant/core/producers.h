// Producer deduplication for Queue.Send: the last producer_sequence of each
// (queue, producer), bounded by Config::producers_max with least recently
// used eviction.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "atomq/v1/records.pb.h"
#include "common/storage.h"
#include "participant/core/participant_core.h"

namespace atomq::participant {

// Dedup state of one (queue, producer). `last`/`msg_sequence` include a
// Send in flight (`token`); the durable_* fields are what the disk holds.
struct Producer {
  uint64_t last = 0;
  uint64_t msg_sequence = 0;
  uint64_t used = 0;  // key in Producers::lru
  uint64_t token = 0;
  bool durable = false;
  uint64_t durable_last = 0;
  uint64_t durable_msg_sequence = 0;
};

struct Producers {
  explicit Producers(const Config& config) : config(config) {}

  // Marks `p` (under `key`) the most recently used.
  void Touch(const std::string& key, Producer& p);
  // Evicts least recently used producers (none with a Send in flight) until
  // one more fits; their records are erased by `writes`.
  absl::Status MakeRoom(std::vector<Write>* writes);
  // Erases of every producer record of a queue.
  void EraseAll(uint64_t queue_id, std::vector<Write>* writes) const;
  // Forgets every producer of a queue (its records are erased).
  void Forget(uint64_t queue_id);
  // Forgets one producer.
  void Drop(std::map<std::string, Producer>::iterator it);
  // Stored records, in their recency order; those of queues that no longer
  // exist (`queue_exists` false) are skipped.
  void Recover(std::vector<v1::DedupRecord> recs,
               const std::function<bool(uint64_t queue_id)>& queue_exists);

  const Config& config;
  std::map<std::string, Producer> by_key;  // schema::ProducerKey ->
  std::map<uint64_t, std::string> lru;     // recency stamp -> by_key key
  uint64_t next_used = 1;
};

}  // namespace atomq::participant
