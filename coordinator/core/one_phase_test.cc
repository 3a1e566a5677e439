// One-phase commit.

#include "coordinator/core/coordinator_core_test_util.h"

namespace atomq::coordinator {
namespace {

// ---------------------------------------------------------------- one phase

v1::PrepareResponse YesWith(std::vector<uint64_t> seqs) {
  v1::PrepareResponse r = Vote(v1::YES);
  for (uint64_t s : seqs) r.add_sequences(s);
  return r;
}

const TimerRequest* LatestTimer(const Output& o) {
  return o.timers.empty() ? nullptr : &o.timers.back();
}

TEST_F(CoordinatorCoreTest, OnePhaseCommitsOnTheVoteAndWritesOnlyALazyEnded) {
  config.one_phase = true;
  v1::ExecuteRequest req =
      Req("t1", {Enq("p1", "q", "a"), AckOp("p1", "in", 7, "lease-1"), Enq("p1", "r", "b")});
  core().Execute(1, req, now);
  Output o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_TRUE(o.persist.empty());
  const v1::PrepareRequest& p = o.send[0].prepare;
  EXPECT_EQ(o.send[0].type, MsgType::kPrepare);
  EXPECT_TRUE(p.one_phase());
  EXPECT_EQ(p.participant(), "p1");
  EXPECT_EQ(p.coordinator_address(), "coord:7000");
  ASSERT_EQ(p.participants_size(), 1);
  EXPECT_EQ(p.participants(0).address(), "h1:7001");
  ASSERT_EQ(p.ops_size(), 3);
  EXPECT_EQ(p.ops(2).enqueue().payload(), "b");

  core().OnPrepareReply("t1", "p1", YesWith({5, 0, 9}), now);
  o = Take();
  // The participant's durable commit is the decision: the client is answered
  // at once, nobody gets a second-round message, nothing is forced here.
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{5, 0, 9}));
  EXPECT_TRUE(o.send.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_FALSE(o.persist[0].sync);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::ENDED);
  EXPECT_TRUE(rec.reason().empty());
  EXPECT_EQ(Strs(rec.acknowledged().begin(), rec.acknowledged().end()), (Strs{"p1"}));
  EXPECT_EQ(std::vector<uint64_t>(rec.sequences().begin(), rec.sequences().end()),
            (std::vector<uint64_t>{5, 0, 9}));
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_EQ(o.log[0], "txn t1 COMMITTED (one phase at p1, 2pc)");
  EXPECT_EQ(core().in_flight(), 0u);
  // A duplicate vote changes nothing; a retry gets the outcome at once.
  core().OnPrepareReply("t1", "p1", YesWith({5, 0, 9}), now);
  EXPECT_TRUE(Take().empty());
  core().Execute(2, req, now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{5, 0, 9}));
  EXPECT_TRUE(o.send.empty());

  // 3PC with one participant: the same single round (no PRECOMMITTED).
  core().Execute(3, Req("t2", {Enq("p2", "q", "c")}, v1::THREE_PC), now);
  o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_TRUE(o.send[0].prepare.one_phase());
  EXPECT_EQ(o.send[0].prepare.protocol(), v1::THREE_PC);
  core().OnPrepareReply("t2", "p2", YesWith({4}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);

  // Two participants, or one-phase switched off: no one_phase flag.
  core().Execute(4, Req("t3", {Enq("p1", "q", "d"), Enq("p2", "q", "e")}), now);
  o = Take();
  ASSERT_EQ(o.send.size(), 2u);
  for (const OutMessage& m : o.send) EXPECT_FALSE(m.prepare.one_phase());
}

TEST_F(CoordinatorCoreTest, OnePhaseSwitchedOffRunsTwoPc) {
  config.one_phase = false;
  core().Execute(1, Req("t1", {Enq("p1", "q", "a")}), now);
  Output o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_FALSE(o.send[0].prepare.one_phase());
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.persist[0].sync);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
}

TEST_F(CoordinatorCoreTest, OnePhaseNoVoteAbortsWithoutAnAbortMessage) {
  config.one_phase = true;
  core().Execute(1, Req("t1", {Enq("p1", "missing", "a")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::NO, "queue \"missing\" does not exist on p1"), now);
  Output o = Take();
  EXPECT_TRUE(o.send.empty());  // a NO kept nothing there (its ABORTED is durable)
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.persist[0].sync);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_ABORTED);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_EQ(o.replies[0].response.reason(), "p1 voted NO: queue \"missing\" does not exist on p1");
}

