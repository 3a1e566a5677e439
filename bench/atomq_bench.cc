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
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "bench/cluster.h"
#include "bench/load.h"
#include "bench/options.h"
#include "bench/probes.h"
#include "bench/report.h"
#include "common/bearer.h"

namespace atomq::bench {
namespace {

// The cluster from start to cleanup: the spawned servers, their data dir,
// and what went wrong with them.
class ClusterRun {
 public:
  explicit ClusterRun(const BenchOptions& o) : o_(o), keep_data_(o.keep_data) {}

  Cluster cluster;
  std::vector<std::string> server_problems;

  // With --spawn: the temporary root of the servers' data dirs and logs.
  absl::Status MakeDataDir() {
    std::string tmpl = o_.data_root + "/atomq-bench-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("mkdtemp ", tmpl, ": ", std::strerror(errno)));
    }
    cluster.data_dir = buf.data();
    return absl::OkStatus();
  }

  // Where the disk probe runs: the data dir, else --data_root.
  std::string ProbeDir() const { return o_.spawn ? cluster.data_dir : o_.data_root; }

  // Spawns the servers (with --spawn), waits until all answer and creates
  // the queue. On a failure, cleans up and returns the exit status.
  int Start(int participants) {
    if (o_.spawn) {
      SpawnOptions so;
      so.bin_dir = o_.bin_dir.empty() ? SelfDir() : o_.bin_dir;
      so.data_dir = cluster.data_dir;
      so.participants = participants;
      so.replicas = o_.replicas;
      so.coordinator_args = o_.coordinator_args;
      so.participant_args = o_.participant_args;
      absl::Status st = Spawn(so, &cluster);
      for (const Proc& p : cluster.procs) started_any_ = started_any_ || p.pid > 0;
      if (!st.ok()) return FailAndClean(absl::StrCat("cannot spawn the cluster: ", st.message()));
    }
    auto ready_start = Clock::now();
    if (absl::Status st = WaitReady(&cluster, std::chrono::seconds(15)); !st.ok()) {
      return FailAndClean(std::string(st.message()));
    }
    auto queues_start = Clock::now();
    if (absl::Status st = CreateQueues(cluster, o_.queue); !st.ok()) {
      return FailAndClean(std::string(st.message()));
    }
    std::fprintf(stderr, "atomq-bench: cluster ready in %.2f s, queues created in %.2f s\n",
                 Seconds(queues_start - ready_start), Seconds(Clock::now() - queues_start));
    return 0;
  }

  void StopServers() {
    if (cluster.procs.empty()) return;
    for (std::string& s : StopProcs(&cluster.procs, std::chrono::seconds(5))) {
      server_problems.push_back(s);
    }
    cluster.procs.clear();
  }

  // The logs are the evidence of a broken run: they are kept.
  void KeepData() { keep_data_ = true; }

  void CleanupDir() {
    if (!o_.spawn || cluster.data_dir.empty()) return;
    if (keep_data_) {
      std::fprintf(stderr, "atomq-bench: data and logs kept in %s\n", cluster.data_dir.c_str());
      return;
    }
    std::error_code ec;
    std::filesystem::remove_all(cluster.data_dir, ec);
  }

 private:
  int FailAndClean(const std::string& msg) {
    StopServers();
    for (const std::string& s : server_problems) {
      std::fprintf(stderr, "atomq-bench: server problem: %s\n", s.c_str());
    }
    int rc = Fail(msg);
    // Keep the logs of servers that ran: they are the evidence.
    if (started_any_ && !Interrupted()) keep_data_ = true;
    CleanupDir();
    return rc;
  }

  const BenchOptions& o_;
  bool keep_data_;
  bool started_any_ = false;
};

// Waits out the warmup and the window, printing progress once a second and
// watching the spawned servers.
class Pacer {
 public:
  Pacer(LoadGenerator* load, std::vector<Proc>* procs)
      : load_(load), procs_(procs), start_(Clock::now()), next_tick_(start_ + kTick) {}

  Clock::time_point start() const { return start_; }
  // Why the run ended early: a spawned server died ("" if none did).
  const std::string& died() const { return died_; }

  // Returns at `until`, on an interrupt, or when a spawned server dies.
  void WaitUntil(Clock::time_point until, const char* label) {
    while (!Interrupted() && died_.empty()) {
      auto now = Clock::now();
      if (now >= next_tick_) {
        load_->PrintProgress(Seconds(now - start_), label);
        next_tick_ += kTick;
      }
      if (now >= until) return;
      for (Proc& p : *procs_) {
        if (Reap(&p)) {
          died_ = absl::StrCat(p.name, " ", DescribeWait(p.wait_status), " during the run; log ",
                               p.log_path, ":\n", LogTail(p.log_path));
          return;
        }
      }
      std::this_thread::sleep_for(
          std::min<Clock::duration>(std::chrono::milliseconds(50), until - now));
    }
  }

 private:
  static constexpr std::chrono::seconds kTick{1};

