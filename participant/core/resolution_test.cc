// Operator resolution: Resolve and heuristic outcomes.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"
#include "participant/core/participant_core_test_fixture.h"

namespace atomq::participant {
namespace {

// QueryState says when an operator set the outcome of a prepared
// transaction: a coordinator recovering a parallel commit counts it as YES.
TEST_F(ResolveTest, QueryStateMarksHeuristicOutcomes) {
  Start();
  CreateQueue("q");
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "a")}));
  EXPECT_EQ(Resolved(Req("t1", v1::ABORTED)).state(), v1::STATE_ABORTED);
  core_->QueryState(7, "t1", now_);
  Output o = Collect();
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 7).state(), v1::STATE_ABORTED);
  EXPECT_TRUE(Body<v1::QueryStateResponse>(o, 7).heuristic());
  // An id this node never prepared is aborted by the protocol, not an operator.
  core_->QueryState(8, "t2", now_);
  o = Persist();
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 8).state(), v1::STATE_ABORTED);
  EXPECT_FALSE(Body<v1::QueryStateResponse>(o, 8).heuristic());
}

TEST_F(ResolveTest, CommitMakesMessagesVisibleAndAppliesAcksDurablyAndMarked) {
  Start();
  CreateQueue("q");
  Produce("t0", "q", {"in"});
  std::vector<Lease> got = Receive("q", 1);
  ASSERT_EQ(got.size(), 1u);
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "out"), AckOp("q", 1, got[0].lease_token)}));

  core_->Resolve(10, Req("t1", v1::COMMITTED), now_);
  Output o = Collect();
  EXPECT_EQ(Find(o, 10), nullptr);  // not before the outcome is durable
  ASSERT_EQ(o.persist.size(), 1u);
  // The protocol's commit batch, plus the heuristic mark.
  std::set<std::string> dbs;
  for (const Write& w : o.persist[0].writes) dbs.insert(w.db);
  EXPECT_EQ(
      dbs, (std::set<std::string>{kMessagesDb, kQueuesDb, kPreparedDb, kOutcomesDb, kHeuristicDb}));
  EXPECT_TRUE(Receive("q").empty());  // invisible until durable
  o = Persist();
  v1::ResolveResponse resp = Body<v1::ResolveResponse>(o, 10);
  EXPECT_EQ(resp.state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(resp.heuristic());
  EXPECT_EQ(std::vector<uint64_t>(resp.sequences().begin(), resp.sequences().end()),
            (std::vector<uint64_t>{2, 0}));

  auto rec = store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1");
  ASSERT_TRUE(rec.has_value());
  EXPECT_EQ(rec->state(), v1::STATE_COMMITTED);
  ASSERT_TRUE(rec->has_heuristic());
  EXPECT_EQ(rec->heuristic().operator_note(), "c1 lost its disk; ticket 42");
  EXPECT_EQ(rec->heuristic().resolved_unix_ms(), now_);
  EXPECT_EQ(rec->heuristic().resolved_from(), v1::PREPARED);
  EXPECT_EQ(rec->heuristic().coordinator_id(), "c1");
  EXPECT_TRUE(store_.Get<v1::HeuristicOutcome>(kHeuristicDb, "t1").has_value());
  EXPECT_FALSE(store_.Get<v1::PreparedRecord>(kPreparedDb, "t1").has_value());
  EXPECT_FALSE(store_.Get<v1::MessageRecord>(kMessagesDb, MessageKey(1, 1)).has_value());
  std::vector<Lease> next = Receive("q");
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].sequence, 2u);
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_FALSE(Txn("t1").has_value());
  EXPECT_TRUE(Logged("HEURISTIC DECISION: txn t1 COMMITTED here by an operator"));
  EXPECT_TRUE(Logged("txn t1 COMMITTED here (1 enqueue, 1 ack; settled by an operator"));

  // A retry answers the same; the other outcome is refused.
  RequestId r = next_req_++;
  core_->Resolve(r, Req("t1", v1::COMMITTED), now_);
  o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(Body<v1::ResolveResponse>(o, r).sequences_size(), 2);
  absl::Status s = Refused(Req("t1", v1::ABORTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "already committed here by an operator")) << s;
  // The heuristic outcome is listed, also after a restart.
  ASSERT_TRUE(Heuristic("t1").has_value());
  Restart();
  ASSERT_TRUE(Heuristic("t1").has_value());
  EXPECT_EQ(Heuristic("t1")->state(), v1::STATE_COMMITTED);
  EXPECT_EQ(Heuristic("t1")->conflicting_state(), v1::TXN_STATE_UNSPECIFIED);
}

