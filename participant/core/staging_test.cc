// Interactive transactions: Stage, expiry, Prepare with use_staged.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"
#include "participant/core/participant_core_test_fixture.h"

namespace atomq::participant {
namespace {

// --- interactive transactions: Stage, expiry, Prepare with use_staged ---

v1::StageRequest StageReq(const std::string& txn, std::vector<v1::Op> ops, int64_t expires_ms,
                          uint32_t batch = 0) {
  v1::StageRequest r;
  r.set_txn_id(txn);
  for (v1::Op& op : ops) *r.add_ops() = std::move(op);
  r.set_expires_unix_ms(expires_ms);
  r.set_batch(batch);
  return r;
}

v1::PrepareRequest StagedPrepareReq(const std::string& txn, uint32_t staged_ops) {
  v1::PrepareRequest req = PrepareReq(txn, {});
  req.set_use_staged(true);
  req.set_staged_ops(staged_ops);
  return req;
}

TEST_F(ParticipantCoreTest, StagePinsAcksAndPrepareTakesExactlyTheStagedOps) {
  Start();
  CreateQueue("in");
  CreateQueue("out");
  Produce("p", "in", {"m1", "m2"});
  std::vector<Lease> got = Receive("in", 2, 100);
  ASSERT_EQ(got.size(), 2u);

  absl::StatusOr<v1::StageResponse> r =
      core_->Stage(StageReq("s1", {AckOp("in", 1, got[0].lease_token), EnqueueOp("out", "x", "")},
                            now_ + 5000, 1),
                   now_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ops_staged(), 2u);
  EXPECT_EQ(r->expires_unix_ms(), now_ + 5000);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty()) << "staged work is memory only";
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now_ + 5000);
  EXPECT_EQ(core_->staged_transactions(), 1u);
  EXPECT_EQ(Info("in").pending_in_txn(), 1u);
  EXPECT_EQ(Info("out").pending_in_txn(), 1u);
  // Pinned: a plain Ack cannot take it, and an expired lease does not redeliver it.
  core_->Ack(50, "in", 1, got[0].lease_token, now_);
  EXPECT_EQ(StatusOf(Collect(), 50).code(), absl::StatusCode::kFailedPrecondition);
  // Nor can another transaction stage or prepare an ack of it.
  EXPECT_EQ(core_->Stage(StageReq("s2", {AckOp("in", 1, got[0].lease_token)}, now_ + 5000), now_)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);

  // A retried batch applies once; a reused number with other ops, or a gap, is refused.
  r = core_->Stage(StageReq("s1", {AckOp("in", 1, got[0].lease_token), EnqueueOp("out", "x", "")},
                            now_ + 5000, 1),
                   now_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ops_staged(), 2u);
  EXPECT_EQ(core_->Stage(StageReq("s1", {EnqueueOp("out", "other")}, now_ + 5000, 1), now_)
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
  absl::Status gap =
      core_->Stage(StageReq("s1", {EnqueueOp("out", "z")}, now_ + 5000, 3), now_).status();
  EXPECT_EQ(gap.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(gap.message(), "lost")) << gap;
  r = core_->Stage(StageReq("s1", {EnqueueOp("out", "y")}, now_ + 5000, 2), now_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ops_staged(), 3u);

  now_ += 1000;  // past the lease, within the transaction's life
  EXPECT_TRUE(Receive("in").size() == 1u) << "m2 only: m1 stays pinned";
  EXPECT_EQ(Prepare(StagedPrepareReq("s1", 3)).vote(), v1::YES);
  EXPECT_EQ(core_->staged_transactions(), 0u);
  auto rec = store_.Get<v1::PreparedRecord>(kPreparedDb, "s1");
  ASSERT_TRUE(rec.has_value());
  ASSERT_EQ(rec->ops_size(), 3);
  for (const v1::Op& op : rec->ops()) EXPECT_EQ(op.participant(), "p1");
  EXPECT_EQ(Prepare(StagedPrepareReq("s1", 3)).vote(), v1::YES) << "a repeated Prepare";
  EXPECT_EQ(Commit("s1"), (std::vector<uint64_t>{0, 1, 2}));
  EXPECT_FALSE(store_.Get<v1::MessageRecord>(kMessagesDb, MessageKey(1, 1)).has_value());
  EXPECT_EQ(Info("out").ready(), 2u);
  EXPECT_EQ(Info("in").pending_in_txn(), 0u);
  EXPECT_EQ(Info("out").pending_in_txn(), 0u);
  absl::Status after =
      core_->Stage(StageReq("s1", {EnqueueOp("out", "w")}, now_ + 5000), now_).status();
  EXPECT_EQ(after.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(after.message(), "already committed")) << after;
}

// --txn_bytes_max bounds what one transaction stages over all its batches;
// the Prepare that takes staged work counts it against --prepared_bytes_max.
TEST_F(ParticipantCoreTest, StagedBytesCountAgainstTheTransactionAndPreparedBounds) {
  config_.txn_bytes_max = 8;
  config_.prepared_bytes_max = 12;
  Start();
  CreateQueue("q");
  const int64_t exp = now_ + 5000;
  ASSERT_TRUE(core_->Stage(StageReq("s1", {EnqueueOp("q", "12345")}, exp, 1), now_).ok());
  absl::Status s = core_->Stage(StageReq("s1", {EnqueueOp("q", "1234")}, exp, 2), now_).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "transaction s1 would stage 9 bytes of messages; at most --txn_bytes_max=8");
  ASSERT_TRUE(core_->Stage(StageReq("s1", {EnqueueOp("q", "123")}, exp, 2), now_).ok());
  ASSERT_TRUE(core_->Stage(StageReq("s2", {EnqueueOp("q", "12345")}, exp, 1), now_).ok());
  EXPECT_EQ(Prepare(StagedPrepareReq("s1", 2)).vote(), v1::YES);  // 8 of 12
  core_->Prepare(60, StagedPrepareReq("s2", 1), now_);
  const absl::Status full = StatusOf(Collect(), 60);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(full.message(), "--prepared_bytes_max=12")) << full;
  EXPECT_EQ(core_->staged_transactions(), 1u);  // s2 stays staged
  EXPECT_EQ(Commit("s1").size(), 2u);
  EXPECT_EQ(Prepare(StagedPrepareReq("s2", 1)).vote(), v1::YES);
}

