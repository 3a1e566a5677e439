#include "common/loop_health.h"

#include "absl/strings/str_cat.h"
#include "common/validate.h"

namespace atomq {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

LoopHealth::LoopHealth(RpcLoop* loop, const std::vector<std::string>& service_names) {
  status_[""] = HealthCheckResponse::NOT_SERVING;
  for (const std::string& name : service_names) status_[name] = HealthCheckResponse::NOT_SERVING;
  ServeMember(loop, &service_, "Check", this, &LoopHealth::Check);
  service_.Check();
}

void LoopHealth::Set(bool serving) {
  absl::MutexLock lock(&mu_);
  for (auto& [name, status] : status_) {
    status = serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
  }
}

void LoopHealth::Check(grpc::ServerContext*, const HealthCheckRequest* req,
                       HealthCheckResponse* resp, UnaryReactor* reactor) {
  {
    absl::MutexLock lock(&mu_);
    auto it = status_.find(req->service());
    if (it != status_.end()) resp->set_status(it->second);
  }
  if (resp->status() == HealthCheckResponse::UNKNOWN) {
    return reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                        absl::StrCat("no service \"", Clip(req->service()), "\"")));
  }
  reactor->Finish(grpc::Status::OK);
}

}  // namespace atomq
