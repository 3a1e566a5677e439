// Recovery from the decision log.

#include "coordinator/core/coordinator_core_test_util.h"

namespace atomq::coordinator {
namespace {

// --------------------------------------------------------------- recovery

TEST_F(CoordinatorCoreTest, RecoverResendsOutcomes) {
  v1::ExecuteRequest creq = Req("c", {Enq("p1", "q", "a"), Enq("p2", "q", "b")});
  v1::CoordinatorTxnRecord c;
  c.set_txn_id("c");
  c.set_state(v1::STATE_COMMITTED);
  c.set_ops_digest(OpsDigest(creq.ops()));
  c.add_participants("p1");
  c.add_participants("p2");
  c.add_acknowledged("p1");
  c.add_op_participant(0);
  c.add_op_participant(1);
  c.add_sequences(5);
  c.add_sequences(0);
  v1::CoordinatorTxnRecord a;
  a.set_txn_id("a");
  a.set_state(v1::STATE_ABORTED);
  a.set_reason("p3 voted NO: x");
  a.add_participants("p1");
  a.add_participants("p3");
  a.add_acknowledged("p3");
  v1::CoordinatorTxnRecord pc;
  pc.set_txn_id("pc");
  pc.set_protocol(v1::THREE_PC);
  pc.set_state(v1::PRECOMMITTED);
  pc.add_participants("p1");
  pc.add_participants("p2");
  pc.add_participants("p3");
  pc.add_acknowledged("p3");  // READ_ONLY
  v1::CoordinatorTxnRecord e;
  e.set_txn_id("e");
  e.set_state(v1::ENDED);
  e.add_participants("p2");
  e.add_acknowledged("p2");
  e.add_op_participant(0);
  e.add_sequences(77);
  for (const auto& r : {c, a, pc, e}) view.records[r.txn_id()] = r;

  Restart();
  Output o = Take();
  std::map<std::string, Strs> sent;
  for (const OutMessage& m : o.send) {
    sent[m.txn_id].push_back(m.participant);
    EXPECT_EQ(m.address, config.participants.at(m.participant));
  }
  EXPECT_EQ(sent["c"], (Strs{"p2"}));
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p2"}));
  EXPECT_EQ(sent["a"], (Strs{"p1"}));
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1"}));
  // PRECOMMITTED: no blind PreCommit; a termination round, whose ballot is
  // written first (ballots of a 3-participant transaction: multiples of 4).
  EXPECT_EQ(sent.count("pc"), 0u);
  EXPECT_TRUE(Targets(o, MsgType::kPreCommit).empty());
  EXPECT_EQ(sent.count("e"), 0u);
  EXPECT_EQ(o.timers.size(), o.send.size() + 1);  // every resend is timed, and the round
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::PRECOMMITTED);
  EXPECT_EQ(Rec(o.persist[0]).ballot(), 4u);
  ASSERT_EQ(o.log.size(), 2u);
  EXPECT_TRUE(Contains(o.log[1], "recovered 4"));

  // A client retrying "c" learns the outcome at once.
  core().Execute(1, creq, now);
  Output r = Take();
  ASSERT_EQ(r.replies.size(), 1u);
  EXPECT_EQ(r.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(r.replies[0].response), (std::vector<uint64_t>{5, 0}));

  // Timers after recovery work: the Commit is resent.
  TimerRequest c_timer{0, 0};
  for (size_t i = 0; i < o.send.size(); ++i) {
    if (o.send[i].txn_id == "c") c_timer = o.timers[i];
  }
  Fire(c_timer);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p2"}));

  core().OnCommitReply("c", "p2", Seqs({9}), now);
  Output x = Take();
  ASSERT_EQ(x.persist.size(), 1u);
  v1::CoordinatorTxnRecord ended = Rec(x.persist[0]);
  EXPECT_EQ(ended.state(), v1::ENDED);
  EXPECT_EQ(std::vector<uint64_t>(ended.sequences().begin(), ended.sequences().end()),
            (std::vector<uint64_t>{5, 9}));

