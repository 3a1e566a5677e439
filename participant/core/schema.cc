#include "participant/core/schema.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "participant/core/participant_core.h"

namespace atomq::participant::schema {
namespace {

// Decodes every record of `db` into `out`, in key order.
template <typename Rec>
absl::Status DecodeAll(const ScanFn& scan, const char* db, std::vector<Rec>* out) {
  absl::Status bad;
  absl::Status scanned = scan(db, [&](std::string_view key, std::string_view value) {
    Rec rec;
    absl::Status st = DecodeRecord(value, &rec);
    if (!st.ok()) {
      bad = absl::DataLossError(
          absl::StrCat(db, " record \"", std::string(key), "\": ", st.message()));
      return false;
    }
    out->push_back(std::move(rec));
    return true;
  });
  if (!scanned.ok()) return scanned;
  return bad;
}

}  // namespace

std::string QueueKey(const std::string& name) { return name; }

std::string MessageKey(uint64_t queue_id, uint64_t sequence) {
  std::string key = atomq::MessageKey(queue_id, sequence);
  ATOMQ_CHECK(key.size() == 16 && DecodeU64(key) == queue_id &&
                  DecodeU64(std::string_view(key).substr(8)) == sequence,
              "a message key is the queue id then the sequence");
  return key;
}

std::optional<MessageId> ParseMessageKey(std::string_view key) {
  if (key.size() != 16) return std::nullopt;
  return MessageId{DecodeU64(key.substr(0, 8)), DecodeU64(key.substr(8, 8))};
}

std::string ProducerKeyPrefix(uint64_t queue_id) { return EncodeU64(queue_id); }

std::string ProducerKey(uint64_t queue_id, const std::string& producer_id) {
  return ProducerKeyPrefix(queue_id) + producer_id;
}

std::string ForgettableKey(int64_t at_ms, const std::string& txn_id) {
  return EncodeU64(static_cast<uint64_t>(std::max<int64_t>(0, at_ms))) + txn_id;
}

std::optional<Forgettable> ParseForgettableKey(std::string_view key) {
  if (key.size() <= 8) return std::nullopt;
  return Forgettable{static_cast<int64_t>(DecodeU64(key)), std::string(key.substr(8))};
}

absl::StatusOr<RecoveredState> LoadRecoveredState(const ScanFn& scan) {
  RecoveredState state;
  absl::Status s = DecodeAll(scan, kQueuesDb, &state.queues);
  if (s.ok()) s = DecodeAll(scan, kPreparedDb, &state.prepared);
  if (s.ok()) s = DecodeAll(scan, kDedupDb, &state.dedup);
  if (s.ok()) s = DecodeAll(scan, kHeuristicDb, &state.heuristic);
  if (!s.ok()) return s;
  // Counted per queue, not listed: a long backlog costs no memory here.
  RecoveredState::Backlog* backlog = nullptr;
  uint64_t backlog_queue = 0;
  s = scan(kMessagesDb, [&](std::string_view key, std::string_view) {
    std::optional<MessageId> m = ParseMessageKey(key);
    if (!m) return true;
    if (backlog == nullptr || m->queue_id != backlog_queue) {
      backlog = &state.messages[m->queue_id];
      backlog_queue = m->queue_id;
    }
    backlog->count++;
    backlog->last_sequence = m->sequence;  // keys ascend
    return true;
  });
  if (!s.ok()) return s;
  absl::Status bad;
  s = scan(kMetaDb, [&](std::string_view key, std::string_view value) {
    if (key != kMetaKey) return true;
    v1::MetaRecord rec;
    bad = DecodeRecord(value, &rec);
    if (!bad.ok()) {
      bad = absl::DataLossError(
          absl::StrCat(kMetaDb, " record \"", std::string(key), "\": ", bad.message()));
      return false;
    }
    state.meta = std::move(rec);
    return false;
  });
  if (!s.ok()) return s;
  if (!bad.ok()) return bad;
  return state;
}

}  // namespace atomq::participant::schema
