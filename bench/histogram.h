// Latency histogram: log-linear buckets over microseconds. Values below 128
// are exact; above, each power of two has 64 buckets, so any percentile is
// within 1.6% of the true sample (the max is kept exactly).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace atomq::bench {

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

}  // namespace atomq::bench
