// One thread that runs callbacks at deadlines: the adapters' way to turn the
// cores' "set timer" outputs into OnTimer inputs.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace atomq {

// Where a callback is scheduled: a TimerQueue, or a simulator's event queue.
class Timers {
 public:
  virtual ~Timers() = default;
  // Runs `fn` at or after `at_ms` (the Clock's time), never inside At.
  virtual void At(int64_t at_ms, std::function<void()> fn) = 0;
};

class TimerQueue : public Timers {
 public:
  TimerQueue();
  ~TimerQueue();  // stops the thread; pending callbacks are dropped
  TimerQueue(const TimerQueue&) = delete;
  TimerQueue& operator=(const TimerQueue&) = delete;

  // Runs `fn` on the timer thread at or after `at_ms` (RealClock time).
  // Callbacks with equal deadlines run in the order they were added. A
  // callback may call At(); after Stop(), At() drops `fn`.
  void At(int64_t at_ms, std::function<void()> fn) override;
  // Idempotent. Joins the thread unless called from a callback.
  void Stop();

 private:
  void Run();

  absl::Mutex mu_;
  std::multimap<int64_t, std::function<void()>> pending_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex join_mu_;  // serializes joining thread_ across Stop() callers
  std::thread thread_;
};

// The cores' timers, by id: fires every timer that is due in one call, so an
// adapter takes its core's lock once per wake-up instead of once per timer,
// and asks the TimerQueue for a wake-up only when the earliest one moves.
class TimerSet {
 public:
  // `fire` runs on the TimerQueue's thread with the due ids, oldest first.
  TimerSet(TimerQueue* queue, std::function<void(std::vector<uint64_t>)> fire)
      : queue_(queue), fire_(std::move(fire)) {}
  void Add(uint64_t id, int64_t at_ms);

 private:
  void Wake();

  TimerQueue* const queue_;
  const std::function<void(std::vector<uint64_t>)> fire_;
  absl::Mutex mu_;
  std::multimap<int64_t, uint64_t> timers_ ABSL_GUARDED_BY(mu_);
  // The earliest wake-up asked of queue_ and not yet run.
  int64_t wake_at_ ABSL_GUARDED_BY(mu_) = INT64_MAX;
};

}  // namespace atomq
