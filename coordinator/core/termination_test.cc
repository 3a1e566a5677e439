// 3PC: the PreCommit round and termination rounds.

#include "coordinator/core/coordinator_core_test_util.h"

namespace atomq::coordinator {
namespace {

// -------------------------------------------------------------------- 3PC

TEST_F(CoordinatorCoreTest, ThreePcPreCommitsThenCommitsOnMajority) {
  core().Execute(
      1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p3", "q", "c")}, v1::THREE_PC),
      now);
  Output o = Take();
  TimerRequest deadline = o.timers.at(0);
  for (const char* p : {"p1", "p2", "p3"}) core().OnPrepareReply("t1", p, Vote(v1::YES), now);
  o = Take();
  EXPECT_TRUE(o.send.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::PRECOMMITTED);
  Batch pre = o.persist[0];
  core().QueryState(5, "t1", now);  // not durable yet: still undecided
  EXPECT_EQ(Take().state_replies.at(0).state, v1::PREPARING);

  Durable(pre);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPreCommit), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.persist.empty());
  core().QueryState(6, "t1", now);
  EXPECT_EQ(Take().state_replies.at(0).state, v1::PRECOMMITTED);
  Fire(deadline);  // never aborts after PRECOMMITTED
  o = Take();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.replies.empty());

  core().OnPreCommitReply("t1", "p2", absl::OkStatus(), now);
  core().OnPreCommitReply("t1", "p2", absl::OkStatus(), now);  // a duplicate is not a majority
  EXPECT_TRUE(Take().empty());
  core().OnPreCommitReply("t1", "p3", absl::OkStatus(), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(o.send.empty());
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_EQ(o.log[0], "txn t1 COMMITTED (3pc, 3 participants)");
  // The deadline passed already: the reply goes with the commit.
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  for (const char* p : {"p1", "p2", "p3"}) core().OnCommitReply("t1", p, Seqs({1}), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
}

TEST_F(CoordinatorCoreTest, ThreePcWithFewYesVotersWaitsForAllOfThem) {
  core().Execute(
      1,
      Req("t1", {Enq("p1", "q", "a"), AckOp("p2", "q", 1, "l"), AckOp("p3", "q", 1, "l")},
          v1::THREE_PC),
      now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::READ_ONLY), now);
  core().OnPrepareReply("t1", "p3", Vote(v1::READ_ONLY), now);
  Durable(Take().persist.at(0));
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPreCommit), (Strs{"p1"}));
  core().OnPreCommitReply("t1", "p1", absl::OkStatus(), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p1"}));
}

TEST_F(CoordinatorCoreTest, ThreePcPreCommitResentUntilAcknowledged) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}, v1::THREE_PC), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Durable(Take().persist.at(0));
  Output o = Take();
  ASSERT_EQ(o.timers.size(), 3u);  // a resend per PreCommit, then the termination timer
  core().OnPreCommitReply("t1", "p1", absl::OkStatus(), now);
  core().OnPreCommitReply("t1", "p2", absl::UnavailableError("down"), now);
  EXPECT_TRUE(Take().empty());  // 1 of 2 is not a majority
  TimerRequest p2 = o.send[0].participant == "p2" ? o.timers[0] : o.timers[1];
  Fire(p2);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPreCommit), (Strs{"p2"}));
  core().OnPreCommitReply("t1", "p2", absl::OkStatus(), now);
  EXPECT_EQ(Take().persist.size(), 1u);
}

TEST_F(CoordinatorCoreTest, ThreePcPrecommitWriteFailureAborts) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}, v1::THREE_PC), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Batch pre = Take().persist.at(0);
  core().OnPersisted(pre.token, absl::InternalError("io"), now);
  Output o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kPreCommit).empty());
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2"}));
  EXPECT_EQ(Rec(o.persist.at(0)).state(), v1::STATE_ABORTED);
}

TEST_F(CoordinatorCoreTest, ThreePcCommitWriteFailureRetriesInsteadOfAborting) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}, v1::THREE_PC), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Durable(Take().persist.at(0));
  Take();
  core().OnPreCommitReply("t1", "p1", absl::OkStatus(), now);
  core().OnPreCommitReply("t1", "p2", absl::OkStatus(), now);
  Batch commit = Take().persist.at(0);
  core().OnPersisted(commit.token, absl::InternalError("io"), now);
  Output o = Take();
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.timers.size(), 1u);
  Fire(o.timers[0]);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
  Durable(o.persist[0]);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p1", "p2"}));
}

// A participant that promised a termination ballot refuses PreCommit (ballot
// 0); when a majority of acks cannot come, the coordinator runs a round, and
// a round that finds nothing accepted chose ABORT: the client is told so.
TEST_F(CoordinatorCoreTest, ThreePcRefusedPreCommitRunsARoundThatCanAbort) {
  core().Execute(
      1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p3", "q", "c")}, v1::THREE_PC),
      now);
  Take();
  for (const char* p : {"p1", "p2", "p3"}) core().OnPrepareReply("t1", p, Vote(v1::YES), now);
  Durable(Take().persist.at(0));
  Take();
  const absl::Status refused = absl::FailedPreconditionError("promised ballot 5");
  core().OnPreCommitReply("t1", "p1", refused, now);
  EXPECT_TRUE(Take().persist.empty());  // 2 of 3 may still accept
  core().OnPreCommitReply("t1", "p2", refused, now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);  // the round's ballot first
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::PRECOMMITTED);
  const uint64_t b = Rec(o.persist[0]).ballot();
  EXPECT_EQ(b % 4, 0u);  // the coordinator's ballots: multiples of participants + 1
  EXPECT_TRUE(o.send.empty());
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPromise), (Strs{"p1", "p2", "p3"}));
  // Stale or refused answers do not count.
  v1::PromiseResponse none;
  none.set_promised(true);
  none.set_state(v1::PREPARED);
  core().OnPromiseReply("t1", "p1", b + 4, none, now);
  EXPECT_TRUE(Take().empty());
  core().OnPromiseReply("t1", "p1", b, none, now);
  core().OnPromiseReply("t1", "p2", b, none, now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAccept), (Strs{"p1", "p2", "p3"}));
  EXPECT_EQ(o.send.at(0).value, v1::STATE_ABORTED);
  v1::AcceptResponse yes;
  yes.set_accepted(true);
  core().OnAcceptReply("t1", "p1", b, yes, now);
  core().OnAcceptReply("t1", "p3", b, yes, now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2", "p3"}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_ABORTED);
  EXPECT_TRUE(o.replies.empty());  // not before the abort is durable
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "termination round chose ABORT"));
}

}  // namespace
}  // namespace atomq::coordinator
