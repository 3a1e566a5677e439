#include "bench/report.h"

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace atomq::bench {
namespace {

constexpr double kMs = 1000.0;
constexpr double kMiB = 1048576.0;
const char kCommittedReplies[] = "atomq_execute_replies_total{outcome=\"committed\"}";
const char kAbortedReplies[] = "atomq_execute_replies_total{outcome=\"aborted\"}";
const char kErrorReplies[] = "atomq_execute_replies_total{outcome=\"error\"}";

// `decimals` digits after the point; "n/a" for a figure that could not be had.
std::string Fmt(double v, int decimals = 3) {
  if (!std::isfinite(v)) return "n/a";
  return absl::StrFormat("%.*f", decimals, v);
}

std::string JsonNumber(double v) {
  if (!std::isfinite(v)) return "null";
  return absl::StrFormat("%.6g", v);
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
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

// A server's figures over the window, from its scrapes at either end.
ServerFigures ServerDelta(const Server& s, const Scrape& a, const Scrape& b) {
  ServerFigures f;
  f.name = s.name;
  f.metrics_address = s.metrics_address;
  if (!a.ok || !b.ok) {
    f.error = !a.ok ? a.error : b.error;
    return f;
  }
  auto delta = [&](const char* name) { return b.Get(name) - a.Get(name); };
  f.cpu_seconds = delta("process_cpu_seconds_total");
  f.fsyncs = delta("atomq_storage_fsyncs_total");
  f.batches = delta("atomq_storage_batches_total");
  f.write_failures = delta("atomq_storage_write_failures_total");
  f.peak_rss_bytes = b.Get("process_max_resident_memory_bytes");
  f.rss_start = a.Get("process_resident_memory_bytes");
  f.rss_end = b.Get("process_resident_memory_bytes");
  f.anon_start = a.Get("process_resident_anon_memory_bytes");
  f.anon_end = b.Get("process_resident_anon_memory_bytes");
  return f;
}

// Only a coordinator counts Execute replies and its Batch calls; summed over
// a group's replicas (the one that led during the window counted them).
void ReadCoordinatorFigures(const Scrape& a, const Scrape& b, Figures* f) {
  double c = b.Series(kCommittedReplies);
  if (!std::isfinite(c)) return;
  auto add = [](double* to, double v) { *to = std::isfinite(*to) ? *to + v : v; };
  auto delta = [&](const char* name) { return b.Get(name) - a.Get(name); };
  add(&f->coord_committed, c - a.Series(kCommittedReplies));
  add(&f->coord_aborted, b.Series(kAbortedReplies) - a.Series(kAbortedReplies));
  add(&f->coord_errors, b.Series(kErrorReplies) - a.Series(kErrorReplies));
  add(&f->batch_calls, delta("atomq_participant_batch_calls_total"));
  add(&f->batch_items, delta("atomq_participant_batch_items_total"));
}

void AddServerTotals(const ServerFigures& s, Figures* f) {
  if (std::isfinite(s.cpu_seconds)) {
    f->total_cpu += s.cpu_seconds;
  } else {
    f->cpu_complete = false;
  }
  if (std::isfinite(s.fsyncs)) {
    f->total_fsyncs += s.fsyncs;
  } else {
    f->fsync_complete = false;
  }
  if (std::isfinite(s.batches)) f->total_batches += s.batches;
}

double PerTxn(double v, uint64_t committed) { return committed ? v / double(committed) : NAN; }

// The switches of the window for every scraped server (an error for one
// the bench did not spawn) and their sum if every one was read.
void ReadSwitches(const RunResult& r, Figures* f) {
  Switches sum{0, 0};
  for (ServerFigures& s : f->servers) {
    auto it = r.server_switches.find(s.name);
    if (it == r.server_switches.end()) {
      s.switches.error = "not spawned by the bench: its threads are not read";
    } else {
      s.switches = SwitchesBetween(it->second.start, it->second.end);
    }
    sum.voluntary += s.switches.total.voluntary;
    sum.nonvoluntary += s.switches.total.nonvoluntary;
  }
  if (!f->servers.empty()) f->server_switches = sum;
  f->bench_switches = SwitchesBetween(r.bench_switches.start, r.bench_switches.end);
}

// "100->120 (+20%)" in MiB; "-" without both figures.
std::string MiBSpan(double from, double to) {
  if (!std::isfinite(from) || !std::isfinite(to) || from <= 0) return std::string("-");
  return absl::StrFormat("%.0f->%.0f (%+.0f%%)", from / kMiB, to / kMiB, (to / from - 1) * 100);
}

void PrintSummary(const BenchOptions& o, const RunResult& r, const Figures& f) {
  const LoadTotals& t = r.load;
  std::printf(
      "atomq-bench: %s, %d participant(s), %d op(s)/participant, %d B payload, "
      "%d clients, %.1f s measured (after %.1f s warmup)\n",
      o.protocol.c_str(), r.participants, o.ops_per_txn, o.payload_bytes, o.clients, r.window_s,
      o.warmup);
  std::printf("  committed      %10.1f txn/s  (%llu)\n", f.committed_per_s,
              static_cast<unsigned long long>(t.committed));
  std::printf("  aborted        %10.1f txn/s  (%llu)\n", f.aborted_per_s,
              static_cast<unsigned long long>(t.aborted));
  std::printf("  errors         %10llu\n", static_cast<unsigned long long>(t.errors));
  if (o.consume) {
    std::printf(
        "  consumed       %10.1f msg/s  (auto-ack Receive on every participant; %llu "
        "failed calls)\n",
        double(r.consumed) / r.window_s, static_cast<unsigned long long>(r.consume_errors));
  }
  std::printf("  latency ms     p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n",
              t.latency.Quantile(0.50) / kMs, t.latency.Quantile(0.99) / kMs,
              t.latency.Quantile(0.999) / kMs, double(t.latency.max()) / kMs,
              t.latency.mean() / kMs);
  std::printf("  disk           %10s serial fsyncs/s (4 KiB + fdatasync)\n",
              Fmt(r.disk_fsyncs_per_s, 0).c_str());
  std::printf("  txn/s per disk fsync/s   %s\n", Fmt(f.ratio_to_disk, 3).c_str());
  std::printf("  fsyncs / committed txn   %s  (%s fsyncs, %s batches over all servers)\n",
              Fmt(f.fsyncs_per_txn, 3).c_str(),
              Fmt(f.fsync_complete ? f.total_fsyncs : NAN, 0).c_str(),
              Fmt(f.fsync_complete ? f.total_batches : NAN, 0).c_str());
  std::printf("  CPU ms / txn   servers %s  bench %s\n", Fmt(f.server_cpu_per_txn * kMs, 3).c_str(),
              Fmt(f.bench_cpu_per_txn * kMs, 3).c_str());
  const Switches& sv = f.server_switches;
  const Switches& bv = f.bench_switches.total;
  std::printf(
      "  context switches / committed txn   servers %s (voluntary %s, non-voluntary %s)  "
      "bench %s (%s, %s)\n",
      Fmt(PerTxn(sv.Total(), t.committed), 2).c_str(),
      Fmt(PerTxn(sv.voluntary, t.committed), 2).c_str(),
      Fmt(PerTxn(sv.nonvoluntary, t.committed), 2).c_str(),
      Fmt(PerTxn(bv.Total(), t.committed), 2).c_str(),
      Fmt(PerTxn(bv.voluntary, t.committed), 2).c_str(),
      Fmt(PerTxn(bv.nonvoluntary, t.committed), 2).c_str());
}

void PrintCoordinatorFigures(const RunResult& r, const Figures& f) {
  if (std::isfinite(f.batch_calls) && r.load.committed > 0 && f.batch_calls > 0) {
    std::printf("  participant calls / txn  %.3f  (%.1f messages per Batch call)\n",
                f.batch_calls / double(r.load.committed), f.batch_items / f.batch_calls);
  }
  if (std::isfinite(f.coord_committed)) {
    std::printf("  coordinator replies in window: committed %.0f aborted %.0f error %.0f\n",
                f.coord_committed, f.coord_aborted, f.coord_errors);
  }
}

void PrintServerTable(const RunResult& r, const Figures& f) {
  std::printf("  %-22s %10s %10s %10s %12s %22s %22s\n", "process", "cpu_s", "fsyncs", "batches",
              "peak_rss_MiB", "rss_MiB start->end", "anon_MiB start->end");
  for (const ServerFigures& s : f.servers) {
    if (!s.error.empty()) {
      std::printf("  %-22s metrics unavailable: %s\n", s.name.c_str(), s.error.c_str());
      continue;
    }
    std::printf("  %-22s %10s %10s %10s %12s %22s %22s\n", s.name.c_str(),
                Fmt(s.cpu_seconds).c_str(), Fmt(s.fsyncs, 0).c_str(), Fmt(s.batches, 0).c_str(),
                Fmt(s.peak_rss_bytes / kMiB, 1).c_str(), MiBSpan(s.rss_start, s.rss_end).c_str(),
                MiBSpan(s.anon_start, s.anon_end).c_str());
    if (std::isfinite(s.write_failures) && s.write_failures > 0) {
      std::printf("  %-22s storage write failures: %.0f\n", "", s.write_failures);
    }
  }
  std::printf("  %-22s %10s %10s %10s %12s\n", "bench", Fmt(r.bench_cpu_s).c_str(), "-", "-",
              Fmt(PeakRssSelf() / kMiB, 1).c_str());
}

// Each process's context switches in the window (summed over the threads
// alive at its end), and per committed transaction.
void PrintSwitchTable(const RunResult& r, const Figures& f) {
  const uint64_t n = r.load.committed;
  std::printf("  %-22s %10s %14s %10s %12s %8s\n", "context switches", "voluntary", "non-voluntary",
              "vol/txn", "non-vol/txn", "threads");
  auto row = [n](const std::string& name, const WindowSwitches& w) {
    if (!w.error.empty()) {
      std::printf("  %-22s switches unavailable: %s\n", name.c_str(), w.error.c_str());
      return;
    }
    std::printf("  %-22s %10s %14s %10s %12s %8zu\n", name.c_str(),
                Fmt(w.total.voluntary, 0).c_str(), Fmt(w.total.nonvoluntary, 0).c_str(),
                Fmt(PerTxn(w.total.voluntary, n), 2).c_str(),
                Fmt(PerTxn(w.total.nonvoluntary, n), 2).c_str(), w.threads.size());
  };
  for (const ServerFigures& s : f.servers) row(s.name, s.switches);
  row("bench", f.bench_switches);
}

// With --threads_report: the threads of one process with the most switches.
void PrintThreads(const std::string& name, const WindowSwitches& w, int max, uint64_t n) {
  if (!w.error.empty()) return;
  const size_t shown = std::min(w.threads.size(), size_t(max));
  std::printf("  %s: the %zu of %zu threads with the most context switches in the window\n",
              name.c_str(), shown, w.threads.size());
  std::printf("    %8s %-16s %10s %14s %10s %12s\n", "tid", "thread", "voluntary", "non-voluntary",
              "vol/txn", "non-vol/txn");
  for (size_t i = 0; i < shown; ++i) {
    const ThreadSwitches& t = w.threads[i];
    std::printf("    %8d %-16s %10s %14s %10s %12s\n", int(t.tid), t.name.c_str(),
                Fmt(t.switches.voluntary, 0).c_str(), Fmt(t.switches.nonvoluntary, 0).c_str(),
                Fmt(PerTxn(t.switches.voluntary, n), 2).c_str(),
                Fmt(PerTxn(t.switches.nonvoluntary, n), 2).c_str());
  }
}

void PrintThreadsReport(const BenchOptions& o, const RunResult& r, const Figures& f) {
  if (!o.threads_report) return;
  for (const ServerFigures& s : f.servers) {
    PrintThreads(s.name, s.switches, o.threads_report_max, r.load.committed);
  }
  PrintThreads("bench", f.bench_switches, o.threads_report_max, r.load.committed);
}

void PrintProblems(const RunResult& r) {
  for (auto& [k, v] : r.load.error_kinds) {
    std::printf("  error x%llu: %s\n", static_cast<unsigned long long>(v), k.c_str());
  }
  for (auto& [k, v] : r.load.abort_reasons) {
    std::printf("  abort x%llu: %s\n", static_cast<unsigned long long>(v), k.c_str());
  }
  for (const std::string& s : r.server_problems) std::printf("  server problem: %s\n", s.c_str());
  if (!r.died.empty()) std::printf("  server problem: %s\n", r.died.c_str());
  if (r.interrupted) std::printf("  (interrupted: the window was cut short)\n");
}

// A JSON object written one "key": value line at a time.
class JsonObject {
 public:
  void Field(const std::string& k, const std::string& v) {
    absl::StrAppend(&text_, first_ ? "" : ",\n", "  ", JsonString(k), ": ", v);
    first_ = false;
  }
  std::string Close() const { return "{\n" + text_ + "\n}\n"; }

 private:
  std::string text_;
  bool first_ = true;
};

std::string JsonLatency(const Histogram& lat) {
  return absl::StrCat("{\"p50\": ", JsonNumber(lat.Quantile(0.5) / kMs),
                      ", \"p99\": ", JsonNumber(lat.Quantile(0.99) / kMs),
                      ", \"p999\": ", JsonNumber(lat.Quantile(0.999) / kMs),
                      ", \"max\": ", JsonNumber(double(lat.max()) / kMs),
                      ", \"mean\": ", JsonNumber(lat.mean() / kMs), "}");
}

// A process's switches in the window; with --threads_report, its busiest
// threads too.
std::string JsonSwitches(const WindowSwitches& w, uint64_t committed, const BenchOptions& o) {
  if (!w.error.empty()) return absl::StrCat("{\"error\": ", JsonString(w.error), "}");
  std::string out = absl::StrCat(
      "{\"error\": null, \"voluntary\": ", JsonNumber(w.total.voluntary),
      ", \"nonvoluntary\": ", JsonNumber(w.total.nonvoluntary),
      ", \"voluntary_per_committed_txn\": ", JsonNumber(PerTxn(w.total.voluntary, committed)),
      ", \"nonvoluntary_per_committed_txn\": ", JsonNumber(PerTxn(w.total.nonvoluntary, committed)),
      ", \"threads_alive\": ", w.threads.size());
  if (o.threads_report) {
    std::vector<std::string> threads;
    for (size_t i = 0; i < w.threads.size() && i < size_t(o.threads_report_max); ++i) {
      const ThreadSwitches& t = w.threads[i];
      threads.push_back(absl::StrCat("{\"tid\": ", t.tid, ", \"name\": ", JsonString(t.name),
                                     ", \"voluntary\": ", JsonNumber(t.switches.voluntary),
                                     ", \"nonvoluntary\": ", JsonNumber(t.switches.nonvoluntary),
                                     "}"));
    }
    absl::StrAppend(&out, ", \"threads\": [", absl::StrJoin(threads, ", "), "]");
  }
  return out + "}";
}

std::string JsonServer(const ServerFigures& f, uint64_t committed, const BenchOptions& o) {
  return absl::StrCat(
      "{\"name\": ", JsonString(f.name), ", \"metrics\": ", JsonString(f.metrics_address),
      ", \"error\": ", f.error.empty() ? "null" : JsonString(f.error),
      ", \"cpu_s\": ", JsonNumber(f.cpu_seconds), ", \"fsyncs\": ", JsonNumber(f.fsyncs),
      ", \"batches\": ", JsonNumber(f.batches),
      ", \"write_failures\": ", JsonNumber(f.write_failures),
      ", \"peak_rss_bytes\": ", JsonNumber(f.peak_rss_bytes),
      ", \"rss_start_bytes\": ", JsonNumber(f.rss_start),
      ", \"rss_end_bytes\": ", JsonNumber(f.rss_end),
      ", \"anon_rss_start_bytes\": ", JsonNumber(f.anon_start),
      ", \"anon_rss_end_bytes\": ", JsonNumber(f.anon_end),
      ", \"context_switches\": ", JsonSwitches(f.switches, committed, o), "}");
}

void JsonRunFields(const BenchOptions& o, const RunResult& r, const Figures& f, JsonObject* j) {
  j->Field("protocol", JsonString(o.protocol));
  j->Field("participants", absl::StrCat(r.participants));
  j->Field("ops_per_txn", absl::StrCat(o.ops_per_txn));
  j->Field("payload_bytes", absl::StrCat(o.payload_bytes));
  j->Field("clients", absl::StrCat(o.clients));
  j->Field("spawned", o.spawn ? "true" : "false");
  j->Field("warmup_s", JsonNumber(o.warmup));
  j->Field("window_s", JsonNumber(r.window_s));
  j->Field("committed", absl::StrCat(r.load.committed));
  j->Field("aborted", absl::StrCat(r.load.aborted));
  j->Field("errors", absl::StrCat(r.load.errors));
  j->Field("committed_txn_per_s", JsonNumber(f.committed_per_s));
  j->Field("aborted_txn_per_s", JsonNumber(f.aborted_per_s));
  j->Field("latency_ms", JsonLatency(r.load.latency));
}

void JsonCostFields(const BenchOptions& o, const RunResult& r, const Figures& f, JsonObject* j) {
  j->Field("disk_fsyncs_per_s", JsonNumber(r.disk_fsyncs_per_s));
  j->Field("txn_per_s_per_disk_fsync_per_s", JsonNumber(f.ratio_to_disk));
  j->Field("fsyncs_per_committed_txn", JsonNumber(f.fsyncs_per_txn));
  j->Field("server_fsyncs", JsonNumber(f.fsync_complete ? f.total_fsyncs : NAN));
  j->Field("server_batches", JsonNumber(f.fsync_complete ? f.total_batches : NAN));
  j->Field("server_cpu_s_per_txn", JsonNumber(f.server_cpu_per_txn));
  j->Field("bench_cpu_s_per_txn", JsonNumber(f.bench_cpu_per_txn));
  j->Field("bench_cpu_s", JsonNumber(r.bench_cpu_s));
  const uint64_t n = r.load.committed;
  j->Field("server_context_switches_per_committed_txn",
           JsonNumber(PerTxn(f.server_switches.Total(), n)));
  j->Field("server_voluntary_switches_per_committed_txn",
           JsonNumber(PerTxn(f.server_switches.voluntary, n)));
  j->Field("server_nonvoluntary_switches_per_committed_txn",
           JsonNumber(PerTxn(f.server_switches.nonvoluntary, n)));
  j->Field("bench_context_switches", JsonSwitches(f.bench_switches, n, o));
  j->Field("consumed_msgs_per_s",
           o.consume ? JsonNumber(double(r.consumed) / r.window_s) : std::string("null"));
  j->Field("participant_batch_calls", JsonNumber(f.batch_calls));
  j->Field("participant_batch_items", JsonNumber(f.batch_items));
  j->Field("bench_peak_rss_bytes", JsonNumber(PeakRssSelf()));
  j->Field("coordinator_replies", absl::StrCat("{\"committed\": ", JsonNumber(f.coord_committed),
                                               ", \"aborted\": ", JsonNumber(f.coord_aborted),
                                               ", \"error\": ", JsonNumber(f.coord_errors), "}"));
}

void JsonServerFields(const BenchOptions& o, const RunResult& r, const Figures& f, JsonObject* j) {
  std::vector<std::string> servers;
  for (const ServerFigures& s : f.servers) servers.push_back(JsonServer(s, r.load.committed, o));
  j->Field("servers", absl::StrCat("[", absl::StrJoin(servers, ", "), "]"));
  std::vector<std::string> errs;
  for (auto& [k, v] : r.load.error_kinds) errs.push_back(absl::StrCat(JsonString(k), ": ", v));
  j->Field("error_kinds", absl::StrCat("{", absl::StrJoin(errs, ", "), "}"));
  std::vector<std::string> probs = r.server_problems;
  if (!r.died.empty()) probs.push_back(r.died);
  std::vector<std::string> quoted;
  for (auto& p : probs) quoted.push_back(JsonString(p));
  j->Field("server_problems", absl::StrCat("[", absl::StrJoin(quoted, ", "), "]"));
  j->Field("interrupted", r.interrupted ? "true" : "false");
}

}  // namespace

Figures ComputeFigures(const RunResult& r) {
  Figures f;
  const LoadTotals& t = r.load;
  f.committed_per_s = double(t.committed) / r.window_s;
  f.aborted_per_s = double(t.aborted) / r.window_s;
  f.finished = t.committed + t.aborted;
  f.cpu_complete = f.fsync_complete = !r.scraped.empty();
  for (size_t i = 0; i < r.scraped.size(); ++i) {
    const Scrape& a = r.before[i];
    const Scrape& b = r.after[i];
    f.servers.push_back(ServerDelta(r.scraped[i], a, b));
    if (!a.ok || !b.ok) {
      f.cpu_complete = f.fsync_complete = false;
      continue;
    }
    AddServerTotals(f.servers.back(), &f);
    ReadCoordinatorFigures(a, b, &f);
  }
  f.fsyncs_per_txn = f.fsync_complete && t.committed ? f.total_fsyncs / double(t.committed) : NAN;
  f.server_cpu_per_txn = f.cpu_complete && f.finished ? f.total_cpu / double(f.finished) : NAN;
  f.bench_cpu_per_txn = f.finished ? r.bench_cpu_s / double(f.finished) : NAN;
  f.ratio_to_disk = f.committed_per_s / r.disk_fsyncs_per_s;
  ReadSwitches(r, &f);
  return f;
}

void PrintReport(const BenchOptions& o, const RunResult& r, const Figures& f) {
  PrintSummary(o, r, f);
  PrintCoordinatorFigures(r, f);
  PrintServerTable(r, f);
  PrintSwitchTable(r, f);
  PrintThreadsReport(o, r, f);
  PrintProblems(r);
  std::fflush(stdout);
}

void WriteJson(const std::string& path, const BenchOptions& o, const RunResult& r,
               const Figures& f) {
  JsonObject j;
  JsonRunFields(o, r, f, &j);
  JsonCostFields(o, r, f, &j);
  JsonServerFields(o, r, f, &j);
  std::ofstream out(path);
  out << j.Close();
  if (!out) std::fprintf(stderr, "atomq-bench: cannot write %s\n", path.c_str());
}

}  // namespace atomq::bench
