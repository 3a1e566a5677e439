#include "bench/cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "atomq/v1/coordinator.grpc.pb.h"
#include "atomq/v1/participant.grpc.pb.h"
#include "bench/bench_util.h"

namespace atomq::bench {
namespace {

absl::StatusOr<int> FreeLoopbackPort(std::vector<int>* hold) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    close(fd);
    return absl::InternalError(absl::StrCat("bind 127.0.0.1:0: ", std::strerror(errno)));
  }
  // Held open until every port is chosen, so no two are the same.
  hold->push_back(fd);
  return int(ntohs(a.sin_port));
}

// `n` distinct free loopback ports.
absl::StatusOr<std::vector<int>> FreeLoopbackPorts(int n) {
  std::vector<int> hold;
  std::vector<int> ports;
  for (int i = 0; i < n; ++i) {
    absl::StatusOr<int> port = FreeLoopbackPort(&hold);
    if (!port.ok()) {
      for (int fd : hold) close(fd);
      return port.status();
    }
    ports.push_back(*port);
  }
  for (int fd : hold) close(fd);
  return ports;
}

// In the forked child: never returns.
[[noreturn]] void ExecChild(std::vector<char*>& argv, int log_fd, pid_t parent) {
  // Own process group: a Ctrl-C at the terminal reaches only the bench,
  // which then stops the servers in order. Die with the bench if it dies.
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127);
  dup2(log_fd, STDOUT_FILENO);
  dup2(log_fd, STDERR_FILENO);
  int devnull = open("/dev/null", O_RDONLY);
  if (devnull >= 0) dup2(devnull, STDIN_FILENO);
  execv(argv[0], argv.data());
  const char msg[] = "atomq-bench: exec failed\n";
  ssize_t ignored = write(STDERR_FILENO, msg, sizeof(msg) - 1);
  (void)ignored;
  _exit(127);
}

absl::Status StartProc(Proc* p) {
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(p->binary.c_str()));
  for (std::string& a : p->args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int log_fd = open(p->log_path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("open ", p->log_path, ": ", std::strerror(errno)));
  }
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) ExecChild(argv, log_fd, parent);
  close(log_fd);
  p->pid = pid;
  return absl::OkStatus();
}

// Exited cleanly, or by the signals StopProcs sends.
bool StoppedCleanly(int wait_status) {
  return (WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0) ||
         (WIFSIGNALED(wait_status) &&
          (WTERMSIG(wait_status) == SIGTERM || WTERMSIG(wait_status) == SIGKILL));
}

std::string LoopbackAddress(int port) { return absl::StrCat("127.0.0.1:", port); }

Proc ServerProc(const std::string& name, const std::string& binary, const std::string& data_dir,
                std::vector<std::string> args, const std::vector<std::string>& extra_args) {
  Proc p;
  p.name = name;
  p.binary = binary;
  p.args = std::move(args);
  p.args.insert(p.args.end(), extra_args.begin(), extra_args.end());
  p.log_path = absl::StrCat(data_dir, "/", name, ".log");
  return p;
}

// Creates DATA_DIR/NAME and returns it.
std::string ServerDir(const std::string& data_dir, const std::string& name) {
  std::string dir = absl::StrCat(data_dir, "/", name);
  std::filesystem::create_directories(dir);
  return dir;
}

// One replica's loopback ports (peer: 0 outside a group).
struct MemberPorts {
  int grpc = 0;
  int metrics = 0;
  int peer = 0;
};

// A server's ports: one member, or `replicas` members of a group, from
// `ports` (taken from the front).
std::vector<MemberPorts> TakePorts(int replicas, std::vector<int>* ports) {
  std::vector<MemberPorts> out(static_cast<size_t>(replicas));
  auto take = [ports] {
    int p = ports->back();
    ports->pop_back();
    return p;
  };
  for (MemberPorts& m : out) {
    m.grpc = take();
    m.metrics = take();
    if (replicas > 1) m.peer = take();
  }
  return out;
}

