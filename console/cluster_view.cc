#include "console/cluster_view.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "atomq/v1/coordinator.grpc.pb.h"
#include "atomq/v1/participant.grpc.pb.h"
#include "atomq/v1/replica.grpc.pb.h"
#include "common/bearer.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace atomq::console {

namespace {

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

bool MovesOn(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

std::string Describe(const grpc::Status& s) {
  return absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code())), ": ",
                      s.error_message());
}

// Runs `one` for every entry of `items` at once (each waits on the network),
// the answers in the order given.
template <typename T, typename In, typename F>
std::vector<T> EachAtOnce(const In& items, F one) {
  std::vector<std::future<T>> running;
  for (const auto& item : items) running.push_back(std::async(std::launch::async, one, item));
  std::vector<T> out;
  for (auto& r : running) out.push_back(r.get());
  return out;
}

}  // namespace

std::shared_ptr<grpc::Channel> ClusterView::Channel(const std::string& address, bool server) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<grpc::Channel>& c = channels_[{address, server}];
  if (c == nullptr) {
    grpc::ChannelArguments args;
    // A user's calls carry only the user's token: never this server's own
    // (DialChannel would add it).
    c = server ? DialChannel(address, args)
               : grpc::CreateCustomChannel(address, DialCredentials(), args);
  }
  return c;
}

void ClusterView::Prepare(grpc::ClientContext* ctx, const Caller& who) const {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(o_.flags.rpc_timeout_ms));
  if (!who.server && !who.authorization.empty()) {
    ctx->AddMetadata("authorization", who.authorization);
  }
}

grpc::Status ClusterView::AtLeader(
    const std::string& members, const Caller& who,
    const std::function<grpc::Status(grpc::ClientContext*, const std::shared_ptr<grpc::Channel>&)>&
        call) {
  grpc::Status s;
  const size_t tries = SplitMembers(members).size() + 1;
  for (size_t i = 0; i < tries; ++i) {
    const std::string address = leaders_.Current(members);
    grpc::ClientContext ctx;
    Prepare(&ctx, who);
    s = call(&ctx, Channel(address, who.server));
    if (!MovesOn(s) || !leaders_.Learn(members, address, s)) return s;
  }
  return s;
}

v1::ReplicaStatus ClusterView::ReplicaAt(const std::string& address, const Caller& who) {
  v1::ReplicaStatus r;
  grpc::ClientContext ctx;
  Prepare(&ctx, who);
  grpc::Status s = v1::Replica::NewStub(Channel(address, who.server))
                       ->Status(&ctx, v1::ReplicaStatusRequest(), &r);
  if (!s.ok()) {
    r.Clear();
    r.set_role(s.error_code() == grpc::StatusCode::UNAVAILABLE ? "unreachable" : "refused");
    r.set_error(Describe(s));
  }
  return r;
}

v1::ConsoleMember ClusterView::Probe(const std::string& address, const Caller& who) {
  v1::ConsoleMember m;
  m.set_address(address);
  grpc::ClientContext ctx;
  Prepare(&ctx, Caller{"", true});  // health is open to anyone
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = grpc::health::v1::Health::NewStub(Channel(address, true))
                       ->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp);
  if (!s.ok()) {
    m.set_health("unreachable");
    m.set_error(Describe(s));
    return m;
  }
  m.set_health(resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? "serving"
                                                                               : "standby");
  v1::ReplicaStatus r = ReplicaAt(address, who);
  // A server alone (no --group) serves no Replica.Status: no version to show.
  if (absl::StartsWith(r.error(), "UNIMPLEMENTED")) return m;
  r.set_client_address(address);
  *m.mutable_replica() = std::move(r);
  return m;
}

namespace {

// Each replica's lag: the highest commit index any of them reported minus
// its own applied index.
void SetLag(const std::vector<v1::ReplicaStatus*>& replicas) {
  uint64_t commit = 0;
  for (const v1::ReplicaStatus* r : replicas) commit = std::max(commit, r->commit_index());
  for (v1::ReplicaStatus* r : replicas) {
    if (r->error().empty())
      r->set_lag(commit > r->applied_index() ? commit - r->applied_index() : 0);
  }
}

}  // namespace

v1::ConsoleCluster ClusterView::Cluster(const Caller& who) {
  v1::ConsoleCluster out;
  out.set_now_unix_ms(NowMs());
  auto add_nodes = [&](const std::map<std::string, std::string>& nodes, const char* role) {
    for (const auto& [id, members] : nodes) {
      v1::ConsoleNode* n = out.add_nodes();
      n->set_id(id);
      n->set_role(role);
      n->set_self(id == o_.node_id && role == o_.node_role);
      std::vector<v1::ReplicaStatus*> replicas;
      for (v1::ConsoleMember& m : EachAtOnce<v1::ConsoleMember>(
               SplitMembers(members), [&](const std::string& a) { return Probe(a, who); })) {
        v1::ConsoleMember* added = n->add_members();
        *added = std::move(m);
        if (added->has_replica()) replicas.push_back(added->mutable_replica());
      }
      SetLag(replicas);
    }
  };
  add_nodes(o_.coordinators, "coordinator");
  add_nodes(o_.participants, "participant");
  if (o_.group_peers.empty()) return out;
  std::vector<v1::ReplicaStatus*> replicas;
  for (v1::ReplicaStatus& r :
       EachAtOnce<v1::ReplicaStatus>(o_.group_peers, [&](const std::string& peer) {
         v1::ReplicaStatus got = ReplicaAt(peer, who);
         if (!got.error().empty()) got.set_peer_address(peer);
         return got;
       })) {
    v1::ReplicaStatus* added = out.mutable_group()->add_replicas();
    *added = std::move(r);
    replicas.push_back(added);
  }
  SetLag(replicas);
  return out;
}

