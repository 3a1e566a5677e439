// 3PC quorum termination: Promise, Accept and rounds led here.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"
#include "participant/core/participant_core_test_fixture.h"

namespace atomq::participant {
namespace {

// ------------------------------------------------- 3PC quorum termination

TEST_F(ParticipantCoreTest, PromiseIsDurableBeforeTheAnswerAndRefusesPreCommit) {
  Start();
  CreateQueue("q");
  ASSERT_EQ(Prepare(ThreePcReq("t1")).vote(), v1::YES);
  core_->Promise(50, "t1", 6, now_);
  Output o = Collect();
  EXPECT_EQ(Find(o, 50), nullptr);  // not before the ballot is on disk
  o = Persist();
  v1::PromiseResponse p = Body<v1::PromiseResponse>(o, 50);
  EXPECT_TRUE(p.promised());
  EXPECT_EQ(p.state(), v1::PREPARED);
  EXPECT_EQ(p.accepted_value(), v1::TXN_STATE_UNSPECIFIED);
  EXPECT_EQ(store_.Get<v1::PreparedRecord>(kPreparedDb, "t1")->promised_ballot(), 6u);
  // A lower ballot is refused, with the one promised.
  core_->Promise(51, "t1", 5, now_);
  p = Body<v1::PromiseResponse>(Collect(), 51);
  EXPECT_FALSE(p.promised());
  EXPECT_EQ(p.promised_ballot(), 6u);
  // The coordinator's PreCommit is ballot 0: refused now.
  core_->PreCommit(52, "t1", now_);
  EXPECT_EQ(StatusOf(Collect(), 52).code(), absl::StatusCode::kFailedPrecondition);
  // Accept at the promised ballot: durable, then answered.
  core_->Accept(53, "t1", 6, v1::STATE_ABORTED, now_);
  EXPECT_EQ(Find(Collect(), 53), nullptr);
  v1::AcceptResponse a = Body<v1::AcceptResponse>(Persist(), 53);
  EXPECT_TRUE(a.accepted());
  auto rec = store_.Get<v1::PreparedRecord>(kPreparedDb, "t1");
  EXPECT_EQ(rec->accepted_ballot(), 6u);
  EXPECT_EQ(rec->accepted_value(), v1::STATE_ABORTED);
  // Ballots survive a restart.
  Restart();
  core_->Promise(54, "t1", 6, now_);
  p = Body<v1::PromiseResponse>(Collect(), 54);
  EXPECT_TRUE(p.promised());
  EXPECT_EQ(p.accepted_ballot(), 6u);
  EXPECT_EQ(p.accepted_value(), v1::STATE_ABORTED);
}

TEST_F(ParticipantCoreTest, PromiseForUnknownTransactionRecordsAbort) {
  Start();
  CreateQueue("q");
  core_->Promise(60, "never", 5, now_);
  EXPECT_EQ(Find(Collect(), 60), nullptr);
  v1::PromiseResponse p = Body<v1::PromiseResponse>(Persist(), 60);
  EXPECT_EQ(p.state(), v1::STATE_ABORTED);
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "never")->state(), v1::STATE_ABORTED);
  EXPECT_EQ(Prepare(ThreePcReq("never")).vote(), v1::NO);
  // Bad input changes nothing.
  core_->Promise(61, "x", 0, now_);
  EXPECT_EQ(StatusOf(Collect(), 61).code(), absl::StatusCode::kInvalidArgument);
  core_->Accept(62, "x", 5, v1::PREPARED, now_);
  EXPECT_EQ(StatusOf(Collect(), 62).code(), absl::StatusCode::kInvalidArgument);
  // 2PC transactions have no rounds.
  ASSERT_EQ(Prepare(PrepareReq("two", {EnqueueOp("q", "m")})).vote(), v1::YES);
  core_->Promise(63, "two", 5, now_);
  EXPECT_EQ(StatusOf(Collect(), 63).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "x").has_value());
}

