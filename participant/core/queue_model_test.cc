// The queue model: leases, receive and ack, pins of prepared transactions,
// and paging a backlog kept on disk.
#include "participant/core/queue_model.h"

#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"
#include "participant/core/participant_core_test_fixture.h"

namespace atomq::participant {
namespace {

// --- transactional acks and leases ---

TEST_F(ParticipantCoreTest, AckInTransactionPinsUntilCommitDeletesIt) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"m"});
  std::vector<Lease> got = Receive("q", 1, 100);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(
      Prepare(PrepareReq("t1", {AckOp("q", 1, got[0].lease_token), EnqueueOp("q", "out")})).vote(),
      v1::YES);
  EXPECT_EQ(Info("q").pending_in_txn(), 2u);
  EXPECT_EQ(Info("q").leased(), 0u);
  now_ += 1000;  // the lease expires while in doubt
  EXPECT_TRUE(Receive("q").empty());
  // A plain Ack cannot take it either.
  core_->Ack(5, "q", 1, got[0].lease_token, now_);
  EXPECT_EQ(StatusOf(Collect(), 5).code(), absl::StatusCode::kFailedPrecondition);

  EXPECT_EQ(Commit("t1"), (std::vector<uint64_t>{0, 2}));
  EXPECT_FALSE(store_.Get<v1::MessageRecord>(kMessagesDb, MessageKey(1, 1)).has_value());
  std::vector<Lease> next = Receive("q");
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].sequence, 2u);
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_TRUE(Logged("txn t1 COMMITTED here (1 enqueue, 1 ack)"));
}

TEST_F(ParticipantCoreTest, AbortReturnsPinnedMessageToItsLease) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"m1", "m2"});
  std::vector<Lease> got = Receive("q", 2, 100);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(Prepare(PrepareReq("t1", {AckOp("q", 1, got[0].lease_token)})).vote(), v1::YES);
  EXPECT_EQ(Prepare(PrepareReq("t2", {AckOp("q", 2, got[1].lease_token)})).vote(), v1::YES);
  // t1 aborts while its lease still holds: leased again, same token.
  EXPECT_TRUE(Abort("t1").ok());
  EXPECT_EQ(Info("q").leased(), 1u);
  EXPECT_TRUE(Receive("q").empty());
  core_->Ack(7, "q", 1, got[0].lease_token, now_);
  Collect();
  EXPECT_TRUE(StatusOf(Persist(), 7).ok());
  // t2 aborts after its lease expired: ready again.
  now_ += 200;
  EXPECT_TRUE(Abort("t2").ok());
  EXPECT_EQ(Info("q").ready(), 1u);
  std::vector<Lease> again = Receive("q");
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].sequence, 2u);
  EXPECT_EQ(again[0].delivery_count, 2u);
}

TEST_F(ParticipantCoreTest, ExpiredLeaseRedeliversWithHigherDeliveryCount) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"m1", "m2", "m3"});
  std::vector<Lease> first = Receive("q", 2, 50);
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].delivery_count, 1u);
  EXPECT_EQ(first[0].expires_ms, now_ + 50);
  EXPECT_NE(first[0].lease_token, first[1].lease_token);
  EXPECT_EQ(Info("q").leased(), 2u);
  EXPECT_EQ(Info("q").ready(), 1u);
  now_ += 49;
  std::vector<Lease> mid = Receive("q", 5);
  ASSERT_EQ(mid.size(), 1u);
  EXPECT_EQ(mid[0].sequence, 3u);
  EXPECT_EQ(mid[0].expires_ms, now_ + config_.lease_ms);
  now_ += 1;
  std::vector<Lease> again = Receive("q", 5);
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[0].sequence, 1u);
  EXPECT_EQ(again[0].delivery_count, 2u);
  EXPECT_EQ(again[1].delivery_count, 2u);
  EXPECT_NE(again[0].lease_token, first[0].lease_token);
}

