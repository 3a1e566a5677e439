// Drives a protocol core from many threads: the one place that turns the
// core's Output into storage, timers and the adapter's own I/O. Knows no
// RPC system: the adapter carries messages and replies out in its dispatch.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/grouped_reports.h"
#include "common/storage.h"
#include "common/timer_queue.h"

namespace atomq {

// `Core` is a protocol core: `Output TakeOutput()` (an Output with `persist`,
// a vector of Batch, and `bool empty()`), `OnPersisted(token, status, now)`
// and `OnTimer(id, now)`.
//
// Every core call runs under one mutex. Run() then, still under it, hands
// the output's batches to the writer in the order the core made them (a
// later batch may rewrite a key an earlier one wrote); outside it, it calls
// the adapter's dispatch with the rest of the output, and lastly drives the
// storage if it submitted anything. Storage reports reach the core as
// OnPersisted, one locked call per writer group; due core timers as OnTimer,
// one locked call per wake-up. Replies leave only through dispatch, so a
// reply the core released after a batch was durable stays after it.
//
// A batch failed UNAVAILABLE (storage.h: it may still become durable, under
// another leader) fences the driver: the core hears nothing more and
// nothing more leaves it, as if its process had crashed there. Acting on
// that failure (a 2PC coordinator aborting because its COMMIT record
// "failed") could contradict what the group then commits.
template <typename Core>
class CoreDriver {
 public:
  using Output = decltype(std::declval<Core&>().TakeOutput());
  // Carries out an output whose batches were submitted already (messages,
  // timers through ArmTimers, replies). Never called with the lock held.
  using DispatchFn = std::function<void(Output)>;
  // Looks at a batch as it goes to the writer (under the lock); what it
  // returns, unless empty, runs once that batch is durable, before the core
  // hears of it. For crash points.
  using OnDurableFn = std::function<std::function<void()>(const Batch&)>;

  // `storage`, `clock`, `timers` and `stopped` must outlive the driver;
  // once `*stopped` is true, due core timers are dropped. Installs the
  // storage's group hook.
  CoreDriver(std::unique_ptr<Core> core, Storage* storage, const Clock* clock, TimerQueue* timers,
             const std::atomic<bool>* stopped, DispatchFn dispatch,
             OnDurableFn on_durable = nullptr)
      : storage_(storage),
        clock_(clock),
        stopped_(stopped),
        dispatch_(std::move(dispatch)),
        on_durable_(std::move(on_durable)),
        core_timers_(timers, [this](std::vector<uint64_t> ids) { FireTimers(ids); }),
        core_(std::move(core)) {
    reports_.Install(storage_, [this](std::vector<GroupedReports::Report>& reports) {
      Run([&](Core& c) {
        const int64_t now = clock_->NowMs();
        for (const auto& [token, st] : reports) {
          if (Fences(st)) return;
          c.OnPersisted(token, st, now);
        }
      });
    });
  }
  CoreDriver(const CoreDriver&) = delete;
  CoreDriver& operator=(const CoreDriver&) = delete;

  // One input: `fn(core)` under the lock, then its output carried out as
  // described above. May be called from a DoneFn or a timer callback.
  template <typename Fn>
  void Run(Fn&& fn) ABSL_LOCKS_EXCLUDED(mu_) {
    Output out;
    bool persisted;
    {
      absl::MutexLock lock(&mu_);
      if (fenced_) return;
      fn(*core_);
      out = core_->TakeOutput();
      persisted = !out.persist.empty();
      Persist(std::move(out.persist));
      out.persist.clear();
    }
    if (!out.empty()) dispatch_(std::move(out));
    // After the messages left: an idle writer's fsync runs here, on this
    // thread, saving two thread hand-offs. Every submitter drives its own.
    if (persisted) storage_->Drive();
  }

  // True once a batch failed UNAVAILABLE (see above).
  bool fenced() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return fenced_;
  }

  // A read of the core under the lock; returns what `fn(core)` returns (a
  // value: a reference into the core would outlive the lock).
  template <typename Fn>
  decltype(auto) Inspect(Fn&& fn) const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return fn(static_cast<const Core&>(*core_));
  }

  // A batch of the adapter's own, submitted under the lock so that it
  // reaches the writer after every batch the core made before it.
  void SubmitOrdered(Batch batch, DoneFn done) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    storage_->Submit(std::move(batch), std::move(done));
  }

  // From dispatch: the output's timer requests (`timer_id`, `at_ms`).
  template <typename TimerRequests>
  void ArmTimers(const TimerRequests& timers) {
    for (const auto& t : timers) core_timers_.Add(t.timer_id, t.at_ms);
  }

  // For lock annotations of adapter code that runs inside Run().
  absl::Mutex& mu() const ABSL_LOCK_RETURNED(mu_) { return mu_; }

 private:
  void Persist(std::vector<Batch> batches) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (Batch& batch : batches) {
      const uint64_t token = batch.token;
      std::function<void()> durable = on_durable_ ? on_durable_(batch) : nullptr;
      storage_->SubmitDeferred(std::move(batch),
                               [this, token, durable = std::move(durable)](absl::Status st) {
                                 if (st.ok() && durable) durable();
                                 if (reports_.Collect(token, st)) return;
                                 Run([&](Core& c) {
                                   if (!Fences(st)) c.OnPersisted(token, st, clock_->NowMs());
                                 });
                               });
    }
  }

  // Under the lock, from inside Run: whether `st` fences the driver (and
  // then it is fenced).
  bool Fences(const absl::Status& st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (absl::IsUnavailable(st)) fenced_ = true;
    return fenced_;
  }

  void FireTimers(const std::vector<uint64_t>& ids) ABSL_LOCKS_EXCLUDED(mu_) {
    if (*stopped_) return;
    Run([&](Core& c) {
      const int64_t now = clock_->NowMs();
      for (uint64_t id : ids) c.OnTimer(id, now);
    });
  }

  Storage* const storage_;
  const Clock* const clock_;
  const std::atomic<bool>* const stopped_;
  const DispatchFn dispatch_;
  const OnDurableFn on_durable_;
  GroupedReports reports_;
  TimerSet core_timers_;
  mutable absl::Mutex mu_;
  const std::unique_ptr<Core> core_ ABSL_GUARDED_BY(mu_);
  bool fenced_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace atomq
