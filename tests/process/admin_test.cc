// Operators' rough edges on real processes: atomqctl's global flags after
// the subcommand, txn list pages (coordinator and participant) without
// payloads unless asked, queue receive --peek, queue purge, and gRPC health
// while a server recovers, serves and drains.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/loop_health.h"
#include "common/server_util.h"
#include "common/tls.h"
#include "google/protobuf/wrappers.pb.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

void Deadline(grpc::ClientContext* ctx, int ms) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

size_t Count(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos;
       at = haystack.find(needle, at + 1)) {
    n++;
  }
  return n;
}

// grpc.health.v1.Health/Check with a hand-made message: HealthCheckRequest
// is wire-compatible with StringValue (field 1: service) and the response
// with UInt32Value (field 1: status; 1 SERVING, 2 NOT_SERVING).
constexpr uint32_t kServing = 1;
constexpr uint32_t kNotServing = 2;

// The status for `service`, or the call's error code as a negative number.
int64_t Health(const std::string& address, const std::string& service) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::TemplatedGenericStub<google::protobuf::StringValue, google::protobuf::UInt32Value> stub(
      channel);
  google::protobuf::StringValue req;
  req.set_value(service);
  google::protobuf::UInt32Value resp;
  grpc::ClientContext ctx;
  Deadline(&ctx, 1000);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp,
                 [&done](grpc::Status s) { done.set_value(s); });
  grpc::Status s = done.get_future().get();
  return s.ok() ? int64_t{resp.value()} : -int64_t{s.error_code()};
}

const char* const kParticipantServices[] = {"", "atomq.v1.ParticipantTxn", "atomq.v1.Queue"};

v1::SendResponse Send(Cluster& c, const std::string& queue, const std::string& payload) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 5000);
  v1::SendRequest req;
  req.set_queue(queue);
  req.set_payload(payload);
  v1::SendResponse resp;
  grpc::Status s = c.queue(1)->Send(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return resp;
}

v1::QueueInfo Info(Cluster& c, const std::string& queue) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 5000);
  v1::ListQueuesResponse resp;
  EXPECT_TRUE(c.queue(1)->ListQueues(&ctx, v1::ListQueuesRequest(), &resp).ok());
  for (const v1::QueueInfo& q : resp.queues()) {
    if (q.name() == queue) return q;
  }
  ADD_FAILURE() << "no queue " << queue;
  return {};
}

ClusterOptions OneParticipant(std::vector<std::string> participant_args = {}) {
  ClusterOptions o;
  o.participants = 1;
  o.participant_args = std::move(participant_args);
  return o;
}

std::string Ctl(Cluster& c) {
  return absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl --participant=", c.participant_address(1), " ");
}

TEST(AdminTest, GlobalFlagsAreTakenAfterTheSubcommandToo) {
  Cluster c(OneParticipant());
  c.StartParticipant(1);
  c.CreateQueue(1, "jobs");
  const std::string bin = absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl");
  const std::string at = "--participant=" + c.participant_address(1);
  for (const std::string& cmd : {absl::StrCat(bin, " ", at, " --json queue list"),
                                 absl::StrCat(bin, " ", at, " queue list --json"),
                                 absl::StrCat(bin, " queue list ", at, " --json"),
                                 absl::StrCat(bin, " queue --json list ", at)}) {
    std::string out = RunCommand(cmd + " 2>&1");
    EXPECT_NE(out.find("\"name\": \"jobs\""), std::string::npos) << cmd << "\n" << out;
  }
  std::string out = RunCommand(absl::StrCat(bin, " queue info jobs ", at, " --json 2>&1"));
  EXPECT_NE(out.find("\"name\": \"jobs\""), std::string::npos) << out;
  out = RunCommand(absl::StrCat(bin, " txn list ", at, " --json 2>&1"));
  EXPECT_EQ(out.find("error"), std::string::npos) << out;
  EXPECT_NE(out.find("{"), std::string::npos) << out;
  // The deadline flag too, and a flag nobody has is still refused.
  out = RunCommand(absl::StrCat(bin, " queue list ", at, " --rpc_timeout_ms=2000 2>&1"));
  EXPECT_NE(out.find("jobs"), std::string::npos) << out;
  out = RunCommand(absl::StrCat(bin, " queue list ", at, " --no_such_flag; echo rc=$?"));
  EXPECT_NE(out.find("rc=2"), std::string::npos) << out;
}

