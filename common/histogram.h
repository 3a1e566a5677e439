// A Prometheus histogram of durations in seconds: fixed buckets, counted
// with atomics so that any thread may observe while /metrics renders.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace atomq {

class Histogram {
 public:
  // From 100 us (an fsync on a fast disk) to 10 s (a deadline).
  static constexpr std::array<double, 16> kBounds = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                     0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                                     1,      2.5,     5,      10};

  void Observe(double seconds) {
    size_t i = 0;
    while (i < kBounds.size() && seconds > kBounds[i]) ++i;
    counts_[i].fetch_add(1, std::memory_order_relaxed);
    // Microseconds, so the sum stays an integer atomic.
    sum_us_.fetch_add(static_cast<uint64_t>(seconds * 1e6), std::memory_order_relaxed);
  }

  // Appends the histogram as `name`_bucket{le=...}, _sum and _count.
  void Render(std::string* out, const std::string& name, const std::string& help) const {
    absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " histogram\n");
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= kBounds.size(); ++i) {
      cumulative += counts_[i].load(std::memory_order_relaxed);
      const std::string le = i < kBounds.size() ? absl::StrFormat("%g", kBounds[i]) : "+Inf";
      absl::StrAppend(out, name, "_bucket{le=\"", le, "\"} ", cumulative, "\n");
    }
    absl::StrAppend(out, name, "_sum ",
                    absl::StrFormat("%.6f", sum_us_.load(std::memory_order_relaxed) / 1e6), "\n",
                    name, "_count ", cumulative, "\n");
  }

 private:
  std::array<std::atomic<uint64_t>, kBounds.size() + 1> counts_{};  // the last: past every bound
  std::atomic<uint64_t> sum_us_{0};
};

}  // namespace atomq
