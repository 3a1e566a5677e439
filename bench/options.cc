#include "bench/options.h"

#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace atomq::bench {
namespace {

// A running server at `address`, or a group's members "a|b|c" (WaitReady
// finds the one that serves).
Server ServerAt(const std::string& name, const std::string& address) {
  Server s{name, address, "", ""};
  if (address.find('|') != std::string::npos) {
    s.members = address;
    s.grpc_address = address.substr(0, address.find('|'));
  }
  return s;
}

// An option with a check whose default shows in --help.
template <typename T>
void AddChecked(CLI::App& app, const std::string& name, T& value, const std::string& help,
                const CLI::Validator& check) {
  app.add_option(name, value, help)->check(check)->capture_default_str();
}

void AddClusterFlags(CLI::App& app, BenchOptions* o) {
  app.add_flag("--spawn", o->spawn,
               "start a coordinator and --participants participants on loopback, stop them after");
  app.add_option("--coordinator", o->coordinator,
                 "host:port of a running coordinator (a group: its members, a|b|c)");
  app.add_option("--participants", o->participants,
                 "with --spawn: how many participants; else id=host:port,... of the running ones")
      ->capture_default_str();
  AddChecked(app, "--replicas", o->replicas,
             "with --spawn: run the coordinator and each participant as a group of this many "
             "replicas (1: one process each)",
             CLI::IsMember({1, 3, 5}));
  app.add_option("--metrics", o->metrics,
                 "host:port,... of the running servers' /metrics endpoints (without --spawn)");
}

void AddWorkloadFlags(CLI::App& app, BenchOptions* o) {
  AddChecked(app, "--ops_per_txn", o->ops_per_txn, "enqueues per participant per transaction",
             CLI::Range(1, 100000));
  AddChecked(app, "--payload_bytes", o->payload_bytes, "bytes of each enqueued payload",
             CLI::Range(0, 64 << 20));
  AddChecked(app, "--clients", o->clients, "closed-loop clients, all in flight at once",
             CLI::Range(1, 1000000));
  AddChecked(app, "--duration", o->duration, "measured seconds", CLI::Range(0.1, 86400.0));
  AddChecked(app, "--warmup", o->warmup, "seconds of load before measuring",
             CLI::Range(0.0, 3600.0));
  AddChecked(app, "--protocol", o->protocol, "2pc or 3pc", CLI::IsMember({"2pc", "3pc"}));
}

void AddFileFlags(CLI::App& app, BenchOptions* o) {
  app.add_option("--json", o->json_path, "write every figure to this file as a JSON object");
  app.add_option("--bin_dir", o->bin_dir,
                 "where atomq-coordinator and atomq-participant are (default: atomq-bench's dir)");
  app.add_option("--data_root", o->data_root,
                 "parent of the temporary data dirs (--spawn) and of the disk fsync probe")
      ->capture_default_str();
  app.add_flag("--keep_data", o->keep_data, "keep the spawned servers' data dirs and logs");
}

void AddClientFlags(CLI::App& app, BenchOptions* o) {
  app.add_option("--queue", o->queue, "queue name on every participant")->capture_default_str();
  AddChecked(app, "--threads", o->threads, "completion-queue threads of the bench",
             CLI::Range(1, 64));
  AddChecked(app, "--channels", o->channels, "gRPC connections to the coordinator",
             CLI::Range(1, 256));
  AddChecked(app, "--api", o->api,
             "unary: one Execute call per transaction; stream: each channel's clients "
             "share one ExecuteStream call",
             CLI::IsMember({"unary", "stream"}));
  app.add_flag("--consume", o->consume,
               "also drain --queue on every participant (one thread each: long-poll Receive "
               "with auto_ack), so queues stay short as in a steady state");
  app.add_flag("--reply_at_decision", o->reply_at_decision,
               "ExecuteRequest.reply_at_decision: answered once the decision is on disk, "
               "before the participants applied it");
  AddChecked(app, "--rpc_timeout_ms", o->rpc_timeout_ms, "deadline of one Execute call",
             CLI::Range(1, 3600000));
  app.add_option("--txn_timeout_ms", o->txn_timeout_ms,
                 "ExecuteRequest.timeout_ms (0: the coordinator's default)")
      ->capture_default_str();
}

void AddProbeAndServerFlags(CLI::App& app, BenchOptions* o) {
  AddChecked(app, "--disk_probe_seconds", o->disk_probe_seconds,
             "how long to measure the disk's serial fsync rate (0: skip)", CLI::Range(0.0, 60.0));
  app.add_flag("--threads_report", o->threads_report,
               "also list the threads of each spawned server and of the bench with the most "
               "context switches in the window (in the text report and --json)");
  AddChecked(app, "--threads_report_max", o->threads_report_max,
             "threads listed per process by --threads_report", CLI::Range(1, 100000));
  app.add_option("--coordinator_arg", o->coordinator_args,
                 "extra flag for the spawned coordinator (repeatable)");
  app.add_option("--participant_arg", o->participant_args,
                 "extra flag for each spawned participant (repeatable)");
}

}  // namespace

