#include "common/server_util.h"

#include <signal.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/bearer.h"
#include "common/codec.h"
#include "common/crash.h"
#include "common/status.h"
#include "common/tls.h"
#include "common/validate.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"

namespace atomq {

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

std::shared_ptr<grpc::Channel> ChannelCache::Get(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto it = channels_.find(address);
  if (it != channels_.end()) return it->second;
  grpc::ChannelArguments args;
  // Reconnect fast after a peer restarts: recovery waits on it.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetMaxReceiveMessageSize(-1);
  auto ch = DialChannel(address, args);
  channels_[address] = ch;
  return ch;
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartServer(
    const std::string& listen, const std::vector<grpc::Service*>& services,
    uint32_t message_bytes_max, std::shared_ptr<grpc::ServerCredentials> credentials) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, std::move(credentials), &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(message_bytes_max));
  for (grpc::Service* s : services) builder.RegisterService(s);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot listen on ", listen, " (in use, or not a local address?)"));
  }
  return server;
}

absl::StatusOr<std::map<std::string, std::string>> ParsePeerList(const std::string& s) {
  std::map<std::string, std::string> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(part, absl::MaxSplits('=', 1));
    if (kv.second.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad participant entry \"", part, "\": want id=host:port"));
    }
    absl::Status st = ValidateNodeId(kv.first);
    if (!st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("participant \"", kv.first, "\": ", st.message()));
    }
    if (!out.emplace(kv.first, kv.second).second) {
      return absl::InvalidArgumentError(absl::StrCat("participant ", kv.first, " listed twice"));
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

void CallPromise(std::shared_ptr<v1::ParticipantTxn::Stub> stub, const std::string& txn_id,
                 uint64_t ballot, uint32_t timeout_ms,
                 std::function<void(const absl::StatusOr<v1::PromiseResponse>&)> done) {
  v1::PromiseRequest req;
  req.set_txn_id(txn_id);
  req.set_ballot(ballot);
  AsyncUnary<v1::PromiseResponse>(
      std::move(req), timeout_ms,
      [stub](auto* ctx, auto* r, auto* resp, auto cb) {
        stub->async()->Promise(ctx, r, resp, std::move(cb));
      },
      [done = std::move(done)](const grpc::Status& s, const v1::PromiseResponse& resp) {
        done(s.ok() ? absl::StatusOr<v1::PromiseResponse>(resp) : FromGrpc(s));
      });
}

void CallQueryState(std::shared_ptr<v1::ParticipantTxn::Stub> stub, const std::string& txn_id,
                    uint32_t timeout_ms,
                    std::function<void(const absl::StatusOr<v1::QueryStateResponse>&)> done) {
  v1::TxnRef ref;
  ref.set_txn_id(txn_id);
  AsyncUnary<v1::QueryStateResponse>(
      std::move(ref), timeout_ms,
      [stub](auto* ctx, auto* r, auto* resp, auto cb) {
        stub->async()->QueryState(ctx, r, resp, std::move(cb));
      },
      [done = std::move(done)](const grpc::Status& s, const v1::QueryStateResponse& resp) {
        done(s.ok() ? absl::StatusOr<v1::QueryStateResponse>(resp) : FromGrpc(s));
      });
}

void CallAccept(std::shared_ptr<v1::ParticipantTxn::Stub> stub, const std::string& txn_id,
                uint64_t ballot, v1::TxnState value, uint32_t timeout_ms,
                std::function<void(const absl::StatusOr<v1::AcceptResponse>&)> done) {
  v1::AcceptRequest req;
  req.set_txn_id(txn_id);
  req.set_ballot(ballot);
  req.set_value(value);
  AsyncUnary<v1::AcceptResponse>(
      std::move(req), timeout_ms,
      [stub](auto* ctx, auto* r, auto* resp, auto cb) {
        stub->async()->Accept(ctx, r, resp, std::move(cb));
      },
      [done = std::move(done)](const grpc::Status& s, const v1::AcceptResponse& resp) {
        done(s.ok() ? absl::StatusOr<v1::AcceptResponse>(resp) : FromGrpc(s));
      });
}

}  // namespace atomq
