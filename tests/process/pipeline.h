// The exactly-once pipeline of the process tests, shared by txn_test and
// replica_fault_test: a consumer that moves every message from `in` (p1) to
// `out` (p2), acking it in the same transaction, its checker, and the calls
// it is made of.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "atomq/v1/coordinator.grpc.pb.h"
#include "atomq/v1/participant.grpc.pb.h"
#include "tests/process/cluster.h"

namespace atomq::testing {

using Clock = std::chrono::steady_clock;

void Deadline(grpc::ClientContext* ctx, int ms);
// The integer in environment variable `name`, or `def` when it is unset.
int EnvInt(const char* name, int def);

// An op that acks delivery `d` on `participant`, with `token` instead of
// its own lease token when one is given.
v1::Op AckOp(const std::string& participant, const v1::Delivery& d, const std::string& token = "");

struct Result {
  grpc::Status status;
  v1::ExecuteResponse response;
};

// Calls on the coordinator and participants of `c`, each with a deadline.
Result Execute(Cluster& c, const v1::ExecuteRequest& req, int deadline_ms = 10000);
v1::ExecuteRequest Req(const std::string& id, std::vector<v1::Op> ops);
grpc::Status Begin(Cluster& c, const std::string& id, uint32_t timeout_ms,
                   v1::BeginTxnResponse* resp, v1::Protocol protocol = v1::PROTOCOL_UNSPECIFIED);
grpc::Status Stage(Cluster& c, int i, const std::string& id, std::vector<v1::Op> ops,
                   int64_t expires_ms, uint32_t batch, v1::StageResponse* resp = nullptr);
Result Commit(Cluster& c, const std::string& id,
              std::vector<std::pair<std::string, uint32_t>> parts);
grpc::Status Rollback(Cluster& c, const std::string& id, std::vector<std::string> parts);
grpc::Status Receive(Cluster& c, int i, const std::string& queue, uint32_t max, uint32_t lease_ms,
                     std::vector<v1::Delivery>* out);
std::optional<v1::QueueInfo> Info(Cluster& c, int i, const std::string& queue);
// Puts `payloads` on queue `queue` of participant 1 in one transaction.
void Fill(Cluster& c, const std::string& queue, const std::vector<std::string>& payloads);

// The consumer: receive from `in` at p1, then in ONE transaction ack the
// message at p1 and enqueue its payload on `out` at p2 (by Execute, or by
// Begin/Stage/Commit). The ack is the fence that makes this exactly once:
// a committed ack deletes the message, so at most one transaction per
// message can ever commit (any other acking it finds it gone, or its lease
// stale, and votes NO); and a message whose transaction did not commit stays
// in `in` (pinned while in doubt) and is delivered again. So the consumer
// only has to keep going until `in` is empty.
//
// Transaction ids are "mv-<sequence>-<lease token>": stable across retries of
// one delivery, so a retry after a lost reply (say the coordinator died) gets
// the first outcome instead of running a second transaction, and unique per
// delivery, since a lease token is never reused (it carries the participant's
// boot count). (sequence, delivery attempt) would not do: delivery counts
// start over when p1 restarts, so the id of a new delivery could be an old
// one with another token, which is refused (ALREADY_EXISTS) forever.
// Coordinator-minted ids would keep exactly-once (the ack still fences) but a
// consumer whose reply was lost could not learn that its move committed.
class Pipeline {
 public:
  // `plant_ack_outside_txn`: a known bug, to show the checks catch it: the
  // enqueue commits alone and a plain Ack follows, and the consumer
  // sometimes crashes in between.
  Pipeline(Cluster& c, uint64_t seed, bool plant_ack_outside_txn = false);

  std::atomic<int> committed{0};
  std::atomic<int> aborted{0};
  std::atomic<int> unknown{0};
  std::atomic<int> crashes{0};
  std::atomic<int> interactive{0};
  std::atomic<bool> done{false};
  std::atomic<int> redelivered_after_commit{0};

  // Runs until `in` is empty or `deadline`.
  void Run(Clock::time_point deadline);
  // Waits until `n` moves committed or the run ended; false when it ended.
  bool AwaitMoved(int n) const;

 private:
  static std::string Id(const v1::Delivery& d);
  void Pause();
  template <typename Call>
  bool Retry(Call call);
  int MoveByExecute(const v1::Delivery& d);
  int MoveThenAck(const v1::Delivery& d);
  int MoveInteractive(const v1::Delivery& d);

  Cluster& c_;
  std::mt19937_64 rng_;
  const bool plant_;
  const uint32_t lease_ms_;
  std::set<uint64_t> moved_;  // sequences whose move we were told committed
};

// What is wrong with `out` against the payloads put on `in`: duplicates and
// losses, one line each (empty when exactly once).
std::vector<std::string> ExactlyOnceViolations(const std::vector<std::string>& out,
                                               const std::vector<std::string>& payloads);

// Waits until participant i holds no transaction and its `queue` nothing
// pending in one.
bool AwaitSettled(Cluster& c, int i, const std::string& queue);

// Starts `c`, creates p1's `in` and p2's `out` and puts `n` payloads on
// `in`; the payloads.
std::vector<std::string> StartPipeline(Cluster& c, int n);

// After `consumer`'s run: `in` is empty, p2 settled, and `out` holds every
// payload exactly once (test failures otherwise).
void ExpectMovedExactlyOnce(Cluster& c, const Pipeline& consumer,
                            const std::vector<std::string>& payloads);

}  // namespace atomq::testing
