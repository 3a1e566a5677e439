#include "common/rpc_loop.h"

#include <utility>

namespace atomq {

RpcLoop::RpcLoop(int threads) : cq_(builder_.AddCompletionQueue()) {
  if (threads < 1) threads = 1;
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { RunThread(); });
}

RpcLoop::~RpcLoop() { Shutdown(); }

void RpcLoop::Add(std::unique_ptr<MethodServer> method) { methods_.push_back(std::move(method)); }

void RpcLoop::Serve() {
  for (const std::unique_ptr<MethodServer>& m : methods_) m->RequestNext();
}

void RpcLoop::Shutdown() {
  {
    absl::WriterMutexLock lock(&mu_);
    if (!shut_) {
      shut_ = true;
      cq_->Shutdown();
    }
  }
  absl::MutexLock lock(&join_mu_);
  if (joined_) return;
  joined_ = true;
  for (std::thread& t : threads_) t.join();
}

bool RpcLoop::Begin(const std::function<void(grpc::ServerCompletionQueue*)>& start) {
  absl::ReaderMutexLock lock(&mu_);
  if (shut_) return false;
  start(cq_.get());
  return true;
}

void RpcLoop::RunThread() {
  void* tag = nullptr;
  bool ok = false;
  // Next returns false once the queue is shut down and drained; operations
  // cancelled by the shutdown still arrive (not ok) and free themselves.
  while (cq_->Next(&tag, &ok)) {
    events_.fetch_add(1, std::memory_order_relaxed);
    static_cast<LoopTag*>(tag)->Proceed(ok);
  }
}

}  // namespace atomq
