// The outcome store: Forget and CollectOutcomes.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"
#include "participant/core/participant_core_test_fixture.h"

namespace atomq::participant {
namespace {

// ------------------------------- outcome collection (BatchItem.forget)

std::string ForgettableKey(int64_t at_ms, const std::string& id) {
  return EncodeU64(static_cast<uint64_t>(at_ms)) + id;
}

TEST_F(ParticipantCoreTest, EndedOutcomesGoAfterRetentionAndAreThenAnsweredAsUnknownOnes) {
  config_.retention_ms = 1000;
  Start();
  CreateQueue("q");
  EXPECT_EQ(Produce("t1", "q", {"a"}), (std::vector<uint64_t>{1}));
  EXPECT_EQ(Prepare(PrepareReq("t2", {EnqueueOp("q", "b")})).vote(), v1::YES);
  EXPECT_TRUE(Abort("t2").ok());

  // The END notices: one lazy index entry each, in one batch when they
  // arrive together, nothing answered.
  const int64_t noticed = now_;
  core_->Forget("t1", now_);
  core_->Forget("t2", now_);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_FALSE(o.persist[0].sync);
  ASSERT_EQ(o.persist[0].writes.size(), 2u);
  for (const Write& w : o.persist[0].writes) {
    EXPECT_EQ(w.db, kForgettableDb);
    EXPECT_TRUE(w.value.empty());
  }
  EXPECT_EQ(o.persist[0].writes[0].key, ForgettableKey(noticed, "t1"));
  EXPECT_EQ(o.persist[0].writes[1].key, ForgettableKey(noticed, "t2"));
  EXPECT_TRUE(o.replies.empty());
  Persist();
  EXPECT_EQ(store_.Count(kForgettableDb), 2u);
  Restart();  // the entries and outcomes are on disk; the cache is gone
  const std::vector<std::string> keys = {ForgettableKey(noticed, "t1"),
                                         ForgettableKey(noticed, "t2")};

  // Within the window nothing goes.
  now_ = noticed + 1000;
  EXPECT_EQ(core_->CollectOutcomes(keys, now_), 0u);
  EXPECT_TRUE(Collect().persist.empty());

  now_ += 1;
  EXPECT_EQ(core_->CollectOutcomes(keys, now_), 2u);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_FALSE(o.persist[0].sync);
  std::set<std::pair<std::string, std::string>> erased;
  for (const Write& w : o.persist[0].writes) {
    EXPECT_TRUE(w.erase);
    erased.insert({w.db, w.key});
  }
  EXPECT_EQ(erased, (std::set<std::pair<std::string, std::string>>{{kForgettableDb, keys[0]},
                                                                   {kForgettableDb, keys[1]},
                                                                   {kOutcomesDb, "t1"},
                                                                   {kOutcomesDb, "t2"}}));
  // A second look while that batch is in flight takes nothing.
  EXPECT_EQ(core_->CollectOutcomes(keys, now_), 0u);
  EXPECT_TRUE(Collect().persist.empty());
  // Until the erase is durable the outcome is still read from disk.
  EXPECT_EQ(Commit("t1"), (std::vector<uint64_t>{1}));
  EXPECT_EQ(core_->outcomes_erased(), 0u);
  Persist();
  EXPECT_EQ(core_->outcomes_erased(), 2u);
  EXPECT_EQ(store_.Count(kOutcomesDb), 0u);
  EXPECT_EQ(store_.Count(kForgettableDb), 0u);

  // Now they are answered exactly as an id never heard of ("t9"): a late
  // Commit is OK with no sequences, a late Abort records ABORTED.
  for (const char* id : {"t1", "t9"}) {
    EXPECT_TRUE(Commit(id).empty()) << id;
    EXPECT_TRUE(Logged(absl::StrCat("txn ", id, " Commit for a transaction unknown here")));
  }
  for (const char* id : {"t2", "t9"}) {
    EXPECT_TRUE(Abort(id).ok()) << id;
    EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, id)->state(), v1::STATE_ABORTED);
  }
  EXPECT_EQ(Info("q").ready(), 1u);  // the committed message stays, of course
}

