#include "replication/grpc_transport.h"

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/validate.h"
#include "replication/raft_wire.h"
#include "replication/state_transfer.h"

namespace atomq::replication {
namespace {

// host:port, as a flag would name it; nothing that would split a
// configuration address or a member list.
absl::Status ValidateAddress(const char* field, const std::string& address) {
  constexpr size_t kMax = 255;
  if (address.empty() || address.size() > kMax || address.find(':') == std::string::npos ||
      address.find_first_of("/,|= \t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " \"", Clip(address), "\" is not host:port (at most ", kMax, " bytes)"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string ConfigAddress(const MemberAddresses& a) {
  return a.client.empty() ? a.peer : absl::StrCat(a.client, "/", a.peer);
}

MemberAddresses SplitConfigAddress(const std::string& address) {
  const size_t slash = address.find('/');
  if (slash == std::string::npos) return MemberAddresses{"", address};
  return MemberAddresses{address.substr(0, slash), address.substr(slash + 1)};
}

bool FindMember(const std::vector<Member>& members,
                const std::map<uint64_t, MemberAddresses>& configured, uint64_t id,
                MemberAddresses* out) {
  if (members.empty()) {
    auto it = configured.find(id);
    if (it == configured.end()) return false;
    *out = it->second;
    return true;
  }
  for (const Member& m : members) {
    if (m.id == id) {
      *out = SplitConfigAddress(m.address);
      return true;
    }
  }
  return false;
}

GrpcTransport::GrpcTransport(RpcLoop* loop, ChannelCache* channels, Options options)
    : loop_(loop), channels_(channels), options_(std::move(options)) {
  fetcher_ = std::thread([this] { Fetcher(); });
}

GrpcTransport::~GrpcTransport() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  fetcher_.join();
}

void GrpcTransport::Queue(std::function<void()> job) {
  absl::MutexLock lock(&mu_);
  jobs_.push_back(std::move(job));
}

void GrpcTransport::FetchState(uint64_t to, const std::string& address, uint64_t bytes_max,
                               FetchedFn done) {
  auto f = std::make_shared<Fetch>(
      Fetch{to, SplitConfigAddress(address).peer, bytes_max, std::move(done)});
  Queue([this, f] { f->done(Copy(*f)); });
}

void GrpcTransport::Probe(uint64_t to, const std::string& address, ProbedFn done) {
  absl::MutexLock lock(&mu_);
  const bool queued = probes_waiting_.count(to) > 0;
  probes_waiting_[to] = std::move(done);
  if (queued) return;
  jobs_.push_back([this, to, peer = SplitConfigAddress(address).peer] {
    ProbedFn done;
    {
      absl::MutexLock lock(&mu_);
      done = std::move(probes_waiting_.at(to));
      probes_waiting_.erase(to);
    }
    done(AskLog(to, peer));
  });
}

absl::StatusOr<PeerLog> GrpcTransport::AskLog(uint64_t to, const std::string& peer) {
  if (peer.empty())
    return absl::FailedPreconditionError(absl::StrCat("no address for member ", to));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(std::min<uint32_t>(options_.timeout_ms, 1000)));
  // Members of a new group start at about the same time: wait for the
  // connection rather than fail while the peer is not listening yet.
  ctx.set_wait_for_ready(true);
  v1::ReplicaStatusRequest req;
  req.set_about_member(options_.self);
  v1::ReplicaStatus resp;
  grpc::Status st = v1::Replica::NewStub(channels_->Get(peer))->Status(&ctx, req, &resp);
  if (!st.ok()) return absl::UnavailableError(st.error_message());
  return PeerLog{resp.last_index(), resp.snapshot_index(), resp.registered()};
}

void GrpcTransport::Fetcher() {
  for (;;) {
    std::function<void()> job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](GrpcTransport* t)
               ABSL_NO_THREAD_SAFETY_ANALYSIS { return t->stopping_ || !t->jobs_.empty(); },
          this));
      if (stopping_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

absl::StatusOr<std::vector<Write>> GrpcTransport::Copy(const Fetch& f) {
  if (f.peer.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("no address for member ", f.to));
  }
  std::unique_ptr<v1::Replica::Stub> stub = v1::Replica::NewStub(channels_->Get(f.peer));
  std::vector<Write> out;
  uint64_t bytes = 0;
  v1::FetchStateRequest req;
  req.set_group(options_.group);
  req.set_from(options_.self);
  for (uint64_t piece = 0;; ++piece) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return absl::CancelledError("the replica is stopping");
      req.set_disk(disk_);
    }
    req.set_piece(piece);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(std::max<uint32_t>(options_.timeout_ms, 10000)));
    v1::StatePiece resp;
    grpc::Status st = stub->FetchState(&ctx, req, &resp);
    if (!st.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                          absl::StrCat("member ", f.to, ": ", st.error_message()));
    }
    req.set_transfer(resp.transfer());
    std::vector<Write> records;
    for (v1::StateRecord& r : *resp.mutable_records()) {
      bytes += r.key().size() + r.value().size();
      records.push_back(Write{std::move(*r.mutable_db()), std::move(*r.mutable_key()),
                              std::move(*r.mutable_value()), false});
    }
    if (PieceCrc(records) != resp.crc32c()) {
      return absl::DataLossError(
          absl::StrCat("piece ", piece, " from member ", f.to, " does not match its CRC"));
    }
    if (bytes > f.bytes_max) {
      return absl::ResourceExhaustedError(absl::StrCat("member ", f.to, "'s state is over ",
                                                       f.bytes_max >> 20,
                                                       " MiB (--state_transfer_mb_max)"));
    }
    for (Write& w : records) out.push_back(std::move(w));
    if (resp.last()) return out;
  }
}

