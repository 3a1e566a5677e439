#include "tests/process/cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/bearer.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

#ifndef ATOMQ_BIN_DIR
#error "ATOMQ_BIN_DIR must name the directory of the binaries"
#endif

namespace atomq::testing {
namespace {

// A server's own token, from its id.
std::string ServerToken(const std::string& id) { return id + "-token-0123456789abcdef"; }

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  chmod(path.c_str(), 0600);
}

void Deadline(grpc::ClientContext* ctx, int ms) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

std::string RunCommand(const std::string& cmd) {
  std::string out;
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  pclose(f);
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

v1::Op EnqueueOp(const std::string& participant, const std::string& queue,
                 const std::string& payload) {
  v1::Op op;
  op.set_participant(participant);
  op.mutable_enqueue()->set_queue(queue);
  op.mutable_enqueue()->set_payload(payload);
  return op;
}

void MakeCa(const std::string& dir, const std::string& name) {
  std::filesystem::create_directories(dir);
  const std::string cmd = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=", name, " -keyout ", dir, "/",
      name, ".key -out ", dir, "/", name, ".pem >/dev/null 2>&1");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

void MakeCertificate(const std::string& dir, const std::string& name, const std::string& ca,
                     const std::string& cn, const std::string& san) {
  const std::string f = dir + "/" + name;
  {
    std::ofstream ext(f + ".ext");
    ext << "subjectAltName=" << san << "\n";
  }
  const std::string cmd = absl::StrCat(
      "openssl req -newkey rsa:2048 -nodes -subj /CN=", cn, " -keyout ", f, ".key -out ", f,
      ".csr >/dev/null 2>&1 && openssl x509 -req -in ", f, ".csr -CA ", dir, "/", ca,
      ".pem -CAkey ", dir, "/", ca, ".key -CAcreateserial -days 2 -extfile ", f, ".ext -out ", f,
      ".pem >/dev/null 2>&1");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

Cluster::Cluster(ClusterOptions options) : options_(std::move(options)) {
  char tmpl[] = "/tmp/atomq-test-XXXXXX";
  dir_ = mkdtemp(tmpl);
  coordinator_port_ = FreePort();
  if (options_.coordinator_replicas > 1) {
    coordinator_replicas_.resize(options_.coordinator_replicas);
    for (Replica& r : coordinator_replicas_) {
      r.client_port = FreePort();
      r.peer_port = FreePort();
      r.metrics_port = FreePort();
    }
  }
  for (int i = 0; i < options_.participants; ++i) participant_ports_.push_back(FreePort());
  for (int i = 0; i < options_.participants; ++i) metrics_ports_.push_back(FreePort());
  participant_procs_.resize(options_.participants);
  if (options_.replicas > 1) {
    replicas_.resize(options_.participants);
    for (auto& group : replicas_) {
      group.resize(options_.replicas);
      for (Replica& r : group) {
        r.client_port = FreePort();
        r.peer_port = FreePort();
        r.metrics_port = FreePort();
        // On a port of the kernel's choosing, which FreePort never gives.
        if (options_.peer_proxies) r.proxy = std::make_unique<TcpProxy>(0, r.peer_port);
      }
    }
  }
  if (!options_.roles.empty()) WriteAccessFiles();
  if (!options_.tls) {
    setenv("ATOMQ_PLAINTEXT", "1", 1);  // the atomqctl a test runs speaks plaintext too
    return;
  }
  const std::string t = tls_dir();
  MakeCa(t, "ca");
  // A server's id first among its SANs: the identity the roles file names.
  MakeCertificate(t, "c1", "ca", "c1", "DNS:c1,IP:127.0.0.1");
  for (int i = 1; i <= options_.participants; ++i) {
    MakeCertificate(t, participant_id(i), "ca", participant_id(i),
                    "DNS:" + participant_id(i) + ",IP:127.0.0.1");
  }
  MakeCertificate(t, "client", "ca", "client", "DNS:client");
  // The atomqctl a test runs presents the client certificate.
  unsetenv("ATOMQ_PLAINTEXT");
  setenv("ATOMQ_TLS_CA", (t + "/ca.pem").c_str(), 1);
  setenv("ATOMQ_TLS_CERT", (t + "/client.pem").c_str(), 1);
  setenv("ATOMQ_TLS_KEY", (t + "/client.key").c_str(), 1);
}

void Cluster::MakeClientCertificate(const std::string& name, const std::string& identity) {
  MakeCertificate(tls_dir(), name, "ca", name, "DNS:" + identity);
}

std::shared_ptr<grpc::ChannelCredentials> Cluster::credentials(
    const std::string& certificate) const {
  if (!options_.tls) return grpc::InsecureChannelCredentials();
  const std::string f = tls_dir() + "/" + (certificate.empty() ? "client" : certificate);
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = ReadFile(tls_dir() + "/ca.pem");
  o.pem_private_key = ReadFile(f + ".key");
  o.pem_cert_chain = ReadFile(f + ".pem");
  return grpc::SslCredentials(o);
}

std::shared_ptr<grpc::Channel> Cluster::Channel(const std::string& address,
                                                const std::string& token,
                                                const std::string& certificate) const {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (token.empty()) return grpc::CreateCustomChannel(address, credentials(certificate), args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> f;
  f.push_back(BearerInterceptor(token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(address, credentials(certificate),
                                                                 args, std::move(f));
}

std::vector<std::string> Cluster::TlsArgs(const std::string& name) const {
  if (!options_.tls) return {"--plaintext"};
  const std::string t = tls_dir();
  std::vector<std::string> args = {
      "--tls_cert=" + t + "/" + name + ".pem", "--tls_key=" + t + "/" + name + ".key",
      "--tls_ca=" + t + "/ca.pem", "--tls_client_auth=" + options_.tls_client_auth,
      "--tls_reload_s=1"};
  // A TLS server without a roles file must be told that anyone may call.
  if (options_.roles.empty()) args.push_back("--allow_anyone");
  return args;
}

std::string Cluster::admin_token() const {
  return options_.roles.empty() ? "" : ServerToken("admin");
}

void Cluster::WriteAccessFiles() {
  std::string roles = "admin producer,consumer,operator,peer\nc1 peer\n";
  std::string tokens =
      absl::StrCat("admin ", ServerToken("admin"), "\nc1 ", ServerToken("c1"), "\n");
  WriteFile(dir_ + "/c1.token", ServerToken("c1"));
  for (int i = 1; i <= options_.participants; ++i) {
    const std::string p = participant_id(i);
    absl::StrAppend(&roles, p, " peer\n");
    absl::StrAppend(&tokens, p, " ", ServerToken(p), "\n");
    WriteFile(dir_ + "/" + p + ".token", ServerToken(p));
  }
  for (const std::string& line : options_.roles) absl::StrAppend(&roles, line, "\n");
  for (const auto& [who, token] : options_.tokens) absl::StrAppend(&tokens, who, " ", token, "\n");
  WriteFile(dir_ + "/roles", roles);
  WriteFile(dir_ + "/tokens", tokens);
}

std::vector<std::string> Cluster::AccessArgs(const std::string& id) const {
  if (options_.roles.empty()) return {};
  return {"--roles_file=" + dir_ + "/roles", "--tokens_file=" + dir_ + "/tokens",
          "--token_file=" + dir_ + "/" + id + ".token"};
}

Cluster::~Cluster() {
  KillCoordinator();
  for (Proc& p : participant_procs_) Kill(&p);
  for (auto& group : replicas_) {
    for (Replica& r : group) Kill(&r.proc);
  }
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  bool failed = info != nullptr && info->result()->Failed();
  if (failed) {
    std::cerr << "test failed; process logs follow (data kept in " << dir_ << ")\n";
    for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
      if (entry.path().extension() != ".log") continue;
      std::ifstream in(entry.path());
      std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (content.size() > 6000) content = "..." + content.substr(content.size() - 6000);
      std::cerr << "==== " << entry.path().filename() << "\n" << content;
    }
  } else {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string Cluster::coordinator_address() const {
  if (options_.coordinator_replicas <= 1) return absl::StrCat("127.0.0.1:", coordinator_port_);
  std::string out;
  for (int j = 1; j <= options_.coordinator_replicas; ++j) {
    absl::StrAppend(&out, j > 1 ? "|" : "", coordinator_replica_address(j));
  }
  return out;
}

std::string Cluster::coordinator_replica_address(int j) const {
  return absl::StrCat("127.0.0.1:", coordinator_replicas_[j - 1].client_port);
}

std::string Cluster::coordinator_replica_peer_address(int j) const {
  return absl::StrCat("127.0.0.1:", coordinator_replicas_[j - 1].peer_port);
}
std::string Cluster::participant_address(int i) const {
  if (options_.replicas <= 1) return absl::StrCat("127.0.0.1:", participant_ports_[i - 1]);
  std::string out;
  for (int j = 1; j <= options_.replicas; ++j) {
    absl::StrAppend(&out, j > 1 ? "|" : "", replica_address(i, j));
  }
  return out;
}

std::string Cluster::replica_address(int i, int j) const {
  return absl::StrCat("127.0.0.1:", replicas_[i - 1][j - 1].client_port);
}

std::string Cluster::replica_peer_address(int i, int j) const {
  const Replica& r = replicas_[i - 1][j - 1];
  return absl::StrCat("127.0.0.1:", r.proxy != nullptr ? r.proxy->port() : r.peer_port);
}

void Cluster::CutPeer(int i, int j, bool cut) { replicas_[i - 1][j - 1].proxy->Cut(cut); }
void Cluster::SilencePeer(int i, int j) { replicas_[i - 1][j - 1].proxy->Silence(); }

pid_t Cluster::Spawn(const std::string& binary, const std::vector<std::string>& args,
                     const std::map<std::string, std::string>& env, const std::string& log) {
  std::string path = std::string(ATOMQ_BIN_DIR) + "/" + binary;
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(path.c_str()));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(path.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

void Cluster::WaitReady(const std::string& what, const std::function<bool()>& probe) {
  int64_t end = NowMs() + 15000;
  while (NowMs() < end) {
    if (probe()) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ADD_FAILURE() << what << " did not answer within 15 s";
}

std::vector<std::string> Cluster::CoordinatorArgs() const {
  std::string parts;
  for (int i = 1; i <= options_.participants; ++i) {
    absl::StrAppend(&parts, i > 1 ? "," : "", participant_id(i), "=", participant_address(i));
  }
  std::vector<std::string> args = {"--id=c1",
                                   "--participants=" + parts,
                                   "--resend_initial_ms=20",
                                   "--resend_max_ms=300",
                                   "--rpc_timeout_ms=1000",
                                   "--txn_timeout_ms=3000"};
  for (const std::string& a : TlsArgs("c1")) args.push_back(a);
  for (const std::string& a : AccessArgs("c1")) args.push_back(a);
  for (const std::string& a : options_.coordinator_args) args.push_back(a);
  return args;
}

void Cluster::StartCoordinator(const std::map<std::string, std::string>& env, bool wait) {
  if (options_.coordinator_replicas > 1) {
    for (int j = 1; j <= options_.coordinator_replicas; ++j) StartCoordinatorReplica(j, env);
    if (wait) EXPECT_NE(CoordinatorLeaderOf(), 0) << "the coordinator group elected no leader";
    return;
  }
  Kill(&coordinator_);
  std::vector<std::string> args = CoordinatorArgs();
  args.push_back("--listen=" + coordinator_address());
  args.push_back("--data_dir=" + dir_ + "/c1");
  coordinator_.log = dir_ + "/c1.log";
  coordinator_.pid = Spawn("atomq-coordinator", args, env, coordinator_.log);
  if (!wait) return;
  WaitReady("coordinator", [this] {
    grpc::ClientContext ctx;
    Deadline(&ctx, 200);
    v1::ListTransactionsResponse resp;
    return coordinator()->ListTransactions(&ctx, v1::ListTransactionsRequest(), &resp).ok();
  });
}

void Cluster::StartCoordinatorReplica(int j, const std::map<std::string, std::string>& env) {
  Replica& r = coordinator_replicas_[j - 1];
  Kill(&r.proc);
  std::string group;
  for (int k = 1; k <= options_.coordinator_replicas; ++k) {
    absl::StrAppend(&group, k > 1 ? "," : "", k, "=", coordinator_replica_address(k), "/",
                    coordinator_replica_peer_address(k));
  }
  const std::string name = absl::StrCat("c1-r", j);
  std::vector<std::string> args = CoordinatorArgs();
  args.push_back("--listen=" + coordinator_replica_address(j));
  args.push_back("--data_dir=" + dir_ + "/" + name);
  args.push_back("--group=" + group);
  args.push_back(absl::StrCat("--member_id=", j));
  args.push_back("--election_timeout_ms=300");
  args.push_back("--heartbeat_ms=50");
  args.push_back(absl::StrCat("--metrics_listen=127.0.0.1:", r.metrics_port));
  r.proc.log = dir_ + "/" + name + ".log";
  r.proc.pid = Spawn("atomq-coordinator", args, env, r.proc.log);
}

void Cluster::KillCoordinatorReplica(int j) { Kill(&coordinator_replicas_[j - 1].proc); }

std::optional<int> Cluster::WaitCoordinatorReplicaExit(int j, int timeout_ms) {
  return WaitExit(&coordinator_replicas_[j - 1].proc, timeout_ms);
}

int Cluster::CoordinatorLeaderOf(int timeout_ms) {
  int64_t end = NowMs() + timeout_ms;
  do {
    for (int j = 1; j <= options_.coordinator_replicas; ++j) {
      if (coordinator_replicas_[j - 1].proc.pid <= 0) continue;
      grpc::ClientContext ctx;
      Deadline(&ctx, 200);
      v1::ListTransactionsResponse resp;
      auto stub = v1::Coordinator::NewStub(Channel(coordinator_replica_address(j), admin_token()));
      if (stub->ListTransactions(&ctx, v1::ListTransactionsRequest(), &resp).ok()) return j;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (NowMs() < end);
  return 0;
}

std::vector<std::string> Cluster::ParticipantArgs(int i) const {
  std::string peers;
  for (int j = 1; j <= options_.participants; ++j) {
    if (j == i) continue;
    absl::StrAppend(&peers, peers.empty() ? "" : ",", participant_id(j), "=",
                    participant_address(j));
  }
  std::vector<std::string> args = {
      "--id=" + participant_id(i), "--coordinators=c1=" + coordinator_address(),
      "--in_doubt_after_ms=300",   "--resend_initial_ms=50",
      "--resend_max_ms=300",       "--rpc_timeout_ms=1000"};
  for (const std::string& a : TlsArgs(participant_id(i))) args.push_back(a);
  if (!peers.empty()) args.push_back("--peers=" + peers);  // an empty value would take the next
  for (const std::string& a : AccessArgs(participant_id(i))) args.push_back(a);
  for (const std::string& a : options_.participant_args) args.push_back(a);
  return args;
}

void Cluster::StartParticipant(int i, const std::map<std::string, std::string>& env, bool wait) {
  if (options_.replicas > 1) {
    for (int j = 1; j <= options_.replicas; ++j) StartReplica(i, j, env);
    if (wait) EXPECT_NE(LeaderOf(i), 0) << participant_id(i) << " elected no serving leader";
    return;
  }
  Proc& p = participant_procs_[i - 1];
  Kill(&p);
  std::vector<std::string> args = ParticipantArgs(i);
  args.push_back("--listen=" + participant_address(i));
  args.push_back("--data_dir=" + dir_ + "/" + participant_id(i));
  if (options_.participant_metrics) {
    args.push_back(absl::StrCat("--metrics_listen=127.0.0.1:", metrics_ports_[i - 1]));
  }
  p.log = dir_ + "/" + participant_id(i) + ".log";
  p.pid = Spawn("atomq-participant", args, env, p.log);
  if (!wait) return;
  WaitReady(participant_id(i), [this, i] {
    grpc::ClientContext ctx;
    Deadline(&ctx, 200);
    v1::ListQueuesResponse resp;
    return queue(i)->ListQueues(&ctx, v1::ListQueuesRequest(), &resp).ok();
  });
}

void Cluster::StartReplica(int i, int j, const std::map<std::string, std::string>& env) {
  Replica& r = replicas_[i - 1][j - 1];
  Kill(&r.proc);
  std::string group;
  for (int k = 1; k <= options_.replicas; ++k) {
    absl::StrAppend(&group, k > 1 ? "," : "", member_id(i, k), "=", replica_address(i, k), "/",
                    replica_peer_address(i, k));
  }
  const std::string name = absl::StrCat(participant_id(i), "-r", j);
  std::vector<std::string> args = ParticipantArgs(i);
  args.push_back("--listen=" + replica_address(i, j));
  args.push_back("--data_dir=" + dir_ + "/" + name);
  args.push_back("--group=" + group);
  args.push_back(absl::StrCat("--member_id=", member_id(i, j)));
  if (r.join) args.push_back("--join");
  args.push_back(absl::StrCat("--peer_listen=127.0.0.1:", r.peer_port));
  args.push_back("--election_timeout_ms=300");
  args.push_back("--heartbeat_ms=50");
  if (options_.participant_metrics) {
    args.push_back(absl::StrCat("--metrics_listen=127.0.0.1:", r.metrics_port));
  }
  r.proc.log = dir_ + "/" + name + ".log";
  r.proc.pid = Spawn("atomq-participant", args, env, r.proc.log);
}

void Cluster::KillReplica(int i, int j) { Kill(&replicas_[i - 1][j - 1].proc); }

void Cluster::ReplaceReplica(int i, int j, uint64_t member_id, bool elsewhere) {
  Replica& r = replicas_[i - 1][j - 1];
  Kill(&r.proc);
  if (elsewhere) {
    r.proxy.reset();
    r.client_port = FreePort();
    r.peer_port = FreePort();
  }
  std::filesystem::remove_all(absl::StrCat(dir_, "/", participant_id(i), "-r", j));
  r.member_id = member_id;
  r.join = true;
  StartReplica(i, j);
}

uint64_t Cluster::member_id(int i, int j) const {
  const uint64_t id = replicas_[i - 1][j - 1].member_id;
  return id != 0 ? id : uint64_t(j);
}
bool Cluster::ReplicaRunning(int i, int j) const { return replicas_[i - 1][j - 1].proc.pid > 0; }

int Cluster::LeaderOf(int i, int timeout_ms) {
  int64_t end = NowMs() + timeout_ms;
  do {
    for (int j = 1; j <= options_.replicas; ++j) {
      if (!ReplicaRunning(i, j)) continue;
      grpc::ClientContext ctx;
      Deadline(&ctx, 200);
      v1::ListQueuesResponse resp;
      auto stub = v1::Queue::NewStub(Channel(replica_address(i, j), admin_token()));
      if (stub->ListQueues(&ctx, v1::ListQueuesRequest(), &resp).ok()) return j;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (NowMs() < end);
  return 0;
}

std::string Cluster::Reachable(int i) {
  if (options_.replicas <= 1) return participant_address(i);
  int j = LeaderOf(i);
  return j == 0 ? replica_address(i, 1) : replica_address(i, j);
}

void Cluster::StartAll() {
  for (int i = 1; i <= options_.participants; ++i) StartParticipant(i);
  StartCoordinator();
}

void Cluster::Kill(Proc* p) {
  if (p->pid <= 0) return;
  kill(p->pid, SIGKILL);
  waitpid(p->pid, nullptr, 0);
  p->pid = -1;
}

void Cluster::KillCoordinator() {
  Kill(&coordinator_);
  for (Replica& r : coordinator_replicas_) Kill(&r.proc);
}
void Cluster::KillParticipant(int i) {
  Kill(&participant_procs_[i - 1]);
  for (int j = 1; options_.replicas > 1 && j <= options_.replicas; ++j) KillReplica(i, j);
}
void Cluster::SignalParticipant(int i, int sig) {
  if (participant_procs_[i - 1].pid > 0) kill(participant_procs_[i - 1].pid, sig);
}

std::optional<int> Cluster::WaitExit(Proc* p, int timeout_ms) {
  if (p->pid <= 0) return std::nullopt;
  int64_t end = NowMs() + timeout_ms;
  while (NowMs() < end) {
    int status = 0;
    pid_t r = waitpid(p->pid, &status, WNOHANG);
    if (r == p->pid) {
      p->pid = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return std::nullopt;
}

std::optional<int> Cluster::WaitCoordinatorExit(int timeout_ms) {
  return WaitExit(&coordinator_, timeout_ms);
}
std::optional<int> Cluster::WaitParticipantExit(int i, int timeout_ms) {
  return WaitExit(&participant_procs_[i - 1], timeout_ms);
}
bool Cluster::CoordinatorRunning() const { return coordinator_.pid > 0; }

std::unique_ptr<v1::Coordinator::Stub> Cluster::coordinator() {
  return coordinator_as(admin_token());
}
std::unique_ptr<v1::Queue::Stub> Cluster::queue(int i) { return queue_as(i, admin_token()); }
std::unique_ptr<v1::ParticipantTxn::Stub> Cluster::txn(int i) { return txn_as(i, admin_token()); }
std::unique_ptr<v1::Coordinator::Stub> Cluster::coordinator_as(const std::string& token,
                                                               const std::string& certificate) {
  std::string address = coordinator_address();
  if (options_.coordinator_replicas > 1) {
    const int j = CoordinatorLeaderOf(5000);
    address = coordinator_replica_address(j == 0 ? 1 : j);
  }
  return v1::Coordinator::NewStub(Channel(address, token, certificate));
}
std::unique_ptr<v1::Queue::Stub> Cluster::queue_as(int i, const std::string& token,
                                                   const std::string& certificate) {
  return v1::Queue::NewStub(Channel(Reachable(i), token, certificate));
}
std::unique_ptr<v1::ParticipantTxn::Stub> Cluster::txn_as(int i, const std::string& token,
                                                          const std::string& certificate) {
  return v1::ParticipantTxn::NewStub(Channel(Reachable(i), token, certificate));
}

void Cluster::CreateQueue(int i, const std::string& name) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 5000);
  v1::CreateQueueRequest req;
  req.set_name(name);
  v1::CreateQueueResponse resp;
  grpc::Status s = queue(i)->CreateQueue(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << "CreateQueue " << name << " on p" << i << ": " << s.error_message();
}

v1::QueueInfo Cluster::QueueInfoOf(int i, const std::string& name) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 5000);
  v1::ListQueuesResponse resp;
  EXPECT_TRUE(queue(i)->ListQueues(&ctx, v1::ListQueuesRequest(), &resp).ok());
  for (const v1::QueueInfo& q : resp.queues()) {
    if (q.name() == name) return q;
  }
  ADD_FAILURE() << "no queue " << name;
  return v1::QueueInfo();
}

std::vector<std::string> Cluster::Drain(int i, const std::string& name) {
  std::vector<std::string> out;
  auto stub = queue(i);
  for (;;) {
    grpc::ClientContext ctx;
    Deadline(&ctx, 5000);
    v1::ReceiveRequest req;
    req.set_queue(name);
    req.set_max_messages(100);
    v1::ReceiveResponse resp;
    grpc::Status s = stub->Receive(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << "Receive " << name << " on p" << i << ": " << s.error_message();
    if (!s.ok() || resp.deliveries_size() == 0) break;
    for (const v1::Delivery& d : resp.deliveries()) {
      out.push_back(d.payload());
      grpc::ClientContext actx;
      Deadline(&actx, 5000);
      v1::AckRequest ack;
      ack.set_queue(d.queue());
      ack.set_sequence(d.sequence());
      ack.set_lease_token(d.lease_token());
      v1::AckResponse aresp;
      grpc::Status as = stub->Ack(&actx, ack, &aresp);
      EXPECT_TRUE(as.ok()) << "Ack: " << as.error_message();
    }
  }
  return out;
}

double Cluster::ReplicaMetric(int i, int j, const std::string& name) {
  return MetricAt(replicas_[i - 1][j - 1].metrics_port, name);
}

double Cluster::ParticipantMetric(int i, const std::string& name) {
  return MetricAt(metrics_ports_[i - 1], name);
}

std::optional<std::string> HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return std::nullopt;
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return std::nullopt;
  }
  std::string response;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.", 0) != 0 || response.find(" 200 ") > 12 ||
      body == std::string::npos) {
    return std::nullopt;
  }
  return response.substr(body + 4);
}

double MetricAt(int port, const std::string& name) {
  std::optional<std::string> body = HttpGet(port, "/metrics");
  if (!body) return -1;
  const std::string text = "\n" + *body;
  const std::string line = "\n" + name + " ";
  size_t at = text.find(line);
  if (at == std::string::npos) return -1;
  return std::strtod(text.c_str() + at + line.size(), nullptr);
}

v1::TxnState Cluster::AwaitOutcome(int i, const std::string& txn_id, int timeout_ms) {
  int64_t end = NowMs() + timeout_ms;
  v1::TxnState last = v1::UNKNOWN;
  while (NowMs() < end) {
    grpc::ClientContext ctx;
    Deadline(&ctx, 1000);
    v1::ListParticipantTxnsResponse list;
    if (txn(i)->ListTransactions(&ctx, v1::ListParticipantTxnsRequest(), &list).ok()) {
      bool pending = false;
      for (const auto& t : list.transactions()) {
        if (t.txn_id() == txn_id) {
          pending = true;
          last = t.state();
        }
      }
      if (!pending) {
        grpc::ClientContext qctx;
        Deadline(&qctx, 1000);
        v1::TxnRef ref;
        ref.set_txn_id(txn_id);
        v1::QueryStateResponse st;
        if (txn(i)->QueryState(&qctx, ref, &st).ok()) return st.state();
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return last;
}

}  // namespace atomq::testing