TEST_F(CoordinatorCoreTest, OnePhaseRestartBeforeEndedThenRetryGetsTheSameSequences) {
  config.one_phase = true;
  v1::ExecuteRequest req = Req("t1", {Enq("p1", "q", "a"), Enq("p1", "q", "b")});
  core().Execute(1, req, now);
  Output o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  // Crash after the Prepare went out: nothing was written here.
  EXPECT_TRUE(o.persist.empty());
  Restart();
  EXPECT_TRUE(Take().send.empty());  // no record, nothing to recover
  // The client retries with the same id: the same one-phase Prepare, which
  // the participant answers from its committed outcome.
  core().Execute(2, req, now);
  o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_TRUE(o.send[0].prepare.one_phase());
  EXPECT_EQ(OpsDigest(o.send[0].prepare.ops()), OpsDigest(req.ops()));
  core().OnPrepareReply("t1", "p1", YesWith({1, 2}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].request, 2u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{1, 2}));
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  // Once ENDED is durable a restart answers from the log, sending nothing.
  Restart();
  EXPECT_TRUE(Take().send.empty());
  core().Execute(3, req, now);
  o = Take();
  EXPECT_TRUE(o.send.empty());
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{1, 2}));
  // The same id with other ops is refused.
  core().Execute(4, Req("t1", {Enq("p1", "q", "zz")}), now);
  EXPECT_EQ(Take().replies.at(0).status.code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(CoordinatorCoreTest, OnePhaseFailedPrepareIsSettledByAnAbortNotPresumed) {
  config.one_phase = true;
  core().Execute(1, Req("t1", {Enq("p1", "q", "a")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", absl::UnavailableError("connection reset"), now);
  Output o = Take();
  // The Prepare may have committed there: no decision, no reply, an Abort.
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(o.replies.empty());
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1"}));
  ASSERT_NE(LatestTimer(o), nullptr);
  TimerRequest resend = *LatestTimer(o);
  EXPECT_EQ(resend.at_ms, now + 50);
  core().OnAbortReply("t1", "p1", absl::UnavailableError("down"), now);
  EXPECT_TRUE(Take().empty());
  Fire(resend);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1"}));  // resent, backing off
  ASSERT_NE(LatestTimer(o), nullptr);
  EXPECT_EQ(LatestTimer(o)->at_ms, now + 100);
  EXPECT_EQ(core().GetTransaction("t1")->outcome(), v1::PENDING);
  // Acknowledged: ABORTED is durable at p1, which can no longer commit it.
  core().OnAbortReply("t1", "p1", absl::OkStatus(), now);
  o = Take();
  EXPECT_TRUE(o.send.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_ABORTED);
  EXPECT_EQ(Strs(rec.acknowledged().begin(), rec.acknowledged().end()), (Strs{"p1"}));
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "connection reset"));
}

// A group between leaders gets the same one-phase Prepare again, with
// backoff, instead of the Abort that would settle it as aborted.
TEST_F(CoordinatorCoreTest, OnePhaseGroupBetweenLeadersIsAskedAgainThenSettledAtTheDeadline) {
  config.one_phase = true;
  config.participant_groups = {"p1"};
  core().Execute(1, Req("t1", {Enq("p1", "q", "a")}, v1::TWO_PC, 300), now);
  Output o = Take();
  ASSERT_EQ(o.timers.size(), 1u);
  const TimerRequest deadline = o.timers[0];
  core().OnPrepareReply("t1", "p1", absl::UnavailableError("no leader is known"), now);
  o = Take();
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.persist.empty());
  ASSERT_NE(LatestTimer(o), nullptr);
  EXPECT_EQ(LatestTimer(o)->at_ms, now + 50);
  Fire(*LatestTimer(o));
  o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_EQ(o.send[0].type, MsgType::kPrepare);
  EXPECT_TRUE(o.send[0].prepare.one_phase());
  EXPECT_EQ(o.send[0].prepare.ops(0).enqueue().payload(), "a");
  core().OnPrepareReply("t1", "p1", YesWith({8}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{8}));
  Fire(deadline);  // the vote is in: nothing left to do
  EXPECT_TRUE(Take().send.empty());

  // Unreachable until the deadline: then settled with an Abort as before.
  core().Execute(2, Req("t2", {Enq("p1", "q", "b")}, v1::TWO_PC, 300), now);
  o = Take();
  const TimerRequest deadline2 = o.timers.at(0);
  core().OnPrepareReply("t2", "p1", absl::DeadlineExceededError("rpc deadline"), now);
  Take();
  Fire(deadline2);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1"}));
  EXPECT_TRUE(o.persist.empty()) << "not decided until p1 answers the Abort";
}

TEST_F(CoordinatorCoreTest, OnePhaseDeadlineAbortRefusedAsCommittedFetchesTheSequences) {
  config.one_phase = true;
  core().Execute(1, Req("t1", {Enq("p1", "q", "a")}, v1::TWO_PC, 300), now);
  Output o = Take();
  ASSERT_EQ(o.timers.size(), 1u);
  Fire(o.timers[0]);  // the vote deadline
  o = Take();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(o.replies.empty());
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1"}));
  // It committed in one phase: the Abort is refused, and the same Prepare
  // (answered from its outcome) brings the sequences.
  core().OnAbortReply("t1", "p1",
                      absl::FailedPreconditionError("transaction t1 was committed here"), now);
  o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_EQ(o.send[0].type, MsgType::kPrepare);
  EXPECT_TRUE(o.send[0].prepare.one_phase());
  EXPECT_EQ(o.send[0].prepare.ops_size(), 1);
  EXPECT_TRUE(o.persist.empty());
  // Lost, then resent by its timer.
  core().OnPrepareReply("t1", "p1", absl::DeadlineExceededError("rpc deadline"), now);
  EXPECT_TRUE(Take().empty());
  Fire(*LatestTimer(o));
  o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_EQ(o.send[0].type, MsgType::kPrepare);
  core().OnPrepareReply("t1", "p1", YesWith({3}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{3}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
  EXPECT_FALSE(o.persist[0].sync);

  // A late YES while the Abort is under way also commits (it was committed).
  core().Execute(2, Req("t2", {Enq("p1", "q", "b")}, v1::TWO_PC, 300), now);
  o = Take();
  Fire(o.timers.at(0));
  EXPECT_EQ(Targets(Take(), MsgType::kAbort), (Strs{"p1"}));
  core().OnPrepareReply("t2", "p1", YesWith({4}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  core().OnAbortReply("t2", "p1", absl::FailedPreconditionError("committed"), now);
  EXPECT_TRUE(Take().send.empty());
}

}  // namespace
}  // namespace atomq::coordinator
