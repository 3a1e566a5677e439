#include "common/server_util.h"

#include <signal.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/bearer.h"
#include "common/codec.h"
#include "common/crash.h"
#include "common/loop_health.h"
#include "common/loop_unary.h"
#include "common/status.h"
#include "common/tls.h"
#include "common/validate.h"
#include "grpc/health/v1/health.pb.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/impl/codegen/proto_utils.h"

namespace atomq {

grpc::Status ToGrpc(const absl::Status& s) {
  std::string message(s.message());
  // Last line of defence against an echo that swells the reply past a
  // client's metadata limit; messages echo client strings through Clip().
  if (message.size() > kStatusMessageBytesMax) {
    message =
        absl::StrCat(message.substr(0, kStatusMessageBytesMax), "...(", message.size(), " bytes)");
  }
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::move(message));
}

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

std::shared_ptr<grpc::Channel> ChannelCache::Get(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto it = channels_.find(address);
  if (it != channels_.end()) {
    recent_.splice(recent_.begin(), recent_, it->second.recent);
    return it->second.channel;
  }
  grpc::ChannelArguments args;
  // Reconnect fast after a peer restarts: recovery waits on it.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetMaxReceiveMessageSize(-1);
  if (keepalive_ms_ > 0) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, keepalive_ms_);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, keepalive_ms_);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
  auto ch = DialChannel(address, args);
  ++created_;
  if (channels_.size() >= max_) {
    channels_.erase(recent_.back());
    recent_.pop_back();
  }
  recent_.push_front(address);
  channels_[address] = Entry{ch, recent_.begin()};
  return ch;
}

size_t ChannelCache::size() {
  absl::MutexLock lock(&mu_);
  return channels_.size();
}

uint64_t ChannelCache::created() {
  absl::MutexLock lock(&mu_);
  return created_;
}

void RefuseSharedPort(grpc::ServerBuilder& builder) {
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
}

void AllowKeepalivePings(grpc::ServerBuilder& builder, int interval_ms) {
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, interval_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartServer(
    const std::string& listen, const std::vector<grpc::Service*>& services,
    uint32_t message_bytes_max, std::shared_ptr<grpc::ServerCredentials> credentials,
    RpcLoop* loop) {
  grpc::ServerBuilder& builder = loop->builder();
  RefuseSharedPort(builder);
  int port = 0;
  builder.AddListeningPort(listen, std::move(credentials), &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(message_bytes_max));
  for (grpc::Service* s : services) builder.RegisterService(s);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot listen on ", listen, " (in use, or not a local address?)"));
  }
  loop->Serve();
  return server;
}

// Answers health checks NOT_SERVING (NOT_FOUND for a name it does not know)
// and every other call with its refusal.
class StandInServer::Refuser final : public grpc::CallbackGenericService {
 public:
  Refuser(const std::vector<std::string>& service_names, StandInServer::Refusal refusal)
      : names_(service_names.begin(), service_names.end()), refusal_(std::move(refusal)) {}

 private:
  class Reactor final : public grpc::ServerGenericBidiReactor {
   public:
    Reactor(const Refuser* refuser, bool health) : refuser_(refuser) {
      if (!health) {
        Finish(refuser->refusal_
                   ? refuser->refusal_()
                   : grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                  "the server is recovering its state; retry shortly"));
        return;
      }
      StartRead(&request_);
    }
    void OnReadDone(bool ok) override {
      grpc::health::v1::HealthCheckRequest req;
      if (!ok || !grpc::SerializationTraits<grpc::health::v1::HealthCheckRequest>::Deserialize(
                      &request_, &req)
                      .ok()) {
        return Finish(MalformedRequest("/grpc.health.v1.Health/Check"));
      }
      grpc::health::v1::HealthCheckResponse resp;
      grpc::Status st = AnswerHealth(refuser_->names_, /*serving=*/false, req, &resp);
      if (!st.ok()) return Finish(st);
      bool own = false;
      grpc::SerializationTraits<grpc::health::v1::HealthCheckResponse>::Serialize(resp, &response_,
                                                                                  &own);
      StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
    }
    void OnDone() override { delete this; }

   private:
    const Refuser* const refuser_;
    grpc::ByteBuffer request_;
    grpc::ByteBuffer response_;
  };

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    return new Reactor(this, ctx->method() == "/grpc.health.v1.Health/Check");
  }

  const std::set<std::string> names_;
  const StandInServer::Refusal refusal_;
};

StandInServer::StandInServer(const std::vector<std::string>& service_names, Refusal refusal)
    : refuser_(std::make_unique<Refuser>(service_names, std::move(refusal))) {}

StandInServer::~StandInServer() {
  if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
}

