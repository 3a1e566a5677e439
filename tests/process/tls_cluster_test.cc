// A cluster speaking mTLS on every link, with real binaries (issue 11,
// docs/design.md section 11): a transaction commits with TLS between client,
// coordinator and participants, participants ask their coordinator and run
// termination rounds among themselves over it, a plaintext client, a client
// without a certificate and one whose certificate another CA signed are
// refused, and a server whose certificate files are replaced serves the new
// certificate without a restart.
#include <cstdio>
#include <future>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

constexpr int kCrashExit = 86;

void Deadline(grpc::ClientContext* ctx, int ms) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

v1::ExecuteRequest ThreeWay(const std::string& id, v1::Protocol protocol) {
  v1::ExecuteRequest req;
  req.set_txn_id(id);
  req.set_protocol(protocol);
  for (int p = 1; p <= 3; ++p) *req.add_ops() = EnqueueOp(absl::StrCat("p", p), "q", id);
  return req;
}

bool Decided(v1::TxnState s) { return s == v1::STATE_COMMITTED || s == v1::STATE_ABORTED; }

ClusterOptions Tls(int participants = 3) {
  ClusterOptions o;
  o.tls = true;
  o.participants = participants;
  return o;
}

// ListQueues on `address` over `creds`, on a channel of its own.
grpc::Status ListQueues(const std::string& address, std::shared_ptr<grpc::ChannelCredentials> creds,
                        std::string* server_cn = nullptr) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = v1::Queue::NewStub(grpc::CreateCustomChannel(address, creds, args));
  grpc::ClientContext ctx;
  Deadline(&ctx, 3000);
  v1::ListQueuesResponse resp;
  grpc::Status st = stub->ListQueues(&ctx, v1::ListQueuesRequest(), &resp);
  if (server_cn != nullptr && st.ok()) {
    std::vector<grpc::string_ref> cn = ctx.auth_context()->FindPropertyValues("x509_common_name");
    *server_cn = cn.empty() ? "" : std::string(cn[0].data(), cn[0].size());
  }
  return st;
}

std::shared_ptr<grpc::ChannelCredentials> Ssl(const Cluster& c, const std::string& client) {
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = ReadFile(c.tls_dir() + "/ca.pem");
  if (!client.empty()) {
    o.pem_cert_chain = ReadFile(c.tls_dir() + "/" + client + ".pem");
    o.pem_private_key = ReadFile(c.tls_dir() + "/" + client + ".key");
  }
  return grpc::SslCredentials(o);
}

TEST(TlsClusterTest, TransactionCommitsOverMtlsOnEveryLink) {
  Cluster c(Tls());
  c.StartAll();
  for (int i = 1; i <= 3; ++i) c.CreateQueue(i, "q");  // client -> participant

  // client -> coordinator -> participants.
  {
    grpc::ClientContext ctx;
    Deadline(&ctx, 10000);
    v1::ExecuteResponse resp;
    grpc::Status st = c.coordinator()->Execute(&ctx, ThreeWay("tls-1", v1::TWO_PC), &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.outcome(), v1::COMMITTED);
    for (int i = 1; i <= 3; ++i) EXPECT_EQ(c.Drain(i, "q"), std::vector<std::string>{"tls-1"});
  }

  // participant -> coordinator: p1 prepared alone (this test plays c1's
  // Prepare), in doubt, asks c1, which never heard of it: presumed abort.
  {
    v1::PrepareRequest prep;
    prep.set_txn_id("tls-ask");
    prep.set_protocol(v1::TWO_PC);
    prep.set_coordinator_id("c1");
    prep.set_participant("p1");
    prep.add_participants()->set_participant("p1");
    *prep.add_ops() = EnqueueOp("p1", "q", "tls-ask");
    grpc::ClientContext ctx;
    Deadline(&ctx, 5000);
    v1::PrepareResponse vote;
    ASSERT_TRUE(c.txn(1)->Prepare(&ctx, prep, &vote).ok());
    ASSERT_EQ(vote.vote(), v1::YES) << vote.reason();
    EXPECT_EQ(c.AwaitOutcome(1, "tls-ask", 15000), v1::STATE_ABORTED);
  }

  // participant -> participant: the coordinator dies once PreCommit reached
  // a participant; the three finish among themselves (3PC termination).
  c.StartCoordinator({{"ATOMQ_CRASH_AT", "after-precommit-sent"}});
  auto call = std::async(std::launch::async, [&c] {
    grpc::ClientContext ctx;
    Deadline(&ctx, 10000);
    v1::ExecuteResponse resp;
    return c.coordinator()->Execute(&ctx, ThreeWay("tls-3pc", v1::THREE_PC), &resp);
  });
  ASSERT_EQ(c.WaitCoordinatorExit(15000), kCrashExit);
  call.get();
  const v1::TxnState s1 = c.AwaitOutcome(1, "tls-3pc", 20000);
  ASSERT_TRUE(Decided(s1)) << v1::TxnState_Name(s1);
  EXPECT_EQ(c.AwaitOutcome(2, "tls-3pc", 20000), s1);
  EXPECT_EQ(c.AwaitOutcome(3, "tls-3pc", 20000), s1);

  // atomqctl over mTLS (the Cluster put its client certificate in ATOMQ_TLS_*).
  const std::string cmd = std::string(ATOMQ_BIN_DIR) +
                          "/atomqctl --participant=" + c.participant_address(1) +
                          " queue list 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof(buf), f) != nullptr) out += buf;
  EXPECT_EQ(pclose(f), 0) << out;
  EXPECT_NE(out.find("q"), std::string::npos) << out;
}

