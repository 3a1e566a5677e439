// Real binaries on loopback: commits, aborts, bad input, and a kill at every
// crash point under both protocols, then agreement and exactly-once checks.
#include <cstdio>
#include <future>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/storage.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

constexpr int kCrashExit = 86;

struct Result {
  grpc::Status status;
  v1::ExecuteResponse response;
};

Result Execute(Cluster& c, const v1::ExecuteRequest& req, int deadline_ms = 15000) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
  Result r;
  r.status = c.coordinator()->Execute(&ctx, req, &r.response);
  return r;
}

v1::ExecuteRequest ThreeWay(const std::string& id, v1::Protocol protocol) {
  v1::ExecuteRequest req;
  req.set_txn_id(id);
  req.set_protocol(protocol);
  *req.add_ops() = EnqueueOp("p1", "orders", id + "/order");
  *req.add_ops() = EnqueueOp("p2", "audit", id + "/audit");
  *req.add_ops() = EnqueueOp("p3", "billing", id + "/invoice");
  return req;
}

void CreateDemoQueues(Cluster& c) {
  c.CreateQueue(1, "orders");
  c.CreateQueue(2, "audit");
  c.CreateQueue(3, "billing");
}

class ProtocolTest : public ::testing::TestWithParam<v1::Protocol> {};

TEST_P(ProtocolTest, CommitsAcrossThreeParticipants) {
  Cluster c;
  c.StartAll();
  CreateDemoQueues(c);
  Result r = Execute(c, ThreeWay("t1", GetParam()));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.response.outcome(), v1::COMMITTED) << r.response.reason();
  ASSERT_EQ(r.response.results_size(), 3);
  for (const auto& res : r.response.results()) EXPECT_EQ(res.sequence(), 1u);

  // A retry with the same id returns the first outcome and enqueues nothing.
  Result again = Execute(c, ThreeWay("t1", GetParam()));
  ASSERT_TRUE(again.status.ok());
  EXPECT_EQ(again.response.outcome(), v1::COMMITTED);

  // The same id with other ops is refused.
  v1::ExecuteRequest other = ThreeWay("t1", GetParam());
  other.mutable_ops(0)->mutable_enqueue()->set_payload("different");
  EXPECT_EQ(Execute(c, other).status.error_code(), grpc::StatusCode::ALREADY_EXISTS);

  EXPECT_EQ(c.Drain(1, "orders"), std::vector<std::string>{"t1/order"});
  EXPECT_EQ(c.Drain(2, "audit"), std::vector<std::string>{"t1/audit"});
  EXPECT_EQ(c.Drain(3, "billing"), std::vector<std::string>{"t1/invoice"});

  // A second transaction gets the next sequence numbers.
  Result r2 = Execute(c, ThreeWay("t2", GetParam()));
  ASSERT_TRUE(r2.status.ok());
  ASSERT_EQ(r2.response.outcome(), v1::COMMITTED);
  for (const auto& res : r2.response.results()) EXPECT_EQ(res.sequence(), 2u);
}

TEST_P(ProtocolTest, AbortsWhenOnePartCannotApply) {
  Cluster c;
  c.StartAll();
  c.CreateQueue(1, "orders");
  c.CreateQueue(2, "audit");  // no "billing" on p3
  Result r = Execute(c, ThreeWay("t-missing", GetParam()));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.response.outcome(), v1::ABORTED);
  EXPECT_NE(r.response.reason().find("billing"), std::string::npos) << r.response.reason();
  EXPECT_TRUE(c.Drain(1, "orders").empty());
  EXPECT_TRUE(c.Drain(2, "audit").empty());
  for (int i = 1; i <= 3; ++i) {
    EXPECT_EQ(c.AwaitOutcome(i, "t-missing", 5000), v1::STATE_ABORTED) << "p" << i;
  }
  // Queues are unchanged: versions did not move.
  grpc::ClientContext ctx;
  v1::ListQueuesResponse qs;
  ASSERT_TRUE(c.queue(1)->ListQueues(&ctx, v1::ListQueuesRequest(), &qs).ok());
  ASSERT_EQ(qs.queues_size(), 1);
  EXPECT_EQ(qs.queues(0).ready(), 0u);
  EXPECT_EQ(qs.queues(0).pending_in_txn(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Protocols, ProtocolTest, ::testing::Values(v1::TWO_PC, v1::THREE_PC),
                         [](const auto& info) {
                           return info.param == v1::TWO_PC ? "TwoPC" : "ThreePC";
                         });

TEST(ProcessTest, BadInputGetsClearErrors) {
  Cluster c;
  c.StartAll();
  CreateDemoQueues(c);
  v1::ExecuteRequest bad_id = ThreeWay("bad id!", v1::TWO_PC);
  Result r = Execute(c, bad_id);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("transaction id"), std::string::npos)
      << r.status.error_message();

  v1::ExecuteRequest unknown;
  *unknown.add_ops() = EnqueueOp("p9", "orders", "x");
  r = Execute(c, unknown);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("p9"), std::string::npos) << r.status.error_message();

  EXPECT_EQ(Execute(c, v1::ExecuteRequest()).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // Nothing above changed any queue.
  EXPECT_TRUE(c.Drain(1, "orders").empty());
}

