// A real atomq cluster for process-level tests: binaries from ATOMQ_BIN_DIR
// on free loopback ports, data in a fresh temporary directory, every process
// stopped by pid when the Cluster goes away.
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "atomq/v1/coordinator.grpc.pb.h"
#include "atomq/v1/participant.grpc.pb.h"
#include "common/free_port.h"
#include "grpcpp/security/credentials.h"
#include "tests/process/tcp_proxy.h"

namespace atomq::testing {

using atomq::FreePort;  // common/free_port.h

// A sample of the /metrics served on 127.0.0.1:`port`, or -1 when it cannot
// be read.
double MetricAt(int port, const std::string& name);
// The body of a 200 answer to GET `path` on 127.0.0.1:`port` (plain HTTP),
// or nullopt.
std::optional<std::string> HttpGet(int port, const std::string& path);

// Runs `cmd` in a shell; its standard output.
std::string RunCommand(const std::string& cmd);
// Certificates made with openssl (Debian's) in `dir` as NAME.pem and
// NAME.key; they fail the test when openssl does. A self-signed CA `name`:
void MakeCa(const std::string& dir, const std::string& name);
// A certificate with common name `cn`, signed by CA `ca`, for `san` (e.g.
// "IP:127.0.0.1,DNS:p1"), written as `name`.pem/.key.
void MakeCertificate(const std::string& dir, const std::string& name, const std::string& ca,
                     const std::string& cn, const std::string& san);
std::string ReadFile(const std::string& path);

// An op that enqueues `payload` into `queue` on `participant`.
v1::Op EnqueueOp(const std::string& participant, const std::string& queue,
                 const std::string& payload);

struct ClusterOptions {
  int participants = 3;
  // Replicas of each participant (docs/design.md 10.2): 1 is one process;
  // more make each participant a group, replica j of participant i on its
  // own client and peer ports with data in dir()/pI-rJ.
  int replicas = 1;
  // Each replica's peer address is a TcpProxy (tests/process/tcp_proxy.h)
  // in front of its real one, so that CutPeer can partition it.
  bool peer_proxies = false;
  // mTLS on every link (docs/design.md section 11): a CA, a certificate for
  // c1, p1.. and "client" in dir()/tls, servers with --tls_client_auth (and
  // --tls_reload_s=1), and this Cluster's channels and atomqctl with the
  // client certificate. Off: every process runs --plaintext.
  bool tls = false;
  std::string tls_client_auth = "require";
  std::vector<std::string> coordinator_args;  // extra flags
  // The coordinator as a group of this many replicas (1: one process);
  // coordinator_address() is then their client addresses joined by '|'.
  int coordinator_replicas = 1;
  std::vector<std::string> participant_args;  // extra flags for every participant
  bool participant_metrics = false;  // serve each participant's /metrics (ParticipantMetric)
  // Access control (common/access.h), on when `roles` is not empty: every
  // server gets --roles_file with these lines ("IDENTITY ROLES [QUEUES]")
  // plus c1 and each participant as peer and "admin" with every role, and
  // --tokens_file with `tokens` (identity -> token) plus theirs. Servers dial
  // with their own token; the Cluster's calls and stubs carry admin's. Under
  // TLS a certificate's identity wins over any token: servers are then their
  // certificates (c1, p1..), and the Cluster's calls are made by "client",
  // which `roles` must name with the roles those calls need.
  std::vector<std::string> roles;
  std::map<std::string, std::string> tokens;
};

class Cluster {
 public:
  explicit Cluster(ClusterOptions options = {});
  ~Cluster();  // SIGKILLs what is still running; removes the data unless a test failed

  // Start (or restart) a process; `env` is added to the environment (e.g.
  // ATOMQ_CRASH_AT). Waits until it answers RPCs unless `wait` is false.
  void StartCoordinator(const std::map<std::string, std::string>& env = {}, bool wait = true);
  void StartParticipant(int i, const std::map<std::string, std::string>& env = {},
                        bool wait = true);
  void StartAll();
  // The extra flags of participants started from now on.
  void SetParticipantArgs(std::vector<std::string> args) {
    options_.participant_args = std::move(args);
  }

