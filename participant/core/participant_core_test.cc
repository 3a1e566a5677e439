// The transaction table through the facade: Prepare, PreCommit, Commit,
// Abort, QueryState, what waits for a batch, failed writes, recovery.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"
#include "participant/core/participant_core_test_fixture.h"

namespace atomq::participant {
namespace {

// --- Prepare ---

TEST_F(ParticipantCoreTest, PrepareVotesYesOnlyAfterRecordIsDurable) {
  Start();
  CreateQueue("q");
  core_->Prepare(100, PrepareReq("t1", {EnqueueOp("q", "a")}), now_);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  ASSERT_EQ(o.persist[0].writes.size(), 1u);
  EXPECT_EQ(o.persist[0].writes[0].db, kPreparedDb);
  EXPECT_EQ(o.persist[0].writes[0].key, "t1");
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.timers.empty());
  EXPECT_FALSE(Txn("t1").has_value());  // not prepared until durable

  o = Persist();
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 100).vote(), v1::YES);
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now_ + config_.in_doubt_after_ms);
  auto rec = store_.Get<v1::PreparedRecord>(kPreparedDb, "t1");
  ASSERT_TRUE(rec.has_value());
  EXPECT_EQ(rec->state(), v1::PREPARED);
  EXPECT_EQ(rec->coordinator_address(), "coord:1");
  ASSERT_TRUE(Txn("t1").has_value());
  EXPECT_EQ(Txn("t1")->state(), v1::PREPARED);
  EXPECT_FALSE(Txn("t1")->in_doubt());
  EXPECT_EQ(Info("q").pending_in_txn(), 1u);
  EXPECT_EQ(Info("q").ready(), 0u);
}

TEST_F(ParticipantCoreTest, PrepareVotesNoForMissingQueue) {
  Start();
  core_->Prepare(1, PrepareReq("t1", {EnqueueOp("nope", "a")}), now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  v1::PrepareResponse r = Body<v1::PrepareResponse>(o, 1);
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_EQ(r.reason(), "queue \"nope\" does not exist on p1");
  EXPECT_TRUE(Prepared().empty());
}

TEST_F(ParticipantCoreTest, PrepareVotesNoForSizeLimits) {
  config_.payload_bytes_max = 4;
  config_.headers_max = 1;
  config_.ops_per_txn_max = 2;
  Start();
  CreateQueue("q");
  v1::PrepareResponse r = Prepare(PrepareReq("t1", {EnqueueOp("q", "12345")}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "payload_bytes_max")) << r.reason();

  v1::Op op = EnqueueOp("q", "1");
  (*op.mutable_enqueue()->mutable_headers())["a"] = "1";
  (*op.mutable_enqueue()->mutable_headers())["b"] = "2";
  r = Prepare(PrepareReq("t2", {op}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "headers_max")) << r.reason();

  r = Prepare(PrepareReq("t3", {EnqueueOp("q", "1"), EnqueueOp("q", "2"), EnqueueOp("q", "3")}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "ops_per_txn_max")) << r.reason();

  EXPECT_EQ(Prepare(PrepareReq("t4", {EnqueueOp("q", "1234")})).vote(), v1::YES);
}

TEST_F(ParticipantCoreTest, MalformedPrepareIsInvalidArgument) {
  Start();
  CreateQueue("q");
  core_->Prepare(1, PrepareReq("bad id", {EnqueueOp("q", "a")}), now_);
  core_->Prepare(2, PrepareReq("t2", {EnqueueOp("q", "a", "p2")}), now_);
  v1::PrepareRequest wrong_node = PrepareReq("t3", {});
  wrong_node.set_participant("p9");
  core_->Prepare(3, wrong_node, now_);
  v1::PrepareRequest no_kind = PrepareReq("t4", {});
  no_kind.add_ops()->set_participant("p1");
  core_->Prepare(4, no_kind, now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  for (RequestId r : {1, 2, 3, 4}) {
    EXPECT_EQ(StatusOf(o, r).code(), absl::StatusCode::kInvalidArgument) << r;
  }
}

TEST_F(ParticipantCoreTest, EmptyOpsVoteReadOnlyAndKeepNothing) {
  Start();
  core_->Prepare(1, PrepareReq("t1", {}), now_);
  Output o = Collect();
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 1).vote(), v1::READ_ONLY);
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(Prepared().empty());
}