// --- crash points ---------------------------------------------------------

struct CrashCase {
  std::string point;
  bool coordinator;  // which process carries the point (else participant p2)
  v1::Protocol protocol;
  // What the protocol must decide; TXN_STATE_UNSPECIFIED: either, as long as
  // everyone agrees and the client was told what happened.
  v1::TxnState expected;
  bool parallel = false;  // the coordinator's --parallel_commit
};

std::string CaseName(const CrashCase& c) {
  std::string n =
      c.point + (c.protocol == v1::TWO_PC ? "_2pc" : "_3pc") + (c.parallel ? "_parallel" : "");
  for (char& ch : n) {
    if (ch == '-') ch = '_';
  }
  return n;
}

void PrintTo(const CrashCase& c, std::ostream* os) { *os << CaseName(c); }

class CrashTest : public ::testing::TestWithParam<CrashCase> {};

TEST_P(CrashTest, EveryParticipantAgreesAfterRestart) {
  const CrashCase& cc = GetParam();
  ClusterOptions opts;
  opts.coordinator_args = {cc.parallel ? "--parallel_commit=true" : "--parallel_commit=false"};
  Cluster c(opts);
  std::map<std::string, std::string> env = {{"ATOMQ_CRASH_AT", cc.point}};
  for (int i = 1; i <= 3; ++i)
    c.StartParticipant(i, !cc.coordinator && i == 2 ? env : std::map<std::string, std::string>{});
  c.StartCoordinator(cc.coordinator ? env : std::map<std::string, std::string>{});
  CreateDemoQueues(c);

  const std::string id = "crash-" + CaseName(cc);
  auto pending =
      std::async(std::launch::async, [&] { return Execute(c, ThreeWay(id, cc.protocol)); });

  std::optional<int> code =
      cc.coordinator ? c.WaitCoordinatorExit(10000) : c.WaitParticipantExit(2, 10000);
  ASSERT_TRUE(code.has_value()) << cc.point << " was never reached";
  EXPECT_EQ(*code, kCrashExit);
  if (cc.coordinator) {
    c.StartCoordinator();
  } else {
    c.StartParticipant(2);
  }
  Result r = pending.get();

  v1::TxnState first = c.AwaitOutcome(1, id, 20000);
  ASSERT_TRUE(first == v1::STATE_COMMITTED || first == v1::STATE_ABORTED)
      << "p1 still undecided: " << first;
  for (int i = 2; i <= 3; ++i) {
    EXPECT_EQ(c.AwaitOutcome(i, id, 20000), first) << "p" << i << " disagrees with p1";
  }
  if (cc.expected != v1::TXN_STATE_UNSPECIFIED) {
    EXPECT_EQ(first, cc.expected) << "decided otherwise than the protocol requires";
  }
  if (r.status.ok()) {
    // What the client was told is what happened.
    EXPECT_EQ(r.response.outcome() == v1::COMMITTED, first == v1::STATE_COMMITTED);
  }
  bool committed = first == v1::STATE_COMMITTED;
  auto expect = [&](const std::string& payload) {
    return committed ? std::vector<std::string>{payload} : std::vector<std::string>{};
  };
  EXPECT_EQ(c.Drain(1, "orders"), expect(id + "/order"));
  EXPECT_EQ(c.Drain(2, "audit"), expect(id + "/audit"));
  EXPECT_EQ(c.Drain(3, "billing"), expect(id + "/invoice"));
}