  void KillCoordinator();  // SIGKILL and reap (every replica of it)
  // One replica of the coordinator group (coordinator_replicas > 1).
  void StartCoordinatorReplica(int j, const std::map<std::string, std::string>& env = {});
  void KillCoordinatorReplica(int j);
  std::optional<int> WaitCoordinatorReplicaExit(int j, int timeout_ms);
  // The coordinator replica that serves, polling up to `timeout_ms`; 0
  // when none does.
  int CoordinatorLeaderOf(int timeout_ms = 15000);
  std::string coordinator_replica_address(int j) const;
  std::string coordinator_replica_peer_address(int j) const;
  void KillParticipant(int i);  // every replica of it
  // One replica of a participant group (replicas > 1).
  void StartReplica(int i, int j, const std::map<std::string, std::string>& env = {});
  void KillReplica(int i, int j);
  // Replica j's process dies and its disk is lost; in its place, at its
  // addresses, a new member `member_id` starts on an empty disk and waits
  // to be added (--join: atomqctl cluster replace).
  // `elsewhere`: at new client and peer ports instead (another host).
  void ReplaceReplica(int i, int j, uint64_t member_id, bool elsewhere = false);
  // The member id replica j runs as.
  uint64_t member_id(int i, int j) const;
  bool ReplicaRunning(int i, int j) const;
  // The client and peer addresses of replica j of participant i.
  std::string replica_address(int i, int j) const;
  std::string replica_peer_address(int i, int j) const;
  // With peer_proxies: drops every connection to replica j's peer address
  // and refuses new ones (cut), or lets them through again. The replica
  // then hears no other member, while its own messages still go out.
  void CutPeer(int i, int j, bool cut);
  // With peer_proxies: the connections to replica j's peer address open now
  // go silent for good (tcp_proxy.h), without a reset.
  void SilencePeer(int i, int j);
  // A sample of replica j's /metrics (participant_metrics), or -1.
  double ReplicaMetric(int i, int j, const std::string& name);
  // The replica of participant i that serves (answers ListQueues), polling
  // up to `timeout_ms`; 0 when none does.
  int LeaderOf(int i, int timeout_ms = 15000);
  // Sends `sig` (e.g. SIGTERM, a clean shutdown) to participant i; reap it
  // with WaitParticipantExit.
  void SignalParticipant(int i, int sig);
  // Waits for the process to exit by itself (e.g. at a crash point); returns
  // its exit code, or nullopt after `timeout_ms`.
  std::optional<int> WaitCoordinatorExit(int timeout_ms);
  std::optional<int> WaitParticipantExit(int i, int timeout_ms);
  bool CoordinatorRunning() const;
  pid_t coordinator_pid() const { return coordinator_.pid; }

  std::string coordinator_address() const;
  // A group's is its members' client addresses, "a|b|c"; a stub made by
  // queue(i) or txn(i) dials the member that serves at the time.
  std::string participant_address(int i) const;
  std::string participant_id(int i) const { return "p" + std::to_string(i); }
  // The directory of the certificates (ClusterOptions::tls): ca.pem, and
  // NAME.pem / NAME.key for c1, p1.. and client.
  std::string tls_dir() const { return dir_ + "/tls"; }
  // Another client certificate in tls_dir(), signed by the cluster's CA:
  // `name`.pem/.key with common name `name` and `identity` as its first
  // (DNS) SAN, which is the identity servers see (common/tls.h).
  void MakeClientCertificate(const std::string& name, const std::string& identity);
  // What this Cluster's channels dial with: under TLS the client certificate
  // `certificate` of tls_dir() (empty: "client"), else plaintext. Each
  // channel has its own connections (a new one makes a new handshake).
  std::shared_ptr<grpc::ChannelCredentials> credentials(const std::string& certificate = "") const;
  std::shared_ptr<grpc::Channel> Channel(const std::string& address, const std::string& token = "",
                                         const std::string& certificate = "") const;
  // The flags a server `name` speaks TLS (or plaintext) with.
  std::vector<std::string> TlsArgs(const std::string& name) const;
  int participants() const { return options_.participants; }
  const std::string& dir() const { return dir_; }

