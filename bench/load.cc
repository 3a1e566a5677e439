#include "bench/load.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>

#include "absl/strings/str_format.h"
#include "atomq/v1/participant.grpc.pb.h"
#include "bench/bench_util.h"
#include "grpcpp/alarm.h"

namespace atomq::bench {

using atomq::v1::Coordinator;
using atomq::v1::ExecuteRequest;
using atomq::v1::ExecuteResponse;

struct Stats {
  std::mutex mu;
  Histogram latency;  // measured window only
  uint64_t committed = 0;
  uint64_t aborted = 0;
  uint64_t errors = 0;
  std::map<std::string, uint64_t> error_kinds;  // "CODE: message" -> count
  std::map<std::string, uint64_t> abort_reasons;
};

struct Client {
  Worker* worker = nullptr;
  Coordinator::Stub* stub = nullptr;
  std::mutex mu;  // guards ctx against TryCancel from the main thread
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientAsyncResponseReader<ExecuteResponse>> rpc;
  ExecuteResponse resp;
  grpc::Status status;
  Clock::time_point start;
  grpc::Alarm alarm;
  bool in_alarm = false;
};

struct Load {
  const ExecuteRequest* request = nullptr;
  int rpc_timeout_ms = 30000;
  std::atomic<int> period{kWarmup};
  std::atomic<uint64_t> completed{0};  // every reply or error, any period
  std::atomic<uint64_t> errors{0};     // any period, for progress
};

struct Worker {
  Load* load = nullptr;
  grpc::CompletionQueue cq;
  std::vector<Client*> clients;
  Stats stats;
  std::thread thread;
  std::atomic<int> outstanding{0};
};

namespace {

// Counts one finished Execute (reply or error) in `w`'s figures.
void Record(Worker* w, const grpc::Status& status, const ExecuteResponse& resp,
            Clock::time_point start) {
  auto end = Clock::now();
  Load* load = w->load;
  load->completed.fetch_add(1, std::memory_order_relaxed);
  if (!status.ok()) load->errors.fetch_add(1, std::memory_order_relaxed);
  if (load->period.load() != kMeasure) return;
  uint64_t us =
      uint64_t(std::chrono::duration_cast<std::chrono::microseconds>(end - start).count());
  std::lock_guard<std::mutex> l(w->stats.mu);
  if (!status.ok()) {
    ++w->stats.errors;
    std::string kind = StatusText(status);
    if (w->stats.error_kinds.size() < 20 || w->stats.error_kinds.count(kind)) {
      ++w->stats.error_kinds[kind];
    }
  } else if (resp.outcome() == atomq::v1::COMMITTED) {
    ++w->stats.committed;
    w->stats.latency.Add(us);
  } else {
    ++w->stats.aborted;
    w->stats.latency.Add(us);
    const std::string& r = resp.reason();
    if (w->stats.abort_reasons.size() < 20 || w->stats.abort_reasons.count(r)) {
      ++w->stats.abort_reasons[r];
    }
  }
}

void StartCall(Client* c) {
  std::lock_guard<std::mutex> l(c->mu);
  c->ctx = std::make_unique<grpc::ClientContext>();
  SetDeadline(c->ctx.get(), c->worker->load->rpc_timeout_ms);
  c->resp.Clear();
  c->start = Clock::now();
  c->rpc = c->stub->PrepareAsyncExecute(c->ctx.get(), *c->worker->load->request, &c->worker->cq);
  c->rpc->StartCall();
  c->rpc->Finish(&c->resp, &c->status, c);
}

void RunWorker(Worker* w) {
  w->outstanding.store(int(w->clients.size()));
  for (Client* c : w->clients) StartCall(c);
  void* tag = nullptr;
  bool ok = false;
  while (w->outstanding > 0 && w->cq.Next(&tag, &ok)) {
    Client* c = static_cast<Client*>(tag);
    Load* load = w->load;
    if (c->in_alarm) {
      c->in_alarm = false;
    } else {
      Record(w, c->status, c->resp, c->start);
      // A failing cluster would otherwise be hammered in a hot loop.
      if (!c->status.ok() && load->period.load() < kStop) {
        c->in_alarm = true;
        c->alarm.Set(&w->cq, std::chrono::system_clock::now() + std::chrono::milliseconds(10), c);
        continue;
      }
    }
    if (load->period.load() >= kStop) {
      --w->outstanding;
      continue;
    }
    StartCall(c);
  }
  w->cq.Shutdown();
  while (w->cq.Next(&tag, &ok)) {
  }
}

}  // namespace

// --api=stream: the clients of one channel share one ExecuteStream call.
// Each still runs one transaction at a time; requests that become due while a
// write is under way leave together in the next message.
class StreamDriver final : public grpc::ClientBidiReactor<atomq::v1::ExecuteStreamRequest,
                                                          atomq::v1::ExecuteStreamResponse> {
 public:
  StreamDriver(Worker* w, Coordinator::Stub* stub, int clients) : w_(w), starts_(size_t(clients)) {
    w_->outstanding.fetch_add(clients);
    stub->async()->ExecuteStream(&ctx_, this);
    StartRead(&in_);
    AddHold();  // writes also start outside reactions (the retry alarm)
    {
      std::lock_guard<std::mutex> l(mu_);
      for (int i = 0; i < clients; ++i) QueueLocked(uint64_t(i));
      WriteLocked();
    }
    StartCall();
  }

  void Cancel() { ctx_.TryCancel(); }
  // True once the call ended (OnDone ran).
  bool WaitDone(Clock::time_point until) {
    std::unique_lock<std::mutex> l(mu_);
    return done_cv_.wait_until(l, until, [this] { return done_; });
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the call is ending; OnDone follows once the hold is gone
      std::lock_guard<std::mutex> l(mu_);
      if (!closed_) {
        closed_ = true;
        RemoveHold();
      }
      return;
    }
    std::vector<uint64_t> failed;
    for (const atomq::v1::StreamedResult& r : in_.results()) {
      if (r.tag() >= starts_.size()) continue;
      grpc::Status st(static_cast<grpc::StatusCode>(r.code()), r.message());
      Record(w_, st, r.response(), starts_[r.tag()]);
      if (!st.ok()) failed.push_back(r.tag());
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      for (const atomq::v1::StreamedResult& r : in_.results()) {
        if (r.tag() >= starts_.size()) continue;
        if (w_->load->period.load() >= kStop) {
          FinishClientLocked();
        } else if (r.code() == 0) {
          QueueLocked(r.tag());
        } else {
          parked_.push_back(r.tag());
        }
      }
      WriteLocked();
      // A failing cluster would otherwise be hammered in a hot loop.
      if (!parked_.empty() && !alarm_set_) {
        alarm_set_ = true;
        AddHold();
        alarm_.Set(std::chrono::system_clock::now() + std::chrono::milliseconds(10),
                   [this](bool) { Unpark(); });
      }
    }
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> l(mu_);
    writing_ = false;
    if (ok) WriteLocked();
  }