TEST_F(ResolveTest, AbortDropsStagedEnqueuesAndUnpinsAcks) {
  Start();
  CreateQueue("q");
  Produce("t0", "q", {"in"});
  std::vector<Lease> got = Receive("q", 1);
  ASSERT_EQ(got.size(), 1u);
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "out"), AckOp("q", 1, got[0].lease_token)}));
  EXPECT_EQ(Info("q").pending_in_txn(), 2u);

  v1::ResolveResponse resp = Resolved(Req("t1", v1::ABORTED, ""));
  EXPECT_EQ(resp.state(), v1::STATE_ABORTED);
  EXPECT_TRUE(resp.heuristic());
  auto rec = store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1");
  ASSERT_TRUE(rec.has_value());
  EXPECT_EQ(rec->state(), v1::STATE_ABORTED);
  EXPECT_TRUE(rec->has_heuristic());
  EXPECT_FALSE(store_.Get<v1::PreparedRecord>(kPreparedDb, "t1").has_value());
  EXPECT_TRUE(Logged("HEURISTIC DECISION: txn t1 ABORTED here by an operator"));
  // Nothing staged became visible; the acked message is back under its lease.
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_EQ(Info("q").version(), 2u);
  EXPECT_EQ(Info("q").leased(), 1u);
  EXPECT_TRUE(Receive("q").empty());
  core_->Ack(20, "q", 1, got[0].lease_token, now_);
  Collect();
  EXPECT_TRUE(StatusOf(Persist(), 20).ok());
  // A later Prepare of the id votes NO.
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "out")})).vote(), v1::NO);
}

TEST_F(ResolveTest, RefusesBadInputUnknownAndWhatIsNotInDoubtChangingNothing) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Refused(Req("bad id!", v1::COMMITTED)).code(), absl::StatusCode::kInvalidArgument);
  absl::Status s = Refused(Req("t1", v1::PENDING));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "COMMITTED or ABORTED")) << s;
  config_.operator_note_bytes_max = 8;
  Restart();
  s = Refused(Req("t1", v1::COMMITTED, "far too long a note"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "--operator_note_bytes_max=8")) << s;
  EXPECT_EQ(Refused(Req("t1", v1::COMMITTED, "")).code(), absl::StatusCode::kNotFound);
  config_.operator_note_bytes_max = 4096;
  Restart();

  // Unknown: NOT_FOUND, and no presumed abort is recorded.
  s = Refused(Req("nope", v1::ABORTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(s.message(), "not prepared here")) << s;
  EXPECT_FALSE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "nope").has_value());

  // Its PREPARED record not durable yet.
  core_->Prepare(next_req_++, PrepareReq("t1", {EnqueueOp("q", "m")}), now_);
  Collect();
  s = Refused(Req("t1", v1::COMMITTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "still being prepared")) << s;
  // Prepared, but not in doubt yet: the coordinator is still at work.
  Persist();
  s = Refused(Req("t1", v1::COMMITTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "not in doubt yet")) << s;
  // Settled by the protocol.
  EXPECT_EQ(Commit("t1").size(), 1u);
  s = Refused(Req("t1", v1::ABORTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "already committed here by the protocol")) << s;
  // Asking for the outcome it already has: OK, not heuristic, nothing written.
  core_->Resolve(next_req_, Req("t1", v1::COMMITTED), now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  v1::ResolveResponse same = Body<v1::ResolveResponse>(o, next_req_++);
  EXPECT_EQ(same.state(), v1::STATE_COMMITTED);
  EXPECT_FALSE(same.heuristic());
  EXPECT_EQ(same.sequences_size(), 1);
  EXPECT_FALSE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->has_heuristic());
  // Staged only (interactive, never prepared).
  v1::StageRequest stage;
  stage.set_txn_id("t2");
  *stage.add_ops() = EnqueueOp("q", "x");
  ASSERT_TRUE(core_->Stage(stage, now_).ok());
  s = Refused(Req("t2", v1::COMMITTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "only staged")) << s;
  EXPECT_EQ(core_->staged_transactions(), 1u);
  EXPECT_TRUE(core_->HeuristicOutcomes().empty());
}