// As psql takes PGHOST or rabbitmqadmin its .conf: where to connect comes
// from a flag, the environment or a config file; --participants answers for
// every node at once; --version and a completion script.
TEST(AdminTest, AddressesComeFromFlagsEnvironmentOrAConfigFileAndListsCoverEveryNode) {
  Cluster c(ClusterOptions{.participants = 2});
  c.StartParticipant(1);
  c.StartParticipant(2);
  c.CreateQueue(1, "jobs");
  c.CreateQueue(2, "audit");
  const std::string bin = absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl");
  const std::string p1 = c.participant_address(1), p2 = c.participant_address(2);
  std::string out =
      RunCommand(absl::StrCat("ATOMQ_PARTICIPANT=", p1, " ", bin, " queue list 2>&1"));
  EXPECT_NE(out.find("jobs"), std::string::npos) << out;
  const std::string conf = c.dir() + "/atomqctl.conf";
  std::ofstream(conf) << "participant = \"" << p2 << "\"\n";
  out = RunCommand(absl::StrCat("ATOMQ_CONFIG=", conf, " ", bin, " queue list 2>&1"));
  EXPECT_NE(out.find("audit"), std::string::npos) << out;
  out =
      RunCommand(absl::StrCat(bin, " --config=", conf, " --participant=", p1, " queue list 2>&1"));
  EXPECT_NE(out.find("jobs"), std::string::npos) << "a flag wins over the file: " << out;
  // One table, the node first on each row; a node down is a row of its own
  // and the exit says so.
  out = RunCommand(absl::StrCat(bin, " --participants=p1=", p1, ",p2=", p2, " queue list 2>&1"));
  EXPECT_EQ(out.find("NODE"), 0u) << out;
  EXPECT_NE(out.find("\np1         jobs "), std::string::npos) << out;
  EXPECT_NE(out.find("\np2         audit "), std::string::npos) << out;
  const std::string down = absl::StrCat("127.0.0.1:", FreePort());
  out = RunCommand(absl::StrCat(bin, " --participants=p1=", p1, ",p9=", down,
                                " --rpc_timeout_ms=500 queue list 2>&1; echo rc=$?"));
  EXPECT_NE(out.find("\np9         (UNAVAILABLE"), std::string::npos) << out;
  EXPECT_NE(out.find("\np1         jobs "), std::string::npos) << out;
  EXPECT_NE(out.find("rc=1"), std::string::npos) << out;
  out = RunCommand(
      absl::StrCat(bin, " --participants=p1=", p1, ",p2=", p2, " --json queue list 2>&1"));
  EXPECT_NE(out.find("\"participant\": \"p2\""), std::string::npos) << out;
  out = RunCommand(
      absl::StrCat(bin, " --participants=p1=", p1, ",p2=", p2, " txn list 2>&1; echo rc=$?"));
  EXPECT_EQ(out.find("NODE"), 0u) << out;
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out;
  out = RunCommand(absl::StrCat(bin, " --participants=p1 queue list 2>&1; echo rc=$?"));
  EXPECT_NE(out.find("bad participant entry \"p1\": want id=host:port"), std::string::npos) << out;
  EXPECT_NE(out.find("rc=2"), std::string::npos) << out;

  EXPECT_NE(RunCommand(bin + " --version").find("0."), std::string::npos);
  out = RunCommand("bash -c 'source <(" + bin +
                   " completion bash); COMP_WORDS=(atomqctl txn li); COMP_CWORD=2; _atomqctl; "
                   "echo \"[${COMPREPLY[*]}]\"; COMP_WORDS=(atomqctl queue list --js); "
                   "COMP_CWORD=3; _atomqctl; echo \"[${COMPREPLY[*]}]\"'");
  EXPECT_NE(out.find("[list]"), std::string::npos) << out;
  EXPECT_NE(out.find("[--json]"), std::string::npos) << out;
}