  void OnDone(const grpc::Status& s) override {
    std::lock_guard<std::mutex> l(mu_);
    if (!s.ok() && w_->load->period.load() < kStop) {
      std::fprintf(stderr, "atomq-bench: ExecuteStream ended: %s\n", StatusText(s).c_str());
    }
    w_->outstanding.fetch_sub(int(active_));
    active_ = 0;
    done_ = true;
    done_cv_.notify_all();
  }

 private:
  void Unpark() {
    {
      std::lock_guard<std::mutex> l(mu_);
      alarm_set_ = false;
      for (uint64_t tag : parked_) {
        if (w_->load->period.load() >= kStop) {
          FinishClientLocked();
        } else {
          QueueLocked(tag);
        }
      }
      parked_.clear();
      WriteLocked();
    }
    RemoveHold();
  }

  void QueueLocked(uint64_t tag) {
    starts_[tag] = Clock::now();
    atomq::v1::StreamedExecute* item = next_.add_items();
    item->set_tag(tag);
    *item->mutable_request() = *w_->load->request;
  }

  // One client stops for good; the last one closes the call.
  void FinishClientLocked() {
    --active_;
    w_->outstanding.fetch_sub(1);
    if (active_ == 0 && !closed_) {
      closed_ = true;
      StartWritesDone();
      RemoveHold();
    }
  }

  void WriteLocked() {
    if (writing_ || closed_ || next_.items_size() == 0) return;
    writing_ = true;
    sending_.Swap(&next_);
    next_.Clear();
    StartWrite(&sending_);
  }

  Worker* const w_;
  grpc::ClientContext ctx_;
  atomq::v1::ExecuteStreamResponse in_;
  std::mutex mu_;
  std::condition_variable done_cv_;
  std::vector<Clock::time_point> starts_;  // by tag (the client's index)
  atomq::v1::ExecuteStreamRequest next_, sending_;
  std::vector<uint64_t> parked_;  // clients waiting out an error
  grpc::Alarm alarm_;
  size_t active_ = starts_.size();
  bool alarm_set_ = false;
  bool writing_ = false;
  bool closed_ = false;
  bool done_ = false;
};

