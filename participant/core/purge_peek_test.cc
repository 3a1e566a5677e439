// Queue.PurgeQueue, peeking Receives and the pages of ListTransactions.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"
#include "participant/core/participant_core_test_fixture.h"

namespace atomq::participant {
namespace {

class PurgePeekTest : public PagingTest {
 protected:
  absl::StatusOr<std::vector<Lease>> PeekAt(const std::string& queue, uint32_t max) {
    v1::ReceiveRequest req;
    req.set_queue(queue);
    req.set_max_messages(max);
    return core_->Peek(req);
  }

  static std::vector<uint64_t> Seqs(const std::vector<Lease>& ls) {
    std::vector<uint64_t> s;
    for (const Lease& l : ls) s.push_back(l.sequence);
    return s;
  }

  // Starts a purge; its reply, if any came without a write.
  RequestId StartPurge(const std::string& queue) {
    RequestId r = next_req_++;
    core_->PurgeQueue(r, queue);
    return r;
  }

  // A purge to its durable end: the reply's status and count.
  std::pair<absl::Status, uint64_t> Purge(const std::string& queue) {
    RequestId r = StartPurge(queue);
    Output o = Collect();
    if (Find(o, r) == nullptr) o = Persist();
    absl::Status s = StatusOf(o, r);
    return {s, s.ok() ? Body<v1::PurgeQueueResponse>(o, r).purged() : 0};
  }
};

// --- peek ---

TEST_F(PurgePeekTest, PeekShowsReadyMessagesInOrderAndChangesNothing) {
  Start();
  CreateQueue("q");
  Produce("t1", "q", Payloads(1, 10));  // 1..4 in memory, 5..10 on disk
  std::vector<Lease> leased = Receive("q", 1, 60000);
  ASSERT_EQ(leased.size(), 1u);
  Collect();
  absl::StatusOr<std::vector<Lease>> look = PeekAt("q", 20);
  ASSERT_TRUE(look.ok()) << look.status();
  EXPECT_EQ(Seqs(*look), Range(2, 10));  // the backlog on disk too, leased 1 not
  for (const Lease& l : *look) {
    EXPECT_TRUE(l.lease_token.empty());
    EXPECT_EQ(l.delivery_count, 0u);
  }
  EXPECT_EQ(Seqs(*PeekAt("q", 3)), Range(2, 4));
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(o.ready_queues.empty());
  EXPECT_EQ(Info("q").ready(), 9u);
  EXPECT_EQ(Info("q").leased(), 1u);
  // Delivery counts and order are as if nobody had looked.
  std::vector<Lease> next = Receive("q", 1, 60000);
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].sequence, 2u);
  EXPECT_EQ(next[0].delivery_count, 1u);
  // A redelivered message shows its count.
  ASSERT_TRUE(Nack(next[0], false).first.ok());
  look = PeekAt("q", 1);
  ASSERT_TRUE(look.ok());
  ASSERT_EQ(look->size(), 1u);
  EXPECT_EQ((*look)[0].sequence, 2u);
  EXPECT_EQ((*look)[0].delivery_count, 1u);
  EXPECT_EQ(ReceiveAll("q", 3), Range(2, 10));
}

