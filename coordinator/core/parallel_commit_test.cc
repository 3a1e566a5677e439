// Parallel commit.

#include "coordinator/core/coordinator_core_test_util.h"

namespace atomq::coordinator {
namespace {

// A participant's QueryState answer.
v1::QueryStateResponse QS(v1::TxnState state, bool heuristic = false) {
  v1::QueryStateResponse r;
  r.set_state(state);
  r.set_heuristic(heuristic);
  return r;
}

// The PREPARING record a parallel-commit Execute of `req` writes.
v1::CoordinatorTxnRecord PreparingRecord(const v1::ExecuteRequest& req) {
  v1::CoordinatorTxnRecord r;
  r.set_txn_id(req.txn_id());
  r.set_protocol(v1::TWO_PC);
  r.set_state(v1::PREPARING);
  r.set_ops_digest(OpsDigest(req.ops()));
  std::map<std::string, uint32_t> index;
  for (const v1::Op& op : req.ops()) {
    auto [it, fresh] = index.emplace(op.participant(), static_cast<uint32_t>(index.size()));
    if (fresh) r.add_participants(op.participant());
    r.add_op_participant(it->second);
  }
  for (int i = 0; i < req.ops_size(); ++i) r.add_sequences(0);
  return r;
}

v1::ExecuteRequest ThreeWay(const std::string& id) {
  return Req(id, {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p3", "q", "c")});
}

// The states of the txn records among `persist`.
std::vector<v1::TxnState> States(const Output& o) {
  std::vector<v1::TxnState> v;
  for (const Batch& b : o.persist) v.push_back(Rec(b).state());
  return v;
}

TEST_F(CoordinatorCoreTest, ParallelCommitWritesAForcedPreparingRecordBesideThePrepares) {
  config.parallel_commit = true;
  v1::ExecuteRequest req = ThreeWay("t1");
  core().Execute(1, req, now);
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPrepare), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.persist[0].sync);
  ASSERT_EQ(o.persist[0].writes.size(), 1u);
  EXPECT_EQ(o.persist[0].writes[0].db, kTxnDb);
  EXPECT_EQ(o.persist[0].writes[0].key, "t1");
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::PREPARING);
  EXPECT_EQ(rec.txn_id(), "t1");
  EXPECT_EQ(rec.protocol(), v1::TWO_PC);
  EXPECT_EQ(rec.ops_digest(), OpsDigest(req.ops()));
  EXPECT_EQ(Strs(rec.participants().begin(), rec.participants().end()), (Strs{"p1", "p2", "p3"}));
  EXPECT_EQ(rec.acknowledged_size(), 0);
  EXPECT_TRUE(rec.reason().empty());
}

TEST_F(CoordinatorCoreTest,
       ParallelCommitVotesFirstThenDurableRecordCommitsWithoutACommittedRecord) {
  config.parallel_commit = true;
  v1::ExecuteRequest req = ThreeWay("t1");
  core().Execute(1, req, now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Batch preparing = o.persist[0];
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p3", Vote(v1::YES), now);
  o = Take();
  // Every vote is YES, but the PREPARING record is not durable yet.
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.persist.empty());  // no COMMITTED record: the PREPARING one decides
  EXPECT_TRUE(o.replies.empty());

  Durable(preparing);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(o.replies.empty());  // waits for the sequences (no reply_at_decision)
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_TRUE(Contains(o.log[0], "COMMITTED"));
  EXPECT_TRUE(Contains(o.log[0], "parallel commit"));

  core().OnCommitReply("t1", "p1", Seqs({10}), now);
  core().OnCommitReply("t1", "p2", Seqs({20}), now);
  o = Take();
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.persist.empty());
  core().OnCommitReply("t1", "p3", Seqs({30}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].request, 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{10, 20, 30}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
  EXPECT_TRUE(Rec(o.persist[0]).reason().empty());  // an ENDED commit
  EXPECT_FALSE(o.persist[0].sync);
  Durable(o.persist[0]);
  EXPECT_EQ(core().in_flight(), 0u);
  EXPECT_EQ(view.records.at("t1").state(), v1::ENDED);
}

TEST_F(CoordinatorCoreTest, ParallelCommitDurableRecordFirstThenLastYesCommitsAtOnce) {
  config.parallel_commit = true;
  v1::ExecuteRequest req = Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")});
  req.set_reply_at_decision(true);
  core().Execute(1, req, now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  // A durable PREPARING record alone decides nothing.
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.persist.empty());
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.replies.empty());
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2"}));
  EXPECT_TRUE(o.persist.empty());   // no COMMITTED record on the way
  ASSERT_EQ(o.replies.size(), 1u);  // reply_at_decision
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);

  core().OnCommitReply("t1", "p1", Seqs({7}), now);
  EXPECT_TRUE(Take().persist.empty());
  core().OnCommitReply("t1", "p2", Seqs({9}), now);
  o = Take();
  EXPECT_TRUE(o.replies.empty());
  EXPECT_EQ(States(o), (std::vector<v1::TxnState>{v1::ENDED}));
  EXPECT_FALSE(o.persist.at(0).sync);
  EXPECT_EQ(core().in_flight(), 0u);
}

