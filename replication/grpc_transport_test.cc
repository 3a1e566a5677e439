// Three replicas in one process, each with its own event loop and gRPC
// server on loopback, talking atomq.v1.Replica: they elect a leader, commit
// through it, replace it when it goes; a Deliver that names another group,
// a member not of the group or a malformed message is refused.
#include "replication/grpc_transport.h"

#include <chrono>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/free_port.h"
#include "common/temp_dir.h"
#include "gtest/gtest.h"
#include "replication/replica_testing.h"

namespace atomq::replication {
namespace {

constexpr const char* kDataDb = kTestDataDb;
constexpr char kGroup[] = "p1";

struct Node {
  TempDir dir{"atomq_grpc_replica_test"};
  std::unique_ptr<RpcLoop> loop;
  std::unique_ptr<ChannelCache> channels;
  std::unique_ptr<GrpcTransport> transport;
  std::unique_ptr<Storage> local;
  std::unique_ptr<ReplicatedStorage> group;
  std::unique_ptr<ReplicaService> service;
  std::unique_ptr<grpc::Server> server;
};

class GrpcGroup {
 public:
  GrpcGroup() {
    for (uint64_t id = 1; id <= 3; ++id) {
      members_[id] = absl::StrCat("127.0.0.1:", FreePort());
    }
    for (uint64_t id = 1; id <= 3; ++id) Start(id);
  }
  ~GrpcGroup() {
    for (uint64_t id = 1; id <= 3; ++id) Kill(id);
    timers_.Stop();
  }

  void Start(uint64_t id) {
    Node& n = nodes_[id];
    n.loop = std::make_unique<RpcLoop>(1);
    n.channels = std::make_unique<ChannelCache>();
    n.transport = std::make_unique<GrpcTransport>(n.loop.get(), n.channels.get(),
                                                  GrpcTransport::Options{kGroup, id});
    n.local = OpenReplicaStore(n.dir.path());
    ReplicatedStorage::Options g;
    g.engine.id = id;
    g.engine.address = members_[id];
    g.engine.seed = uint32_t(id);
    g.engine.election_timeout = 300;
    g.engine.heartbeat_timeout = 50;
    for (auto& [m, address] : members_) g.bootstrap.push_back(Member{m, address});
    absl::StatusOr<std::unique_ptr<ReplicatedStorage>> opened =
        ReplicatedStorage::Open(g, n.local.get(), n.transport.get(), &timers_);
    last_open_ = opened.status();
    if (!opened.ok()) {
      n.local.reset();
      return;
    }
    n.group = std::move(*opened);
    ReplicatedStorage* r = n.group.get();
    n.transport->SetDisk(r->disk(),
                         [r](uint64_t peer, const std::string& why) { r->Refused(peer, why); });
    std::map<uint64_t, MemberAddresses> configured;
    for (auto& [m, address] : members_) configured[m] = MemberAddresses{"", address};
    n.service = std::make_unique<ReplicaService>(n.loop.get(), Access::Open(), kGroup,
                                                 std::move(configured), n.group.get());
    absl::StatusOr<std::unique_ptr<grpc::Server>> s =
        StartServer(members_[id], {n.service->service()}, 1 << 24,
                    grpc::InsecureServerCredentials(), n.loop.get());
    ASSERT_TRUE(s.ok()) << s.status();
    n.server = std::move(*s);
  }

  void Kill(uint64_t id) {
    Node& n = nodes_[id];
    if (n.server == nullptr) return;
    n.group->Stop();
    n.server->Shutdown(std::chrono::system_clock::now());
    n.loop->Shutdown();
    n.server.reset();
    n.local.reset();
    n.service.reset();
    n.group.reset();
    n.transport.reset();
    n.channels.reset();
    n.loop.reset();
  }

  uint64_t Leader() {
    return ServingLeader(3, [this](uint64_t id) { return at(id); });
  }
  absl::Status Put(uint64_t id, const std::string& key, const std::string& value,
                   int wait_ms = 5000) {
    return PutThrough(at(id), key, value, wait_ms);
  }
  bool WaitApplied(uint64_t id, uint64_t index) { return replication::WaitApplied(at(id), index); }
  ReplicatedStorage* at(uint64_t id) { return nodes_[id].group.get(); }
  const absl::Status& last_open() const { return last_open_; }
  const std::string& address(uint64_t id) { return members_[id]; }
  // Kills `id` and loses everything on its disk.
  void Wipe(uint64_t id) {
    Kill(id);
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(nodes_[id].dir.path())) {
      std::filesystem::remove_all(e.path(), ec);
    }
  }

