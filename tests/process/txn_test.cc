// Transactional acks and interactive transactions with real binaries on
// loopback: ack + enqueue in one Execute, stale and foreign leases, Begin /
// Stage / Commit / Rollback, expiry, idempotent retries across a coordinator
// restart, and the exactly-once pipeline: a consumer that moves every message
// from `in` (p1) to `out` (p2), acking in the same transaction, while the
// coordinator, the participants and the consumer itself are killed.
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"
#include "tests/process/pipeline.h"

namespace atomq::testing {
namespace {

bool Has(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::vector<v1::Delivery> MustReceive(Cluster& c, int i, const std::string& queue, uint32_t max,
                                      uint32_t lease_ms) {
  std::vector<v1::Delivery> got;
  grpc::Status s = Receive(c, i, queue, max, lease_ms, &got);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return got;
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

TEST(TxnTest, ExactlyOnceChecksCatchAPlantedNonTransactionalAck) {
  Cluster c(TwoNodes());
  const std::vector<std::string> payloads = StartPipeline(c, 20);
  Pipeline consumer(c, 11, /*plant_ack_outside_txn=*/true);
  consumer.Run(Clock::now() + std::chrono::seconds(20));
  ASSERT_TRUE(AwaitSettled(c, 2, "out"));
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
  const std::vector<std::string> payloads = StartPipeline(c, n);

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
    if (!consumer.AwaitMoved(threshold)) break;
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
  std::printf("pipeline: %d kills\n", done_kills);
  EXPECT_EQ(done_kills, kills) << "the run ended before every kill";
  ExpectMovedExactlyOnce(c, consumer, payloads);
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