TEST_F(ParticipantCoreTest, AckRequiresTheCurrentLeaseAndWaitsForDurability) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"m"});
  std::vector<Lease> first = Receive("q", 1, 10);
  now_ += 10;
  std::vector<Lease> second = Receive("q", 1, 1000);
  ASSERT_EQ(second.size(), 1u);
  core_->Ack(1, "q", 1, first[0].lease_token, now_);
  core_->Ack(2, "q", 1, "", now_);
  core_->Ack(3, "q", 9, second[0].lease_token, now_);
  core_->Ack(4, "nope", 1, second[0].lease_token, now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(StatusOf(o, 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(StatusOf(o, 2).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(StatusOf(o, 3).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(StatusOf(o, 4).code(), absl::StatusCode::kNotFound);

  core_->Ack(5, "q", 1, second[0].lease_token, now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.persist[0].writes[0].erase);
  EXPECT_EQ(Find(o, 5), nullptr);
  now_ += 5000;  // the lease expires before the deletion is durable
  EXPECT_TRUE(Receive("q").empty());
  o = Persist();
  EXPECT_TRUE(StatusOf(o, 5).ok());
  EXPECT_EQ(store_.Count(kMessagesDb), 0u);
  EXPECT_EQ(Info("q").ready() + Info("q").leased(), 0u);
  core_->Ack(6, "q", 1, second[0].lease_token, now_);
  EXPECT_EQ(StatusOf(Collect(), 6).code(), absl::StatusCode::kFailedPrecondition);
}

// --- lease tokens: random, opaque, never guessed from another ---

TEST_F(ParticipantCoreTest, LeaseTokensAreRandomHexAndDistinct) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"m1", "m2"});
  std::vector<Lease> got = Receive("q", 2);
  ASSERT_EQ(got.size(), 2u);
  for (const Lease& l : got) {
    EXPECT_EQ(l.lease_token.size(), 2 * kLeaseTokenBytes);
    for (char c : l.lease_token) EXPECT_TRUE(absl::ascii_isxdigit(c)) << l.lease_token;
  }
  EXPECT_NE(got[0].lease_token, got[1].lease_token);
}

// A token of the right shape, one character off: every way of settling
// the message with it is refused and nothing changes.
TEST_F(QueueFeaturesTest, ForgedTokenOfTheRightShapeSettlesNothing) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"m"});
  std::vector<Lease> got = Receive("q");
  ASSERT_EQ(got.size(), 1u);
  std::string forged = got[0].lease_token;
  forged.back() = forged.back() == '0' ? '1' : '0';
  const v1::QueueInfo before = Info("q");

  core_->Ack(next_req_, "q", 1, forged, now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  const absl::Status ack = StatusOf(o, next_req_++);
  EXPECT_EQ(ack.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(absl::StrContains(ack.message(), forged)) << ack;  // clipped
  EXPECT_TRUE(absl::StrContains(ack.message(), forged.substr(0, kLeaseTokenEcho))) << ack;
  EXPECT_EQ(Nack(got[0], false, forged).first.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Nack(got[0], true, forged).first.code(), absl::StatusCode::kFailedPrecondition);
  const v1::PrepareResponse vote = Prepare(PrepareReq("t1", {AckOp("q", 1, forged)}));
  EXPECT_EQ(vote.vote(), v1::NO);
  EXPECT_FALSE(absl::StrContains(vote.reason(), forged)) << vote.reason();
  v1::StageRequest stage;
  stage.set_txn_id("s1");
  *stage.add_ops() = AckOp("q", 1, forged);
  EXPECT_EQ(core_->Stage(stage, now_).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Collect().persist.empty());
  EXPECT_FALSE(Txn("t1").has_value());
  EXPECT_EQ(core_->staged_transactions(), 0u);
  EXPECT_EQ(Info("q").DebugString(), before.DebugString());
  // The holder's own token still works.
  core_->Ack(next_req_, "q", 1, got[0].lease_token, now_);
  EXPECT_TRUE(StatusOf(Persist(), next_req_++).ok());
}

// Leases live in memory only: after a restart no token from before it
// settles anything, and the redelivery carries a new one.
TEST_F(QueueFeaturesTest, TokenFromBeforeARestartIsRefused) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"m"});
  std::vector<Lease> got = Receive("q");
  ASSERT_EQ(got.size(), 1u);
  Restart();
  core_->Ack(next_req_, "q", 1, got[0].lease_token, now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(StatusOf(o, next_req_++).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Nack(got[0], false).first.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Prepare(PrepareReq("t1", {AckOp("q", 1, got[0].lease_token)})).vote(), v1::NO);
  std::vector<Lease> again = Receive("q");
  ASSERT_EQ(again.size(), 1u);
  EXPECT_NE(again[0].lease_token, got[0].lease_token);
  core_->Ack(next_req_, "q", 1, got[0].lease_token, now_);
  EXPECT_EQ(StatusOf(Collect(), next_req_++).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ParticipantCoreTest, ReceiveValidatesLimits) {
  config_.receive_max = 3;
  config_.lease_ms_max = 100;
  config_.lease_ms = 40;
  Start();
  EXPECT_EQ(core_->Receive("nope", 1, 0, now_).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->Receive("bad name", 1, 0, now_).status().code(),
            absl::StatusCode::kInvalidArgument);
  CreateQueue("q");
  Produce("p", "q", {"a", "b", "c", "d"});
  EXPECT_EQ(core_->Receive("q", 4, 0, now_).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->Receive("q", 1, 101, now_).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<Lease> one = Receive("q", 0, 0);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].expires_ms, now_ + 40);
  EXPECT_EQ(Receive("q", 3, 100).size(), 3u);
}