// Latency, fsync and disk space, as a dashboard reads them.
TEST(AdminTest, MetricsShowExecuteLatencyFsyncsAndDiskSpace) {
  ClusterOptions o;
  o.participants = 1;
  o.participant_metrics = true;
  const int coordinator_metrics = FreePort();
  o.coordinator_args = {absl::StrCat("--metrics_listen=127.0.0.1:", coordinator_metrics)};
  Cluster c(o);
  c.StartAll();
  c.CreateQueue(1, "jobs");
  const std::string ctl =
      absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl --coordinator=", c.coordinator_address(), " ");
  for (int n = 0; n < 3; ++n) {
    const std::string out = RunCommand(ctl + "txn exec --enqueue=p1:jobs=x 2>&1");
    EXPECT_NE(out.find("COMMITTED"), std::string::npos) << out;
  }
  EXPECT_EQ(MetricAt(coordinator_metrics, "atomq_execute_seconds_count"), 3);
  EXPECT_EQ(MetricAt(coordinator_metrics, "atomq_execute_seconds_bucket{le=\"+Inf\"}"), 3);
  EXPECT_GT(MetricAt(coordinator_metrics, "atomq_execute_seconds_sum"), 0);
  // Each transaction's Prepare went in a Batch call of its own: its round trip.
  EXPECT_GE(MetricAt(coordinator_metrics, "atomq_participant_prepare_seconds_count"), 3);
  EXPECT_GT(MetricAt(coordinator_metrics, "atomq_participant_prepare_seconds_sum"), 0);
  EXPECT_GE(MetricAt(coordinator_metrics, "atomq_participant_batch_messages_count"), 3);
  EXPECT_GE(MetricAt(coordinator_metrics, "atomq_participant_batch_messages_bucket{le=\"+Inf\"}"),
            MetricAt(coordinator_metrics, "atomq_participant_batch_calls_total"));
  EXPECT_EQ(MetricAt(coordinator_metrics, "atomq_execute_streams_open"), 0);
  EXPECT_EQ(MetricAt(coordinator_metrics, "atomq_execute_stream_read_pauses_total"), 0);
  EXPECT_GT(MetricAt(coordinator_metrics, "atomq_storage_fsync_seconds_count"), 0);
  EXPECT_GT(MetricAt(coordinator_metrics, "atomq_data_dir_available_bytes"), 0);
  EXPECT_GT(c.ParticipantMetric(1, "atomq_storage_fsync_seconds_count"), 0);
  EXPECT_GT(c.ParticipantMetric(1, "atomq_storage_fsyncs_total"), 0);
  EXPECT_GT(c.ParticipantMetric(1, "atomq_data_dir_size_bytes"),
            c.ParticipantMetric(1, "atomq_data_dir_available_bytes"));
  EXPECT_EQ(c.ParticipantMetric(1, "atomq_queue_ready_messages{queue=\"jobs\"}"), 3);
  EXPECT_EQ(c.ParticipantMetric(1, "atomq_queue_version{queue=\"jobs\"}"), 4);
  EXPECT_EQ(c.ParticipantMetric(1, "atomq_queue_enqueued_messages_total{queue=\"jobs\"}"), 3);

  // Delivered, given back, delivered again and acked; then one dead-lettered.
  const std::string q =
      absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl --participant=", c.participant_address(1), " queue ");
  auto lease = [](const std::string& out) {
    const size_t at = out.find(", lease ");
    return at == std::string::npos ? std::string() : out.substr(at + 8, out.find(')', at) - at - 8);
  };
  std::string got = RunCommand(q + "receive jobs --no-ack 2>&1");
  RunCommand(q + "nack jobs 1 " + lease(got) + " 2>&1");
  RunCommand(q + "receive jobs 2>&1");
  EXPECT_EQ(c.ParticipantMetric(1, "atomq_queue_delivered_messages_total{queue=\"jobs\"}"), 2);
  EXPECT_EQ(c.ParticipantMetric(1, "atomq_queue_redelivered_messages_total{queue=\"jobs\"}"), 1);
  EXPECT_EQ(c.ParticipantMetric(1, "atomq_queue_acked_messages_total{queue=\"jobs\"}"), 1);
  c.CreateQueue(1, "dlq");
  RunCommand(q + "create work --max_deliveries=1 --dead_letter_queue=dlq 2>&1");
  RunCommand(q + "send work w 2>&1");
  got = RunCommand(q + "receive work --no-ack 2>&1");
  RunCommand(q + "nack work 1 " + lease(got) + " 2>&1");
  EXPECT_EQ(c.ParticipantMetric(1, "atomq_queue_dead_lettered_messages_total{queue=\"work\"}"), 1)
      << got;
  EXPECT_EQ(c.ParticipantMetric(1, "atomq_queue_enqueued_messages_total{queue=\"dlq\"}"), 1);
}

