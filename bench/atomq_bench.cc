// atomq-bench: a closed-loop load generator over the real gRPC API.
//
// Each client runs one Execute (one enqueue per op on every participant) at a
// time and starts the next as soon as the reply arrives. All clients are in
// flight at once on a few completion-queue threads (not a thread per client):
// the machine's cores belong to the servers under test.
//
// Figures are taken over a measured window after a warmup: throughput,
// latency percentiles, and from each server's /metrics the fsyncs and CPU
// spent per transaction, read against the data disk's own serial fsync rate
// measured in the same run.
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "atomq/v1/coordinator.grpc.pb.h"
#include "atomq/v1/participant.grpc.pb.h"
#include "grpcpp/alarm.h"
#include "grpcpp/grpcpp.h"

namespace {

using Clock = std::chrono::steady_clock;
using atomq::v1::Coordinator;
using atomq::v1::ExecuteRequest;
using atomq::v1::ExecuteResponse;

// Set by SIGINT/SIGTERM: end the window early but still stop the servers.
std::atomic<bool> g_interrupted{false};

void OnSignal(int) { g_interrupted.store(true); }

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

const char* CodeName(int code) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                                 "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
                                 "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : "?";
}

std::string StatusText(const grpc::Status& s) {
  return absl::StrCat(CodeName(s.error_code()), ": ", s.error_message());
}

// ---------------------------------------------------------------------------
// Latency histogram: log-linear buckets over microseconds. Values below 128
// are exact; above, each power of two has 64 buckets, so any percentile is
// within 1.6% of the true sample (the max is kept exactly).

class Histogram {
 public:
  Histogram() : buckets_(kLinear + kHalf * 58, 0) {}

  void Add(uint64_t us) {
    ++buckets_[Index(us)];
    ++count_;
    sum_ += us;
    max_ = std::max(max_, us);
  }

  void Merge(const Histogram& o) {
    for (size_t i = 0; i < buckets_.size(); ++i) buckets_[i] += o.buckets_[i];
    count_ += o.count_;
    sum_ += o.sum_;
    max_ = std::max(max_, o.max_);
  }

  // The value at quantile q (0..1), in microseconds; 0 when empty.
  double Quantile(double q) const {
    if (count_ == 0) return 0;
    uint64_t rank = std::max<uint64_t>(1, uint64_t(std::ceil(q * double(count_))));
    uint64_t seen = 0;
    for (size_t i = 0; i < buckets_.size(); ++i) {
      seen += buckets_[i];
      if (seen >= rank) return std::min(Mid(i), double(max_));
    }
    return double(max_);
  }

  uint64_t count() const { return count_; }
  uint64_t max() const { return max_; }
  double mean() const { return count_ ? double(sum_) / double(count_) : 0; }

 private:
  static constexpr int kLinear = 128;
  static constexpr int kHalf = 64;

  static size_t Index(uint64_t v) {
    if (v < kLinear) return size_t(v);
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 6;
    uint64_t top = v >> shift;  // 64..127
    return kLinear + size_t(shift - 1) * kHalf + size_t(top - kHalf);
  }

  static double Mid(size_t i) {
    if (i < size_t(kLinear)) return double(i);
    size_t k = i - kLinear;
    int shift = int(k / kHalf) + 1;
    uint64_t top = k % kHalf + kHalf;
    return double(top << shift) + double(uint64_t{1} << shift) / 2;
  }

  std::vector<uint64_t> buckets_;
  uint64_t count_ = 0;
  uint64_t sum_ = 0;
  uint64_t max_ = 0;
};

// ---------------------------------------------------------------------------
// Minimal HTTP GET (the metrics endpoints are plain HTTP/1.1 on loopback).

bool SplitHostPort(const std::string& addr, std::string* host, std::string* port) {
  size_t colon = addr.rfind(':');
  if (colon == std::string::npos || colon + 1 == addr.size()) return false;
  *host = addr.substr(0, colon);
  *port = addr.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  return !host->empty();
}

std::string DecodeChunked(const std::string& body) {
  std::string out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t eol = body.find("\r\n", pos);
    if (eol == std::string::npos) break;
    size_t len = std::strtoul(body.substr(pos, eol - pos).c_str(), nullptr, 16);
    if (len == 0) break;
    out.append(body, eol + 2, len);
    pos = eol + 2 + len + 2;
  }
  return out;
}

absl::StatusOr<std::string> HttpGet(const std::string& addr, const std::string& path,
                                    int timeout_ms) {
  std::string host, port;
  if (!SplitHostPort(addr, &host, &port)) {
    return absl::InvalidArgumentError(absl::StrCat("\"", addr, "\": want host:port"));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(absl::StrCat(addr, ": ", gai_strerror(rc)));
  }
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  auto remaining_ms = [&] {
    return int(std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::milliseconds>(
                                        deadline - Clock::now()).count()));
  };
  int fd = -1;
  std::string last_error = "no address";
  for (addrinfo* ai = res; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      last_error = std::strerror(errno);
      close(fd);
      fd = -1;
      continue;
    }
    pollfd p{fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof(err);
    if (poll(&p, 1, remaining_ms()) != 1 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
      last_error = err ? std::strerror(err) : "connect timed out";
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd < 0) return absl::UnavailableError(absl::StrCat(addr, ": ", last_error));

  std::string req = absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: ", addr,
                                 "\r\nConnection: close\r\n\r\n");
  size_t sent = 0;
  while (sent < req.size()) {
    pollfd p{fd, POLLOUT, 0};
    if (poll(&p, 1, remaining_ms()) != 1) break;
    ssize_t n = send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n <= 0 && errno != EAGAIN) break;
    if (n > 0) sent += size_t(n);
  }
  std::string resp;
  bool eof = false;
  while (sent == req.size() && !eof) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, remaining_ms()) != 1) break;
    char buf[16384];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) eof = true;
    if (n < 0 && errno != EAGAIN) break;
    if (n > 0) resp.append(buf, size_t(n));
  }
  close(fd);
  if (!eof) return absl::DeadlineExceededError(absl::StrCat("GET http://", addr, path,
                                                            ": no complete reply"));
  size_t head_end = resp.find("\r\n\r\n");
  if (resp.compare(0, 5, "HTTP/") != 0 || head_end == std::string::npos) {
    return absl::DataLossError(absl::StrCat("GET http://", addr, path, ": not an HTTP reply"));
  }
  std::string head = resp.substr(0, head_end);
  std::string body = resp.substr(head_end + 4);
  size_t sp = head.find(' ');
  if (sp == std::string::npos || head.compare(sp + 1, 3, "200") != 0) {
    return absl::UnavailableError(absl::StrCat("GET http://", addr, path, ": ",
                                               head.substr(0, head.find("\r\n"))));
  }
  std::string lower = head;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  if (lower.find("transfer-encoding: chunked") != std::string::npos) body = DecodeChunked(body);
  return body;
}

// ---------------------------------------------------------------------------
// Prometheus text: "name{labels} value [timestamp]" lines. Values are kept
// both by full series key and summed by bare metric name.

struct Scrape {
  bool ok = false;
  std::string error;
  std::map<std::string, double> series;  // "name{labels}" or "name"
  std::map<std::string, double> by_name;