std::vector<CrashCase> AllCrashCases() {
  std::vector<CrashCase> out;
  for (v1::Protocol p : {v1::TWO_PC, v1::THREE_PC}) {
    // No decision was logged: presumed abort.
    out.push_back({"after-prepare-sent", true, p, v1::STATE_ABORTED});
    out.push_back({"after-decision-logged", true, p, v1::STATE_COMMITTED});
    out.push_back({"mid-commit-fanout", true, p, v1::STATE_COMMITTED});
    // p2 dies before its vote arrives: the coordinator aborts.
    out.push_back({"after-prepare-logged", false, p, v1::STATE_ABORTED});
    out.push_back({"before-vote-sent", false, p, v1::STATE_ABORTED});
    out.push_back({"after-commit-applied-before-ack", false, p, v1::STATE_COMMITTED});
  }
  // Parallel commit (2PC): the PREPARING record went to disk beside the
  // prepares. Recovery asks every participant: with all prepared it commits,
  // else (a Prepare still on its way) it aborts; either way all agree.
  out.push_back({"after-prepare-sent", true, v1::TWO_PC, v1::TXN_STATE_UNSPECIFIED, true});
  out.push_back({"after-staged-logged", true, v1::TWO_PC, v1::TXN_STATE_UNSPECIFIED, true});
  // One Commit went out with no COMMITTED record anywhere: that participant
  // answers COMMITTED, the others PREPARED, so recovery commits.
  out.push_back({"mid-commit-fanout", true, v1::TWO_PC, v1::STATE_COMMITTED, true});
  out.push_back({"before-vote-sent", false, v1::TWO_PC, v1::STATE_ABORTED, true});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Points, CrashTest, ::testing::ValuesIn(AllCrashCases()),
                         [](const auto& info) { return CaseName(info.param); });

// Finished records past --retention_ms are erased; a retry after that still
// enqueues nothing twice, because the participants remember their outcome.
TEST(ProcessTest, FinishedRecordsAreForgottenAfterRetentionAndRetriesStaySafe) {
  ClusterOptions opts;
  opts.coordinator_args = {"--retention_ms=300", "--gc_interval_ms=100", "--finished_cache_max=0"};
  Cluster c(opts);
  c.StartAll();
  CreateDemoQueues(c);
  Result r = Execute(c, ThreeWay("gc-1", v1::TWO_PC));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_EQ(r.response.outcome(), v1::COMMITTED);

  grpc::StatusCode code = grpc::StatusCode::OK;
  for (int tries = 0; tries < 100 && code != grpc::StatusCode::NOT_FOUND; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    grpc::ClientContext ctx;
    v1::GetTransactionRequest req;
    req.set_txn_id("gc-1");
    v1::TransactionInfo info;
    code = c.coordinator()->GetTransaction(&ctx, req, &info).error_code();
  }
  EXPECT_EQ(code, grpc::StatusCode::NOT_FOUND) << "gc-1 was never forgotten";

  Result again = Execute(c, ThreeWay("gc-1", v1::TWO_PC));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.response.outcome(), v1::COMMITTED) << again.response.reason();
  EXPECT_EQ(c.Drain(1, "orders"), std::vector<std::string>{"gc-1/order"});
  EXPECT_EQ(c.Drain(2, "audit"), std::vector<std::string>{"gc-1/audit"});
  EXPECT_EQ(c.Drain(3, "billing"), std::vector<std::string>{"gc-1/invoice"});
}

