#include "console/history.h"

#include <utility>

#include "absl/time/time.h"

namespace atomq::console {

History::History(const ConsoleFlags& flags, ClusterView* view)
    : flags_(flags), view_(view), thread_([this] { Run(); }) {}

History::~History() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void History::Run() {
  for (;;) {
    Keep(view_->Queues(Caller{"", /*server=*/true}));
    absl::MutexLock lock(&mu_);
    auto stopping = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping), absl::Milliseconds(flags_.sample_ms))) {
      return;
    }
  }
}

void History::Keep(v1::ConsoleQueues sample) {
  // Only the counts charts need: names and counters, nothing else.
  uint32_t kept = 0;
  for (v1::ConsoleParticipantQueues& p : *sample.mutable_participants()) {
    auto* queues = p.mutable_queues();
    const int room = static_cast<int>(flags_.queues_max - kept);
    if (queues->size() > room) queues->DeleteSubrange(room, queues->size() - room);
    kept += queues->size();
    for (v1::QueueInfo& q : *queues) {
      q.clear_dead_letter_queue();
      q.clear_created_unix_ms();
      q.clear_max_deliveries();
    }
  }
  absl::MutexLock lock(&mu_);
  samples_.push_back(std::move(sample));
  while (samples_.size() > flags_.history_samples) samples_.pop_front();
}

v1::ConsoleHistory History::Get() {
  v1::ConsoleHistory out;
  out.set_sample_ms(flags_.sample_ms);
  absl::MutexLock lock(&mu_);
  for (const v1::ConsoleQueues& s : samples_) *out.add_samples() = s;
  return out;
}

}  // namespace atomq::console