TEST_F(PurgePeekTest, PeekRefusesWhatOnlyADeliveryMeans) {
  Start();
  CreateQueue("q");
  v1::ReceiveRequest req;
  req.set_queue("q");
  req.set_auto_ack(true);
  EXPECT_EQ(core_->Peek(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.set_auto_ack(false);
  req.set_wait_ms(100);
  EXPECT_EQ(core_->Peek(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.set_wait_ms(0);
  req.set_max_messages(config_.receive_max + 1);
  EXPECT_EQ(core_->Peek(req).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PeekAt("nope", 1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(PeekAt("bad name!", 1).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::vector<Lease>> none = PeekAt("q", 0);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

// --- purge ---

TEST_F(PurgePeekTest, PurgeErasesReadyMessagesOnlyAndAnswersOnceDurable) {
  Start();
  CreateQueue("q");
  Produce("t1", "q", Payloads(1, 10));  // 1..4 in memory, 5..10 on disk
  std::vector<Lease> got = Receive("q", 3, 60000);
  ASSERT_EQ(got.size(), 3u);
  // 3 is pinned by a prepared transaction's ack; 1 and 2 stay leased.
  ASSERT_EQ(Prepare(PrepareReq("ack3", {AckOp("q", 3, got[2].lease_token)})).vote(), v1::YES);
  RequestId r = StartPurge("q");
  Output o = Collect();
  EXPECT_EQ(Find(o, r), nullptr);  // not before it is durable
  EXPECT_EQ(Info("q").ready(), 0u);
  EXPECT_EQ(Info("q").leased(), 2u);
  EXPECT_TRUE(Receive("q").empty());  // held: delivered to nobody meanwhile
  ASSERT_TRUE(PeekAt("q", 10).ok());
  EXPECT_TRUE(PeekAt("q", 10)->empty());
  o = Persist();
  EXPECT_EQ(Body<v1::PurgeQueueResponse>(o, r).purged(), 7u);  // 4 and 5..10
  EXPECT_TRUE(Logged("queue q: purged 7 messages"));
  EXPECT_EQ(store_.Count(kMessagesDb), 3u);
  for (uint64_t seq = 4; seq <= 10; ++seq) EXPECT_FALSE(Stored("q", seq).has_value()) << seq;
  // What stayed works as before; new messages come after.
  ASSERT_TRUE(Nack(got[0], false).first.ok());
  EXPECT_EQ(Produce("t2", "q", {"m11"}), std::vector<uint64_t>{11});
  EXPECT_EQ(Commit("ack3"), std::vector<uint64_t>{0});
  EXPECT_EQ(Info("q").ready(), 2u);
  EXPECT_EQ(ReceiveAll("q", 5), (std::vector<uint64_t>{1, 11}));
  Restart();
  EXPECT_EQ(Info("q").ready(), 3u);  // leases are gone with the restart
  EXPECT_EQ(ReceiveAll("q", 5), (std::vector<uint64_t>{1, 2, 11}));
}

TEST_F(PurgePeekTest, FailedPurgeWriteLeavesEveryMessageReadyInOrder) {
  Start();
  CreateQueue("q");
  Produce("t1", "q", Payloads(1, 10));
  RequestId r = StartPurge("q");
  Collect();
  Output o = Persist(absl::ResourceExhaustedError("disk full"));
  EXPECT_EQ(StatusOf(o, r).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(store_.Count(kMessagesDb), 10u);
  EXPECT_EQ(Info("q").ready(), 10u);
  EXPECT_EQ(ReceiveAll("q", 3), Range(1, 10));
}

TEST_F(PurgePeekTest, PurgeInFlightKeepsLaterMessagesAndRefusesAnotherPurgeOrADelete) {
  Start();
  CreateQueue("q");
  Produce("t1", "q", Payloads(1, 6));
  RequestId r = StartPurge("q");
  Collect();
  EXPECT_EQ(Purge("q").first.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Body<v1::PurgeQueueResponse>(Persist(), r).purged(), 6u);
  EXPECT_EQ(store_.Count(kMessagesDb), 0u);

  Produce("t2", "q", Payloads(7, 12));  // 7..10 in memory, 11, 12 on disk
  r = StartPurge("q");
  Collect();
  core_->DeleteQueue(next_req_, "q", now_);
  EXPECT_EQ(StatusOf(Collect(), next_req_++).code(), absl::StatusCode::kFailedPrecondition);
  // Committed while the purge is in flight: kept, behind what is purged.
  EXPECT_EQ(SendMsg(SendReq("q", "m13")).second.sequence(), 13u);  // persists both
  EXPECT_EQ(Info("q").ready(), 1u);
  EXPECT_EQ(ReceiveAll("q", 3), std::vector<uint64_t>{13});
  EXPECT_EQ(Purge("q"), (std::pair<absl::Status, uint64_t>{absl::OkStatus(), 0}));
  EXPECT_EQ(Purge("nope").first.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Purge("bad name!").first.code(), absl::StatusCode::kInvalidArgument);
}

// --- ListTransactions pages ---

class ListPagesTest : public ParticipantCoreTest {
 protected:
  absl::StatusOr<v1::ListParticipantTxnsResponse> List(uint32_t limit, const std::string& token,
                                                       bool payloads,
                                                       uint64_t bytes_max = 1 << 20) {
    v1::ListParticipantTxnsRequest req;
    req.set_limit(limit);
    req.set_page_token(token);
    req.set_payloads(payloads);
    return core_->ListTransactions(req, 3, bytes_max);
  }
};

TEST_F(ListPagesTest, PagesInIdOrderWithoutPayloadsUnlessAsked) {
  Start();
  CreateQueue("q");
  const std::string big(10000, 'x');
  for (const char* id : {"t4", "t2", "t5", "t1", "t3"}) {
    v1::Op op = EnqueueOp("q", big);
    (*op.mutable_enqueue()->mutable_headers())["k"] = "vv";
    ASSERT_EQ(Prepare(PrepareReq(id, {op, EnqueueOp("q", "small")})).vote(), v1::YES);
  }
  // limit 0 and above the bound: the bound (3).
  absl::StatusOr<v1::ListParticipantTxnsResponse> page = List(0, "", false);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->transactions_size(), 3);
  EXPECT_EQ(page->transactions(0).txn_id(), "t1");
  EXPECT_EQ(page->next_page_token(), "t3");
  const v1::ParticipantTxnInfo& t1 = page->transactions(0);
  EXPECT_FALSE(t1.payloads_included());
  ASSERT_EQ(t1.ops_size(), 2);
  EXPECT_EQ(t1.ops(0).enqueue().queue(), "q");
  EXPECT_TRUE(t1.ops(0).enqueue().payload().empty());
  EXPECT_TRUE(t1.ops(0).enqueue().headers().empty());
  EXPECT_EQ(t1.op_bytes(0), 10003u);  // payload and header key and value
  EXPECT_EQ(t1.op_bytes(1), 5u);
  EXPECT_LT(page->ByteSizeLong(), 2000u);
  page = List(10, "t3", false);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->transactions_size(), 2);
  EXPECT_EQ(page->transactions(1).txn_id(), "t5");
  EXPECT_TRUE(page->next_page_token().empty());
  // Payloads when asked, with the byte bound cutting the page (one row at least).
  page = List(3, "", true, 15000);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->transactions_size(), 1);
  EXPECT_TRUE(page->transactions(0).payloads_included());
  EXPECT_EQ(page->transactions(0).ops(0).enqueue().payload(), big);
  EXPECT_EQ(page->next_page_token(), "t1");
  page = List(3, "", true, 1024);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->transactions_size(), 1);
  page = List(3, "", true, 25000);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->transactions_size(), 2);
  EXPECT_EQ(List(1, "not an id!", false).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace atomq::participant
