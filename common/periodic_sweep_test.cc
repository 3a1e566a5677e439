#include "common/periodic_sweep.h"

#include <atomic>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace atomq {
namespace {

// Records when each pass ran; a pass returns the next of `takes` (then 0).
class Recorder {
 public:
  explicit Recorder(std::vector<size_t> takes) : takes_(std::move(takes)) {}
  size_t Pass() {
    absl::MutexLock lock(&mu_);
    at_.push_back(RealClock().NowMs());
    return at_.size() <= takes_.size() ? takes_[at_.size() - 1] : 0;
  }
  std::vector<int64_t> WaitFor(size_t n, int64_t wait_ms) {
    const int64_t end = RealClock().NowMs() + wait_ms;
    while (RealClock().NowMs() < end) {
      {
        absl::MutexLock lock(&mu_);
        if (at_.size() >= n) break;
      }
      absl::SleepFor(absl::Milliseconds(2));
    }
    absl::MutexLock lock(&mu_);
    return at_;
  }

 private:
  const std::vector<size_t> takes_;
  absl::Mutex mu_;
  std::vector<int64_t> at_;
};

TEST(PeriodicSweepTest, FullPassesRunAgainSoonThenTheIntervalHolds) {
  TimerQueue timers;
  RealClock clock;
  std::atomic<bool> stopped{false};
  Recorder rec({5, 7, 3});  // full, full, not full (batch_max 5)
  PeriodicSweep sweep(&timers, &clock, &stopped, /*interval_ms=*/60'000, /*batch_max=*/5,
                      [&] { return rec.Pass(); });
  sweep.RunNow();
  std::vector<int64_t> at = rec.WaitFor(3, 5000);
  ASSERT_EQ(at.size(), 3u);
  EXPECT_GE(at[1] - at[0], PeriodicSweep::kFullAgainMs);
  EXPECT_GE(at[2] - at[1], PeriodicSweep::kFullAgainMs);
  EXPECT_LT(at[2] - at[0], 5000);
  // The third was not full: the next waits the whole interval.
  EXPECT_EQ(rec.WaitFor(4, 100).size(), 3u);
  timers.Stop();
}

TEST(PeriodicSweepTest, StartWaitsAnIntervalAndZeroBatchMaxIsNeverFull) {
  TimerQueue timers;
  RealClock clock;
  std::atomic<bool> stopped{false};
  Recorder rec({1000, 1000, 1000});
  PeriodicSweep sweep(&timers, &clock, &stopped, /*interval_ms=*/40, /*batch_max=*/0,
                      [&] { return rec.Pass(); });
  const int64_t start = clock.NowMs();
  sweep.Start();
  std::vector<int64_t> at = rec.WaitFor(3, 5000);
  ASSERT_EQ(at.size(), 3u);
  EXPECT_GE(at[0] - start, 40);
  EXPECT_GE(at[1] - at[0], 40);
  EXPECT_GE(at[2] - at[1], 40);
  timers.Stop();
}

TEST(PeriodicSweepTest, NoPassOnceStopped) {
  TimerQueue timers;
  RealClock clock;
  std::atomic<bool> stopped{false};
  Recorder rec({});
  PeriodicSweep sweep(&timers, &clock, &stopped, /*interval_ms=*/5, /*batch_max=*/1,
                      [&] { return rec.Pass(); });
  sweep.RunNow();
  ASSERT_EQ(rec.WaitFor(2, 5000).size(), 2u);
  stopped = true;
  const size_t n = rec.WaitFor(1000, 30).size();
  EXPECT_EQ(rec.WaitFor(1000, 50).size(), n);
  sweep.RunNow();
  EXPECT_EQ(rec.WaitFor(1000, 20).size(), n);
  timers.Stop();
}

}  // namespace
}  // namespace atomq