// p1 leads: promises from a majority; the value accepted at the highest
// ballot wins; accepts from a majority decide.
TEST_F(ParticipantCoreTest, TerminationLeaderAdoptsTheAcceptedValue) {
  Start();
  CreateQueue("q");
  ASSERT_EQ(Prepare(ThreePcReq("t1")).vote(), v1::YES);
  Output o = Collect();
  now_ += config_.in_doubt_after_ms;
  core_->OnTimer(last_timer(), now_);
  o = Persist();  // the ballot, with p1's own promise
  auto rec = store_.Get<v1::PreparedRecord>(kPreparedDb, "t1");
  const uint64_t b = rec->proposed_ballot();
  EXPECT_EQ(b % 4, 1u);  // p1 is index 0 of 3: ballots 4k+1
  EXPECT_EQ(rec->promised_ballot(), b);
  std::vector<std::string> promise_to;
  for (const OutPeerMsg& m : o.peer_msgs) {
    if (m.type == PeerMsgType::kPromise) promise_to.push_back(m.target);
  }
  EXPECT_EQ(promise_to, (std::vector<std::string>{"p2", "p3"}));
  v1::PromiseResponse p2;
  p2.set_promised(true);
  p2.set_state(v1::PRECOMMITTED);
  p2.set_accepted_ballot(0);
  p2.set_accepted_value(v1::STATE_COMMITTED);  // p2 got the coordinator's PreCommit
  core_->OnPromiseReply("t1", "p2", b, p2, now_);
  o = Collect();
  ASSERT_EQ(o.peer_msgs.size(), 3u);  // Accept to all three, itself included
  for (const OutPeerMsg& m : o.peer_msgs) {
    EXPECT_EQ(m.type, PeerMsgType::kAccept);
    EXPECT_EQ(m.value, v1::STATE_COMMITTED);
    EXPECT_EQ(m.ballot, b);
  }
  v1::AcceptResponse yes;
  yes.set_accepted(true);
  core_->OnAcceptReply("t1", "p2", b, yes, now_);
  EXPECT_TRUE(Collect().peer_msgs.empty());  // 1 of 3
  core_->OnAcceptReply("t1", "p3", b, yes, now_);
  o = Persist();
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->state(), v1::STATE_COMMITTED);
  std::vector<std::string> told;
  for (const OutPeerMsg& m : o.peer_msgs) {
    EXPECT_EQ(m.type, PeerMsgType::kCommit);
    told.push_back(m.target);
  }
  EXPECT_EQ(told, (std::vector<std::string>{"p2", "p3"}));
}

TEST_F(ParticipantCoreTest, TerminationLeaderProposesAbortWhenNothingWasAccepted) {
  Start();
  CreateQueue("q");
  ASSERT_EQ(Prepare(ThreePcReq("t1")).vote(), v1::YES);
  Collect();
  now_ += config_.in_doubt_after_ms;
  core_->OnTimer(last_timer(), now_);
  Persist();
  const uint64_t b = store_.Get<v1::PreparedRecord>(kPreparedDb, "t1")->proposed_ballot();
  // A refusal (a higher ballot elsewhere) does not count.
  v1::PromiseResponse no;
  no.set_promised(false);
  no.set_promised_ballot(b + 1);
  core_->OnPromiseReply("t1", "p3", b, no, now_);
  EXPECT_TRUE(Collect().peer_msgs.empty());
  v1::PromiseResponse p2;
  p2.set_promised(true);
  p2.set_state(v1::PREPARED);
  core_->OnPromiseReply("t1", "p2", b, p2, now_);
  Output o = Collect();
  ASSERT_FALSE(o.peer_msgs.empty());
  EXPECT_EQ(o.peer_msgs[0].value, v1::STATE_ABORTED);
  // A peer that decided settles it at once.
  v1::AcceptResponse decided;
  decided.set_state(v1::STATE_ABORTED);
  core_->OnAcceptReply("t1", "p2", b, decided, now_);
  Persist();
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->state(), v1::STATE_ABORTED);
}

TEST_F(ParticipantCoreTest, NoEmptyReadOnlyVoteUnder3pc) {
  Start();
  v1::PrepareRequest req = PrepareReq("t1", {});
  EXPECT_EQ(Prepare(req).vote(), v1::READ_ONLY);
  req = PrepareReq("t2", {});
  req.set_protocol(v1::THREE_PC);
  EXPECT_EQ(Prepare(req).vote(), v1::YES);  // an acceptor of termination rounds
  EXPECT_TRUE(store_.Get<v1::PreparedRecord>(kPreparedDb, "t2").has_value());
}

}  // namespace
}  // namespace atomq::participant