  double Get(const std::string& name) const {
    auto it = by_name.find(name);
    return it == by_name.end() ? NAN : it->second;
  }
  double Series(const std::string& key) const {
    auto it = series.find(key);
    return it == series.end() ? NAN : it->second;
  }
};

Scrape ParsePrometheus(const std::string& text) {
  Scrape s;
  s.ok = true;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    size_t name_end = line.find_first_of("{ \t");
    if (name_end == absl::string_view::npos) continue;
    std::string name(line.substr(0, name_end));
    size_t value_start = name_end;
    std::string key = name;
    if (line[name_end] == '{') {
      size_t close = line.find('}', name_end);
      if (close == absl::string_view::npos) continue;
      key = std::string(line.substr(0, close + 1));
      value_start = close + 1;
    }
    absl::string_view rest = absl::StripLeadingAsciiWhitespace(line.substr(value_start));
    absl::string_view value_text = rest.substr(0, rest.find_first_of(" \t"));
    double v = 0;
    if (!absl::SimpleAtod(value_text, &v)) continue;
    s.series[key] = v;
    s.by_name[name] += v;
  }
  return s;
}

Scrape ScrapeMetrics(const std::string& addr) {
  absl::StatusOr<std::string> body = HttpGet(addr, "/metrics", 2000);
  if (!body.ok()) {
    Scrape s;
    s.error = std::string(body.status().message());
    return s;
  }
  return ParsePrometheus(*body);
}

// ---------------------------------------------------------------------------
// The disk's own serial fsync rate: overwrite 4 KiB blocks of a preallocated
// file and fdatasync after each, as a log writer does at best (no file growth,
// so no metadata journal commit per sync).

absl::StatusOr<double> DiskFsyncRate(const std::string& dir, double seconds) {
  std::string path = dir + "/atomq-bench-fsync-probe.XXXXXX";
  int fd = mkostemp(path.data(), O_CLOEXEC);
  if (fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  }
  constexpr size_t kBlock = 4096;
  constexpr size_t kBlocks = 256;
  std::vector<char> block(kBlock, 'x');
  absl::Status st;
  for (size_t i = 0; i < kBlocks && st.ok(); ++i) {
    if (pwrite(fd, block.data(), kBlock, off_t(i * kBlock)) != ssize_t(kBlock)) {
      st = absl::InternalError(absl::StrCat("write ", path, ": ", std::strerror(errno)));
    }
  }
  if (st.ok() && fsync(fd) != 0) {
    st = absl::InternalError(absl::StrCat("fsync ", path, ": ", std::strerror(errno)));
  }
  uint64_t n = 0;
  auto start = Clock::now();
  double elapsed = 0;
  while (st.ok() && elapsed < seconds) {
    block[0] = char('a' + n % 26);
    if (pwrite(fd, block.data(), kBlock, off_t((n % kBlocks) * kBlock)) != ssize_t(kBlock) ||
        fdatasync(fd) != 0) {
      st = absl::InternalError(absl::StrCat("write+fdatasync ", path, ": ", std::strerror(errno)));
    }
    ++n;
    elapsed = Seconds(Clock::now() - start);
  }
  close(fd);
  unlink(path.c_str());
  if (!st.ok()) return st;
  return double(n) / elapsed;
}

// ---------------------------------------------------------------------------
// Spawned servers.

struct Proc {
  std::string name;     // c1, p1, ...
  std::string binary;
  std::vector<std::string> args;
  std::string log_path;
  pid_t pid = -1;
  bool exited = false;  // reaped
  int wait_status = 0;
};

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
  if (pid == 0) {
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
  close(log_fd);
  p->pid = pid;
  return absl::OkStatus();
}

std::string DescribeWait(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return absl::StrCat("killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)),
                        ")", WCOREDUMP(status) ? ", core dumped" : "");
  }
  return "stopped";
}

// True if the process has exited (and reaps it).
bool Reap(Proc* p) {
  if (p->pid <= 0 || p->exited) return p->exited;
  int status = 0;
  if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
    p->exited = true;
    p->wait_status = status;
  }
  return p->exited;
}

std::string LogTail(const std::string& path, size_t max_bytes = 2000) {
  std::ifstream in(path, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (s.size() > max_bytes) s = "..." + s.substr(s.size() - max_bytes);
  return s;
}

// SIGTERM to each, up to `grace` for all to exit, then SIGKILL the rest.
// Returns lines describing anything abnormal.
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
    if (p.pid <= 0) continue;
    bool clean = (WIFEXITED(p.wait_status) && WEXITSTATUS(p.wait_status) == 0) ||
                 (WIFSIGNALED(p.wait_status) &&
                  (WTERMSIG(p.wait_status) == SIGTERM || WTERMSIG(p.wait_status) == SIGKILL));
    if (!clean) {
      problems.push_back(absl::StrCat(p.name, " (pid ", p.pid, ") ", DescribeWait(p.wait_status),
                                      " on SIGTERM; log ", p.log_path));
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------
// The cluster under test, spawned or given.

struct Server {
  std::string name;
  std::string grpc_address;
  std::string metrics_address;  // empty: not scraped
};

struct Cluster {
  Server coordinator;
  std::vector<std::pair<std::string, Server>> participants;  // participant id -> server
  std::vector<Proc> procs;  // spawned only
  std::string data_dir;     // the temp root when spawned
};

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& addr, int index) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // Fast reconnects while the servers come up.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  // Its own connection: not shared through gRPC's global subchannel pool.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("atomq.bench.channel", index);
  return grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
}

void SetDeadline(grpc::ClientContext* ctx, int ms) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

