#include "bench/probes.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "bench/bench_util.h"

namespace atomq::bench {
namespace {

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

int RemainingMs(Clock::time_point deadline) {
  return int(std::max<int64_t>(
      0, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count()));
}

// The caller frees the list.
absl::StatusOr<addrinfo*> Resolve(const std::string& addr) {
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
  return res;
}

// A non-blocking socket connected to the first of `res` that answers.
absl::StatusOr<int> ConnectAny(const std::string& addr, addrinfo* res, Clock::time_point deadline) {
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
    if (poll(&p, 1, RemainingMs(deadline)) != 1 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
      last_error = err ? std::strerror(err) : "connect timed out";
      close(fd);
      fd = -1;
    }
  }
  if (fd < 0) return absl::UnavailableError(absl::StrCat(addr, ": ", last_error));
  return fd;
}

// Sends `req`, then reads into `resp` until the peer closes. False if that
// did not happen by the deadline.
bool Exchange(int fd, const std::string& req, Clock::time_point deadline, std::string* resp) {
  size_t sent = 0;
  while (sent < req.size()) {
    pollfd p{fd, POLLOUT, 0};
    if (poll(&p, 1, RemainingMs(deadline)) != 1) break;
    ssize_t n = send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n <= 0 && errno != EAGAIN) break;
    if (n > 0) sent += size_t(n);
  }
  bool eof = false;
  while (sent == req.size() && !eof) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, RemainingMs(deadline)) != 1) break;
    char buf[16384];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) eof = true;
    if (n < 0 && errno != EAGAIN) break;
    if (n > 0) resp->append(buf, size_t(n));
  }
  return eof;
}

// The body of a complete "200" reply to GET http://addr/path.
absl::StatusOr<std::string> ReplyBody(const std::string& addr, const std::string& path,
                                      const std::string& resp) {
  size_t head_end = resp.find("\r\n\r\n");
  if (resp.compare(0, 5, "HTTP/") != 0 || head_end == std::string::npos) {
    return absl::DataLossError(absl::StrCat("GET http://", addr, path, ": not an HTTP reply"));
  }
  std::string head = resp.substr(0, head_end);
  std::string body = resp.substr(head_end + 4);
  size_t sp = head.find(' ');
  if (sp == std::string::npos || head.compare(sp + 1, 3, "200") != 0) {
    return absl::UnavailableError(
        absl::StrCat("GET http://", addr, path, ": ", head.substr(0, head.find("\r\n"))));
  }
  std::string lower = head;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  if (lower.find("transfer-encoding: chunked") != std::string::npos) body = DecodeChunked(body);
  return body;
}

absl::StatusOr<std::string> HttpGet(const std::string& addr, const std::string& path,
                                    int timeout_ms) {
  absl::StatusOr<addrinfo*> res = Resolve(addr);
  if (!res.ok()) return res.status();
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  absl::StatusOr<int> fd = ConnectAny(addr, *res, deadline);
  freeaddrinfo(*res);
  if (!fd.ok()) return fd.status();
  std::string req =
      absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: ", addr, "\r\nConnection: close\r\n\r\n");
  std::string resp;
  bool complete = Exchange(*fd, req, deadline, &resp);
  close(*fd);
  if (!complete) {
    return absl::DeadlineExceededError(
        absl::StrCat("GET http://", addr, path, ": no complete reply"));
  }
  return ReplyBody(addr, path, resp);
}

// The whole of a small file; false if it could not be read (for a thread's
// file under /proc: the thread exited).
bool ReadSmallFile(const std::string& path, std::string* out) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  out->clear();
  char buf[4096];
  ssize_t n = 0;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out->append(buf, size_t(n));
  close(fd);
  return n == 0;
}

}  // namespace

// ---------------------------------------------------------------------------
// Prometheus text.

double Scrape::Get(const std::string& name) const {
  auto it = by_name.find(name);
  return it == by_name.end() ? NAN : it->second;
}

double Scrape::Series(const std::string& key) const {
  auto it = series.find(key);
  return it == series.end() ? NAN : it->second;
}

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
// The disk's own serial fsync rate.

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

// ---------------------------------------------------------------------------
// Context switches.

Switches ParseSwitches(absl::string_view status) {
  Switches s;
  for (absl::string_view line : absl::StrSplit(status, '\n')) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(line, absl::MaxSplits(':', 1));
    double* field = kv.first == "voluntary_ctxt_switches"      ? &s.voluntary
                    : kv.first == "nonvoluntary_ctxt_switches" ? &s.nonvoluntary
                                                               : nullptr;
    uint64_t n = 0;
    if (field != nullptr && absl::SimpleAtoi(absl::StripAsciiWhitespace(kv.second), &n)) {
      *field = double(n);
    }
  }
  return s;
}

SwitchSample SampleSwitches(pid_t pid) {
  SwitchSample sample;
  const std::string task_dir = absl::StrCat("/proc/", pid, "/task");
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(task_dir, ec)) {
    ThreadSwitches t;
    std::string status;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &t.tid) ||
        !ReadSmallFile(entry.path().string() + "/status", &status)) {
      continue;
    }
    t.switches = ParseSwitches(status);
    if (!std::isfinite(t.switches.Total())) continue;
    if (ReadSmallFile(entry.path().string() + "/comm", &t.name)) {
      t.name = std::string(absl::StripTrailingAsciiWhitespace(t.name));
    }
    sample.threads.push_back(std::move(t));
  }
  if (ec) {
    sample.error = absl::StrCat(task_dir, ": ", ec.message());
  } else if (sample.threads.empty()) {
    sample.error = absl::StrCat(task_dir, ": no thread's switches could be read");
  }
  return sample;
}

WindowSwitches SwitchesBetween(const SwitchSample& start, const SwitchSample& end) {
  WindowSwitches w;
  w.error = !start.error.empty() ? start.error : end.error;
  if (!w.error.empty()) return w;
  std::unordered_map<pid_t, Switches> before;
  for (const ThreadSwitches& t : start.threads) before[t.tid] = t.switches;
  w.total = Switches{0, 0};
  for (const ThreadSwitches& t : end.threads) {
    ThreadSwitches d = t;
    auto it = before.find(t.tid);
    if (it != before.end() && it->second.voluntary <= t.switches.voluntary &&
        it->second.nonvoluntary <= t.switches.nonvoluntary) {
      d.switches.voluntary -= it->second.voluntary;
      d.switches.nonvoluntary -= it->second.nonvoluntary;
    }
    w.total.voluntary += d.switches.voluntary;
    w.total.nonvoluntary += d.switches.nonvoluntary;
    w.threads.push_back(std::move(d));
  }
  std::stable_sort(w.threads.begin(), w.threads.end(),
                   [](const ThreadSwitches& a, const ThreadSwitches& b) {
                     return a.switches.Total() > b.switches.Total();
                   });
  return w;
}

}  // namespace atomq::bench
