// The coordinator as a group of three replica processes on loopback
// (docs/design.md 10.2): its decision log is committed in the group before
// it is acted on, so when its leader dies at any step of a transaction the
// others elect one that finishes it, and no participant waits for the dead
// process to return (2PC no longer blocks). Transaction ids it mints never
// repeat across leaderships.
#include <future>
#include <set>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

constexpr int kCrashExit = 86;

ClusterOptions ThreeAndAGroup(bool parallel) {
  ClusterOptions o;
  o.participants = 3;
  o.coordinator_replicas = 3;
  o.coordinator_args = {parallel ? "--parallel_commit=true" : "--parallel_commit=false"};
  return o;
}

std::string Peers(Cluster& c) {
  std::string out;
  for (int j = 1; j <= 3; ++j) {
    absl::StrAppend(&out, j > 1 ? "|" : "", c.coordinator_replica_peer_address(j));
  }
  return out;
}

// Hands the coordinator group's leadership to replica j (atomqctl cluster
// transfer, which waits until j serves).
// A replica just restarted may not be caught up yet: asked again.
void Lead(Cluster& c, int j) {
  std::string out;
  for (int tries = 0; tries < 50; ++tries) {
    out = RunCommand(absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl cluster transfer --members='", Peers(c),
                                  "' --to=", j, " 2>&1"));
    if (out.find(absl::StrCat("member ", j, " lead")) != std::string::npos &&
        c.CoordinatorLeaderOf() == j) {
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  FAIL() << "replica " << j << " did not take over: " << out;
}

v1::ExecuteRequest ThreeWay(const std::string& id, v1::Protocol protocol) {
  v1::ExecuteRequest req;
  req.set_txn_id(id);
  req.set_protocol(protocol);
  for (int i = 1; i <= 3; ++i) *req.add_ops() = EnqueueOp(absl::StrCat("p", i), "q", id);
  return req;
}

grpc::Status Execute(Cluster& c, const v1::ExecuteRequest& req, v1::ExecuteResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(15));
  return c.coordinator()->Execute(&ctx, req, resp);
}

struct LeaderCrash {
  const char* point;
  v1::Protocol protocol;
  bool parallel;
  v1::TxnState expected;  // TXN_STATE_UNSPECIFIED: either, as long as all agree
};

class CoordinatorGroupCrashTest : public ::testing::TestWithParam<LeaderCrash> {};

// Replica 1 leads with a crash point set; it dies there and stays down. The
// other two elect a leader, which resumes the transaction from the
// replicated log: every participant reaches one outcome, and a retry of the
// client's call is answered with it.
TEST_P(CoordinatorGroupCrashTest, TheNextLeaderFinishesWhatTheDeadOneStarted) {
  const LeaderCrash& lc = GetParam();
  Cluster c(ThreeAndAGroup(lc.parallel));
  for (int i = 1; i <= 3; ++i) c.StartParticipant(i);
  c.StartCoordinator();
  for (int i = 1; i <= 3; ++i) c.CreateQueue(i, "q");
  c.StartCoordinatorReplica(1, {{"ATOMQ_CRASH_AT", lc.point}});
  Lead(c, 1);
  if (HasFatalFailure()) return;

  const std::string id = absl::StrCat("lost-leader-", lc.point);
  auto pending = std::async(std::launch::async, [&] {
    v1::ExecuteResponse resp;
    grpc::Status s = Execute(c, ThreeWay(id, lc.protocol), &resp);
    return std::make_pair(s, resp);
  });
  ASSERT_EQ(c.WaitCoordinatorReplicaExit(1, 10000), std::optional<int>(kCrashExit))
      << lc.point << " was never reached";
  auto [status, told] = pending.get();

  // Replica 1 stays down: the others finish the transaction.
  v1::TxnState first = c.AwaitOutcome(1, id, 20000);
  ASSERT_TRUE(first == v1::STATE_COMMITTED || first == v1::STATE_ABORTED)
      << "p1 still undecided with the coordinator's leader gone: " << first;
  for (int i = 2; i <= 3; ++i) {
    EXPECT_EQ(c.AwaitOutcome(i, id, 20000), first) << "p" << i << " disagrees with p1";
  }
  if (lc.expected != v1::TXN_STATE_UNSPECIFIED) EXPECT_EQ(first, lc.expected);
  if (status.ok()) EXPECT_EQ(told.outcome() == v1::COMMITTED, first == v1::STATE_COMMITTED);
  // The client's retry, at whichever replica leads now, hears the outcome.
  v1::ExecuteResponse again;
  grpc::Status s = Execute(c, ThreeWay(id, lc.protocol), &again);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(again.outcome() == v1::COMMITTED, first == v1::STATE_COMMITTED);
  for (int i = 1; i <= 3; ++i) {
    EXPECT_EQ(c.Drain(i, "q").size(), first == v1::STATE_COMMITTED ? 1u : 0u) << "p" << i;
  }
}

