// Small pieces every part of atomq-bench uses: the clock, the stop signal,
// gRPC channels and status texts, and the way the bench reports a failure.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "common/tls.h"
#include "grpcpp/grpcpp.h"

namespace atomq::bench {

using Clock = std::chrono::steady_clock;

// SIGINT/SIGTERM end the measured window early, but the bench still stops
// the servers it started. SIGPIPE is ignored.
void CatchStopSignals();
bool Interrupted();

double Seconds(Clock::duration d);

// "CODE: message", e.g. "UNAVAILABLE: Connection refused".
std::string StatusText(const grpc::Status& s);

// A channel of its own (not shared through gRPC's subchannel pool) that
// reconnects quickly while the servers come up. `index` tells channels to
// the same address apart.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& addr, int index);

void SetDeadline(grpc::ClientContext* ctx, int ms);

// Prints "atomq-bench: MSG" to stderr; returns the failure exit status, 1.
int Fail(const std::string& msg);

}  // namespace atomq::bench
