#include "tests/process/pipeline.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace atomq::testing {

void Deadline(grpc::ClientContext* ctx, int ms) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

int EnvInt(const char* name, int def) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : def;
}

v1::Op AckOp(const std::string& participant, const v1::Delivery& d, const std::string& token) {
  v1::Op op;
  op.set_participant(participant);
  op.mutable_ack()->set_queue(d.queue());
  op.mutable_ack()->set_sequence(d.sequence());
  op.mutable_ack()->set_lease_token(token.empty() ? d.lease_token() : token);
  return op;
}

Result Execute(Cluster& c, const v1::ExecuteRequest& req, int deadline_ms) {
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
                   v1::BeginTxnResponse* resp, v1::Protocol protocol) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 5000);
  v1::BeginTxnRequest req;
  req.set_txn_id(id);
  req.set_timeout_ms(timeout_ms);
  req.set_protocol(protocol);
  return c.coordinator()->Begin(&ctx, req, resp);
}

grpc::Status Stage(Cluster& c, int i, const std::string& id, std::vector<v1::Op> ops,
                   int64_t expires_ms, uint32_t batch, v1::StageResponse* resp) {
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

void Fill(Cluster& c, const std::string& queue, const std::vector<std::string>& payloads) {
  v1::ExecuteRequest req;
  req.set_txn_id("fill-" + queue);
  for (const std::string& p : payloads) *req.add_ops() = EnqueueOp("p1", queue, p);
  Result r = Execute(c, req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_EQ(r.response.outcome(), v1::COMMITTED) << r.response.reason();
}

Pipeline::Pipeline(Cluster& c, uint64_t seed, bool plant_ack_outside_txn)
    : c_(c), rng_(seed), plant_(plant_ack_outside_txn), lease_ms_(plant_ ? 300 : 1500) {}

void Pipeline::Run(Clock::time_point deadline) {
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

bool Pipeline::AwaitMoved(int n) const {
  while (!done && committed < n) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return !done;
}

std::string Pipeline::Id(const v1::Delivery& d) {
  return absl::StrCat("mv-", d.sequence(), "-", d.lease_token());
}

void Pipeline::Pause() { std::this_thread::sleep_for(std::chrono::milliseconds(30)); }

// Transport errors (a process is down) are retried with the same request;
// after ~3 s the consumer gives up on this delivery. 1 committed, 2 aborted,
// 0 unknown.
template <typename Call>
bool Pipeline::Retry(Call call) {
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

int Pipeline::MoveByExecute(const v1::Delivery& d) {
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
int Pipeline::MoveThenAck(const v1::Delivery& d) {
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

int Pipeline::MoveInteractive(const v1::Delivery& d) {
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

bool AwaitSettled(Cluster& c, int i, const std::string& queue) {
  for (int tries = 0; tries < 200; ++tries) {
    grpc::ClientContext ctx;
    Deadline(&ctx, 1000);
    v1::ListParticipantTxnsResponse list;
    std::optional<v1::QueueInfo> q = Info(c, i, queue);
    if (c.txn(i)->ListTransactions(&ctx, v1::ListParticipantTxnsRequest(), &list).ok() &&
        list.transactions_size() == 0 && q && q->pending_in_txn() == 0) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

std::vector<std::string> StartPipeline(Cluster& c, int n) {
  c.StartAll();
  c.CreateQueue(1, "in");
  c.CreateQueue(2, "out");
  std::vector<std::string> payloads;
  for (int i = 0; i < n; ++i) payloads.push_back(absl::StrCat("msg-", 1000 + i));
  Fill(c, "in", payloads);
  return payloads;
}

void ExpectMovedExactlyOnce(Cluster& c, const Pipeline& consumer,
                            const std::vector<std::string>& payloads) {
  std::printf(
      "pipeline: %d moves committed, %d aborted, %d unknown, %d consumer crashes, "
      "%d interactive\n",
      consumer.committed.load(), consumer.aborted.load(), consumer.unknown.load(),
      consumer.crashes.load(), consumer.interactive.load());
  // `in` is empty for good, p2 has settled every transaction.
  std::optional<v1::QueueInfo> in = Info(c, 1, "in");
  ASSERT_TRUE(in.has_value());
  EXPECT_EQ(in->ready() + in->leased() + in->pending_in_txn(), 0u)
      << "ready " << in->ready() << ", leased " << in->leased() << ", in txn "
      << in->pending_in_txn();
  ASSERT_TRUE(AwaitSettled(c, 2, "out")) << "p2 still holds transactions";
  EXPECT_EQ(consumer.redelivered_after_commit.load(), 0)
      << "a message came back after its move was told COMMITTED";

  // `out` holds exactly the N payloads: none lost, none twice.
  std::vector<std::string> problems = ExactlyOnceViolations(c.Drain(2, "out"), payloads);
  for (const std::string& p : problems) ADD_FAILURE() << p;
  EXPECT_GE(consumer.committed.load(), static_cast<int>(payloads.size()) / 2)
      << "most moves should be told COMMITTED";
}

}  // namespace atomq::testing
