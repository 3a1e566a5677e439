// 2PC: votes, the decision, the outcome round, read-only voters, QueryState.

#include "coordinator/core/coordinator_core_test_util.h"

namespace atomq::coordinator {
namespace {

// ---------------------------------------------------------------- 2PC

TEST_F(CoordinatorCoreTest, TwoPcHappyPathThreeParticipants) {
  v1::ExecuteRequest req = Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p1", "r", "c"),
                                      AckOp("p3", "in", 7, "lease-1"), Enq("p2", "q", "d")});
  core().Execute(1, req, now);
  Output o = Take();
  ASSERT_EQ(o.send.size(), 3u);
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now + 5000);
  std::map<std::string, std::vector<std::string>> payloads;
  for (const OutMessage& m : o.send) {
    EXPECT_EQ(m.type, MsgType::kPrepare);
    EXPECT_EQ(m.txn_id, "t1");
    EXPECT_EQ(m.address, config.participants.at(m.participant));
    const v1::PrepareRequest& p = m.prepare;
    EXPECT_EQ(p.txn_id(), "t1");
    EXPECT_EQ(p.participant(), m.participant);
    EXPECT_EQ(p.protocol(), v1::TWO_PC);
    EXPECT_EQ(p.coordinator_id(), "c1");
    EXPECT_EQ(p.coordinator_address(), "coord:7000");
    ASSERT_EQ(p.participants_size(), 3);
    EXPECT_EQ(p.participants(0).participant(), "p1");
    EXPECT_EQ(p.participants(0).address(), "h1:7001");
    EXPECT_EQ(p.participants(2).participant(), "p3");
    for (const v1::Op& op : p.ops()) {
      EXPECT_EQ(op.participant(), m.participant);
      payloads[m.participant].push_back(op.has_ack() ? "ack" : op.enqueue().payload());
    }
  }
  EXPECT_EQ(payloads["p1"], (Strs{"a", "c"}));  // only its ops, request order
  EXPECT_EQ(payloads["p2"], (Strs{"b", "d"}));
  EXPECT_EQ(payloads["p3"], (Strs{"ack"}));
  EXPECT_EQ(core().in_flight(), 1u);

  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p3", Vote(v1::YES), now);
  EXPECT_TRUE(Take().empty());
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  o = Take();
  // The decision is being forced: nothing goes out before it is durable.
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  ASSERT_EQ(o.persist[0].writes.size(), 1u);
  EXPECT_EQ(o.persist[0].writes[0].db, kTxnDb);
  EXPECT_EQ(o.persist[0].writes[0].key, "t1");
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_COMMITTED);
  EXPECT_EQ(rec.ops_digest(), OpsDigest(req.ops()));
  EXPECT_EQ(Strs(rec.participants().begin(), rec.participants().end()), (Strs{"p1", "p2", "p3"}));
  EXPECT_EQ(std::vector<uint32_t>(rec.op_participant().begin(), rec.op_participant().end()),
            (std::vector<uint32_t>{0, 1, 0, 2, 1}));
  EXPECT_EQ(rec.acknowledged_size(), 0);

  now += 3;
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
  EXPECT_EQ(o.timers.size(), 3u);  // one resend timer each
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_EQ(o.log[0], "txn t1 COMMITTED (2pc, 3 participants)");
  EXPECT_TRUE(o.replies.empty());  // waits for the sequences

  core().OnCommitReply("t1", "p2", Seqs({20, 21}), now);
  core().OnCommitReply("t1", "p1", Seqs({10, 11}), now);
  EXPECT_TRUE(Take().replies.empty());
  core().OnCommitReply("t1", "p3", Seqs({0}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].request, 1u);
  EXPECT_TRUE(o.replies[0].status.ok());
  EXPECT_EQ(o.replies[0].response.txn_id(), "t1");
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{10, 20, 11, 0, 21}));
  ASSERT_EQ(o.persist.size(), 1u);
  rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::ENDED);
  EXPECT_EQ(rec.acknowledged_size(), 3);
  EXPECT_EQ(std::vector<uint64_t>(rec.sequences().begin(), rec.sequences().end()),
            (std::vector<uint64_t>{10, 20, 11, 0, 21}));
  // Beside it, the time-index key that lets old records be found and erased.
  ASSERT_EQ(o.persist[0].writes.size(), 2u);
  EXPECT_EQ(o.persist[0].writes[1].db, kEndedDb);
  EXPECT_EQ(o.persist[0].writes[1].key, EncodeU64(rec.decided_unix_ms()) + "t1");
  EXPECT_FALSE(o.persist[0].sync);
  EXPECT_EQ(core().in_flight(), 0u);
  Durable(o.persist[0]);
  // ENDED is not waited on; its END notices wait for the next message.
  EXPECT_TRUE(Take().empty());
}

