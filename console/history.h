// The console's charts: every participant's queues sampled every
// --console_sample_ms by this server itself (ListQueues is open to any
// known identity), the last --console_history_samples kept, at most
// --console_queues_max queues in each. A page opened at night shows the
// last minutes at once.
#pragma once

#include <deque>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "atomq/v1/console.pb.h"
#include "console/cluster_view.h"

namespace atomq::console {

class History {
 public:
  History(const ConsoleFlags& flags, ClusterView* view);
  ~History();  // stops sampling
  v1::ConsoleHistory Get();

 private:
  void Run();
  void Keep(v1::ConsoleQueues sample);

  const ConsoleFlags& flags_;
  ClusterView* const view_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<v1::ConsoleQueues> samples_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace atomq::console
