// In doubt: asking the coordinator, then the peers, with backoff.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"
#include "participant/core/participant_core_test_fixture.h"

namespace atomq::participant {
namespace {

// --- recovery and in doubt ---

TEST_F(ParticipantCoreTest, InDoubtTimerQueriesCoordinatorAndStaleTimersAreIgnored) {
  Start();
  CreateQueue("q");
  core_->Prepare(1, PrepareReq("t1", {EnqueueOp("q", "a")}), now_);
  Collect();
  Output o = Persist();
  ASSERT_EQ(o.timers.size(), 1u);
  uint64_t timer = o.timers[0].timer_id;
  now_ = o.timers[0].at_ms;
  core_->OnTimer(timer, now_);
  o = Collect();
  ASSERT_EQ(o.queries.size(), 1u);
  EXPECT_TRUE(o.queries[0].to_coordinator);
  EXPECT_EQ(o.queries[0].target, "c1");
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now_ + config_.resend_initial_ms);
  EXPECT_TRUE(Txn("t1")->in_doubt());
  core_->OnTimer(timer, now_);  // fired already
  EXPECT_TRUE(Collect().empty());

  uint64_t retry = o.timers[0].timer_id;
  EXPECT_EQ(Commit("t1"), std::vector<uint64_t>{1});
  core_->OnTimer(retry, now_ + 1000);  // the transaction is settled
  EXPECT_TRUE(Collect().empty());
  core_->OnTimer(12345, now_);
  EXPECT_TRUE(Collect().empty());
}

TEST_F(ParticipantCoreTest, RecoveredPreparedAsksCoordinatorAndAppliesCommit) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"old"});
  std::vector<Lease> got = Receive("q");
  EXPECT_EQ(
      Prepare(PrepareReq("t1", {EnqueueOp("q", "new"), AckOp("q", 1, got[0].lease_token)})).vote(),
      v1::YES);
  now_ += 100'000;
  Restart();
  // In doubt at once, with a timer due now; the pinned ack stays pinned.
  ASSERT_EQ(last_.timers.size(), 1u);
  EXPECT_EQ(last_.timers[0].at_ms, now_);
  ASSERT_TRUE(Txn("t1").has_value());
  EXPECT_TRUE(Txn("t1")->in_doubt());
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_EQ(Info("q").pending_in_txn(), 2u);

  core_->OnTimer(last_.timers[0].timer_id, now_);
  Output o = Collect();
  ASSERT_EQ(o.queries.size(), 1u);
  EXPECT_TRUE(o.queries[0].to_coordinator);
  core_->OnQueryReply("t1", "c1", StateReply(v1::STATE_COMMITTED), now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(Receive("q").empty());  // not before durable
  Persist();
  EXPECT_FALSE(Txn("t1").has_value());
  std::vector<Lease> now_visible = Receive("q");
  ASSERT_EQ(now_visible.size(), 1u);
  EXPECT_EQ(now_visible[0].sequence, 2u);
  EXPECT_TRUE(Logged("txn t1 COMMITTED here (1 enqueue, 1 ack; settled by coordinator c1)"));
  EXPECT_EQ(Commit("t1"), (std::vector<uint64_t>{2, 0}));  // the coordinator's late Commit
}

TEST_F(ParticipantCoreTest, RecoveredPrecommittedAppliesCoordinatorAbort) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"old"});
  std::vector<Lease> got = Receive("q");
  v1::PrepareRequest req = PrepareReq("t1", {AckOp("q", 1, got[0].lease_token)});
  req.set_protocol(v1::THREE_PC);
  EXPECT_EQ(Prepare(req).vote(), v1::YES);
  core_->PreCommit(1, "t1", now_);
  Collect();
  Persist();
  Restart();
  EXPECT_EQ(Txn("t1")->state(), v1::PRECOMMITTED);
  EXPECT_EQ(Txn("t1")->protocol(), v1::THREE_PC);
  core_->OnTimer(last_.timers[0].timer_id, now_);
  Collect();
  core_->OnQueryReply("t1", "c1", StateReply(v1::STATE_ABORTED), now_);
  Persist();  // the termination ballot the timer wrote (3PC: a round starts too)
  Persist();  // then the abort, which waited for it
  EXPECT_FALSE(Txn("t1").has_value());
  std::vector<Lease> again = Receive("q");  // the ack is undone
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].delivery_count, 1u);  // leases do not survive a restart
  EXPECT_TRUE(Logged("txn t1 ABORTED here (0 enqueues, 1 ack; settled by coordinator c1)"));
}

