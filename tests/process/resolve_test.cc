// Operator resolution of in-doubt transactions with real processes: the
// coordinator dies right after logging COMMIT and, in the first test, its
// log is lost for good; the operator settles each participant by hand with
// `atomqctl txn resolve`. The second test keeps the log: the coordinator's
// Commit then meets a heuristic abort, which must stay and be shown as mixed.
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

constexpr int kCrashExit = 86;

struct Ran {
  int code = -1;
  std::string out;  // stdout and stderr
};

Ran Shell(const std::string& cmd) {
  Ran r;
  FILE* f = popen((cmd + " 2>&1").c_str(), "r");
  if (f == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) r.out.append(buf, n);
  int status = pclose(f);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string Ctl(Cluster& c, int i) {
  return absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl --participant=", c.participant_address(i), " ");
}

v1::ExecuteRequest ThreeWay(const std::string& id) {
  v1::ExecuteRequest req;
  req.set_txn_id(id);
  req.set_protocol(v1::TWO_PC);
  const char* parts[][2] = {{"p1", "orders"}, {"p2", "audit"}, {"p3", "billing"}};
  for (const auto& [p, q] : parts) {
    v1::Op* op = req.add_ops();
    op->set_participant(p);
    op->mutable_enqueue()->set_queue(q);
    op->mutable_enqueue()->set_payload(id + "/" + q);
  }
  return req;
}

// A coordinator that writes a COMMITTED record after the votes.
ClusterOptions Classic() {
  ClusterOptions o;
  o.coordinator_args = {"--parallel_commit=false"};
  return o;
}

// Starts the cluster with the coordinator set to die once COMMIT of `id` is
// durable, before it tells anyone; returns when every participant lists the
// transaction in doubt.
void CrashAfterDecision(Cluster& c, const std::string& id) {
  // The cluster runs with --parallel_commit=false (Classic()): only then is
  // there a COMMITTED record to crash after.
  for (int i = 1; i <= 3; ++i) c.StartParticipant(i);
  c.StartCoordinator({{"ATOMQ_CRASH_AT", "after-decision-logged"}});
  c.CreateQueue(1, "orders");
  c.CreateQueue(2, "audit");
  c.CreateQueue(3, "billing");
  auto pending = std::async(std::launch::async, [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(15));
    v1::ExecuteResponse resp;
    return c.coordinator()->Execute(&ctx, ThreeWay(id), &resp);
  });
  ASSERT_EQ(c.WaitCoordinatorExit(10000), std::optional<int>(kCrashExit));
  EXPECT_FALSE(pending.get().ok());
  for (int i = 1; i <= 3; ++i) {
    Ran list;
    for (int tries = 0; tries < 100; ++tries) {
      list = Shell(Ctl(c, i) + "txn list --state=in-doubt");
      if (absl::StrContains(list.out, id)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ASSERT_TRUE(absl::StrContains(list.out, id)) << "p" << i << " not in doubt:\n" << list.out;
  }
}

TEST(ResolveTest, OperatorCommitsEachParticipantAfterTheCoordinatorLogIsLost) {
  ClusterOptions o = Classic();
  o.participant_metrics = true;
  Cluster c(o);
  const std::string id = "lost-1";
  CrashAfterDecision(c, id);
  // Read without the servers: the dead coordinator's log holds the decision;
  // a running participant's directory, read beside it, the prepared one.
  const std::string offline = absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl --data_dir=", c.dir());
  Ran decided = Shell(offline + "/c1 txn list --state=committed");
  EXPECT_EQ(decided.code, 0) << decided.out;
  EXPECT_TRUE(absl::StrContains(decided.out, "lost-1")) << decided.out;
  EXPECT_TRUE(absl::StrContains(decided.out, "p1,p2,p3")) << decided.out;  // none acknowledged
  Ran prepared = Shell(offline + "/p2 txn list");
  EXPECT_TRUE(absl::StrContains(prepared.out, "lost-1")) << prepared.out;
  EXPECT_TRUE(absl::StrContains(prepared.out, "prepared")) << prepared.out;
  Ran shown = Shell(offline + "/c1 txn show lost-1");
  EXPECT_EQ(shown.code, 0) << shown.out;
  EXPECT_TRUE(absl::StrContains(shown.out, "state     committed")) << shown.out;
  shown = Shell(offline + "/p2 txn show lost-1");
  EXPECT_TRUE(absl::StrContains(shown.out, "prepared (in doubt as read here)")) << shown.out;
  EXPECT_TRUE(absl::StrContains(shown.out, "participants p1 p2 p3")) << shown.out;
  shown = Shell(offline + "/p2 txn show nope");
  EXPECT_EQ(shown.code, 2) << shown.out;
  EXPECT_TRUE(absl::StrContains(shown.out, "neither prepared nor decided")) << shown.out;
  Ran queues = Shell(offline + "/p2 queue list --json");
  EXPECT_TRUE(absl::StrContains(queues.out, "\"pending_in_txn\": \"1\"")) << queues.out;
  // What a dashboard and an alert see (deploy/grafana, deploy/prometheus).
  EXPECT_EQ(c.ParticipantMetric(2, "atomq_transactions_in_doubt"), 1);
  EXPECT_EQ(c.ParticipantMetric(2, "atomq_transactions_prepared{state=\"prepared\"}"), 1);
  EXPECT_GT(c.ParticipantMetric(2, "atomq_transactions_in_doubt_oldest_seconds"), 0);
  EXPECT_EQ(c.ParticipantMetric(2, "atomq_queue_pending_in_txn_messages{queue=\"audit\"}"), 1);
  EXPECT_EQ(c.ParticipantMetric(2, "atomq_queue_ready_messages{queue=\"audit\"}"), 0);
  std::filesystem::remove_all(c.dir() + "/c1");  // the decision log, lost for good

  // Without --yes: what it would do, the warning, exit 2, nothing changed.
  Ran dry = Shell(Ctl(c, 1) + "txn resolve " + id + " --commit");
  EXPECT_EQ(dry.code, 2) << dry.out;
  EXPECT_TRUE(absl::StrContains(dry.out, "would resolve txn lost-1")) << dry.out;
  EXPECT_TRUE(absl::StrContains(dry.out, "prepared (in doubt)")) << dry.out;
  EXPECT_TRUE(absl::StrContains(dry.out, "WARNING: this is a heuristic decision")) << dry.out;
  EXPECT_TRUE(absl::StrContains(dry.out, "refusing without --yes")) << dry.out;
  EXPECT_EQ(Shell(Ctl(c, 1) + "txn resolve " + id + " --yes").code, 2);  // no outcome named
  EXPECT_EQ(Shell(Ctl(c, 1) + "txn resolve " + id + " --commit --abort --yes").code, 2);
  Ran unknown = Shell(Ctl(c, 1) + "txn resolve nope --commit --yes");
  EXPECT_EQ(unknown.code, 2);
  EXPECT_TRUE(absl::StrContains(unknown.out, "NOT_FOUND")) << unknown.out;
  EXPECT_TRUE(absl::StrContains(Shell(Ctl(c, 1) + "txn list --state=in-doubt").out, id));
  EXPECT_TRUE(c.Drain(1, "orders").empty());

  // Every one in doubt of coordinator c1 at once: what it would do first,
  // then (on a terminal, which script(1) gives it) with a progress line.
  Ran all = Shell(Ctl(c, 1) + "txn resolve --all-in-doubt --of_coordinator=c1 --commit");
  EXPECT_EQ(all.code, 2) << all.out;
  EXPECT_TRUE(absl::StrContains(all.out, "would resolve 1 transactions in doubt")) << all.out;
  EXPECT_TRUE(absl::StrContains(all.out, "  lost-1\n")) << all.out;
  EXPECT_TRUE(absl::StrContains(
      Shell(Ctl(c, 1) + "txn resolve --all-in-doubt --of_coordinator=c9 --commit").out,
      "would resolve 0 transactions"));
  EXPECT_EQ(Shell(Ctl(c, 1) + "txn resolve " + id + " --all-in-doubt --commit --yes").code, 2);
  all = Shell("script -qec \"" + Ctl(c, 1) +
              "txn resolve --all-in-doubt --of_coordinator=c1 --commit --yes "
              "--note='c1 disk lost'\" /dev/null");
  EXPECT_TRUE(absl::StrContains(all.out, "resolving: 1 of 1 (0 refused)")) << all.out;
  EXPECT_TRUE(absl::StrContains(all.out, "1 of 1 in doubt at")) << all.out;
  EXPECT_TRUE(absl::StrContains(all.out, "resolved: COMMITTED (0 refused)")) << all.out;
  // p2 and p3 may settle on their own first: their outcome queries reach
  // p1, which answers with its (heuristic) outcome. Either way: committed.
  for (int i = 1; i <= 3; ++i) {
    Ran r = Shell(Ctl(c, i) + "txn resolve " + id + " --commit --yes --note='c1 disk lost'");
    EXPECT_EQ(r.code, 0) << "p" << i << ": " << r.out;
    EXPECT_TRUE(absl::StrContains(r.out, "lost-1 COMMITTED here (")) << r.out;
    if (i > 1) {
      EXPECT_TRUE(absl::StrContains(r.out, "sequences [1]")) << r.out;
    }
  }
  // Read beside the running server, then received: visible exactly once.
  Ran stored = Shell(offline + "/p1 queue receive orders --peek --max=5");
  EXPECT_TRUE(absl::StrContains(stored.out, "orders #1 (stored): lost-1/orders")) << stored.out;
  EXPECT_EQ(Shell(offline + "/p1 queue receive orders").code, 2);
  shown = Shell(offline + "/p1 txn show lost-1");
  EXPECT_TRUE(absl::StrContains(shown.out, "HEURISTIC")) << shown.out;
  EXPECT_TRUE(absl::StrContains(shown.out, "c1 disk lost")) << shown.out;
  // Visible exactly once, and nothing left in doubt.
  EXPECT_EQ(c.Drain(1, "orders"), std::vector<std::string>{"lost-1/orders"});
  EXPECT_EQ(c.Drain(2, "audit"), std::vector<std::string>{"lost-1/audit"});
  EXPECT_EQ(c.Drain(3, "billing"), std::vector<std::string>{"lost-1/billing"});
  for (int i = 1; i <= 3; ++i) {
    Ran list = Shell(Ctl(c, i) + "txn list --state=in-doubt");
    EXPECT_EQ(list.code, 0);
    EXPECT_FALSE(absl::StrContains(list.out, id)) << list.out;
    EXPECT_EQ(c.AwaitOutcome(i, id, 2000), v1::STATE_COMMITTED);
  }
  for (int i = 1; i <= 3; ++i) EXPECT_EQ(c.ParticipantMetric(i, "atomq_transactions_in_doubt"), 0);
  EXPECT_EQ(c.ParticipantMetric(2, "atomq_transactions_in_doubt_oldest_seconds"), 0);
  EXPECT_EQ(c.ParticipantMetric(2, "atomq_queue_pending_in_txn_messages{queue=\"audit\"}"), 0);
  // A retry answers the same and applies nothing twice; the other outcome is refused.
  Ran again = Shell(Ctl(c, 2) + "txn resolve " + id + " --commit --yes");
  EXPECT_EQ(again.code, 0) << again.out;
  Ran other = Shell(Ctl(c, 2) + "txn resolve " + id + " --abort --yes");
  EXPECT_EQ(other.code, 2) << other.out;
  EXPECT_TRUE(absl::StrContains(other.out, "FAILED_PRECONDITION")) << other.out;
  EXPECT_TRUE(c.Drain(2, "audit").empty());

  // The heuristic outcome is shown, also after a restart.
  c.KillParticipant(1);
  c.StartParticipant(1);
  Ran heur = Shell(Ctl(c, 1) + "txn list --state=heuristic");
  EXPECT_TRUE(absl::StrContains(heur.out, id)) << heur.out;
  EXPECT_TRUE(absl::StrContains(heur.out, "c1 disk lost")) << heur.out;
  Ran show = Shell(Ctl(c, 1) + "txn show " + id);
  EXPECT_EQ(show.code, 0) << show.out;
  EXPECT_TRUE(absl::StrContains(show.out, "committed (HEURISTIC: decided by an operator)"))
      << show.out;
  EXPECT_FALSE(absl::StrContains(show.out, "MIXED")) << show.out;
  EXPECT_TRUE(c.Drain(1, "orders").empty());
}

TEST(ResolveTest, HeuristicAbortStaysWhenTheCoordinatorCommitsAndIsShownMixed) {
  Cluster c(Classic());
  const std::string id = "mixed-1";
  CrashAfterDecision(c, id);
  // p2 and p3 go down, so that they cannot learn p1's abort from it.
  c.KillParticipant(2);
  c.KillParticipant(3);
  Ran r = Shell(Ctl(c, 1) + "txn resolve " + id + " --abort --yes --note=guess");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "mixed-1 ABORTED here (heuristic, durable)")) << r.out;

  // The coordinator comes back with COMMIT in its log and sends Commit.
  c.StartCoordinator();
  Ran heur;
  for (int tries = 0; tries < 200; ++tries) {
    heur = Shell(Ctl(c, 1) + "txn list");
    if (absl::StrContains(heur.out, "YES: ")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(absl::StrContains(heur.out, "YES: committed elsewhere")) << heur.out;
  Ran show = Shell(Ctl(c, 1) + "txn show " + id);
  EXPECT_TRUE(absl::StrContains(show.out, "MIXED")) << show.out;
  EXPECT_TRUE(absl::StrContains(show.out, "a Commit (coordinator or peer) says committed"))
      << show.out;
  c.StartParticipant(2);
  c.StartParticipant(3);
  EXPECT_EQ(c.AwaitOutcome(2, id, 20000), v1::STATE_COMMITTED);
  EXPECT_EQ(c.AwaitOutcome(3, id, 20000), v1::STATE_COMMITTED);
  // No flip: p1 stays aborted, its message never appears.
  EXPECT_EQ(c.AwaitOutcome(1, id, 1000), v1::STATE_ABORTED);
  EXPECT_TRUE(c.Drain(1, "orders").empty());
  EXPECT_EQ(c.Drain(2, "audit"), std::vector<std::string>{"mixed-1/audit"});
  std::ifstream log(c.dir() + "/p1.log");
  std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(absl::StrContains(text, "HEURISTIC DECISION: txn mixed-1 ABORTED")) << text;
  EXPECT_TRUE(absl::StrContains(text, "ALARM heuristic mixed: txn mixed-1")) << text;
  // The coordinator reports p1's refusal too, once every one answered.
  v1::TransactionInfo info;
  for (int tries = 0; tries < 200; ++tries) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GetTransactionRequest req;
    req.set_txn_id(id);
    ASSERT_TRUE(c.coordinator()->GetTransaction(&ctx, req, &info).ok());
    bool all = true;
    for (const auto& p : info.participants()) all = all && p.acknowledged();
    if (all) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (const auto& p : info.participants()) {
    EXPECT_TRUE(p.acknowledged()) << p.participant();
    EXPECT_EQ(p.state(), p.participant() == "p1" ? v1::STATE_ABORTED : v1::STATE_COMMITTED)
        << p.participant();
  }
}

}  // namespace
}  // namespace atomq::testing
