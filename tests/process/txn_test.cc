// Transactional acks and interactive transactions with real binaries on
// loopback: ack + enqueue in one Execute, stale and foreign leases, Begin /
// Stage / Commit / Rollback, expiry, idempotent retries across a coordinator
// restart, and the exactly-once pipeline: a consumer that moves every message
// from `in` (p1) to `out` (p2), acking in the same transaction, while the
// coordinator, the participants and the consumer itself are killed.
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

using Clock = std::chrono::steady_clock;

void Deadline(grpc::ClientContext* ctx, int ms) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

bool Has(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

v1::Op AckOp(const std::string& participant, const v1::Delivery& d, const std::string& token = "") {
  v1::Op op;
  op.set_participant(participant);
  op.mutable_ack()->set_queue(d.queue());
  op.mutable_ack()->set_sequence(d.sequence());
  op.mutable_ack()->set_lease_token(token.empty() ? d.lease_token() : token);
  return op;
}

struct Result {
  grpc::Status status;
  v1::ExecuteResponse response;
};

Result Execute(Cluster& c, const v1::ExecuteRequest& req, int deadline_ms = 10000) {
  grpc::ClientContext ctx;
  Deadline(&ctx, deadline_ms);
  Result r;
  r.status = c.coordinator()->Execute(&ctx, req, &r.response);
  return r;
}

v1::ExecuteRequest Req(const std::string& id, std::vector<v1::Op> ops) {
  v1::ExecuteRequest r;
  r.set_txn_id(id);
  for (v1::Op& op : ops) *r.add_ops() = std::move(op);
  return r;
}

grpc::Status Begin(Cluster& c, const std::string& id, uint32_t timeout_ms,
                   v1::BeginTxnResponse* resp, v1::Protocol protocol = v1::PROTOCOL_UNSPECIFIED) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 5000);
  v1::BeginTxnRequest req;
  req.set_txn_id(id);
  req.set_timeout_ms(timeout_ms);
  req.set_protocol(protocol);
  return c.coordinator()->Begin(&ctx, req, resp);
}

grpc::Status Stage(Cluster& c, int i, const std::string& id, std::vector<v1::Op> ops,
                   int64_t expires_ms, uint32_t batch, v1::StageResponse* resp = nullptr) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 5000);
  v1::StageRequest req;
  req.set_txn_id(id);
  for (v1::Op& op : ops) *req.add_ops() = std::move(op);
  req.set_expires_unix_ms(expires_ms);
  req.set_batch(batch);
  v1::StageResponse scratch;
  return c.txn(i)->Stage(&ctx, req, resp != nullptr ? resp : &scratch);
}

Result Commit(Cluster& c, const std::string& id,
              std::vector<std::pair<std::string, uint32_t>> parts) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 10000);
  v1::CommitTxnRequest req;
  req.set_txn_id(id);
  for (const auto& [p, n] : parts) {
    v1::TxnParticipant* tp = req.add_participants();
    tp->set_participant(p);
    tp->set_staged_ops(n);
  }
  Result r;
  r.status = c.coordinator()->Commit(&ctx, req, &r.response);
  return r;
}

grpc::Status Rollback(Cluster& c, const std::string& id, std::vector<std::string> parts) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 10000);
  v1::RollbackTxnRequest req;
  req.set_txn_id(id);
  for (const std::string& p : parts) req.add_participants()->set_participant(p);
  v1::RollbackTxnResponse resp;
  return c.coordinator()->Rollback(&ctx, req, &resp);
}

grpc::Status Receive(Cluster& c, int i, const std::string& queue, uint32_t max, uint32_t lease_ms,
                     std::vector<v1::Delivery>* out) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 3000);
  v1::ReceiveRequest req;
  req.set_queue(queue);
  req.set_max_messages(max);
  req.set_lease_ms(lease_ms);
  v1::ReceiveResponse resp;
  grpc::Status s = c.queue(i)->Receive(&ctx, req, &resp);
  out->assign(resp.deliveries().begin(), resp.deliveries().end());
  return s;
}

std::vector<v1::Delivery> MustReceive(Cluster& c, int i, const std::string& queue, uint32_t max,
                                      uint32_t lease_ms) {
  std::vector<v1::Delivery> got;
  grpc::Status s = Receive(c, i, queue, max, lease_ms, &got);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return got;
}

std::optional<v1::QueueInfo> Info(Cluster& c, int i, const std::string& queue) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 2000);
  v1::ListQueuesResponse resp;
  if (!c.queue(i)->ListQueues(&ctx, v1::ListQueuesRequest(), &resp).ok()) return std::nullopt;
  for (const v1::QueueInfo& q : resp.queues()) {
    if (q.name() == queue) return q;
  }
  return std::nullopt;
}

