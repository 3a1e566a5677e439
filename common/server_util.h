// What both servers share: gRPC server setup (health, reflection), client
// channels, status conversion, and flag parsing helpers.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "atomq/v1/participant.grpc.pb.h"
#include "atomq/v1/records.pb.h"
#include "common/codec.h"
#include "common/log.h"
#include "common/storage.h"
#include "grpcpp/grpcpp.h"

namespace atomq {

grpc::Status ToGrpc(const absl::Status& s);
absl::Status FromGrpc(const grpc::Status& s);

// Channels by address, created on first use and kept, dialled with
// DialChannel (common/bearer.h): DialCredentials() and the dial token.
class ChannelCache {
 public:
  std::shared_ptr<grpc::Channel> Get(const std::string& address);

 private:
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
};

// Builds and starts a server on `listen` (host:port) with health checking
// and reflection, speaking TLS per `credentials` (common/tls.h).
// FAILED_PRECONDITION if the address cannot be bound.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartServer(
    const std::string& listen, const std::vector<grpc::Service*>& services,
    uint32_t message_bytes_max, std::shared_ptr<grpc::ServerCredentials> credentials);

// "p1=127.0.0.1:7101,p2=..." -> map; INVALID_ARGUMENT with the bad entry.
absl::StatusOr<std::map<std::string, std::string>> ParsePeerList(const std::string& s);

// Keys of `db`, a time index (8 bytes big-endian ms, then an id), older
// than `cutoff_ms`, in key order, at most `max`: what a collection pass
// offers its core. A failed scan is logged as `what` and ends the list.
std::vector<std::string> ScanTimeIndex(Storage* storage, const std::string& db, int64_t cutoff_ms,
                                       size_t max, const std::string& what);

// Blocks until SIGINT or SIGTERM. Call InitSignals() first thing in main,
// before any thread starts, so every thread has them blocked.
void InitSignals();
// What every server does first: InitSignals, crash points from the
// environment, and no Abseil deadlock graph.
void InitServerProcess();
int WaitForSignal();

}  // namespace atomq

namespace atomq {

// The decoded record under `key` in `db`, or nullopt when it is missing or
// cannot be read (a corrupt one is logged): what the cores' DurableViews see.
template <typename Record>
std::optional<Record> FindRecord(Storage* storage, const std::string& db, const std::string& key) {
  absl::StatusOr<std::optional<std::string>> v = storage->Get(db, key);
  if (!v.ok() || !v->has_value()) return std::nullopt;
  Record rec;
  if (absl::Status st = DecodeRecord(**v, &rec); !st.ok()) {
    LogLine("record in " + db + " is unreadable; treating it as missing: " + st.ToString());
    return std::nullopt;
  }
  return rec;
}

// Starts one unary RPC on the callback API and calls `done(status, resp)`
// on a gRPC thread when it finishes. `start(ctx, req, resp, cb)` issues it
// (typically stub->async()->Method(...)). Nothing blocks.
template <typename Resp, typename Req, typename StartFn, typename DoneFn>
void AsyncUnary(Req req, uint32_t timeout_ms, StartFn start, DoneFn done) {
  struct CallState {
    grpc::ClientContext ctx;
    Req req;
    Resp resp;
  };
  auto* c = new CallState;
  c->req = std::move(req);
  c->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  start(&c->ctx, &c->req, &c->resp, [c, done = std::move(done)](grpc::Status s) {
    done(s, c->resp);
    delete c;
  });
}

// 3PC termination rounds (led by the coordinator or a participant): one
// Promise or Accept to a participant; `done` gets its answer or the call's
// error, on a gRPC thread.
void CallPromise(std::shared_ptr<v1::ParticipantTxn::Stub> stub, const std::string& txn_id,
                 uint64_t ballot, uint32_t timeout_ms,
                 std::function<void(const absl::StatusOr<v1::PromiseResponse>&)> done);
// A participant's QueryState (a peer in doubt, or a coordinator recovering a
// parallel commit); `done` gets its answer or the call's error.
void CallQueryState(std::shared_ptr<v1::ParticipantTxn::Stub> stub, const std::string& txn_id,
                    uint32_t timeout_ms,
                    std::function<void(const absl::StatusOr<v1::QueryStateResponse>&)> done);
void CallAccept(std::shared_ptr<v1::ParticipantTxn::Stub> stub, const std::string& txn_id,
                uint64_t ballot, v1::TxnState value, uint32_t timeout_ms,
                std::function<void(const absl::StatusOr<v1::AcceptResponse>&)> done);

}  // namespace atomq
