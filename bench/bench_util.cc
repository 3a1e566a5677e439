#include "bench/bench_util.h"

#include <signal.h>

#include <atomic>
#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/bearer.h"

namespace atomq::bench {
namespace {

std::atomic<bool> g_interrupted{false};

void OnSignal(int) { g_interrupted.store(true); }

}  // namespace

void CatchStopSignals() {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

bool Interrupted() { return g_interrupted.load(); }

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string StatusText(const grpc::Status& s) {
  // gRPC's codes are absl's; a code outside them (a server's stream result
  // may carry any number) is "?".
  std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code()));
  return absl::StrCat(name.empty() ? "?" : name, ": ", s.error_message());
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& addr, int index) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // Fast reconnects while the servers come up.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  // Its own connection: not shared through gRPC's global subchannel pool.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("atomq.bench.channel", index);
  return atomq::DialChannel(addr, args);
}

void SetDeadline(grpc::ClientContext* ctx, int ms) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

int Fail(const std::string& msg) {
  std::fprintf(stderr, "atomq-bench: %s\n", msg.c_str());
  return 1;
}

}  // namespace atomq::bench
