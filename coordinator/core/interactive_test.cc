// Interactive transactions: Begin, Commit, Rollback.

#include "coordinator/core/coordinator_core_test_util.h"

namespace atomq::coordinator {
namespace {

// ---------------------------------------------------------------- interactive transactions

v1::CommitTxnRequest CommitReq(const std::string& id,
                               std::vector<std::pair<std::string, uint32_t>> parts) {
  v1::CommitTxnRequest r;
  r.set_txn_id(id);
  for (const auto& [p, n] : parts) {
    v1::TxnParticipant* tp = r.add_participants();
    tp->set_participant(p);
    tp->set_staged_ops(n);
  }
  return r;
}

v1::RollbackTxnRequest RollbackReq(const std::string& id, std::vector<std::string> parts) {
  v1::RollbackTxnRequest r;
  r.set_txn_id(id);
  for (const std::string& p : parts) r.add_participants()->set_participant(p);
  return r;
}

v1::BeginTxnRequest BeginReq(const std::string& id = "", uint32_t timeout_ms = 0) {
  v1::BeginTxnRequest r;
  r.set_txn_id(id);
  r.set_timeout_ms(timeout_ms);
  return r;
}

std::vector<std::vector<uint64_t>> StagedSeqs(const v1::ExecuteResponse& r) {
  std::vector<std::vector<uint64_t>> v;
  for (const v1::StagedResult& s : r.staged()) {
    v.emplace_back(s.sequences().begin(), s.sequences().end());
  }
  return v;
}

TEST_F(CoordinatorCoreTest, InteractiveBeginCommitPreparesStagedWorkOnly) {
  absl::StatusOr<v1::BeginTxnResponse> b = core().Begin(BeginReq("", 4000), now);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->txn_id(), "c1-7-1");
  EXPECT_EQ(b->expires_unix_ms(), now + 4000);
  Output o = Take();
  ASSERT_EQ(o.timers.size(), 1u);  // the expiry
  EXPECT_TRUE(o.persist.empty()) << "an open transaction is memory only";
  EXPECT_EQ(core().in_flight(), 1u);
  EXPECT_EQ(core().open_transactions(), 1u);
  const std::string id = b->txn_id();