TEST_F(ParticipantCoreTest, PreparedMaxIsResourceExhausted) {
  config_.prepared_max = 1;
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  core_->Prepare(50, PrepareReq("t2", {EnqueueOp("q", "b")}), now_);
  Output o = Collect();
  EXPECT_EQ(StatusOf(o, 50).code(), absl::StatusCode::kResourceExhausted);
  // A retry of the prepared one still answers.
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
}

// Header bytes count with the payload, and the enqueues of one transaction
// have a bound of their own.
TEST_F(ParticipantCoreTest, PrepareVotesNoForHeaderAndTransactionBytes) {
  config_.payload_bytes_max = 10;
  config_.header_bytes_max = 6;
  config_.txn_bytes_max = 12;
  Start();
  CreateQueue("q");
  v1::Op big_header = EnqueueOp("q", "");
  (*big_header.mutable_enqueue()->mutable_headers())["k"] = "123456";
  v1::PrepareResponse r = Prepare(PrepareReq("t1", {big_header}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_EQ(r.reason(), "op 0: headers are 7 bytes; at most --header_bytes_max=6");

  v1::Op both = EnqueueOp("q", "123456");
  (*both.mutable_enqueue()->mutable_headers())["k"] = "12345";
  r = Prepare(PrepareReq("t2", {both}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_EQ(r.reason(), "op 0: payload and headers are 12 bytes; at most --payload_bytes_max=10");

  r = Prepare(PrepareReq("t3", {EnqueueOp("q", "1234567"), EnqueueOp("q", "123456")}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_EQ(r.reason(), "the transaction has 13 bytes of messages; at most --txn_bytes_max=12");
  EXPECT_EQ(core_->ListTransactions({}, 1000, 1 << 20)->transactions_size(), 0);
  EXPECT_EQ(Prepare(PrepareReq("t4", {EnqueueOp("q", "123456"), EnqueueOp("q", "123456")})).vote(),
            v1::YES);
}

// Prepared work is bounded in bytes as well as in count; settling frees
// its share, and a recovered transaction counts again.
TEST_F(ParticipantCoreTest, PreparedBytesMaxIsResourceExhausted) {
  config_.prepared_bytes_max = 10;
  Start();
  CreateQueue("q");
  v1::Op op = EnqueueOp("q", "1234");
  (*op.mutable_enqueue()->mutable_headers())["k"] = "v";  // 6 bytes
  EXPECT_EQ(Prepare(PrepareReq("t1", {op})).vote(), v1::YES);
  core_->Prepare(50, PrepareReq("t2", {op}), now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  const absl::Status s = StatusOf(o, 50);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(),
            "6 bytes of messages prepared here and 6 more would pass --prepared_bytes_max=10");
  EXPECT_FALSE(Txn("t2").has_value());
  EXPECT_EQ(Prepare(PrepareReq("t3", {EnqueueOp("q", "1234")})).vote(), v1::YES);  // 10 fits
  Restart();
  core_->Prepare(51, PrepareReq("t4", {EnqueueOp("q", "1")}), now_);
  EXPECT_EQ(StatusOf(Collect(), 51).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Commit("t1").size(), 1u);
  EXPECT_TRUE(Abort("t3").ok());
  EXPECT_EQ(Prepare(PrepareReq("t2", {op})).vote(), v1::YES);
}

TEST_F(ParticipantCoreTest, AckOpVotesNoForStaleForeignPinnedOrMissing) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"m1", "m2"});
  std::vector<Lease> got = Receive("q", 2, 1000);
  ASSERT_EQ(got.size(), 2u);

  // Foreign token.
  v1::PrepareResponse r = Prepare(PrepareReq("t1", {AckOp("q", 1, "someone-else")}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "not the current lease")) << r.reason();
  // Missing message.
  r = Prepare(PrepareReq("t2", {AckOp("q", 99, got[0].lease_token)}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "q/99 does not exist")) << r.reason();
  // The same message twice.
  r = Prepare(
      PrepareReq("t3", {AckOp("q", 1, got[0].lease_token), AckOp("q", 1, got[0].lease_token)}));
  EXPECT_EQ(r.vote(), v1::NO);
  // Pinned by another transaction.
  EXPECT_EQ(Prepare(PrepareReq("t4", {AckOp("q", 1, got[0].lease_token)})).vote(), v1::YES);
  r = Prepare(PrepareReq("t5", {AckOp("q", 1, got[0].lease_token)}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "held by prepared transaction t4")) << r.reason();
  // Stale: the lease expired.
  now_ += 1000;
  r = Prepare(PrepareReq("t6", {AckOp("q", 2, got[1].lease_token)}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "expired")) << r.reason();
  // Stale: redelivered under a new token.
  std::vector<Lease> again = Receive("q");
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].sequence, 2u);
  r = Prepare(PrepareReq("t7", {AckOp("q", 2, got[1].lease_token)}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_EQ(Prepare(PrepareReq("t8", {AckOp("q", 2, again[0].lease_token)})).vote(), v1::YES);
}

TEST_F(ParticipantCoreTest, DuplicatePrepareSameOpsAnswersAsFirstOtherOpsVoteNo) {
  Start();
  CreateQueue("q");
  v1::PrepareRequest req = PrepareReq("t1", {EnqueueOp("q", "a")});
  core_->Prepare(1, req, now_);
  core_->Prepare(2, req, now_);  // while the record is in flight
  Output o = Collect();
  EXPECT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.replies.empty());
  o = Persist();
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 1).vote(), v1::YES);
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 2).vote(), v1::YES);

  core_->Prepare(3, req, now_);  // after: at once, nothing new persisted
  o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 3).vote(), v1::YES);

  v1::PrepareResponse r = Prepare(PrepareReq("t1", {EnqueueOp("q", "other")}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "other ops")) << r.reason();
  EXPECT_EQ(Info("q").pending_in_txn(), 1u);  // the NO did not disturb t1

  // Once committed, a duplicate Prepare still answers YES.
  Commit("t1");
  EXPECT_EQ(Prepare(req).vote(), v1::YES);
}

