#include "common/server_util.h"

#include "absl/strings/str_cat.h"
#include "common/free_port.h"
#include "common/metrics.h"
#include "gtest/gtest.h"

namespace atomq {
namespace {

// Channels are made lazily (no connection until a call), so any loopback
// address does; nothing is dialled here.
TEST(ChannelCacheTest, KeepsChannelsUntilFullThenEvictsTheLeastRecentlyUsed) {
  ChannelCache cache(2);
  std::shared_ptr<grpc::Channel> a = cache.Get("127.0.0.1:1");
  std::shared_ptr<grpc::Channel> b = cache.Get("127.0.0.1:2");
  EXPECT_EQ(cache.Get("127.0.0.1:1"), a);  // kept, and now the most recent
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.created(), 2u);

  std::shared_ptr<grpc::Channel> c = cache.Get("127.0.0.1:3");  // evicts :2, not :1
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.Get("127.0.0.1:1"), a);
  EXPECT_EQ(cache.Get("127.0.0.1:3"), c);
  EXPECT_EQ(cache.created(), 3u);
  EXPECT_NE(cache.Get("127.0.0.1:2"), b);  // dialled anew; evicts :1 now
  EXPECT_EQ(cache.created(), 4u);
  EXPECT_NE(cache.Get("127.0.0.1:1"), a);
  EXPECT_EQ(cache.size(), 2u);
}

TEST(ChannelCacheTest, ManyAddressesKeepAtMostMax) {
  ChannelCache cache(8);
  for (int i = 0; i < 2000; ++i) cache.Get("127.0.0.1:" + std::to_string(10000 + i));
  EXPECT_EQ(cache.size(), 8u);
  EXPECT_EQ(cache.created(), 2000u);
}

// Two servers on one port would split its connections between them (gRPC
// and httplib both bind with SO_REUSEPORT unless told not to): the second
// must fail to start instead.
TEST(ServerTest, ASecondServerOnAPortInUseFailsToStart) {
  const std::string listen = absl::StrCat("127.0.0.1:", FreePort());
  auto first = StandInServer::Start(listen, {"atomq.v1.Queue"}, grpc::InsecureServerCredentials());
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = StandInServer::Start(listen, {"atomq.v1.Queue"}, grpc::InsecureServerCredentials());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);

  RpcLoop loop(1);
  auto served = StartServer(listen, {}, 1024, grpc::InsecureServerCredentials(), &loop);
  EXPECT_EQ(served.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(served.status().message().find(listen), std::string::npos) << served.status();

  const std::string metrics = absl::StrCat("127.0.0.1:", FreePort());
  auto m1 = MetricsServer::Start(metrics, [] { return std::string(); });
  ASSERT_TRUE(m1.ok()) << m1.status();
  auto m2 = MetricsServer::Start(metrics, [] { return std::string(); });
  EXPECT_EQ(m2.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace atomq
