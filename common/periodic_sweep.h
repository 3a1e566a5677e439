// A job that runs now and then on a TimerQueue (collecting finished records,
// expiring leases): a pass that took a full batch runs again soon, so a
// backlog drains in small batches without waiting a whole interval each.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>

#include "common/clock.h"
#include "common/timer_queue.h"

namespace atomq {

class PeriodicSweep {
 public:
  // How soon a pass that took a full batch is followed by the next.
  static constexpr int64_t kFullAgainMs = 10;
  // One pass; returns how many items it took.
  using SweepFn = std::function<size_t()>;

  // Passes run on `timers`' thread, `interval_ms` apart, or kFullAgainMs
  // after one that took `batch_max` items or more (0: a pass is never
  // full). Once `*stopped` is true no pass runs and none is scheduled.
  // `timers`, `clock` and `stopped` must outlive the sweep.
  PeriodicSweep(TimerQueue* timers, const Clock* clock, const std::atomic<bool>* stopped,
                uint32_t interval_ms, uint32_t batch_max, SweepFn sweep)
      : timers_(timers),
        clock_(clock),
        stopped_(stopped),
        interval_ms_(interval_ms),
        batch_max_(batch_max),
        sweep_(std::move(sweep)) {}
  PeriodicSweep(const PeriodicSweep&) = delete;
  PeriodicSweep& operator=(const PeriodicSweep&) = delete;

  // The first pass after interval_ms. Call once (or RunNow() instead).
  void Start();
  // A pass now, on this thread, then the next on schedule.
  void RunNow();

 private:
  TimerQueue* const timers_;
  const Clock* const clock_;
  const std::atomic<bool>* const stopped_;
  const uint32_t interval_ms_;
  const uint32_t batch_max_;
  const SweepFn sweep_;
};

}  // namespace atomq
