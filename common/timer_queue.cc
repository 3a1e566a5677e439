#include "common/timer_queue.h"

#include <utility>

#include "absl/time/time.h"
#include "common/clock.h"

namespace atomq {
namespace {
// The queue whose callback this thread is running, so Stop() from a callback
// does not join its own thread.
thread_local const TimerQueue* current_queue = nullptr;
}  // namespace

TimerQueue::TimerQueue() { thread_ = std::thread([this] { Run(); }); }

TimerQueue::~TimerQueue() { Stop(); }

void TimerQueue::At(int64_t at_ms, std::function<void()> fn) {
  absl::MutexLock l(&mu_);
  if (stop_) return;
  // multimap inserts after equal keys, so ties keep their order. Run() waits
  // on a Condition, which absl re-checks when this lock is released.
  pending_.emplace(at_ms, std::move(fn));
}

void TimerQueue::Stop() {
  std::multimap<int64_t, std::function<void()>> dropped;
  {
    absl::MutexLock l(&mu_);
    stop_ = true;
    dropped.swap(pending_);
  }
  dropped.clear();  // outside mu_: a captured object's destructor may call At()
  // From a callback the thread would join itself; it exits on its own once
  // the callback returns.
  if (current_queue == this) return;
  absl::MutexLock l(&join_mu_);
  if (thread_.joinable()) thread_.join();
}

void TimerQueue::Run() {
  RealClock clock;
  current_queue = this;
  absl::MutexLock l(&mu_);
  while (!stop_) {
    if (pending_.empty()) {
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || !pending_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      continue;
    }
    auto it = pending_.begin();
    const int64_t first_ms = it->first;
    if (first_ms <= clock.NowMs()) {
      std::function<void()> fn = std::move(it->second);
      pending_.erase(it);
      // Without the lock: the callback may call At() or Stop().
      mu_.Unlock();
      fn();
      fn = nullptr;
      mu_.Lock();
      continue;
    }
    auto woken = [this, first_ms]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stop_ || pending_.empty() || pending_.begin()->first < first_ms;
    };
    mu_.AwaitWithDeadline(absl::Condition(&woken), absl::FromUnixMillis(first_ms));
  }
}

void TimerSet::Add(uint64_t id, int64_t at_ms) {
  bool wake = false;
  {
    absl::MutexLock lock(&mu_);
    timers_.emplace(at_ms, id);
    if (at_ms < wake_at_) {
      wake_at_ = at_ms;
      wake = true;
    }
  }
  if (wake) queue_->At(at_ms, [this] { Wake(); });
}

void TimerSet::Wake() {
  std::vector<uint64_t> due;
  int64_t next = INT64_MAX;
  {
    absl::MutexLock lock(&mu_);
    int64_t now = RealClock().NowMs();
    auto end = timers_.upper_bound(now);
    for (auto it = timers_.begin(); it != end; ++it) due.push_back(it->second);
    timers_.erase(timers_.begin(), end);
    // Earlier wake-ups may still be queued; ask again only if none covers
    // the new earliest timer.
    if (!timers_.empty() && (wake_at_ <= now || timers_.begin()->first < wake_at_)) {
      next = timers_.begin()->first;
      wake_at_ = next;
    } else if (timers_.empty()) {
      wake_at_ = INT64_MAX;
    }
  }
  if (next != INT64_MAX) queue_->At(next, [this] { Wake(); });
  if (!due.empty()) fire_(std::move(due));
}

}  // namespace atomq