// Polls a cheap RPC on every server until all answer, a spawned one dies, or
// `timeout` passes.
absl::Status WaitReady(Cluster* c, std::chrono::seconds timeout) {
  auto deadline = Clock::now() + timeout;
  std::vector<bool> ready(c->participants.size() + 1, false);
  std::vector<std::string> last(c->participants.size() + 1);
  // A fresh channel per attempt: a channel that saw "connection refused"
  // waits out gRPC's reconnect backoff (seconds) before trying again.
  for (int attempt = 1;; ++attempt) {
    for (Proc& p : c->procs) {
      if (Reap(&p)) {
        return absl::UnavailableError(absl::StrCat(
            p.name, " ", DescribeWait(p.wait_status), " while starting; its log (", p.log_path,
            "):\n", LogTail(p.log_path)));
      }
    }
    bool all = true;
    for (size_t i = 0; i < c->participants.size(); ++i) {
      if (ready[i]) continue;
      auto stub = atomq::v1::Queue::NewStub(
          MakeChannel(c->participants[i].second.grpc_address, -attempt));
      // Fail fast (no wait_for_ready): the error then says why, e.g.
      // "Connection refused".
      grpc::ClientContext ctx;
      SetDeadline(&ctx, 500);
      atomq::v1::ListQueuesRequest req;
      atomq::v1::ListQueuesResponse resp;
      grpc::Status s = stub->ListQueues(&ctx, req, &resp);
      ready[i] = s.ok();
      last[i] = StatusText(s);
      all = all && ready[i];
    }
    if (!ready.back()) {
      grpc::ClientContext ctx;
      SetDeadline(&ctx, 500);
      atomq::v1::ListTransactionsRequest req;
      req.set_limit(1);
      atomq::v1::ListTransactionsResponse resp;
      grpc::Status s = Coordinator::NewStub(MakeChannel(c->coordinator.grpc_address, -attempt))
                           ->ListTransactions(&ctx, req, &resp);
      ready.back() = s.ok();
      last.back() = StatusText(s);
      all = all && ready.back();
    }
    if (all) return absl::OkStatus();
    if (Clock::now() >= deadline) {
      std::vector<std::string> lines;
      for (size_t i = 0; i < c->participants.size(); ++i) {
        if (!ready[i]) {
          lines.push_back(absl::StrCat("participant ", c->participants[i].first, " at ",
                                       c->participants[i].second.grpc_address, ": ", last[i]));
        }
      }
      if (!ready.back()) {
        lines.push_back(absl::StrCat("coordinator at ", c->coordinator.grpc_address, ": ",
                                     last.back()));
      }
      return absl::UnavailableError(absl::StrCat("cluster not reachable within ", timeout.count(),
                                                 " s:\n  ", absl::StrJoin(lines, "\n  ")));
    }
    if (g_interrupted.load()) return absl::CancelledError("interrupted");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

std::string SelfDir() {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return ".";
  return p.parent_path().string();
}

struct SpawnOptions {
  std::string bin_dir;
  std::string data_dir;  // created by the caller
  int participants = 3;
  std::vector<std::string> coordinator_args;
  std::vector<std::string> participant_args;
};

absl::Status Spawn(const SpawnOptions& o, Cluster* c) {
  std::string coord_bin = o.bin_dir + "/atomq-coordinator";
  std::string part_bin = o.bin_dir + "/atomq-participant";
  for (const std::string& b : {coord_bin, part_bin}) {
    if (access(b.c_str(), X_OK) != 0) {
      return absl::NotFoundError(absl::StrCat(b, ": ", std::strerror(errno),
                                              " (build it, or pass --bin_dir)"));
    }
  }
  std::vector<int> hold;
  std::vector<int> ports;
  for (int i = 0; i < 2 * (o.participants + 1); ++i) {
    absl::StatusOr<int> port = FreeLoopbackPort(&hold);
    if (!port.ok()) {
      for (int fd : hold) close(fd);
      return port.status();
    }
    ports.push_back(*port);
  }
  for (int fd : hold) close(fd);

  auto addr = [](int port) { return absl::StrCat("127.0.0.1:", port); };
  std::vector<std::string> peer_list;
  for (int i = 1; i <= o.participants; ++i) {
    std::string id = absl::StrCat("p", i);
    Server s{id, addr(ports[2 * i]), addr(ports[2 * i + 1])};
    peer_list.push_back(absl::StrCat(id, "=", s.grpc_address));
    c->participants.emplace_back(id, s);
    Proc p;
    p.name = id;
    p.binary = part_bin;
    std::string dir = absl::StrCat(o.data_dir, "/", id);
    std::filesystem::create_directories(dir);
    p.args = {"--id=" + id, "--listen=" + s.grpc_address, "--data_dir=" + dir,
              "--metrics_listen=" + s.metrics_address};
    p.args.insert(p.args.end(), o.participant_args.begin(), o.participant_args.end());
    p.log_path = absl::StrCat(o.data_dir, "/", id, ".log");
    c->procs.push_back(std::move(p));
  }
  c->coordinator = Server{"c1", addr(ports[0]), addr(ports[1])};
  Proc p;
  p.name = "c1";
  p.binary = coord_bin;
  std::string dir = o.data_dir + "/c1";
  std::filesystem::create_directories(dir);
  p.args = {"--id=c1", "--listen=" + c->coordinator.grpc_address, "--data_dir=" + dir,
            "--participants=" + absl::StrJoin(peer_list, ","),
            "--metrics_listen=" + c->coordinator.metrics_address};
  p.args.insert(p.args.end(), o.coordinator_args.begin(), o.coordinator_args.end());
  p.log_path = o.data_dir + "/c1.log";
  c->procs.push_back(std::move(p));

  for (Proc& proc : c->procs) {
    if (absl::Status st = StartProc(&proc); !st.ok()) return st;
  }
  return absl::OkStatus();
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

// ---------------------------------------------------------------------------
// The load: closed-loop clients on completion queues.

enum Phase : int { kWarmup = 0, kMeasure = 1, kAfter = 2, kStop = 3 };

struct Stats {
  std::mutex mu;
  Histogram latency;  // measured window only
  uint64_t committed = 0;
  uint64_t aborted = 0;
  uint64_t errors = 0;
  std::map<std::string, uint64_t> error_kinds;  // "CODE: message" -> count
  std::map<std::string, uint64_t> abort_reasons;
};

struct Worker;

struct Client {
  Worker* worker = nullptr;
  Coordinator::Stub* stub = nullptr;
  std::mutex mu;  // guards ctx against TryCancel from the main thread
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientAsyncResponseReader<ExecuteResponse>> rpc;
  ExecuteResponse resp;
  grpc::Status status;
  Clock::time_point start;
  grpc::Alarm alarm;
  bool in_alarm = false;
};

struct Load {
  const ExecuteRequest* request = nullptr;
  int rpc_timeout_ms = 30000;
  std::atomic<int> phase{kWarmup};
  std::atomic<uint64_t> completed{0};  // every reply or error, any phase
  std::atomic<uint64_t> errors{0};     // any phase, for progress
};

struct Worker {
  Load* load = nullptr;
  grpc::CompletionQueue cq;
  std::vector<Client*> clients;
  Stats stats;
  std::thread thread;
  std::atomic<int> outstanding{0};
};

// Counts one finished Execute (reply or error) in `w`'s figures.
void Record(Worker* w, const grpc::Status& status, const ExecuteResponse& resp,
            Clock::time_point start) {
  auto end = Clock::now();
  Load* load = w->load;
  load->completed.fetch_add(1, std::memory_order_relaxed);
  if (!status.ok()) load->errors.fetch_add(1, std::memory_order_relaxed);
  if (load->phase.load() != kMeasure) return;
  uint64_t us =
      uint64_t(std::chrono::duration_cast<std::chrono::microseconds>(end - start).count());
  std::lock_guard<std::mutex> l(w->stats.mu);
  if (!status.ok()) {
    ++w->stats.errors;
    std::string kind = StatusText(status);
    if (w->stats.error_kinds.size() < 20 || w->stats.error_kinds.count(kind)) {
      ++w->stats.error_kinds[kind];
    }
  } else if (resp.outcome() == atomq::v1::COMMITTED) {
    ++w->stats.committed;
    w->stats.latency.Add(us);
  } else {
    ++w->stats.aborted;
    w->stats.latency.Add(us);
    const std::string& r = resp.reason();
    if (w->stats.abort_reasons.size() < 20 || w->stats.abort_reasons.count(r)) {
      ++w->stats.abort_reasons[r];
    }
  }
}

void StartCall(Client* c) {
  std::lock_guard<std::mutex> l(c->mu);
  c->ctx = std::make_unique<grpc::ClientContext>();
  SetDeadline(c->ctx.get(), c->worker->load->rpc_timeout_ms);
  c->resp.Clear();
  c->start = Clock::now();
  c->rpc = c->stub->PrepareAsyncExecute(c->ctx.get(), *c->worker->load->request, &c->worker->cq);
  c->rpc->StartCall();
  c->rpc->Finish(&c->resp, &c->status, c);
}

void RunWorker(Worker* w) {
  w->outstanding.store(int(w->clients.size()));
  for (Client* c : w->clients) StartCall(c);
  void* tag = nullptr;
  bool ok = false;
  while (w->outstanding > 0 && w->cq.Next(&tag, &ok)) {
    Client* c = static_cast<Client*>(tag);
    Load* load = w->load;
    if (c->in_alarm) {
      c->in_alarm = false;
    } else {
      Record(w, c->status, c->resp, c->start);
      // A failing cluster would otherwise be hammered in a hot loop.
      if (!c->status.ok() && load->phase.load() < kStop) {
        c->in_alarm = true;
        c->alarm.Set(&w->cq, std::chrono::system_clock::now() + std::chrono::milliseconds(10), c);
        continue;
      }
    }
    if (load->phase.load() >= kStop) {
      --w->outstanding;
      continue;
    }
    StartCall(c);
  }
  w->cq.Shutdown();
  while (w->cq.Next(&tag, &ok)) {
  }
}

// --api=stream: the clients of one channel share one ExecuteStream call.
// Each still runs one transaction at a time; requests that become due while a
// write is under way leave together in the next message.
class StreamDriver final
    : public grpc::ClientBidiReactor<atomq::v1::ExecuteStreamRequest,
                                     atomq::v1::ExecuteStreamResponse> {
 public:
  StreamDriver(Worker* w, Coordinator::Stub* stub, int clients)
      : w_(w), starts_(size_t(clients)) {
    w_->outstanding.fetch_add(clients);
    stub->async()->ExecuteStream(&ctx_, this);
    StartRead(&in_);
    AddHold();  // writes also start outside reactions (the retry alarm)
    {
      std::lock_guard<std::mutex> l(mu_);
      for (int i = 0; i < clients; ++i) QueueLocked(uint64_t(i));
      WriteLocked();
    }
    StartCall();
  }

  void Cancel() { ctx_.TryCancel(); }
  // True once the call ended (OnDone ran).
  bool WaitDone(Clock::time_point until) {
    std::unique_lock<std::mutex> l(mu_);
    return done_cv_.wait_until(l, until, [this] { return done_; });
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the call is ending; OnDone follows once the hold is gone
      std::lock_guard<std::mutex> l(mu_);
      if (!closed_) {
        closed_ = true;
        RemoveHold();
      }
      return;
    }
    std::vector<uint64_t> failed;
    for (const atomq::v1::StreamedResult& r : in_.results()) {
      if (r.tag() >= starts_.size()) continue;
      grpc::Status st(static_cast<grpc::StatusCode>(r.code()), r.message());
      Record(w_, st, r.response(), starts_[r.tag()]);
      if (!st.ok()) failed.push_back(r.tag());
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      for (const atomq::v1::StreamedResult& r : in_.results()) {
        if (r.tag() >= starts_.size()) continue;
        if (w_->load->phase.load() >= kStop) {
          FinishClientLocked();
        } else if (r.code() == 0) {
          QueueLocked(r.tag());
        } else {
          parked_.push_back(r.tag());
        }
      }
      WriteLocked();
      // A failing cluster would otherwise be hammered in a hot loop.
      if (!parked_.empty() && !alarm_set_) {
        alarm_set_ = true;
        AddHold();
        alarm_.Set(std::chrono::system_clock::now() + std::chrono::milliseconds(10),
                   [this](bool) { Unpark(); });
      }
    }
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> l(mu_);
    writing_ = false;
    if (ok) WriteLocked();
  }

  void OnDone(const grpc::Status& s) override {
    std::lock_guard<std::mutex> l(mu_);
    if (!s.ok() && w_->load->phase.load() < kStop) {
      std::fprintf(stderr, "atomq-bench: ExecuteStream ended: %s\n", StatusText(s).c_str());
    }
    w_->outstanding.fetch_sub(int(active_));
    active_ = 0;
    done_ = true;
    done_cv_.notify_all();
  }

 private:
  void Unpark() {
    {
      std::lock_guard<std::mutex> l(mu_);
      alarm_set_ = false;
      for (uint64_t tag : parked_) {
        if (w_->load->phase.load() >= kStop) {
          FinishClientLocked();
        } else {
          QueueLocked(tag);
        }
      }
      parked_.clear();
      WriteLocked();
    }
    RemoveHold();
  }

  void QueueLocked(uint64_t tag) {
    starts_[tag] = Clock::now();
    atomq::v1::StreamedExecute* item = next_.add_items();
    item->set_tag(tag);
    *item->mutable_request() = *w_->load->request;
  }

  // One client stops for good; the last one closes the call.
  void FinishClientLocked() {
    --active_;
    w_->outstanding.fetch_sub(1);
    if (active_ == 0 && !closed_) {
      closed_ = true;
      StartWritesDone();
      RemoveHold();
    }
  }

  void WriteLocked() {
    if (writing_ || closed_ || next_.items_size() == 0) return;
    writing_ = true;
    sending_.Swap(&next_);
    next_.Clear();
    StartWrite(&sending_);
  }

  Worker* const w_;
  grpc::ClientContext ctx_;
  atomq::v1::ExecuteStreamResponse in_;
  std::mutex mu_;
  std::condition_variable done_cv_;
  std::vector<Clock::time_point> starts_;  // by tag (the client's index)
  atomq::v1::ExecuteStreamRequest next_, sending_;
  std::vector<uint64_t> parked_;  // clients waiting out an error
  grpc::Alarm alarm_;
  size_t active_ = starts_.size();
  bool alarm_set_ = false;
  bool writing_ = false;
  bool closed_ = false;
  bool done_ = false;
};

// ---------------------------------------------------------------------------
// Reporting.

struct ServerFigures {
  std::string name;
  std::string metrics_address;
  std::string error;  // scrape failed
  double cpu_seconds = NAN;
  double fsyncs = NAN;
  double batches = NAN;
  double write_failures = NAN;
  double peak_rss_bytes = NAN;
  // Resident memory when the measured window began and ended: all of it,
  // and the anonymous part (heap; the rest is mostly LMDB's mapped pages).
  double rss_start = NAN, rss_end = NAN, anon_start = NAN, anon_end = NAN;
};

double CpuSelf() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double PeakRssSelf() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) * 1024;
}

