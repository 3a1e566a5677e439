// Participants that are groups of three replicas, as real processes on
// loopback (docs/design.md 10.2): the leader serves, the others refuse with
// where it is, and transactions keep committing after the leader is
// SIGKILLed, with every committed message there once and nothing else.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "atomq/v1/console.pb.h"
#include "atomq/v1/replica.grpc.pb.h"
#include "common/leader_book.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

// What became of the transactions a test ran: committed, aborted, or not
// known (the call failed: it may have committed).
struct Ledger {
  std::set<std::string> committed;
  std::set<std::string> unknown;
};

// Runs transaction `id`: one enqueue on each participant.
void RunTxn(Cluster& c, const std::string& id, Ledger* ledger) {
  v1::ExecuteRequest req;
  req.set_txn_id(id);
  for (int i = 1; i <= c.participants(); ++i) {
    *req.add_ops() = EnqueueOp(c.participant_id(i), "q", id);
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ExecuteResponse resp;
  grpc::Status s = c.coordinator()->Execute(&ctx, req, &resp);
  if (s.ok() && resp.outcome() == v1::COMMITTED) {
    ledger->committed.insert(id);
  } else if (!s.ok()) {
    ledger->unknown.insert(id);
  }
}

// Runs transactions named `prefix`-N until `want` more commit or `seconds`
// pass; how many did.
size_t CommitMore(Cluster& c, const std::string& prefix, size_t want, int seconds, Ledger* ledger) {
  size_t got = 0;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  for (int n = 0; got < want && std::chrono::steady_clock::now() < end; ++n) {
    const size_t had = ledger->committed.size();
    RunTxn(c, absl::StrCat(prefix, "-", n), ledger);
    got += ledger->committed.size() - had;
  }
  return got;
}

// Every committed payload is in participant i's queue exactly once, and
// nothing that did not commit or might have.
void ExpectExactlyCommitted(Cluster& c, int i, const Ledger& ledger) {
  std::vector<std::string> got = c.Drain(i, "q");
  std::multiset<std::string> seen(got.begin(), got.end());
  for (const std::string& id : ledger.committed) {
    EXPECT_EQ(seen.count(id), 1u) << id << " committed but is on p" << i << " " << seen.count(id)
                                  << " times";
  }
  for (const std::string& id : seen) {
    EXPECT_TRUE(ledger.committed.count(id) > 0 || ledger.unknown.count(id) > 0)
        << id << " is on p" << i << " but did not commit";
    EXPECT_EQ(seen.count(id), 1u) << id << " is on p" << i << " more than once";
  }
}

// Participant 1's replicas' peer addresses as atomqctl cluster takes them:
// "a|b|c".
std::string PeerMembers(Cluster& c) {
  std::string members;
  for (int j = 1; j <= 3; ++j) {
    absl::StrAppend(&members, j > 1 ? "|" : "", c.replica_peer_address(1, j));
  }
  return members;
}

// Members of a new group started apart: the first ones ask a member that is
// not listening yet (a refused connection puts gRPC's channel in backoff)
// and must still hear it soon once it listens.
TEST(ReplicaTest, ANewGroupWhoseMembersStartApartElectsPromptly) {
  Cluster c(ClusterOptions{.participants = 1, .replicas = 3});
  c.StartReplica(1, 2);
  c.StartReplica(1, 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  c.StartReplica(1, 1);
  const auto started = std::chrono::steady_clock::now();
  EXPECT_NE(c.LeaderOf(1, 15000), 0);
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5));
  c.CreateQueue(1, "q");
}