TEST_F(ResolveTest, ReplyWaitsForDurabilityAndAFailedWriteLeavesItInDoubt) {
  Start();
  CreateQueue("q");
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "m")}));
  core_->Resolve(30, Req("t1", v1::COMMITTED), now_);
  EXPECT_EQ(Find(Collect(), 30), nullptr);
  // A Resolve while the outcome is being written is refused.
  absl::Status s = Refused(Req("t1", v1::ABORTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "being committed")) << s;
  Output o = Persist(absl::ResourceExhaustedError("disk full"));
  EXPECT_EQ(StatusOf(o, 30).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1").has_value());
  ASSERT_TRUE(Txn("t1").has_value());
  EXPECT_TRUE(Txn("t1")->in_doubt());
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_TRUE(core_->HeuristicOutcomes().empty());
  // The operator retries once the disk has room.
  EXPECT_EQ(Resolved(Req("t1", v1::COMMITTED)).state(), v1::STATE_COMMITTED);
  EXPECT_EQ(Receive("q").size(), 1u);
}

TEST_F(ResolveTest, RefusedWhileATerminationRoundLedHereIsUnderWay) {
  Start();
  CreateQueue("q");
  ASSERT_EQ(Prepare(ThreePcReq("t1")).vote(), v1::YES);
  Collect();
  now_ += config_.in_doubt_after_ms;
  core_->OnTimer(last_timer(), now_);  // 3PC: writes a ballot to lead a round
  Collect();
  absl::Status s = Refused(Req("t1", v1::COMMITTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "termination round")) << s;
  Persist();  // the round begins: Promise to p2 and p3
  const uint64_t b = store_.Get<v1::PreparedRecord>(kPreparedDb, "t1")->proposed_ballot();
  s = Refused(Req("t1", v1::COMMITTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "waiting for 2 answers")) << s;
  // Both peers unreachable: the round stalls and no longer blocks the operator.
  core_->OnPromiseReply("t1", "p2", b, absl::UnavailableError("down"), now_);
  EXPECT_EQ(Refused(Req("t1", v1::COMMITTED)).code(), absl::StatusCode::kFailedPrecondition);
  core_->OnPromiseReply("t1", "p3", b, absl::UnavailableError("down"), now_);
  v1::ResolveResponse resp = Resolved(Req("t1", v1::COMMITTED));
  EXPECT_EQ(resp.state(), v1::STATE_COMMITTED);
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->heuristic().resolved_from(),
            v1::PREPARED);

  // Peers running their own rounds learn the decided state.
  core_->Promise(40, "t1", b + 4, now_);
  v1::PromiseResponse p = Body<v1::PromiseResponse>(Collect(), 40);
  EXPECT_EQ(p.state(), v1::STATE_COMMITTED);
  core_->Accept(41, "t1", b + 4, v1::STATE_ABORTED, now_);
  v1::AcceptResponse a = Body<v1::AcceptResponse>(Collect(), 41);
  EXPECT_FALSE(a.accepted());
  EXPECT_EQ(a.state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(Logged("ALARM heuristic mixed: txn t1"));
  core_->QueryState(42, "t1", now_);
  EXPECT_EQ(Body<v1::QueryStateResponse>(Collect(), 42).state(), v1::STATE_COMMITTED);
  // Late answers to the stalled round change nothing.
  v1::PromiseResponse late;
  late.set_promised(true);
  late.set_state(v1::PREPARED);
  core_->OnPromiseReply("t1", "p2", b, late, now_);
  EXPECT_TRUE(Collect().peer_msgs.empty());
}