void GrpcTransport::Send(uint64_t to, const std::string& address, RaftMessage message) {
  {
    absl::MutexLock lock(&mu_);
    Peer& p = peers_[to];
    const std::string peer = SplitConfigAddress(address).peer;
    if (p.address != peer) {
      p.address = peer;
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
                               std::string group, std::map<uint64_t, MemberAddresses> configured,
                               ReplicatedStorage* storage)
    : access_(std::move(access)),
      group_(std::move(group)),
      configured_(std::move(configured)),
      storage_(storage) {
  ServeMember(loop, &service_, "Deliver", this, &ReplicaService::Deliver);
  ServeMember(loop, &service_, "Status", this, &ReplicaService::Status);
  ServeMember(loop, &service_, "TransferLeadership", this, &ReplicaService::TransferLeadership);
  ServeMember(loop, &service_, "ChangeMembers", this, &ReplicaService::ChangeMembers);
  ServeMember(loop, &service_, "FetchState", this, &ReplicaService::FetchState);
  service_.Check();
}

void ReplicaService::ChangeMembers(grpc::ServerContext* ctx, const v1::ChangeMembersRequest* req,
                                   v1::ReplicaStatus* resp, UnaryReactor* reactor) {
  absl::StatusOr<std::string> who =
      access_->Check(*ctx, "Replica.ChangeMembers", {Role::kOperator});
  if (Refused(reactor, who)) return;
  MemberChange change = MemberChange::kAdd;
  absl::Status bad;
  switch (req->change()) {
    case v1::ChangeMembersRequest::ADD:
      if (absl::Status a = ValidateAddress("client_address", req->client_address()); !a.ok()) {
        bad = a;
      } else if (absl::Status p = ValidateAddress("peer_address", req->peer_address()); !p.ok()) {
        bad = p;
      } else if (req->client_address() == req->peer_address()) {
        bad = absl::InvalidArgumentError("client_address and peer_address must differ");
      }
      break;
    case v1::ChangeMembersRequest::PROMOTE:
      change = MemberChange::kPromote;
      break;
    case v1::ChangeMembersRequest::REMOVE:
      change = MemberChange::kRemove;
      break;
    default:
      bad = absl::InvalidArgumentError("change must be ADD, PROMOTE or REMOVE");
  }
  if (bad.ok() && req->member() == 0) bad = absl::InvalidArgumentError("member must be above 0");
  const std::string what = v1::ChangeMembersRequest::Change_Name(req->change());
  auto audit = [this, who = *who, what, member = req->member()](const absl::Status& st) {
    Audit(who, "change-members",
          {{"group", group_},
           {"change", what},
           {"member", absl::StrCat(member)},
           {"result", st.ok() ? "OK" : absl::StatusCodeToString(st.code())}});
  };
  if (!bad.ok()) {
    audit(bad);
    return reactor->Finish(ToGrpc(bad));
  }
  Member m{req->member(),
           ConfigAddress(MemberAddresses{req->client_address(), req->peer_address()}),
           MemberRole::kStandby};
  storage_->ChangeMembers(change, std::move(m), [this, resp, reactor, audit](absl::Status st) {
    audit(st);
    if (st.ok()) Fill(resp);
    reactor->Finish(ToGrpc(st));
  });
}

void ReplicaService::TransferLeadership(grpc::ServerContext* ctx,
                                        const v1::TransferLeadershipRequest* req,
                                        v1::TransferLeadershipResponse*, UnaryReactor* reactor) {
  absl::StatusOr<std::string> who =
      access_->Check(*ctx, "Replica.TransferLeadership", {Role::kOperator});
  if (Refused(reactor, who)) return;
  MemberAddresses ignored;
  absl::Status st = !Find(req->to(), &ignored)
                        ? absl::InvalidArgumentError(
                              absl::StrCat("member ", req->to(), " is not of group ", group_))
                        : storage_->Transfer(req->to());
  Audit(*who, "transfer-leadership",
        {{"group", group_},
         {"to", absl::StrCat(req->to())},
         {"result", st.ok() ? "OK" : absl::StatusCodeToString(st.code())}});
  reactor->Finish(ToGrpc(st));
}

void ReplicaService::Status(grpc::ServerContext* ctx, const v1::ReplicaStatusRequest* req,
                            v1::ReplicaStatus* resp, UnaryReactor* reactor) {
  if (Refused(reactor, access_->Check(*ctx, "Replica.Status", {Role::kOperator, Role::kPeer}))) {
    return;
  }
  Fill(resp);
  if (req->about_member() != 0) resp->set_registered(storage_->KnowsDisk(req->about_member()));
  reactor->Finish(grpc::Status::OK);
}

void FillReplicaStatus(const std::string& group,
                       const std::map<uint64_t, MemberAddresses>& configured,
                       ReplicatedStorage* storage, v1::ReplicaStatus* resp) {
  const GroupStatus s = storage->Status();
  resp->set_group(group);
  resp->set_member(s.id);
  resp->set_role(RoleName(s.state));
  resp->set_term(s.term);
  resp->set_leader_member(s.leader_id);
  resp->set_commit_index(s.commit_index);
  resp->set_applied_index(s.applied_index);
  resp->set_serving(s.serving);
  resp->set_fault(s.fault);
  resp->set_disk(storage->disk());
  resp->set_snapshot_index(s.snapshot_index);
  resp->set_last_index(s.last_index);
  resp->set_installing(s.installing);
  if (MemberAddresses self; FindMember(s.members, configured, s.id, &self)) {
    resp->set_peer_address(self.peer);
    resp->set_client_address(self.client);
  }
  for (const Member& m : s.members) {
    v1::GroupMemberInfo* info = resp->add_members();
    const MemberAddresses a = SplitConfigAddress(m.address);
    info->set_member(m.id);
    info->set_role(m.role == MemberRole::kVoter     ? "voter"
                   : m.role == MemberRole::kStandby ? "standby"
                                                    : "spare");
    info->set_client_address(a.client);
    info->set_peer_address(a.peer);
    if (auto match = s.match.find(m.id); match != s.match.end()) {
      info->set_match_index(match->second);
    }
  }
}

grpc::ServerUnaryReactor* ClientStatusService::Status(grpc::CallbackServerContext* ctx,
                                                      const v1::ReplicaStatusRequest* req,
                                                      v1::ReplicaStatus* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (Refused(reactor, access_->Check(*ctx, "Replica.Status", {Role::kOperator, Role::kPeer}))) {
    return reactor;
  }
  FillReplicaStatus(group_, configured_, storage_, resp);
  if (req->about_member() != 0) resp->set_registered(storage_->KnowsDisk(req->about_member()));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

bool ReplicaService::CheckMember(const std::string& group, uint64_t from, const std::string& disk,
                                 UnaryReactor* reactor, MemberAddresses* addresses) {
  if (group != group_) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                     absl::StrCat("this replica is of group ", group_, ", not ", Clip(group))));
    return false;
  }
  if (from == 0 || !Find(from, addresses)) {
    reactor->Finish(grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                                 absl::StrCat("member ", from, " is not of group ", group_)));
    return false;
  }
  if (absl::Status st = storage_->CheckPeer(from, disk); !st.ok()) {
    const int64_t now = RealClock().NowMs();
    absl::MutexLock lock(&log_mu_);
    // A replaced member keeps trying: one line per minute.
    if (refusal_logged_ms_ < 0 || now - refusal_logged_ms_ >= 60000) {
      LogLine(absl::StrCat("replica: refused: ", st.message()));
      refusal_logged_ms_ = now;
    }
    reactor->Finish(ToGrpc(st));
    return false;
  }
  return true;
}