TEST_F(CoordinatorCoreTest, ParallelCommitNeverSendsCommitWhileThePreparingRecordIsPending) {
  config.parallel_commit = true;
  core().Execute(1, ThreeWay("t1"), now);
  Output first = Take();
  ASSERT_EQ(first.persist.size(), 1u);
  for (const char* p : {"p1", "p2", "p3"}) core().OnPrepareReply("t1", p, Vote(v1::YES), now);
  Output o = Take();
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.replies.empty());
  // Duplicate votes, the votes deadline, and participants asking change nothing.
  for (const char* p : {"p1", "p2", "p3"}) core().OnPrepareReply("t1", p, Vote(v1::YES), now);
  for (const TimerRequest& t : first.timers) Fire(t);
  core().QueryState(5, "t1", now);
  o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(Targets(o, MsgType::kAbort).empty());
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.persist.empty());
  ASSERT_EQ(o.state_replies.size(), 1u);
  EXPECT_NE(o.state_replies[0].state, v1::STATE_COMMITTED);
  // Only the durable report releases the Commit.
  Durable(first.persist[0]);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
}

TEST_F(CoordinatorCoreTest, ParallelCommitReadOnlyVoteFallsBackToACommittedRecord) {
  config.parallel_commit = true;
  core().Execute(1, ThreeWay("t1"), now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  EXPECT_TRUE(Take().send.empty());
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::READ_ONLY), now);
  core().OnPrepareReply("t1", "p3", Vote(v1::YES), now);
  o = Take();
  // The PREPARING record is durable, yet a READ_ONLY voter leaves nothing to
  // find at recovery: the decision must be forced as a COMMITTED record.
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(o.persist[0].sync);
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p3"}));  // not the READ_ONLY voter
}

TEST_F(CoordinatorCoreTest, ParallelCommitFailedPreparingWriteFallsBackToACommittedRecord) {
  config.parallel_commit = true;
  // The write fails after every vote is in.
  core().Execute(1, ThreeWay("t1"), now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  uint64_t token = o.persist[0].token;
  for (const char* p : {"p1", "p2", "p3"}) core().OnPrepareReply("t1", p, Vote(v1::YES), now);
  EXPECT_TRUE(Take().send.empty());
  core().OnPersisted(token, absl::InternalError("disk full"), now);
  o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(o.persist[0].sync);
  Durable(o.persist[0]);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p1", "p2", "p3"}));

  // The write fails before the votes.
  core().Execute(2, ThreeWay("t2"), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  core().OnPersisted(o.persist[0].token, absl::InternalError("disk full"), now);
  o = Take();
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.persist.empty());
  for (const char* p : {"p1", "p2", "p3"}) core().OnPrepareReply("t2", p, Vote(v1::YES), now);
  o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
  Durable(o.persist[0]);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
}

// A NO aborts as before, except that Abort waits for the ABORT record: an
// Abort in flight across a crash could reach a participant after a recovery
// that found everyone prepared and committed.
TEST_F(CoordinatorCoreTest, ParallelCommitNoVoteAbortsAfterTheAbortRecord) {
  config.parallel_commit = true;
  core().Execute(1, ThreeWay("t1"), now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Batch preparing = o.persist[0];
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::NO, "no room"), now);
  o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kAbort).empty());
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_ABORTED);
  EXPECT_EQ(rec.reason(), "p2 voted NO: no room");
  Batch abort = o.persist[0];
  // The PREPARING record becoming durable now, and a late YES, commit nothing.
  Durable(preparing);
  core().OnPrepareReply("t1", "p3", Vote(v1::YES), now);
  o = Take();
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.replies.empty());
  Durable(abort);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p3"}));
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_EQ(o.replies[0].response.reason(), "p2 voted NO: no room");
  EXPECT_EQ(view.records.at("t1").state(), v1::STATE_ABORTED);
}