std::string CrashName(const ::testing::TestParamInfo<LeaderCrash>& info) {
  std::string name = absl::StrCat(info.param.protocol == v1::TWO_PC ? "TwoPc_" : "ThreePc_",
                                  info.param.parallel ? "Parallel_" : "", info.param.point);
  for (char& ch : name) {
    if (ch == '-') ch = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(
    Points, CoordinatorGroupCrashTest,
    ::testing::Values(
        // No decision in the log: presumed abort, decided by the next leader.
        LeaderCrash{"after-prepare-sent", v1::TWO_PC, false, v1::STATE_ABORTED},
        // The decision is committed in the group: the next leader sends it.
        LeaderCrash{"after-decision-logged", v1::TWO_PC, false, v1::STATE_COMMITTED},
        LeaderCrash{"mid-commit-fanout", v1::TWO_PC, true, v1::STATE_COMMITTED},
        LeaderCrash{"after-prepare-sent", v1::TWO_PC, true, v1::TXN_STATE_UNSPECIFIED},
        LeaderCrash{"after-decision-logged", v1::THREE_PC, false, v1::STATE_COMMITTED}),
    CrashName);

// Ids minted without a client's txn_id carry the leadership's epoch, which
// the group commits before the new leader serves: a later leader never
// mints an id an earlier one handed out, even once that one's record is
// erased (short --retention_ms), when nothing in the log would show it.
TEST(CoordinatorGroupTest, MintedIdsNeverRepeatAcrossLeaderships) {
  ClusterOptions o = ThreeAndAGroup(true);
  o.coordinator_args.push_back("--retention_ms=1");
  o.coordinator_args.push_back("--gc_interval_ms=10");
  Cluster c(o);
  for (int i = 1; i <= 3; ++i) c.StartParticipant(i);
  c.StartCoordinator();
  for (int i = 1; i <= 3; ++i) c.CreateQueue(i, "q");
  std::set<std::string> ids;
  int minted = 0;
  for (int j : {1, 2, 3, 1}) {
    Lead(c, j);
    for (int n = 0; n < 2; ++n) {
      v1::ExecuteResponse resp;
      grpc::Status s = Execute(c, ThreeWay("", v1::TWO_PC), &resp);
      ASSERT_TRUE(s.ok()) << s.error_message();
      ASSERT_EQ(resp.outcome(), v1::COMMITTED);
      ids.insert(resp.txn_id());
      ++minted;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // erased
  }
  EXPECT_EQ(ids.size(), size_t(minted)) << "a leader minted an id an earlier one had";
  for (int i = 1; i <= 3; ++i) EXPECT_EQ(c.Drain(i, "q").size(), size_t(minted)) << "p" << i;
}

// atomqctl finds the serving replica of a coordinator group.
TEST(CoordinatorGroupTest, AtomqctlFindsTheCoordinatorsLeader) {
  Cluster c(ThreeAndAGroup(true));
  for (int i = 1; i <= 3; ++i) c.StartParticipant(i);
  c.StartCoordinator();
  c.CreateQueue(1, "q");
  const std::string out =
      RunCommand(absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl --coordinator='", c.coordinator_address(),
                              "' txn exec --enqueue=p1:q=hello 2>&1"));
  EXPECT_NE(out.find("COMMITTED"), std::string::npos) << out;
  EXPECT_EQ(c.Drain(1, "q"), std::vector<std::string>{"hello"});
}

}  // namespace
}  // namespace atomq::testing
