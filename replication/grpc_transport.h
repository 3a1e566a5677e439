// The group's messages over gRPC, on the process's RpcLoop: a member sends
// with one Deliver call in flight per peer, queueing what comes meanwhile
// for the next call (the engine resends what is lost, so a full queue drops
// its oldest); a member receives through ReplicaService, which checks that
// the call names this group and one of its members.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "atomq/v1/replica.grpc.pb.h"
#include "common/access.h"
#include "common/loop_unary.h"
#include "common/server_util.h"
#include "replication/replicated_storage.h"

namespace atomq::replication {

struct MemberAddresses {
  std::string client;  // where callers reach it (the server's --listen)
  std::string peer;    // where the other members reach it (atomq.v1.Replica)
};
// A member's address in its group's configuration is "client/peer", so
// that every replica knows both for every member, added ones too. Without
// a '/', an address is a peer address alone.
std::string ConfigAddress(const MemberAddresses& a);
MemberAddresses SplitConfigAddress(const std::string& address);
// Member `id`'s addresses: from `members` (a configuration) when it is not
// empty, else from `configured` (the --group flag: all a member that joins
// knows before it is sent the log); false when neither has it.
bool FindMember(const std::vector<Member>& members,
                const std::map<uint64_t, MemberAddresses>& configured, uint64_t id,
                MemberAddresses* out);

class GrpcTransport : public Transport {
 public:
  struct Options {
    std::string group;
    uint64_t self = 0;
    uint32_t queue_max = 1024;  // messages waiting per peer
    uint32_t timeout_ms = 2000;
  };
  GrpcTransport(RpcLoop* loop, ChannelCache* channels, Options options);
  ~GrpcTransport() override;  // waits for a copy under way to stop

  void Send(uint64_t to, const std::string& address, RaftMessage message) override
      ABSL_LOCKS_EXCLUDED(mu_);
  // Piece by piece (Replica.FetchState), each checked by its CRC, on a
  // thread of its own: copies are rare and may be long.
  void FetchState(uint64_t to, const std::string& address, uint64_t bytes_max,
                  FetchedFn done) override ABSL_LOCKS_EXCLUDED(mu_);
  // Replica.Status, on the same thread. A probe of a member still waiting
  // to be sent is not queued again: its answer goes to the newest `done`
  // (the earlier one is dropped uncalled), so rounds that outpace an
  // unreachable member do not pile up.
  void Probe(uint64_t to, const std::string& address, ProbedFn done) override
      ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t dropped() ABSL_LOCKS_EXCLUDED(mu_);
  // The disk id sent with every message (ReplicatedStorage::disk), known
  // once the replica is open, and whom to tell when a peer refuses it
  // (FAILED_PRECONDITION: ReplicatedStorage::Refused).
  void SetDisk(std::string disk, std::function<void(uint64_t peer, const std::string& why)> refused)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Peer {
    std::string address;
    std::shared_ptr<v1::Replica::Stub> stub;  // for `address`
    std::deque<v1::RaftMessageProto> queue;
    bool in_flight = false;
  };
  void Flush(uint64_t to) ABSL_LOCKS_EXCLUDED(mu_);
  struct Fetch {
    uint64_t to;
    std::string peer;  // its peer address
    uint64_t bytes_max;
    FetchedFn done;
  };
  // Runs jobs_ in order until the transport stops.
  void Fetcher() ABSL_LOCKS_EXCLUDED(mu_);
  void Queue(std::function<void()> job) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::vector<Write>> Copy(const Fetch& f) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<PeerLog> AskLog(uint64_t to, const std::string& peer);

  RpcLoop* const loop_;
  ChannelCache* const channels_;
  const Options options_;
  absl::Mutex mu_;
  std::map<uint64_t, Peer> peers_ ABSL_GUARDED_BY(mu_);
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  std::string disk_ ABSL_GUARDED_BY(mu_);
  std::function<void(uint64_t, const std::string&)> refused_ ABSL_GUARDED_BY(mu_);
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, ProbedFn> probes_waiting_ ABSL_GUARDED_BY(mu_);  // by member
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread fetcher_;  // last: starts once the rest is built
};

// What `storage`, a replica of `group`, knows of itself and its group.
void FillReplicaStatus(const std::string& group,
                       const std::map<uint64_t, MemberAddresses>& configured,
                       ReplicatedStorage* storage, v1::ReplicaStatus* out);

// Replica.Status alone, on a member's client address (served by the leader's
// server and by the stand-in alike), so that whoever knows a group by its
// client addresses (a coordinator's console, atomqctl) sees each replica's
// version. Every other method of atomq.v1.Replica is UNIMPLEMENTED there:
// the group's own traffic stays on the peer address.
class ClientStatusService final : public v1::Replica::CallbackService {
 public:
  ClientStatusService(std::shared_ptr<const Access> access, std::string group,
                      std::map<uint64_t, MemberAddresses> configured, ReplicatedStorage* storage)
      : access_(std::move(access)),
        group_(std::move(group)),
        configured_(std::move(configured)),
        storage_(storage) {}

 private:
  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* ctx,
                                   const v1::ReplicaStatusRequest* req,
                                   v1::ReplicaStatus* resp) override;

  const std::shared_ptr<const Access> access_;
  const std::string group_;
  const std::map<uint64_t, MemberAddresses> configured_;
  ReplicatedStorage* const storage_;
};

// atomq.v1.Replica on the loop, for one group's replica. Who is a member
// follows the replica's configuration (FindMember).
class ReplicaService {
 public:
  ReplicaService(RpcLoop* loop, std::shared_ptr<const Access> access, std::string group,
                 std::map<uint64_t, MemberAddresses> configured, ReplicatedStorage* storage);
  grpc::Service* service() { return &service_; }

 private:
  void Deliver(grpc::ServerContext* ctx, const v1::DeliverRequest* req, v1::DeliverResponse* resp,
               UnaryReactor* reactor);
  void Status(grpc::ServerContext* ctx, const v1::ReplicaStatusRequest* req,
              v1::ReplicaStatus* resp, UnaryReactor* reactor);
  void TransferLeadership(grpc::ServerContext* ctx, const v1::TransferLeadershipRequest* req,
                          v1::TransferLeadershipResponse* resp, UnaryReactor* reactor);
  void ChangeMembers(grpc::ServerContext* ctx, const v1::ChangeMembersRequest* req,
                     v1::ReplicaStatus* resp, UnaryReactor* reactor);
  void FetchState(grpc::ServerContext* ctx, const v1::FetchStateRequest* req, v1::StatePiece* resp,
                  UnaryReactor* reactor);
  // Whether `from`, speaking from `disk`, is a member of this group whose
  // disk is the one registered; answers the call when not.
  bool CheckMember(const std::string& group, uint64_t from, const std::string& disk,
                   UnaryReactor* reactor, MemberAddresses* addresses);
  bool Find(uint64_t id, MemberAddresses* out) {
    return FindMember(storage_->Members(), configured_, id, out);
  }
  void Fill(v1::ReplicaStatus* resp) { FillReplicaStatus(group_, configured_, storage_, resp); }

  LoopService<v1::Replica> service_;
  const std::shared_ptr<const Access> access_;
  const std::string group_;
  const std::map<uint64_t, MemberAddresses> configured_;
  ReplicatedStorage* const storage_;
  absl::Mutex log_mu_;
  int64_t refusal_logged_ms_ ABSL_GUARDED_BY(log_mu_) = -1;
};

}  // namespace atomq::replication
