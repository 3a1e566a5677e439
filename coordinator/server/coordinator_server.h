// The coordinator's gRPC adapter: carries CoordinatorCore outputs out
// (storage, participant RPCs, timers, client replies) and feeds results back.
// All core calls happen under one mutex; I/O happens outside it, on the
// process's RpcLoop (common/rpc_loop.h) for calls in and out alike, and no
// thread is held per transaction.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "atomq/v1/coordinator.grpc.pb.h"
#include "atomq/v1/participant.grpc.pb.h"
#include "common/access.h"
#include "common/clock.h"
#include "common/core_driver.h"
#include "common/histogram.h"
#include "common/leader_book.h"
#include "common/loop_bidi.h"
#include "common/loop_unary.h"
#include "common/periodic_sweep.h"
#include "common/reply_table.h"
#include "common/server_util.h"
#include "common/storage.h"
#include "common/timer_queue.h"
#include "coordinator/core/coordinator_core.h"

namespace atomq::coordinator {

struct ServerOptions {
  uint32_t rpc_timeout_ms = 2000;  // --rpc_timeout_ms: per participant RPC
  std::string data_dir;            // --data_dir, for the atomq_data_dir_* metrics
  // --participant_calls_in_flight_max: Batch calls under way to one
  // participant; messages made meanwhile wait and leave together.
  uint32_t participant_calls_in_flight_max = 1;
  uint32_t batch_items_max = 4096;  // --batch_items_max: messages in one Batch call
  // --retention_ms: ENDED records older than this are erased; a retry of
  // Execute with the same id is idempotent within it (and after it, as long
  // as the participants remember their outcome).
  uint64_t retention_ms = 600000;
  uint32_t gc_interval_ms = 1000;  // --gc_interval_ms: how often to look
  // --gc_batch_max: records erased per look (a full look looks again in
  // 10 ms). Small: LMDB keeps the page buffers of its largest write
  // transaction, and its file grows while a large one runs.
  uint32_t gc_batch_max = 1000;
  uint32_t stream_items_max = 10000;  // --stream_items_max: transactions in one stream message
  // --stream_in_flight_max: unanswered transactions of one ExecuteStream call
  // before the coordinator stops reading it (the client's back-pressure).
  uint32_t stream_in_flight_max = 10000;
  uint32_t list_limit_max = 1000;  // --list_limit_max: transactions in one ListTransactions page
  // --stream_replies_buffered_max: results of one ExecuteStream call made but
  // not yet taken by a client that does not read; at it the coordinator
  // reads no more from the call, and after --stream_stalled_ms_max at it the
  // call ends RESOURCE_EXHAUSTED.
  uint32_t stream_replies_buffered_max = 10000;
  uint32_t stream_stalled_ms_max = 30000;
  uint32_t channels_max = 1024;  // --channels_max: outbound channels kept
  // Who may make which call (--roles_file, common/access.h); null: everyone.
  std::shared_ptr<const Access> access;
};

class CoordinatorServer final : public LoopService<v1::Coordinator> {
 public:
  // `storage` and `loop` must outlive the server; its methods are served
  // and its calls to participants made on `loop`. Reads the "txn" database
  // and recovers.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Create(Config config,
                                                                   ServerOptions options,
                                                                   Storage* storage, RpcLoop* loop);
  ~CoordinatorServer() override;

  // Stops timers and outbound work; call after the gRPC server shut down.
  void Stop();
  // Prometheus text: storage, replies, transactions in flight, process.
  std::string RenderMetrics();

  void Execute(grpc::ServerContext* ctx, const v1::ExecuteRequest* req, v1::ExecuteResponse* resp,
               UnaryReactor* reactor);
  BidiReactor<v1::ExecuteStreamRequest, v1::ExecuteStreamResponse>* ExecuteStream(
      grpc::ServerContext* ctx);
  void GetTransaction(grpc::ServerContext* ctx, const v1::GetTransactionRequest* req,
                      v1::TransactionInfo* resp, UnaryReactor* reactor);
  void ListTransactions(grpc::ServerContext* ctx, const v1::ListTransactionsRequest* req,
                        v1::ListTransactionsResponse* resp, UnaryReactor* reactor);
  void QueryState(grpc::ServerContext* ctx, const v1::TxnRef* req, v1::QueryStateResponse* resp,
                  UnaryReactor* reactor);
  // Interactive transactions.
  void Begin(grpc::ServerContext* ctx, const v1::BeginTxnRequest* req, v1::BeginTxnResponse* resp,
             UnaryReactor* reactor);
  void Commit(grpc::ServerContext* ctx, const v1::CommitTxnRequest* req, v1::ExecuteResponse* resp,
              UnaryReactor* reactor);
  void Rollback(grpc::ServerContext* ctx, const v1::RollbackTxnRequest* req,
                v1::RollbackTxnResponse* resp, UnaryReactor* reactor);

