// gRPC health checking (grpc.health.v1.Health/Check) served on the server's
// own RpcLoop. gRPC's built-in health service runs on its callback API with
// threads that poll the same sockets as the loop, which cost a single client
// several context switches per transaction (docs/design.md 12). Open to
// every caller: load balancers probe it.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/loop_unary.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace atomq {

class LoopHealth {
 public:
  // Serves Check on `loop` (before the loop's Serve) for "" and each of
  // `service_names` (full names, e.g. "atomq.v1.Queue"), all NOT_SERVING
  // until Set. Any other name is NOT_FOUND, as the protocol says.
  LoopHealth(RpcLoop* loop, const std::vector<std::string>& service_names);

  // SERVING or NOT_SERVING for "" and every name given at construction.
  void Set(bool serving) ABSL_LOCKS_EXCLUDED(mu_);

  // What the server registers.
  grpc::Service* service() { return &service_; }

 private:
  using Status = grpc::health::v1::HealthCheckResponse::ServingStatus;
  void Check(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
             grpc::health::v1::HealthCheckResponse* resp, UnaryReactor* reactor)
      ABSL_LOCKS_EXCLUDED(mu_);

  LoopService<grpc::health::v1::Health> service_;
  absl::Mutex mu_;
  std::map<std::string, Status> status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace atomq