TEST_F(ResolveTest, LaterConflictingCommitIsRefusedRecordedAndNeverFlips) {
  Start();
  CreateQueue("q");
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "m")}));
  ASSERT_EQ(Resolved(Req("t1", v1::ABORTED)).state(), v1::STATE_ABORTED);

  // The coordinator comes back with COMMIT in its log.
  core_->Commit(50, "t1", now_);
  Output o = Collect();
  absl::Status s = StatusOf(o, 50);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "aborted here")) << s;
  EXPECT_TRUE(Logged("ALARM heuristic mixed: txn t1 was aborted here by an operator"));
  ASSERT_EQ(o.persist.size(), 1u);  // the conflict, recorded
  Persist();
  auto rec = store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1");
  EXPECT_EQ(rec->state(), v1::STATE_ABORTED);  // no flip
  EXPECT_EQ(rec->heuristic().conflicting_state(), v1::STATE_COMMITTED);
  EXPECT_EQ(store_.Get<v1::HeuristicOutcome>(kHeuristicDb, "t1")->conflicting_state(),
            v1::STATE_COMMITTED);
  ASSERT_TRUE(Heuristic("t1").has_value());
  EXPECT_EQ(Heuristic("t1")->conflicting_state(), v1::STATE_COMMITTED);
  EXPECT_EQ(Heuristic("t1")->conflict_unix_ms(), now_);
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_EQ(Info("q").version(), 1u);
  // A resend: refused again, recorded once.
  core_->Commit(51, "t1", now_);
  o = Collect();
  EXPECT_EQ(StatusOf(o, 51).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(o.persist.empty());
  Restart();
  EXPECT_EQ(Heuristic("t1")->conflicting_state(), v1::STATE_COMMITTED);
  core_->Resolve(52, Req("t1", v1::ABORTED), now_);  // a retry: answered at once
  EXPECT_EQ(Body<v1::ResolveResponse>(Collect(), 52).state(), v1::STATE_ABORTED);
}

TEST_F(ResolveTest, LaterAgreeingCommitIsOkAndAConflictingQueryAnswerIsRecorded) {
  Start();
  CreateQueue("q");
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "a")}));
  InDoubt(PrepareReq("t2", {EnqueueOp("q", "b")}));
  ASSERT_EQ(Resolved(Req("t1", v1::COMMITTED)).sequences(0), 1u);
  // The coordinator agrees: acknowledged as any repeated Commit.
  EXPECT_EQ(Commit("t1"), (std::vector<uint64_t>{1}));
  EXPECT_FALSE(Logged("ALARM"));
  EXPECT_TRUE(Collect().persist.empty());
  EXPECT_EQ(Heuristic("t1")->conflicting_state(), v1::TXN_STATE_UNSPECIFIED);
  // An Abort from a peer's termination round is the other outcome.
  EXPECT_EQ(Abort("t1").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Logged("ALARM heuristic mixed: txn t1 was committed here by an operator"));
  Persist();
  EXPECT_EQ(Heuristic("t1")->conflicting_state(), v1::STATE_ABORTED);

  // An outcome query sent before the resolution, answered after it.
  ASSERT_EQ(Resolved(Req("t2", v1::COMMITTED)).state(), v1::STATE_COMMITTED);
  core_->OnQueryReply("t2", "c1", StateReply(v1::STATE_ABORTED), now_);
  Persist();
  EXPECT_TRUE(
      Logged("ALARM heuristic mixed: txn t2 was committed here by an operator, but "
             "coordinator c1 says aborted"));
  EXPECT_EQ(Heuristic("t2")->conflicting_state(), v1::STATE_ABORTED);
  EXPECT_EQ(Heuristic("t2")->conflict_by(), "coordinator c1");
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t2")->state(), v1::STATE_COMMITTED);
  EXPECT_EQ(Receive("q").size(), 2u);  // both committed messages stay visible
}

}  // namespace
}  // namespace atomq::participant
