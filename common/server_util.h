// What both servers share: gRPC server setup, client
// channels, status conversion, and flag parsing helpers.
#pragma once

#include <functional>
#include <list>
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
#include "common/loop_unary.h"
#include "common/rpc_loop.h"
#include "common/storage.h"
#include "grpcpp/grpcpp.h"

namespace atomq {

// Status messages are cut to this length (a client's default metadata limit
// is 8 KiB, and a longer message would hide the real error).
inline constexpr size_t kStatusMessageBytesMax = 1024;
grpc::Status ToGrpc(const absl::Status& s);
absl::Status FromGrpc(const grpc::Status& s);

// Channels by address, created on first use and kept, dialled with
// DialChannel (common/bearer.h): DialCredentials() and the dial token. At
// most `max` are kept (--channels_max): past it the least recently used one
// is dropped from the cache (calls under way on it finish; a later Get dials
// anew).
class ChannelCache {
 public:
  // `keepalive_ms` > 0: each channel pings its connection when idle that
  // often and drops it when a ping goes unanswered as long, so that a
  // connection a partition silenced (no reset, nothing read) is replaced
  // instead of holding calls until TCP gives up. The server must allow
  // such pings (AllowKeepalivePings).
  explicit ChannelCache(size_t max = 1024, int keepalive_ms = 0)
      : max_(max < 1 ? 1 : max), keepalive_ms_(keepalive_ms) {}
  std::shared_ptr<grpc::Channel> Get(const std::string& address);
  size_t size();
  uint64_t created();  // channels made since start (evicted ones included)

 private:
  struct Entry {
    std::shared_ptr<grpc::Channel> channel;
    std::list<std::string>::iterator recent;  // its place in recent_
  };
  const size_t max_;
  const int keepalive_ms_;
  absl::Mutex mu_;
  std::map<std::string, Entry> channels_ ABSL_GUARDED_BY(mu_);
  std::list<std::string> recent_ ABSL_GUARDED_BY(mu_);  // most recently used first
  uint64_t created_ ABSL_GUARDED_BY(mu_) = 0;
};

// Lets clients of a server built with `builder` ping every `interval_ms`
// when idle (ChannelCache's keepalive) without being sent away.
void AllowKeepalivePings(grpc::ServerBuilder& builder, int interval_ms);

// gRPC binds with SO_REUSEPORT by default: a second server on a port in use
// would share its connections instead of failing to start.
void RefuseSharedPort(grpc::ServerBuilder& builder);

// Builds and starts a server on `listen` (host:port) with `loop`'s builder,
// speaking TLS per `credentials` (common/tls.h), and serves its methods on
// the loop (common/rpc_loop.h; health is one of `services`, from
// common/loop_health.h). FAILED_PRECONDITION if the address cannot be bound.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartServer(
    const std::string& listen, const std::vector<grpc::Service*>& services,
    uint32_t message_bytes_max, std::shared_ptr<grpc::ServerCredentials> credentials,
    RpcLoop* loop);

// What listens on `listen` while the server cannot serve: while it
// recovers, and while it is a member of a group that is not the leader.
// Every call is answered with `refusal()` (by default UNAVAILABLE,
// "recovering"), and health reports NOT_SERVING for "" and
// `service_names`, except calls of `served` (callback services that must
// outlive it), which answer as always. Destroy it (it shuts down at once)
// before StartServer binds the same address. FAILED_PRECONDITION as
// StartServer.
class StandInServer {
 public:
  using Refusal = std::function<grpc::Status()>;
  static absl::StatusOr<std::unique_ptr<StandInServer>> Start(
      const std::string& listen, const std::vector<std::string>& service_names,
      std::shared_ptr<grpc::ServerCredentials> credentials, Refusal refusal = nullptr,
      const std::vector<grpc::Service*>& served = {});
  ~StandInServer();

 private:
  class Refuser;
  StandInServer(const std::vector<std::string>& service_names, Refusal refusal);
  std::unique_ptr<Refuser> refuser_;
  std::unique_ptr<grpc::Server> server_;
};

// "p1=127.0.0.1:7101,p2=..." -> map; INVALID_ARGUMENT with the bad entry,
// naming it a `what` ("participant", "coordinator", "peer").
absl::StatusOr<std::map<std::string, std::string>> ParsePeerList(
    const std::string& s, const std::string& what = "participant");

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

// The decoded record under `key` in `db`, or nullopt when it is missing:
// what the cores' DurableViews see. A record that cannot be read ends the
// process: answering as if it were missing could presume the abort of a
// committed transaction or lose a message, and a restart refuses the
// damaged data (section 6 of docs/design.md) instead.
template <typename Record>
std::optional<Record> FindRecord(Storage* storage, const std::string& db, const std::string& key) {
  absl::StatusOr<std::optional<std::string>> v = storage->Get(db, key);
  absl::Status st = v.status();
  Record rec;
  if (st.ok() && !v->has_value()) return std::nullopt;
  if (st.ok()) st = DecodeRecord(**v, &rec);
  if (!st.ok()) {
    LogLine("cannot read a record in " + db + " (" + st.ToString() +
            "); stopping rather than answer without it");
    std::abort();
  }
  return rec;
}

// 3PC termination rounds (led by the coordinator or a participant): one
// Promise or Accept to a participant; `done` gets its answer or the call's
// error, on a loop thread.
void CallPromise(RpcLoop* loop, std::shared_ptr<v1::ParticipantTxn::Stub> stub,
                 const std::string& txn_id, uint64_t ballot, uint32_t timeout_ms,
                 std::function<void(const absl::StatusOr<v1::PromiseResponse>&)> done);
// A participant's QueryState (a peer in doubt, or a coordinator recovering a
// parallel commit); `done` gets its answer or the call's error.
void CallQueryState(RpcLoop* loop, std::shared_ptr<v1::ParticipantTxn::Stub> stub,
                    const std::string& txn_id, uint32_t timeout_ms,
                    std::function<void(const absl::StatusOr<v1::QueryStateResponse>&)> done);
void CallAccept(RpcLoop* loop, std::shared_ptr<v1::ParticipantTxn::Stub> stub,
                const std::string& txn_id, uint64_t ballot, v1::TxnState value, uint32_t timeout_ms,
                std::function<void(const absl::StatusOr<v1::AcceptResponse>&)> done);

}  // namespace atomq