 private:
  class View;
  class Link;
  struct Sent {
    MsgType type;
    std::string txn_id;
    std::string participant;
  };
  class ExecuteStreamCall;
  struct Pending {
    UnaryReactor* reactor;
    v1::ExecuteResponse* execute = nullptr;
    v1::QueryStateResponse* state = nullptr;
    // An ExecuteStream item instead: its call and tag.
    std::shared_ptr<ExecuteStreamCall> stream;
    uint64_t tag = 0;
    std::chrono::steady_clock::time_point since = std::chrono::steady_clock::now();
  };

  CoordinatorServer(Config config, ServerOptions options, Storage* storage, RpcLoop* loop);
  // Hands every method to the loop.
  void ServeMethods();

  // Every core input: common/core_driver.h.
  template <typename Fn>
  void WithCore(Fn&& fn) {
    core_.Run(std::forward<Fn>(fn));
  }
  // Carries out what the core asked, its batches submitted already; never
  // called under the core's lock.
  void Dispatch(Output out);
  // Sends `msgs`, but when armed, dies at mid-commit-fanout after one Commit
  // of a fan-out reached its participant.
  void SendOrCrash(std::vector<OutMessage> msgs);
  // Answers the requests the core released, each once (the stream items of
  // one call in one message).
  void ReleaseReplies(std::vector<ExecuteReply> replies);
  void ReleaseStateReplies(const std::vector<StateReply>& replies);
  // To the participants, grouped per participant.
  void Send(std::vector<OutMessage> msgs);
  // One pass of gc_: hands the core the finished records older than the
  // retention window (CoordinatorCore::CollectRecords), at most
  // gc_batch_max; returns how many keys it looked at.
  size_t CollectGarbage();
  // Answers UNAVAILABLE once Stop() ran; true if it did.
  bool RejectIfStopped(UnaryReactor* reactor);
  void SendTermination(OutMessage msg);
  void ObserveBatch(const std::vector<Sent>& sent, std::chrono::steady_clock::duration took);
  void OnBatchReply(const std::vector<Sent>& sent, const grpc::Status& status,
                    const v1::BatchResponse& resp);
  // One answered item of a Batch call, `st` its status (and `r` its result
  // when OK), to the core.
  void ReportBatchItem(CoordinatorCore& c, const Sent& s, const absl::Status& st,
                       const v1::BatchResult* r, int64_t now);

  const ServerOptions options_;
  Storage* const storage_;
  RpcLoop* const loop_;
  RealClock clock_;
  std::unique_ptr<View> view_;
  ChannelCache channels_;
  LeaderBook leaders_;  // which member of a participant group to call
  TimerQueue timers_;
  std::atomic<bool> stopped_{false};
  std::atomic<bool> first_vote_seen_{false};
  Histogram execute_seconds_;
  // One Batch call to a participant, from sent to answered, by what it
  // carried: a Prepare (the vote's round trip), else a Commit or Abort.
  Histogram batch_prepare_seconds_;
  Histogram batch_decision_seconds_;
  CountHistogram batch_items_per_call_;
  std::atomic<int64_t> streams_open_{0};
  std::atomic<uint64_t> stream_read_pauses_{0};
  std::atomic<uint64_t> streams_ended_stalled_{0};
  std::atomic<uint64_t> replies_committed_{0};
  std::atomic<uint64_t> replies_aborted_{0};
  std::atomic<uint64_t> replies_failed_{0};
  std::atomic<uint64_t> batch_calls_{0};  // Batch RPCs to participants
  std::atomic<uint64_t> batch_items_{0};  // protocol messages they carried

  absl::Mutex links_mu_;
  std::map<std::string, std::unique_ptr<Link>> links_ ABSL_GUARDED_BY(links_mu_);

  ReplyTable<Pending> replies_;
  CoreDriver<CoordinatorCore> core_;
  PeriodicSweep gc_;
};

}  // namespace atomq::coordinator
