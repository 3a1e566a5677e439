// What the console asks the cluster, over its gRPC API: each answer a
// message of proto/atomq/v1/console.proto. A call made for a user carries
// the user's "authorization" (their bearer token) and nothing of this
// server's own identity but its TLS certificate, which a token outranks
// (AuthPolicy::Authenticate); a call made for the console itself (its
// charts' samples) is this server's own, as any of its outbound calls.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "atomq/v1/console.pb.h"
#include "common/leader_book.h"
#include "console/console.h"
#include "grpcpp/grpcpp.h"

namespace atomq::console {

// Who a call is made for: a user's "Bearer TOKEN" (empty on an open,
// plaintext cluster), or this server itself.
struct Caller {
  std::string authorization;
  bool server = false;
};

class ClusterView {
 public:
  explicit ClusterView(const ConsoleOptions& options) : o_(options) {}

  v1::ConsoleCluster Cluster(const Caller& who);
  // Only rows of `txn_id` when it is not empty.
  v1::ConsoleTransactions Transactions(const Caller& who, const std::string& txn_id);
  v1::ConsoleQueues Queues(const Caller& who);
  grpc::Status Resolve(const Caller& who, const v1::ConsoleResolveRequest& req,
                       v1::ResolveResponse* resp);

 private:
  std::shared_ptr<grpc::Channel> Channel(const std::string& address, bool server);
  void Prepare(grpc::ClientContext* ctx, const Caller& who) const;
  // Calls `call(channel)` at the member of `members` that leads, following
  // NotLeader answers and moving past members that are down.
  grpc::Status AtLeader(const std::string& members, const Caller& who,
                        const std::function<grpc::Status(
                            grpc::ClientContext*, const std::shared_ptr<grpc::Channel>&)>& call);
  // Health at `address` and, for a group's member, its Replica.Status.
  v1::ConsoleMember Probe(const std::string& address, const Caller& who);
  // Replica.Status at `address` (a member's client or peer address); role
  // "unreachable" or "refused" with the error when it cannot be asked.
  v1::ReplicaStatus ReplicaAt(const std::string& address, const Caller& who);
  v1::ConsoleCoordinatorTxns CoordinatorTxns(const Caller& who, const std::string& id,
                                             const std::string& members, const std::string& txn_id);
  v1::ConsoleParticipantTxns ParticipantTxns(const Caller& who, const std::string& id,
                                             const std::string& members, const std::string& txn_id);

  const ConsoleOptions& o_;
  LeaderBook leaders_;
  absl::Mutex mu_;
  // (address, for the server) -> channel; addresses come from the flags
  // only, so this stays as small as the configuration.
  std::map<std::pair<std::string, bool>, std::shared_ptr<grpc::Channel>> channels_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace atomq::console