TEST_F(ParticipantCoreTest, StageRefusesBadOpsAndLimitsAndStagesNothing) {
  config_.staged_txns_max = 1;
  config_.ops_per_txn_max = 2;
  config_.staged_bytes_max = 10;
  Start();
  CreateQueue("in");
  Produce("p", "in", {"m1"});
  std::vector<Lease> got = Receive("in", 1, 100);
  ASSERT_EQ(got.size(), 1u);
  auto code = [&](const v1::StageRequest& req) { return core_->Stage(req, now_).status(); };
  const int64_t exp = now_ + 5000;

  absl::Status s = code(StageReq("a", {AckOp("in", 1, "7-999")}, exp));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "stale or foreign")) << s;
  EXPECT_EQ(code(StageReq("a", {EnqueueOp("nope", "x")}, exp)).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(code(StageReq("a", {EnqueueOp("in", "x", "p2")}, exp)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(StageReq("a", {}, exp)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(StageReq("bad id!", {EnqueueOp("in", "x")}, exp)).code(),
            absl::StatusCode::kInvalidArgument);
  s = code(StageReq("a", {EnqueueOp("in", "x")}, now_ - 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "expired")) << s;
  // One bad op refuses the whole call: the good ack beside it is not pinned.
  EXPECT_EQ(
      code(StageReq("a", {AckOp("in", 1, got[0].lease_token), EnqueueOp("nope", "x")}, exp)).code(),
      absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->staged_transactions(), 0u);
  EXPECT_EQ(Info("in").pending_in_txn(), 0u);
  EXPECT_TRUE(Collect().timers.empty());

  // Limits.
  EXPECT_EQ(code(StageReq("a", {EnqueueOp("in", "12345678901")}, exp)).code(),
            absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(code(StageReq("a", {EnqueueOp("in", "x"), EnqueueOp("in", "y")}, exp)).ok());
  EXPECT_EQ(code(StageReq("a", {EnqueueOp("in", "z")}, exp)).code(),
            absl::StatusCode::kResourceExhausted);  // ops_per_txn_max
  EXPECT_EQ(code(StageReq("b", {EnqueueOp("in", "z")}, exp)).code(),
            absl::StatusCode::kResourceExhausted);  // staged_txns_max
  EXPECT_EQ(core_->staged_transactions(), 1u);
}

TEST_F(ParticipantCoreTest, StagedBytesHaveAShareForEachIdentity) {
  config_.staged_bytes_max = 100;
  config_.staged_bytes_per_identity_max = 10;
  Start();
  CreateQueue("in");
  const int64_t exp = now_ + 5000;
  auto stage = [&](const std::string& txn, const std::string& payload, const std::string& who) {
    return core_->Stage(StageReq(txn, {EnqueueOp("in", payload)}, exp), now_, who).status();
  };
  ASSERT_TRUE(stage("a1", "12345678", "alice").ok());
  absl::Status s = stage("a2", "123", "alice");  // 11 bytes for alice
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(s.message(), "--staged_bytes_per_identity_max=10")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "alice")) << s;
  // Bob's share is his own, and he adds nothing to alice's transaction.
  ASSERT_TRUE(stage("b1", "1234567890", "bob").ok());
  s = stage("a1", "1", "bob");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(core_->staged_transactions(), 2u);
  // Dropped work gives its share back.
  ASSERT_TRUE(Abort("a1").ok());
  EXPECT_TRUE(stage("a2", "123", "alice").ok());
}

TEST_F(ParticipantCoreTest, StagedWorkExpiresAndPrepareThenVotesNo) {
  Start();
  CreateQueue("in");
  Produce("p", "in", {"m1"});
  std::vector<Lease> got = Receive("in", 1, 100);
  ASSERT_TRUE(core_
                  ->Stage(StageReq("s1", {AckOp("in", 1, got[0].lease_token), EnqueueOp("in", "x")},
                                   now_ + 1000),
                          now_)
                  .ok());
  Output o = Collect();
  ASSERT_EQ(o.timers.size(), 1u);
  now_ = o.timers[0].at_ms;
  core_->OnTimer(o.timers[0].timer_id, now_);
  Collect();
  EXPECT_EQ(core_->staged_transactions(), 0u);
  EXPECT_TRUE(Logged("txn s1 staged work dropped (2 ops): expired"));
  EXPECT_EQ(Info("in").pending_in_txn(), 0u);
  EXPECT_EQ(Receive("in").size(), 1u) << "the pin is gone and the lease expired";
  v1::PrepareResponse v = Prepare(StagedPrepareReq("s1", 2));
  EXPECT_EQ(v.vote(), v1::NO);
  EXPECT_EQ(v.reason(), "nothing staged for txn s1 on p1 (expired or lost in a restart)");
  EXPECT_TRUE(in_flight_.empty()) << "a NO writes nothing";
}

TEST_F(ParticipantCoreTest, StagedCountMismatchAbortAndRestartDropStagedWork) {
  Start();
  CreateQueue("in");
  Produce("p", "in", {"m1", "m2"});
  std::vector<Lease> got = Receive("in", 2, 10000);
  const int64_t exp = now_ + 5000;

  // The client staged 2 ops, this node holds 1 (e.g. the first was lost in a restart).
  ASSERT_TRUE(core_->Stage(StageReq("s1", {AckOp("in", 1, got[0].lease_token)}, exp), now_).ok());
  v1::PrepareResponse v = Prepare(StagedPrepareReq("s1", 2));
  EXPECT_EQ(v.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(v.reason(), "1 op staged for txn s1 on p1, the client staged 2"))
      << v.reason();
  EXPECT_EQ(core_->staged_transactions(), 0u);
  EXPECT_EQ(Info("in").leased(), 2u) << "the pin went back to its (current) lease";

  // Abort drops staged work and records the outcome: the id takes no more work.
  ASSERT_TRUE(core_->Stage(StageReq("s2", {AckOp("in", 2, got[1].lease_token)}, exp), now_).ok());
  EXPECT_EQ(Info("in").pending_in_txn(), 1u);
  EXPECT_TRUE(Abort("s2").ok());
  EXPECT_EQ(core_->staged_transactions(), 0u);
  EXPECT_EQ(Info("in").pending_in_txn(), 0u);
  EXPECT_EQ(core_->Stage(StageReq("s2", {EnqueueOp("in", "x")}, exp), now_).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Prepare(StagedPrepareReq("s2", 1)).vote(), v1::NO);

  // A plain Prepare for an id with staged work drops it.
  ASSERT_TRUE(core_->Stage(StageReq("s3", {AckOp("in", 2, got[1].lease_token)}, exp), now_).ok());
  EXPECT_EQ(Prepare(PrepareReq("s3", {EnqueueOp("in", "y")})).vote(), v1::YES);
  EXPECT_EQ(core_->staged_transactions(), 0u);
  EXPECT_TRUE(Abort("s3").ok());

  // A restart loses staged work (memory only).
  ASSERT_TRUE(core_->Stage(StageReq("s4", {EnqueueOp("in", "z")}, exp), now_).ok());
  Restart();
  EXPECT_EQ(core_->staged_transactions(), 0u);
  EXPECT_EQ(Info("in").pending_in_txn(), 0u);
  EXPECT_EQ(Prepare(StagedPrepareReq("s4", 1)).vote(), v1::NO);
}

}  // namespace
}  // namespace atomq::participant