  std::unique_ptr<v1::Coordinator::Stub> coordinator();
  std::unique_ptr<v1::Queue::Stub> queue(int i);
  std::unique_ptr<v1::ParticipantTxn::Stub> txn(int i);
  // Stubs whose calls carry `token` (none when empty) instead of admin's,
  // and under TLS present client certificate `certificate` (as credentials()).
  std::unique_ptr<v1::Coordinator::Stub> coordinator_as(const std::string& token,
                                                        const std::string& certificate = "");
  std::unique_ptr<v1::Queue::Stub> queue_as(int i, const std::string& token,
                                            const std::string& certificate = "");
  std::unique_ptr<v1::ParticipantTxn::Stub> txn_as(int i, const std::string& token,
                                                   const std::string& certificate = "");
  // The token the Cluster's own calls carry (empty without access control).
  std::string admin_token() const;

  // Convenience calls with a deadline; they fail the test on error.
  void CreateQueue(int i, const std::string& name);
  // Queue `name` as participant i lists it (a test failure if it is absent).
  v1::QueueInfo QueueInfoOf(int i, const std::string& name);
  // Receives and acks everything ready in `queue` on participant i.
  std::vector<std::string> Drain(int i, const std::string& queue);
  // Participant i's state of `txn_id` (no side effects: from its transaction list
  // or its outcome), polling until it is COMMITTED or ABORTED or `timeout_ms` passes.
  v1::TxnState AwaitOutcome(int i, const std::string& txn_id, int timeout_ms);
  // A sample of participant i's /metrics (participant_metrics), or -1 when it
  // cannot be read.
  double ParticipantMetric(int i, const std::string& name);

 private:
  struct Proc {
    pid_t pid = -1;
    std::string log;
  };
  pid_t Spawn(const std::string& binary, const std::vector<std::string>& args,
              const std::map<std::string, std::string>& env, const std::string& log);
  void Kill(Proc* p);
  std::optional<int> WaitExit(Proc* p, int timeout_ms);
  void WaitReady(const std::string& what, const std::function<bool()>& probe);
  // Writes the roles and tokens files and each server's token file.
  void WriteAccessFiles();
  // --roles_file, --tokens_file and --token_file of server `id`, if any.
  std::vector<std::string> AccessArgs(const std::string& id) const;

  ClusterOptions options_;
  std::string dir_;
  int coordinator_port_;
  std::vector<int> participant_ports_;
  std::vector<int> metrics_ports_;
  Proc coordinator_;
  std::vector<Proc> participant_procs_;
  struct Replica {
    int client_port = 0;
    int peer_port = 0;
    int metrics_port = 0;
    std::unique_ptr<TcpProxy> proxy;  // peer_proxies: in front of peer_port
    Proc proc;
    uint64_t member_id = 0;  // 0: its slot number
    bool join = false;
  };
  std::vector<std::vector<Replica>> replicas_;  // [i-1][j-1], replicas > 1
  // The flags every start of participant i takes (not its address or data).
  std::vector<std::string> ParticipantArgs(int i) const;
  // The flags every start of the coordinator (or a replica of it) takes.
  std::vector<std::string> CoordinatorArgs() const;
  std::vector<Replica> coordinator_replicas_;  // coordinator_replicas > 1
  // Where a stub for participant i is to dial now.
  std::string Reachable(int i);
};

}  // namespace atomq::testing