TEST_F(CoordinatorCoreTest, ReplyAtDecisionAnswersOnceTheCommitIsDurableNotApplied) {
  v1::ExecuteRequest req = Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")});
  req.set_reply_at_decision(true);
  core().Execute(1, req, now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.replies.empty());  // never before the decision is on disk
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2"}));
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{0, 0}));
  // A retry meanwhile is answered at once too.
  core().Execute(2, req, now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].request, 2u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  // The commit still runs to the end: acks are awaited and ENDED written.
  core().OnCommitReply("t1", "p1", Seqs({7}), now);
  EXPECT_TRUE(Take().persist.empty());
  core().OnCommitReply("t1", "p2", Seqs({9}), now);
  o = Take();
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
  EXPECT_EQ(core().in_flight(), 0u);
}

TEST_F(CoordinatorCoreTest, NoVoteAbortsAndAbortGoesOnlyToThoseThatMayHavePrepared) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "audit", "b"), Enq("p3", "q", "c")}),
                 now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::NO, "queue \"audit\" does not exist"), now);
  Output o = Take();
  // p1 prepared, p3 has not answered: either may hold a PREPARED record.
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p3"}));
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_ABORTED);
  EXPECT_EQ(rec.reason(), "p2 voted NO: queue \"audit\" does not exist");
  EXPECT_EQ(Strs(rec.acknowledged().begin(), rec.acknowledged().end()), (Strs{"p2"}));
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_EQ(o.log[0], "txn t1 ABORTED: p2 voted NO: queue \"audit\" does not exist");

  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_TRUE(o.replies[0].status.ok());
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_EQ(o.replies[0].response.reason(), "p2 voted NO: queue \"audit\" does not exist");
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{0, 0, 0}));
  EXPECT_EQ(core().in_flight(), 0u);

  // A vote after the decision changes nothing.
  core().OnPrepareReply("t1", "p3", Vote(v1::YES), now);
  EXPECT_TRUE(Take().empty());
  core().OnAbortReply("t1", "p1", absl::OkStatus(), now);
  EXPECT_TRUE(Take().empty());
  core().OnAbortReply("t1", "p3", absl::OkStatus(), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::ENDED);
  EXPECT_EQ(rec.reason(), "p2 voted NO: queue \"audit\" does not exist");
  Durable(o.persist[0]);
  absl::StatusOr<v1::TransactionInfo> info = core().GetTransaction("t1");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::ENDED);
  EXPECT_EQ(info->outcome(), v1::ABORTED);
}

TEST_F(CoordinatorCoreTest, FailedPrepareRpcAborts) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p3", "q", "c")}),
                 now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", absl::UnavailableError("connection refused"), now);
  Output o = Take();
  // The failed call may have reached p2 and prepared it.
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2", "p3"}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).reason(), "p2 unreachable: UNAVAILABLE: connection refused");
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_EQ(o.replies[0].response.reason(), "p2 unreachable: UNAVAILABLE: connection refused");
}

