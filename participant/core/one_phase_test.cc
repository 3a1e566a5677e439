// One-phase commit (PrepareRequest.one_phase).
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"
#include "participant/core/participant_core_test_fixture.h"

namespace atomq::participant {
namespace {

// --- one-phase commit (PrepareRequest.one_phase) ---

v1::PrepareRequest OnePhaseReq(const std::string& txn, std::vector<v1::Op> ops) {
  v1::PrepareRequest req = PrepareReq(txn, std::move(ops));
  req.clear_participants();
  v1::PeerAddress* self = req.add_participants();
  self->set_participant("p1");
  self->set_address("p1:1");
  req.set_one_phase(true);
  return req;
}

std::vector<uint64_t> SeqsOf(const v1::PrepareResponse& r) {
  return {r.sequences().begin(), r.sequences().end()};
}

TEST_F(ParticipantCoreTest, OnePhaseCommitsInOneBatchAndVotesYesWithSequencesOnceDurable) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Produce("t0", "q", {"x", "y"}), (std::vector<uint64_t>{1, 2}));
  std::vector<Lease> leased = Receive("q", 1);
  ASSERT_EQ(leased.size(), 1u);
  const v1::PrepareRequest req = OnePhaseReq(
      "t1", {EnqueueOp("q", "a"), AckOp("q", 1, leased[0].lease_token), EnqueueOp("q", "b")});
  core_->Prepare(100, req, now_);
  Output o = Collect();
  EXPECT_TRUE(o.replies.empty());  // not before it is durable
  ASSERT_EQ(o.persist.size(), 1u);
  bool outcome = false, prepared = false, erased = false;
  int messages = 0;
  for (const Write& w : o.persist[0].writes) {
    prepared |= w.db == kPreparedDb;
    if (w.db == kMessagesDb && !w.erase) messages++;
    if (w.db == kMessagesDb && w.erase) erased = true;
    if (w.db == kOutcomesDb) {
      v1::OutcomeRecord rec;
      ASSERT_TRUE(DecodeRecord(w.value, &rec).ok());
      EXPECT_EQ(rec.state(), v1::STATE_COMMITTED);
      EXPECT_TRUE(rec.one_phase());
      EXPECT_EQ(rec.ops_digest(), OpsDigest(req.ops()));
      outcome = true;
    }
  }
  EXPECT_TRUE(outcome);
  EXPECT_FALSE(prepared);  // never PREPARED: never in doubt
  EXPECT_TRUE(erased);
  EXPECT_EQ(messages, 2);
  EXPECT_EQ(Info("q").ready(), 1u);  // the new messages are invisible until durable
  EXPECT_FALSE(Txn("t1").has_value());
  // A duplicate Prepare and a QueryState wait for that batch; no second one.
  core_->Prepare(101, req, now_);
  core_->QueryState(102, "t1", now_);
  o = Collect();
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.persist.empty());

  o = Persist();
  v1::PrepareResponse yes = Body<v1::PrepareResponse>(o, 100);
  EXPECT_EQ(yes.vote(), v1::YES);
  EXPECT_EQ(SeqsOf(yes), (std::vector<uint64_t>{3, 0, 4}));
  EXPECT_EQ(SeqsOf(Body<v1::PrepareResponse>(o, 101)), (std::vector<uint64_t>{3, 0, 4}));
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 102).state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(o.timers.empty());  // no in-doubt timer
  EXPECT_TRUE(o.queries.empty());
  EXPECT_EQ(Info("q").ready(), 3u);  // y, a, b; x was acked
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_TRUE(Logged("txn t1 COMMITTED here (2 enqueues, 1 ack; settled by a one-phase Prepare)"));

  // A late duplicate after the commit, also after a restart: the same answer.
  EXPECT_EQ(SeqsOf(Prepare(req)), (std::vector<uint64_t>{3, 0, 4}));
  EXPECT_TRUE(Collect().persist.empty());
  Restart();
  v1::PrepareResponse again = Prepare(req);
  EXPECT_EQ(again.vote(), v1::YES);
  EXPECT_EQ(SeqsOf(again), (std::vector<uint64_t>{3, 0, 4}));
  EXPECT_TRUE(Prepared().empty());
  // Other ops under the id, or a two-phase Prepare of the same ops: NO, and
  // nothing changes (the id is settled).
  v1::PrepareResponse other = Prepare(OnePhaseReq("t1", {EnqueueOp("q", "zz")}));
  EXPECT_EQ(other.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(other.reason(), "committed here with other ops"));
  v1::PrepareRequest two_phase = req;
  two_phase.set_one_phase(false);
  v1::PrepareResponse no = Prepare(two_phase);
  EXPECT_EQ(no.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(no.reason(), "in one phase"));
  EXPECT_TRUE(Collect().persist.empty());
  EXPECT_EQ(Info("q").ready(), 3u);
  // The coordinator's Abort (its way to settle an unknown outcome) is refused.
  EXPECT_EQ(Abort("t1").code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ParticipantCoreTest, OnePhaseNoIsDurableBeforeItIsToldAndFinal) {
  Start();
  const v1::PrepareRequest req = OnePhaseReq("t1", {EnqueueOp("late", "a")});
  core_->Prepare(100, req, now_);
  Output o = Collect();
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  // The outcome, and its collection entry: nobody may send an END notice.
  ASSERT_EQ(o.persist[0].writes.size(), 2u);
  EXPECT_EQ(o.persist[0].writes[0].db, kOutcomesDb);
  EXPECT_EQ(o.persist[0].writes[1].db, kForgettableDb);
  const std::string entry = o.persist[0].writes[1].key;
  core_->Prepare(101, req, now_);  // a duplicate joins it
  EXPECT_TRUE(Collect().replies.empty());
  o = Persist();
  for (RequestId r : {100, 101}) {
    v1::PrepareResponse no = Body<v1::PrepareResponse>(o, r);
    EXPECT_EQ(no.vote(), v1::NO);
    EXPECT_TRUE(absl::StrContains(no.reason(), "queue \"late\" does not exist")) << no.reason();
  }
  auto rec = store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1");
  ASSERT_TRUE(rec.has_value());
  EXPECT_EQ(rec->state(), v1::STATE_ABORTED);
  EXPECT_TRUE(rec->one_phase());
  // The queue appears; a delayed copy of the Prepare (the client was told
  // ABORTED already) must not commit, also after a restart.
  CreateQueue("late");
  EXPECT_EQ(Prepare(req).vote(), v1::NO);
  Restart();
  EXPECT_EQ(Prepare(req).vote(), v1::NO);
  EXPECT_TRUE(Collect().persist.empty());
  EXPECT_EQ(Info("late").ready(), 0u);
  EXPECT_EQ(Info("late").version(), 1u);
  // After the retention window the outcome is collected like any other.
  now_ += static_cast<int64_t>(config_.retention_ms) + 1;
  EXPECT_EQ(core_->CollectOutcomes({entry}, now_), 1u);
  Persist();
  EXPECT_FALSE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1").has_value());
  EXPECT_EQ(store_.Count(kForgettableDb), 0u);
}