TEST(AdminTest, PeekLooksWithoutDeliveringAndPurgeRemovesOnlyReadyMessagesDurably) {
  // A window of 2: most of the backlog stays on disk.
  Cluster c(OneParticipant({"--queue_memory_window=2"}));
  c.StartParticipant(1);
  c.CreateQueue(1, "jobs");
  for (int i = 1; i <= 6; ++i) Send(c, "jobs", absl::StrCat("m", i));
  const std::string ctl = Ctl(c);
  std::string out = RunCommand(ctl + "queue receive jobs --peek --max=10");
  EXPECT_EQ(Count(out, "peeked: still ready"), 6u) << out;
  EXPECT_NE(out.find("#6 (delivery 0, peeked: still ready): m6"), std::string::npos) << out;
  out = RunCommand(ctl + "queue receive jobs --peek --max=10 --json");
  EXPECT_EQ(out.find("lease_token"), std::string::npos) << out;
  EXPECT_EQ(Info(c, "jobs").ready(), 6u);
  EXPECT_EQ(Info(c, "jobs").leased(), 0u);
  out = RunCommand(ctl + "queue receive jobs --peek --wait=1s 2>&1; echo rc=$?");
  EXPECT_NE(out.find("rc=2"), std::string::npos) << out;
  {
    // The API refuses a peek that would deliver.
    grpc::ClientContext ctx;
    Deadline(&ctx, 5000);
    v1::ReceiveRequest req;
    req.set_queue("jobs");
    req.set_peek(true);
    req.set_auto_ack(true);
    v1::ReceiveResponse resp;
    EXPECT_EQ(c.queue(1)->Receive(&ctx, req, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  // A real receive after the peek: first delivery of message 1.
  out = RunCommand(ctl + "queue receive jobs --no-ack");
  EXPECT_NE(out.find("jobs #1 (delivery 1, lease "), std::string::npos) << out;

  out = RunCommand(ctl + "queue purge jobs");
  EXPECT_NE(out.find("queue jobs purged: 5 ready messages removed"), std::string::npos) << out;
  EXPECT_EQ(Info(c, "jobs").ready(), 0u);
  EXPECT_EQ(Info(c, "jobs").leased(), 1u);
  out = RunCommand(ctl + "--json queue purge jobs");
  EXPECT_EQ(out.find("purged"), std::string::npos) << out;  // 0: proto3 leaves it out
  EXPECT_NE(out.find("{"), std::string::npos) << out;
  out = RunCommand(ctl + "queue purge nope 2>&1; echo rc=$?");
  EXPECT_NE(out.find("NOT_FOUND"), std::string::npos) << out;
  EXPECT_NE(out.find("rc=2"), std::string::npos) << out;
  // Durable: after a crash only the leased message is left (ready again).
  c.KillParticipant(1);
  c.StartParticipant(1);
  EXPECT_EQ(Info(c, "jobs").ready(), 1u);
  out = RunCommand(ctl + "queue receive jobs --max=10");
  EXPECT_NE(out.find("jobs #1 "), std::string::npos) << out;
  EXPECT_EQ(Count(out, "acked"), 1u) << out;
}

// A participant's prepared transaction, made directly (as a coordinator would).
void PrepareAt(Cluster& c, const std::string& id, const std::string& payload, int ops) {
  v1::PrepareRequest req;
  req.set_txn_id(id);
  req.set_protocol(v1::TWO_PC);
  req.set_coordinator_id("c1");
  req.set_coordinator_address(absl::StrCat("127.0.0.1:", FreePort()));  // nobody answers
  req.set_participant(c.participant_id(1));
  v1::PeerAddress* self = req.add_participants();
  self->set_participant(c.participant_id(1));
  self->set_address(c.participant_address(1));
  for (int i = 0; i < ops; ++i) {
    v1::Op* op = req.add_ops();
    op->set_participant(c.participant_id(1));
    op->mutable_enqueue()->set_queue("jobs");
    op->mutable_enqueue()->set_payload(payload);
  }
  grpc::ClientContext ctx;
  Deadline(&ctx, 10000);
  v1::PrepareResponse resp;
  grpc::Status s = c.txn(1)->Prepare(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.vote(), v1::YES) << resp.reason();
}

TEST(AdminTest, ParticipantTxnListPagesAndLeavesPayloadsOutUnlessAsked) {
  Cluster c(OneParticipant(
      {"--list_limit_max=2", "--payload_bytes_max=2000000", "--message_bytes_max=67108864"}));
  c.StartParticipant(1);
  c.CreateQueue(1, "jobs");
  const std::string mib(1 << 20, 'x');
  for (const char* id : {"t3", "t1", "t2"}) PrepareAt(c, id, mib, 4);
  {
    // 12 MiB of payloads; a page without them is small.
    grpc::ClientContext ctx;
    Deadline(&ctx, 5000);
    v1::ListParticipantTxnsResponse page;
    ASSERT_TRUE(c.txn(1)->ListTransactions(&ctx, v1::ListParticipantTxnsRequest(), &page).ok());
    EXPECT_LT(page.ByteSizeLong(), 4096u);
    ASSERT_EQ(page.transactions_size(), 2);  // --list_limit_max
    EXPECT_EQ(page.transactions(0).op_bytes(0), uint64_t{1} << 20);
    EXPECT_EQ(page.next_page_token(), "t2");
  }
  const std::string ctl = Ctl(c);
  std::string out = RunCommand(ctl + "txn list");
  EXPECT_NE(out.find("t1"), std::string::npos) << out;
  EXPECT_NE(out.find("t2"), std::string::npos) << out;
  EXPECT_EQ(out.find("t3"), std::string::npos) << out;
  const std::string next = "txn list --cursor=t2";
  EXPECT_NE(out.find(next), std::string::npos) << out;
  out = RunCommand(ctl + next);
  EXPECT_NE(out.find("t3"), std::string::npos) << out;
  EXPECT_EQ(out.find("t1 "), std::string::npos) << out;
  EXPECT_EQ(out.find("more exist"), std::string::npos) << out;
  out = RunCommand(ctl + "txn list --json --limit=1");
  EXPECT_NE(out.find("\"next_page_token\": \"t1\""), std::string::npos) << out;
  EXPECT_EQ(out.find("xxxx"), std::string::npos);
  // With --payloads, a page still ends at --list_reply_bytes_max (4 MiB):
  // one 4 MiB transaction per page.
  out = RunCommand(ctl + "txn list --json --payloads");
  EXPECT_NE(out.find("\"next_page_token\": \"t1\""), std::string::npos) << out.substr(0, 300);
  EXPECT_NE(out.find("\"payloads_included\": true"), std::string::npos);
  // txn show finds a transaction on a later page.
  out = RunCommand(ctl + "txn show t3");
  EXPECT_NE(out.find("txn t3"), std::string::npos) << out;
  out = RunCommand(ctl + "txn list --cursor='bad id!' 2>&1; echo rc=$?");
  EXPECT_NE(out.find("INVALID_ARGUMENT"), std::string::npos) << out;
}

TEST(AdminTest, CoordinatorTxnListPagesWithACursor) {
  ClusterOptions o = OneParticipant();
  o.coordinator_args = {"--list_limit_max=3"};
  Cluster c(o);
  c.StartAll();
  c.CreateQueue(1, "jobs");
  for (int i = 1; i <= 5; ++i) {
    grpc::ClientContext ctx;
    Deadline(&ctx, 10000);
    v1::ExecuteRequest req;
    req.set_txn_id(absl::StrCat("x", i));
    v1::Op* op = req.add_ops();
    op->set_participant("p1");
    op->mutable_enqueue()->set_queue("jobs");
    op->mutable_enqueue()->set_payload("m");
    v1::ExecuteResponse resp;
    ASSERT_TRUE(c.coordinator()->Execute(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.outcome(), v1::COMMITTED);
  }
  const std::string ctl =
      absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl --coordinator=", c.coordinator_address(), " ");
  std::string out = RunCommand(ctl + "txn list --state=ended --limit=2");
  EXPECT_NE(out.find("x1"), std::string::npos) << out;
  EXPECT_NE(out.find("x2"), std::string::npos) << out;
  EXPECT_EQ(out.find("x3"), std::string::npos) << out;
  EXPECT_NE(out.find("txn list --state=ended --limit=2 --cursor=x2"), std::string::npos) << out;
  out = RunCommand(ctl + "txn list --state=ended --limit=2 --cursor=x2");
  EXPECT_NE(out.find("x3"), std::string::npos) << out;
  EXPECT_NE(out.find("x4"), std::string::npos) << out;
  EXPECT_NE(out.find("--cursor=x4"), std::string::npos) << out;
  // Asking more than --list_limit_max gets that many, and a cursor.
  out = RunCommand(ctl + "--json txn list --state=ended --limit=100");
  EXPECT_EQ(Count(out, "\"txn_id\""), 3u) << out;
  EXPECT_NE(out.find("\"next_page_token\": \"x3\""), std::string::npos) << out;
}

TEST(AdminTest, HealthIsServingAfterStartAndNotServingWhileDraining) {
  Cluster c(OneParticipant({"--drain_ms=3000"}));
  c.StartParticipant(1);
  for (const char* s : kParticipantServices) {
    EXPECT_EQ(Health(c.participant_address(1), s), kServing) << "service \"" << s << "\"";
  }
  c.SignalParticipant(1, SIGTERM);
  bool saw_not_serving = false;
  for (int i = 0; i < 40 && !saw_not_serving; ++i) {
    saw_not_serving = Health(c.participant_address(1), "") == kNotServing;
    if (!saw_not_serving) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(saw_not_serving);
  for (const char* s : kParticipantServices) {
    EXPECT_EQ(Health(c.participant_address(1), s), kNotServing) << "service \"" << s << "\"";
  }
  // Still serving calls while draining.
  grpc::ClientContext ctx;
  Deadline(&ctx, 2000);
  v1::ListQueuesResponse resp;
  EXPECT_TRUE(c.queue(1)->ListQueues(&ctx, v1::ListQueuesRequest(), &resp).ok());
  EXPECT_EQ(c.WaitParticipantExit(1, 10000), std::optional<int>(0));

  // The coordinator: SERVING for "" and its service once started.
  ClusterOptions co = OneParticipant();
  Cluster cc(co);
  cc.StartAll();
  EXPECT_EQ(Health(cc.coordinator_address(), ""), kServing);
  EXPECT_EQ(Health(cc.coordinator_address(), "atomq.v1.Coordinator"), kServing);
}

TEST(AdminTest, WhileRecoveringCallsAreUnavailableAndHealthNotServing) {
  // What both servers listen with until their recovery is done.
  const std::string addr = absl::StrCat("127.0.0.1:", FreePort());
  absl::StatusOr<std::unique_ptr<StandInServer>> r = StandInServer::Start(
      addr, {"atomq.v1.ParticipantTxn", "atomq.v1.Queue"}, grpc::InsecureServerCredentials());
  ASSERT_TRUE(r.ok()) << r.status();
  for (const char* s : kParticipantServices) {
    EXPECT_EQ(Health(addr, s), kNotServing) << "service \"" << s << "\"";
  }
  EXPECT_EQ(Health(addr, "atomq.v1.Nothing"), -int64_t{grpc::StatusCode::NOT_FOUND});
  auto stub = v1::Queue::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  Deadline(&ctx, 2000);
  v1::ListQueuesResponse resp;
  grpc::Status s = stub->ListQueues(&ctx, v1::ListQueuesRequest(), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(s.error_message().find("recovering"), std::string::npos) << s.error_message();
  // Gone at once: the real server binds the same address next.
  r->reset();
  RpcLoop loop(1);
  LoopHealth health(&loop, {"atomq.v1.Queue"});
  absl::StatusOr<std::unique_ptr<grpc::Server>> server =
      StartServer(addr, {health.service()}, 1 << 20, grpc::InsecureServerCredentials(), &loop);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(Health(addr, "atomq.v1.Queue"), kNotServing);
  health.Set(true);
  EXPECT_EQ(Health(addr, ""), kServing);
  EXPECT_EQ(Health(addr, "atomq.v1.Queue"), kServing);
  EXPECT_EQ(Health(addr, "atomq.v1.Nothing"), -int64_t{grpc::StatusCode::NOT_FOUND});
  (*server)->Shutdown(std::chrono::system_clock::now());
  loop.Shutdown();
}

}  // namespace
}  // namespace atomq::testing