absl::StatusOr<std::unique_ptr<StandInServer>> StandInServer::Start(
    const std::string& listen, const std::vector<std::string>& service_names,
    std::shared_ptr<grpc::ServerCredentials> credentials, Refusal refusal,
    const std::vector<grpc::Service*>& served) {
  std::unique_ptr<StandInServer> r(new StandInServer(service_names, std::move(refusal)));
  grpc::ServerBuilder builder;
  RefuseSharedPort(builder);
  int port = 0;
  builder.AddListeningPort(listen, std::move(credentials), &port);
  for (grpc::Service* s : served) builder.RegisterService(s);
  builder.RegisterCallbackGenericService(r->refuser_.get());
  r->server_ = builder.BuildAndStart();
  if (r->server_ == nullptr || port == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot listen on ", listen, " (in use, or not a local address?)"));
  }
  return r;
}

absl::StatusOr<std::map<std::string, std::string>> ParsePeerList(const std::string& s,
                                                                 const std::string& what) {
  std::map<std::string, std::string> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(part, absl::MaxSplits('=', 1));
    if (kv.second.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad ", what, " entry \"", Clip(part), "\": want id=host:port"));
    }
    absl::Status st = ValidateNodeId(kv.first);
    if (!st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " \"", Clip(kv.first), "\": ", st.message()));
    }
    if (!out.emplace(kv.first, kv.second).second) {
      return absl::InvalidArgumentError(absl::StrCat(what, " ", kv.first, " listed twice"));
    }
  }
  return out;
}

std::vector<std::string> ScanTimeIndex(Storage* storage, const std::string& db, int64_t cutoff_ms,
                                       size_t max, const std::string& what) {
  std::vector<std::string> keys;
  absl::Status st = storage->Scan(db, "", [&](std::string_view key, std::string_view) {
    if (key.size() > 8 && static_cast<int64_t>(DecodeU64(key)) >= cutoff_ms) return false;
    keys.emplace_back(key);
    return keys.size() < max;
  });
  if (!st.ok()) LogLine(absl::StrCat(what, " failed: ", st.ToString()));
  return keys;
}

void InitServerProcess() {
  InitSignals();
  InitCrashPoints();
  // Abseil's deadlock detector keeps a lock graph on every Mutex operation;
  // the lock order here is fixed and small, so that work buys nothing.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

void InitSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

int WaitForSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

namespace {

// One call on `loop`; `done` gets the answer or the call's error. `stub`
// stays until the call ends.
template <typename Resp, typename Req, typename PrepareFn>
void CallForStatus(RpcLoop* loop, std::shared_ptr<v1::ParticipantTxn::Stub> stub, Req req,
                   uint32_t timeout_ms, PrepareFn prepare,
                   std::function<void(const absl::StatusOr<Resp>&)> done) {
  v1::ParticipantTxn::Stub* s = stub.get();
  CallOnLoop<Resp>(
      loop, std::move(req), timeout_ms, /*wait_for_ready=*/false,
      [s, prepare](grpc::ClientContext* ctx, const Req& r, grpc::CompletionQueue* cq) {
        return (s->*prepare)(ctx, r, cq);
      },
      [stub, done = std::move(done)](const grpc::Status& st, const Resp& resp) {
        done(st.ok() ? absl::StatusOr<Resp>(resp) : FromGrpc(st));
      });
}

}  // namespace

void CallPromise(RpcLoop* loop, std::shared_ptr<v1::ParticipantTxn::Stub> stub,
                 const std::string& txn_id, uint64_t ballot, uint32_t timeout_ms,
                 std::function<void(const absl::StatusOr<v1::PromiseResponse>&)> done) {
  v1::PromiseRequest req;
  req.set_txn_id(txn_id);
  req.set_ballot(ballot);
  CallForStatus<v1::PromiseResponse>(loop, std::move(stub), std::move(req), timeout_ms,
                                     &v1::ParticipantTxn::Stub::PrepareAsyncPromise,
                                     std::move(done));
}

void CallQueryState(RpcLoop* loop, std::shared_ptr<v1::ParticipantTxn::Stub> stub,
                    const std::string& txn_id, uint32_t timeout_ms,
                    std::function<void(const absl::StatusOr<v1::QueryStateResponse>&)> done) {
  v1::TxnRef ref;
  ref.set_txn_id(txn_id);
  CallForStatus<v1::QueryStateResponse>(loop, std::move(stub), std::move(ref), timeout_ms,
                                        &v1::ParticipantTxn::Stub::PrepareAsyncQueryState,
                                        std::move(done));
}

void CallAccept(RpcLoop* loop, std::shared_ptr<v1::ParticipantTxn::Stub> stub,
                const std::string& txn_id, uint64_t ballot, v1::TxnState value, uint32_t timeout_ms,
                std::function<void(const absl::StatusOr<v1::AcceptResponse>&)> done) {
  v1::AcceptRequest req;
  req.set_txn_id(txn_id);
  req.set_ballot(ballot);
  req.set_value(value);
  CallForStatus<v1::AcceptResponse>(loop, std::move(stub), std::move(req), timeout_ms,
                                    &v1::ParticipantTxn::Stub::PrepareAsyncAccept, std::move(done));
}

}  // namespace atomq