// A participant run as a group may be between leaders: its Prepare is
// sent again, with backoff, until the votes' deadline, instead of aborting.
TEST_F(CoordinatorCoreTest, AGroupBetweenLeadersIsAskedAgainUntilTheDeadline) {
  config.participant_groups = {"p2"};
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", absl::UnavailableError("no leader is known"), now);
  Output o = Take();
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.persist.empty()) << "no decision yet";
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now + 50);
  Fire(o.timers[0]);
  o = Take();
  ASSERT_EQ(Targets(o, MsgType::kPrepare), (Strs{"p2"}));
  ASSERT_EQ(o.send[0].prepare.ops_size(), 1);
  EXPECT_EQ(o.send[0].prepare.ops(0).enqueue().payload(), "b");
  // Down again: the next try waits twice as long.
  core().OnPrepareReply("t1", "p2", absl::DeadlineExceededError("deadline"), now);
  o = Take();
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now + 100);
  const TimerRequest left_over = o.timers[0];
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
  // The retry timer left over finds the vote in and sends nothing.
  Fire(left_over);
  EXPECT_TRUE(Take().send.empty());
}

// Past the deadline the group's missing vote aborts as any other does.
TEST_F(CoordinatorCoreTest, AGroupThatStaysUnreachableAbortsAtTheDeadline) {
  config.participant_groups = {"p2"};
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Output o = Take();
  ASSERT_EQ(o.timers.size(), 1u);
  const TimerRequest deadline = o.timers[0];
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", absl::UnavailableError("connection refused"), now);
  Take();
  Fire(deadline);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2"}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).reason(), "prepare timed out after 5000 ms waiting for p2");
}

TEST_F(CoordinatorCoreTest, PrepareDeadlineAborts) {
  core().Execute(
      1,
      Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p3", "q", "c")}, v1::TWO_PC, 300),
      now);
  Output o = Take();
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now + 300);
  TimerRequest deadline = o.timers[0];
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  EXPECT_TRUE(Take().empty());
  Fire(deadline);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2", "p3"}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).reason(), "prepare timed out after 300 ms waiting for p2, p3");
  EXPECT_TRUE(o.replies.empty());
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.reason(), "prepare timed out after 300 ms waiting for p2, p3");
  // A stale firing of the same timer does nothing.
  core().OnTimer(deadline.timer_id, now);
  EXPECT_TRUE(Take().empty());
}

TEST_F(CoordinatorCoreTest, TimeoutDefaultsAndCap) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a")}), now);
  EXPECT_EQ(Take().timers.at(0).at_ms, now + 5000);
  core().Execute(2, Req("t2", {Enq("p1", "q", "a")}, v1::TWO_PC, 999'999'999), now);
  EXPECT_EQ(Take().timers.at(0).at_ms, now + 60000);
}

TEST_F(CoordinatorCoreTest, DuplicateAndLateMessagesAreIgnored) {
  // Inputs about transactions nobody knows.
  core().OnPrepareReply("nope", "p1", Vote(v1::YES), now);
  core().OnCommitReply("nope", "p1", Seqs({1}), now);
  core().OnAbortReply("nope", "p1", absl::OkStatus(), now);
  core().OnPreCommitReply("nope", "p1", absl::OkStatus(), now);
  core().OnTimer(12345, now);
  core().OnPersisted(999, absl::OkStatus(), now);
  EXPECT_TRUE(Take().empty());

  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Output o = Take();
  TimerRequest deadline = o.timers.at(0);
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);      // duplicate
  core().OnPrepareReply("t1", "p1", Vote(v1::NO, "x"), now);  // contradicts: first vote stands
  core().OnPrepareReply("t1", "p3", Vote(v1::NO, "x"), now);  // not a participant of t1
  EXPECT_TRUE(Take().empty());
  core().OnCommitReply("t1", "p1", Seqs({1}), now);  // before any Commit was sent
  EXPECT_TRUE(Take().empty());
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Batch commit = o.persist[0];
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);  // duplicate after the decision
  EXPECT_TRUE(Take().empty());
  Durable(commit);
  o = Take();
  std::map<std::string, TimerRequest> resend;
  for (size_t i = 0; i < o.send.size(); ++i) resend[o.send[i].participant] = o.timers.at(i);
  core().OnPersisted(commit.token, absl::OkStatus(), now);  // duplicate report
  EXPECT_TRUE(Take().empty());
  core().OnCommitReply("t1", "p1", Seqs({5}), now);
  core().OnCommitReply("t1", "p1", Seqs({6}), now);        // duplicate ack
  core().OnAbortReply("t1", "p1", absl::OkStatus(), now);  // wrong outcome: ignored
  EXPECT_TRUE(Take().empty());
  Fire(resend["p1"]);  // p1 acked: stale
  EXPECT_TRUE(Take().empty());
  core().OnCommitReply("t1", "p2", Seqs({8}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{5, 8}));
  Fire(deadline);  // the transaction is done
  Fire(resend["p2"]);
  core().OnCommitReply("t1", "p2", Seqs({8}), now);
  EXPECT_TRUE(Take().persist.size() <= 1u);
  EXPECT_TRUE(Take().empty());
}

