#include "common/rpc_loop.h"

#include <chrono>
#include <future>
#include <thread>

#include "atomq/v1/participant.grpc.pb.h"
#include "common/loop_unary.h"
#include "gtest/gtest.h"

namespace atomq {
namespace {

// Port 1 on loopback: nobody listens there.
constexpr char kNobody[] = "127.0.0.1:1";

TEST(RpcLoopTest, AnOutboundCallEndsOnALoopThreadWithItsError) {
  RpcLoop loop(2);
  auto stub = v1::Queue::NewStub(grpc::CreateChannel(kNobody, grpc::InsecureChannelCredentials()));
  std::promise<std::pair<grpc::StatusCode, std::thread::id>> ended;
  CallOnLoop<v1::ListQueuesResponse>(
      &loop, v1::ListQueuesRequest(), 300, /*wait_for_ready=*/false,
      [&](grpc::ClientContext* ctx, const v1::ListQueuesRequest& r, grpc::CompletionQueue* cq) {
        return stub->PrepareAsyncListQueues(ctx, r, cq);
      },
      [&](const grpc::Status& s, const v1::ListQueuesResponse&) {
        ended.set_value({s.error_code(), std::this_thread::get_id()});
      });
  auto f = ended.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  const auto [code, thread] = f.get();
  EXPECT_NE(code, grpc::StatusCode::OK);
  EXPECT_NE(thread, std::this_thread::get_id());
  EXPECT_GE(loop.events(), 1u);
}

TEST(RpcLoopTest, NothingBeginsOnceShutDown) {
  RpcLoop loop(1);
  loop.Shutdown();
  bool ran = false;
  EXPECT_FALSE(loop.Begin([&](grpc::ServerCompletionQueue*) { ran = true; }));
  EXPECT_FALSE(ran);
  // A call made now neither starts nor reports (nor aborts the process).
  auto stub = v1::Queue::NewStub(grpc::CreateChannel(kNobody, grpc::InsecureChannelCredentials()));
  bool reported = false;
  CallOnLoop<v1::ListQueuesResponse>(
      &loop, v1::ListQueuesRequest(), 300, false,
      [&](grpc::ClientContext* ctx, const v1::ListQueuesRequest& r, grpc::CompletionQueue* cq) {
        return stub->PrepareAsyncListQueues(ctx, r, cq);
      },
      [&](const grpc::Status&, const v1::ListQueuesResponse&) { reported = true; });
  EXPECT_FALSE(reported);
  loop.Shutdown();  // idempotent
}

}  // namespace
}  // namespace atomq
