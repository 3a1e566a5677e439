// The participant's queue features on real processes: long-poll, streams
// with a credit window, nack, dead letters, auto-ack, redelivery after lease
// expiry and after a restart, isolation of prepared work, producer dedup, and
// the queue commands of atomqctl.
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <future>
#include <mutex>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

using Clock = std::chrono::steady_clock;

int64_t MsSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

void Deadline(grpc::ClientContext* ctx, int ms) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

grpc::Status CreateQueue(Cluster& c, const std::string& name, uint32_t max_deliveries = 0,
                         const std::string& dlq = "") {
  grpc::ClientContext ctx;
  Deadline(&ctx, 5000);
  v1::CreateQueueRequest req;
  req.set_name(name);
  req.set_max_deliveries(max_deliveries);
  req.set_dead_letter_queue(dlq);
  v1::CreateQueueResponse resp;
  return c.queue(1)->CreateQueue(&ctx, req, &resp);
}

v1::SendResponse Send(Cluster& c, const std::string& queue, const std::string& payload,
                      const std::string& producer = "", uint64_t pseq = 0) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 5000);
  v1::SendRequest req;
  req.set_queue(queue);
  req.set_payload(payload);
  req.set_producer_id(producer);
  req.set_producer_sequence(pseq);
  v1::SendResponse resp;
  grpc::Status s = c.queue(1)->Send(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << "Send: " << s.error_message();
  return resp;
}

struct Received {
  grpc::Status status;
  std::vector<v1::Delivery> deliveries;
};

Received Receive(Cluster& c, const std::string& queue, uint32_t max, uint32_t wait_ms,
                 uint32_t lease_ms = 0, bool auto_ack = false) {
  grpc::ClientContext ctx;
  Deadline(&ctx, static_cast<int>(wait_ms) + 5000);
  v1::ReceiveRequest req;
  req.set_queue(queue);
  req.set_max_messages(max);
  req.set_wait_ms(wait_ms);
  req.set_lease_ms(lease_ms);
  req.set_auto_ack(auto_ack);
  v1::ReceiveResponse resp;
  Received r;
  r.status = c.queue(1)->Receive(&ctx, req, &resp);
  r.deliveries.assign(resp.deliveries().begin(), resp.deliveries().end());
  return r;
}

grpc::Status Ack(Cluster& c, const v1::Delivery& d) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 5000);
  v1::AckRequest req;
  req.set_queue(d.queue());
  req.set_sequence(d.sequence());
  req.set_lease_token(d.lease_token());
  v1::AckResponse resp;
  return c.queue(1)->Ack(&ctx, req, &resp);
}

grpc::Status Nack(Cluster& c, const v1::Delivery& d, bool dead_letter,
                  v1::NackResponse* out = nullptr) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 5000);
  v1::NackRequest req;
  req.set_queue(d.queue());
  req.set_sequence(d.sequence());
  req.set_lease_token(d.lease_token());
  req.set_dead_letter(dead_letter);
  v1::NackResponse resp;
  grpc::Status s = c.queue(1)->Nack(&ctx, req, &resp);
  if (out != nullptr) *out = resp;
  return s;
}

std::vector<std::string> Payloads(const std::vector<v1::Delivery>& ds) {
  std::vector<std::string> out;
  for (const v1::Delivery& d : ds) out.push_back(d.payload());
  return out;
}

ClusterOptions OneParticipant(std::vector<std::string> args = {}) {
  ClusterOptions o;
  o.participants = 1;
  o.participant_args = std::move(args);
  return o;
}