v1::ConsoleCoordinatorTxns ClusterView::CoordinatorTxns(const Caller& who, const std::string& id,
                                                        const std::string& members,
                                                        const std::string& txn_id) {
  v1::ConsoleCoordinatorTxns out;
  out.set_coordinator(id);
  grpc::Status s;
  if (!txn_id.empty()) {
    v1::GetTransactionRequest req;
    req.set_txn_id(txn_id);
    v1::TransactionInfo info;
    s = AtLeader(members, who, [&](grpc::ClientContext* ctx, const auto& ch) {
      return v1::Coordinator::NewStub(ch)->GetTransaction(ctx, req, &info);
    });
    if (s.ok()) *out.add_transactions() = std::move(info);
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) s = grpc::Status::OK;
  } else {
    v1::ListTransactionsResponse resp;
    s = AtLeader(members, who, [&](grpc::ClientContext* ctx, const auto& ch) {
      return v1::Coordinator::NewStub(ch)->ListTransactions(ctx, v1::ListTransactionsRequest(),
                                                            &resp);
    });
    *out.mutable_transactions() = std::move(*resp.mutable_transactions());
    out.set_more(!resp.next_page_token().empty());
  }
  if (!s.ok()) out.set_error(Describe(s));
  return out;
}

v1::ConsoleParticipantTxns ClusterView::ParticipantTxns(const Caller& who, const std::string& id,
                                                        const std::string& members,
                                                        const std::string& txn_id) {
  v1::ConsoleParticipantTxns out;
  out.set_participant(id);
  v1::ListParticipantTxnsResponse resp;
  grpc::Status s = AtLeader(members, who, [&](grpc::ClientContext* ctx, const auto& ch) {
    return v1::ParticipantTxn::NewStub(ch)->ListTransactions(ctx, v1::ListParticipantTxnsRequest(),
                                                             &resp);
  });
  if (!s.ok()) {
    out.set_error(Describe(s));
    return out;
  }
  for (v1::ParticipantTxnInfo& t : *resp.mutable_transactions()) {
    if (txn_id.empty() || t.txn_id() == txn_id) *out.add_transactions() = std::move(t);
  }
  for (v1::HeuristicOutcome& h : *resp.mutable_heuristic()) {
    if (txn_id.empty() || h.txn_id() == txn_id) *out.add_heuristic() = std::move(h);
  }
  out.set_more(!resp.next_page_token().empty());
  return out;
}

v1::ConsoleTransactions ClusterView::Transactions(const Caller& who, const std::string& txn_id) {
  v1::ConsoleTransactions out;
  out.set_now_unix_ms(NowMs());
  for (const auto& [id, members] : o_.coordinators) {
    *out.add_coordinators() = CoordinatorTxns(who, id, members, txn_id);
  }
  for (const auto& [id, members] : o_.participants) {
    *out.add_participants() = ParticipantTxns(who, id, members, txn_id);
  }
  return out;
}

v1::ConsoleQueues ClusterView::Queues(const Caller& who) {
  v1::ConsoleQueues out;
  out.set_now_unix_ms(NowMs());
  for (const auto& [id, members] : o_.participants) {
    v1::ConsoleParticipantQueues* p = out.add_participants();
    p->set_participant(id);
    v1::ListQueuesResponse resp;
    grpc::Status s = AtLeader(members, who, [&](grpc::ClientContext* ctx, const auto& ch) {
      return v1::Queue::NewStub(ch)->ListQueues(ctx, v1::ListQueuesRequest(), &resp);
    });
    if (s.ok()) {
      *p->mutable_queues() = std::move(*resp.mutable_queues());
    } else {
      p->set_error(Describe(s));
    }
  }
  return out;
}

grpc::Status ClusterView::Resolve(const Caller& who, const v1::ConsoleResolveRequest& req,
                                  v1::ResolveResponse* resp) {
  auto it = o_.participants.find(req.participant());
  if (it == o_.participants.end()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "participant is not one this server is configured with");
  }
  v1::ResolveRequest r;
  r.set_txn_id(req.txn_id());
  r.set_outcome(req.outcome());
  r.set_operator_note(req.operator_note());
  return AtLeader(it->second, who, [&](grpc::ClientContext* ctx, const auto& ch) {
    return v1::ParticipantTxn::NewStub(ch)->Resolve(ctx, r, resp);
  });
}

}  // namespace atomq::console
