// Queue admin and dead-lettering: create, list, delete, nack, max_deliveries.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"
#include "participant/core/participant_core_test_fixture.h"

namespace atomq::participant {
namespace {

// --- queues ---

TEST_F(ParticipantCoreTest, QueueCreateListDelete) {
  config_.queues_max = 2;
  Start();
  core_->CreateQueue(1, "q", now_);
  Output o = Collect();
  EXPECT_EQ(Find(o, 1), nullptr);
  EXPECT_TRUE(core_->ListQueues().empty());  // usable once durable
  core_->CreateQueue(2, "q", now_);
  EXPECT_EQ(StatusOf(Collect(), 2).code(), absl::StatusCode::kAlreadyExists);
  o = Persist();
  v1::CreateQueueResponse created = Body<v1::CreateQueueResponse>(o, 1);
  EXPECT_EQ(created.queue().name(), "q");
  EXPECT_EQ(created.queue().version(), 1u);
  EXPECT_EQ(created.queue().created_unix_ms(), now_);
  EXPECT_EQ(store_.Get<v1::MetaRecord>(kMetaDb, "meta")->next_queue_id(), 2u);
  EXPECT_EQ(store_.Get<v1::QueueRecord>(kQueuesDb, "q")->id(), 1u);

  core_->CreateQueue(3, "bad/name", now_);
  core_->CreateQueue(4, "q", now_);
  o = Collect();
  EXPECT_EQ(StatusOf(o, 3).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StatusOf(o, 4).code(), absl::StatusCode::kAlreadyExists);
  CreateQueue("r");
  core_->CreateQueue(5, "s", now_);
  EXPECT_EQ(StatusOf(Collect(), 5).code(), absl::StatusCode::kResourceExhausted);

  Produce("p", "q", {"a", "b", "c"});
  Receive("q", 1);
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "x")})).vote(), v1::YES);
  std::vector<v1::QueueInfo> all = core_->ListQueues();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name(), "q");
  EXPECT_EQ(all[0].version(), 4u);
  EXPECT_EQ(all[0].ready(), 2u);
  EXPECT_EQ(all[0].leased(), 1u);
  EXPECT_EQ(all[0].pending_in_txn(), 1u);
  EXPECT_EQ(all[1].name(), "r");

  core_->DeleteQueue(6, "nope", now_);
  core_->DeleteQueue(7, "q", now_);  // t1 is prepared on it
  o = Collect();
  EXPECT_EQ(StatusOf(o, 6).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(StatusOf(o, 7).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(o.persist.empty());
  Commit("t1");

  core_->DeleteQueue(8, "q", now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(o.persist[0].writes.size(), 5u);  // the record and 4 messages
  EXPECT_EQ(Find(o, 8), nullptr);
  // Gone for new work at once, answered once durable.
  EXPECT_EQ(core_->Receive("q", 1, 0, now_).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Prepare(PrepareReq("t2", {EnqueueOp("q", "x")})).vote(), v1::NO);
  o = Persist();
  EXPECT_TRUE(StatusOf(o, 8).ok());
  EXPECT_EQ(store_.Count(kMessagesDb), 0u);
  EXPECT_FALSE(store_.Get<v1::QueueRecord>(kQueuesDb, "q").has_value());
  ASSERT_EQ(core_->ListQueues().size(), 1u);

  // Re-created: a new id, so old keys cannot collide.
  CreateQueue("q");
  EXPECT_EQ(store_.Get<v1::QueueRecord>(kQueuesDb, "q")->id(), 3u);
  EXPECT_EQ(Produce("p2", "q", {"z"}), std::vector<uint64_t>{1});
}

TEST_F(QueueFeaturesTest, CreateQueueOptionsAreValidatedAndShown) {
  config_.max_deliveries_max = 10;
  Start();
  EXPECT_EQ(CreateQueueWith("q", 3, "").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateQueueWith("q", 3, "dlq").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CreateQueueWith("q", 0, "q").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateQueueWith("q", 0, "bad name").code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  EXPECT_EQ(CreateQueueWith("q", 11, "dlq").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->ListQueues().size(), 1u);  // nothing above created anything
  ASSERT_TRUE(CreateQueueWith("q", 3, "dlq").ok());
  EXPECT_EQ(Info("q").max_deliveries(), 3u);
  EXPECT_EQ(Info("q").dead_letter_queue(), "dlq");
  EXPECT_EQ(store_.Get<v1::QueueRecord>(kQueuesDb, "q")->max_deliveries(), 3u);

  // A dead-letter queue in use cannot be deleted.
  core_->DeleteQueue(50, "dlq", now_);
  EXPECT_EQ(StatusOf(Collect(), 50).code(), absl::StatusCode::kFailedPrecondition);
  // Options survive a restart.
  Restart();
  EXPECT_EQ(Info("q").max_deliveries(), 3u);
  EXPECT_EQ(Info("q").dead_letter_queue(), "dlq");
}

TEST_F(QueueFeaturesTest, ExpiredLeasesRedeliverThenDeadLetterAtMaxDeliveries) {
  Start();
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  ASSERT_TRUE(CreateQueueWith("q", 2, "dlq").ok());
  v1::Op op = EnqueueOp("q", "poison");
  (*op.mutable_enqueue()->mutable_headers())["k"] = "v";
  ASSERT_EQ(Prepare(PrepareReq("t1", {op})).vote(), v1::YES);
  ASSERT_EQ(Commit("t1"), std::vector<uint64_t>{1});

  std::vector<Lease> got = Receive("q", 10, 100);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].delivery_count, 1u);
  now_ += 100;
  core_->ExpireLeases(now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());  // below the maximum: just ready again
  EXPECT_TRUE(Has(o.ready_queues, "q"));
  EXPECT_EQ(Info("q").ready(), 1u);
  got = Receive("q", 10, 100);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].delivery_count, 2u);

  // The second expiry reaches max_deliveries: one batch moves it.
  now_ += 100;
  core_->ExpireLeases(now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_FALSE(Has(o.ready_queues, "dlq"));  // not before the move is durable
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_TRUE(Receive("dlq").empty());
  o = Persist();
  EXPECT_TRUE(Has(o.ready_queues, "dlq"));
  EXPECT_FALSE(Stored("q", 1).has_value());
  std::optional<v1::MessageRecord> moved = Stored("dlq", 1);
  ASSERT_TRUE(moved.has_value());
  EXPECT_EQ(moved->payload(), "poison");
  EXPECT_EQ(moved->headers().at("k"), "v");
  EXPECT_EQ(moved->headers().at("x-dead-letter-queue"), "q");
  EXPECT_EQ(moved->headers().at("x-dead-letter-sequence"), "1");
  EXPECT_EQ(moved->headers().at("x-dead-letter-reason"), "max-deliveries");
  EXPECT_EQ(moved->headers().at("x-delivery-count"), "2");
  EXPECT_EQ(Info("q").ready() + Info("q").leased(), 0u);
  EXPECT_EQ(Info("dlq").version(), 2u);
  got = Receive("dlq");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].sequence, 1u);
  EXPECT_EQ(got[0].delivery_count, 1u);

  // The dead-letter queue's sequence is durable: never reused after a restart.
  Restart();
  EXPECT_EQ(Produce("t2", "dlq", {"x"}), std::vector<uint64_t>{2});
}