TEST(QueueTest, LongPollWakesWhenACommitLandsAndTimesOutEmpty) {
  Cluster c(OneParticipant());
  c.StartAll();
  ASSERT_TRUE(CreateQueue(c, "orders").ok());

  // Nothing arrives: the call answers empty after about its wait.
  auto start = Clock::now();
  Received empty = Receive(c, "orders", 10, 400);
  ASSERT_TRUE(empty.status.ok()) << empty.status.error_message();
  EXPECT_TRUE(empty.deliveries.empty());
  EXPECT_GE(MsSince(start), 350);

  auto waiting = std::async(std::launch::async, [&] { return Receive(c, "orders", 10, 10000); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_EQ(waiting.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout)
      << "a long-poll answered with nothing to deliver";
  v1::ExecuteRequest req;
  req.set_txn_id("lp-1");
  v1::Op* op = req.add_ops();
  op->set_participant("p1");
  op->mutable_enqueue()->set_queue("orders");
  op->mutable_enqueue()->set_payload("wake up");
  grpc::ClientContext ctx;
  Deadline(&ctx, 10000);
  v1::ExecuteResponse resp;
  auto committed = Clock::now();
  ASSERT_TRUE(c.coordinator()->Execute(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.outcome(), v1::COMMITTED);
  Received got = waiting.get();
  EXPECT_LT(MsSince(committed), 3000) << "the waiting Receive did not wake at the commit";
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  ASSERT_EQ(Payloads(got.deliveries), std::vector<std::string>{"wake up"});
  EXPECT_EQ(got.deliveries[0].delivery_count(), 1u);
  EXPECT_FALSE(got.deliveries[0].lease_token().empty());
  EXPECT_GT(got.deliveries[0].lease_expires_unix_ms(), 0);
}

TEST(QueueTest, WaitersBeyondTheLimitAreRefused) {
  Cluster c(OneParticipant({"--waiters_max=1"}));
  c.StartParticipant(1);
  ASSERT_TRUE(CreateQueue(c, "q").ok());
  auto first = std::async(std::launch::async, [&] { return Receive(c, "q", 1, 1500); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  Received second = Receive(c, "q", 1, 1500);
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << second.status.error_message();
  EXPECT_TRUE(first.get().status.ok());
  // A Receive that need not wait is never refused.
  Send(c, "q", "x");
  EXPECT_EQ(Receive(c, "q", 1, 1500).deliveries.size(), 1u);
}

// Isolation (docs/design.md section 4) at process level: a consumer polling during
// a prepare sees nothing; a message whose ack is prepared is neither
// redelivered nor acked by anyone while in doubt, even after its lease ends.
TEST(QueueTest, PreparedWorkIsInvisibleAndPinnedAcksAreNotRedelivered) {
  Cluster c(OneParticipant());
  c.StartParticipant(1);
  ASSERT_TRUE(CreateQueue(c, "q").ok());
  Send(c, "q", "old");
  Received leased = Receive(c, "q", 1, 0, 300);
  ASSERT_EQ(leased.deliveries.size(), 1u);

  // This test plays the coordinator: prepare an enqueue and the ack.
  v1::PrepareRequest prep;
  prep.set_txn_id("iso-1");
  prep.set_protocol(v1::TWO_PC);
  prep.set_coordinator_id("c1");  // one of its --coordinators (the Cluster's)
  prep.set_participant("p1");
  v1::PeerAddress* self = prep.add_participants();
  self->set_participant("p1");
  self->set_address(c.participant_address(1));
  v1::Op* enq = prep.add_ops();
  enq->set_participant("p1");
  enq->mutable_enqueue()->set_queue("q");
  enq->mutable_enqueue()->set_payload("staged");
  v1::Op* ack = prep.add_ops();
  ack->set_participant("p1");
  ack->mutable_ack()->set_queue("q");
  ack->mutable_ack()->set_sequence(leased.deliveries[0].sequence());
  ack->mutable_ack()->set_lease_token(leased.deliveries[0].lease_token());
  {
    grpc::ClientContext ctx;
    Deadline(&ctx, 5000);
    v1::PrepareResponse vote;
    ASSERT_TRUE(c.txn(1)->Prepare(&ctx, prep, &vote).ok());
    ASSERT_EQ(vote.vote(), v1::YES) << vote.reason();
  }
  // The lease ran out long ago; a long-poll still sees nothing.
  Received during = Receive(c, "q", 10, 800);
  ASSERT_TRUE(during.status.ok());
  EXPECT_TRUE(during.deliveries.empty()) << Payloads(during.deliveries)[0];
  EXPECT_EQ(Ack(c, leased.deliveries[0]).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Nack(c, leased.deliveries[0], false).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  v1::QueueInfo info = c.QueueInfoOf(1, "q");
  EXPECT_EQ(info.ready(), 0u);
  EXPECT_EQ(info.pending_in_txn(), 2u);  // one staged enqueue, one pinned ack
  EXPECT_EQ(info.version(), 2u);

  // Still so after a restart (the prepared record pins it again).
  c.KillParticipant(1);
  c.StartParticipant(1);
  EXPECT_TRUE(Receive(c, "q", 10, 300).deliveries.empty());

  // Abort: the staged message is gone, the acked one is back (delivered anew).
  {
    grpc::ClientContext ctx;
    Deadline(&ctx, 5000);
    v1::TxnRef ref;
    ref.set_txn_id("iso-1");
    v1::AbortResponse resp;
    ASSERT_TRUE(c.txn(1)->Abort(&ctx, ref, &resp).ok());
  }
  Received after = Receive(c, "q", 10, 2000);
  EXPECT_EQ(Payloads(after.deliveries), std::vector<std::string>{"old"});
  EXPECT_EQ(c.QueueInfoOf(1, "q").version(), 2u);  // nothing committed
}

TEST(QueueTest, ExpiredLeasesAndRestartsRedeliverNeverLose) {
  Cluster c(OneParticipant());
  c.StartParticipant(1);
  ASSERT_TRUE(CreateQueue(c, "q").ok());
  EXPECT_EQ(Send(c, "q", "a").sequence(), 1u);
  EXPECT_EQ(Send(c, "q", "b").sequence(), 2u);
  Received first = Receive(c, "q", 10, 0, 300);
  ASSERT_EQ(Payloads(first.deliveries), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(c.QueueInfoOf(1, "q").leased(), 2u);
  // The leases run out while a consumer waits: it wakes with both, in order.
  Received again = Receive(c, "q", 10, 3000, 60000);
  ASSERT_EQ(Payloads(again.deliveries), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(again.deliveries[0].delivery_count(), 2u);
  EXPECT_EQ(again.deliveries[1].sequence(), 2u);
  EXPECT_EQ(Ack(c, first.deliveries[0]).error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << "an expired lease must not ack";

  // Leased for a minute, then the participant dies: nothing is lost.
  c.KillParticipant(1);
  c.StartParticipant(1);
  Received after = Receive(c, "q", 10, 0, 60000);
  ASSERT_EQ(Payloads(after.deliveries), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(after.deliveries[0].delivery_count(), 1u);  // counts are memory only
  for (const v1::Delivery& d : after.deliveries) EXPECT_TRUE(Ack(c, d).ok());
  // Sequences are never reused after the restart.
  EXPECT_EQ(Send(c, "q", "c").sequence(), 3u);
  c.KillParticipant(1);
  c.StartParticipant(1);
  EXPECT_EQ(Payloads(Receive(c, "q", 10, 0).deliveries), std::vector<std::string>{"c"});
  EXPECT_EQ(c.QueueInfoOf(1, "q").version(), 4u);
}

// A backlog longer than --queue_memory_window lives on disk and is read in
// as consumers drain it: counts stay exact and order holds, also after a
// restart (which counts the backlog without loading it).
TEST(QueueTest, BacklogBeyondTheMemoryWindowDeliversInOrderAcrossARestart) {
  Cluster c(OneParticipant({"--queue_memory_window=8"}));
  c.StartParticipant(1);
  ASSERT_TRUE(CreateQueue(c, "q").ok());
  // 300 crosses a boundary of the adapter's scans (256 sequences).
  for (int i = 1; i <= 300; ++i) {
    ASSERT_EQ(Send(c, "q", absl::StrCat("m", i)).sequence(), static_cast<uint64_t>(i));
  }
  EXPECT_EQ(c.QueueInfoOf(1, "q").ready(), 300u);
  Received first = Receive(c, "q", 20, 0, 60000);
  ASSERT_EQ(first.deliveries.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(first.deliveries[i].payload(), absl::StrCat("m", i + 1));
  EXPECT_EQ(c.QueueInfoOf(1, "q").ready(), 280u);
  EXPECT_EQ(c.QueueInfoOf(1, "q").leased(), 20u);

  c.KillParticipant(1);
  c.StartParticipant(1);
  EXPECT_EQ(c.QueueInfoOf(1, "q").ready(), 300u);
  EXPECT_EQ(c.QueueInfoOf(1, "q").leased(), 0u);
  EXPECT_EQ(Send(c, "q", "m301").sequence(), 301u);  // behind the backlog on disk
  std::vector<std::string> got;
  for (;;) {
    Received r = Receive(c, "q", 7, 0, 60000);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    if (r.deliveries.empty()) break;
    for (const v1::Delivery& d : r.deliveries) {
      EXPECT_EQ(d.sequence(), got.size() + 1);
      got.push_back(d.payload());
      if (got.size() % 10 == 0) {
        EXPECT_TRUE(Ack(c, d).ok());
      }
    }
  }
  ASSERT_EQ(got.size(), 301u);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], absl::StrCat("m", i + 1));
  EXPECT_EQ(c.QueueInfoOf(1, "q").ready(), 0u);
  EXPECT_EQ(c.QueueInfoOf(1, "q").leased(), 271u);
}

TEST(QueueTest, MaxDeliveriesDeadLettersAndNackRequeuesOrDeadLetters) {
  Cluster c(OneParticipant());
  c.StartParticipant(1);
  ASSERT_TRUE(CreateQueue(c, "dlq").ok());
  EXPECT_EQ(CreateQueue(c, "q", 2, "missing").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(CreateQueue(c, "q", 2, "").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(CreateQueue(c, "q", 2, "dlq").ok());
  EXPECT_EQ(c.QueueInfoOf(1, "q").max_deliveries(), 2u);
  EXPECT_EQ(c.QueueInfoOf(1, "q").dead_letter_queue(), "dlq");
  {
    grpc::ClientContext ctx;
    Deadline(&ctx, 5000);
    v1::DeleteQueueRequest del;
    del.set_name("dlq");
    v1::DeleteQueueResponse resp;
    EXPECT_EQ(c.queue(1)->DeleteQueue(&ctx, del, &resp).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }

  Send(c, "q", "poison");
  // Delivery 1 and 2 of "poison" expire; then it moves to the dead-letter queue.
  for (uint32_t n = 1; n <= 2; ++n) {
    Received r = Receive(c, "q", 1, 3000, 200);
    ASSERT_EQ(Payloads(r.deliveries), std::vector<std::string>{"poison"});
    EXPECT_EQ(r.deliveries[0].delivery_count(), n);
  }
  Received dead = Receive(c, "dlq", 1, 3000);
  ASSERT_EQ(Payloads(dead.deliveries), std::vector<std::string>{"poison"});
  const auto& h = dead.deliveries[0].headers();
  EXPECT_EQ(h.at("x-dead-letter-queue"), "q");
  EXPECT_EQ(h.at("x-dead-letter-sequence"), "1");
  EXPECT_EQ(h.at("x-dead-letter-reason"), "max-deliveries");
  EXPECT_EQ(h.at("x-delivery-count"), "2");
  EXPECT_TRUE(Ack(c, dead.deliveries[0]).ok());
  Send(c, "q", "fine");

  // Nack requeue: back at once, delivered again; nack dead-letter: moved.
  Received fine = Receive(c, "q", 1, 0);
  ASSERT_EQ(Payloads(fine.deliveries), std::vector<std::string>{"fine"});
  v1::NackResponse nr;
  ASSERT_TRUE(Nack(c, fine.deliveries[0], false, &nr).ok());
  EXPECT_FALSE(nr.dead_lettered());
  Received fine2 = Receive(c, "q", 1, 0);
  ASSERT_EQ(Payloads(fine2.deliveries), std::vector<std::string>{"fine"});
  EXPECT_EQ(fine2.deliveries[0].delivery_count(), 2u);
  ASSERT_TRUE(Nack(c, fine2.deliveries[0], true, &nr).ok());
  EXPECT_TRUE(nr.dead_lettered());
  EXPECT_EQ(nr.dead_letter_sequence(), 2u);
  EXPECT_EQ(c.QueueInfoOf(1, "q").ready() + c.QueueInfoOf(1, "q").leased(), 0u);
  // The move is durable.
  c.KillParticipant(1);
  c.StartParticipant(1);
  Received moved = Receive(c, "dlq", 10, 0);
  ASSERT_EQ(Payloads(moved.deliveries), std::vector<std::string>{"fine"});
  EXPECT_EQ(moved.deliveries[0].headers().at("x-dead-letter-reason"), "nack");
  EXPECT_TRUE(Receive(c, "q", 10, 0).deliveries.empty());
}

TEST(QueueTest, AutoAckDeletesDurablyBeforeDelivering) {
  Cluster c(OneParticipant());
  c.StartParticipant(1);
  ASSERT_TRUE(CreateQueue(c, "q").ok());
  for (const char* p : {"a", "b", "c"}) Send(c, "q", p);
  Received r = Receive(c, "q", 2, 0, 0, /*auto_ack=*/true);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_EQ(Payloads(r.deliveries), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(r.deliveries[0].lease_token().empty());
  v1::QueueInfo info = c.QueueInfoOf(1, "q");
  EXPECT_EQ(info.ready(), 1u);
  EXPECT_EQ(info.leased(), 0u);
  // Auto-ack with a long-poll wakes too.
  auto waiting = std::async(std::launch::async, [&] {
    Receive(c, "q", 1, 0, 0, true);  // takes "c"
    return Receive(c, "q", 1, 5000, 0, true);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  Send(c, "q", "d");
  EXPECT_EQ(Payloads(waiting.get().deliveries), std::vector<std::string>{"d"});
  // Gone for good: a restart brings nothing back.
  c.KillParticipant(1);
  c.StartParticipant(1);
  EXPECT_TRUE(Receive(c, "q", 10, 0).deliveries.empty());
}

// A Subscribe stream read on its own thread.
class Stream {
 public:
  Stream(Cluster& c, const v1::SubscribeOpen& open) : stub_(c.queue(1)) {
    Deadline(&ctx_, 30000);
    rw_ = stub_->Subscribe(&ctx_);
    v1::SubscribeRequest first;
    *first.mutable_open() = open;
    rw_->Write(first);
    reader_ = std::thread([this] {
      v1::SubscribeResponse m;
      while (rw_->Read(&m)) {
        std::lock_guard<std::mutex> lock(mu_);
        in_.push_back(m);
        cv_.notify_all();
      }
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
      cv_.notify_all();
    });
  }
  ~Stream() {
    if (reader_.joinable()) {
      ctx_.TryCancel();
      reader_.join();
    }
  }

  // The next message, or nullopt after `ms`.
  std::optional<v1::SubscribeResponse> Next(int ms) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return !in_.empty() || closed_; });
    if (in_.empty()) return std::nullopt;
    v1::SubscribeResponse m = in_.front();
    in_.pop_front();
    return m;
  }
  v1::Delivery NextDelivery(int ms = 5000) {
    for (;;) {
      std::optional<v1::SubscribeResponse> m = Next(ms);
      if (!m) {
        ADD_FAILURE() << "no delivery within " << ms << " ms";
        return v1::Delivery();
      }
      if (m->has_delivery()) return m->delivery();
      settled_.push_back(m->settled());
    }
  }
  void Ack(const v1::Delivery& d) {
    v1::SubscribeRequest m;
    m.mutable_ack()->set_sequence(d.sequence());
    m.mutable_ack()->set_lease_token(d.lease_token());
    rw_->Write(m);
  }
  void Credit(uint32_t n) {
    v1::SubscribeRequest m;
    m.set_credit(n);
    rw_->Write(m);
  }
  grpc::Status Close() {
    rw_->WritesDone();
    reader_.join();
    return rw_->Finish();
  }
  std::vector<v1::SettleResult> settled_;

 private:
  std::unique_ptr<v1::Queue::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SubscribeRequest, v1::SubscribeResponse>> rw_;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::SubscribeResponse> in_;
  bool closed_ = false;
};

TEST(QueueTest, StreamDeliversNoMoreThanItsCreditWindowUntilAcks) {
  Cluster c(OneParticipant());
  c.StartParticipant(1);
  ASSERT_TRUE(CreateQueue(c, "q").ok());
  for (int i = 1; i <= 5; ++i) Send(c, "q", absl::StrCat("m", i));
  v1::SubscribeOpen open;
  open.set_queue("q");
  open.set_prefetch(2);
  Stream s(c, open);
  v1::Delivery d1 = s.NextDelivery();
  v1::Delivery d2 = s.NextDelivery();
  EXPECT_EQ(d1.payload(), "m1");
  EXPECT_EQ(d2.payload(), "m2");
  EXPECT_FALSE(s.Next(600).has_value()) << "a third delivery with a window of 2";
  EXPECT_EQ(c.QueueInfoOf(1, "q").leased(), 2u);

  s.Ack(d1);
  v1::Delivery d3 = s.NextDelivery();
  EXPECT_EQ(d3.payload(), "m3");
  ASSERT_EQ(s.settled_.size(), 1u);  // the ack's answer came before m3
  EXPECT_EQ(s.settled_[0].sequence(), d1.sequence());
  EXPECT_EQ(s.settled_[0].code(), 0);
  EXPECT_FALSE(s.Next(400).has_value());
  s.Credit(1);
  EXPECT_EQ(s.NextDelivery().payload(), "m4");
  EXPECT_FALSE(s.Next(400).has_value());

  // A message arriving later is pushed when the window has room.
  s.Ack(d2);
  EXPECT_EQ(s.NextDelivery().payload(), "m5");
  Send(c, "q", "m6");
  s.Ack(d3);
  EXPECT_EQ(s.NextDelivery().payload(), "m6");

  // Closing returns the unacked (m4, m5, m6) at once.
  EXPECT_TRUE(s.Close().ok());
  auto start = Clock::now();
  while (c.QueueInfoOf(1, "q").ready() != 3 && MsSince(start) < 3000) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(c.QueueInfoOf(1, "q").ready(), 3u);
  EXPECT_EQ(c.QueueInfoOf(1, "q").leased(), 0u);
}

TEST(QueueTest, StreamLeaseExpiryReturnsTheMessageAndFreesTheWindow) {
  Cluster c(OneParticipant());
  c.StartParticipant(1);
  ASSERT_TRUE(CreateQueue(c, "q").ok());
  Send(c, "q", "m1");
  Send(c, "q", "m2");
  v1::SubscribeOpen open;
  open.set_queue("q");
  open.set_prefetch(1);
  open.set_lease_ms(300);
  Stream s(c, open);
  v1::Delivery d1 = s.NextDelivery();
  EXPECT_EQ(d1.payload(), "m1");
  // Not acked: the lease expires, m1 is ready again and comes first.
  v1::Delivery again = s.NextDelivery(3000);
  EXPECT_EQ(again.payload(), "m1");
  EXPECT_EQ(again.delivery_count(), 2u);
  s.Ack(d1);  // the stale lease: refused
  s.Ack(again);
  EXPECT_EQ(s.NextDelivery().payload(), "m2");
  ASSERT_EQ(s.settled_.size(), 2u);
  EXPECT_EQ(s.settled_[0].code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
  EXPECT_EQ(s.settled_[1].code(), 0);
}

TEST(QueueTest, StreamAutoAckAndBadFirstMessage) {
  Cluster c(OneParticipant());
  c.StartParticipant(1);
  ASSERT_TRUE(CreateQueue(c, "q").ok());
  for (int i = 1; i <= 3; ++i) Send(c, "q", absl::StrCat("m", i));
  {
    v1::SubscribeOpen open;
    open.set_queue("q");
    open.set_prefetch(2);
    open.set_auto_ack(true);
    Stream s(c, open);
    EXPECT_EQ(s.NextDelivery().payload(), "m1");
    EXPECT_EQ(s.NextDelivery().payload(), "m2");
    EXPECT_FALSE(s.Next(400).has_value());  // auto-ack: credit comes from the client only
    s.Credit(5);
    v1::Delivery d3 = s.NextDelivery();
    EXPECT_EQ(d3.payload(), "m3");
    EXPECT_TRUE(d3.lease_token().empty());
    EXPECT_TRUE(s.Close().ok());
  }
  EXPECT_EQ(c.QueueInfoOf(1, "q").ready() + c.QueueInfoOf(1, "q").leased(), 0u);
  {
    v1::SubscribeOpen open;
    open.set_queue("missing");
    Stream s(c, open);
    EXPECT_EQ(s.Close().error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

TEST(QueueTest, ProducerDedupSurvivesARestart) {
  Cluster c(OneParticipant());
  c.StartParticipant(1);
  ASSERT_TRUE(CreateQueue(c, "q").ok());
  v1::SendResponse first = Send(c, "q", "m1", "prod-a", 1);
  EXPECT_EQ(first.sequence(), 1u);
  EXPECT_FALSE(first.duplicate());
  v1::SendResponse retry = Send(c, "q", "m1", "prod-a", 1);
  EXPECT_TRUE(retry.duplicate());
  EXPECT_EQ(retry.sequence(), 1u);
  c.KillParticipant(1);
  c.StartParticipant(1);
  retry = Send(c, "q", "m1", "prod-a", 1);
  EXPECT_TRUE(retry.duplicate());
  EXPECT_EQ(retry.sequence(), 1u);
  v1::SendResponse next = Send(c, "q", "m2", "prod-a", 2);
  EXPECT_FALSE(next.duplicate());
  EXPECT_EQ(next.sequence(), 2u);
  EXPECT_EQ(Payloads(Receive(c, "q", 10, 0).deliveries), (std::vector<std::string>{"m1", "m2"}));
}

TEST(QueueTest, AtomqctlQueueCommands) {
  Cluster c(OneParticipant());
  c.StartParticipant(1);
  const std::string ctl =
      std::string(ATOMQ_BIN_DIR) + "/atomqctl --participant=" + c.participant_address(1) + " ";
  EXPECT_NE(RunCommand(ctl + "queue create dlq").find("created"), std::string::npos);
  std::string out =
      RunCommand(ctl + "queue create jobs --max_deliveries=3 --dead_letter_queue=dlq");
  EXPECT_NE(out.find("created"), std::string::npos) << out;
  out = RunCommand(ctl + "queue send jobs hello --producer_id=cli --producer_sequence=1");
  EXPECT_NE(out.find("jobs sequence 1"), std::string::npos) << out;
  out = RunCommand(ctl + "queue send jobs hello --producer_id=cli --producer_sequence=1");
  EXPECT_NE(out.find("duplicate"), std::string::npos) << out;
  out = RunCommand(ctl + "--json queue info jobs");
  EXPECT_NE(out.find("\"max_deliveries\": 3"), std::string::npos) << out;
  EXPECT_NE(out.find("\"ready\": \"1\""), std::string::npos) << out;
  out = RunCommand(ctl + "queue list");
  EXPECT_NE(out.find("dlq"), std::string::npos) << out;

  // receive --no-ack --json gives the token; nack returns it; ack deletes.
  out = RunCommand(ctl + "--json queue receive jobs --no-ack --wait=1s");
  size_t at = out.find("\"lease_token\": \"");
  ASSERT_NE(at, std::string::npos) << out;
  at += std::string("\"lease_token\": \"").size();
  std::string token = out.substr(at, out.find('"', at) - at);
  out = RunCommand(ctl + "queue nack jobs 1 " + token);
  EXPECT_NE(out.find("returned to the queue"), std::string::npos) << out;
  out = RunCommand(ctl + "queue receive jobs --no-ack");
  at = out.find("lease ");
  ASSERT_NE(at, std::string::npos) << out;
  EXPECT_NE(out.find("delivery 2"), std::string::npos) << out;
  token = out.substr(at + 6, out.find(')', at) - at - 6);
  out = RunCommand(ctl + "queue ack jobs 1 " + token);
  EXPECT_NE(out.find("acked"), std::string::npos) << out;
  out = RunCommand(ctl + "queue receive jobs --wait=300ms --auto-ack");
  EXPECT_NE(out.find("no messages ready"), std::string::npos) << out;
  out = RunCommand(ctl + "queue info nope 2>&1");
  EXPECT_NE(out.find("does not exist"), std::string::npos) << out;
}

}  // namespace
}  // namespace atomq::testing
