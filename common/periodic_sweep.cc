#include "common/periodic_sweep.h"

namespace atomq {

void PeriodicSweep::Start() {
  timers_->At(clock_->NowMs() + interval_ms_, [this] { RunNow(); });
}

void PeriodicSweep::RunNow() {
  if (*stopped_) return;
  const size_t n = sweep_();
  const bool full = batch_max_ > 0 && n >= batch_max_;
  const int64_t next = full ? kFullAgainMs : interval_ms_;
  timers_->At(clock_->NowMs() + next, [this] { RunNow(); });
}

}  // namespace atomq
