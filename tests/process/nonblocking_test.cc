// Non-blocking 3PC with real processes: the coordinator dies after PreCommit
// reached a participant and stays down, one of three participants is down
// too, and the other two still finish the transaction (quorum termination);
// the third agrees when it returns.
#include <future>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

constexpr int kCrashExit = 86;

bool Decided(v1::TxnState s) { return s == v1::STATE_COMMITTED || s == v1::STATE_ABORTED; }

TEST(NonBlockingTest, MajorityFinishesWithCoordinatorAndOneParticipantDown) {
  // The Cluster's participants are in doubt after 300 ms and start rounds at
  // most 300 ms apart.
  Cluster c;
  for (int i = 1; i <= 3; ++i) c.StartParticipant(i);
  c.CreateQueue(1, "orders");
  c.CreateQueue(2, "audit");
  c.CreateQueue(3, "billing");
  c.StartCoordinator({{"ATOMQ_CRASH_AT", "after-precommit-sent"}});

  v1::ExecuteRequest req;
  req.set_txn_id("nb-1");
  req.set_protocol(v1::THREE_PC);
  *req.add_ops() = EnqueueOp("p1", "orders", "nb-1/order");
  *req.add_ops() = EnqueueOp("p2", "audit", "nb-1/audit");
  *req.add_ops() = EnqueueOp("p3", "billing", "nb-1/invoice");
  auto call = std::async(std::launch::async, [&c, req] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ExecuteResponse resp;
    return c.coordinator()->Execute(&ctx, req, &resp);
  });
  // The coordinator dies once a participant acknowledged PreCommit, and stays down.
  ASSERT_EQ(c.WaitCoordinatorExit(15000), kCrashExit);
  EXPECT_FALSE(call.get().ok()) << "the client cannot have been told an outcome";
  c.KillParticipant(3);

  // p1 and p2, a majority of three, decide without the coordinator.
  const v1::TxnState s1 = c.AwaitOutcome(1, "nb-1", 20000);
  const v1::TxnState s2 = c.AwaitOutcome(2, "nb-1", 20000);
  ASSERT_TRUE(Decided(s1)) << v1::TxnState_Name(s1);
  EXPECT_EQ(s1, s2);

  // p3 returns, still without the coordinator, and agrees.
  c.StartParticipant(3);
  EXPECT_EQ(c.AwaitOutcome(3, "nb-1", 20000), s1);

  const size_t expect = s1 == v1::STATE_COMMITTED ? 1 : 0;
  EXPECT_EQ(c.Drain(1, "orders").size(), expect);
  EXPECT_EQ(c.Drain(2, "audit").size(), expect);
  EXPECT_EQ(c.Drain(3, "billing").size(), expect);

  // The coordinator comes back: its PRECOMMITTED record is settled by a
  // termination round, to the same outcome, and a retry reports it.
  c.StartCoordinator();
  v1::ExecuteResponse resp;
  grpc::Status st;
  for (int attempt = 0; attempt < 40; ++attempt) {
    grpc::ClientContext actx;
    actx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    st = c.coordinator()->Execute(&actx, req, &resp);
    if (st.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.outcome(), s1 == v1::STATE_COMMITTED ? v1::COMMITTED : v1::ABORTED)
      << resp.reason();
}

// A participant alone (the coordinator dead after PreCommit, the two others
// down) proposes termination rounds it cannot finish; its data dir, read
// without its server, shows the ballots it proposed and promised, and the
// coordinator's the ballot of its record.
TEST(NonBlockingTest, AStoppedNodesBallotsAreReadFromItsDataDir) {
  Cluster c;
  for (int i = 1; i <= 3; ++i) c.StartParticipant(i);
  for (int i = 1; i <= 3; ++i) c.CreateQueue(i, "q");
  c.StartCoordinator({{"ATOMQ_CRASH_AT", "after-precommit-sent"}});
  v1::ExecuteRequest req;
  req.set_txn_id("nb-2");
  req.set_protocol(v1::THREE_PC);
  for (int i = 1; i <= 3; ++i) *req.add_ops() = EnqueueOp(c.participant_id(i), "q", "nb-2");
  auto call = std::async(std::launch::async, [&c, req] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ExecuteResponse resp;
    return c.coordinator()->Execute(&ctx, req, &resp);
  });
  ASSERT_EQ(c.WaitCoordinatorExit(15000), kCrashExit);
  EXPECT_FALSE(call.get().ok());
  c.KillParticipant(2);
  c.KillParticipant(3);
  const std::string offline = std::string(ATOMQ_BIN_DIR) + "/atomqctl --data_dir=" + c.dir();
  std::string shown;
  for (int tries = 0; tries < 100; ++tries) {
    shown = RunCommand(offline + "/p1 txn show nb-2 2>&1");
    if (shown.find("proposed 0") == std::string::npos &&
        shown.find("  ballots      promised") != std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  c.KillParticipant(1);
  shown = RunCommand(offline + "/p1 txn show nb-2 2>&1");
  EXPECT_NE(shown.find("protocol     3pc"), std::string::npos) << shown;
  EXPECT_NE(shown.find("  ballots      promised "), std::string::npos) << shown;
  EXPECT_EQ(shown.find("promised 0,"), std::string::npos) << shown;
  EXPECT_EQ(shown.find("proposed 0"), std::string::npos) << shown;
  const std::string json = RunCommand(offline + "/p1 txn show nb-2 --json 2>&1");
  EXPECT_NE(json.find("\"proposed_ballot\""), std::string::npos) << json;
  const std::string coordinator = RunCommand(offline + "/c1 txn show nb-2 2>&1");
  EXPECT_NE(coordinator.find("  ballot    "), std::string::npos) << coordinator;
  EXPECT_NE(coordinator.find("precommitted"), std::string::npos) << coordinator;
}

}  // namespace
}  // namespace atomq::testing