// -------------------------------------------------------- completion round

TEST_F(CoordinatorCoreTest, CommitResentWithBackoffUntilAcknowledged) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Durable(Take().persist.at(0));
  Output o = Take();
  ASSERT_EQ(o.send.size(), 2u);
  ASSERT_EQ(o.timers.size(), 2u);
  EXPECT_EQ(o.timers[0].at_ms, now + 50);
  TimerRequest p2_timer = o.send[1].participant == "p2" ? o.timers[1] : o.timers[0];
  core().OnCommitReply("t1", "p1", Seqs({1}), now);
  Take();

  std::vector<int64_t> gaps;
  for (int i = 0; i < 4; ++i) {
    int64_t before = p2_timer.at_ms;
    Fire(p2_timer);
    core().OnCommitReply("t1", "p2", absl::UnavailableError("down"), now);
    o = Take();
    EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p2"}));
    ASSERT_EQ(o.timers.size(), 1u);
    p2_timer = o.timers[0];
    gaps.push_back(p2_timer.at_ms - before);
    EXPECT_TRUE(o.persist.empty());
  }
  EXPECT_EQ(gaps, (std::vector<int64_t>{100, 200, 200, 200}));  // doubling, capped
  core().OnCommitReply("t1", "p2", Seqs({2}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{1, 2}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
  Fire(p2_timer);  // stale now
  EXPECT_TRUE(Take().empty());
}

TEST_F(CoordinatorCoreTest, DeadlineReleasesCommitReplyWithoutMissingSequences) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}, v1::TWO_PC, 1000), now);
  TimerRequest deadline = Take().timers.at(0);
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Durable(Take().persist.at(0));
  Take();
  core().OnCommitReply("t1", "p1", Seqs({7}), now);
  EXPECT_TRUE(Take().replies.empty());
  Fire(deadline);
  Output o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{7, 0}));
  EXPECT_TRUE(o.persist.empty());  // p2 still owes its ack
  EXPECT_EQ(core().in_flight(), 0u);
  core().OnCommitReply("t1", "p2", Seqs({9}), now);
  o = Take();
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).sequences(1), 9u);
  absl::StatusOr<v1::TransactionInfo> info = core().GetTransaction("t1");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->results(1).sequence(), 9u);
}

TEST_F(CoordinatorCoreTest, CommitRecordWriteFailureAborts) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Batch commit = Take().persist.at(0);
  core().OnPersisted(commit.token, absl::ResourceExhaustedError("map full"), now);
  Output o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2"}));
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_ABORTED);
  EXPECT_EQ(rec.reason(), "decision log write failed: RESOURCE_EXHAUSTED: map full");
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_EQ(o.replies[0].response.reason(),
            "decision log write failed: RESOURCE_EXHAUSTED: map full");
}

TEST_F(CoordinatorCoreTest, AbortRecordWriteFailureIsRetriedBeforeTheReply) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::NO, "nope"), now);
  Output o = Take();
  core().OnPersisted(o.persist.at(0).token, absl::ResourceExhaustedError("disk full"), now);
  o = Take();
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.persist.empty());
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now + 50);
  Fire(o.timers[0]);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_ABORTED);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
}

TEST_F(CoordinatorCoreTest, AbortRefusedAsCommittedIsAnAlarm) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::NO, "nope"), now);
  Durable(Take().persist.at(0));
  Take();
  core().OnAbortReply("t1", "p1", absl::FailedPreconditionError("committed here"), now);
  Output o = Take();
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_TRUE(Contains(o.log[0], "ALARM txn t1: p1 refused Abort"));
  ASSERT_EQ(o.persist.size(), 1u);  // nothing more to send: it ends
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
}