TEST_F(CoordinatorCoreTest, ParallelCommitRecoveryAsksEveryParticipantThenCommits) {
  config.parallel_commit = true;
  v1::ExecuteRequest req = ThreeWay("t1");
  core().Execute(1, req, now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);  // the PREPARING record is on disk; then a crash
  ASSERT_EQ(view.records.at("t1").state(), v1::PREPARING);

  Restart();
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kQuery), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(Targets(o, MsgType::kPrepare).empty());
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(Targets(o, MsgType::kAbort).empty());
  EXPECT_TRUE(o.persist.empty());
  for (const OutMessage& m : o.send) EXPECT_EQ(m.address, config.participants.at(m.participant));

  // Undecided meanwhile: participants hear PREPARING, a retry waits.
  core().QueryState(7, "t1", now);
  o = Take();
  ASSERT_EQ(o.state_replies.size(), 1u);
  EXPECT_EQ(o.state_replies[0].state, v1::PREPARING);
  core().Execute(2, req, now);
  o = Take();
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.send.empty());

  core().OnQueryReply("t1", "p1", QS(v1::PREPARED), now);
  core().OnQueryReply("t1", "p2", QS(v1::STATE_COMMITTED), now);
  o = Take();
  EXPECT_TRUE(o.send.empty());  // p3 has not answered
  EXPECT_TRUE(o.replies.empty());
  core().OnQueryReply("t1", "p3", QS(v1::PREPARED), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(o.persist.empty());  // no COMMITTED record needed
  for (const char* p : {"p1", "p2", "p3"}) {
    core().OnCommitReply("t1", p, Seqs({p[1] == '1' ? 11u : p[1] == '2' ? 22u : 33u}), now);
  }
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].request, 2u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{11, 22, 33}));
  EXPECT_EQ(States(o), (std::vector<v1::TxnState>{v1::ENDED}));
}

TEST_F(CoordinatorCoreTest, ParallelCommitRecoveryAbortsWhenAParticipantAnswersAborted) {
  config.parallel_commit = true;
  v1::ExecuteRequest req = ThreeWay("t1");
  core().Recover({PreparingRecord(req)}, now);
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kQuery), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(o.persist.empty());
  core().Execute(2, req, now);
  EXPECT_TRUE(Take().replies.empty());
  core().OnQueryReply("t1", "p1", QS(v1::PREPARED), now);
  EXPECT_TRUE(Take().empty());
  core().OnQueryReply("t1", "p2", QS(v1::STATE_ABORTED), now);
  o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(Targets(o, MsgType::kAbort).empty());  // after the ABORT record
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_ABORTED);
  EXPECT_TRUE(o.persist[0].sync);
  Batch abort = o.persist[0];
  // A late PREPARED changes nothing.
  core().OnQueryReply("t1", "p3", QS(v1::PREPARED), now);
  EXPECT_TRUE(Take().send.empty());
  Durable(abort);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p3"}));
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].request, 2u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  core().QueryState(3, "t1", now);
  EXPECT_EQ(Take().state_replies.at(0).state, v1::STATE_ABORTED);
}