  core().Commit(1, CommitReq(id, {{"p2", 1}, {"p1", 2}}), now);
  o = Take();
  ASSERT_EQ(o.send.size(), 2u);
  for (const OutMessage& m : o.send) {
    EXPECT_EQ(m.type, MsgType::kPrepare);
    EXPECT_TRUE(m.prepare.use_staged());
    EXPECT_EQ(m.prepare.ops_size(), 0);
    EXPECT_EQ(m.prepare.staged_ops(), m.participant == "p1" ? 2u : 1u);
    EXPECT_EQ(m.prepare.participants_size(), 2);
  }
  EXPECT_EQ(core().open_transactions(), 0u);
  core().OnPrepareReply(id, "p1", Vote(v1::YES), now);
  core().OnPrepareReply(id, "p2", Vote(v1::YES), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(Rec(o.persist[0]).interactive());
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2"}));
  core().OnCommitReply(id, "p1", Seqs({5, 0}), now);
  core().OnCommitReply(id, "p2", Seqs({9}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  const v1::ExecuteResponse r = o.replies[0].response;
  EXPECT_EQ(r.outcome(), v1::COMMITTED);
  EXPECT_EQ(r.results_size(), 0);
  ASSERT_EQ(r.staged_size(), 2);
  EXPECT_EQ(r.staged(0).participant(), "p2");  // the request's order
  EXPECT_EQ(StagedSeqs(r), (std::vector<std::vector<uint64_t>>{{9}, {5, 0}}));
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord ended = Rec(o.persist[0]);
  EXPECT_EQ(ended.state(), v1::ENDED);
  EXPECT_EQ(ended.sequences_size(), 3);
  Durable(o.persist[0]);
  EXPECT_EQ(core().in_flight(), 0u);

  // A retry gets the first outcome; other participants or an Execute with the id are refused.
  core().Commit(2, CommitReq(id, {{"p2", 1}, {"p1", 2}}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(StagedSeqs(o.replies[0].response), StagedSeqs(r));
  EXPECT_TRUE(o.send.empty());
  core().Commit(3, CommitReq(id, {{"p1", 2}}), now);
  EXPECT_EQ(Take().replies.at(0).status.code(), absl::StatusCode::kAlreadyExists);
  core().Execute(4, Req(id, {Enq("p1", "q", "x")}), now);
  EXPECT_EQ(Take().replies.at(0).status.code(), absl::StatusCode::kAlreadyExists);
  core().Rollback(5, RollbackReq(id, {}), now);
  EXPECT_EQ(Take().replies.at(0).status.code(), absl::StatusCode::kFailedPrecondition);

  // After a restart the record answers, sequences included.
  Restart();
  Take();
  core().Commit(6, CommitReq(id, {{"p2", 1}, {"p1", 2}}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(StagedSeqs(o.replies[0].response), StagedSeqs(r));
}

TEST_F(CoordinatorCoreTest, InteractiveNoVoteAbortsWithTheParticipantsReason) {
  ASSERT_TRUE(core().Begin(BeginReq("i-no"), now).ok());
  Take();
  core().Commit(1, CommitReq("i-no", {{"p1", 1}, {"p2", 1}}), now);
  Take();
  core().OnPrepareReply("i-no", "p1",
                        Vote(v1::NO,
                             "nothing staged for txn i-no on p1 (expired or lost in a "
                             "restart)"),
                        now);
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p2"}));
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "p1 voted NO: nothing staged"));
}

TEST_F(CoordinatorCoreTest, InteractiveExpiryAbortsAndALateCommitLearnsWhy) {
  absl::StatusOr<v1::BeginTxnResponse> b = core().Begin(BeginReq("i-exp", 1000), now);
  ASSERT_TRUE(b.ok());
  Output o = Take();
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now + 1000);
  Fire(o.timers[0]);
  EXPECT_EQ(core().open_transactions(), 0u);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_ABORTED);
  EXPECT_TRUE(rec.interactive());
  EXPECT_TRUE(Contains(rec.reason(), "expired"));
  EXPECT_TRUE(o.send.empty());  // no participant is known yet
  Durable(o.persist[0]);
  for (const Batch& x : Take().persist) Durable(x);
  EXPECT_EQ(core().in_flight(), 0u);

  // A late Commit: ABORTED, and the named participants are told to drop staged work.
  core().Commit(1, CommitReq("i-exp", {{"p1", 1}, {"p3", 1}}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "expired"));
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p3"}));
  // So does one after a restart, from the record.
  Restart();
  Take();
  core().Commit(2, CommitReq("i-exp", {{"p1", 1}}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "expired"));

  // A Commit that comes after the expiry time, before the timer fired, aborts too.
  ASSERT_TRUE(core().Begin(BeginReq("i-late", 500), now).ok());
  Take();
  now += 501;
  core().Commit(3, CommitReq("i-late", {{"p1", 1}}), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPrepare), Strs{});
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1"}));
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "expired"));
}

TEST_F(CoordinatorCoreTest, InteractiveRollbackAndCommitOfAnUnknownId) {
  ASSERT_TRUE(core().Begin(BeginReq("i-rb"), now).ok());
  Take();
  core().Rollback(1, RollbackReq("i-rb", {"p2"}), now);
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p2"}));
  EXPECT_TRUE(o.replies.empty()) << "answered only once the abort is durable";
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_TRUE(o.replies[0].status.ok());
  core().Commit(2, CommitReq("i-rb", {{"p2", 1}}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "rolled back"));
  core().Rollback(3, RollbackReq("i-rb", {}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_TRUE(o.replies[0].status.ok()) << "rolling back twice is fine";

  // Begun, then the coordinator restarted: the open transaction is gone.
  ASSERT_TRUE(core().Begin(BeginReq("i-lost"), now).ok());
  Restart();
  Take();
  core().Commit(4, CommitReq("i-lost", {{"p1", 1}, {"p3", 2}}), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p3"}));
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "not open"));
  // The id can never be begun again.
  EXPECT_EQ(core().Begin(BeginReq("i-lost"), now).status().code(),
            absl::StatusCode::kAlreadyExists);

  // Rollback while the commit is preparing aborts it; after the decision it is refused.
  ASSERT_TRUE(core().Begin(BeginReq("i-prep"), now).ok());
  core().Commit(5, CommitReq("i-prep", {{"p1", 1}, {"p2", 1}}), now);
  Take();
  core().OnPrepareReply("i-prep", "p1", Vote(v1::YES), now);
  core().Rollback(6, RollbackReq("i-prep", {}), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2"}));
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 2u);  // the Commit (ABORTED) and the Rollback (OK)
  for (const ExecuteReply& rep : o.replies) {
    EXPECT_TRUE(rep.status.ok());
    EXPECT_EQ(rep.response.outcome(), v1::ABORTED);
  }
}

TEST_F(CoordinatorCoreTest, InteractiveBadInputAndLimits) {
  config.txns_in_flight_max = 2;
  ASSERT_TRUE(core().Begin(BeginReq("a"), now).ok());
  absl::StatusOr<v1::BeginTxnResponse> again = core().Begin(BeginReq("a"), now + 10);
  ASSERT_TRUE(again.ok()) << "a repeated Begin of an open id answers as the first";
  EXPECT_EQ(again->expires_unix_ms(), now + 5000);
  ASSERT_TRUE(core().Begin(BeginReq("b"), now).ok());
  EXPECT_EQ(core().Begin(BeginReq("c"), now).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(core().Begin(BeginReq("bad id!"), now).status().code(),
            absl::StatusCode::kInvalidArgument);
  core().Execute(1, Req("a", {Enq("p1", "q", "x")}), now);
  EXPECT_EQ(Take().replies.at(0).status.code(), absl::StatusCode::kAlreadyExists);

  core().Commit(2, CommitReq("a", {}), now);
  core().Commit(3, CommitReq("a", {{"p9", 1}}), now);
  core().Commit(4, CommitReq("a", {{"p1", 1}, {"p1", 1}}), now);
  core().Commit(5, CommitReq("bad id!", {{"p1", 1}}), now);
  Output o = Take();
  ASSERT_EQ(o.replies.size(), 4u);
  for (const ExecuteReply& r : o.replies) {
    EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
  }
  EXPECT_TRUE(Contains(std::string(o.replies[1].status.message()), "p9"));
  EXPECT_TRUE(Contains(std::string(o.replies[2].status.message()), "twice"));
  EXPECT_TRUE(o.send.empty() && o.persist.empty()) << "bad input changes nothing";
  EXPECT_EQ(core().open_transactions(), 2u);

  // A participant asking about an open id hears "undecided", nothing is recorded.
  core().QueryState(6, "a", now);
  o = Take();
  ASSERT_EQ(o.state_replies.size(), 1u);
  EXPECT_EQ(o.state_replies[0].state, v1::PREPARING);
  EXPECT_TRUE(o.persist.empty());

  // Commit on an id run by Execute is refused.
  config.txns_in_flight_max = 100;
  Restart();
  Take();
  CommitAll(7, Req("ex", {Enq("p1", "q", "x")}), {{"p1", {1}}});
  core().Commit(8, CommitReq("ex", {{"p1", 1}}), now);
  EXPECT_EQ(Take().replies.at(0).status.code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace atomq::coordinator