TEST(ReplicaTest, FollowersRefuseNamingTheLeader) {
  Cluster c(ClusterOptions{.participants = 1, .replicas = 3});
  c.StartAll();
  const int leader = c.LeaderOf(1);
  ASSERT_NE(leader, 0);
  for (int j = 1; j <= 3; ++j) {
    if (j == leader) continue;
    // (A member that started last may still be taking the log.)
    grpc::Status s;
    for (int tries = 0; tries < 30; ++tries) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      v1::ListQueuesResponse resp;
      s = v1::Queue::NewStub(c.Channel(c.replica_address(1, j)))
              ->ListQueues(&ctx, v1::ListQueuesRequest(), &resp);
      std::optional<v1::NotLeader> known = NotLeaderOf(s);
      if (known.has_value() && known->leader_member() != 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
    std::optional<v1::NotLeader> where = NotLeaderOf(s);
    ASSERT_TRUE(where.has_value()) << s.error_message();
    EXPECT_EQ(where->group(), "p1");
    EXPECT_EQ(where->leader_address(), c.replica_address(1, leader)) << s.error_message();
    EXPECT_EQ(where->leader_member(), uint64_t(leader));
  }
}

TEST(ReplicaTest, AtomqctlFindsTheLeaderOfAGroup) {
  Cluster c(ClusterOptions{.participants = 1, .replicas = 3});
  c.StartAll();
  const std::string ctl =
      absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl --participant='", c.participant_address(1), "' ");
  EXPECT_NE(RunCommand(ctl + "queue create jobs 2>&1").find("queue jobs created"),
            std::string::npos);
  EXPECT_NE(RunCommand(ctl + "queue list 2>&1").find("jobs"), std::string::npos);
  // One follower alone: the call fails and says where the leader is.
  const int leader = c.LeaderOf(1);
  const int follower = leader % 3 + 1;
  // (A member that started last may still be taking the log.)
  std::string out;
  for (int tries = 0; tries < 30; ++tries) {
    out = RunCommand(absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl --participant=",
                                  c.replica_address(1, follower), " queue list 2>&1"));
    if (out.find("the leader is") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_NE(out.find("the leader is " + c.replica_address(1, leader)), std::string::npos) << out;
}

// Each member's "applied_index" in `json` (atomqctl cluster status --json),
// in order; -1 for one that reported none.
std::vector<long> Versions(const std::string& json) {
  // A replica's object opens at the indent of "replicas"' elements; its
  // "members" are deeper, after its applied_index.
  std::vector<long> out;
  for (size_t start = 0; (start = json.find("{\n   \"", start)) != std::string::npos; ++start) {
    size_t end = json.find("}", start);
    size_t v = json.find("\"applied_index\": \"", start);
    out.push_back(v != std::string::npos && v < end ? std::stol(json.substr(v + 18)) : -1);
  }
  return out;
}

TEST(ReplicaTest, ClusterStatusAndMetricsShowEveryReplicasVersion) {
  Cluster c(ClusterOptions{.participants = 1, .replicas = 3, .participant_metrics = true});
  c.StartAll();
  c.CreateQueue(1, "q");
  for (int n = 0; n < 5; ++n) {
    Ledger ledger;
    RunTxn(c, absl::StrCat("t", n), &ledger);
  }
  const std::string members = PeerMembers(c);
  const std::string ctl =
      absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl cluster status --members='", members, "'");
  std::string json;
  std::vector<long> v;
  for (int tries = 0; tries < 50; ++tries) {
    json = RunCommand(ctl + " --json 2>&1");
    v = Versions(json);
    if (v.size() == 3 && v[0] > 0 && v[0] == v[1] && v[1] == v[2]) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(v.size(), 3u) << json;
  EXPECT_GT(v[0], 5) << json;  // the queue, the transactions, the barrier
  EXPECT_EQ(v[0], v[1]) << json;
  EXPECT_EQ(v[1], v[2]) << json;
  size_t leaders = 0;
  for (size_t at = 0; (at = json.find("\"role\": \"leader\"", at)) != std::string::npos; ++at) {
    ++leaders;
  }
  EXPECT_EQ(leaders, 1u) << json;
  EXPECT_NE(json.find("\"client_address\": \"" + c.replica_address(1, c.LeaderOf(1)) + "\""),
            std::string::npos)
      << json;
  const int leader = c.LeaderOf(1);
  for (int j = 1; j <= 3; ++j) {
    EXPECT_EQ(c.ReplicaMetric(1, j, "atomq_replica_applied_index"), double(v[j - 1])) << j;
    EXPECT_EQ(c.ReplicaMetric(1, j, "atomq_replica_leader"), double(leader)) << j;
    EXPECT_GE(c.ReplicaMetric(1, j, "atomq_replica_term"), 1) << j;
    // Every replica writes its own disk and says so; the served node's
    // metrics come from the leader only.
    EXPECT_GT(c.ReplicaMetric(1, j, "atomq_storage_batches_total"), 0) << j;
    EXPECT_GT(c.ReplicaMetric(1, j, "atomq_storage_fsyncs_total"), 0) << j;
    EXPECT_GT(c.ReplicaMetric(1, j, "process_cpu_seconds_total"), 0) << j;
    const double erased = c.ReplicaMetric(1, j, "atomq_outcomes_erased_total");
    if (j == leader) {
      EXPECT_GE(erased, 0) << j;
    } else {
      EXPECT_EQ(erased, -1) << j;
    }
  }
  // Without --members: every group named by client addresses, asked there.
  const std::string by_client = absl::StrCat(
      ATOMQ_BIN_DIR, "/atomqctl --participants='p1=", c.participant_address(1), "' cluster status");
  const std::string client_json = RunCommand(by_client + " --json 2>&1");
  const std::vector<long> at_clients = Versions(client_json);
  ASSERT_EQ(at_clients.size(), 3u) << client_json;
  EXPECT_GE(at_clients[0], v[0]) << client_json;
  EXPECT_NE(client_json.find("\"group\": \"p1\""), std::string::npos) << client_json;
  EXPECT_NE(RunCommand(by_client + " 2>&1").find("p1 (" + c.participant_address(1) + ")"),
            std::string::npos);
  // A member that is down shows as unreachable; the others still answer.
  c.KillReplica(1, c.LeaderOf(1) % 3 + 1);
  const std::string table = RunCommand(ctl + " 2>&1");
  EXPECT_NE(table.find("unreachable"), std::string::npos) << table;
  EXPECT_NE(table.find("leader*"), std::string::npos) << table;
}

// Participant 1 as the console at 127.0.0.1:`port` shows it; fails the
// test when the page cannot be read.
v1::ConsoleNode ConsoleNodeOf(int port) {
  std::optional<std::string> body = HttpGet(port, "/api/cluster");
  EXPECT_TRUE(body.has_value());
  v1::ConsoleCluster cluster;
  if (body) EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(*body, &cluster).ok()) << *body;
  for (const v1::ConsoleNode& n : cluster.nodes()) {
    if (n.id() == "p1" && n.role() == "participant") return n;
  }
  ADD_FAILURE() << "no p1 in " << cluster.ShortDebugString();
  return {};
}

// A coordinator knows a participant group by its members' client
// addresses: its console shows each replica's version as the replica tells
// it there (Replica.Status on the client address, leader and followers
// alike), which is all it serves of the group's own service.
TEST(ReplicaTest, ACoordinatorsConsoleShowsEveryReplicasVersion) {
  const int http = FreePort();
  Cluster c(ClusterOptions{.participants = 1,
                           .replicas = 3,
                           .coordinator_args = {absl::StrCat("--http_listen=127.0.0.1:", http)}});
  c.StartAll();
  c.CreateQueue(1, "q");
  Ledger ledger;
  for (int n = 0; n < 5; ++n) RunTxn(c, absl::StrCat("t", n), &ledger);
  v1::ConsoleNode node;
  auto settled = [&] {
    node = ConsoleNodeOf(http);
    if (node.members_size() != 3) return false;
    for (const v1::ConsoleMember& m : node.members()) {
      if (!m.replica().error().empty() || m.replica().lag() != 0 ||
          m.replica().applied_index() != node.members(0).replica().applied_index()) {
        return false;
      }
    }
    return true;
  };
  for (int tries = 0; tries < 50 && !settled(); ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(settled()) << node.ShortDebugString();
  const int leader = c.LeaderOf(1);
  std::set<uint64_t> ids;
  for (int j = 1; j <= 3; ++j) {
    const v1::ConsoleMember& m = node.members(j - 1);
    EXPECT_EQ(m.address(), c.replica_address(1, j));
    EXPECT_EQ(m.replica().client_address(), c.replica_address(1, j));
    EXPECT_EQ(m.replica().group(), "p1");
    EXPECT_GT(m.replica().applied_index(), 5u);  // the queue, the transactions
    EXPECT_EQ(m.replica().role(), j == leader ? "leader" : "follower") << j;
    EXPECT_EQ(m.health(), j == leader ? "serving" : "standby") << j;
    ids.insert(m.replica().member());
  }
  EXPECT_EQ(ids.size(), 3u);
  const int follower = leader % 3 + 1;
  for (int j : {leader, follower}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::DeliverResponse resp;
    grpc::Status s = v1::Replica::NewStub(c.Channel(c.replica_address(1, j)))
                         ->Deliver(&ctx, v1::DeliverRequest(), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << j << ": " << s.error_message();
  }
  // A member that is down is unreachable; the others go on and say so.
  const uint64_t before = node.members(0).replica().applied_index();
  c.KillReplica(1, follower);
  for (int n = 0; n < 3; ++n) RunTxn(c, absl::StrCat("u", n), &ledger);
  node = ConsoleNodeOf(http);
  ASSERT_EQ(node.members_size(), 3);
  for (int j = 1; j <= 3; ++j) {
    const v1::ConsoleMember& m = node.members(j - 1);
    if (j == follower) {
      EXPECT_EQ(m.health(), "unreachable");
      EXPECT_FALSE(m.has_replica());
    } else {
      EXPECT_GT(m.replica().applied_index(), before) << j;
    }
  }
}

TEST(ReplicaTest, LeadershipMovesOnRequestWhileTransactionsRun) {
  Cluster c(ClusterOptions{.participants = 1, .replicas = 3});
  c.StartAll();
  c.CreateQueue(1, "q");
  const int leader = c.LeaderOf(1);
  const int next = leader % 3 + 1;
  const std::string members = PeerMembers(c);
  Ledger ledger;
  std::atomic<bool> done{false};
  std::thread load([&] {
    for (int n = 0; !done; ++n) RunTxn(c, absl::StrCat("t", n), &ledger);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::string out = RunCommand(absl::StrCat(
      ATOMQ_BIN_DIR, "/atomqctl cluster transfer --members='", members, "' --to=", next, " 2>&1"));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  done = true;
  load.join();
  EXPECT_NE(out.find(absl::StrCat("member ", next, " leads and serves")), std::string::npos) << out;
  EXPECT_EQ(c.LeaderOf(1), next);
  const size_t committed = ledger.committed.size();
  Ledger after;
  RunTxn(c, "after", &after);
  EXPECT_EQ(after.committed.size(), 1u);
  EXPECT_GT(committed, 5u);
  for (const std::string& id : after.committed) ledger.committed.insert(id);
  ExpectExactlyCommitted(c, 1, ledger);
  // Asking a member that is not of the group is refused.
  const std::string bad = RunCommand(absl::StrCat(
      ATOMQ_BIN_DIR, "/atomqctl cluster transfer --members='", members, "' --to=9 2>&1"));
  EXPECT_NE(bad.find("INVALID_ARGUMENT"), std::string::npos) << bad;
}

// One participant as a group of three behind peer proxies, with metrics.
ClusterOptions ProxiedGroup() {
  ClusterOptions o;
  o.participants = 1;
  o.replicas = 3;
  o.peer_proxies = true;
  o.participant_metrics = true;
  return o;
}

// Every member's version as its /metrics says, [1..3]; true once equal.
bool VersionsAgree(Cluster& c, double* versions) {
  for (int j = 1; j <= 3; ++j) versions[j] = c.ReplicaMetric(1, j, "atomq_replica_applied_index");
  return versions[1] > 0 && versions[1] == versions[2] && versions[2] == versions[3];
}

// Waits up to `ms` for VersionsAgree.
bool AwaitVersionsAgree(Cluster& c, double* versions, int ms) {
  for (int waited = 0;; waited += 50) {
    if (VersionsAgree(c, versions)) return true;
    if (waited >= ms) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// The leader cut off from the other members (their messages no longer
// reach it): it cannot commit, steps down, the two others elect a leader
// and transactions go on; healed, the old leader catches up to the same
// version, and every committed message is there once.
TEST(ReplicaTest, ALeaderCutOffFromItsFollowersIsReplacedAndCatchesUpWhenHealed) {
  Cluster c(ProxiedGroup());
  c.StartAll();
  c.CreateQueue(1, "q");
  Ledger ledger;
  for (int n = 0; n < 10; ++n) RunTxn(c, absl::StrCat("before-", n), &ledger);
  const int old_leader = c.LeaderOf(1);
  ASSERT_NE(old_leader, 0);
  c.CutPeer(1, old_leader, true);
  int new_leader = 0;
  for (int tries = 0; tries < 200; ++tries) {
    new_leader = c.LeaderOf(1, 0);
    if (new_leader != 0 && new_leader != old_leader) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_NE(new_leader, 0);
  ASSERT_NE(new_leader, old_leader);
  EXPECT_EQ(CommitMore(c, "cut", 10, 20, &ledger), 10u)
      << "transactions stopped committing while the old leader was cut off";

  c.CutPeer(1, old_leader, false);
  double versions[4] = {0, 0, 0, 0};
  bool converged = false;
  for (int tries = 0; tries < 200 && !converged; ++tries) {
    converged = VersionsAgree(c, versions);
    if (!converged) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(converged) << versions[1] << " " << versions[2] << " " << versions[3];
  EXPECT_EQ(c.ReplicaMetric(1, old_leader, "atomq_replica_leader"), double(c.LeaderOf(1)));
  ExpectExactlyCommitted(c, 1, ledger);
}

// A partition that sends no reset: the leader's connection to a follower
// goes silent for good. Keepalive pings on peer channels find it dead, a
// new connection is made, and the follower catches up.
TEST(ReplicaTest, AFollowerBehindASilentConnectionCatchesUp) {
  Cluster c(ProxiedGroup());
  c.StartAll();
  c.CreateQueue(1, "q");
  const int leader = c.LeaderOf(1);
  const int follower = leader % 3 + 1;
  c.SilencePeer(1, follower);
  Ledger ledger;
  for (int n = 0; n < 10; ++n) RunTxn(c, absl::StrCat("t", n), &ledger);
  EXPECT_EQ(ledger.committed.size(), 10u);
  double versions[4] = {0, 0, 0, 0};
  const bool agree = AwaitVersionsAgree(c, versions, 10000);
  EXPECT_TRUE(agree) << "member " << follower << " stayed behind: " << versions[1] << " "
                     << versions[2] << " " << versions[3];
}

TEST(ReplicaTest, AFollowerWhoseDiskWasWipedIsRefusedAndTheGroupGoesOn) {
  Cluster c(ClusterOptions{.participants = 1, .replicas = 3});
  c.StartAll();
  c.CreateQueue(1, "q");
  Ledger ledger;
  for (int n = 0; n < 5; ++n) RunTxn(c, absl::StrCat("t", n), &ledger);
  const int leader = c.LeaderOf(1);
  const int wiped = leader % 3 + 1;
  c.KillReplica(1, wiped);
  std::filesystem::remove_all(absl::StrCat(c.dir(), "/p1-r", wiped));
  c.StartReplica(1, wiped);
  const std::string members = PeerMembers(c);
  const std::string ctl =
      absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl cluster status --members='", members, "' 2>&1");
  std::string table;
  for (int tries = 0; tries < 50; ++tries) {
    table = RunCommand(ctl);
    if (table.find("takes no part") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_NE(table.find(absl::StrCat("member ", wiped, " takes no part")), std::string::npos)
      << table;
  EXPECT_NE(table.find("lost its data"), std::string::npos) << table;
  // The other two still commit, and a wiped follower cannot become leader
  // when the leader goes: one healthy replica of three is not a majority.
  for (int n = 0; n < 5; ++n) RunTxn(c, absl::StrCat("u", n), &ledger);
  EXPECT_EQ(ledger.committed.size(), 10u);
  c.KillReplica(1, leader);
  EXPECT_EQ(c.LeaderOf(1, 3000), 0) << "a replica that lost its disk took part in an election";
  c.StartReplica(1, leader);
  EXPECT_NE(c.LeaderOf(1), 0);
  ExpectExactlyCommitted(c, 1, ledger);
}

// docs/design.md 10.2, a lost disk: the member whose disk is gone comes
// back as a new member at the same addresses (--join), and atomqctl cluster
// replace removes the old one, adds the new one, catches it up from the log
// and makes it a voter; the group keeps every committed message, and the new
// member counts in the majority. Callers change nothing.
TEST(ReplicaTest, AMemberWhoseDiskWasLostIsReplacedAndCountsInTheMajority) {
  Cluster c(ClusterOptions{.participants = 1, .replicas = 3, .participant_metrics = true});
  c.StartAll();
  c.CreateQueue(1, "q");
  Ledger ledger;
  ASSERT_EQ(CommitMore(c, "before", 10, 60, &ledger), 10u);
  const int leader = c.LeaderOf(1);
  const int lost = leader % 3 + 1;
  c.ReplaceReplica(1, lost, 4);
  const std::string members = PeerMembers(c);
  const std::string ctl = absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl cluster ");
  const std::string group = absl::StrCat(" --members='", members, "'");
  // The new member waits: it is no voter, and no leader knows it yet.
  std::string waiting;
  for (int tries = 0; tries < 50; ++tries) {
    waiting = RunCommand(ctl + "status" + group + " --json 2>&1");
    if (waiting.find("\"member\": \"4\"") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_NE(waiting.find("\"member\": \"4\""), std::string::npos) << waiting;
  // Transactions run while the member is replaced.
  std::atomic<bool> done{false};
  std::thread load([&] {
    for (int n = 0; !done; ++n) RunTxn(c, absl::StrCat("during-", n), &ledger);
  });
  const std::string out = RunCommand(absl::StrCat(
      ctl, "replace", group, " --old=", lost, " --id=4 --client=", c.replica_address(1, lost),
      " --peer=", c.replica_peer_address(1, lost), " 2>&1"));
  done = true;
  load.join();
  EXPECT_NE(out.find(absl::StrCat("member 4 replaced member ", lost)), std::string::npos) << out;
  // Removed first: the new member stands where the old one did.
  EXPECT_LT(out.find("removing"), out.find("adding")) << out;
  // Once more is a no-op; an id used before is refused.
  const std::string again = RunCommand(absl::StrCat(
      ctl, "replace", group, " --old=", lost, " --id=4 --client=", c.replica_address(1, lost),
      " --peer=", c.replica_peer_address(1, lost), " 2>&1"));
  EXPECT_NE(again.find("already replaced"), std::string::npos) << again;
  const std::string reused = RunCommand(absl::StrCat(
      ctl, "add", group, " --id=", lost, " --client=127.0.0.1:1 --peer=127.0.0.1:2 2>&1"));
  EXPECT_NE(reused.find("was used before"), std::string::npos) << reused;
  const std::string table = RunCommand(ctl + "status" + group + " 2>&1");
  EXPECT_NE(table.find("  4     voter"), std::string::npos) << table;
  EXPECT_EQ(table.find(absl::StrCat("  ", lost, "     voter")), std::string::npos) << table;
  // The new member holds the group's version.
  double versions[4] = {0, 0, 0, 0};
  const bool agree = AwaitVersionsAgree(c, versions, 5000);
  EXPECT_TRUE(agree) << versions[1] << " " << versions[2] << " " << versions[3];
  // With the third voter down, the leader and the new member are the
  // majority: commits need member 4's disk.
  const int now_leading = c.LeaderOf(1);
  ASSERT_NE(now_leading, 0);
  const int third = now_leading == lost ? leader : 6 - now_leading - lost;
  c.KillReplica(1, third);
  ASSERT_EQ(CommitMore(c, "two-of-three", 3, 60, &ledger), 3u);
  c.StartReplica(1, third);
  ExpectExactlyCommitted(c, 1, ledger);
}

// docs/design.md 10.2, state transfer: with each log compacted every 20
// entries, a member replacing a lost one is behind the log's start from the
// first; it copies a member's state over Replica.FetchState, then follows
// the log, and once it leads it serves every committed message.
TEST(ReplicaTest, AReplacementBehindTheCompactedLogCopiesTheStateAndServesIt) {
  ClusterOptions o{.participants = 1, .replicas = 3, .participant_metrics = true};
  o.participant_args = {"--snapshot_entries=20", "--snapshot_trailing=5"};
  Cluster c(o);
  c.StartAll();
  c.CreateQueue(1, "q");
  Ledger ledger;
  ASSERT_EQ(CommitMore(c, "before", 30, 60, &ledger), 30u);
  const int leader = c.LeaderOf(1);
  EXPECT_GT(c.ReplicaMetric(1, leader, "atomq_replica_snapshot_index"), 0);
  const int lost = leader % 3 + 1;
  c.ReplaceReplica(1, lost, 4);
  const std::string members = PeerMembers(c);
  const std::string ctl = absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl cluster ");
  const std::string group = absl::StrCat(" --members='", members, "'");
  const std::string out = RunCommand(absl::StrCat(
      ctl, "replace", group, " --old=", lost, " --id=4 --client=", c.replica_address(1, lost),
      " --peer=", c.replica_peer_address(1, lost), " 2>&1"));
  EXPECT_NE(out.find(absl::StrCat("member 4 replaced member ", lost)), std::string::npos) << out;
  EXPECT_EQ(c.ReplicaMetric(1, lost, "atomq_replica_state_copies_total"), 1);
  ASSERT_EQ(CommitMore(c, "after", 5, 60, &ledger), 5u);
  const std::string moved = RunCommand(absl::StrCat(ctl, "transfer", group, " --to=4 2>&1"));
  EXPECT_NE(moved.find("member 4 leads and serves"), std::string::npos) << moved;
  ASSERT_EQ(c.LeaderOf(1), lost);
  ExpectExactlyCommitted(c, 1, ledger);
}

// A member that is gone, replaced by one elsewhere (another host): removed
// first, so that a promotion cut short by a crashed leader cannot leave the
// group needing the vote of a member that does not know it votes.
TEST(ReplicaTest, AMemberThatIsGoneIsRemovedBeforeItsReplacementElsewhereIsAdded) {
  Cluster c(ClusterOptions{.participants = 1, .replicas = 3});
  c.StartAll();
  c.CreateQueue(1, "q");
  Ledger ledger;
  ASSERT_EQ(CommitMore(c, "before", 5, 60, &ledger), 5u);
  const int leader = c.LeaderOf(1);
  const int lost = leader % 3 + 1;
  const std::string old_peer = c.replica_peer_address(1, lost);
  std::string members;
  for (int j = 1; j <= 3; ++j) {
    if (j != lost)
      absl::StrAppend(&members, members.empty() ? "" : "|", c.replica_peer_address(1, j));
  }
  c.ReplaceReplica(1, lost, 4, /*elsewhere=*/true);
  ASSERT_NE(c.replica_peer_address(1, lost), old_peer);
  const std::string out =
      RunCommand(absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl cluster replace --members='", members,
                              "' --old=", lost, " --id=4 --client=", c.replica_address(1, lost),
                              " --peer=", c.replica_peer_address(1, lost), " 2>&1"));
  EXPECT_NE(out.find(absl::StrCat("member 4 replaced member ", lost)), std::string::npos) << out;
  EXPECT_NE(out.find("removing"), std::string::npos) << out;
  EXPECT_LT(out.find("removing"), out.find("adding")) << out;
}

// Every member's disk is lost: one member's backup begins the group again
// (restore --new_group). The others join on empty disks under new ids, copy
// the restored state (the new group's log begins after it), and every
// transaction committed before the backup is there once, whichever member
// leads.
TEST(ReplicaTest, AGroupThatLostEveryDiskBeginsAgainFromOneMembersBackup) {
  Cluster c(ClusterOptions{.participants = 1, .replicas = 3, .participant_metrics = true});
  c.StartAll();
  c.CreateQueue(1, "q");
  Ledger ledger;
  ASSERT_EQ(CommitMore(c, "before", 10, 60, &ledger), 10u);
  double versions[4] = {0, 0, 0, 0};
  const bool agree = AwaitVersionsAgree(c, versions, 5000);
  ASSERT_TRUE(agree);
  const std::string ctl = absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl ");
  const std::string data = c.dir() + "/p1-r1";
  const std::string backup = c.dir() + "/p1.backup";
  const std::string taken =
      RunCommand(ctl + "backup --data_dir=" + data + " --to=" + backup + " 2>&1");
  ASSERT_NE(taken.find("backup of participant replica"), std::string::npos) << taken;
  for (int j = 1; j <= 3; ++j) {
    c.KillReplica(1, j);
    std::filesystem::remove_all(absl::StrCat(c.dir(), "/p1-r", j));
  }
  const std::string restore = ctl + "restore --from=" + backup + " --data_dir=" + data + " --id=p1";
  const std::string refused = RunCommand(restore + " 2>&1");
  EXPECT_NE(refused.find("begin a new group from it (--new_group)"), std::string::npos) << refused;
  EXPECT_FALSE(std::filesystem::exists(data + "/data.mdb"));
  const std::string self =
      absl::StrCat("1=", c.replica_address(1, 1), "/", c.replica_peer_address(1, 1));
  const std::string restored = RunCommand(restore + " --new_group=" + self + " 2>&1");
  ASSERT_NE(restored.find("as the only member"), std::string::npos) << restored;
  EXPECT_FALSE(std::filesystem::exists(data + "/new-group.tmp"));
  c.StartReplica(1, 1);
  ASSERT_EQ(c.LeaderOf(1), 1);
  // The new group goes on from the backup's version.
  EXPECT_GT(c.ReplicaMetric(1, 1, "atomq_replica_applied_index"), versions[1]);
  EXPECT_EQ(c.ReplicaMetric(1, 1, "atomq_replica_snapshot_index"), versions[1]);
  // The others: empty disks, new ids; an old id is refused.
  c.ReplaceReplica(1, 2, 4);
  c.ReplaceReplica(1, 3, 5);
  const std::string group = absl::StrCat(" --members='", c.replica_peer_address(1, 1), "'");
  const std::string reused = RunCommand(
      absl::StrCat(ctl, "cluster add", group, " --id=2 --client=", c.replica_address(1, 2),
                   " --peer=", c.replica_peer_address(1, 2), " 2>&1"));
  EXPECT_NE(reused.find("was used before"), std::string::npos) << reused;
  for (int j : {2, 3}) {
    const uint64_t id = c.member_id(1, j);
    const std::string added = RunCommand(
        absl::StrCat(ctl, "cluster add", group, " --id=", id, " --client=", c.replica_address(1, j),
                     " --peer=", c.replica_peer_address(1, j), " 2>&1"));
    EXPECT_NE(added.find("members now:"), std::string::npos) << added;
    const std::string promoted =
        RunCommand(absl::StrCat(ctl, "cluster promote", group, " --id=", id, " 2>&1"));
    EXPECT_NE(promoted.find(absl::StrCat(id, " (voter)")), std::string::npos) << promoted;
    EXPECT_EQ(c.ReplicaMetric(1, j, "atomq_replica_state_copies_total"), 1) << j;
  }
  ASSERT_EQ(CommitMore(c, "after", 5, 60, &ledger), 5u);
  // Without the restored member, the two added ones are the majority, and
  // they hold everything.
  c.KillReplica(1, 1);
  ASSERT_NE(c.LeaderOf(1), 0);
  ASSERT_EQ(CommitMore(c, "without-1", 3, 60, &ledger), 3u);
  ExpectExactlyCommitted(c, 1, ledger);
}

TEST(ReplicaTest, TransactionsCommitAcrossALeadersLossWithNothingLostOrDoubled) {
  Cluster c(ClusterOptions{.participants = 2, .replicas = 3});
  c.StartAll();
  c.CreateQueue(1, "q");
  c.CreateQueue(2, "q");
  Ledger ledger;
  for (int n = 0; n < 20; ++n) RunTxn(c, absl::StrCat("before-", n), &ledger);
  EXPECT_EQ(ledger.committed.size(), 20u);

  const int old_leader = c.LeaderOf(1);
  ASSERT_NE(old_leader, 0);
  c.KillReplica(1, old_leader);
  // Commits resume once p1 has a new leader and the coordinator found it.
  EXPECT_EQ(CommitMore(c, "after", 20, 30, &ledger), 20u)
      << "transactions stopped committing after p1's leader was killed";
  const int new_leader = c.LeaderOf(1);
  EXPECT_NE(new_leader, 0);
  EXPECT_NE(new_leader, old_leader);

  ExpectExactlyCommitted(c, 1, ledger);
  ExpectExactlyCommitted(c, 2, ledger);

  // The killed replica comes back and catches up; with the leader that
  // replaced it gone too, the group serves from it and the third, and what
  // was acked stays acked.
  c.StartReplica(1, old_leader);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  c.KillReplica(1, new_leader);
  const int third = c.LeaderOf(1, 20000);
  ASSERT_NE(third, 0) << "no leader after the restarted replica rejoined";
  EXPECT_NE(third, new_leader);
  EXPECT_TRUE(c.Drain(1, "q").empty()) << "acked messages came back";
  Ledger later;
  RunTxn(c, "last", &later);
  EXPECT_EQ(later.committed.size(), 1u);
  ExpectExactlyCommitted(c, 1, later);
}

}  // namespace
}  // namespace atomq::testing
