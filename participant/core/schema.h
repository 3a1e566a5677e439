// The participant's on-disk schema: its sub-databases, how their keys are
// encoded, and how RecoveredState is built from what they hold. Pure: the
// adapter (LMDB) and the simulator (maps) hand in a scan of their own.
//
// Values are records encoded by common/codec.h (EncodeRecord): what each
// sub-database holds is said at its name.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace atomq::participant {

struct RecoveredState;

// key QueueKey(name), value QueueRecord.
inline constexpr char kQueuesDb[] = "queues";
// key MessageKey(queue id, sequence), value MessageRecord; a queue's
// messages are adjacent and in sequence order.
inline constexpr char kMessagesDb[] = "messages";
// key txn id, value PreparedRecord (a PREPARED or PRECOMMITTED transaction).
inline constexpr char kPreparedDb[] = "prepared";
// key txn id, value OutcomeRecord.
inline constexpr char kOutcomesDb[] = "outcomes";
// key ProducerKey(queue id, producer id), value DedupRecord.
inline constexpr char kDedupDb[] = "dedup";
// key kMetaKey, value MetaRecord.
inline constexpr char kMetaDb[] = "meta";
inline constexpr char kMetaKey[] = "meta";
// Heuristic outcomes (operator Resolve), key = txn id, value HeuristicOutcome.
inline constexpr char kHeuristicDb[] = "heuristic";
// Outcomes the coordinator ENDED (BatchItem.forget), by time: key = the ms
// the notice came (8 bytes BE) + txn id, empty value. Entries older than
// Config::retention_ms are collected with their outcome (CollectOutcomes).
inline constexpr char kForgettableDb[] = "forgettable";

namespace schema {

// kQueuesDb: the queue's name.
std::string QueueKey(const std::string& name);

// kMessagesDb: 8-byte big-endian queue id, then 8-byte big-endian sequence,
// so that key order is (queue, sequence) order.
std::string MessageKey(uint64_t queue_id, uint64_t sequence);
struct MessageId {
  uint64_t queue_id = 0;
  uint64_t sequence = 0;
};
// nullopt for a key that is not 16 bytes (not a message key).
std::optional<MessageId> ParseMessageKey(std::string_view key);

// kDedupDb: 8-byte big-endian queue id, then the producer id; the keys of
// one queue share ProducerKeyPrefix(queue id).
std::string ProducerKey(uint64_t queue_id, const std::string& producer_id);
std::string ProducerKeyPrefix(uint64_t queue_id);

// kForgettableDb: the notice's time (ms, 8-byte big-endian, negative as 0)
// then the txn id.
std::string ForgettableKey(int64_t at_ms, const std::string& txn_id);
struct Forgettable {
  int64_t at_ms = 0;
  std::string txn_id;
};
// nullopt for a key of 8 bytes or fewer (not one ForgettableKey writes).
std::optional<Forgettable> ParseForgettableKey(std::string_view key);

// Visits every key/value of sub-database `db` in key order until `fn`
// returns false; the views are valid only during the call.
using RecordFn = std::function<bool(std::string_view key, std::string_view value)>;
using ScanFn = std::function<absl::Status(const char* db, const RecordFn& fn)>;

// Everything recovery needs, read through `scan`: every record of
// kQueuesDb, kPreparedDb, kDedupDb, kHeuristicDb and kMetaDb, and the
// messages of kMessagesDb counted per queue (not read). DATA_LOSS names the
// first record that does not decode; a failed scan answers its error.
absl::StatusOr<RecoveredState> LoadRecoveredState(const ScanFn& scan);

}  // namespace schema
}  // namespace atomq::participant
