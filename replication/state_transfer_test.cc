// StateSource: a copy is one version of the store, read in order a piece at
// a time, without the log's sub-databases; copies at once are limited, an
// unread one expires, and a piece's checksum covers every byte.
#include "replication/state_transfer.h"

#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/temp_dir.h"
#include "gtest/gtest.h"

namespace atomq::replication {
namespace {

class StateSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LmdbOptions o;
    o.dir = dir_.path();
    o.dbs = {"data", "log", "meta"};
    o.map_size_mb = 64;
    store_ = std::move(OpenLmdbStorage(o)).value();
    Batch b;
    for (int i = 0; i < 100; ++i) {
      b.writes.push_back(Write{"data", absl::StrCat("k", 1000 + i), std::string(100, 'v')});
    }
    b.writes.push_back(Write{"log", "entry", "not copied"});
    b.writes.push_back(Write{"meta", "m", "1"});
    ASSERT_TRUE(store_->Write(std::move(b)).ok());
  }
  // Reads transfer `transfer` (0: a new one) to its end from piece `seq`.
  absl::StatusOr<std::map<std::string, std::string>> ReadAll(StateSource& s, int* pieces) {
    std::map<std::string, std::string> out;
    uint64_t transfer = 0;
    for (uint64_t seq = 0;; ++seq) {
      absl::StatusOr<StateSource::Piece> p = s.Next(transfer, seq, 0);
      if (!p.ok()) return p.status();
      transfer = p->transfer;
      ++*pieces;
      for (const Write& w : p->records) out[absl::StrCat(w.db, "/", w.key)] = w.value;
      if (p->last) return out;
    }
  }

  TempDir dir_{"atomq_state_transfer_test"};
  std::unique_ptr<Storage> store_;
};

TEST_F(StateSourceTest, ACopyIsOneVersionInPiecesWithoutTheLog) {
  StateSource::Options o;
  o.piece_bytes = 1000;
  StateSource s(store_.get(), {"log"}, o);
  absl::StatusOr<StateSource::Piece> first = s.Next(0, 0, 0);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_FALSE(first->last);
  // Written after the copy began: not in it.
  ASSERT_TRUE(store_->Write(Batch{0, {Write{"data", "k0999", "late"}}}).ok());
  std::map<std::string, std::string> got;
  for (const Write& w : first->records) got[absl::StrCat(w.db, "/", w.key)] = w.value;
  std::string last_key;
  for (uint64_t seq = 1;; ++seq) {
    absl::StatusOr<StateSource::Piece> p = s.Next(first->transfer, seq, 0);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_LE(p->records.size(), 10u);
    for (const Write& w : p->records) got[absl::StrCat(w.db, "/", w.key)] = w.value;
    if (p->last) break;
  }
  EXPECT_EQ(got.size(), 101u);
  EXPECT_EQ(got.count("data/k0999"), 0u);
  EXPECT_EQ(got.count("log/entry"), 0u);
  EXPECT_EQ(got["meta/m"], "1");
  EXPECT_EQ(got["data/k1099"], std::string(100, 'v'));
  // Ended: its id is gone; a new copy sees the late write.
  EXPECT_EQ(s.Next(first->transfer, 0, 0).status().code(), absl::StatusCode::kNotFound);
  int pieces = 0;
  absl::StatusOr<std::map<std::string, std::string>> again = ReadAll(s, &pieces);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->count("data/k0999"), 1u);
  EXPECT_GT(pieces, 10);
}

TEST_F(StateSourceTest, CopiesAtOnceAreLimitedAndAnUnreadOneExpires) {
  StateSource::Options o;
  o.transfers_max = 1;
  o.idle_ms = 1000;
  o.piece_bytes = 1000;
  StateSource s(store_.get(), {"log"}, o);
  absl::StatusOr<StateSource::Piece> a = s.Next(0, 0, 0);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(s.Next(0, 0, 500).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.Next(a->transfer, 5, 500).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.Next(0, 1, 500).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(s.Next(a->transfer, 1, 900).ok());  // read: kept 1000 ms more
  EXPECT_EQ(s.Next(0, 0, 1800).status().code(), absl::StatusCode::kResourceExhausted);
  absl::StatusOr<StateSource::Piece> b = s.Next(0, 0, 2000);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(s.Next(a->transfer, 2, 2000).status().code(), absl::StatusCode::kNotFound);
}

TEST(PieceCrcTest, EveryByteAndWhereFieldsEndCount) {
  const std::vector<Write> piece = {Write{"data", "ab", "c"}, Write{"meta", "k", "v"}};
  const uint32_t crc = PieceCrc(piece);
  std::vector<Write> changed = piece;
  changed[1].value = "w";
  EXPECT_NE(PieceCrc(changed), crc);
  changed = piece;
  changed[0].key = "a";
  changed[0].value = "bc";  // the same bytes, split elsewhere
  EXPECT_NE(PieceCrc(changed), crc);
  EXPECT_EQ(PieceCrc(piece), crc);
}

}  // namespace
}  // namespace atomq::replication