// -------------------------------------------------------------- read-only

TEST_F(CoordinatorCoreTest, ReadOnlyVoterGetsNoSecondRound) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), AckOp("p2", "q", 3, "l")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::READ_ONLY), now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_COMMITTED);
  EXPECT_EQ(Strs(rec.acknowledged().begin(), rec.acknowledged().end()), (Strs{"p2"}));
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1"}));
  core().OnCommitReply("t1", "p1", Seqs({12}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{12, 0}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.send.empty());
  Durable(o.persist[0]);
  EXPECT_TRUE(Take().empty());
  // A read-only voter kept nothing: the next messages to p1 and p2 carry an
  // END notice for t1 to p1 only.
  core().Execute(2, Req("t2", {Enq("p1", "q", "b"), Enq("p2", "q", "c")}), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPrepare), (Strs{"p1", "p2"}));
  EXPECT_EQ(Targets(o, MsgType::kForget), (Strs{"p1"}));
  for (const OutMessage& m : o.send) {
    if (m.type == MsgType::kForget) {
      EXPECT_EQ(m.txn_id, "t1");
    }
  }
}

TEST_F(CoordinatorCoreTest, EndNoticesGoOnlyAfterADurableEndWithTheNextMessage) {
  auto commit = [&](RequestId r, const std::string& id, const Strs& parts) {
    std::vector<v1::Op> ops;
    for (const std::string& p : parts) ops.push_back(Enq(p, "q", id));
    core().Execute(r, Req(id, ops), now);
    Output o = Take();
    for (const std::string& p : parts) core().OnPrepareReply(id, p, Vote(v1::YES), now);
    o = Take();
    Durable(o.persist.at(0));
    Take();
    for (const std::string& p : parts) core().OnCommitReply(id, p, Seqs({1}), now);
    return Take();  // the reply and the ENDED record, not yet durable
  };
  auto forgets = [](const Output& o) {
    Strs v;
    for (const OutMessage& m : o.send) {
      if (m.type == MsgType::kForget) v.push_back(m.participant + ":" + m.txn_id);
    }
    std::sort(v.begin(), v.end());
    return v;
  };

  // Not before ENDED is durable, not for one whose write failed (recovery
  // resends its outcome instead), and not without another message.
  Output o = commit(1, "t1", {"p1", "p2"});
  ASSERT_EQ(o.persist.size(), 1u);
  ASSERT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
  core().OnPersisted(o.persist[0].token, absl::ResourceExhaustedError("disk full"), now);
  o = commit(2, "t2", {"p1", "p2"});
  EXPECT_TRUE(forgets(o).empty());
  Durable(o.persist.at(0));
  EXPECT_TRUE(Take().empty());
  // t3's Prepare to p1 takes t2's notice to p1 along; p2's waits.
  o = commit(3, "t3", {"p1", "p3"});
  Durable(o.persist.at(0));
  core().Execute(4, Req("t4", {Enq("p1", "q", "x")}), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPrepare), (Strs{"p1"}));
  EXPECT_EQ(forgets(o), (Strs{"p1:t3"}));
  core().Execute(5, Req("t5", {Enq("p2", "q", "x"), Enq("p3", "q", "y")}), now);
  o = Take();
  EXPECT_EQ(forgets(o), (Strs{"p2:t2", "p3:t3"}));
  EXPECT_EQ(o.timers.size(), 1u);  // t5's deadline: notices get no resend timer

  // Evicted from memory before its ENDED is durable: the notice comes from
  // the durable record, to every participant it names (votes are not in it,
  // so the read-only p2 hears it too).
  config.finished_cache_max = 0;
  Restart();
  Take();
  core().Execute(6, Req("t6", {Enq("p1", "q", "a"), AckOp("p2", "q", 3, "l"), Enq("p3", "q", "b")}),
                 now);
  Take();
  core().OnPrepareReply("t6", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t6", "p2", Vote(v1::READ_ONLY), now);
  core().OnPrepareReply("t6", "p3", Vote(v1::YES), now);
  o = Take();
  Durable(o.persist.at(0));
  Take();
  core().OnCommitReply("t6", "p1", Seqs({1}), now);
  core().OnCommitReply("t6", "p3", Seqs({2}), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  EXPECT_TRUE(Take().send.empty());
  core().Execute(7, Req("t7", {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p3", "q", "c")}),
                 now);
  o = Take();
  EXPECT_EQ(forgets(o), (Strs{"p1:t6", "p2:t6", "p3:t6"}));
  for (const OutMessage& m : o.send) {
    EXPECT_EQ(m.address, config.participants.at(m.participant));
  }
}

TEST_F(CoordinatorCoreTest, AllReadOnlyCommitsWithoutAForcedRecord) {
  core().Execute(1, Req("t1", {AckOp("p1", "q", 3, "l"), AckOp("p2", "q", 4, "l")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::READ_ONLY), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::READ_ONLY), now);
  Output o = Take();
  EXPECT_TRUE(o.send.empty());
  // Answered at once; only ENDED follows, for retries, and is not waited on.
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
  EXPECT_TRUE(Rec(o.persist[0]).reason().empty());
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_TRUE(Contains(o.log[0], "COMMITTED"));
  EXPECT_EQ(core().in_flight(), 0u);
}

TEST_F(CoordinatorCoreTest, ReadOnlyAndNoVotesAbortWithoutAborts) {
  core().Execute(1, Req("t1", {AckOp("p1", "q", 3, "l"), Enq("p2", "q", "a")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::READ_ONLY), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::NO, "x"), now);
  Output o = Take();
  EXPECT_TRUE(o.send.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  ASSERT_EQ(o.persist.size(), 1u);  // everyone is done: ENDED follows at once
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
}

// ------------------------------------------------------------- QueryState

TEST_F(CoordinatorCoreTest, QueryStateForUnknownIdPersistsAbortFirst) {
  core().QueryState(1, "ghost", now);
  Output o = Take();
  EXPECT_TRUE(o.state_replies.empty());  // not before the record is durable
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(o.persist[0].writes.at(0).key, "ghost");
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_ABORTED);
  EXPECT_FALSE(rec.reason().empty());
  Batch abort = o.persist[0];

  // Another query and a client using the id meanwhile both wait for it.
  core().QueryState(2, "ghost", now);
  core().Execute(3, Req("ghost", {Enq("p1", "q", "a")}), now);
  o = Take();
  EXPECT_TRUE(o.state_replies.empty());
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.send.empty());

  Durable(abort);
  o = Take();
  ASSERT_EQ(o.state_replies.size(), 2u);
  EXPECT_EQ(o.state_replies[0].request, 1u);
  EXPECT_EQ(o.state_replies[0].state, v1::STATE_ABORTED);
  EXPECT_EQ(o.state_replies[1].state, v1::STATE_ABORTED);
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{0}));
  for (const Batch& b : o.persist) Durable(b);

  // Later, after a restart and with nothing cached, the id still cannot commit.
  config.finished_cache_max = 0;
  Restart();
  Take();
  core().Execute(4, Req("ghost", {Enq("p2", "q", "b")}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_TRUE(o.replies[0].status.ok());
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(o.send.empty());
  core().QueryState(5, "ghost", now);
  o = Take();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(o.state_replies.at(0).state, v1::STATE_ABORTED);
}

TEST_F(CoordinatorCoreTest, QueryStateFollowsTheDurableDecision) {
  auto query = [&](const std::string& id) {
    core().QueryState(9, id, now);
    Output o = Take();
    EXPECT_EQ(o.state_replies.size(), 1u) << id;
    return o.state_replies.empty() ? v1::TXN_STATE_UNSPECIFIED : o.state_replies[0].state;
  };
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Take();
  EXPECT_EQ(query("t1"), v1::PREPARING);
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Batch commit = Take().persist.at(0);
  EXPECT_EQ(query("t1"), v1::PREPARING);  // the commit is not durable yet
  Durable(commit);
  Take();
  EXPECT_EQ(query("t1"), v1::STATE_COMMITTED);
  core().QueryState(10, "bad id!", now);  // can never commit: no record needed
  Output o = Take();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(o.state_replies.at(0).state, v1::STATE_ABORTED);
}

}  // namespace
}  // namespace atomq::coordinator
