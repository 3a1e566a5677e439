#include "common/timer_queue.h"

#include <atomic>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "gtest/gtest.h"

namespace atomq {
namespace {

int64_t Now() { return RealClock().NowMs(); }

TEST(TimerQueueTest, RunsInDeadlineOrderNotBefore) {
  TimerQueue q;
  absl::Mutex mu;
  std::vector<int> order;
  std::vector<int64_t> late_by;
  absl::Notification all;
  const int64_t base = Now();
  // Added out of order; 3 and 4 share a deadline and keep insertion order.
  const std::vector<std::pair<int, int64_t>> timers = {
      {5, 120}, {1, 20}, {3, 60}, {4, 60}, {2, 40}, {0, -1000}};
  for (const auto& [id, offset] : timers) {
    const int64_t at = base + offset;
    q.At(at, [&, id = id, at] {
      absl::MutexLock l(&mu);
      order.push_back(id);
      late_by.push_back(Now() - at);
      if (order.size() == 6) all.Notify();
    });
  }
  ASSERT_TRUE(all.WaitForNotificationWithTimeout(absl::Seconds(5)));
  absl::MutexLock l(&mu);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4, 5}));
  for (int64_t d : late_by) EXPECT_GE(d, 0);  // never early
}

TEST(TimerQueueTest, EarlierTimerAddedLaterWakesTheThread) {
  TimerQueue q;
  q.At(Now() + 60'000, [] {});
  absl::Notification fired;
  const int64_t start = Now();
  q.At(start + 10, [&] { fired.Notify(); });
  ASSERT_TRUE(fired.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_LT(Now() - start, 2000);
}

TEST(TimerQueueTest, CallbackSchedulesAnother) {
  TimerQueue q;
  absl::Notification second;
  std::atomic<int> hops{0};
  q.At(Now() + 5, [&] {
    hops++;
    q.At(Now() + 5, [&] {
      hops++;
      second.Notify();
    });
  });
  ASSERT_TRUE(second.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(hops.load(), 2);
}

TEST(TimerQueueTest, StopIsIdempotentAndDropsPending) {
  std::atomic<int> ran{0};
  TimerQueue q;
  q.At(Now() + 60'000, [&] { ran++; });
  q.Stop();
  q.Stop();
  q.At(Now() - 1, [&] { ran++; });  // after Stop: dropped
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(ran.load(), 0);
}

TEST(TimerQueueTest, StopFromCallback) {
  TimerQueue q;
  absl::Notification stopped;
  std::atomic<int> ran{0};
  q.At(Now(), [&] {
    q.Stop();
    stopped.Notify();
  });
  q.At(Now() + 10, [&] { ran++; });
  ASSERT_TRUE(stopped.WaitForNotificationWithTimeout(absl::Seconds(5)));
  absl::SleepFor(absl::Milliseconds(30));
  EXPECT_EQ(ran.load(), 0);
}  // destructor joins

}  // namespace
}  // namespace atomq

namespace atomq {
namespace {

TEST(TimerSetTest, FiresEveryTimerOnceNotEarlyAndInFewCalls) {
  TimerQueue queue;
  absl::Mutex mu;
  std::map<uint64_t, int64_t> fired_at;
  int calls = 0;
  TimerSet set(&queue, [&](std::vector<uint64_t> ids) {
    int64_t now = RealClock().NowMs();
    absl::MutexLock lock(&mu);
    ++calls;
    for (uint64_t id : ids) {
      EXPECT_TRUE(fired_at.emplace(id, now).second) << "timer " << id << " fired twice";
    }
  });
  std::map<uint64_t, int64_t> due;
  int64_t start = RealClock().NowMs();
  for (uint64_t id = 1; id <= 200; ++id) {
    int64_t at = start + 20 + static_cast<int64_t>((id * 7919) % 60);
    due[id] = at;
    set.Add(id, at);
  }
  set.Add(999, start + 5);  // an earlier one after later ones moves the wake-up
  due[999] = start + 5;
  for (int i = 0; i < 200; ++i) {
    {
      absl::MutexLock lock(&mu);
      if (fired_at.size() == due.size()) break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  absl::MutexLock lock(&mu);
  ASSERT_EQ(fired_at.size(), due.size());
  for (const auto& [id, at] : due) EXPECT_GE(fired_at[id], at) << "timer " << id << " fired early";
  EXPECT_LT(calls, 100) << "timers were not fired together";
}

}  // namespace
}  // namespace atomq