// --- Commit and Abort ---

TEST_F(ParticipantCoreTest, CommitAssignsSequencesInCommitOrder) {
  Start();
  CreateQueue("q");
  CreateQueue("r");
  EXPECT_EQ(
      Prepare(PrepareReq("A", {EnqueueOp("q", "a1"), EnqueueOp("r", "a2"), EnqueueOp("q", "a3")}))
          .vote(),
      v1::YES);
  EXPECT_EQ(Prepare(PrepareReq("B", {EnqueueOp("q", "b1"), EnqueueOp("q", "b2")})).vote(), v1::YES);
  EXPECT_EQ(Commit("B"), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(Commit("A"), (std::vector<uint64_t>{3, 1, 4}));
  EXPECT_EQ(Info("q").version(), 5u);
  EXPECT_EQ(Info("r").version(), 2u);
  EXPECT_EQ(Info("q").ready(), 4u);
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);

  auto msg = store_.Get<v1::MessageRecord>(kMessagesDb, MessageKey(1, 3));
  ASSERT_TRUE(msg.has_value());
  EXPECT_EQ(msg->payload(), "a1");
  EXPECT_EQ(msg->txn_id(), "A");
  auto out = store_.Get<v1::OutcomeRecord>(kOutcomesDb, "A");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->state(), v1::STATE_COMMITTED);
  EXPECT_EQ(store_.Count(kPreparedDb), 0u);
  EXPECT_EQ(store_.Get<v1::QueueRecord>(kQueuesDb, "q")->next_sequence(), 5u);

  std::vector<Lease> got = Receive("q", 10);
  ASSERT_EQ(got.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(got[i].sequence, uint64_t(i + 1));
  EXPECT_TRUE(Logged("txn A COMMITTED here (3 enqueues, 0 acks)"));
  EXPECT_TRUE(Logged("txn B COMMITTED here (2 enqueues, 0 acks)"));
}