void AddBenchFlags(CLI::App& app, BenchOptions* o) {
  atomq::AddTlsFlags(app, &o->tls, /*server=*/false);
  app.add_option("--token_file", o->token_file,
                 "file holding the bearer token sent with every call (default: env ATOMQ_TOKEN)");
  AddClusterFlags(app, o);
  AddWorkloadFlags(app, o);
  AddFileFlags(app, o);
  AddClientFlags(app, o);
  AddProbeAndServerFlags(app, o);
}

absl::StatusOr<int> DescribeCluster(const BenchOptions& o, Cluster* c) {
  if (o.spawn == !o.coordinator.empty()) {
    return absl::InvalidArgumentError(
        "give either --spawn or --coordinator=ADDR --participants=p1=ADDR,...");
  }
  if (o.spawn) {
    int n = 0;
    if (!absl::SimpleAtoi(o.participants, &n) || n < 1 || n > 1000) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--participants=", o.participants, ": with --spawn, a count of participants (1..1000)"));
    }
    if (!o.metrics.empty()) {
      return absl::InvalidArgumentError("--metrics is for a running cluster, not with --spawn");
    }
    return n;
  }
  if (o.replicas != 1) {
    return absl::InvalidArgumentError(
        "--replicas is for --spawn; give a running group as its members, a|b|c");
  }
  c->coordinator = ServerAt("coordinator", o.coordinator);
  for (absl::string_view item : absl::StrSplit(o.participants, ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    if (kv.first.empty() || kv.second.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--participants: \"", item, "\": want id=host:port"));
    }
    c->participants.emplace_back(kv.first, ServerAt(kv.first, kv.second));
  }
  if (c->participants.empty()) {
    return absl::InvalidArgumentError("--participants: want id=host:port,...");
  }
  return int(c->participants.size());
}

atomq::v1::ExecuteRequest BuildRequest(const BenchOptions& o, const Cluster& c) {
  atomq::v1::ExecuteRequest request;
  request.set_protocol(o.protocol == "3pc" ? atomq::v1::THREE_PC : atomq::v1::TWO_PC);
  request.set_timeout_ms(o.txn_timeout_ms);
  request.set_reply_at_decision(o.reply_at_decision);
  std::string payload(size_t(o.payload_bytes), '\0');
  std::mt19937_64 rng(42);
  for (char& ch : payload) ch = char(rng());
  for (auto& [id, s] : c.participants) {
    for (int j = 0; j < o.ops_per_txn; ++j) {
      atomq::v1::Op* op = request.add_ops();
      op->set_participant(id);
      op->mutable_enqueue()->set_queue(o.queue);
      op->mutable_enqueue()->set_payload(payload);
    }
  }
  return request;
}

}  // namespace atomq::bench
