// What the bench measures besides its own clients: the servers' Prometheus
// /metrics (over a small HTTP GET of its own, so it needs no HTTP library),
// the data disk's serial fsync rate, and the context switches of local
// processes' threads.
#pragma once

#include <sys/types.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace atomq::bench {

// One scrape of "name{labels} value [timestamp]" lines. Values are kept
// both by full series key and summed by bare metric name; a figure that is
// not there reads NaN.
struct Scrape {
  bool ok = false;
  std::string error;
  std::map<std::string, double> series;  // "name{labels}" or "name"
  std::map<std::string, double> by_name;

  double Get(const std::string& name) const;
  double Series(const std::string& key) const;
};

Scrape ParsePrometheus(const std::string& text);

// GET http://addr/metrics within 2 s; a failure is in `error`.
Scrape ScrapeMetrics(const std::string& addr);

// Overwrites 4 KiB blocks of a preallocated file in `dir` with an fdatasync
// after each for `seconds`, as a log writer does at best (no file growth, so
// no metadata journal commit per sync). Returns syncs per second.
absl::StatusOr<double> DiskFsyncRate(const std::string& dir, double seconds);

// The bench's own CPU seconds so far (user + system) and peak resident bytes.
double CpuSelf();
double PeakRssSelf();

// Context switches of one thread, or summed over threads: voluntary (it
// blocked: futex, poll, I/O wait) and non-voluntary (it was preempted).
struct Switches {
  double voluntary = NAN;
  double nonvoluntary = NAN;

  double Total() const { return voluntary + nonvoluntary; }
};

// The voluntary_ctxt_switches and nonvoluntary_ctxt_switches lines of a
// /proc/.../status text; NaN for a line that is not there or not a count.
Switches ParseSwitches(absl::string_view status);

struct ThreadSwitches {
  pid_t tid = 0;
  std::string name;  // /proc/PID/task/TID/comm
  Switches switches;
};

// Every thread of a process at one moment.
struct SwitchSample {
  std::string error;  // empty: read
  std::vector<ThreadSwitches> threads;
};

// Reads /proc/PID/task/*/status and comm. Per thread, because
// /proc/PID/status counts the main thread's switches only. A thread that
// exits while it is read is left out.
SwitchSample SampleSwitches(pid_t pid);

// A process's switches between two samples.
struct WindowSwitches {
  std::string error;  // either sample's
  Switches total;     // the sum over `threads`
  // The threads alive at `end`, most switches first. One not in `start`,
  // or whose counts went back (its id was reused), began in the window and
  // counts whole. Threads that exited in the window are lost: the kernel
  // keeps their counts only for getrusage of the process itself.
  std::vector<ThreadSwitches> threads;
};

WindowSwitches SwitchesBetween(const SwitchSample& start, const SwitchSample& end);

}  // namespace atomq::bench
