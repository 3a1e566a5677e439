// One completion queue and a few threads that run every gRPC event of a
// server: its calls, its own calls to other servers, and the replies the core
// releases. A thread that polls the network runs what it found (parsing, the
// handler, the core, even an idle writer's fsync) without handing it to
// another thread: gRPC's callback API hands each event from a polling thread
// to an executor thread and back, which cost a single client most of its
// latency (docs/design.md 12).
//
// Every method of a served service is raw (bytes in, bytes out): the loop
// parses requests itself, so a message that is not what the method takes is
// answered INVALID_ARGUMENT naming the method, on unary and stream calls
// alike.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"

namespace atomq {

// What the loop's threads receive from the completion queue.
class LoopTag {
 public:
  virtual ~LoopTag() = default;
  // `ok` as the completion queue reported it. On a loop thread.
  virtual void Proceed(bool ok) = 0;
};

// Makes a method's next call wait on the loop (one per method waits at a
// time; the arriving call requests the next before it runs).
class MethodServer {
 public:
  virtual ~MethodServer() = default;
  virtual void RequestNext() = 0;
  virtual const std::string& name() const = 0;
};

class RpcLoop {
 public:
  // `threads` loop threads (--loop_threads) start at once: client calls may
  // run before the server is built (recovery asks participants).
  explicit RpcLoop(int threads);
  ~RpcLoop();  // Shutdown()
  RpcLoop(const RpcLoop&) = delete;
  RpcLoop& operator=(const RpcLoop&) = delete;

  // The builder the server is made with: its completion queue is the loop's.
  grpc::ServerBuilder& builder() { return builder_; }
  // Once for each method of each service, before Serve().
  void Add(std::unique_ptr<MethodServer> method);
  // After BuildAndStart: every method's first call waits.
  void Serve();
  // After the server's Shutdown: refuses every later operation, drains the
  // queue and joins the threads. Idempotent.
  void Shutdown();

  // Runs `start(cq)`, which begins one operation on the loop's queue,
  // unless the loop is shut down (then false and nothing runs): beginning
  // an operation on a queue that was shut down aborts the process.
  bool Begin(const std::function<void(grpc::ServerCompletionQueue*)>& start)
      ABSL_LOCKS_EXCLUDED(mu_);

  // For tests and metrics: events the threads handled.
  uint64_t events() const { return events_.load(std::memory_order_relaxed); }

 private:
  void RunThread();

  grpc::ServerBuilder builder_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::vector<std::unique_ptr<MethodServer>> methods_;
  std::vector<std::thread> threads_;
  std::atomic<uint64_t> events_{0};
  absl::Mutex mu_;  // readers: operations beginning; writer: Shutdown
  bool shut_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex join_mu_;
  bool joined_ ABSL_GUARDED_BY(join_mu_) = false;
};

}  // namespace atomq