void ReplicaService::FetchState(grpc::ServerContext* ctx, const v1::FetchStateRequest* req,
                                v1::StatePiece* resp, UnaryReactor* reactor) {
  if (Refused(reactor, access_->Check(*ctx, "Replica.FetchState", {Role::kPeer}))) return;
  MemberAddresses from;
  if (!CheckMember(req->group(), req->from(), req->disk(), reactor, &from)) return;
  absl::StatusOr<StateSource::Piece> piece =
      storage_->source()->Next(req->transfer(), req->piece(), RealClock().NowMs());
  if (!piece.ok()) return reactor->Finish(ToGrpc(piece.status()));
  resp->set_transfer(piece->transfer);
  resp->set_last(piece->last);
  resp->set_crc32c(PieceCrc(piece->records));
  for (Write& w : piece->records) {
    v1::StateRecord* r = resp->add_records();
    r->set_db(std::move(w.db));
    r->set_key(std::move(w.key));
    r->set_value(std::move(w.value));
  }
  reactor->Finish(grpc::Status::OK);
}

void ReplicaService::Deliver(grpc::ServerContext* ctx, const v1::DeliverRequest* req,
                             v1::DeliverResponse*, UnaryReactor* reactor) {
  if (Refused(reactor, access_->Check(*ctx, "Replica.Deliver", {Role::kPeer}))) return;
  MemberAddresses from;
  if (!CheckMember(req->group(), req->from(), req->disk(), reactor, &from)) return;
  std::vector<RaftMessage> messages;
  for (const v1::RaftMessageProto& p : req->messages()) {
    absl::StatusOr<RaftMessage> m = FromWire(p, req->from(), ConfigAddress(from));
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
