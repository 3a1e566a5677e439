#include "replication/grpc_transport.h"

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/validate.h"
#include "replication/raft_wire.h"

namespace atomq::replication {

void GrpcTransport::Send(uint64_t to, const std::string& address, RaftMessage message) {
  {
    absl::MutexLock lock(&mu_);
    Peer& p = peers_[to];
    if (p.address != address) {
      p.address = address;
      p.stub.reset();
    }
    p.queue.push_back(ToWire(message));
    while (p.queue.size() > options_.queue_max) {
      p.queue.pop_front();
      ++dropped_;
    }
    if (p.in_flight) return;
  }
  Flush(to);
}

void GrpcTransport::SetDisk(std::string disk,
                            std::function<void(uint64_t, const std::string&)> refused) {
  absl::MutexLock lock(&mu_);
  disk_ = std::move(disk);
  refused_ = std::move(refused);
}

uint64_t GrpcTransport::dropped() {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

void GrpcTransport::Flush(uint64_t to) {
  v1::DeliverRequest req;
  std::shared_ptr<v1::Replica::Stub> stub;
  {
    absl::MutexLock lock(&mu_);
    Peer& p = peers_[to];
    if (p.in_flight || p.queue.empty()) return;
    p.in_flight = true;
    if (p.stub == nullptr) p.stub = v1::Replica::NewStub(channels_->Get(p.address));
    stub = p.stub;
    req.set_group(options_.group);
    req.set_from(options_.self);
    req.set_disk(disk_);
    for (v1::RaftMessageProto& m : p.queue) *req.add_messages() = std::move(m);
    p.queue.clear();
  }
  CallOnLoop<v1::DeliverResponse>(
      loop_, std::move(req), options_.timeout_ms, /*wait_for_ready=*/false,
      [stub](grpc::ClientContext* ctx, const v1::DeliverRequest& r, grpc::CompletionQueue* cq) {
        return stub->PrepareAsyncDeliver(ctx, r, cq);
      },
      [this, to, stub](const grpc::Status& status, const v1::DeliverResponse&) {
        // Lost messages are the engine's to resend; the next batch goes.
        std::function<void(uint64_t, const std::string&)> refused;
        {
          absl::MutexLock lock(&mu_);
          peers_[to].in_flight = false;
          if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) refused = refused_;
        }
        if (refused) refused(to, status.error_message());
        Flush(to);
      });
}

ReplicaService::ReplicaService(RpcLoop* loop, std::shared_ptr<const Access> access,
                               std::string group, std::map<uint64_t, std::string> members,
                               ReplicatedStorage* storage, std::map<uint64_t, std::string> clients)
    : access_(std::move(access)),
      group_(std::move(group)),
      members_(std::move(members)),
      storage_(storage),
      clients_(std::move(clients)) {
  ServeMember(loop, &service_, "Deliver", this, &ReplicaService::Deliver);
  ServeMember(loop, &service_, "Status", this, &ReplicaService::Status);
  ServeMember(loop, &service_, "TransferLeadership", this, &ReplicaService::TransferLeadership);
  service_.Check();
}

void ReplicaService::TransferLeadership(grpc::ServerContext* ctx,
                                        const v1::TransferLeadershipRequest* req,
                                        v1::TransferLeadershipResponse*, UnaryReactor* reactor) {
  absl::StatusOr<std::string> who =
      access_->Check(*ctx, "Replica.TransferLeadership", {Role::kOperator});
  if (Refused(reactor, who)) return;
  absl::Status st = members_.count(req->to()) == 0
                        ? absl::InvalidArgumentError(
                              absl::StrCat("member ", req->to(), " is not of group ", group_))
                        : storage_->Transfer(req->to());
  Audit(*who, "transfer-leadership",
        {{"group", group_},
         {"to", absl::StrCat(req->to())},
         {"result", st.ok() ? "OK" : absl::StatusCodeToString(st.code())}});
  reactor->Finish(ToGrpc(st));
}

void ReplicaService::Status(grpc::ServerContext* ctx, const v1::ReplicaStatusRequest*,
                            v1::ReplicaStatus* resp, UnaryReactor* reactor) {
  if (Refused(reactor, access_->Check(*ctx, "Replica.Status", {Role::kOperator, Role::kPeer}))) {
    return;
  }
  const GroupStatus s = storage_->Status();
  resp->set_group(group_);
  resp->set_member(s.id);
  resp->set_role(RoleName(s.state));
  resp->set_term(s.term);
  resp->set_leader_member(s.leader_id);
  resp->set_commit_index(s.commit_index);
  resp->set_applied_index(s.applied_index);
  resp->set_serving(s.serving);
  resp->set_fault(s.fault);
  resp->set_disk(storage_->disk());
  if (auto m = members_.find(s.id); m != members_.end()) resp->set_peer_address(m->second);
  if (auto c = clients_.find(s.id); c != clients_.end()) resp->set_client_address(c->second);
  reactor->Finish(grpc::Status::OK);
}

void ReplicaService::Deliver(grpc::ServerContext* ctx, const v1::DeliverRequest* req,
                             v1::DeliverResponse*, UnaryReactor* reactor) {
  if (Refused(reactor, access_->Check(*ctx, "Replica.Deliver", {Role::kPeer}))) return;
  if (req->group() != group_) {
    return reactor->Finish(grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        absl::StrCat("this replica is of group ", group_, ", not ", Clip(req->group()))));
  }
  auto member = members_.find(req->from());
  if (member == members_.end() || req->from() == 0) {
    return reactor->Finish(
        grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                     absl::StrCat("member ", req->from(), " is not of group ", group_)));
  }
  if (absl::Status st = storage_->CheckPeer(req->from(), req->disk()); !st.ok()) {
    const int64_t now = RealClock().NowMs();
    absl::MutexLock lock(&log_mu_);
    // A replaced member keeps trying: one line per minute.
    if (refusal_logged_ms_ < 0 || now - refusal_logged_ms_ >= 60000) {
      LogLine(absl::StrCat("replica: refused: ", st.message()));
      refusal_logged_ms_ = now;
    }
    return reactor->Finish(ToGrpc(st));
  }
  std::vector<RaftMessage> messages;
  for (const v1::RaftMessageProto& p : req->messages()) {
    absl::StatusOr<RaftMessage> m = FromWire(p, member->first, member->second);
    if (!m.ok()) {
      return reactor->Finish(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(m.status().message())));
    }
    messages.push_back(std::move(*m));
  }
  reactor->Finish(grpc::Status::OK);
  for (RaftMessage& m : messages) storage_->Receive(std::move(m));
}

}  // namespace atomq::replication
