// atomq-bench's command line: the flags, their checks, and what they ask of
// the cluster and of each transaction.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "atomq/v1/coordinator.pb.h"
#include "bench/cluster.h"
#include "common/tls.h"

namespace atomq::bench {

struct BenchOptions {
  // The cluster.
  bool spawn = false;
  std::string coordinator;
  std::string participants = "3";  // a count with --spawn, else id=host:port,...
  int replicas = 1;                // with --spawn: replicas of every group
  std::string metrics;
  // Each transaction and the load.
  int ops_per_txn = 1;
  int payload_bytes = 128;
  int clients = 64;
  double duration = 10;
  double warmup = 1;
  std::string protocol = "2pc";
  // Files.
  std::string json_path;
  std::string bin_dir;
  std::string data_root = "/tmp";
  bool keep_data = false;
  // The clients' calls.
  std::string queue = "bench";
  int threads = 1;
  int channels = 1;
  std::string api = "unary";
  bool consume = false;
  bool reply_at_decision = false;
  int rpc_timeout_ms = 30000;
  uint32_t txn_timeout_ms = 0;
  double disk_probe_seconds = 1;
  bool threads_report = false;  // each process's busiest threads by switches
  int threads_report_max = 8;
  // How it dials servers it did not spawn (spawned ones speak plaintext).
  atomq::TlsFlags tls;
  std::string token_file;  // --token_file (else env ATOMQ_TOKEN)
  // Passed on to the spawned servers.
  std::vector<std::string> coordinator_args;
  std::vector<std::string> participant_args;
};

void AddBenchFlags(CLI::App& app, BenchOptions* o);

// Checks the cluster flags. Without --spawn, fills in the given servers of
// `c`. Returns the number of participants; the error message is ready to
// print.
absl::StatusOr<int> DescribeCluster(const BenchOptions& o, Cluster* c);

// The one transaction every client runs: --ops_per_txn enqueues of the same
// pseudo-random payload on every participant.
atomq::v1::ExecuteRequest BuildRequest(const BenchOptions& o, const Cluster& c);

}  // namespace atomq::bench