TEST_F(ParticipantCoreTest, ForgetAndCollectionLeaveWhatMustStay) {
  config_.retention_ms = 100;
  Start();
  CreateQueue("q");
  // Unknown, invalid, prepared (say, by a late duplicate Prepare after a NO)
  // or not yet durable: the notice is ignored.
  core_->Forget("nope", now_);
  core_->Forget("", now_);
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  core_->Forget("t1", now_);
  EXPECT_TRUE(Collect().persist.empty());
  core_->Abort(next_req_++, "t2", now_);  // unknown: ABORTED being recorded
  EXPECT_EQ(Collect().persist.size(), 1u);
  core_->Forget("t2", now_);
  EXPECT_TRUE(Collect().persist.empty());
  Persist();

  // An entry whose id is prepared again, or whose outcome is newer than the
  // notice (the id ran again after an earlier collection), loses only itself.
  EXPECT_EQ(Produce("t3", "q", {"b"}).size(), 1u);
  const std::vector<std::string> keys = {ForgettableKey(now_ - 1000, "t1"),
                                         ForgettableKey(now_ - 1, "t3")};
  now_ += 101;
  EXPECT_EQ(core_->CollectOutcomes(keys, now_), 2u);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  for (const Write& w : o.persist[0].writes) EXPECT_EQ(w.db, kForgettableDb);
  Persist();
  EXPECT_EQ(core_->outcomes_erased(), 0u);
  EXPECT_TRUE(Txn("t1").has_value());
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t3")->state(), v1::STATE_COMMITTED);

  // A failed collection changes nothing: the next one erases.
  const int64_t noticed = now_;
  core_->Forget("t3", now_);
  Persist();
  now_ += 101;
  const std::vector<std::string> again = {ForgettableKey(noticed, "t3")};
  EXPECT_EQ(core_->CollectOutcomes(again, now_), 1u);
  Persist(absl::ResourceExhaustedError("disk full"));
  EXPECT_EQ(core_->outcomes_erased(), 0u);
  // t3's entry, and t2's own: its presumed abort was forgettable from the start.
  EXPECT_EQ(store_.Count(kForgettableDb), 2u);
  EXPECT_EQ(Commit("t3").size(), 1u);  // still known, from disk
  EXPECT_EQ(core_->CollectOutcomes(again, now_), 1u);
  Persist();
  EXPECT_EQ(core_->outcomes_erased(), 1u);
  EXPECT_FALSE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t3").has_value());
}

// Questions about ids nobody prepared here (a stranger's QueryState,
// Promise or Accept, an Abort) each record ABORTED so that a late Prepare
// votes NO; the record is collected after --retention_ms like an ended
// outcome, so that such questions cannot grow storage for good.
TEST_F(ParticipantCoreTest, PresumedAbortsOfUnknownIdsAreCollectedAfterRetention) {
  config_.retention_ms = 100;
  Start();
  CreateQueue("q");
  const int64_t asked = now_;
  for (int i = 0; i < 50; ++i) core_->QueryState(next_req_++, absl::StrCat("made-up-", i), now_);
  core_->Promise(next_req_++, "made-up-promise", 5, now_);
  Output o = Persist();
  EXPECT_EQ(o.replies.size(), 51u);
  EXPECT_EQ(store_.Count(kOutcomesDb), 51u);
  EXPECT_EQ(store_.Count(kForgettableDb), 51u);
  // Within the window the record stands: a late Prepare of the id votes NO.
  EXPECT_EQ(Prepare(PrepareReq("made-up-0", {EnqueueOp("q", "late")})).vote(), v1::NO);

  const std::vector<std::string> keys = store_.Keys(kForgettableDb);
  EXPECT_EQ(core_->CollectOutcomes(keys, asked + 100), 0u);  // not yet past retention
  EXPECT_TRUE(Collect().persist.empty());
  now_ = asked + 101;
  EXPECT_EQ(core_->CollectOutcomes(keys, now_), 51u);
  Persist();
  EXPECT_EQ(core_->outcomes_erased(), 51u);
  EXPECT_EQ(store_.Count(kOutcomesDb), 0u);
  EXPECT_EQ(store_.Count(kForgettableDb), 0u);
  // Whoever asked about a real transaction asked after its Prepares were
  // sent: a Prepare that old is refused, so forgetting the record is safe.
  v1::PrepareRequest late = PrepareReq("made-up-2", {EnqueueOp("q", "late")});
  late.set_created_unix_ms(asked);
  const v1::PrepareResponse refused = Prepare(late);
  EXPECT_EQ(refused.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(refused.reason(), "older than half of --retention_ms=100"))
      << refused.reason();
  late.set_created_unix_ms(now_ - 50);  // half the window: still fresh
  EXPECT_EQ(Prepare(late).vote(), v1::YES);
  EXPECT_TRUE(Abort("made-up-2").ok());
  // Forgotten: the id is as new again (asking records it afresh).
  core_->QueryState(next_req_, "made-up-1", now_);
  o = Persist();
  EXPECT_EQ(std::get<v1::QueryStateResponse>(Find(o, next_req_++)->body).state(),
            v1::STATE_ABORTED);
  EXPECT_TRUE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "made-up-1").has_value());
}

TEST_F(ResolveTest, HeuristicOutcomesAreNeverForgotten) {
  config_.retention_ms = 100;
  Start();
  CreateQueue("q");
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "a")}));
  EXPECT_EQ(Resolved(Req("t1", v1::COMMITTED)).state(), v1::STATE_COMMITTED);
  core_->Forget("t1", now_);
  EXPECT_TRUE(Collect().persist.empty());
  now_ += 1000;
  EXPECT_EQ(core_->CollectOutcomes({ForgettableKey(now_ - 500, "t1")}, now_), 1u);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  ASSERT_EQ(o.persist[0].writes.size(), 1u);
  EXPECT_EQ(o.persist[0].writes[0].db, kForgettableDb);
  Persist();
  EXPECT_TRUE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->has_heuristic());
  EXPECT_TRUE(Heuristic("t1").has_value());
}

}  // namespace
}  // namespace atomq::participant