// How server `name` is reached: its one address, or its group's.
Server ServerAt(const std::string& name, const std::vector<MemberPorts>& ports) {
  Server s{name, LoopbackAddress(ports[0].grpc), LoopbackAddress(ports[0].metrics), ""};
  if (ports.size() > 1) {
    std::vector<std::string> members;
    for (const MemberPorts& m : ports) members.push_back(LoopbackAddress(m.grpc));
    s.members = absl::StrJoin(members, "|");
  }
  return s;
}

// What callers are configured with: "a" or "a|b|c".
std::string ClientAddress(const Server& s) {
  return s.members.empty() ? s.grpc_address : s.members;
}

// The processes of server `name`: one, or a replica of its group per
// member (docs/design.md 10.2), each with its own data dir.
void PlanProcs(const SpawnOptions& o, const std::string& name, const std::string& binary,
               const std::vector<MemberPorts>& ports, const std::vector<std::string>& args,
               const std::vector<std::string>& extra_args, Cluster* c) {
  auto with = [&args](std::vector<std::string> more) {
    more.insert(more.begin(), args.begin(), args.end());
    return more;
  };
  if (ports.size() == 1) {
    c->procs.push_back(ServerProc(name, binary, o.data_dir,
                                  with({"--listen=" + LoopbackAddress(ports[0].grpc),
                                        "--data_dir=" + ServerDir(o.data_dir, name),
                                        "--metrics_listen=" + LoopbackAddress(ports[0].metrics)}),
                                  extra_args));
    return;
  }
  std::vector<std::string> group;
  for (size_t j = 0; j < ports.size(); ++j) {
    group.push_back(absl::StrCat(j + 1, "=", LoopbackAddress(ports[j].grpc), "/",
                                 LoopbackAddress(ports[j].peer)));
  }
  for (size_t j = 0; j < ports.size(); ++j) {
    const std::string replica = absl::StrCat(name, "-r", j + 1);
    Server s{replica, LoopbackAddress(ports[j].grpc), LoopbackAddress(ports[j].metrics), ""};
    c->replicas.push_back(s);
    c->procs.push_back(ServerProc(
        replica, binary, o.data_dir,
        with({"--listen=" + s.grpc_address, "--data_dir=" + ServerDir(o.data_dir, replica),
              "--metrics_listen=" + s.metrics_address, "--group=" + absl::StrJoin(group, ","),
              absl::StrCat("--member_id=", j + 1)}),
        extra_args));
  }
}

void PlanServers(const SpawnOptions& o, std::vector<int> ports, Cluster* c) {
  const std::vector<MemberPorts> coordinator_ports = TakePorts(o.replicas, &ports);
  std::vector<std::vector<MemberPorts>> participant_ports;
  c->coordinator = ServerAt("c1", coordinator_ports);
  std::vector<std::string> peer_list;
  for (int i = 1; i <= o.participants; ++i) {
    std::string id = absl::StrCat("p", i);
    participant_ports.push_back(TakePorts(o.replicas, &ports));
    c->participants.emplace_back(id, ServerAt(id, participant_ports.back()));
    peer_list.push_back(id + "=" + ClientAddress(c->participants.back().second));
  }
  // Each participant dials only these: its coordinator and the others.
  const std::string coordinators = "--coordinators=c1=" + ClientAddress(c->coordinator);
  const std::string peers = "--peers=" + absl::StrJoin(peer_list, ",");
  for (int i = 1; i <= o.participants; ++i) {
    const std::string& id = c->participants[size_t(i - 1)].first;
    PlanProcs(o, id, o.bin_dir + "/atomq-participant", participant_ports[size_t(i - 1)],
              {"--id=" + id, "--plaintext", coordinators, peers}, o.participant_args, c);
  }
  PlanProcs(o, "c1", o.bin_dir + "/atomq-coordinator", coordinator_ports,
            {"--id=c1", "--plaintext", "--participants=" + absl::StrJoin(peer_list, ",")},
            o.coordinator_args, c);
}

