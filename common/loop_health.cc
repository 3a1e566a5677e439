#include "common/loop_health.h"

#include "absl/strings/str_cat.h"
#include "common/validate.h"

namespace atomq {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

grpc::Status AnswerHealth(const std::set<std::string>& names, bool serving,
                          const HealthCheckRequest& req, HealthCheckResponse* resp) {
  if (!req.service().empty() && names.count(req.service()) == 0) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("no service \"", Clip(req.service()), "\""));
  }
  resp->set_status(serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING);
  return grpc::Status::OK;
}

LoopHealth::LoopHealth(RpcLoop* loop, const std::vector<std::string>& service_names)
    : names_(service_names.begin(), service_names.end()) {
  ServeMember(loop, &service_, "Check", this, &LoopHealth::Check);
  service_.Check();
}

void LoopHealth::Check(grpc::ServerContext*, const HealthCheckRequest* req,
                       HealthCheckResponse* resp, UnaryReactor* reactor) {
  reactor->Finish(AnswerHealth(names_, serving_.load(), *req, resp));
}

}  // namespace atomq