// Entries of sub-database `db` on participant i's disk (it must be down).
size_t StoredEntries(Cluster& c, int i, const std::string& db) {
  LmdbOptions o;
  o.dir = c.dir() + "/" + c.participant_id(i);
  o.dbs = {db};
  absl::StatusOr<std::unique_ptr<Storage>> s = OpenLmdbStorage(o);
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return 0;
  size_t n = 0;
  absl::Status st = (*s)->Scan(db, "", [&](std::string_view, std::string_view) {
    ++n;
    return true;
  });
  EXPECT_TRUE(st.ok()) << st;
  return n;
}

// Participants erase the outcomes of transactions the coordinator ENDED once
// --retention_ms has passed since its END notice, which travels with the
// coordinator's next message to them: the outcomes database shrinks to the
// last transaction's, atomq_outcomes_erased_total counts them, and the
// committed messages stay.
TEST(ProcessTest, ParticipantsForgetEndedOutcomesAfterRetention) {
  ClusterOptions opts;
  opts.participant_metrics = true;
  Cluster c(opts);
  c.StartAll();  // the default retention: ten minutes
  CreateDemoQueues(c);
  const int n = 4;
  for (int k = 0; k < n; ++k) {
    Result r = Execute(c, ThreeWay(absl::StrCat("fg-", k), k % 2 ? v1::THREE_PC : v1::TWO_PC));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    ASSERT_EQ(r.response.outcome(), v1::COMMITTED) << r.response.reason();
  }
  // Once their lazy ENDED records are durable, the next transaction's
  // messages carry the notices; its own notice waits for a later message.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  Result next = Execute(c, ThreeWay("fg-next", v1::TWO_PC));
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  ASSERT_EQ(next.response.outcome(), v1::COMMITTED) << next.response.reason();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the lazy index entries
  for (int i = 1; i <= 3; ++i) EXPECT_EQ(c.ParticipantMetric(i, "atomq_outcomes_erased_total"), 0);
  // Resident memory is reported whole and split (heap vs mapped LMDB pages).
  const double rss = c.ParticipantMetric(1, "process_resident_memory_bytes");
  const double anon = c.ParticipantMetric(1, "process_resident_anon_memory_bytes");
  const double file = c.ParticipantMetric(1, "process_resident_file_memory_bytes");
  EXPECT_GT(anon, 0);
  EXPECT_GT(file, 0);
  EXPECT_LE(anon + file, rss * 1.5);  // sampled a moment apart, same order
  for (int i = 1; i <= 3; ++i) c.KillParticipant(i);
  for (int i = 1; i <= 3; ++i) {
    EXPECT_EQ(StoredEntries(c, i, "outcomes"), static_cast<size_t>(n + 1)) << "p" << i;
    EXPECT_EQ(StoredEntries(c, i, "forgettable"), static_cast<size_t>(n)) << "p" << i;
  }

  // Back with a short retention: the index survived the restart.
  c.SetParticipantArgs({"--retention_ms=300", "--gc_interval_ms=50", "--gc_batch_max=3"});
  for (int i = 1; i <= 3; ++i) c.StartParticipant(i);
  for (int i = 1; i <= 3; ++i) {
    double erased = 0;
    for (int tries = 0; tries < 200 && erased < n; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      erased = c.ParticipantMetric(i, "atomq_outcomes_erased_total");
    }
    EXPECT_EQ(erased, n) << "p" << i;
  }
  for (int i = 1; i <= 3; ++i) c.KillParticipant(i);
  for (int i = 1; i <= 3; ++i) {
    EXPECT_EQ(StoredEntries(c, i, "outcomes"), 1u) << "p" << i;  // fg-next's
    EXPECT_EQ(StoredEntries(c, i, "forgettable"), 0u) << "p" << i;
  }
  for (int i = 1; i <= 3; ++i) c.StartParticipant(i);
  EXPECT_EQ(c.Drain(1, "orders").size(), static_cast<size_t>(n + 1));
  EXPECT_EQ(c.Drain(3, "billing").size(), static_cast<size_t>(n + 1));
}