TEST_F(QueueFeaturesTest, NackRequeuesAtOnceOrDeadLetters) {
  Start();
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  ASSERT_TRUE(CreateQueueWith("q", 0, "dlq").ok());
  CreateQueue("plain");
  Produce("t1", "q", {"a", "b"});
  Produce("t2", "plain", {"c"});

  std::vector<Lease> got = Receive("q", 1);
  ASSERT_EQ(got.size(), 1u);
  // Requeue needs nothing durable: answered at once, ready at once.
  v1::NackRequest req;
  req.set_queue("q");
  req.set_sequence(got[0].sequence);
  req.set_lease_token(got[0].lease_token);
  core_->Nack(10, req, now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(StatusOf(o, 10).ok());
  EXPECT_FALSE(std::get<v1::NackResponse>(Find(o, 10)->body).dead_lettered());
  EXPECT_TRUE(Has(o.ready_queues, "q"));
  // The old token is dead; the message comes first again (sequence order).
  EXPECT_EQ(Nack(got[0], false).first.code(), absl::StatusCode::kFailedPrecondition);
  got = Receive("q", 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].sequence, 1u);
  EXPECT_EQ(got[0].delivery_count, 2u);

  EXPECT_EQ(Nack(got[0], false, "1-bogus").first.code(), absl::StatusCode::kFailedPrecondition);
  auto [status, resp] = Nack(got[0], true);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(resp.dead_lettered());
  EXPECT_EQ(resp.dead_letter_sequence(), 1u);
  std::optional<v1::MessageRecord> moved = Stored("dlq", 1);
  ASSERT_TRUE(moved.has_value());
  EXPECT_EQ(moved->payload(), "a");
  EXPECT_EQ(moved->headers().at("x-dead-letter-reason"), "nack");
  EXPECT_EQ(Info("q").ready(), 1u);  // "b" stays

  // No dead-letter queue: refused, and the lease is untouched.
  std::vector<Lease> p = Receive("plain");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(Nack(p[0], true).first.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Info("plain").leased(), 1u);
  EXPECT_TRUE(Nack(p[0], false).first.ok());
  EXPECT_EQ(Info("plain").ready(), 1u);
}

