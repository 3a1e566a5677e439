// What the bench measures besides its own clients: the servers' Prometheus
// /metrics (over a small HTTP GET of its own, so it needs no HTTP library)
// and the data disk's serial fsync rate.
#pragma once

#include <map>
#include <string>

#include "absl/status/statusor.h"

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

}  // namespace atomq::bench
