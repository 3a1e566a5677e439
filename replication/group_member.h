// One replica of a group, as a server process runs it (docs/design.md 10.2):
// the replica store, its peer listener (atomq.v1.Replica on its own address,
// as etcd keeps peer and client URLs apart), and the client address. While
// this replica is the group's serving leader, the client address holds the
// server's own services, built on the replica store by `StartLeading`; at
// any other time a stand-in there refuses every call UNAVAILABLE with where
// the leader is (common/leader_book.h).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/access.h"
#include "common/rpc_loop.h"
#include "common/server_util.h"
#include "common/timer_queue.h"
#include "replication/grpc_transport.h"
#include "replication/replicated_storage.h"

namespace atomq::replication {

// "1=127.0.0.1:7101/127.0.0.1:7201,2=..." (member id = client/peer
// address) -> members; INVALID_ARGUMENT naming the bad entry.
absl::StatusOr<std::map<uint64_t, MemberAddresses>> ParseGroup(const std::string& flag);
// The members' client addresses as callers name the group: "a|b|c".
std::string ClientAddresses(const std::map<uint64_t, MemberAddresses>& members);

// How a replica runs: timers, compaction and state transfer (flags of the
// same names, replication/group_flags.h).
struct ReplicaTuning {
  uint32_t election_timeout_ms = 1000;
  uint32_t heartbeat_ms = 100;
  uint64_t snapshot_entries = 8192;
  uint32_t snapshot_trailing = 1024;
  uint32_t state_transfer_mb_max = 1024;
  uint32_t state_transfers_max = 2;
};

// What the server runs while this replica leads.
class Leading {
 public:
  virtual ~Leading() = default;
  // Stops taking calls and giving answers (its server and loop shut down);
  // the object must stay usable by storage callbacks until destroyed.
  virtual void Stop() = 0;
  // Prometheus text of the served node.
  virtual std::string RenderMetrics() = 0;
};

class GroupMember {
 public:
  struct Options {
    std::string group;     // the participant or coordinator id
    std::string role;      // "participant" or "coordinator", for atomq_build_info
    std::string data_dir;  // for the atomq_data_dir_* metrics of a follower
    uint64_t member_id = 0;
    // The group as configured (--group). It starts a new group on an empty
    // disk; once a replica holds the log, the configuration in it says who
    // the members are (ReplicaService).
    std::map<uint64_t, MemberAddresses> members;
    // An empty disk waits to be added by the group's leader (--join)
    // instead of starting a group.
    bool join = false;
    std::string listen;       // client address to bind (--listen)
    std::string peer_listen;  // peer address to bind (default: this member's peer address)
    std::vector<std::string> service_names;  // what health names
    std::shared_ptr<grpc::ServerCredentials> credentials;
    std::shared_ptr<const Access> access;
    uint32_t message_bytes_max = 64 << 20;
    ReplicaTuning tuning;
  };
  // Builds the served node on the replica store, which is the serving
  // leader's and holds everything committed, and calls `release` just
  // before it binds the client address (the stand-in holds it until then).
  // The node's server serves `group_status` (Replica.Status) beside its own
  // services, as the stand-in does.
  // `epoch` counts the group's leaderships (replicated, committed before
  // this call): what a node mints from it (the coordinator's transaction
  // ids) never repeats an earlier leader's. An error ends the process.
  using StartLeading = std::function<absl::StatusOr<std::unique_ptr<Leading>>(
      Storage* replica, uint64_t epoch, const std::function<void()>& release,
      grpc::Service* group_status)>;

  // Opens the replica on `local` (opened with ReplicatedStorage::ReplicaDbs()
  // among its sub-databases; it must outlive
  // this) and starts listening.
  static absl::StatusOr<std::unique_ptr<GroupMember>> Start(Options options, Storage* local,
                                                            StartLeading start);
  ~GroupMember();  // Stop()
  // Stops serving and the replica. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  GroupStatus Status() { return replica_->Status(); }
  // Prometheus text: the replica's role, term and indexes, and the served
  // node's own while leading.
  std::string RenderMetrics() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  explicit GroupMember(Options options, StartLeading start);
  // The refusal of a member that does not lead.
  grpc::Status NotLeader();
  void OnServing(bool serving, uint64_t term) ABSL_LOCKS_EXCLUDED(mu_);
  // The role thread: makes what is served follow `want_`, one change at a
  // time.
  void RunRoles() ABSL_LOCKS_EXCLUDED(mu_);
  void BecomeLeader(uint64_t term) ABSL_LOCKS_EXCLUDED(mu_);
  void BecomeFollower() ABSL_LOCKS_EXCLUDED(mu_);
  // Stops the served node (and, with `replica_too`, the replica), waits for
  // the store's callbacks, then destroys the node.
  void StopLeading(bool replica_too) ABSL_LOCKS_EXCLUDED(mu_);
  // The refusing stand-in on the client address.
  absl::Status StartStandIn();

  const Options options_;
  const StartLeading start_;
  TimerQueue timers_;
  RpcLoop peer_loop_{1};
  ChannelCache channels_;
  std::unique_ptr<GrpcTransport> transport_;
  std::unique_ptr<ReplicatedStorage> replica_;
  std::unique_ptr<ReplicaService> replica_service_;
  // On the client address, whoever serves it.
  std::unique_ptr<ClientStatusService> client_status_;
  std::unique_ptr<grpc::Server> peer_server_;

  absl::Mutex mu_;
  // Serving terms (ReplicatedStorage::ServingHook): the one to serve in (0:
  // none) and the one the running node was built in (0: none runs).
  uint64_t want_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t served_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::unique_ptr<Storage> term_storage_ ABSL_GUARDED_BY(mu_);  // what leading_ writes to
  std::unique_ptr<Leading> leading_ ABSL_GUARDED_BY(mu_);
  uint64_t leaderships_ ABSL_GUARDED_BY(mu_) = 0;
  // Only the role thread (and Stop, after joining it) touches these.
  std::unique_ptr<StandInServer> stand_in_;
  std::thread roles_;
};

}  // namespace atomq::replication