// Polls until `pred` holds for queue info, or `timeout_ms` passes.
template <typename Pred>
bool AwaitQueue(Cluster& c, int i, const std::string& queue, int timeout_ms, Pred pred) {
  auto end = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (Clock::now() < end) {
    std::optional<v1::QueueInfo> q = Info(c, i, queue);
    if (q && pred(*q)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  return false;
}

// Puts `payloads` on queue `queue` of participant 1 in one transaction.
void Fill(Cluster& c, const std::string& queue, const std::vector<std::string>& payloads) {
  v1::ExecuteRequest req;
  req.set_txn_id("fill-" + queue);
  for (const std::string& p : payloads) *req.add_ops() = EnqueueOp("p1", queue, p);
  Result r = Execute(c, req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_EQ(r.response.outcome(), v1::COMMITTED) << r.response.reason();
}

ClusterOptions TwoNodes() {
  ClusterOptions o;
  o.participants = 2;
  return o;
}

// ------------------------------------------------------------ transactional acks

TEST(TxnTest, AckAndEnqueueInOneExecuteMoveAMessage) {
  Cluster c(TwoNodes());
  c.StartAll();
  c.CreateQueue(1, "in");
  c.CreateQueue(2, "out");
  Fill(c, "in", {"m1", "m2"});
  std::vector<v1::Delivery> got = MustReceive(c, 1, "in", 1, 30000);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload(), "m1");

  Result r = Execute(c, Req("move-1", {AckOp("p1", got[0]), EnqueueOp("p2", "out", "m1")}));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_EQ(r.response.outcome(), v1::COMMITTED) << r.response.reason();
  ASSERT_EQ(r.response.results_size(), 2);
  EXPECT_EQ(r.response.results(0).sequence(), 0u);  // an ack
  EXPECT_EQ(r.response.results(1).sequence(), 1u);

  // m1 is gone from `in` for good; m2 is untouched; `out` holds m1 once.
  std::optional<v1::QueueInfo> in = Info(c, 1, "in");
  ASSERT_TRUE(in.has_value());
  EXPECT_EQ(in->ready(), 1u);
  EXPECT_EQ(in->leased(), 0u);
  EXPECT_EQ(in->pending_in_txn(), 0u);
  EXPECT_EQ(c.Drain(1, "in"), std::vector<std::string>{"m2"});
  EXPECT_EQ(c.Drain(2, "out"), std::vector<std::string>{"m1"});
}

TEST(TxnTest, StaleOrForeignLeaseVotesNoWithAReasonAndChangesNothing) {
  Cluster c(TwoNodes());
  c.StartAll();
  c.CreateQueue(1, "in");
  c.CreateQueue(2, "out");
  Fill(c, "in", {"m1", "m2"});

  // Stale: the lease ran out before the transaction.
  std::vector<v1::Delivery> got = MustReceive(c, 1, "in", 1, 200);
  ASSERT_EQ(got.size(), 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  Result r = Execute(c, Req("stale-1", {AckOp("p1", got[0]), EnqueueOp("p2", "out", "x")}));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Has(r.response.reason(), "p1 voted NO")) << r.response.reason();
  EXPECT_TRUE(Has(r.response.reason(), "stale lease")) << r.response.reason();

  // Foreign: a token that is not this message's current lease (here the
  // lease of the other message, held by another consumer).
  std::vector<v1::Delivery> both = MustReceive(c, 1, "in", 2, 30000);
  ASSERT_EQ(both.size(), 2u);
  r = Execute(c, Req("foreign-1",
                     {AckOp("p1", both[0], both[1].lease_token()), EnqueueOp("p2", "out", "x")}));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Has(r.response.reason(), "stale or foreign token")) << r.response.reason();
  r = Execute(c, Req("foreign-2", {AckOp("p1", both[0], "1-424242")}));
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Has(r.response.reason(), "is not the current lease")) << r.response.reason();

  // Nothing moved, and the rightful holder can still ack in a transaction.
  EXPECT_TRUE(c.Drain(2, "out").empty());
  r = Execute(c, Req("rightful", {AckOp("p1", both[0]), AckOp("p1", both[1])}));
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.response.outcome(), v1::COMMITTED) << r.response.reason();
  EXPECT_TRUE(c.Drain(1, "in").empty());
}

// ------------------------------------------------------------ interactive transactions

