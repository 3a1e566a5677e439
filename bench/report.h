// Reporting: the figures of one run, printed as text on stdout and, with
// --json, written as one JSON object.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "bench/cluster.h"
#include "bench/load.h"
#include "bench/options.h"
#include "bench/probes.h"

namespace atomq::bench {

// What one run measured.
struct RunResult {
  int participants = 0;
  double window_s = 0;  // the measured window
  LoadTotals load;
  double disk_fsyncs_per_s = NAN;
  double bench_cpu_s = 0;  // in the window
  uint64_t consumed = 0;   // in the window
  uint64_t consume_errors = 0;
  // The scraped servers and their /metrics when the window began and ended.
  std::vector<Server> scraped;
  std::vector<Scrape> before, after;
  // The threads of each spawned server (by name, as in `scraped`) and of
  // the bench itself when the window began and ended.
  struct SwitchSamples {
    SwitchSample start, end;
  };
  std::map<std::string, SwitchSamples> server_switches;
  SwitchSamples bench_switches;
  std::vector<std::string> server_problems;
  std::string died;  // a spawned server that died during the run
  bool interrupted = false;
};

// One server's figures over the window.
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
  // Its threads' context switches; an error for a server not spawned here.
  WindowSwitches switches;
};

// The figures derived from a RunResult; NaN where one could not be had.
struct Figures {
  double committed_per_s = NAN;
  double aborted_per_s = NAN;
  uint64_t finished = 0;  // committed + aborted
  std::vector<ServerFigures> servers;
  double total_cpu = 0, total_fsyncs = 0, total_batches = 0;
  bool cpu_complete = false, fsync_complete = false;  // every server counted
  double coord_committed = NAN, coord_aborted = NAN, coord_errors = NAN;
  double batch_calls = NAN, batch_items = NAN;  // coordinator -> participants
  double fsyncs_per_txn = NAN;
  double server_cpu_per_txn = NAN;
  double bench_cpu_per_txn = NAN;
  // Context switches over all servers (NaN unless every one was read) and
  // the bench's, in the window; per committed transaction when printed.
  Switches server_switches;
  WindowSwitches bench_switches;
  double ratio_to_disk = NAN;  // committed txn/s per disk fsync/s
};

Figures ComputeFigures(const RunResult& r);

// The text report on stdout (flushed).
void PrintReport(const BenchOptions& o, const RunResult& r, const Figures& f);

// The JSON object in `path`; a failure to write is said on stderr.
void WriteJson(const std::string& path, const BenchOptions& o, const RunResult& r,
               const Figures& f);

}  // namespace atomq::bench