TEST_F(QueueFeaturesTest, NackRequeueAtMaxDeliveriesDeadLetters) {
  Start();
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  ASSERT_TRUE(CreateQueueWith("q", 1, "dlq").ok());
  Produce("t1", "q", {"a"});
  std::vector<Lease> got = Receive("q");
  ASSERT_EQ(got.size(), 1u);
  auto [status, resp] = Nack(got[0], false);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(resp.dead_lettered());
  EXPECT_EQ(Stored("dlq", 1)->headers().at("x-dead-letter-reason"), "max-deliveries");
  EXPECT_TRUE(Receive("q").empty());
}

TEST_F(QueueFeaturesTest, FailedMoveLeavesTheMessageInItsQueue) {
  Start();
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  ASSERT_TRUE(CreateQueueWith("q", 0, "dlq").ok());
  Produce("t1", "q", {"a"});
  std::vector<Lease> got = Receive("q");
  v1::NackRequest req;
  req.set_queue("q");
  req.set_sequence(1);
  req.set_lease_token(got[0].lease_token);
  req.set_dead_letter(true);
  core_->Nack(10, req, now_);
  Output o = Persist(absl::ResourceExhaustedError("disk full"));
  EXPECT_EQ(StatusOf(o, 10).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Stored("q", 1).has_value());
  EXPECT_EQ(Info("dlq").ready(), 0u);
  got = Receive("q");
  ASSERT_EQ(got.size(), 1u);  // back in its queue, deliverable
}

TEST_F(PagingTest, DeleteErasesTheBacklogOnDiskAndAFailedReadFailsIt) {
  Start();
  CreateQueue("q");
  Produce("t1", "q", Payloads(1, 10));
  ASSERT_EQ(Receive("q", 1, 60000).size(), 1u);
  store_.scan_error_ = absl::InternalError("disk read failed");
  core_->DeleteQueue(50, "q", now_);
  Output o = Collect();
  EXPECT_EQ(StatusOf(o, 50).code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(o.persist.empty());
  // Receive serves what is in memory, then answers the read error.
  EXPECT_EQ(Receive("q", 10, 60000).size(), 3u);
  absl::StatusOr<std::vector<Lease>> failed = core_->Receive("q", 10, 60000, now_);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal);
  Collect();
  EXPECT_TRUE(Logged("queue q: reading its backlog from storage failed"));
  EXPECT_EQ(Info("q").ready(), 6u);

  store_.scan_error_ = absl::OkStatus();
  core_->DeleteQueue(51, "q", now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(o.persist[0].writes.size(), 11u);  // the record and 10 messages
  EXPECT_TRUE(StatusOf(Persist(), 51).ok());
  EXPECT_EQ(store_.Count(kMessagesDb), 0u);
  Restart();
  EXPECT_TRUE(core_->ListQueues().empty());
}

TEST_F(PagingTest, DeadLetteringIntoAndOutOfQueuesWithBacklogsOnDisk) {
  Start();
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  ASSERT_TRUE(CreateQueueWith("q", 0, "dlq").ok());
  Produce("t1", "dlq", Payloads(1, 6));  // 5 and 6 on disk
  Produce("t2", "q", Payloads(11, 20));  // sequences 5..10 on disk
  std::vector<Lease> got = Receive("q", 2, 60000);
  ASSERT_EQ(got.size(), 2u);
  auto [status, resp] = Nack(got[1], true);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(resp.dead_lettered());
  EXPECT_EQ(resp.dead_letter_sequence(), 7u);  // behind the dead-letter queue's backlog
  std::optional<v1::MessageRecord> moved = Stored("dlq", 7);
  ASSERT_TRUE(moved.has_value());
  EXPECT_EQ(moved->payload(), "m12");
  EXPECT_EQ(moved->headers().at("x-dead-letter-sequence"), "2");
  EXPECT_EQ(Info("dlq").ready(), 7u);
  EXPECT_EQ(Info("q").ready(), 8u);
  EXPECT_EQ(Info("q").leased(), 1u);
  EXPECT_EQ(ReceiveAll("dlq", 2), Range(1, 7));
  EXPECT_EQ(ReceiveAll("q", 3), Range(3, 10));
}

}  // namespace
}  // namespace atomq::participant
