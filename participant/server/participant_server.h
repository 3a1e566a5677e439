// The participant's gRPC adapter: the commit protocol service (for the
// coordinator and peers) and the queue service (for clients), both carried
// into one ParticipantCore under one mutex. Payloads are read from storage
// outside the mutex.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "atomq/v1/coordinator.grpc.pb.h"
#include "atomq/v1/participant.grpc.pb.h"
#include "common/access.h"
#include "common/clock.h"
#include "common/core_driver.h"
#include "common/leader_book.h"
#include "common/loop_bidi.h"
#include "common/loop_unary.h"
#include "common/periodic_sweep.h"
#include "common/reply_table.h"
#include "common/server_util.h"
#include "common/storage.h"
#include "common/timer_queue.h"
#include "participant/core/participant_core.h"

namespace atomq::participant {

struct ServerOptions {
  uint32_t rpc_timeout_ms = 2000;    // --rpc_timeout_ms: per outbound query
  uint32_t batch_items_max = 10000;  // --batch_items_max: items in one Batch call
  // Consumers (queue_consumers.cc).
  uint32_t receive_wait_ms_max = 60000;  // --receive_wait_ms_max: longest long-poll
  uint32_t waiters_max = 10000;          // --waiters_max: long-poll Receives parked at once
  uint32_t subscriptions_max = 1000;     // --subscriptions_max: Subscribe streams open at once
  // Of those, what one identity may hold (a quarter unless set).
  uint32_t waiters_per_identity_max = 2500;       // --waiters_per_identity_max
  uint32_t subscriptions_per_identity_max = 250;  // --subscriptions_per_identity_max
  uint32_t lease_sweep_ms = 100;  // --lease_sweep_ms: how often expired leases return
  // Outcome collection (Config::retention_ms says how old an entry must be).
  uint32_t gc_interval_ms = 1000;  // --gc_interval_ms: how often to look
  // --gc_batch_max: outcomes erased per look (a full look looks again in
  // 10 ms). Small: LMDB keeps the page buffers of its largest write
  // transaction, and its file grows while a large one runs.
  uint32_t gc_batch_max = 1000;
  uint32_t list_limit_max = 1000;  // --list_limit_max: rows in one ListTransactions page
  // --list_reply_bytes_max: a ListTransactions page ends before its reply
  // passes this (it always holds one row).
  uint64_t list_reply_bytes_max = 4 << 20;
  uint32_t channels_max = 1024;  // --channels_max: outbound channels kept
  std::string data_dir;          // --data_dir, for the atomq_data_dir_* metrics
  // Whom this node may dial (docs/design.md section 11): --coordinators and
  // --peers, id -> host:port. Addresses a request names are never dialled;
  // an id missing here is not asked at all. `self_address` is where its own
  // termination messages go unless --peers lists it.
  std::map<std::string, std::string> coordinators;
  std::map<std::string, std::string> peers;
  std::string self_address;
  // Who may make which call (--roles_file, common/access.h); null: everyone.
  std::shared_ptr<const Access> access;
};

// Owns the core and its I/O; exposes the two gRPC services.
class ParticipantNode {
 public:
  // Reads every database and recovers. `storage` and `loop` must outlive
  // the node; its services are served and its calls made on `loop`.
  static absl::StatusOr<std::unique_ptr<ParticipantNode>> Create(Config config,
                                                                 ServerOptions options,
                                                                 Storage* storage, RpcLoop* loop);
  ~ParticipantNode();
  void Stop();
  // Ends waiting consumers (long-poll Receives answer with what is ready,
  // streams end with UNAVAILABLE) so that a server shutdown need not wait.
  void StopConsumers();
  // Prometheus text: storage, outcomes erased, process.
  std::string RenderMetrics();
  void AppendQueueMetrics(std::string* out);

  grpc::Service* txn_service();
  grpc::Service* queue_service();

 private:
  class View;
  class TxnService;
  class QueueService;
  using ReplyFn = std::function<void(const Reply&)>;

  ParticipantNode(Config config, ServerOptions options, Storage* storage, RpcLoop* loop);

