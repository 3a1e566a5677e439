// The durable log on a real store: what a replica finds when it restarts,
// after appends, a replaced suffix, compaction and an installed snapshot;
// damaged records refuse to load; messages survive the wire and bad ones
// are refused.
#include "replication/raft_log.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "common/temp_dir.h"
#include "gtest/gtest.h"
#include "replication/raft_wire.h"

namespace atomq::replication {
namespace {

class Disk {
 public:
  // A new one-member group's first state is on it (`boot`), tracked by `log`.
  Disk()
      : boot(RaftEngine::Bootstrap({Member{1, "r1", MemberRole::kVoter}})),
        log(DurableState{}),
        dir_("atomq_raft_log_test") {
    Open();
    Write(log.Initialize(boot));
  }
  ~Disk() { storage_.reset(); }
  void Open() {
    storage_.reset();
    LmdbOptions o;
    o.dir = dir_.path();
    o.dbs = RaftLog::Dbs();
    o.map_size_mb = 64;
    storage_ = std::move(OpenLmdbStorage(o)).value();
  }
  Storage* storage() { return storage_.get(); }
  // `n` entries of `term` from index `from` on, through the log.
  void Append(uint64_t from, int n, uint64_t term, const std::string& data) {
    RaftUpdate u;
    u.entries_index = from;
    for (int i = 0; i < n; ++i) u.entries.push_back(LogEntry{term, EntryType::kCommand, data});
    Write(log.Persist(u));
  }
  void Write(Batch b) {
    if (b.writes.empty()) return;
    ASSERT_TRUE(storage_->Write(std::move(b)).ok());
  }

  const DurableState boot;
  RaftLog log;

 private:
  TempDir dir_;
  std::unique_ptr<Storage> storage_;
};

std::unique_ptr<RaftEngine> NewEngine(uint64_t id) {
  RaftEngine::Options o;
  o.id = id;
  o.address = "r1";
  return std::move(RaftEngine::Create(o)).value();
}

// One member: it elects itself, and every entry commits once stored.
TEST(RaftLogTest, ASingleMemberGroupRestartsWithWhatItCommitted) {
  Disk disk;
  const DurableState& boot = disk.boot;
  RaftLog& log = disk.log;
  std::unique_ptr<RaftEngine> e = NewEngine(1);
  uint64_t now = 0;
  // Persists each update before the next event, as a host does.
  auto handle = [&](absl::StatusOr<RaftUpdate> u) {
    while (true) {
      ASSERT_TRUE(u.ok()) << u.status();
      disk.Write(log.Persist(*u));
      if (!u->entries_index.has_value()) return;
      u = e->PersistedEntries(++now, u->write);
    }
  };
  handle(e->Start(now, boot));
  handle(e->Timeout(now += 2000));
  ASSERT_EQ(e->state(), RaftState::kLeader);
  for (int i = 0; i < 50; ++i) {
    handle(e->Submit(++now, {LogEntry{0, EntryType::kCommand, absl::StrCat("m", i)}}));
  }
  const uint64_t committed = e->commit_index();
  EXPECT_GE(committed, 51u);
  const uint64_t term = e->term();

  disk.Open();
  absl::StatusOr<DurableState> d = RaftLog::Load(disk.storage());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->term, term);
  EXPECT_EQ(d->first_index, 1u);
  ASSERT_EQ(d->entries.size(), e->last_index());
  EXPECT_EQ(d->entries.back().data, "m49");
  e = NewEngine(1);
  log = RaftLog(*d);
  handle(e->Start(++now, *d));
  handle(e->Timeout(now += 2000));
  ASSERT_EQ(e->state(), RaftState::kLeader);
  handle(e->Submit(++now, {LogEntry{0, EntryType::kCommand, "after"}}));
  EXPECT_GT(e->commit_index(), committed);
}

TEST(RaftLogTest, AReplacedSuffixIsGoneFromTheDisk) {
  Disk disk;
  RaftLog& log = disk.log;
  disk.Append(2, 5, 1, "old");
  RaftUpdate v;
  v.term_or_vote = true;
  v.term = 2;
  v.vote = 3;
  v.entries_index = 4;
  v.entries.push_back(LogEntry{2, EntryType::kCommand, "new"});
  disk.Write(log.Persist(v));
  absl::StatusOr<DurableState> d = RaftLog::Load(disk.storage());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->term, 2u);
  EXPECT_EQ(d->vote, 3u);
  ASSERT_EQ(d->entries.size(), 4u);  // 1..4
  EXPECT_EQ(d->entries[3].data, "new");
  EXPECT_EQ(log.last_index(), 4u);
}