TEST_F(ParticipantCoreTest, UnreachableCoordinatorThenPeerCommitSettles) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  Restart();
  core_->OnTimer(last_.timers[0].timer_id, now_);
  Collect();
  core_->OnQueryReply("t1", "c1", absl::UnavailableError("connection refused"), now_);
  Output o = Collect();
  ASSERT_EQ(o.queries.size(), 2u);  // every peer but itself
  EXPECT_EQ(o.queries[0].target, "p2");
  EXPECT_FALSE(o.queries[0].to_coordinator);
  EXPECT_EQ(o.queries[1].target, "p3");
  core_->OnQueryReply("t1", "p2", StateReply(v1::PREPARED), now_);
  EXPECT_TRUE(Collect().empty());
  core_->OnQueryReply("t1", "p3", StateReply(v1::STATE_COMMITTED), now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  // A second definitive answer while the commit is in flight changes nothing.
  core_->OnQueryReply("t1", "c1", StateReply(v1::STATE_COMMITTED), now_);
  EXPECT_TRUE(Collect().persist.empty());
  Persist();
  EXPECT_TRUE(Collect().persist.empty());
  EXPECT_EQ(Receive("q").size(), 1u);
  EXPECT_TRUE(Logged("settled by peer p3"));
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->state(), v1::STATE_COMMITTED);
}

TEST_F(ParticipantCoreTest, AllUncertainStaysInDoubtWithBackoff) {
  config_.resend_initial_ms = 100;
  config_.resend_max_ms = 300;
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  Restart();
  uint64_t timer = last_.timers[0].timer_id;
  std::vector<int64_t> delays;
  for (int round = 0; round < 5; ++round) {
    core_->OnTimer(timer, now_);
    Output o = Collect();
    ASSERT_EQ(o.timers.size(), 1u);
    delays.push_back(o.timers[0].at_ms - now_);
    timer = o.timers[0].timer_id;
    // Round 0 asks the coordinator only; later rounds ask the peers too.
    ASSERT_EQ(o.queries.size(), round == 0 ? 1u : 3u) << round;
    core_->OnQueryReply("t1", "c1", absl::DeadlineExceededError("timeout"), now_);
    Output peers = Collect();
    EXPECT_EQ(peers.queries.size(), round == 0 ? 2u : 0u);
    core_->OnQueryReply("t1", "p2", StateReply(v1::PREPARED), now_);
    core_->OnQueryReply("t1", "p3", StateReply(v1::PRECOMMITTED), now_);
    EXPECT_TRUE(Collect().empty());
    now_ = o.timers[0].at_ms;
  }
  EXPECT_EQ(delays, (std::vector<int64_t>{100, 200, 300, 300, 300}));
  ASSERT_TRUE(Txn("t1").has_value());
  EXPECT_TRUE(Txn("t1")->in_doubt());
  EXPECT_EQ(Info("q").pending_in_txn(), 1u);
}

TEST_F(ParticipantCoreTest, CoordinatorPreparingThreeTimesAsksPeers) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  Restart();
  uint64_t timer = last_.timers[0].timer_id;
  for (int i = 1; i <= 3; ++i) {
    core_->OnTimer(timer, now_);
    Output o = Collect();
    timer = o.timers[0].timer_id;
    core_->OnQueryReply("t1", "c1", StateReply(v1::PREPARING), now_);
    EXPECT_EQ(Collect().queries.size(), i == 3 ? 2u : 0u) << i;
  }
  core_->OnQueryReply("t1", "p2", StateReply(v1::STATE_ABORTED), now_);
  Persist();
  EXPECT_FALSE(Txn("t1").has_value());
  EXPECT_TRUE(Logged("txn t1 ABORTED here (1 enqueue, 0 acks; settled by peer p2)"));
}

}  // namespace
}  // namespace atomq::participant