  core().OnAbortReply("a", "p1", absl::OkStatus(), now);
  EXPECT_EQ(Rec(Take().persist.at(0)).state(), v1::ENDED);

  core().QueryState(2, "pc", now);
  EXPECT_EQ(Take().state_replies.at(0).state, v1::PRECOMMITTED);
  // The round begins once its ballot is durable; p3 (READ_ONLY) is left out.
  Durable(o.persist[0]);
  x = Take();
  EXPECT_EQ(Targets(x, MsgType::kPromise), (Strs{"p1", "p2"}));
  EXPECT_EQ(x.send.at(0).ballot, 4u);
  v1::PromiseResponse pr;
  pr.set_promised(true);
  pr.set_state(v1::PRECOMMITTED);
  pr.set_accepted_ballot(0);
  pr.set_accepted_value(v1::STATE_COMMITTED);  // p1 accepted ballot 0 (PreCommit)
  core().OnPromiseReply("pc", "p1", 4, pr, now);
  EXPECT_TRUE(Take().empty());  // majority of 3 is 2
  v1::PromiseResponse none;
  none.set_promised(true);
  none.set_state(v1::PREPARED);
  core().OnPromiseReply("pc", "p2", 4, none, now);
  x = Take();
  EXPECT_EQ(Targets(x, MsgType::kAccept), (Strs{"p1", "p2"}));
  EXPECT_EQ(x.send.at(0).value, v1::STATE_COMMITTED);  // the accepted value, not ABORT
  v1::AcceptResponse ar;
  ar.set_accepted(true);
  core().OnAcceptReply("pc", "p1", 4, ar, now);
  EXPECT_TRUE(Take().empty());
  core().OnAcceptReply("pc", "p2", 4, ar, now);
  x = Take();
  ASSERT_EQ(x.persist.size(), 1u);
  EXPECT_EQ(Rec(x.persist[0]).state(), v1::STATE_COMMITTED);
  Durable(x.persist[0]);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p1", "p2"}));

  absl::StatusOr<v1::TransactionInfo> info = core().GetTransaction("e");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::ENDED);
  EXPECT_EQ(info->outcome(), v1::COMMITTED);
  EXPECT_EQ(info->results(0).sequence(), 77u);
  core().QueryState(3, "e", now);
  EXPECT_EQ(Take().state_replies.at(0).state, v1::STATE_COMMITTED);
}

TEST_F(CoordinatorCoreTest, CrashAfterCommitRecordThenRestartFinishes) {
  v1::ExecuteRequest req = Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")});
  core().Execute(1, req, now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Durable(Take().persist.at(0));
  Take();
  core().OnCommitReply("t1", "p1", Seqs({4}), now);
  Take();

  Restart();  // the ack of p1 was only in memory
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2"}));
  core().OnCommitReply("t1", "p1", Seqs({4}), now);
  core().OnCommitReply("t1", "p2", Seqs({6}), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  Restart();
  EXPECT_TRUE(Take().send.empty());
  absl::StatusOr<v1::TransactionInfo> info = core().GetTransaction("t1");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::ENDED);
  EXPECT_EQ(info->results(1).sequence(), 6u);
  core().Execute(2, req, now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{4, 6}));
}

TEST_F(CoordinatorCoreTest, CrashBeforeDecisionIsPresumedAbort) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a")}), now);
  Take();
  Restart();  // nothing was durable
  EXPECT_TRUE(Take().send.empty());
  core().QueryState(1, "t1", now);  // p1 is in doubt and asks
  Output o = Take();
  EXPECT_TRUE(o.state_replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  EXPECT_EQ(Take().state_replies.at(0).state, v1::STATE_ABORTED);
}

}  // namespace
}  // namespace atomq::coordinator