TEST_F(ParticipantCoreTest, MessagesInvisibleUntilCommitDurableAndAfterAbort) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  EXPECT_TRUE(Receive("q").empty());
  core_->Commit(9, "t1", now_);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Find(o, 9), nullptr);
  EXPECT_TRUE(Receive("q").empty());  // not durable yet
  EXPECT_EQ(Info("q").ready(), 0u);
  o = Persist();
  EXPECT_EQ(Body<v1::CommitResponse>(o, 9).sequences_size(), 1);
  EXPECT_EQ(Receive("q").size(), 1u);

  EXPECT_EQ(Prepare(PrepareReq("t2", {EnqueueOp("q", "b")})).vote(), v1::YES);
  EXPECT_TRUE(Abort("t2").ok());
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_EQ(Info("q").version(), 2u);  // the abort used no sequence
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t2")->state(), v1::STATE_ABORTED);
  EXPECT_EQ(store_.Count(kPreparedDb), 0u);
  EXPECT_TRUE(Logged("txn t2 ABORTED here (1 enqueue, 0 acks)"));
}

TEST_F(ParticipantCoreTest, CommitIsIdempotentEvenAfterTheCacheForgets) {
  config_.outcome_cache_max = 0;  // every answer comes from the DurableView
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a"), EnqueueOp("q", "b")})).vote(), v1::YES);
  core_->Commit(1, "t1", now_);
  core_->Commit(2, "t1", now_);  // joins the batch in flight
  Output o = Collect();
  EXPECT_EQ(o.persist.size(), 1u);
  o = Persist();
  EXPECT_EQ(Body<v1::CommitResponse>(o, 1).sequences_size(), 2);
  EXPECT_EQ(Body<v1::CommitResponse>(o, 2).sequences_size(), 2);
  EXPECT_EQ(Commit("t1"), (std::vector<uint64_t>{1, 2}));
  EXPECT_TRUE(Collect().persist.empty());
  EXPECT_EQ(Info("q").ready(), 2u);

  // Abort of a committed transaction is refused; a late PreCommit is acked.
  core_->Abort(3, "t1", now_);
  core_->PreCommit(4, "t1", now_);
  o = Collect();
  EXPECT_EQ(StatusOf(o, 3).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(StatusOf(o, 4).ok());
  EXPECT_TRUE(Logged("protocol alarm"));
}

TEST_F(ParticipantCoreTest, CommitUnknownAnswersEmptyCommitAbortedRefuses) {
  Start();
  core_->Commit(1, "ghost", now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(Body<v1::CommitResponse>(o, 1).sequences_size(), 0);
  EXPECT_TRUE(Logged("txn ghost Commit for a transaction unknown here"));

  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  EXPECT_TRUE(Abort("t1").ok());
  core_->Commit(2, "t1", now_);
  o = Collect();
  EXPECT_EQ(StatusOf(o, 2).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Logged("txn t1 protocol alarm"));
  EXPECT_TRUE(Abort("t1").ok());  // idempotent
}

TEST_F(ParticipantCoreTest, AbortUnknownIsRecordedSoLatePrepareVotesNo) {
  Start();
  CreateQueue("q");
  core_->Abort(1, "t1", now_);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(o.persist[0].writes[0].db, kOutcomesDb);
  EXPECT_EQ(Find(o, 1), nullptr);  // only once durable
  // A late Prepare while the record is in flight already votes NO.
  core_->Prepare(2, PrepareReq("t1", {EnqueueOp("q", "a")}), now_);
  o = Collect();
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 2).vote(), v1::NO);
  o = Persist();
  EXPECT_TRUE(StatusOf(o, 1).ok());
  v1::PrepareResponse r = Prepare(PrepareReq("t1", {EnqueueOp("q", "a")}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_EQ(r.reason(), "already aborted here");
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
}

TEST_F(ParticipantCoreTest, PreCommitPersistsThenAcks) {
  Start();
  CreateQueue("q");
  core_->PreCommit(1, "ghost", now_);
  Output o = Collect();
  EXPECT_EQ(StatusOf(o, 1).code(), absl::StatusCode::kFailedPrecondition);

  v1::PrepareRequest req = PrepareReq("t1", {EnqueueOp("q", "a")});
  req.set_protocol(v1::THREE_PC);
  EXPECT_EQ(Prepare(req).vote(), v1::YES);
  core_->PreCommit(2, "t1", now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Find(o, 2), nullptr);
  o = Persist();
  EXPECT_TRUE(StatusOf(o, 2).ok());
  EXPECT_EQ(store_.Get<v1::PreparedRecord>(kPreparedDb, "t1")->state(), v1::PRECOMMITTED);
  EXPECT_EQ(Txn("t1")->state(), v1::PRECOMMITTED);
  core_->PreCommit(3, "t1", now_);
  o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(StatusOf(o, 3).ok());
  EXPECT_EQ(Commit("t1"), std::vector<uint64_t>{1});
}

TEST_F(ParticipantCoreTest, RequestsDuringAPrepareInFlightWaitForIt) {
  Start();
  CreateQueue("q");
  core_->Prepare(1, PrepareReq("t1", {EnqueueOp("q", "a")}), now_);
  core_->QueryState(2, "t1", now_);
  core_->Abort(3, "t1", now_);
  Output o = Collect();
  EXPECT_TRUE(o.replies.empty());
  EXPECT_EQ(o.persist.size(), 1u);
  o = Persist();
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 1).vote(), v1::YES);
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 2).state(), v1::PREPARED);
  EXPECT_EQ(Find(o, 3), nullptr);  // the abort record is now in flight
  o = Persist();
  EXPECT_TRUE(StatusOf(o, 3).ok());
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->state(), v1::STATE_ABORTED);
}

