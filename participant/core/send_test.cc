// Queue.Send and producer deduplication.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"
#include "participant/core/participant_core_test_fixture.h"

namespace atomq::participant {
namespace {

TEST_F(QueueFeaturesTest, SendIsDurableBeforeItsReplyAndVisibleAfter) {
  Start();
  CreateQueue("q");
  v1::SendRequest req = SendReq("q", "hello");
  (*req.mutable_headers())["h"] = "1";
  core_->Send(10, req, now_);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Find(o, 10), nullptr);
  EXPECT_TRUE(Receive("q").empty());
  o = Persist();
  v1::SendResponse resp = Body<v1::SendResponse>(o, 10);
  EXPECT_EQ(resp.sequence(), 1u);
  EXPECT_FALSE(resp.duplicate());
  EXPECT_TRUE(Has(o.ready_queues, "q"));
  EXPECT_EQ(Stored("q", 1)->payload(), "hello");
  EXPECT_EQ(store_.Get<v1::QueueRecord>(kQueuesDb, "q")->next_sequence(), 2u);
  EXPECT_EQ(store_.Count(kDedupDb), 0u);  // no producer id: nothing to remember
  EXPECT_EQ(Info("q").version(), 2u);
  // Sends and transactions share the queue's sequence.
  EXPECT_EQ(Produce("t1", "q", {"x"}), std::vector<uint64_t>{2});
  EXPECT_EQ(SendMsg(SendReq("q", "again")).second.sequence(), 3u);
}

TEST_F(QueueFeaturesTest, SendRejectsBadInputAndChangesNothing) {
  config_.payload_bytes_max = 4;
  config_.headers_max = 1;
  Start();
  CreateQueue("q");
  EXPECT_EQ(SendMsg(SendReq("nope", "a")).first.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(SendMsg(SendReq("bad name", "a")).first.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SendMsg(SendReq("q", "12345")).first.code(), absl::StatusCode::kInvalidArgument);
  v1::SendRequest h = SendReq("q", "a");
  (*h.mutable_headers())["a"] = "1";
  (*h.mutable_headers())["b"] = "2";
  EXPECT_EQ(SendMsg(h).first.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SendMsg(SendReq("q", "a", "bad producer!", 1)).first.code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SendMsg(SendReq("q", "a", "", 7)).first.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(in_flight_.empty());
  EXPECT_EQ(Info("q").version(), 1u);
  EXPECT_EQ(SendMsg(SendReq("q", "ok")).second.sequence(), 1u);
}

TEST_F(QueueFeaturesTest, ProducerRetriesAreDuplicatesAlsoAfterRestart) {
  Start();
  CreateQueue("q");
  CreateQueue("r");
  auto [s1, first] = SendMsg(SendReq("q", "m5", "prod-1", 5));
  ASSERT_TRUE(s1.ok()) << s1;
  EXPECT_EQ(first.sequence(), 1u);
  EXPECT_FALSE(first.duplicate());

  // The same sequence again: the first answer, nothing enqueued.
  RequestId r = next_req_++;
  core_->Send(r, SendReq("q", "m5", "prod-1", 5), now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  v1::SendResponse dup = Body<v1::SendResponse>(o, r);
  EXPECT_TRUE(dup.duplicate());
  EXPECT_EQ(dup.sequence(), 1u);
  // A lower sequence is a duplicate too (its message sequence is unknown).
  auto [s2, lower] = SendMsg(SendReq("q", "m3", "prod-1", 3));
  EXPECT_TRUE(lower.duplicate());
  EXPECT_EQ(lower.sequence(), 0u);
  // Per queue: the same producer sequence on another queue is new.
  EXPECT_FALSE(SendMsg(SendReq("r", "m5", "prod-1", 5)).second.duplicate());
  // A gap is fine.
  auto [s3, next] = SendMsg(SendReq("q", "m9", "prod-1", 9));
  EXPECT_FALSE(next.duplicate());
  EXPECT_EQ(next.sequence(), 2u);
  EXPECT_EQ(Info("q").ready(), 2u);

  Restart();
  auto [s4, after] = SendMsg(SendReq("q", "m9", "prod-1", 9));
  EXPECT_TRUE(after.duplicate());
  EXPECT_EQ(after.sequence(), 2u);
  EXPECT_TRUE(SendMsg(SendReq("q", "m5", "prod-1", 5)).second.duplicate());
  EXPECT_EQ(SendMsg(SendReq("q", "m10", "prod-1", 10)).second.sequence(), 3u);
  EXPECT_EQ(Info("q").ready(), 3u);
}

TEST_F(QueueFeaturesTest, DuplicateOfASendInFlightWaitsForItsBatch) {
  Start();
  CreateQueue("q");
  core_->Send(10, SendReq("q", "a", "p", 1), now_);
  core_->Send(11, SendReq("q", "a", "p", 1), now_);
  Output o = Collect();
  EXPECT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.replies.empty());
  o = Persist();
  EXPECT_FALSE(Body<v1::SendResponse>(o, 10).duplicate());
  EXPECT_TRUE(Body<v1::SendResponse>(o, 11).duplicate());
  EXPECT_EQ(Body<v1::SendResponse>(o, 11).sequence(), 1u);

  // A failed Send is forgotten: the retry enqueues.
  core_->Send(12, SendReq("q", "b", "p", 2), now_);
  o = Persist(absl::ResourceExhaustedError("disk full"));
  EXPECT_EQ(StatusOf(o, 12).code(), absl::StatusCode::kResourceExhausted);
  auto [s, retry] = SendMsg(SendReq("q", "b", "p", 2));
  EXPECT_FALSE(retry.duplicate());
  EXPECT_EQ(retry.sequence(), 3u);  // 2 stays burnt
  EXPECT_TRUE(SendMsg(SendReq("q", "a", "p", 1)).second.duplicate());
}

TEST_F(QueueFeaturesTest, ProducersMaxEvictsTheLeastRecentlyUsed) {
  config_.producers_max = 2;
  Start();
  CreateQueue("q");
  SendMsg(SendReq("q", "a", "A", 1));
  SendMsg(SendReq("q", "b", "B", 1));
  EXPECT_TRUE(SendMsg(SendReq("q", "a", "A", 1)).second.duplicate());  // A is now recent
  SendMsg(SendReq("q", "c", "C", 1));                                  // evicts B
  EXPECT_EQ(store_.Count(kDedupDb), 2u);
  EXPECT_TRUE(SendMsg(SendReq("q", "a", "A", 1)).second.duplicate());
  EXPECT_TRUE(SendMsg(SendReq("q", "c", "C", 1)).second.duplicate());
  Restart();
  EXPECT_TRUE(SendMsg(SendReq("q", "c", "C", 1)).second.duplicate());
  // B was forgotten: its retry is taken as new (the documented cost of the bound).
  EXPECT_FALSE(SendMsg(SendReq("q", "b", "B", 1)).second.duplicate());
}

TEST_F(QueueFeaturesTest, DeleteQueueErasesItsProducersAndWaitsForSends) {
  Start();
  CreateQueue("q");
  SendMsg(SendReq("q", "a", "A", 1));
  core_->Send(10, SendReq("q", "b", "A", 2), now_);
  core_->DeleteQueue(11, "q", now_);
  Output o = Collect();
  EXPECT_EQ(StatusOf(o, 11).code(), absl::StatusCode::kFailedPrecondition);  // Send in flight
  Persist();
  core_->DeleteQueue(12, "q", now_);
  o = Persist();
  EXPECT_TRUE(StatusOf(o, 12).ok());
  EXPECT_EQ(store_.Count(kDedupDb), 0u);
  EXPECT_EQ(store_.Count(kMessagesDb), 0u);
  CreateQueue("q");  // a new queue: a new id, no memory of A
  EXPECT_FALSE(SendMsg(SendReq("q", "a", "A", 1)).second.duplicate());
}

}  // namespace
}  // namespace atomq::participant
