// The participant's gRPC adapter: the commit protocol service (for the
// coordinator and peers) and the queue service (for clients), both carried
// into one ParticipantCore under one mutex. Payloads are read from storage
// outside the mutex.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "atomq/v1/coordinator.grpc.pb.h"
#include "atomq/v1/participant.grpc.pb.h"
#include "common/clock.h"
#include "common/server_util.h"
#include "common/storage.h"
#include "common/timer_queue.h"
#include "participant/core/participant_core.h"

namespace atomq::participant {

struct ServerOptions {
  uint32_t rpc_timeout_ms = 2000;  // --rpc_timeout_ms: per outbound query
  uint32_t batch_items_max = 10000;  // --batch_items_max: items in one Batch call
};

// Owns the core and its I/O; exposes the two gRPC services.
class ParticipantNode {
 public:
  // Reads every database and recovers. `storage` must outlive the node.
  static absl::StatusOr<std::unique_ptr<ParticipantNode>> Create(Config config,
                                                                 ServerOptions options,
                                                                 Storage* storage);
  ~ParticipantNode();
  void Stop();
  // Prometheus text: storage, process.
  std::string RenderMetrics();

  grpc::Service* txn_service();
  grpc::Service* queue_service();

 private:
  class View;
  class TxnService;
  class QueueService;
  using ReplyFn = std::function<void(const Reply&)>;

  ParticipantNode(Config config, ServerOptions options, Storage* storage);

  template <typename Fn>
  void WithCore(Fn fn) ABSL_LOCKS_EXCLUDED(mu_);
  void Dispatch(Output out) ABSL_LOCKS_EXCLUDED(mu_);
  // Hands batches to the writer; called with mu_ held, never blocks.
  void Persist(std::vector<Batch> batches) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendQuery(OutQuery q);
  // Registers how the reply to a request is delivered; returns its id.
  RequestId Expect(ReplyFn fn);

  const ServerOptions options_;
  Storage* const storage_;
  RealClock clock_;
  std::unique_ptr<View> view_;
  std::unique_ptr<TxnService> txn_service_;
  std::unique_ptr<QueueService> queue_service_;
  ChannelCache channels_;
  TimerQueue timers_;
  std::atomic<bool> stopped_{false};
  std::atomic<uint64_t> next_request_{1};

  absl::Mutex mu_;
  std::unique_ptr<ParticipantCore> core_ ABSL_GUARDED_BY(mu_);
  absl::Mutex pending_mu_;
  std::map<RequestId, ReplyFn> pending_ ABSL_GUARDED_BY(pending_mu_);
};

}  // namespace atomq::participant
