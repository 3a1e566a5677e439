#include "participant/core/schema.h"

#include <map>
#include <string>

#include "common/codec.h"
#include "gtest/gtest.h"
#include "participant/core/participant_core.h"

namespace atomq::participant::schema {
namespace {

TEST(SchemaTest, MessageKeysRoundTripAndSortByQueueThenSequence) {
  for (uint64_t q : {uint64_t{1}, uint64_t{256}, ~uint64_t{0}}) {
    for (uint64_t s : {uint64_t{0}, uint64_t{1}, uint64_t{1} << 40}) {
      std::optional<MessageId> m = ParseMessageKey(MessageKey(q, s));
      ASSERT_TRUE(m.has_value());
      EXPECT_EQ(m->queue_id, q);
      EXPECT_EQ(m->sequence, s);
    }
  }
  EXPECT_LT(MessageKey(1, 255), MessageKey(1, 256));
  EXPECT_LT(MessageKey(1, ~uint64_t{0}), MessageKey(2, 0));
  EXPECT_FALSE(ParseMessageKey("short").has_value());
  EXPECT_FALSE(ParseMessageKey(MessageKey(1, 2) + "x").has_value());
}

TEST(SchemaTest, ProducerKeysShareTheirQueuesPrefix) {
  const std::string key = ProducerKey(7, "p-1");
  EXPECT_EQ(key.compare(0, 8, ProducerKeyPrefix(7)), 0);
  EXPECT_EQ(key.substr(8), "p-1");
  EXPECT_NE(key.compare(0, 8, ProducerKeyPrefix(8)), 0);
  EXPECT_EQ(QueueKey("orders"), "orders");
}

TEST(SchemaTest, ForgettableKeysRoundTripAndSortByTime) {
  std::optional<Forgettable> f = ParseForgettableKey(ForgettableKey(1234, "t-1"));
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->at_ms, 1234);
  EXPECT_EQ(f->txn_id, "t-1");
  EXPECT_EQ(ParseForgettableKey(ForgettableKey(-5, "t"))->at_ms, 0);  // negative as 0
  EXPECT_LT(ForgettableKey(255, "z"), ForgettableKey(256, "a"));
  EXPECT_FALSE(ParseForgettableKey(ForgettableKey(9, "")).has_value());  // no id
  EXPECT_FALSE(ParseForgettableKey("1234567").has_value());
}

// A disk of sub-databases of sorted keys, as the simulator keeps it.
using FakeDisk = std::map<std::string, std::map<std::string, std::string>>;

ScanFn ScanOf(const FakeDisk& disk, int* scans = nullptr) {
  return [&disk, scans](const char* db, const RecordFn& fn) -> absl::Status {
    if (scans != nullptr) ++*scans;
    auto d = disk.find(db);
    if (d == disk.end()) return absl::OkStatus();
    for (const auto& [key, value] : d->second) {
      if (!fn(key, value)) break;
    }
    return absl::OkStatus();
  };
}

TEST(SchemaTest, LoadingReadsEveryRecordAndCountsMessagesPerQueue) {
  FakeDisk disk;
  v1::QueueRecord q;
  q.set_name("a");
  q.set_id(3);
  disk[kQueuesDb][QueueKey("a")] = EncodeRecord(q);
  for (uint64_t s : {4, 5, 9})
    disk[kMessagesDb][MessageKey(3, s)] = EncodeRecord(v1::MessageRecord());
  disk[kMessagesDb][MessageKey(8, 2)] = EncodeRecord(v1::MessageRecord());
  disk[kMessagesDb]["odd"] = "";  // not a message key: skipped
  v1::PreparedRecord p;
  p.set_txn_id("t");
  disk[kPreparedDb]["t"] = EncodeRecord(p);
  v1::DedupRecord d;
  d.set_queue_id(3);
  d.set_producer_id("p");
  disk[kDedupDb][ProducerKey(3, "p")] = EncodeRecord(d);
  v1::HeuristicOutcome h;
  h.set_txn_id("h");
  disk[kHeuristicDb]["h"] = EncodeRecord(h);
  v1::MetaRecord meta;
  meta.set_next_queue_id(4);
  disk[kMetaDb][kMetaKey] = EncodeRecord(meta);
  disk[kMetaDb]["other"] = "not a record";  // another key of the meta database

  absl::StatusOr<RecoveredState> st = LoadRecoveredState(ScanOf(disk));
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_EQ(st->queues.size(), 1u);
  EXPECT_EQ(st->queues[0].name(), "a");
  ASSERT_EQ(st->messages.size(), 2u);
  EXPECT_EQ(st->messages.at(3).count, 3u);
  EXPECT_EQ(st->messages.at(3).last_sequence, 9u);
  EXPECT_EQ(st->messages.at(8).count, 1u);
  ASSERT_EQ(st->prepared.size(), 1u);
  EXPECT_EQ(st->prepared[0].txn_id(), "t");
  ASSERT_EQ(st->dedup.size(), 1u);
  EXPECT_EQ(st->dedup[0].producer_id(), "p");
  ASSERT_EQ(st->heuristic.size(), 1u);
  EXPECT_EQ(st->heuristic[0].txn_id(), "h");
  ASSERT_TRUE(st->meta.has_value());
  EXPECT_EQ(st->meta->next_queue_id(), 4u);
}

TEST(SchemaTest, LoadingAnEmptyDiskFindsNothing) {
  FakeDisk disk;
  absl::StatusOr<RecoveredState> st = LoadRecoveredState(ScanOf(disk));
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(st->queues.empty() && st->messages.empty() && st->prepared.empty());
  EXPECT_FALSE(st->meta.has_value());
}

TEST(SchemaTest, LoadingFailsOnACorruptRecordOrAFailedScan) {
  FakeDisk disk;
  disk[kPreparedDb]["t-9"] = "garbage";
  absl::StatusOr<RecoveredState> st = LoadRecoveredState(ScanOf(disk));
  EXPECT_EQ(st.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(st.status().message().find("prepared record \"t-9\""), std::string::npos);

  FakeDisk meta;
  meta[kMetaDb][kMetaKey] = "garbage";
  EXPECT_EQ(LoadRecoveredState(ScanOf(meta)).status().code(), absl::StatusCode::kDataLoss);

  absl::StatusOr<RecoveredState> failed =
      LoadRecoveredState([](const char*, const RecordFn&) { return absl::UnavailableError("io"); });
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace atomq::participant::schema