  LoadGenerator* const load_;
  std::vector<Proc>* const procs_;
  const Clock::time_point start_;
  Clock::time_point next_tick_;
  std::string died_;
};

Clock::duration SecondsToDuration(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

double ProbeDisk(const BenchOptions& o, const std::string& dir) {
  if (o.disk_probe_seconds <= 0) return NAN;
  absl::StatusOr<double> rate = DiskFsyncRate(dir, o.disk_probe_seconds);
  if (!rate.ok()) {
    std::fprintf(stderr, "atomq-bench: disk probe failed: %s\n",
                 std::string(rate.status().message()).c_str());
    return NAN;
  }
  std::fprintf(stderr, "atomq-bench: disk serial fsync rate in %s: %.0f fsyncs/s\n", dir.c_str(),
               *rate);
  return *rate;
}

// Who is scraped: every spawned server, or the --metrics list.
std::vector<Server> ScrapedServers(const BenchOptions& o, const Cluster& c) {
  std::vector<Server> scraped;
  if (o.spawn && !c.replicas.empty()) {
    scraped = c.replicas;
  } else if (o.spawn) {
    scraped.push_back(c.coordinator);
    for (auto& [id, s] : c.participants) scraped.push_back(s);
  } else {
    for (absl::string_view m : absl::StrSplit(o.metrics, ',', absl::SkipEmpty())) {
      scraped.push_back(Server{std::string(m), "", std::string(m), ""});
    }
  }
  return scraped;
}

std::vector<Scrape> ScrapeAll(const std::vector<Server>& servers) {
  std::vector<Scrape> out;
  for (const Server& s : servers) out.push_back(ScrapeMetrics(s.metrics_address));
  return out;
}

// The threads of every spawned server and of the bench, into the start or
// the end of the window's samples. Taken inside the scrapes, so the window
// does not count the switches of serving them.
void SampleAllSwitches(const std::vector<Proc>& procs, bool start, RunResult* r) {
  auto at = [start](RunResult::SwitchSamples& s) -> SwitchSample& {
    return start ? s.start : s.end;
  };
  for (const Proc& p : procs) at(r->server_switches[p.name]) = SampleSwitches(p.pid);
  at(r->bench_switches) = SampleSwitches(getpid());
}

LoadOptions LoadOptionsOf(const BenchOptions& o) {
  LoadOptions l;
  l.clients = o.clients;
  l.threads = o.threads;
  l.channels = o.channels;
  l.streamed = o.api == "stream";
  l.rpc_timeout_ms = o.rpc_timeout_ms;
  l.consume = o.consume;
  l.queue = o.queue;
  return l;
}

// Warmup, then the measured window between two scrapes of every server;
// then the load stops.
void MeasureLoad(const BenchOptions& o, LoadGenerator& load, ClusterRun* run, RunResult* r) {
  Pacer pacer(&load, &run->cluster.procs);
  load.Start();
  pacer.WaitUntil(pacer.start() + SecondsToDuration(o.warmup), "warmup");

  r->before = ScrapeAll(r->scraped);
  SampleAllSwitches(run->cluster.procs, /*start=*/true, r);
  double bench_cpu0 = CpuSelf();
  auto t0 = Clock::now();
  const uint64_t consumed0 = load.consumed();
  load.SetPeriod(kMeasure);
  pacer.WaitUntil(t0 + SecondsToDuration(o.duration), "measure");
  load.SetPeriod(kAfter);
  const uint64_t consumed1 = load.consumed();
  auto t1 = Clock::now();
  double bench_cpu1 = CpuSelf();
  SampleAllSwitches(run->cluster.procs, /*start=*/false, r);
  r->after = ScrapeAll(r->scraped);

  load.Stop();
  r->window_s = Seconds(t1 - t0);
  r->load = load.Totals();
  r->bench_cpu_s = bench_cpu1 - bench_cpu0;
  r->consumed = consumed1 - consumed0;
  r->consume_errors = load.consume_errors();
  r->died = pacer.died();
}

int RunBench(const BenchOptions& o) {
  ClusterRun run(o);
  RunResult r;
  absl::StatusOr<int> participants = DescribeCluster(o, &run.cluster);
  if (!participants.ok()) return Fail(std::string(participants.status().message()));
  r.participants = *participants;
  // The data dir exists first: the disk probe runs in it before any load.
  if (o.spawn) {
    if (absl::Status st = run.MakeDataDir(); !st.ok()) return Fail(std::string(st.message()));
  }
  r.disk_fsyncs_per_s = ProbeDisk(o, run.ProbeDir());
  if (int rc = run.Start(r.participants); rc != 0) return rc;
  r.scraped = ScrapedServers(o, run.cluster);

  const atomq::v1::ExecuteRequest request = BuildRequest(o, run.cluster);
  // The clients' channels stay open until the servers are stopped.
  LoadGenerator load(LoadOptionsOf(o), &request, run.cluster);
  MeasureLoad(o, load, &run, &r);
  run.StopServers();
  r.server_problems = run.server_problems;
  r.interrupted = Interrupted();

  Figures f = ComputeFigures(r);
  PrintReport(o, r, f);
  if (!o.json_path.empty()) WriteJson(o.json_path, o, r, f);

  bool broken = !r.died.empty() || !r.server_problems.empty();
  if (broken && o.spawn) run.KeepData();
  run.CleanupDir();
  if (!r.died.empty()) return Fail("a server died during the run");
  if (r.load.committed == 0) return Fail("no transaction committed");
  return 0;
}

}  // namespace
}  // namespace atomq::bench

int main(int argc, char** argv) {
  CLI::App app{"atomq-bench: closed-loop load over the atomq gRPC API"};
  atomq::bench::BenchOptions o;
  atomq::bench::AddBenchFlags(app, &o);
  CLI11_PARSE(app, argc, argv);
  if (o.spawn) {
    o.tls = atomq::TlsFlags{};
    o.tls.plaintext = true;
  } else if (absl::Status st = atomq::CheckTlsFlags(o.tls, /*server=*/false); !st.ok()) {
    return atomq::bench::Fail(std::string(st.message()));
  }
  atomq::SetDialCredentials(atomq::ChannelCredentials(o.tls));
  if (absl::Status st = atomq::SetDialTokenFrom(o.token_file, /*from_env=*/true); !st.ok()) {
    return atomq::bench::Fail(std::string(st.message()));
  }
  atomq::bench::CatchStopSignals();
  return atomq::bench::RunBench(o);
}