TEST_F(ParticipantCoreTest, ConflictingRequestsWhileADecisionIsInFlight) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  EXPECT_EQ(Prepare(PrepareReq("t2", {EnqueueOp("q", "b")})).vote(), v1::YES);
  core_->Commit(1, "t1", now_);
  core_->Abort(2, "t1", now_);
  core_->QueryState(3, "t1", now_);
  core_->Abort(4, "t2", now_);
  core_->Commit(5, "t2", now_);
  core_->Prepare(6, PrepareReq("t2", {EnqueueOp("q", "b")}), now_);
  Output o = Collect();
  EXPECT_EQ(o.persist.size(), 2u);
  // The record is durable, so the duplicate Prepare still says YES.
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 6).vote(), v1::YES);
  EXPECT_EQ(o.replies.size(), 1u);
  o = Persist();
  EXPECT_EQ(Body<v1::CommitResponse>(o, 1).sequences_size(), 1);
  EXPECT_EQ(StatusOf(o, 2).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 3).state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(StatusOf(o, 4).ok());
  EXPECT_EQ(StatusOf(o, 5).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(Info("q").ready(), 1u);
}

TEST_F(ParticipantCoreTest, QueryStateAnswersWhatIsDurable) {
  Start();
  CreateQueue("q");
  core_->QueryState(1, "unknown", now_);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Find(o, 1), nullptr);  // the ABORTED record comes first
  core_->QueryState(2, "unknown", now_);
  EXPECT_TRUE(Collect().empty());
  o = Persist();
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 1).state(), v1::STATE_ABORTED);
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 2).state(), v1::STATE_ABORTED);
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "unknown")->state(), v1::STATE_ABORTED);
  EXPECT_EQ(Prepare(PrepareReq("unknown", {EnqueueOp("q", "a")})).vote(), v1::NO);

  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  core_->QueryState(3, "t1", now_);
  EXPECT_EQ(Body<v1::QueryStateResponse>(Collect(), 3).state(), v1::PREPARED);
  Commit("t1");
  core_->QueryState(4, "t1", now_);
  EXPECT_EQ(Body<v1::QueryStateResponse>(Collect(), 4).state(), v1::STATE_COMMITTED);
  core_->QueryState(5, "bad id", now_);
  EXPECT_EQ(StatusOf(Collect(), 5).code(), absl::StatusCode::kInvalidArgument);
}

// --- storage failures ---

