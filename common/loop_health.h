// gRPC health checking (grpc.health.v1.Health/Check) served on the server's
// own RpcLoop. gRPC's built-in health service runs on its callback API with
// threads that poll the same sockets as the loop, which cost a single client
// several context switches per transaction (docs/design.md 12). Open to
// every caller: load balancers probe it.
#pragma once

#include <atomic>
#include <set>
#include <string>
#include <vector>

#include "common/loop_unary.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace atomq {

// The answer to `req` of a server that serves `names` (and ""), SERVING or
// NOT_SERVING as `serving` says; NOT_FOUND for any other name, as the
// protocol says. Shared by LoopHealth and the recovering stand-in.
grpc::Status AnswerHealth(const std::set<std::string>& names, bool serving,
                          const grpc::health::v1::HealthCheckRequest& req,
                          grpc::health::v1::HealthCheckResponse* resp);

class LoopHealth {
 public:
  // Serves Check on `loop` (before the loop's Serve) for "" and each of
  // `service_names` (full names, e.g. "atomq.v1.Queue"), NOT_SERVING until
  // Set.
  LoopHealth(RpcLoop* loop, const std::vector<std::string>& service_names);

  // SERVING or NOT_SERVING for "" and every name given at construction.
  void Set(bool serving) { serving_ = serving; }

  // What the server registers.
  grpc::Service* service() { return &service_; }

 private:
  void Check(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
             grpc::health::v1::HealthCheckResponse* resp, UnaryReactor* reactor);

  LoopService<grpc::health::v1::Health> service_;
  const std::set<std::string> names_;
  std::atomic<bool> serving_{false};
};

}  // namespace atomq