TEST(TxnTest, InteractiveBeginStageCommit) {
  Cluster c(TwoNodes());
  c.StartAll();
  c.CreateQueue(1, "in");
  c.CreateQueue(2, "out");
  Fill(c, "in", {"m1"});
  std::vector<v1::Delivery> got = MustReceive(c, 1, "in", 1, 30000);
  ASSERT_EQ(got.size(), 1u);

  v1::BeginTxnResponse b;
  grpc::Status s = Begin(c, "", 10000, &b);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(Has(b.txn_id(), "c1-")) << b.txn_id();
  const std::string id = b.txn_id();
  v1::StageResponse sr;
  ASSERT_TRUE(Stage(c, 1, id, {AckOp("p1", got[0])}, b.expires_unix_ms(), 1, &sr).ok());
  EXPECT_EQ(sr.ops_staged(), 1u);
  ASSERT_TRUE(Stage(c, 2, id, {EnqueueOp("p2", "out", "a"), EnqueueOp("p2", "out", "b")},
                    b.expires_unix_ms(), 1)
                  .ok());
  // A retried Stage call applies once.
  ASSERT_TRUE(Stage(c, 2, id, {EnqueueOp("p2", "out", "a"), EnqueueOp("p2", "out", "b")},
                    b.expires_unix_ms(), 1, &sr)
                  .ok());
  EXPECT_EQ(sr.ops_staged(), 2u);
  // Staged work is invisible and holds the acked message.
  EXPECT_TRUE(c.Drain(2, "out").empty());
  std::optional<v1::QueueInfo> in = Info(c, 1, "in");
  ASSERT_TRUE(in.has_value());
  EXPECT_EQ(in->pending_in_txn(), 1u);

  Result r = Commit(c, id, {{"p1", 1}, {"p2", 2}});
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_EQ(r.response.outcome(), v1::COMMITTED) << r.response.reason();
  ASSERT_EQ(r.response.staged_size(), 2);
  EXPECT_EQ(r.response.staged(0).participant(), "p1");
  EXPECT_EQ(std::vector<uint64_t>(r.response.staged(1).sequences().begin(),
                                  r.response.staged(1).sequences().end()),
            (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(c.Drain(2, "out"), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(c.Drain(1, "in").empty());
  // A repeated Commit returns the first outcome.
  Result again = Commit(c, id, {{"p1", 1}, {"p2", 2}});
  ASSERT_TRUE(again.status.ok());
  EXPECT_EQ(again.response.outcome(), v1::COMMITTED);

  // The same under 3PC.
  ASSERT_TRUE(Begin(c, "i-3pc", 10000, &b, v1::THREE_PC).ok());
  ASSERT_TRUE(Stage(c, 2, "i-3pc", {EnqueueOp("p2", "out", "c")}, b.expires_unix_ms(), 1).ok());
  r = Commit(c, "i-3pc", {{"p2", 1}});
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.response.outcome(), v1::COMMITTED) << r.response.reason();
  EXPECT_EQ(c.Drain(2, "out"), std::vector<std::string>{"c"});
}

TEST(TxnTest, InteractiveThroughAtomqctl) {
  Cluster c(TwoNodes());
  c.StartAll();
  c.CreateQueue(2, "out");
  const std::string ctl = std::string(ATOMQ_BIN_DIR) + "/atomqctl ";
  auto run = [](const std::string& cmd, int* rc) {
    std::string out;
    FILE* f = popen((cmd + " 2>&1").c_str(), "r");
    char buf[4096];
    size_t n;
    while (f != nullptr && (n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
    int status = f != nullptr ? pclose(f) : -1;
    *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return out;
  };
  int rc = 0;
  std::string out = run(
      ctl + "--coordinator=" + c.coordinator_address() + " txn begin --id=cli-1 --timeout_ms=20000",
      &rc);
  ASSERT_EQ(rc, 0) << out;
  ASSERT_TRUE(Has(out, "cli-1 expires_unix_ms=")) << out;
  std::string expires = out.substr(out.find('=') + 1);
  expires = expires.substr(0, expires.find('\n'));
  out =
      run(ctl + "--participant=" + c.participant_address(2) + " txn stage cli-1 --enqueue=out=hi" +
              " --enqueue=out=there --batch=1 --expires_unix_ms=" + expires,
          &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_TRUE(Has(out, "2 ops staged")) << out;
  out = run(ctl + "--coordinator=" + c.coordinator_address() + " txn commit cli-1 --staged=p2:2",
            &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_TRUE(Has(out, "cli-1 COMMITTED")) << out;
  EXPECT_TRUE(Has(out, "p2 sequences [1 2]")) << out;
  EXPECT_EQ(c.Drain(2, "out"), (std::vector<std::string>{"hi", "there"}));

  // Rollback, then a Commit of the same id reports the abort (exit status 1).
  out = run(ctl + "--coordinator=" + c.coordinator_address() + " txn begin --id=cli-2", &rc);
  ASSERT_EQ(rc, 0) << out;
  out = run(ctl + "--participant=" + c.participant_address(2) + " txn stage cli-2 --enqueue=out=x",
            &rc);
  ASSERT_EQ(rc, 0) << out;
  out = run(ctl + "--coordinator=" + c.coordinator_address() + " txn rollback cli-2 --staged=p2",
            &rc);
  EXPECT_EQ(rc, 0) << out;
  out =
      run(ctl + "--coordinator=" + c.coordinator_address() + " txn commit cli-2 --staged=p2", &rc);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_TRUE(Has(out, "ABORTED: rolled back by the client")) << out;
  out = run(ctl + "--participant=" + c.participant_address(2) + " txn stage cli-2 --ack=out:1:7-1",
            &rc);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_TRUE(Has(out, "FAILED_PRECONDITION")) << out;
  EXPECT_TRUE(c.Drain(2, "out").empty());
}

TEST(TxnTest, CommitAfterExpiryAbortsAndStagedWorkIsDropped) {
  Cluster c(TwoNodes());
  c.StartAll();
  c.CreateQueue(1, "in");
  c.CreateQueue(2, "out");
  Fill(c, "in", {"m1"});
  std::vector<v1::Delivery> got = MustReceive(c, 1, "in", 1, 30000);
  ASSERT_EQ(got.size(), 1u);
  v1::BeginTxnResponse b;
  ASSERT_TRUE(Begin(c, "exp-1", 600, &b).ok());
  ASSERT_TRUE(Stage(c, 1, "exp-1", {AckOp("p1", got[0])}, b.expires_unix_ms(), 1).ok());
  ASSERT_TRUE(Stage(c, 2, "exp-1", {EnqueueOp("p2", "out", "late")}, b.expires_unix_ms(), 1).ok());
  EXPECT_EQ(Info(c, 1, "in")->pending_in_txn(), 1u);
  EXPECT_EQ(Info(c, 2, "out")->pending_in_txn(), 1u);

  std::this_thread::sleep_for(std::chrono::milliseconds(900));
  Result r = Commit(c, "exp-1", {{"p1", 1}, {"p2", 1}});
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Has(r.response.reason(), "expired")) << r.response.reason();
  // Both participants dropped their staged work; the pinned message is back
  // with its consumer (its lease still runs) and can be acked plainly.
  EXPECT_TRUE(AwaitQueue(c, 1, "in", 3000, [](const v1::QueueInfo& q) {
    return q.pending_in_txn() == 0 && q.leased() == 1;
  }));
  EXPECT_TRUE(AwaitQueue(c, 2, "out", 3000,
                         [](const v1::QueueInfo& q) { return q.pending_in_txn() == 0; }));
  // Staging under the expired id is refused.
  grpc::Status s = Stage(c, 2, "exp-1", {EnqueueOp("p2", "out", "x")}, b.expires_unix_ms(), 2);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_TRUE(c.Drain(2, "out").empty());
  Result ack = Execute(c, Req("plain-ack", {AckOp("p1", got[0])}));
  ASSERT_TRUE(ack.status.ok());
  EXPECT_EQ(ack.response.outcome(), v1::COMMITTED) << ack.response.reason();
}

TEST(TxnTest, RollbackDropsStagedWorkAndStagedWorkDiesWithItsParticipant) {
  Cluster c(TwoNodes());
  c.StartAll();
  c.CreateQueue(1, "in");
  c.CreateQueue(2, "out");
  Fill(c, "in", {"m1"});
  std::vector<v1::Delivery> got = MustReceive(c, 1, "in", 1, 30000);
  ASSERT_EQ(got.size(), 1u);

  v1::BeginTxnResponse b;
  ASSERT_TRUE(Begin(c, "rb-1", 20000, &b).ok());
  ASSERT_TRUE(Stage(c, 1, "rb-1", {AckOp("p1", got[0])}, b.expires_unix_ms(), 1).ok());
  ASSERT_TRUE(Stage(c, 2, "rb-1", {EnqueueOp("p2", "out", "x")}, b.expires_unix_ms(), 1).ok());
  grpc::Status s = Rollback(c, "rb-1", {"p1", "p2"});
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(AwaitQueue(c, 1, "in", 3000, [](const v1::QueueInfo& q) {
    return q.pending_in_txn() == 0 && q.leased() == 1;
  }));
  EXPECT_TRUE(AwaitQueue(c, 2, "out", 3000,
                         [](const v1::QueueInfo& q) { return q.pending_in_txn() == 0; }));
  Result r = Commit(c, "rb-1", {{"p1", 1}, {"p2", 1}});
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Has(r.response.reason(), "rolled back")) << r.response.reason();

  // Staged work is memory only: p2 restarts and loses it, so the commit
  // aborts instead of committing the ack without its enqueue.
  ASSERT_TRUE(Begin(c, "lost-1", 20000, &b).ok());
  ASSERT_TRUE(Stage(c, 1, "lost-1", {AckOp("p1", got[0])}, b.expires_unix_ms(), 1).ok());
  ASSERT_TRUE(Stage(c, 2, "lost-1", {EnqueueOp("p2", "out", "y")}, b.expires_unix_ms(), 1).ok());
  c.KillParticipant(2);
  c.StartParticipant(2);
  s = Stage(c, 2, "lost-1", {EnqueueOp("p2", "out", "z")}, b.expires_unix_ms(), 2);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(Has(s.error_message(), "lost")) << s.error_message();
  r = Commit(c, "lost-1", {{"p1", 1}, {"p2", 1}});
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Has(r.response.reason(), "nothing staged")) << r.response.reason();
  EXPECT_TRUE(AwaitQueue(c, 1, "in", 3000, [](const v1::QueueInfo& q) {
    return q.pending_in_txn() == 0 && q.leased() == 1;
  }));
  EXPECT_TRUE(c.Drain(2, "out").empty());
}

// ------------------------------------------------------------ idempotent retries

TEST(TxnTest, RetriesReturnTheFirstOutcomeAcrossACoordinatorRestart) {
  Cluster c(TwoNodes());
  c.StartAll();
  c.CreateQueue(1, "in");
  c.CreateQueue(2, "out");
  Fill(c, "in", {"m1", "m2"});
  std::vector<v1::Delivery> got = MustReceive(c, 1, "in", 2, 30000);
  ASSERT_EQ(got.size(), 2u);

  v1::ExecuteRequest move = Req("retry-1", {AckOp("p1", got[0]), EnqueueOp("p2", "out", "m1")});
  Result first = Execute(c, move);
  ASSERT_TRUE(first.status.ok());
  ASSERT_EQ(first.response.outcome(), v1::COMMITTED) << first.response.reason();
  v1::ExecuteRequest stale =
      Req("retry-2", {AckOp("p1", got[1], "1-999"), EnqueueOp("p2", "out", "m2")});
  Result refused = Execute(c, stale);
  ASSERT_TRUE(refused.status.ok());
  ASSERT_EQ(refused.response.outcome(), v1::ABORTED);
  v1::BeginTxnResponse b;
  ASSERT_TRUE(Begin(c, "retry-3", 20000, &b).ok());
  ASSERT_TRUE(Stage(c, 2, "retry-3", {EnqueueOp("p2", "out", "i")}, b.expires_unix_ms(), 1).ok());
  Result interactive = Commit(c, "retry-3", {{"p2", 1}});
  ASSERT_EQ(interactive.response.outcome(), v1::COMMITTED) << interactive.response.reason();

  c.KillCoordinator();
  c.StartCoordinator();

  Result again = Execute(c, move);
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.response.outcome(), v1::COMMITTED);
  ASSERT_EQ(again.response.results_size(), 2);
  EXPECT_EQ(again.response.results(1).sequence(), first.response.results(1).sequence());
  Result again_refused = Execute(c, stale);
  ASSERT_TRUE(again_refused.status.ok());
  EXPECT_EQ(again_refused.response.outcome(), v1::ABORTED);
  EXPECT_EQ(again_refused.response.reason(), refused.response.reason());
  Result again_interactive = Commit(c, "retry-3", {{"p2", 1}});
  ASSERT_TRUE(again_interactive.status.ok());
  EXPECT_EQ(again_interactive.response.outcome(), v1::COMMITTED);

  // The same ids with other ops are refused and change nothing.
  v1::ExecuteRequest other = move;
  other.mutable_ops(1)->mutable_enqueue()->set_payload("other");
  EXPECT_EQ(Execute(c, other).status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Commit(c, "retry-3", {{"p1", 1}}).status.error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  v1::BeginTxnResponse unused;
  EXPECT_EQ(Begin(c, "retry-1", 1000, &unused).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(c.Drain(2, "out"), (std::vector<std::string>{"m1", "i"}));
}

// ------------------------------------------------------------ exactly once

int EnvInt(const char* name, int def) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : def;
}

// The consumer: receive from `in` at p1, then in ONE transaction ack the
// message at p1 and enqueue its payload on `out` at p2 (by Execute, or by
// Begin/Stage/Commit). The ack is the fence that makes this exactly once:
// a committed ack deletes the message, so at most one transaction per
// message can ever commit (any other acking it finds it gone, or its lease
// stale, and votes NO); and a message whose transaction did not commit stays
// in `in` (pinned while in doubt) and is delivered again. So the consumer
// only has to keep going until `in` is empty.
//
// Transaction ids are "mv-<sequence>-<lease token>": stable across retries of
// one delivery, so a retry after a lost reply (say the coordinator died) gets
// the first outcome instead of running a second transaction, and unique per
// delivery, since a lease token is never reused (it carries the participant's
// boot count). (sequence, delivery attempt) would not do: delivery counts
// start over when p1 restarts, so the id of a new delivery could be an old
// one with another token, which is refused (ALREADY_EXISTS) forever.
// Coordinator-minted ids would keep exactly-once (the ack still fences) but a
// consumer whose reply was lost could not learn that its move committed.
class Pipeline {
 public:
  // `plant_ack_outside_txn`: a known bug, to show the checks catch it: the
  // enqueue commits alone and a plain Ack follows, and the consumer
  // sometimes crashes in between.
  Pipeline(Cluster& c, uint64_t seed, bool plant_ack_outside_txn = false)
      : c_(c), rng_(seed), plant_(plant_ack_outside_txn), lease_ms_(plant_ ? 300 : 1500) {}

  std::atomic<int> committed{0};
  std::atomic<int> aborted{0};
  std::atomic<int> unknown{0};
  std::atomic<int> crashes{0};
  std::atomic<int> interactive{0};
  std::atomic<bool> done{false};
  std::atomic<int> redelivered_after_commit{0};

  // Runs until `in` is empty or `deadline`.
  void Run(Clock::time_point deadline) {
    while (Clock::now() < deadline) {
      std::vector<v1::Delivery> batch;
      if (!Receive(c_, 1, "in", 8, lease_ms_, &batch).ok()) {
        Pause();
        continue;
      }
      if (batch.empty()) {
        std::optional<v1::QueueInfo> in = Info(c_, 1, "in");
        if (in && in->ready() + in->leased() + in->pending_in_txn() == 0) break;
        Pause();
        continue;
      }
      for (const v1::Delivery& d : batch) {
        if (moved_.count(d.sequence()) > 0) {
          ++redelivered_after_commit;
          std::printf("pipeline: in/%llu (%s) was delivered again after its move committed\n",
                      static_cast<unsigned long long>(d.sequence()), d.payload().c_str());
        }
        // The consumer crashes: it forgets its leases (they expire) and any
        // staged work (it expires too), and starts over with a new Receive.
        if (rng_() % 30 == 0) {
          ++crashes;
          break;
        }
        int outcome = plant_            ? MoveThenAck(d)
                      : rng_() % 2 == 0 ? MoveByExecute(d)
                                        : MoveInteractive(d);
        if (outcome == 1) {
          moved_.insert(d.sequence());
          ++committed;
        } else if (outcome == 2) {
          ++aborted;
        } else {
          ++unknown;
        }
      }
    }
    done = true;
  }

 private:
  static std::string Id(const v1::Delivery& d) {
    return absl::StrCat("mv-", d.sequence(), "-", d.lease_token());
  }

  void Pause() { std::this_thread::sleep_for(std::chrono::milliseconds(30)); }

  // Transport errors (a process is down) are retried with the same request;
  // after ~3 s the consumer gives up on this delivery. 1 committed, 2 aborted,
  // 0 unknown.
  template <typename Call>
  bool Retry(Call call) {
    auto end = Clock::now() + std::chrono::milliseconds(3000);
    for (;;) {
      grpc::Status s = call();
      if (s.ok()) return true;
      bool transient = s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                       s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
      if (!transient || Clock::now() >= end) return false;
      Pause();
    }
  }

  int MoveByExecute(const v1::Delivery& d) {
    v1::ExecuteRequest req = Req(Id(d), {AckOp("p1", d), EnqueueOp("p2", "out", d.payload())});
    req.set_timeout_ms(1500);
    v1::ExecuteResponse resp;
    bool ok = Retry([&] {
      grpc::ClientContext ctx;
      Deadline(&ctx, 5000);
      return c_.coordinator()->Execute(&ctx, req, &resp);
    });
    if (!ok) return 0;
    return resp.outcome() == v1::COMMITTED ? 1 : 2;
  }

  // The planted bug: not exactly once, since the ack is not in the transaction.
  int MoveThenAck(const v1::Delivery& d) {
    v1::ExecuteRequest req = Req(Id(d), {EnqueueOp("p2", "out", d.payload())});
    v1::ExecuteResponse resp;
    if (!Retry([&] {
          grpc::ClientContext ctx;
          Deadline(&ctx, 5000);
          return c_.coordinator()->Execute(&ctx, req, &resp);
        })) {
      return 0;
    }
    if (resp.outcome() != v1::COMMITTED) return 2;
    if (rng_() % 3 == 0) {  // crash after the commit, before the ack
      ++crashes;
      return 1;
    }
    grpc::ClientContext ctx;
    Deadline(&ctx, 5000);
    v1::AckRequest ack;
    ack.set_queue(d.queue());
    ack.set_sequence(d.sequence());
    ack.set_lease_token(d.lease_token());
    v1::AckResponse unused;
    c_.queue(1)->Ack(&ctx, ack, &unused);
    return 1;
  }

  int MoveInteractive(const v1::Delivery& d) {
    ++interactive;
    const std::string id = Id(d);
    v1::BeginTxnResponse b;
    if (!Retry([&] { return Begin(c_, id, 2000, &b); })) return 0;
    if (!Retry([&] { return Stage(c_, 1, id, {AckOp("p1", d)}, b.expires_unix_ms(), 1); }) ||
        !Retry([&] {
          return Stage(c_, 2, id, {EnqueueOp("p2", "out", d.payload())}, b.expires_unix_ms(), 1);
        })) {
      // Stale lease, or a node lost what was staged: give it back now.
      grpc::Status s = Rollback(c_, id, {"p1", "p2"});
      return s.ok() ? 2 : 0;
    }
    if (rng_() % 40 == 0) {  // crash between staging and commit
      ++crashes;
      return 0;
    }
    Result r;
    bool ok = Retry([&] {
      r = Commit(c_, id, {{"p1", 1}, {"p2", 1}});
      return r.status;
    });
    if (!ok) return 0;
    return r.response.outcome() == v1::COMMITTED ? 1 : 2;
  }

  Cluster& c_;
  std::mt19937_64 rng_;
  const bool plant_;
  const uint32_t lease_ms_;
  std::set<uint64_t> moved_;  // sequences whose move we were told committed
};

// What is wrong with `out` against the payloads put on `in`: duplicates and
// losses, one line each (empty when exactly once).
std::vector<std::string> ExactlyOnceViolations(const std::vector<std::string>& out,
                                               const std::vector<std::string>& payloads) {
  std::vector<std::string> problems;
  std::map<std::string, int> count;
  for (const std::string& p : out) count[p]++;
  for (const auto& [p, k] : count) {
    if (k > 1) problems.push_back(absl::StrCat(p, " arrived ", k, " times"));
  }
  std::set<std::string> expected(payloads.begin(), payloads.end());
  for (const std::string& p : payloads) {
    if (count.count(p) == 0) problems.push_back(absl::StrCat(p, " was lost"));
  }
  for (const auto& [p, k] : count) {
    if (expected.count(p) == 0) problems.push_back(absl::StrCat(p, " was never sent"));
  }
  return problems;
}

// Waits until p2 holds no transaction and `out` nothing pending.
bool AwaitOutSettled(Cluster& c) {
  for (int tries = 0; tries < 200; ++tries) {
    grpc::ClientContext ctx;
    Deadline(&ctx, 1000);
    v1::ListParticipantTxnsResponse list;
    std::optional<v1::QueueInfo> out = Info(c, 2, "out");
    if (c.txn(2)->ListTransactions(&ctx, v1::ListParticipantTxnsRequest(), &list).ok() &&
        list.transactions_size() == 0 && out && out->pending_in_txn() == 0) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

TEST(TxnTest, ExactlyOnceChecksCatchAPlantedNonTransactionalAck) {
  Cluster c(TwoNodes());
  c.StartAll();
  c.CreateQueue(1, "in");
  c.CreateQueue(2, "out");
  std::vector<std::string> payloads;
  for (int i = 0; i < 20; ++i) payloads.push_back(absl::StrCat("msg-", 1000 + i));
  Fill(c, "in", payloads);
  Pipeline consumer(c, 11, /*plant_ack_outside_txn=*/true);
  consumer.Run(Clock::now() + std::chrono::seconds(20));
  ASSERT_TRUE(AwaitOutSettled(c));
  std::vector<std::string> problems = ExactlyOnceViolations(c.Drain(2, "out"), payloads);
  EXPECT_FALSE(problems.empty()) << "the planted bug went unnoticed";
  EXPECT_TRUE(!problems.empty() && Has(problems[0], "arrived 2 times")) << problems.size();
  EXPECT_GT(consumer.redelivered_after_commit.load(), 0);
}

// A process the pipeline's run may SIGKILL and restart.
struct Victim {
  std::string name;
  std::function<void()> kill;
  std::function<void()> start;
};

// Moves `n` messages from p1's `in` to p2's `out` while `kills` victims,
// chosen by a seeded RNG, are SIGKILLed at random points and restarted;
// then checks every message arrived exactly once.
void CheckPipelineUnderKills(Cluster& c, int n, int kills, uint64_t seed,
                             const std::vector<Victim>& victims) {
  std::printf("pipeline: seed %llu, %d messages, %d kills (replay: ATOMQ_PIPELINE_SEED=%llu)\n",
              static_cast<unsigned long long>(seed), n, kills,
              static_cast<unsigned long long>(seed));
  c.StartAll();
  c.CreateQueue(1, "in");
  c.CreateQueue(2, "out");
  std::vector<std::string> payloads;
  for (int i = 0; i < n; ++i) payloads.push_back(absl::StrCat("msg-", 1000 + i));
  Fill(c, "in", payloads);

  Pipeline consumer(c, seed * 7 + 1);
  const auto deadline = Clock::now() + std::chrono::seconds(45);
  std::thread worker([&] { consumer.Run(deadline); });

  // Kills at random points of progress (so they land mid-stream), each after
  // a random delay; victims chosen by the same seeded RNG.
  std::mt19937_64 rng(seed);
  std::vector<int> at;
  for (int k = 0; k < kills; ++k) at.push_back(static_cast<int>(rng() % (n * 8 / 10)) + n / 20);
  std::sort(at.begin(), at.end());
  int done_kills = 0;
  for (int threshold : at) {
    while (!consumer.done && consumer.committed < threshold) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (consumer.done) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 60));
    const Victim& victim = victims[rng() % victims.size()];
    std::printf("pipeline: SIGKILL %s at %d moved\n", victim.name.c_str(),
                consumer.committed.load());
    victim.kill();
    ++done_kills;
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 300));
    victim.start();
  }
  worker.join();
  std::printf(
      "pipeline: %d kills, %d moves committed, %d aborted, %d unknown, %d consumer crashes, "
      "%d interactive\n",
      done_kills, consumer.committed.load(), consumer.aborted.load(), consumer.unknown.load(),
      consumer.crashes.load(), consumer.interactive.load());
  EXPECT_EQ(done_kills, kills) << "the run ended before every kill";

  // `in` is empty for good, p2 has settled every transaction.
  std::optional<v1::QueueInfo> in = Info(c, 1, "in");
  ASSERT_TRUE(in.has_value());
  EXPECT_EQ(in->ready() + in->leased() + in->pending_in_txn(), 0u)
      << "ready " << in->ready() << ", leased " << in->leased() << ", in txn "
      << in->pending_in_txn();
  ASSERT_TRUE(AwaitOutSettled(c)) << "p2 still holds transactions";
  EXPECT_EQ(consumer.redelivered_after_commit.load(), 0)
      << "a message came back after its move was told COMMITTED";

  // `out` holds exactly the N payloads: none lost, none twice.
  std::vector<std::string> problems = ExactlyOnceViolations(c.Drain(2, "out"), payloads);
  for (const std::string& p : problems) ADD_FAILURE() << p;
  EXPECT_GE(consumer.committed.load(), n / 2) << "most moves should be told COMMITTED";
}

TEST(TxnTest, ExactlyOncePipelineSurvivesKillsOfEveryProcess) {
  Cluster c(TwoNodes());
  CheckPipelineUnderKills(
      c, EnvInt("ATOMQ_PIPELINE_MESSAGES", 200), EnvInt("ATOMQ_PIPELINE_KILLS", 5),
      EnvInt("ATOMQ_PIPELINE_SEED", 20261124),
      {{"coordinator", [&] { c.KillCoordinator(); }, [&] { c.StartCoordinator(); }},
       {"p1", [&] { c.KillParticipant(1); }, [&] { c.StartParticipant(1); }},
       {"p2", [&] { c.KillParticipant(2); }, [&] { c.StartParticipant(2); }}});
}

// Every process a replica of a group of three (docs/design.md 10.2): one
// replica of a group at a time, leader or not, of the coordinator or of a
// participant, is SIGKILLed and restarted; every message still moves
// exactly once.
TEST(TxnTest, ExactlyOncePipelineSurvivesKillsOfAMinorityOfEachGroup) {
  ClusterOptions o = TwoNodes();
  o.replicas = 3;
  o.coordinator_replicas = 3;
  Cluster c(o);
  std::vector<Victim> victims;
  // Each group's leader of the moment, and one of its followers; the one
  // killed is the one restarted.
  auto killed = std::make_shared<std::map<int, int>>();
  for (int i = 1; i <= 2; ++i) {
    for (bool leader : {true, false}) {
      victims.push_back({absl::StrCat("p", i, leader ? "'s leader" : "'s follower"),
                         [&c, i, leader, killed] {
                           int j = c.LeaderOf(i);
                           if (!leader || j == 0) j = j % 3 + 1;
                           (*killed)[i] = j;
                           c.KillReplica(i, j);
                         },
                         [&c, i, killed] { c.StartReplica(i, (*killed)[i]); }});
    }
  }
  for (bool leader : {true, false}) {
    victims.push_back({leader ? "the coordinator's leader" : "a coordinator follower",
                       [&c, leader, killed] {
                         int j = c.CoordinatorLeaderOf();
                         if (!leader || j == 0) j = j % 3 + 1;
                         (*killed)[0] = j;
                         c.KillCoordinatorReplica(j);
                       },
                       [&c, killed] { c.StartCoordinatorReplica((*killed)[0]); }});
  }
  CheckPipelineUnderKills(c, EnvInt("ATOMQ_PIPELINE_MESSAGES", 100),
                          EnvInt("ATOMQ_PIPELINE_KILLS", 5),
                          EnvInt("ATOMQ_PIPELINE_SEED", 20261202), victims);
}

}  // namespace
}  // namespace atomq::testing