LoadGenerator::LoadGenerator(const LoadOptions& o, const ExecuteRequest* request,
                             const Cluster& cluster)
    : o_(o), load_(std::make_unique<Load>()) {
  load_->request = request;
  load_->rpc_timeout_ms = o.rpc_timeout_ms;
  for (const auto& [id, server] : cluster.participants) {
    consume_from_.push_back(server.grpc_address);
  }
  for (int i = 0; i < o.channels; ++i) {
    stubs_.push_back(Coordinator::NewStub(MakeChannel(cluster.coordinator.grpc_address, i + 1)));
  }
  // With streams, a worker only keeps one call's figures (gRPC's threads run it).
  for (int i = 0; i < (o.streamed ? std::min(o.channels, o.clients) : o.threads); ++i) {
    workers_.push_back(std::make_unique<Worker>());
    workers_.back()->load = load_.get();
  }
  for (int i = 0; i < o.clients && !o.streamed; ++i) {
    auto c = std::make_unique<Client>();
    c->worker = workers_[size_t(i % o.threads)].get();
    c->stub = stubs_[size_t(i % o.channels)].get();
    c->worker->clients.push_back(c.get());
    clients_.push_back(std::move(c));
  }
}

LoadGenerator::~LoadGenerator() = default;

void LoadGenerator::Consume(const std::string& address) {
  auto stub = atomq::v1::Queue::NewStub(MakeChannel(address, 1000));
  atomq::v1::ReceiveRequest req;
  req.set_queue(o_.queue);
  req.set_max_messages(1000);
  req.set_wait_ms(100);
  req.set_auto_ack(true);
  req.set_consumer("atomq-bench");
  while (load_->period.load() < kStop) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, 5000);
    atomq::v1::ReceiveResponse resp;
    grpc::Status st = stub->Receive(&ctx, req, &resp);
    if (!st.ok()) {
      consume_errors_.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    consumed_.fetch_add(uint64_t(resp.deliveries_size()));
  }
}

void LoadGenerator::Start() {
  if (o_.consume) {
    for (const std::string& address : consume_from_) {
      consumers_.emplace_back([this, address] { Consume(address); });
    }
  }
  if (o_.streamed) {
    const size_t n = workers_.size();
    for (size_t i = 0; i < n; ++i) {
      // Clients spread evenly over the calls.
      int share = o_.clients / int(n) + (int(i) < o_.clients % int(n) ? 1 : 0);
      drivers_.push_back(std::make_unique<StreamDriver>(workers_[i].get(), stubs_[i].get(), share));
    }
  } else {
    for (auto& w : workers_) {
      Worker* wp = w.get();
      wp->thread = std::thread([wp] { RunWorker(wp); });
    }
  }
}

void LoadGenerator::SetPeriod(Period p) { load_->period.store(p); }

void LoadGenerator::WaitIdle() {
  auto stop_deadline = Clock::now() + std::chrono::seconds(5);
  for (;;) {
    bool any = false;
    for (auto& w : workers_) any = any || w->outstanding.load() > 0;
    if (!any || Clock::now() >= stop_deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void LoadGenerator::Stop() {
  load_->period.store(kStop);
  WaitIdle();
  for (auto& c : clients_) {
    std::lock_guard<std::mutex> l(c->mu);
    if (c->ctx) c->ctx->TryCancel();
  }
  for (auto& d : drivers_) {
    if (!d->WaitDone(Clock::now() + std::chrono::seconds(1))) {
      d->Cancel();
      d->WaitDone(Clock::now() + std::chrono::seconds(10));
    }
  }
  for (auto& w : workers_) {
    if (w->thread.joinable()) w->thread.join();
  }
  for (std::thread& t : consumers_) t.join();
}

void LoadGenerator::PrintProgress(double elapsed, const char* label) {
  uint64_t now = load_->completed.load();
  double p99 = 0;
  uint64_t errs = load_->errors.load();
  {
    Histogram h;
    for (auto& w : workers_) {
      std::lock_guard<std::mutex> l(w->stats.mu);
      h.Merge(w->stats.latency);
    }
    p99 = h.Quantile(0.99) / 1000.0;
  }
  std::fprintf(stderr, "[%6.1fs] %-7s %8llu txn/s  p99 %8s ms  errors %llu\n", elapsed, label,
               static_cast<unsigned long long>(now - last_completed_),
               p99 > 0 ? absl::StrFormat("%.2f", p99).c_str() : "-",
               static_cast<unsigned long long>(errs));
  last_completed_ = now;
}

LoadTotals LoadGenerator::Totals() const {
  LoadTotals t;
  for (auto& w : workers_) {
    t.latency.Merge(w->stats.latency);
    t.committed += w->stats.committed;
    t.aborted += w->stats.aborted;
    t.errors += w->stats.errors;
    for (auto& [k, v] : w->stats.error_kinds) t.error_kinds[k] += v;
    for (auto& [k, v] : w->stats.abort_reasons) t.abort_reasons[k] += v;
  }
  return t;
}

}  // namespace atomq::bench