TEST_F(QueueFeaturesTest, ReadyQueuesNameQueuesThatGainedMessagesOnce) {
  Start();
  CreateQueue("q");
  CreateQueue("r");
  ASSERT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a"), EnqueueOp("q", "b")})).vote(), v1::YES);
  core_->Commit(5, "t1", now_);
  Output o = Collect();
  EXPECT_TRUE(o.ready_queues.empty());  // staged and in-flight messages wake nobody
  o = Persist();
  EXPECT_EQ(o.ready_queues, std::vector<std::string>{"q"});
  std::vector<Lease> got = Receive("q", 10, 50);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_TRUE(Collect().ready_queues.empty());
  now_ += 49;
  core_->ExpireLeases(now_);
  EXPECT_TRUE(Collect().ready_queues.empty());
  now_ += 1;
  core_->ExpireLeases(now_);
  EXPECT_EQ(Collect().ready_queues, std::vector<std::string>{"q"});
  EXPECT_EQ(Info("q").ready(), 2u);
  EXPECT_EQ(Info("q").leased(), 0u);
}

// docs/design.md section 4: a message under a pending transactional ack is not
// redelivered, acked or nacked by anyone while in doubt, even after its lease
// expires; an abort returns it.
TEST_F(QueueFeaturesTest, PinnedMessageSurvivesLeaseExpiryWhileInDoubt) {
  Start();
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  ASSERT_TRUE(CreateQueueWith("q", 1, "dlq").ok());
  Produce("t0", "q", {"a"});
  std::vector<Lease> got = Receive("q", 1, 100);
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(Prepare(PrepareReq("t1", {AckOp("q", 1, got[0].lease_token)})).vote(), v1::YES);
  now_ += 1000;
  core_->ExpireLeases(now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());  // not dead-lettered
  EXPECT_TRUE(o.ready_queues.empty());
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_EQ(Nack(got[0], false).first.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Info("q").pending_in_txn(), 1u);
  ASSERT_TRUE(Abort("t1").ok());
  // Back, and at its maximum: the next look moves it instead of delivering.
  EXPECT_TRUE(Receive("q").empty());
  Persist();
  EXPECT_EQ(Info("dlq").ready(), 1u);
}

TEST_F(PagingTest, BacklogBeyondTheWindowPagesInInSequenceOrderWithExactCounts) {
  Start();
  CreateQueue("q");
  Produce("t1", "q", Payloads(1, 10));
  EXPECT_EQ(store_.Count(kMessagesDb), 10u);
  EXPECT_EQ(Info("q").ready(), 10u);
  // 1..4 are in memory: three Receives need no read of the disk.
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    std::vector<Lease> got = Receive("q", 1, 60000);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].sequence, seq);
    EXPECT_EQ(Info("q").ready(), 10 - seq);
    EXPECT_EQ(Info("q").leased(), seq);
  }
  EXPECT_EQ(store_.scans_, 0);
  // One ready in memory, fewer than half the window: the next 3 are read in.
  std::vector<Lease> got = Receive("q", 1, 60000);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].sequence, 4u);
  EXPECT_EQ(store_.scans_, 1);
  EXPECT_EQ(Info("q").ready(), 6u);
  EXPECT_EQ(Info("q").leased(), 4u);
  EXPECT_EQ(ReceiveAll("q", 3), Range(5, 10));
  EXPECT_EQ(Info("q").ready(), 0u);
  EXPECT_EQ(Info("q").leased(), 10u);
  // More than the window in one Receive pages in as it goes.
  Produce("t2", "q", Payloads(11, 30));
  EXPECT_EQ(Info("q").ready(), 20u);
  EXPECT_EQ(ReceiveAll("q", 20), Range(11, 30));
}