TEST_F(ParticipantCoreTest, OnePhaseFailedWriteIsAnErrorAndKeepsNothing) {
  Start();
  CreateQueue("q");
  Produce("t0", "q", {"x"});
  std::vector<Lease> leased = Receive("q", 1);
  ASSERT_EQ(leased.size(), 1u);
  const v1::PrepareRequest req =
      OnePhaseReq("t1", {AckOp("q", 1, leased[0].lease_token), EnqueueOp("q", "a")});
  core_->Prepare(100, req, now_);
  EXPECT_EQ(Info("q").pending_in_txn(), 2u);
  Output o = Persist(absl::ResourceExhaustedError("disk full"));
  absl::Status s = StatusOf(o, 100);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(s.message(), "nothing changed here")) << s;
  // Nothing kept: the ack's message is back under its lease, no outcome.
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_EQ(Info("q").leased(), 1u);
  EXPECT_FALSE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1").has_value());
  // A retry commits (the burnt sequence 2 is skipped).
  v1::PrepareResponse yes = Prepare(req);
  EXPECT_EQ(yes.vote(), v1::YES);
  EXPECT_EQ(SeqsOf(yes), (std::vector<uint64_t>{0, 3}));
}

TEST_F(ParticipantCoreTest, OnePhaseBadRequestsAndAbortOfAnUnknownIdSettleIt) {
  Start();
  CreateQueue("q");
  v1::PrepareRequest staged = OnePhaseReq("t1", {EnqueueOp("q", "a")});
  staged.set_use_staged(true);
  core_->Prepare(1, staged, now_);
  EXPECT_EQ(StatusOf(Collect(), 1).code(), absl::StatusCode::kInvalidArgument);
  v1::PrepareRequest many = PrepareReq("t1", {EnqueueOp("q", "a")});
  many.set_one_phase(true);  // lists p1, p2, p3
  core_->Prepare(2, many, now_);
  EXPECT_EQ(StatusOf(Collect(), 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Collect().persist.empty());

  // The coordinator lost the vote and sends Abort: once that is answered,
  // the Prepare (delayed in the network) can no longer commit.
  EXPECT_TRUE(Abort("t2").ok());
  v1::PrepareResponse no = Prepare(OnePhaseReq("t2", {EnqueueOp("q", "b")}));
  EXPECT_EQ(no.vote(), v1::NO);
  EXPECT_EQ(Info("q").version(), 1u);
  // An Abort that arrives while the one-phase batch is in flight waits for
  // it and is then refused: it committed.
  core_->Prepare(10, OnePhaseReq("t3", {EnqueueOp("q", "c")}), now_);
  core_->Abort(11, "t3", now_);
  EXPECT_TRUE(Collect().replies.empty());
  Output o = Persist();
  EXPECT_EQ(SeqsOf(Body<v1::PrepareResponse>(o, 10)), (std::vector<uint64_t>{1}));
  EXPECT_EQ(StatusOf(o, 11).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace atomq::participant