// An operator resolved p2 while the coordinator was down: it had prepared,
// so the others commit (as they would after a COMMITTED record) and p2's
// refusal of the Commit is what reports the damage.
TEST_F(CoordinatorCoreTest, ParallelCommitRecoveryCountsAHeuristicOutcomeAsAYesVote) {
  config.parallel_commit = true;
  core().Recover({PreparingRecord(ThreeWay("t1"))}, now);
  Take();
  core().OnQueryReply("t1", "p1", QS(v1::PREPARED), now);
  core().OnQueryReply("t1", "p2", QS(v1::STATE_ABORTED, /*heuristic=*/true), now);
  core().OnQueryReply("t1", "p3", QS(v1::PREPARED), now);
  Output o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kAbort).empty());
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
}

TEST_F(CoordinatorCoreTest, ParallelCommitRecoveryAsksAgainAfterAFailedOrUndecidedAnswer) {
  config.parallel_commit = true;
  core().Recover({PreparingRecord(ThreeWay("t1"))}, now);
  Output o = Take();
  ASSERT_EQ(o.send.size(), 3u);
  ASSERT_EQ(o.timers.size(), 3u);
  std::vector<TimerRequest> timers = o.timers;
  core().OnQueryReply("t1", "p1", absl::UnavailableError("connection refused"), now);
  core().OnQueryReply("t1", "p2", QS(v1::PREPARING), now);
  core().OnQueryReply("t1", "p3", QS(v1::PREPARED), now);
  o = Take();
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.persist.empty());
  for (const TimerRequest& t : timers) Fire(t);
  o = Take();
  // p3 answered; p1 and p2 are asked again.
  EXPECT_EQ(Targets(o, MsgType::kQuery), (Strs{"p1", "p2"}));
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(Targets(o, MsgType::kAbort).empty());
  core().OnQueryReply("t1", "p1", QS(v1::PREPARED), now);
  EXPECT_TRUE(Take().send.empty());
  core().OnQueryReply("t1", "p2", QS(v1::PREPARED), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(o.persist.empty());
}

TEST_F(CoordinatorCoreTest, ParallelCommitPlantedPresumedAbortSendsAbortWithoutAsking) {
  config.parallel_commit = true;
  config.plant = Plant::kPreparingPresumedAbort;
  core().Recover({PreparingRecord(ThreeWay("t1"))}, now);
  Output o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kQuery).empty());
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2", "p3"}));
}

TEST_F(CoordinatorCoreTest, ParallelCommitNeverForThreePcOnePhaseOrOneParticipant) {
  config.parallel_commit = true;
  config.one_phase = true;
  // 3PC, several participants: PRECOMMITTED after the votes, never PREPARING.
  core().Execute(1, Req("t3", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}, v1::THREE_PC), now);
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPrepare), (Strs{"p1", "p2"}));
  EXPECT_TRUE(o.persist.empty());
  core().OnPrepareReply("t3", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t3", "p2", Vote(v1::YES), now);
  o = Take();
  EXPECT_EQ(States(o), (std::vector<v1::TxnState>{v1::PRECOMMITTED}));
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());

  // One phase (a single participant): nothing written before the vote.
  core().Execute(2, Req("t1p", {Enq("p1", "q", "a")}, v1::TWO_PC), now);
  o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_TRUE(o.send[0].prepare.one_phase());
  EXPECT_TRUE(o.persist.empty());

  // A single participant with one phase off: plain 2PC, no PREPARING.
  config.one_phase = false;
  Restart();
  Take();
  core().Execute(3, Req("t1", {Enq("p1", "q", "a")}, v1::TWO_PC), now);
  o = Take();
  EXPECT_TRUE(o.persist.empty());
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  o = Take();
  EXPECT_EQ(States(o), (std::vector<v1::TxnState>{v1::STATE_COMMITTED}));
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
}

}  // namespace
}  // namespace atomq::coordinator
