// The cluster under test: servers the bench spawned on loopback (and stops
// after), or running ones it was given.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace atomq::bench {

// A spawned server process.
struct Proc {
  std::string name;  // c1, p1, ...
  std::string binary;
  std::vector<std::string> args;
  std::string log_path;
  pid_t pid = -1;
  bool exited = false;  // reaped
  int wait_status = 0;
};

// True if the process has exited (and reaps it).
bool Reap(Proc* p);

// "exited with status N", "killed by signal N (name)[, core dumped]".
std::string DescribeWait(int status);

// The last `max_bytes` of a log, "..." in front when cut.
std::string LogTail(const std::string& path, size_t max_bytes = 2000);

// SIGTERM to each, up to `grace` for all to exit, then SIGKILL the rest.
// Returns lines describing anything abnormal.
std::vector<std::string> StopProcs(std::vector<Proc>* procs, std::chrono::seconds grace);

struct Server {
  std::string name;
  std::string grpc_address;     // of a group: the member that served when WaitReady asked
  std::string metrics_address;  // empty: not scraped
  std::string members;          // a group's client addresses "a|b|c"; empty: one server
};

struct Cluster {
  Server coordinator;
  std::vector<std::pair<std::string, Server>> participants;  // participant id -> server
  std::vector<Server> replicas;  // spawned groups: every replica, each scraped on its own
  std::vector<Proc> procs;       // spawned only
  std::string data_dir;          // the temp root when spawned
};

// The directory of the running executable ("." if unknown).
std::string SelfDir();

struct SpawnOptions {
  std::string bin_dir;
  std::string data_dir;  // created by the caller
  int participants = 3;
  int replicas = 1;  // more: the coordinator and each participant a group of this many
  std::vector<std::string> coordinator_args;
  std::vector<std::string> participant_args;
};

// Starts participants p1..pN and coordinator c1 on free loopback ports, with
// their data and logs under `o.data_dir` (replica j of a group as NAME-rJ). What started is in
// `c->procs` even on an error.
absl::Status Spawn(const SpawnOptions& o, Cluster* c);

// Polls a cheap RPC on every server (each member of a group, until one
// serves) until all answer, a spawned one dies, or `timeout` passes.
absl::Status WaitReady(Cluster* c, std::chrono::seconds timeout);

// Creates `queue` on every participant (one that exists already is fine).
absl::Status CreateQueues(const Cluster& c, const std::string& queue);

}  // namespace atomq::bench
