// A member's store made the seed of a new group (restore --new_group): a
// snapshot point at its applied index in place of its log, a new disk id,
// the old member ids retired, the leadership epoch and the state kept.
#include "replication/new_group.h"

#include <map>
#include <memory>

#include "common/codec.h"
#include "common/temp_dir.h"
#include "gtest/gtest.h"
#include "replication/raft_log.h"
#include "replication/replica_internal.h"
#include "replication/replica_testing.h"

namespace atomq::replication {
namespace {

std::map<std::string, std::string> All(Storage* s, const std::string& db) {
  std::map<std::string, std::string> out;
  EXPECT_TRUE(s->Scan(db, "", [&](std::string_view k, std::string_view v) {
                 out[std::string(k)] = std::string(v);
                 return true;
               }).ok());
  return out;
}

TEST(NewGroupTest, TheLogBecomesASnapshotPointAtTheVersionAndOldIdsAreRetired) {
  TempDir dir("atomq_new_group_test");
  std::unique_ptr<Storage> s = OpenReplicaStore(dir.path());
  // An old group of 1, 2, 3 whose member 1 applied entries 1..3 (term 2 at 3).
  RaftLog log(DurableState{});
  DurableState old = RaftEngine::Bootstrap({Member{1, "a"}, Member{2, "b"}, Member{3, "c"}});
  old.term = 4;
  old.vote = 2;
  old.entries.push_back(LogEntry{2, EntryType::kCommand, ""});
  old.entries.push_back(LogEntry{2, EntryType::kCommand, ""});
  old.entries.push_back(LogEntry{4, EntryType::kCommand, ""});
  ASSERT_TRUE(s->Write(log.Initialize(old)).ok());
  ASSERT_TRUE(
      s->Write(Batch{0,
                     {Write{ReplicatedStorage::kAppliedDb, kAppliedKey, EncodeU64(3), false},
                      Write{ReplicatedStorage::kAppliedDb, "epoch", EncodeU64(7), false},
                      Write{ReplicatedStorage::kDisksDb, EncodeU64(1), "d1", false},
                      Write{ReplicatedStorage::kDisksDb, EncodeU64(2), "d2", false},
                      Write{kReplicaMetaDb, kDiskKey, "d1", false},
                      Write{kReplicaMetaDb, std::string(kHeardPrefix) + EncodeU64(2), "d2", false},
                      Write{kTestDataDb, "k", "v", false}}})
          .ok());

  absl::StatusOr<Batch> writes = NewGroupWrites(s.get(), Member{9, "self"});
  ASSERT_TRUE(writes.ok()) << writes.status();
  ASSERT_TRUE(s->Write(*std::move(writes)).ok());

  absl::StatusOr<DurableState> now = RaftLog::Load(s.get());
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_TRUE(now->entries.empty());
  EXPECT_EQ(now->first_index, 4u);
  ASSERT_TRUE(now->snapshot.has_value());
  EXPECT_EQ(now->snapshot->index, 3u);
  EXPECT_EQ(now->snapshot->term, 2u);  // entry 3's
  EXPECT_EQ(now->term, 4u);
  EXPECT_EQ(now->vote, 0u);
  absl::StatusOr<std::vector<Member>> conf = DecodeConfiguration(now->snapshot->conf);
  ASSERT_TRUE(conf.ok());
  ASSERT_EQ(conf->size(), 1u);
  EXPECT_EQ((*conf)[0].id, 9u);
  EXPECT_EQ((*conf)[0].address, "self");
  EXPECT_EQ((*conf)[0].role, MemberRole::kVoter);
  // Every old id retired, the registered and the configured alike.
  const std::map<std::string, std::string> registry = All(s.get(), ReplicatedStorage::kDisksDb);
  EXPECT_EQ(registry.size(), 3u);
  for (uint64_t id : {1, 2, 3}) EXPECT_EQ(registry.at(EncodeU64(id)), kRetiredDisk) << id;
  // A new disk id at the next start, and no one heard from.
  EXPECT_TRUE(All(s.get(), kReplicaMetaDb).count(kDiskKey) == 0);
  EXPECT_EQ(All(s.get(), kReplicaMetaDb).size(), 1u);  // the state
  // The version, the epoch and the state stay.
  EXPECT_EQ(*s->Get(ReplicatedStorage::kAppliedDb, kAppliedKey).value(), EncodeU64(3));
  EXPECT_EQ(*s->Get(ReplicatedStorage::kAppliedDb, "epoch").value(), EncodeU64(7));
  EXPECT_EQ(*s->Get(kTestDataDb, "k").value(), "v");
}

TEST(NewGroupTest, AStoreThatAppliedNothingIsRefused) {
  TempDir dir("atomq_new_group_test");
  std::unique_ptr<Storage> s = OpenReplicaStore(dir.path());
  absl::StatusOr<Batch> writes = NewGroupWrites(s.get(), Member{1, "self"});
  EXPECT_EQ(writes.status().code(), absl::StatusCode::kFailedPrecondition) << writes.status();
}

}  // namespace
}  // namespace atomq::replication