std::string JsonNumber(double v) {
  if (!std::isfinite(v)) return "null";
  return absl::StrFormat("%.6g", v);
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (ch < 0x20) {
          out += absl::StrFormat("\\u%04x", ch);
        } else {
          out += char(ch);
        }
    }
  }
  return out + "\"";
}

// `decimals` digits after the point; "n/a" for a figure that could not be had.
std::string Fmt(double v, int decimals = 3) {
  if (!std::isfinite(v)) return "n/a";
  return absl::StrFormat("%.*f", decimals, v);
}

int Fail(const std::string& msg) {
  std::fprintf(stderr, "atomq-bench: %s\n", msg.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"atomq-bench: closed-loop load over the atomq gRPC API"};
  bool spawn = false;
  std::string coordinator, participants = "3", metrics, protocol = "2pc", json_path;
  std::string bin_dir, data_root = "/tmp", queue = "bench";
  int ops_per_txn = 1, payload_bytes = 128, clients = 64, threads = 1, channels = 1;
  double duration = 10, warmup = 1, disk_probe_seconds = 1;
  int rpc_timeout_ms = 30000;
  uint32_t txn_timeout_ms = 0;
  std::string api = "unary";
  bool reply_at_decision = false;
  bool consume = false;
  bool keep_data = false;
  std::vector<std::string> coordinator_args, participant_args;
  app.add_flag("--spawn", spawn,
               "start a coordinator and --participants participants on loopback, stop them after");
  app.add_option("--coordinator", coordinator, "host:port of a running coordinator");
  app.add_option("--participants", participants,
                 "with --spawn: how many participants; else id=host:port,... of the running ones")
      ->capture_default_str();
  app.add_option("--metrics", metrics,
                 "host:port,... of the running servers' /metrics endpoints (without --spawn)");
  app.add_option("--ops_per_txn", ops_per_txn, "enqueues per participant per transaction")
      ->check(CLI::Range(1, 100000))->capture_default_str();
  app.add_option("--payload_bytes", payload_bytes, "bytes of each enqueued payload")
      ->check(CLI::Range(0, 64 << 20))->capture_default_str();
  app.add_option("--clients", clients, "closed-loop clients, all in flight at once")
      ->check(CLI::Range(1, 1000000))->capture_default_str();
  app.add_option("--duration", duration, "measured seconds")
      ->check(CLI::Range(0.1, 86400.0))->capture_default_str();
  app.add_option("--warmup", warmup, "seconds of load before measuring")
      ->check(CLI::Range(0.0, 3600.0))->capture_default_str();
  app.add_option("--protocol", protocol, "2pc or 3pc")
      ->check(CLI::IsMember({"2pc", "3pc"}))->capture_default_str();
  app.add_option("--json", json_path, "write every figure to this file as a JSON object");
  app.add_option("--bin_dir", bin_dir,
                 "where atomq-coordinator and atomq-participant are (default: atomq-bench's dir)");
  app.add_option("--data_root", data_root,
                 "parent of the temporary data dirs (--spawn) and of the disk fsync probe")
      ->capture_default_str();
  app.add_flag("--keep_data", keep_data, "keep the spawned servers' data dirs and logs");
  app.add_option("--queue", queue, "queue name on every participant")->capture_default_str();
  app.add_option("--threads", threads, "completion-queue threads of the bench")
      ->check(CLI::Range(1, 64))->capture_default_str();
  app.add_option("--channels", channels, "gRPC connections to the coordinator")
      ->check(CLI::Range(1, 256))->capture_default_str();
  app.add_option("--api", api,
                 "unary: one Execute call per transaction; stream: each channel's clients "
                 "share one ExecuteStream call")
      ->check(CLI::IsMember({"unary", "stream"}))->capture_default_str();
  app.add_flag("--consume", consume,
               "also drain --queue on every participant (one thread each: long-poll Receive "
               "with auto_ack), so queues stay short as in a steady state");
  app.add_flag("--reply_at_decision", reply_at_decision,
               "ExecuteRequest.reply_at_decision: answered once the decision is on disk, "
               "before the participants applied it");
  app.add_option("--rpc_timeout_ms", rpc_timeout_ms, "deadline of one Execute call")
      ->check(CLI::Range(1, 3600000))->capture_default_str();
  app.add_option("--txn_timeout_ms", txn_timeout_ms,
                 "ExecuteRequest.timeout_ms (0: the coordinator's default)")
      ->capture_default_str();
  app.add_option("--disk_probe_seconds", disk_probe_seconds,
                 "how long to measure the disk's serial fsync rate (0: skip)")
      ->check(CLI::Range(0.0, 60.0))->capture_default_str();
  app.add_option("--coordinator_arg", coordinator_args,
                 "extra flag for the spawned coordinator (repeatable)");
  app.add_option("--participant_arg", participant_args,
                 "extra flag for each spawned participant (repeatable)");
  CLI11_PARSE(app, argc, argv);

  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  Cluster cluster;
  int n_participants = 0;
  if (spawn == !coordinator.empty()) {
    return Fail("give either --spawn or --coordinator=ADDR --participants=p1=ADDR,...");
  }
  if (spawn) {
    if (!absl::SimpleAtoi(participants, &n_participants) || n_participants < 1 ||
        n_participants > 1000) {
      return Fail(absl::StrCat("--participants=", participants,
                               ": with --spawn, a count of participants (1..1000)"));
    }
    if (!metrics.empty()) return Fail("--metrics is for a running cluster, not with --spawn");
  } else {
    cluster.coordinator = Server{"coordinator", coordinator, ""};
    for (absl::string_view item : absl::StrSplit(participants, ',', absl::SkipEmpty())) {
      std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
      if (kv.first.empty() || kv.second.empty()) {
        return Fail(absl::StrCat("--participants: \"", item, "\": want id=host:port"));
      }
      cluster.participants.emplace_back(kv.first, Server{kv.first, kv.second, ""});
    }
    if (cluster.participants.empty()) return Fail("--participants: want id=host:port,...");
    n_participants = int(cluster.participants.size());
  }

  // The data dir exists first: the disk probe runs in it before any load.
  std::string probe_dir = data_root;
  if (spawn) {
    std::string tmpl = data_root + "/atomq-bench-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()) == nullptr) {
      return Fail(absl::StrCat("mkdtemp ", tmpl, ": ", std::strerror(errno)));
    }
    cluster.data_dir = buf.data();
    probe_dir = cluster.data_dir;
  }
  auto cleanup_dir = [&] {
    if (!spawn || cluster.data_dir.empty()) return;
    if (keep_data) {
      std::fprintf(stderr, "atomq-bench: data and logs kept in %s\n", cluster.data_dir.c_str());
      return;
    }
    std::error_code ec;
    std::filesystem::remove_all(cluster.data_dir, ec);
  };

  double disk_fsyncs_per_s = NAN;
  if (disk_probe_seconds > 0) {
    absl::StatusOr<double> rate = DiskFsyncRate(probe_dir, disk_probe_seconds);
    if (rate.ok()) {
      disk_fsyncs_per_s = *rate;
      std::fprintf(stderr, "atomq-bench: disk serial fsync rate in %s: %.0f fsyncs/s\n",
                   probe_dir.c_str(), disk_fsyncs_per_s);
    } else {
      std::fprintf(stderr, "atomq-bench: disk probe failed: %s\n",
                   std::string(rate.status().message()).c_str());
    }
  }

  std::vector<std::string> server_problems;
  bool started_any = false;
  auto stop_servers = [&] {
    if (cluster.procs.empty()) return;
    for (std::string& s : StopProcs(&cluster.procs, std::chrono::seconds(5))) {
      server_problems.push_back(s);
    }
    cluster.procs.clear();
  };
  auto fail_and_clean = [&](const std::string& msg) {
    stop_servers();
    for (const std::string& s : server_problems) {
      std::fprintf(stderr, "atomq-bench: server problem: %s\n", s.c_str());
    }
    int rc = Fail(msg);
    // Keep the logs of servers that ran: they are the evidence.
    if (started_any && !g_interrupted.load()) keep_data = true;
    cleanup_dir();
    return rc;
  };

  if (spawn) {
    SpawnOptions so;
    so.bin_dir = bin_dir.empty() ? SelfDir() : bin_dir;
    so.data_dir = cluster.data_dir;
    so.participants = n_participants;
    so.coordinator_args = coordinator_args;
    so.participant_args = participant_args;
    absl::Status st = Spawn(so, &cluster);
    for (const Proc& p : cluster.procs) started_any = started_any || p.pid > 0;
    if (!st.ok()) {
      return fail_and_clean(absl::StrCat("cannot spawn the cluster: ", st.message()));
    }
  }
  auto ready_start = Clock::now();
  if (absl::Status st = WaitReady(&cluster, std::chrono::seconds(15)); !st.ok()) {
    return fail_and_clean(std::string(st.message()));
  }
  auto queues_start = Clock::now();
  if (absl::Status st = CreateQueues(cluster, queue); !st.ok()) {
    return fail_and_clean(std::string(st.message()));
  }
  std::fprintf(stderr, "atomq-bench: cluster ready in %.2f s, queues created in %.2f s\n",
               Seconds(queues_start - ready_start), Seconds(Clock::now() - queues_start));

  // Who is scraped: every spawned server, or the --metrics list.
  std::vector<Server> scraped;
  if (spawn) {
    scraped.push_back(cluster.coordinator);
    for (auto& [id, s] : cluster.participants) scraped.push_back(s);
  } else {
    for (absl::string_view m : absl::StrSplit(metrics, ',', absl::SkipEmpty())) {
      scraped.push_back(Server{std::string(m), "", std::string(m)});
    }
  }

  ExecuteRequest request;
  request.set_protocol(protocol == "3pc" ? atomq::v1::THREE_PC : atomq::v1::TWO_PC);
  request.set_timeout_ms(txn_timeout_ms);
  request.set_reply_at_decision(reply_at_decision);
  {
    std::string payload(size_t(payload_bytes), '\0');
    std::mt19937_64 rng(42);
    for (char& ch : payload) ch = char(rng());
    for (auto& [id, s] : cluster.participants) {
      for (int j = 0; j < ops_per_txn; ++j) {
        atomq::v1::Op* op = request.add_ops();
        op->set_participant(id);
        op->mutable_enqueue()->set_queue(queue);
        op->mutable_enqueue()->set_payload(payload);
      }
    }
  }

  Load load;
  load.request = &request;
  load.rpc_timeout_ms = rpc_timeout_ms;
  std::vector<std::unique_ptr<Coordinator::Stub>> stubs;
  for (int i = 0; i < channels; ++i) {
    stubs.push_back(Coordinator::NewStub(MakeChannel(cluster.coordinator.grpc_address, i + 1)));
  }
  const bool streamed = api == "stream";
  std::vector<std::unique_ptr<Worker>> workers;
  // With streams, a worker only keeps one call's figures (gRPC's threads run it).
  for (int i = 0; i < (streamed ? std::min(channels, clients) : threads); ++i) {
    workers.push_back(std::make_unique<Worker>());
    workers.back()->load = &load;
  }
  std::vector<std::unique_ptr<Client>> client_objs;
  std::vector<std::unique_ptr<StreamDriver>> drivers;
  for (int i = 0; i < clients && !streamed; ++i) {
    auto c = std::make_unique<Client>();
    c->worker = workers[size_t(i % threads)].get();
    c->stub = stubs[size_t(i % channels)].get();
    c->worker->clients.push_back(c.get());
    client_objs.push_back(std::move(c));
  }

  auto progress = [&](double elapsed, uint64_t* last_completed, const char* phase) {
    uint64_t now = load.completed.load();
    double p99 = 0;
    uint64_t errs = load.errors.load();
    {
      Histogram h;
      for (auto& w : workers) {
        std::lock_guard<std::mutex> l(w->stats.mu);
        h.Merge(w->stats.latency);
      }
      p99 = h.Quantile(0.99) / 1000.0;
    }
    std::fprintf(stderr, "[%6.1fs] %-7s %8llu txn/s  p99 %8s ms  errors %llu\n", elapsed,
                 phase, static_cast<unsigned long long>(now - *last_completed),
                 p99 > 0 ? absl::StrFormat("%.2f", p99).c_str() : "-",
                 static_cast<unsigned long long>(errs));
    *last_completed = now;
  };

  // Runs until `until` (or an interrupt, or a spawned server dying),
  // printing progress once a second.
  auto run_start = Clock::now();
  uint64_t last_completed = 0;
  auto next_tick = run_start + std::chrono::seconds(1);
  std::string died;
  auto wait_until = [&](Clock::time_point until, const char* phase) {
    while (!g_interrupted.load() && died.empty()) {
      auto now = Clock::now();
      if (now >= next_tick) {
        progress(Seconds(now - run_start), &last_completed, phase);
        next_tick += std::chrono::seconds(1);
      }
      if (now >= until) return;
      for (Proc& p : cluster.procs) {
        if (Reap(&p)) {
          died = absl::StrCat(p.name, " ", DescribeWait(p.wait_status), " during the run; log ",
                              p.log_path, ":\n", LogTail(p.log_path));
          return;
        }
      }
      std::this_thread::sleep_for(
          std::min<Clock::duration>(std::chrono::milliseconds(50), until - now));
    }
  };

  // Consumers: delivered counts per participant, in any phase.
  std::atomic<uint64_t> consumed{0}, consume_errors{0};
  std::vector<std::thread> consumers;
  if (consume) {
    for (auto& [id, server] : cluster.participants) {
      const std::string address = server.grpc_address;
      consumers.emplace_back([&, address] {
        auto stub = atomq::v1::Queue::NewStub(MakeChannel(address, 1000));
        atomq::v1::ReceiveRequest req;
        req.set_queue(queue);
        req.set_max_messages(1000);
        req.set_wait_ms(100);
        req.set_auto_ack(true);
        req.set_consumer("atomq-bench");
        while (load.phase.load() < kStop) {
          grpc::ClientContext ctx;
          SetDeadline(&ctx, 5000);
          atomq::v1::ReceiveResponse resp;
          grpc::Status st = stub->Receive(&ctx, req, &resp);
          if (!st.ok()) {
            consume_errors.fetch_add(1);
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            continue;
          }
          consumed.fetch_add(uint64_t(resp.deliveries_size()));
        }
      });
    }
  }
  if (streamed) {
    const size_t n = workers.size();
    for (size_t i = 0; i < n; ++i) {
      // Clients spread evenly over the calls.
      int share = clients / int(n) + (int(i) < clients % int(n) ? 1 : 0);
      drivers.push_back(
          std::make_unique<StreamDriver>(workers[i].get(), stubs[i].get(), share));
    }
  } else {
    for (auto& w : workers) {
      Worker* wp = w.get();
      wp->thread = std::thread([wp] { RunWorker(wp); });
    }
  }

  wait_until(run_start + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(warmup)), "warmup");

  std::vector<Scrape> before;
  for (const Server& s : scraped) before.push_back(ScrapeMetrics(s.metrics_address));
  double bench_cpu0 = CpuSelf();
  auto t0 = Clock::now();
  const uint64_t consumed0 = consumed.load();
  load.phase.store(kMeasure);
  wait_until(t0 + std::chrono::duration_cast<Clock::duration>(
                      std::chrono::duration<double>(duration)), "measure");
  load.phase.store(kAfter);
  const uint64_t consumed1 = consumed.load();
  auto t1 = Clock::now();
  double bench_cpu1 = CpuSelf();
  std::vector<Scrape> after;
  for (const Server& s : scraped) after.push_back(ScrapeMetrics(s.metrics_address));

  // Stop issuing; cancel what is still in flight after a grace period.
  load.phase.store(kStop);
  auto stop_deadline = Clock::now() + std::chrono::seconds(5);
  for (;;) {
    bool any = false;
    for (auto& w : workers) any = any || w->outstanding.load() > 0;
    if (!any || Clock::now() >= stop_deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (auto& c : client_objs) {
    std::lock_guard<std::mutex> l(c->mu);
    if (c->ctx) c->ctx->TryCancel();
  }
  for (auto& d : drivers) {
    if (!d->WaitDone(Clock::now() + std::chrono::seconds(1))) {
      d->Cancel();
      d->WaitDone(Clock::now() + std::chrono::seconds(10));
    }
  }
  for (auto& w : workers) {
    if (w->thread.joinable()) w->thread.join();
  }
  for (std::thread& t : consumers) t.join();
  double window = Seconds(t1 - t0);

  stop_servers();

  // Aggregate.
  Histogram lat;
  uint64_t committed = 0, aborted = 0, errors = 0;
  std::map<std::string, uint64_t> error_kinds, abort_reasons;
  for (auto& w : workers) {
    lat.Merge(w->stats.latency);
    committed += w->stats.committed;
    aborted += w->stats.aborted;
    errors += w->stats.errors;
    for (auto& [k, v] : w->stats.error_kinds) error_kinds[k] += v;
    for (auto& [k, v] : w->stats.abort_reasons) abort_reasons[k] += v;
  }
  double committed_per_s = double(committed) / window;
  double aborted_per_s = double(aborted) / window;
  uint64_t finished = committed + aborted;

  std::vector<ServerFigures> figs;
  double total_cpu = 0, total_fsyncs = 0, total_batches = 0;
  bool cpu_complete = !scraped.empty(), fsync_complete = !scraped.empty();
  double coord_committed = NAN, coord_aborted = NAN, coord_errors = NAN;
  double batch_calls = NAN, batch_items = NAN;  // coordinator -> participants
  for (size_t i = 0; i < scraped.size(); ++i) {
    ServerFigures f;
    f.name = scraped[i].name;
    f.metrics_address = scraped[i].metrics_address;
    const Scrape& a = before[i];
    const Scrape& b = after[i];
    if (!a.ok || !b.ok) {
      f.error = !a.ok ? a.error : b.error;
      cpu_complete = fsync_complete = false;
    } else {
      f.cpu_seconds = b.Get("process_cpu_seconds_total") - a.Get("process_cpu_seconds_total");
      f.fsyncs = b.Get("atomq_storage_fsyncs_total") - a.Get("atomq_storage_fsyncs_total");
      f.batches = b.Get("atomq_storage_batches_total") - a.Get("atomq_storage_batches_total");
      f.write_failures = b.Get("atomq_storage_write_failures_total") -
                         a.Get("atomq_storage_write_failures_total");
      f.peak_rss_bytes = b.Get("process_max_resident_memory_bytes");
      f.rss_start = a.Get("process_resident_memory_bytes");
      f.rss_end = b.Get("process_resident_memory_bytes");
      f.anon_start = a.Get("process_resident_anon_memory_bytes");
      f.anon_end = b.Get("process_resident_anon_memory_bytes");
      if (std::isfinite(f.cpu_seconds)) total_cpu += f.cpu_seconds; else cpu_complete = false;
      if (std::isfinite(f.fsyncs)) total_fsyncs += f.fsyncs; else fsync_complete = false;
      if (std::isfinite(f.batches)) total_batches += f.batches;
      double c = b.Series("atomq_execute_replies_total{outcome=\"committed\"}");
      if (std::isfinite(c)) {
        coord_committed = c - a.Series("atomq_execute_replies_total{outcome=\"committed\"}");
        coord_aborted = b.Series("atomq_execute_replies_total{outcome=\"aborted\"}") -
                        a.Series("atomq_execute_replies_total{outcome=\"aborted\"}");
        coord_errors = b.Series("atomq_execute_replies_total{outcome=\"error\"}") -
                       a.Series("atomq_execute_replies_total{outcome=\"error\"}");
        batch_calls = b.Get("atomq_participant_batch_calls_total") -
                      a.Get("atomq_participant_batch_calls_total");
        batch_items = b.Get("atomq_participant_batch_items_total") -
                      a.Get("atomq_participant_batch_items_total");
      }
    }
    figs.push_back(f);
  }
  double fsyncs_per_txn = fsync_complete && committed ? total_fsyncs / double(committed) : NAN;
  double server_cpu_per_txn = cpu_complete && finished ? total_cpu / double(finished) : NAN;
  double bench_cpu = bench_cpu1 - bench_cpu0;
  double bench_cpu_per_txn = finished ? bench_cpu / double(finished) : NAN;
  double ratio_to_disk = committed_per_s / disk_fsyncs_per_s;

  const double kMs = 1000.0;
  std::printf("atomq-bench: %s, %d participant(s), %d op(s)/participant, %d B payload, "
              "%d clients, %.1f s measured (after %.1f s warmup)\n",
              protocol.c_str(), n_participants, ops_per_txn, payload_bytes, clients, window,
              warmup);
  std::printf("  committed      %10.1f txn/s  (%llu)\n", committed_per_s,
              static_cast<unsigned long long>(committed));
  std::printf("  aborted        %10.1f txn/s  (%llu)\n", aborted_per_s,
              static_cast<unsigned long long>(aborted));
  std::printf("  errors         %10llu\n", static_cast<unsigned long long>(errors));
  if (consume) {
    std::printf("  consumed       %10.1f msg/s  (auto-ack Receive on every participant; %llu "
                "failed calls)\n",
                double(consumed1 - consumed0) / window,
                static_cast<unsigned long long>(consume_errors.load()));
  }
  std::printf("  latency ms     p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n",
              lat.Quantile(0.50) / kMs, lat.Quantile(0.99) / kMs, lat.Quantile(0.999) / kMs,
              double(lat.max()) / kMs, lat.mean() / kMs);
  std::printf("  disk           %10s serial fsyncs/s (4 KiB + fdatasync)\n",
              Fmt(disk_fsyncs_per_s, 0).c_str());
  std::printf("  txn/s per disk fsync/s   %s\n", Fmt(ratio_to_disk, 3).c_str());
  std::printf("  fsyncs / committed txn   %s  (%s fsyncs, %s batches over all servers)\n",
              Fmt(fsyncs_per_txn, 3).c_str(), Fmt(fsync_complete ? total_fsyncs : NAN, 0).c_str(),
              Fmt(fsync_complete ? total_batches : NAN, 0).c_str());
  std::printf("  CPU ms / txn   servers %s  bench %s\n",
              Fmt(server_cpu_per_txn * kMs, 3).c_str(),
              Fmt(bench_cpu_per_txn * kMs, 3).c_str());
  if (std::isfinite(batch_calls) && committed > 0 && batch_calls > 0) {
    std::printf("  participant calls / txn  %.3f  (%.1f messages per Batch call)\n",
                batch_calls / double(committed), batch_items / batch_calls);
  }
  if (std::isfinite(coord_committed)) {
    std::printf("  coordinator replies in window: committed %.0f aborted %.0f error %.0f\n",
                coord_committed, coord_aborted, coord_errors);
  }
  std::printf("  %-22s %10s %10s %10s %12s %22s %22s\n", "process", "cpu_s", "fsyncs",
              "batches", "peak_rss_MiB", "rss_MiB start->end", "anon_MiB start->end");
  for (const ServerFigures& f : figs) {
    if (!f.error.empty()) {
      std::printf("  %-22s metrics unavailable: %s\n", f.name.c_str(), f.error.c_str());
      continue;
    }
    auto span = [](double from, double to) {
      if (!std::isfinite(from) || !std::isfinite(to) || from <= 0) return std::string("-");
      return absl::StrFormat("%.0f->%.0f (%+.0f%%)", from / 1048576.0, to / 1048576.0,
                             (to / from - 1) * 100);
    };
    std::printf("  %-22s %10s %10s %10s %12s %22s %22s\n", f.name.c_str(),
                Fmt(f.cpu_seconds).c_str(), Fmt(f.fsyncs, 0).c_str(), Fmt(f.batches, 0).c_str(),
                Fmt(f.peak_rss_bytes / 1048576.0, 1).c_str(), span(f.rss_start, f.rss_end).c_str(),
                span(f.anon_start, f.anon_end).c_str());
    if (std::isfinite(f.write_failures) && f.write_failures > 0) {
      std::printf("  %-22s storage write failures: %.0f\n", "", f.write_failures);
    }
  }
  std::printf("  %-22s %10s %10s %10s %12s\n", "bench", Fmt(bench_cpu).c_str(), "-", "-",
              Fmt(PeakRssSelf() / 1048576.0, 1).c_str());
  for (auto& [k, v] : error_kinds) {
    std::printf("  error x%llu: %s\n", static_cast<unsigned long long>(v), k.c_str());
  }
  for (auto& [k, v] : abort_reasons) {
    std::printf("  abort x%llu: %s\n", static_cast<unsigned long long>(v), k.c_str());
  }
  for (const std::string& s : server_problems) std::printf("  server problem: %s\n", s.c_str());
  if (!died.empty()) std::printf("  server problem: %s\n", died.c_str());
  if (g_interrupted.load()) std::printf("  (interrupted: the window was cut short)\n");
  std::fflush(stdout);

  if (!json_path.empty()) {
    std::string j = "{\n";
    auto field = [&j](const std::string& k, const std::string& v, bool last = false) {
      absl::StrAppend(&j, "  ", JsonString(k), ": ", v, last ? "\n" : ",\n");
    };
    field("protocol", JsonString(protocol));
    field("participants", absl::StrCat(n_participants));
    field("ops_per_txn", absl::StrCat(ops_per_txn));
    field("payload_bytes", absl::StrCat(payload_bytes));
    field("clients", absl::StrCat(clients));
    field("spawned", spawn ? "true" : "false");
    field("warmup_s", JsonNumber(warmup));
    field("window_s", JsonNumber(window));
    field("committed", absl::StrCat(committed));
    field("aborted", absl::StrCat(aborted));
    field("errors", absl::StrCat(errors));
    field("committed_txn_per_s", JsonNumber(committed_per_s));
    field("aborted_txn_per_s", JsonNumber(aborted_per_s));
    field("latency_ms",
          absl::StrCat("{\"p50\": ", JsonNumber(lat.Quantile(0.5) / kMs),
                       ", \"p99\": ", JsonNumber(lat.Quantile(0.99) / kMs),
                       ", \"p999\": ", JsonNumber(lat.Quantile(0.999) / kMs),
                       ", \"max\": ", JsonNumber(double(lat.max()) / kMs),
                       ", \"mean\": ", JsonNumber(lat.mean() / kMs), "}"));
    field("disk_fsyncs_per_s", JsonNumber(disk_fsyncs_per_s));
    field("txn_per_s_per_disk_fsync_per_s", JsonNumber(ratio_to_disk));
    field("fsyncs_per_committed_txn", JsonNumber(fsyncs_per_txn));
    field("server_fsyncs", JsonNumber(fsync_complete ? total_fsyncs : NAN));
    field("server_batches", JsonNumber(fsync_complete ? total_batches : NAN));
    field("server_cpu_s_per_txn", JsonNumber(server_cpu_per_txn));
    field("bench_cpu_s_per_txn", JsonNumber(bench_cpu_per_txn));
    field("bench_cpu_s", JsonNumber(bench_cpu));
    field("consumed_msgs_per_s",
          consume ? JsonNumber(double(consumed1 - consumed0) / window) : std::string("null"));
    field("participant_batch_calls", JsonNumber(batch_calls));
    field("participant_batch_items", JsonNumber(batch_items));
    field("bench_peak_rss_bytes", JsonNumber(PeakRssSelf()));
    field("coordinator_replies",
          absl::StrCat("{\"committed\": ", JsonNumber(coord_committed),
                       ", \"aborted\": ", JsonNumber(coord_aborted),
                       ", \"error\": ", JsonNumber(coord_errors), "}"));
    std::vector<std::string> servers;
    for (const ServerFigures& f : figs) {
      servers.push_back(absl::StrCat(
          "{\"name\": ", JsonString(f.name), ", \"metrics\": ", JsonString(f.metrics_address),
          ", \"error\": ", f.error.empty() ? "null" : JsonString(f.error),
          ", \"cpu_s\": ", JsonNumber(f.cpu_seconds), ", \"fsyncs\": ", JsonNumber(f.fsyncs),
          ", \"batches\": ", JsonNumber(f.batches),
          ", \"write_failures\": ", JsonNumber(f.write_failures),
          ", \"peak_rss_bytes\": ", JsonNumber(f.peak_rss_bytes),
          ", \"rss_start_bytes\": ", JsonNumber(f.rss_start),
          ", \"rss_end_bytes\": ", JsonNumber(f.rss_end),
          ", \"anon_rss_start_bytes\": ", JsonNumber(f.anon_start),
          ", \"anon_rss_end_bytes\": ", JsonNumber(f.anon_end), "}"));
    }
    field("servers", absl::StrCat("[", absl::StrJoin(servers, ", "), "]"));
    std::vector<std::string> errs;
    for (auto& [k, v] : error_kinds) errs.push_back(absl::StrCat(JsonString(k), ": ", v));
    field("error_kinds", absl::StrCat("{", absl::StrJoin(errs, ", "), "}"));
    std::vector<std::string> probs = server_problems;
    if (!died.empty()) probs.push_back(died);
    std::vector<std::string> quoted;
    for (auto& p : probs) quoted.push_back(JsonString(p));
    field("server_problems", absl::StrCat("[", absl::StrJoin(quoted, ", "), "]"));
    field("interrupted", g_interrupted.load() ? "true" : "false", true);
    j += "}\n";
    std::ofstream out(json_path);
    out << j;
    if (!out) std::fprintf(stderr, "atomq-bench: cannot write %s\n", json_path.c_str());
  }

  bool broken = !died.empty() || !server_problems.empty();
  if (broken && spawn) keep_data = true;  // logs are the evidence
  cleanup_dir();
  if (!died.empty()) return Fail("a server died during the run");
  if (committed == 0) return Fail("no transaction committed");
  return 0;
}