  // Every core input: common/core_driver.h.
  template <typename Fn>
  void WithCore(Fn&& fn) {
    core_.Run(std::forward<Fn>(fn));
  }
  // Carries out what the core asked, its batches submitted already; never
  // called under the core's lock.
  void Dispatch(Output out);
  void SendQuery(OutQuery q);
  void SendPeerMsg(OutPeerMsg m);
  // Where `target` (a coordinator id when `coordinator`, else a peer's or this
  // node's id) is reached, from this node's configuration; nullopt (logged,
  // at most once per kSkipLogIntervalMs) when it is not configured.
  std::optional<std::string> AddressOf(const std::string& target, bool coordinator);
  // OK when a Prepare's coordinator is one of --coordinators; else
  // FAILED_PRECONDITION, and the Prepare never reaches the core.
  absl::Status CheckCoordinator(const v1::PrepareRequest& req) const;
  // A pass of gc_ now, then the next on schedule.
  void CollectGarbage() { gc_.RunNow(); }
  // One pass of gc_: hands the core the kForgettableDb entries past the
  // retention window, at most gc_batch_max; returns how many.
  size_t OfferForgettable();

  // --- consumers: long-poll Receive and Subscribe streams (queue_consumers.cc) ---
  class Waiting;       // something that waits for a queue to gain ready messages
  class LongPoll;      // a Receive with wait_ms
  class Subscription;  // a Subscribe stream's state
  class SubscribeReactor;
  void StartReceive(grpc::ServerContext* ctx, const v1::ReceiveRequest* req,
                    v1::ReceiveResponse* resp, UnaryReactor* reactor);
  BidiReactor<v1::SubscribeRequest, v1::SubscribeResponse>* StartSubscribe(
      grpc::ServerContext* ctx);
  // Registers `w` to be woken when `queue` gains ready messages. Call inside
  // WithCore right after a Receive found nothing, so no wake is missed.
  // RESOURCE_EXHAUSTED when --waiters_max long-polls are parked already, or
  // --waiters_per_identity_max of w's identity (streams are not counted).
  absl::Status Park(const std::string& queue, const std::shared_ptr<Waiting>& w, bool long_poll)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(core_.mu());
  void Unpark(const std::string& queue, uint64_t waiter_id);
  // From Dispatch: wakes (on the timer thread) everything parked on `queues`.
  void WakeQueues(const std::vector<std::string>& queues);
  // A pass of lease_sweep_ (expired leases return) now, then on schedule.
  void SweepLeases() { lease_sweep_.RunNow(); }
  absl::Mutex waiters_mu_ ABSL_ACQUIRED_AFTER(core_.mu());
  std::map<std::string, std::map<uint64_t, std::shared_ptr<Waiting>>> waiters_
      ABSL_GUARDED_BY(waiters_mu_);
  uint32_t parked_long_polls_ ABSL_GUARDED_BY(waiters_mu_) = 0;
  // Parked long-polls: id -> identity.
  std::map<uint64_t, std::string> long_poll_ids_ ABSL_GUARDED_BY(waiters_mu_);
  // Forgets parked long-poll `id` (if it is one) in both counts.
  void ForgetLongPollLocked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(waiters_mu_);
  std::unique_ptr<IdentityShares> waiter_shares_;        // --waiters_per_identity_max
  std::unique_ptr<IdentityShares> subscription_shares_;  // --subscriptions_per_identity_max
  std::atomic<uint32_t> open_subscriptions_{0};
  uint32_t core_receive_max_ = 1000;  // Config::receive_max: bounds a stream's window
  uint64_t retention_ms_ = 600000;    // Config::retention_ms: where a collection scan stops
  std::map<uint64_t, std::weak_ptr<Subscription>> subscriptions_ ABSL_GUARDED_BY(waiters_mu_);
  std::atomic<uint64_t> next_waiter_{1};
  std::atomic<bool> consumers_stopped_{false};

  const ServerOptions options_;
  Storage* const storage_;
  RpcLoop* const loop_;
  RealClock clock_;
  std::unique_ptr<View> view_;
  std::unique_ptr<TxnService> txn_service_;
  std::unique_ptr<QueueService> queue_service_;
  static constexpr int64_t kSkipLogIntervalMs = 10000;
  std::string participant_id_;  // Config::participant_id: its own termination messages
  ChannelCache channels_;
  LeaderBook leaders_;                      // which member of a group (coordinator or peer) to call
  std::atomic<uint64_t> dials_skipped_{0};  // queries and messages to unconfigured ids
  absl::Mutex skip_log_mu_;
  int64_t skip_logged_ms_ ABSL_GUARDED_BY(skip_log_mu_) = -1;
  uint64_t skips_unlogged_ ABSL_GUARDED_BY(skip_log_mu_) = 0;
  TimerQueue timers_;
  std::atomic<bool> stopped_{false};

  ReplyTable<ReplyFn> replies_;
  CoreDriver<ParticipantCore> core_;
  PeriodicSweep gc_;
  PeriodicSweep lease_sweep_;
};

}  // namespace atomq::participant