TEST(RaftLogTest, CompactionAndAnInstalledSnapshotLoadAsTheEngineStartsFromThem) {
  Disk disk;
  const DurableState& boot = disk.boot;
  RaftLog& log = disk.log;
  disk.Append(2, 20, 1, "x");
  SnapshotPoint p{15, 1, boot.entries[0].data, 1};
  disk.Write(log.Compact(p, 12));
  absl::StatusOr<DurableState> d = RaftLog::Load(disk.storage());
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE(d->snapshot.has_value());
  EXPECT_EQ(d->snapshot->index, 15u);
  EXPECT_EQ(d->first_index, 12u);
  EXPECT_EQ(d->entries.size(), 10u);  // 12..21
  EXPECT_TRUE(NewEngine(1)->Start(0, *d).ok());

  SnapshotPoint q{40, 2, boot.entries[0].data, 1};
  disk.Write(log.Install(q));
  d = RaftLog::Load(disk.storage());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->snapshot->index, 40u);
  EXPECT_EQ(d->first_index, 41u);
  EXPECT_TRUE(d->entries.empty());
  EXPECT_TRUE(NewEngine(1)->Start(0, *d).ok());
  EXPECT_EQ(log.first_index(), 41u);
}

TEST(RaftLogTest, ADamagedOrMissingEntryRefusesToLoad) {
  Disk disk;
  disk.Append(2, 3, 1, "x");
  disk.Write(Batch{0, {Write{"raft_log", EncodeU64(3), "garbage", false}}});
  EXPECT_EQ(RaftLog::Load(disk.storage()).status().code(), absl::StatusCode::kDataLoss);
  disk.Write(Batch{0, {Write{"raft_log", EncodeU64(3), "", true}}});
  absl::StatusOr<DurableState> d = RaftLog::Load(disk.storage());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(d.status().message().find("gap"), std::string::npos) << d.status();
}

TEST(RaftWireTest, MessagesSurviveTheWireAndBadOnesAreRefused) {
  RaftMessage m;
  m.type = MessageType::kAppendEntries;
  m.term = 7;
  m.prev_log_index = 41;
  m.prev_log_term = 6;
  m.leader_commit = 40;
  m.entries = {LogEntry{7, EntryType::kCommand, "a"}, LogEntry{7, EntryType::kChange, "b"}};
  absl::StatusOr<RaftMessage> back = FromWire(ToWire(m), 2, "127.0.0.1:7102");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->peer, 2u);
  EXPECT_EQ(back->prev_log_index, 41u);
  ASSERT_EQ(back->entries.size(), 2u);
  EXPECT_EQ(back->entries[1], m.entries[1]);

  v1::RaftMessageProto bad = ToWire(m);
  bad.set_type(99);
  EXPECT_EQ(FromWire(bad, 2, "x").status().code(), absl::StatusCode::kInvalidArgument);
  bad = ToWire(m);
  bad.mutable_entries(0)->set_type(0);
  EXPECT_EQ(FromWire(bad, 2, "x").status().code(), absl::StatusCode::kInvalidArgument);
  bad = ToWire(m);
  bad.set_capacity(1 << 20);
  EXPECT_EQ(FromWire(bad, 2, "x").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace atomq::replication