// Whether each participant (by index) and, last, the coordinator answered,
// and what each answered last.
struct Readiness {
  std::vector<bool> ready;
  std::vector<std::string> last;
};

// An error if a spawned server exited while starting.
absl::Status NoneDied(Cluster* c) {
  for (Proc& p : c->procs) {
    if (Reap(&p)) {
      return absl::UnavailableError(absl::StrCat(p.name, " ", DescribeWait(p.wait_status),
                                                 " while starting; its log (", p.log_path, "):\n",
                                                 LogTail(p.log_path)));
    }
  }
  return absl::OkStatus();
}

// A cheap call to the server at `address`; a fresh channel per attempt: a
// channel that saw "connection refused" waits out gRPC's reconnect backoff
// (seconds) before trying again. No wait_for_ready: the error then says why,
// e.g. "Connection refused". A group's followers refuse it (NotLeader).
using Ask = grpc::Status (*)(const std::string& address, int attempt);

grpc::Status AskParticipant(const std::string& address, int attempt) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 500);
  atomq::v1::ListQueuesResponse resp;
  return atomq::v1::Queue::NewStub(MakeChannel(address, -attempt))
      ->ListQueues(&ctx, atomq::v1::ListQueuesRequest(), &resp);
}

grpc::Status AskCoordinator(const std::string& address, int attempt) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 500);
  atomq::v1::ListTransactionsRequest req;
  req.set_limit(1);
  atomq::v1::ListTransactionsResponse resp;
  return atomq::v1::Coordinator::NewStub(MakeChannel(address, -attempt))
      ->ListTransactions(&ctx, req, &resp);
}

// Asks `s` (each member of a group until one serves); the one that served
// becomes the address the load dials.
bool ProbeServer(Server* s, Ask ask, int attempt, std::string* last) {
  std::vector<std::string> addresses = {s->grpc_address};
  if (!s->members.empty()) addresses = absl::StrSplit(s->members, '|', absl::SkipEmpty());
  std::vector<std::string> answers;
  for (const std::string& a : addresses) {
    grpc::Status st = ask(a, attempt);
    if (st.ok()) {
      s->grpc_address = a;
      return true;
    }
    answers.push_back(addresses.size() > 1 ? a + ": " + StatusText(st) : StatusText(st));
  }
  *last = absl::StrJoin(answers, "; ");
  return false;
}

// One round of probes of the servers not yet ready.
void Probe(Cluster* c, int attempt, Readiness* r) {
  for (size_t i = 0; i < c->participants.size(); ++i) {
    if (r->ready[i]) continue;
    r->ready[i] = ProbeServer(&c->participants[i].second, AskParticipant, attempt, &r->last[i]);
  }
  if (!r->ready.back()) {
    r->ready.back() = ProbeServer(&c->coordinator, AskCoordinator, attempt, &r->last.back());
  }
}

absl::Status NotReadyError(const Cluster& c, const Readiness& r, std::chrono::seconds timeout) {
  std::vector<std::string> lines;
  for (size_t i = 0; i < c.participants.size(); ++i) {
    if (!r.ready[i]) {
      lines.push_back(absl::StrCat("participant ", c.participants[i].first, " at ",
                                   c.participants[i].second.grpc_address, ": ", r.last[i]));
    }
  }
  if (!r.ready.back()) {
    lines.push_back(
        absl::StrCat("coordinator at ", c.coordinator.grpc_address, ": ", r.last.back()));
  }
  return absl::UnavailableError(absl::StrCat("cluster not reachable within ", timeout.count(),
                                             " s:\n  ", absl::StrJoin(lines, "\n  ")));
}

}  // namespace

std::string DescribeWait(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return absl::StrCat("killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)),
                        ")", WCOREDUMP(status) ? ", core dumped" : "");
  }
  return "stopped";
}