TEST_F(PagingTest, EnqueuesBehindABacklogOnDiskStayBehindItInOrder) {
  Start();
  CreateQueue("q");
  Produce("t1", "q", Payloads(1, 5));  // 1..4 in memory, 5 on disk
  std::vector<Lease> first = Receive("q", 3, 100);
  ASSERT_EQ(first.size(), 3u);
  ASSERT_EQ(first[0].sequence, 1u);
  // The window has room (only 4 is ready in memory), but the backlog on
  // disk comes first: 6 and 7 go behind 5.
  Produce("t2", "q", {"m6"});
  EXPECT_EQ(SendMsg(SendReq("q", "m7")).second.sequence(), 7u);
  EXPECT_EQ(Info("q").ready(), 4u);
  EXPECT_EQ(Info("q").leased(), 3u);
  // A nacked message goes first again, then the rest in sequence order.
  ASSERT_TRUE(Nack(first[0], false).first.ok());
  EXPECT_EQ(ReceiveAll("q", 2), (std::vector<uint64_t>{1, 4, 5, 6, 7}));
  EXPECT_EQ(Info("q").ready(), 0u);
  EXPECT_EQ(Info("q").leased(), 7u);
}

TEST_F(PagingTest, RestartCountsTheBacklogWithoutReadingItAndDeliversInOrder) {
  Start();
  CreateQueue("q");
  Produce("t1", "q", Payloads(1, 10));
  ASSERT_EQ(Receive("q", 2, 60000).size(), 2u);
  Restart();
  EXPECT_EQ(store_.scans_, 0);  // counted at recovery, nothing loaded
  EXPECT_EQ(Info("q").ready(), 10u);
  EXPECT_EQ(Info("q").leased(), 0u);
  EXPECT_EQ(Info("q").version(), 11u);
  // Appended after the restart, behind the counted backlog.
  EXPECT_EQ(Produce("t2", "q", {"m11"}), std::vector<uint64_t>{11});
  EXPECT_EQ(Info("q").ready(), 11u);
  std::vector<Lease> got = Receive("q", 3, 60000);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].sequence, 1u);
  EXPECT_EQ(got[0].delivery_count, 1u);
  EXPECT_EQ(ReceiveAll("q", 3), Range(4, 11));
}

TEST_F(PagingTest, RecoveredAckOfAMessageOnDiskIsPinnedAndAnAbortPutsItBackInOrder) {
  Start();
  CreateQueue("q");
  Produce("t0", "q", Payloads(1, 10));
  std::vector<Lease> got = Receive("q", 10, 60000);
  ASSERT_EQ(got.size(), 10u);
  ASSERT_EQ(Prepare(PrepareReq("t1", {AckOp("q", 9, got[8].lease_token)})).vote(), v1::YES);
  ASSERT_EQ(Prepare(PrepareReq("t2", {AckOp("q", 10, got[9].lease_token)})).vote(), v1::YES);
  Restart();
  EXPECT_EQ(Info("q").ready(), 8u);
  EXPECT_EQ(Info("q").pending_in_txn(), 2u);
  // t1 aborts before 9 is reached: back on disk, delivered in its place.
  // t2 commits: 10 is erased.
  core_->OnTimer(last_.timers[0].timer_id, now_);
  core_->OnTimer(last_.timers[1].timer_id, now_);
  Collect();
  core_->OnQueryReply("t1", "c1", StateReply(v1::STATE_ABORTED), now_);
  core_->OnQueryReply("t2", "c1", StateReply(v1::STATE_COMMITTED), now_);
  Persist();
  EXPECT_FALSE(Txn("t1").has_value());
  EXPECT_FALSE(Txn("t2").has_value());
  EXPECT_EQ(Info("q").ready(), 9u);
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_FALSE(Stored("q", 10).has_value());
  EXPECT_EQ(ReceiveAll("q", 2), Range(1, 9));
  EXPECT_EQ(Info("q").leased(), 9u);
}

}  // namespace
}  // namespace atomq::participant