TEST_F(ParticipantCoreTest, PersistFailuresAnswerWithErrorsAndChangeNothing) {
  Start();
  const absl::Status disk_full = absl::ResourceExhaustedError("MDB_MAP_FULL");
  core_->CreateQueue(1, "q", now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 1).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(core_->ListQueues().empty());
  CreateQueue("q");
  Produce("p", "q", {"m"});
  std::vector<Lease> got = Receive("q", 1, 1000);

  // Prepare: NO with the storage error; the ack is not pinned.
  core_->Prepare(2, PrepareReq("t1", {AckOp("q", 1, got[0].lease_token), EnqueueOp("q", "x")}),
                 now_);
  Collect();
  Output o = Persist(disk_full);
  v1::PrepareResponse r = Body<v1::PrepareResponse>(o, 2);
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "MDB_MAP_FULL")) << r.reason();
  EXPECT_TRUE(o.timers.empty());
  EXPECT_FALSE(Txn("t1").has_value());
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_EQ(Info("q").leased(), 1u);

  // Commit: an error; still prepared, nothing visible; a retry commits.
  EXPECT_EQ(
      Prepare(PrepareReq("t1", {AckOp("q", 1, got[0].lease_token), EnqueueOp("q", "x")})).vote(),
      v1::YES);
  core_->Commit(3, "t1", now_);
  Collect();
  o = Persist(disk_full);
  EXPECT_EQ(StatusOf(o, 3).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Txn("t1")->state(), v1::PREPARED);
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_EQ(Info("q").pending_in_txn(), 2u);
  std::vector<uint64_t> seqs = Commit("t1");
  ASSERT_EQ(seqs.size(), 2u);
  EXPECT_EQ(seqs[0], 0u);
  EXPECT_GE(seqs[1], 2u);  // a failed commit may burn a sequence, never reuse one

  // Plain Ack: an error; still leased.
  got = Receive("q", 1, 1000);
  ASSERT_EQ(got.size(), 1u);
  core_->Ack(4, "q", got[0].sequence, got[0].lease_token, now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 4).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Info("q").leased(), 1u);

  // Abort of an unknown id: an error, and not remembered as aborted.
  core_->Abort(5, "t9", now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 5).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Prepare(PrepareReq("t9", {EnqueueOp("q", "y")})).vote(), v1::YES);

  // Abort of a prepared one: an error; still prepared.
  core_->Abort(6, "t9", now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 6).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Txn("t9").has_value());

  // PreCommit: an error; still PREPARED.
  core_->PreCommit(8, "t9", now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 8).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Txn("t9")->state(), v1::PREPARED);

  // QueryState of an unknown id: an error, not an answer.
  core_->QueryState(9, "t10", now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 9).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(store_.FindOutcome("t10").has_value());

  // DeleteQueue: an error; still there.
  EXPECT_TRUE(Abort("t9").ok());
  core_->DeleteQueue(7, "q", now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 7).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(core_->ListQueues().size(), 1u);
}

TEST_F(ParticipantCoreTest, SequencesAreNeverReusedAfterRecover) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Produce("a", "q", {"1", "2"}), (std::vector<uint64_t>{1, 2}));
  // A commit whose batch never reached the disk.
  EXPECT_EQ(Prepare(PrepareReq("b", {EnqueueOp("q", "3")})).vote(), v1::YES);
  core_->Commit(1, "b", now_);
  Collect();
  Restart();
  EXPECT_EQ(Info("q").version(), 3u);
  std::vector<Lease> got = Receive("q");
  ASSERT_EQ(got.size(), 2u);  // every message is ready after a restart
  core_->OnTimer(last_.timers[0].timer_id, now_);
  Collect();
  core_->OnQueryReply("b", "c1", StateReply(v1::STATE_COMMITTED), now_);
  Persist();
  EXPECT_EQ(Commit("b"), std::vector<uint64_t>{3});
  EXPECT_EQ(Produce("c", "q", {"4"}), std::vector<uint64_t>{4});
  Restart();
  CreateQueue("r");
  EXPECT_EQ(store_.Get<v1::QueueRecord>(kQueuesDb, "r")->id(), 2u);  // queue ids too
  EXPECT_EQ(Produce("d", "q", {"5"}), std::vector<uint64_t>{5});
  EXPECT_EQ(Info("q").ready(), 5u);
}

}  // namespace
}  // namespace atomq::participant