// A participant dies after applying the commit and before acknowledging it:
// the coordinator lists the transaction as committed and waiting for it
// until it returns.
TEST(ProcessTest, CoordinatorListsWhoHasNotAcknowledged) {
  Cluster c;
  c.StartParticipant(1);
  c.StartParticipant(2);
  c.StartParticipant(3, {{"ATOMQ_CRASH_AT", "after-commit-applied-before-ack"}});
  c.StartCoordinator();
  CreateDemoQueues(c);
  auto pending =
      std::async(std::launch::async, [&] { return Execute(c, ThreeWay("wait-1", v1::TWO_PC)); });
  ASSERT_EQ(c.WaitParticipantExit(3, 10000), std::optional<int>(kCrashExit));
  Result r = pending.get();
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.response.outcome(), v1::COMMITTED);

  const std::string ctl =
      std::string(ATOMQ_BIN_DIR) + "/atomqctl --coordinator=" + c.coordinator_address();
  std::string list = RunCommand(ctl + " txn list --state=in-doubt");
  EXPECT_NE(list.find("wait-1"), std::string::npos) << list;
  EXPECT_NE(list.find("committed"), std::string::npos) << list;
  EXPECT_NE(list.find("p3"), std::string::npos) << list;
  std::string show = RunCommand(ctl + " txn show wait-1");
  EXPECT_NE(show.find("not acknowledged"), std::string::npos) << show;
  EXPECT_NE(show.find("outcome   committed"), std::string::npos) << show;

  c.StartParticipant(3);
  std::string after;
  for (int tries = 0; tries < 100; ++tries) {
    after = RunCommand(ctl + " txn list --state=in-doubt");
    if (after.find("wait-1") == std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(after.find("wait-1"), std::string::npos) << after;
  EXPECT_EQ(c.Drain(3, "billing"), std::vector<std::string>{"wait-1/invoice"});
}

// The coordinator dies after logging COMMIT and before telling anyone: every
// participant is prepared and uncertain, so all block (2PC) and say so.
TEST(ProcessTest, AtomqctlShowsInDoubtWhileCoordinatorIsDown) {
  ClusterOptions opts;
  opts.coordinator_args = {"--parallel_commit=false"};  // a COMMITTED record to crash after
  Cluster c(opts);
  for (int i = 1; i <= 3; ++i) c.StartParticipant(i);
  c.StartCoordinator({{"ATOMQ_CRASH_AT", "after-decision-logged"}});
  CreateDemoQueues(c);
  auto pending =
      std::async(std::launch::async, [&] { return Execute(c, ThreeWay("doubt-1", v1::TWO_PC)); });
  ASSERT_EQ(c.WaitCoordinatorExit(10000), std::optional<int>(kCrashExit));
  EXPECT_FALSE(pending.get().status.ok());

  const std::string ctl = std::string(ATOMQ_BIN_DIR) + "/atomqctl --participant=";
  for (int i = 1; i <= 3; ++i) {
    std::string out;
    for (int tries = 0; tries < 50; ++tries) {
      out = RunCommand(ctl + c.participant_address(i) + " txn list --state=in-doubt");
      if (out.find("doubt-1") != std::string::npos) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_NE(out.find("doubt-1"), std::string::npos) << "p" << i << " does not list doubt-1:\n"
                                                      << out;
    EXPECT_NE(out.find("yes"), std::string::npos) << out;
  }
  std::string json = RunCommand(ctl + c.participant_address(2) + " --json txn list");
  EXPECT_NE(json.find("\"txn_id\": \"doubt-1\""), std::string::npos) << json;
  std::string show = RunCommand(ctl + c.participant_address(2) + " txn show doubt-1");
  EXPECT_NE(show.find("in doubt"), std::string::npos) << show;
  // Staged messages stay invisible while in doubt.
  EXPECT_TRUE(c.Drain(1, "orders").empty());

  // The coordinator returns with COMMIT in its log and finishes the job.
  c.StartCoordinator();
  for (int i = 1; i <= 3; ++i) {
    EXPECT_EQ(c.AwaitOutcome(i, "doubt-1", 20000), v1::STATE_COMMITTED) << "p" << i;
  }
  EXPECT_EQ(c.Drain(1, "orders"), std::vector<std::string>{"doubt-1/order"});
  std::string out = RunCommand(ctl + c.participant_address(1) + " txn list --state=in-doubt");
  EXPECT_EQ(out.find("doubt-1"), std::string::npos) << out;
}

// --- one-phase commit (a single participant) --------------------------------

v1::ExecuteRequest OnP1(const std::string& id, std::vector<std::string> payloads) {
  v1::ExecuteRequest req;
  req.set_txn_id(id);
  for (const std::string& p : payloads) *req.add_ops() = EnqueueOp("p1", "orders", p);
  return req;
}

std::vector<uint64_t> Sequences(const v1::ExecuteResponse& r) {
  std::vector<uint64_t> v;
  for (const auto& res : r.results()) v.push_back(res.sequence());
  return v;
}

// The coordinator dies after p1 committed in one phase and answered, before
// it counted the vote: nothing is in its log. The client's retry with the
// same id is answered from p1's outcome: the same sequence, enqueued once.
TEST(ProcessTest, OnePhaseCommitsSingleParticipantAndSurvivesCoordinatorCrash) {
  Cluster c;
  c.StartAll();
  c.CreateQueue(1, "orders");
  Result r = Execute(c, OnP1("one-1", {"one-1/a"}));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_EQ(r.response.outcome(), v1::COMMITTED) << r.response.reason();
  EXPECT_EQ(Sequences(r.response), (std::vector<uint64_t>{1}));
  r = Execute(c, OnP1("one-2", {"one-2/a", "one-2/b"}));
  ASSERT_EQ(r.response.outcome(), v1::COMMITTED) << r.response.reason();
  EXPECT_EQ(Sequences(r.response), (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(c.AwaitOutcome(1, "one-2", 5000), v1::STATE_COMMITTED);

  c.KillCoordinator();
  c.StartCoordinator({{"ATOMQ_CRASH_AT", "after-prepare-sent"}});
  auto pending = std::async(std::launch::async,
                            [&] { return Execute(c, OnP1("one-crash", {"one-crash/a"})); });
  std::optional<int> code = c.WaitCoordinatorExit(10000);
  ASSERT_TRUE(code.has_value()) << "after-prepare-sent was never reached";
  EXPECT_EQ(*code, kCrashExit);
  pending.get();  // the connection broke: the client does not know the outcome
  EXPECT_EQ(c.AwaitOutcome(1, "one-crash", 5000), v1::STATE_COMMITTED);  // p1 decided alone
  c.StartCoordinator();
  r = Execute(c, OnP1("one-crash", {"one-crash/a"}));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.response.outcome(), v1::COMMITTED) << r.response.reason();
  EXPECT_EQ(Sequences(r.response), (std::vector<uint64_t>{4}));
  // Earlier one-phase transactions are still known (their ENDED records).
  r = Execute(c, OnP1("one-2", {"one-2/a", "one-2/b"}));
  EXPECT_EQ(Sequences(r.response), (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(c.Drain(1, "orders"),
            (std::vector<std::string>{"one-1/a", "one-2/a", "one-2/b", "one-crash/a"}));
}

// p1 dies after its one-phase commit is durable, before it votes: the
// coordinator does not presume abort; once p1 is back, its Abort is refused
// (committed) and the Prepare is answered with the sequence.
TEST(ProcessTest, OnePhaseVoteLostInAParticipantCrashIsLearntNotPresumed) {
  Cluster c;
  c.StartParticipant(1, {{"ATOMQ_CRASH_AT", "after-commit-applied-before-ack"}});
  c.StartParticipant(2);
  c.StartParticipant(3);
  c.StartCoordinator();
  c.CreateQueue(1, "orders");
  auto pending =
      std::async(std::launch::async, [&] { return Execute(c, OnP1("lost-vote", {"lost/a"})); });
  std::optional<int> code = c.WaitParticipantExit(1, 10000);
  ASSERT_TRUE(code.has_value()) << "after-commit-applied-before-ack was never reached";
  EXPECT_EQ(*code, kCrashExit);
  c.StartParticipant(1);
  Result r = pending.get();
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.response.outcome(), v1::COMMITTED) << r.response.reason();
  EXPECT_EQ(Sequences(r.response), (std::vector<uint64_t>{1}));
  EXPECT_EQ(c.Drain(1, "orders"), std::vector<std::string>{"lost/a"});
}

}  // namespace
}  // namespace atomq::testing
