// The load: closed-loop clients on completion queues. Each client runs one
// Execute at a time and starts the next as soon as the reply arrives; all are
// in flight at once on a few threads (not a thread per client). With
// --api=stream the clients of one channel share one ExecuteStream call.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "atomq/v1/coordinator.grpc.pb.h"
#include "bench/cluster.h"
#include "bench/histogram.h"

namespace atomq::bench {

// Where the run is: only replies in kMeasure count in the figures; from
// kStop on no client starts another transaction.
enum Period : int { kWarmup = 0, kMeasure = 1, kAfter = 2, kStop = 3 };

struct LoadOptions {
  int clients = 64;
  int threads = 1;   // completion-queue threads (unary calls)
  int channels = 1;  // connections to the coordinator
  bool streamed = false;
  int rpc_timeout_ms = 30000;
  bool consume = false;  // also drain `queue` on every participant
  std::string queue;
};

// The figures of the measured window, all clients together.
struct LoadTotals {
  Histogram latency;
  uint64_t committed = 0;
  uint64_t aborted = 0;
  uint64_t errors = 0;
  std::map<std::string, uint64_t> error_kinds;  // "CODE: message" -> count
  std::map<std::string, uint64_t> abort_reasons;
};

struct Load;
struct Worker;
struct Client;
class StreamDriver;

class LoadGenerator {
 public:
  // Every client sends `request`, which must outlive the generator.
  LoadGenerator(const LoadOptions& o, const atomq::v1::ExecuteRequest* request,
                const Cluster& cluster);
  ~LoadGenerator();

  // Starts the consumers (with `consume`), then the clients.
  void Start();
  void SetPeriod(Period p);
  // Stops issuing; cancels what is still in flight after a grace period and
  // waits for every thread and call to end.
  void Stop();

  // One progress line on stderr: completions since the last line, the
  // window's p99 so far, errors in any period.
  void PrintProgress(double elapsed, const char* label);

  // After Stop.
  LoadTotals Totals() const;
  // Messages the consumers received and their failed calls, in any period.
  uint64_t consumed() const { return consumed_.load(); }
  uint64_t consume_errors() const { return consume_errors_.load(); }

 private:
  void Consume(const std::string& address);
  void WaitIdle();

  const LoadOptions o_;
  std::vector<std::string> consume_from_;  // participants' gRPC addresses
  std::unique_ptr<Load> load_;
  std::vector<std::unique_ptr<atomq::v1::Coordinator::Stub>> stubs_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::unique_ptr<Client>> clients_;
  std::vector<std::unique_ptr<StreamDriver>> drivers_;
  std::atomic<uint64_t> consumed_{0}, consume_errors_{0};
  std::vector<std::thread> consumers_;
  uint64_t last_completed_ = 0;  // at the last progress line
};

}  // namespace atomq::bench