bool Reap(Proc* p) {
  if (p->pid <= 0 || p->exited) return p->exited;
  int status = 0;
  if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
    p->exited = true;
    p->wait_status = status;
  }
  return p->exited;
}

std::string LogTail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (s.size() > max_bytes) s = "..." + s.substr(s.size() - max_bytes);
  return s;
}

std::vector<std::string> StopProcs(std::vector<Proc>* procs, std::chrono::seconds grace) {
  std::vector<std::string> problems;
  for (Proc& p : *procs) {
    if (p.pid > 0 && !Reap(&p)) kill(p.pid, SIGTERM);
  }
  auto deadline = Clock::now() + grace;
  for (;;) {
    bool all = true;
    for (Proc& p : *procs) all = (p.pid <= 0 || Reap(&p)) && all;
    if (all || Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (Proc& p : *procs) {
    if (p.pid <= 0 || Reap(&p)) continue;
    problems.push_back(absl::StrCat(p.name, " (pid ", p.pid, ") did not exit within ",
                                    grace.count(), " s of SIGTERM; sent SIGKILL"));
    kill(p.pid, SIGKILL);
    int status = 0;
    waitpid(p.pid, &status, 0);
    p.exited = true;
    p.wait_status = status;
  }
  for (Proc& p : *procs) {
    if (p.pid <= 0 || StoppedCleanly(p.wait_status)) continue;
    problems.push_back(absl::StrCat(p.name, " (pid ", p.pid, ") ", DescribeWait(p.wait_status),
                                    " on SIGTERM; log ", p.log_path));
  }
  return problems;
}

std::string SelfDir() {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return ".";
  return p.parent_path().string();
}

absl::Status Spawn(const SpawnOptions& o, Cluster* c) {
  for (const std::string& b :
       {o.bin_dir + "/atomq-coordinator", o.bin_dir + "/atomq-participant"}) {
    if (access(b.c_str(), X_OK) != 0) {
      return absl::NotFoundError(
          absl::StrCat(b, ": ", std::strerror(errno), " (build it, or pass --bin_dir)"));
    }
  }
  const int per_member = o.replicas > 1 ? 3 : 2;
  absl::StatusOr<std::vector<int>> ports =
      FreeLoopbackPorts(per_member * o.replicas * (o.participants + 1));
  if (!ports.ok()) return ports.status();
  PlanServers(o, *std::move(ports), c);
  for (Proc& proc : c->procs) {
    if (absl::Status st = StartProc(&proc); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status WaitReady(Cluster* c, std::chrono::seconds timeout) {
  auto deadline = Clock::now() + timeout;
  Readiness r;
  r.ready.assign(c->participants.size() + 1, false);
  r.last.resize(c->participants.size() + 1);
  for (int attempt = 1;; ++attempt) {
    if (absl::Status st = NoneDied(c); !st.ok()) return st;
    Probe(c, attempt, &r);
    if (std::all_of(r.ready.begin(), r.ready.end(), [](bool b) { return b; })) {
      return absl::OkStatus();
    }
    if (Clock::now() >= deadline) return NotReadyError(*c, r, timeout);
    if (Interrupted()) return absl::CancelledError("interrupted");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

absl::Status CreateQueues(const Cluster& c, const std::string& queue) {
  for (const auto& [id, s] : c.participants) {
    auto stub = atomq::v1::Queue::NewStub(MakeChannel(s.grpc_address, 0));
    grpc::ClientContext ctx;
    SetDeadline(&ctx, 5000);
    atomq::v1::CreateQueueRequest req;
    req.set_name(queue);
    atomq::v1::CreateQueueResponse resp;
    grpc::Status st = stub->CreateQueue(&ctx, req, &resp);
    if (!st.ok() && st.error_code() != grpc::StatusCode::ALREADY_EXISTS) {
      return absl::UnavailableError(absl::StrCat("CreateQueue \"", queue, "\" on ", id, " (",
                                                 s.grpc_address, "): ", StatusText(st)));
    }
  }
  return absl::OkStatus();
}

}  // namespace atomq::bench
