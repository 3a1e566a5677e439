// Prometheus histograms: fixed buckets, counted with atomics so that any
// thread may observe while /metrics renders. Histogram: durations in
// seconds; CountHistogram: how many items one thing carried.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace atomq {

template <size_t N>
class BucketHistogram {
 public:
  explicit BucketHistogram(const std::array<double, N>& bounds) : bounds_(bounds) {}

  void Observe(double value) {
    size_t i = 0;
    while (i < N && value > bounds_[i]) ++i;
    counts_[i].fetch_add(1, std::memory_order_relaxed);
    // In millionths, so the sum stays an integer atomic.
    sum_micro_.fetch_add(static_cast<uint64_t>(value * 1e6), std::memory_order_relaxed);
  }

  // Appends the histogram as `name`_bucket{le=...}, _sum and _count.
  void Render(std::string* out, const std::string& name, const std::string& help) const {
    absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " histogram\n");
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= N; ++i) {
      cumulative += counts_[i].load(std::memory_order_relaxed);
      const std::string le = i < N ? absl::StrFormat("%g", bounds_[i]) : "+Inf";
      absl::StrAppend(out, name, "_bucket{le=\"", le, "\"} ", cumulative, "\n");
    }
    absl::StrAppend(out, name, "_sum ",
                    absl::StrFormat("%.6f", sum_micro_.load(std::memory_order_relaxed) / 1e6), "\n",
                    name, "_count ", cumulative, "\n");
  }

 private:
  const std::array<double, N> bounds_;
  std::array<std::atomic<uint64_t>, N + 1> counts_{};  // the last: past every bound
  std::atomic<uint64_t> sum_micro_{0};
};

// From 100 us (an fsync on a fast disk) to 10 s (a deadline).
class Histogram : public BucketHistogram<16> {
 public:
  Histogram()
      : BucketHistogram({0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                         0.25, 0.5, 1, 2.5, 5, 10}) {}
};

// From 1 to 1024, by powers of two.
class CountHistogram : public BucketHistogram<11> {
 public:
  CountHistogram() : BucketHistogram({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}) {}
};

}  // namespace atomq