 private:
  TimerQueue timers_;
  std::map<uint64_t, std::string> members_;
  std::map<uint64_t, Node> nodes_;
  absl::Status last_open_;
};

// Fresh-start probes run one at a time, each waiting up to a second for an
// unreachable member: asked again every round, they must not queue up ahead
// of a member that answers.
TEST(GrpcTransportTest, ProbesOfAnUnreachableMemberDoNotPileUp) {
  GrpcGroup g;
  ASSERT_NE(g.Leader(), 0u);
  RpcLoop loop(1);
  ChannelCache channels;
  GrpcTransport t(&loop, &channels, GrpcTransport::Options{kGroup, 7});
  const std::string nobody = absl::StrCat("127.0.0.1:", FreePort());
  for (int round = 0; round < 30; ++round) t.Probe(9, nobody, [](absl::StatusOr<PeerLog>) {});
  std::promise<absl::StatusOr<PeerLog>> answered;
  t.Probe(1, g.address(1), [&](absl::StatusOr<PeerLog> a) { answered.set_value(std::move(a)); });
  std::future<absl::StatusOr<PeerLog>> f = answered.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  absl::StatusOr<PeerLog> a = f.get();
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_GT(a->last_index, 0u);
  loop.Shutdown();
}

TEST(GrpcTransportTest, AGroupOverGrpcCommitsAndReplacesALostLeader) {
  GrpcGroup g;
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(g.Put(l, absl::StrCat("k", i), "v").ok()) << i;
  const uint64_t applied = g.at(l)->Status().applied_index;
  for (uint64_t id = 1; id <= 3; ++id) {
    ASSERT_TRUE(g.WaitApplied(id, applied)) << id;
    absl::StatusOr<std::optional<std::string>> v = g.at(id)->Get(kDataDb, "k19");
    ASSERT_TRUE(v.ok() && v->has_value()) << id;
  }
  g.Kill(l);
  uint64_t l2 = g.Leader();
  ASSERT_NE(l2, 0u);
  ASSERT_NE(l2, l);
  EXPECT_TRUE(g.Put(l2, "after", "v").ok());
  g.Start(l);
  ASSERT_TRUE(g.WaitApplied(l, g.at(l2)->Status().applied_index));
}

TEST(GrpcTransportTest, DeliverRefusesOtherGroupsStrangersAndMalformedMessages) {
  GrpcGroup g;
  ASSERT_NE(g.Leader(), 0u);
  auto stub =
      v1::Replica::NewStub(grpc::CreateChannel(g.address(1), grpc::InsecureChannelCredentials()));
  auto call = [&](const v1::DeliverRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::DeliverResponse resp;
    return stub->Deliver(&ctx, req, &resp);
  };
  v1::DeliverRequest req;
  req.set_group("p2");
  req.set_from(2);
  EXPECT_EQ(call(req).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  req.set_group(kGroup);
  req.set_from(9);
  EXPECT_EQ(call(req).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  req.set_from(2);
  req.set_disk(g.at(2)->disk());
  req.add_messages()->set_type(42);
  EXPECT_EQ(call(req).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // A snapshot offered by a member is refused, not half installed.
  req.mutable_messages(0)->set_type(5);
  req.mutable_messages(0)->set_term(1000);
  req.mutable_messages(0)->set_snapshot_index(10);
  req.mutable_messages(0)->set_snapshot_term(1000);
  EXPECT_TRUE(call(req).ok());
  // The group is unharmed.
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  EXPECT_TRUE(g.Put(l, "still", "ok").ok());
}

// Amnesia (docs/design.md 10.2): a member whose disk was lost comes back
// with another disk id; the group's registry names its old one, so the
// others refuse its messages (it can neither vote twice nor lead), it
// learns from the registry that it lost its data and stops, and a restart
// on that disk is refused.
TEST(GrpcTransportTest, AMemberThatLostItsDiskIsRefusedAndTheGroupGoesOn) {
  GrpcGroup g;
  const uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  ASSERT_TRUE(g.Put(l, "before", "1").ok());
  const uint64_t f = l % 3 + 1;
  auto stub =
      v1::Replica::NewStub(grpc::CreateChannel(g.address(l), grpc::InsecureChannelCredentials()));
  auto deliver_as_f = [&](const std::string& disk) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::DeliverRequest req;
    req.set_group(kGroup);
    req.set_from(f);
    req.set_disk(disk);
    v1::DeliverResponse resp;
    return stub->Deliver(&ctx, req, &resp);
  };
  // The leader registers every member it hears from (a member that started
  // after the others joins a moment later).
  for (int i = 0; i < 100 && !g.at(l)->Registered(f); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(g.at(l)->Registered(f));
  grpc::Status forged;
  for (int i = 0; i < 100; ++i) {
    forged = deliver_as_f("another disk");
    if (forged.error_code() == grpc::StatusCode::FAILED_PRECONDITION) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(forged.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << forged.error_message();
  EXPECT_NE(forged.error_message().find("replace it"), std::string::npos) << forged.error_message();
  const std::string old_disk = g.at(f)->disk();
  EXPECT_TRUE(deliver_as_f(old_disk).ok());

  g.Wipe(f);
  g.Start(f);
  EXPECT_NE(g.at(f)->disk(), old_disk);
  // The others refuse it, and it says so.
  bool faulted = false;
  for (int i = 0; i < 100 && !faulted; ++i) {
    faulted = !g.at(f)->Status().fault.empty();
    if (!faulted) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(faulted);
  EXPECT_NE(g.at(f)->Status().fault.find("lost its data"), std::string::npos)
      << g.at(f)->Status().fault;
  // The two others go on, and the wiped one never serves.
  ASSERT_TRUE(g.Put(l, "after", "2").ok());
  g.Kill(l);
  const uint64_t l2 = g.Leader();
  EXPECT_NE(l2, f);
  EXPECT_EQ(l2, 0u) << "one member of three cannot lead; the wiped one takes no part";
  // Restarted on its new disk, it is still refused: the registry is the
  // others', not its own.
  g.Kill(f);
  g.Start(f);
  ASSERT_TRUE(g.last_open().ok()) << g.last_open();
  g.Start(l);
  faulted = false;
  for (int i = 0; i < 100 && !faulted; ++i) {
    faulted = !g.at(f)->Status().fault.empty();
    if (!faulted) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(faulted);
  const uint64_t l3 = g.Leader();
  EXPECT_NE(l3, 0u);
  EXPECT_NE(l3, f);
}

}  // namespace
}  // namespace atomq::replication