TEST(TlsClusterTest, PlaintextClientsAndClientsWithoutCertificatesAreRefused) {
  Cluster c(Tls(1));
  c.StartAll();
  for (const std::string& address : {c.coordinator_address(), c.participant_address(1)}) {
    EXPECT_EQ(ListQueues(address, grpc::InsecureChannelCredentials()).error_code(),
              grpc::StatusCode::UNAVAILABLE)
        << address;
    EXPECT_EQ(ListQueues(address, Ssl(c, "")).error_code(), grpc::StatusCode::UNAVAILABLE)
        << address << " (TLS, no client certificate)";
  }
  // Nothing a refused client sent changed anything.
  {
    auto stub = v1::Queue::NewStub(
        grpc::CreateChannel(c.participant_address(1), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    Deadline(&ctx, 3000);
    v1::CreateQueueRequest req;
    req.set_name("plain");
    v1::CreateQueueResponse resp;
    EXPECT_FALSE(stub->CreateQueue(&ctx, req, &resp).ok());
  }
  grpc::ClientContext ctx;
  Deadline(&ctx, 3000);
  v1::ListQueuesResponse list;
  ASSERT_TRUE(c.queue(1)->ListQueues(&ctx, v1::ListQueuesRequest(), &list).ok());
  EXPECT_EQ(list.queues_size(), 0);
}

TEST(TlsClusterTest, ClientCertificateFromAnotherCaIsRefused) {
  Cluster c(Tls(1));
  c.StartParticipant(1);
  // Same name as the real client, signed by a CA the servers do not trust.
  MakeCa(c.tls_dir(), "otherca");
  MakeCertificate(c.tls_dir(), "intruder", "otherca", "client", "DNS:client");
  EXPECT_EQ(ListQueues(c.participant_address(1), Ssl(c, "intruder")).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(ListQueues(c.participant_address(1), Ssl(c, "client")).ok());
}

TEST(TlsClusterTest, ReplacedCertificateFilesAreServedWithoutARestart) {
  Cluster c(Tls(1));  // servers look at their files every second
  c.StartParticipant(1);
  std::string cn;
  ASSERT_TRUE(ListQueues(c.participant_address(1), Ssl(c, "client"), &cn).ok());
  EXPECT_EQ(cn, "p1");

  // A rotation: new files written beside, then renamed over the old ones.
  MakeCertificate(c.tls_dir(), "p1-next", "ca", "p1-rotated", "IP:127.0.0.1,DNS:p1");
  const std::string t = c.tls_dir();
  ASSERT_EQ(std::rename((t + "/p1-next.key").c_str(), (t + "/p1.key").c_str()), 0);
  ASSERT_EQ(std::rename((t + "/p1-next.pem").c_str(), (t + "/p1.pem").c_str()), 0);
  for (int i = 0; i < 100 && cn != "p1-rotated"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_TRUE(ListQueues(c.participant_address(1), Ssl(c, "client"), &cn).ok());
  }
  EXPECT_EQ(cn, "p1-rotated") << "the new certificate was not served within 10 s";
  // One start in its log: the same process served both certificates.
  const std::string log = ReadFile(c.dir() + "/p1.log");
  size_t starts = 0;
  for (size_t at = 0; (at = log.find("serving on", at)) != std::string::npos; ++at) ++starts;
  EXPECT_EQ(starts, 1u) << log;
}

}  // namespace
}  // namespace atomq::testing
