// Three replicas in one process, each with its own event loop and gRPC
// server on loopback, talking atomq.v1.Replica: they elect a leader, commit
// through it, replace it when it goes; a Deliver that names another group,
// a member not of the group or a malformed message is refused.
#include "replication/grpc_transport.h"

#include <chrono>
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
    n.group =
        std::move(ReplicatedStorage::Open(g, n.local.get(), n.transport.get(), &timers_)).value();
    n.service = std::make_unique<ReplicaService>(n.loop.get(), Access::Open(), kGroup, members_,
                                                 n.group.get());
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
  const std::string& address(uint64_t id) { return members_[id]; }

 private:
  TimerQueue timers_;
  std::map<uint64_t, std::string> members_;
  std::map<uint64_t, Node> nodes_;
};

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

}  // namespace
}  // namespace atomq::replication
