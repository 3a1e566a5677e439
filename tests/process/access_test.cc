// Who may do what, with real binaries (docs/design.md section 11): each
// role is allowed exactly its calls and refused the others with
// PERMISSION_DENIED and nothing changed; callers nobody knows get
// UNAUTHENTICATED; queue globs restrict producers and consumers; each
// identity has its own share of the long-poll, stream and staged budgets;
// admin actions leave audit lines that no content can forge. Under mTLS
// the same holds for the identities client certificates name.
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

using grpc::StatusCode;

const char* const kApp = "app-token-0123456789abcdef";
const char* const kApp2 = "app2-token-0123456789abcdef";
const char* const kReader = "reader-token-0123456789abcdef";
const char* const kReader2 = "reader2-token-0123456789abcdef";
const char* const kOps = "ops-token-0123456789abcdef";
const char* const kPeer = "peerx-token-0123456789abcdef";
const char* const kOrders = "orders-token-0123456789abcdef";

ClusterOptions AccessOptions(std::vector<std::string> participant_args = {}) {
  ClusterOptions o;
  o.participants = 2;
  o.roles = {"app producer",
             "app2 producer",
             "reader consumer",
             "reader2 consumer",
             "ops operator",
             "peerx peer",
             "orders-app producer,consumer orders*"};
  o.tokens = {{"app", kApp}, {"app2", kApp2},  {"reader", kReader},    {"reader2", kReader2},
              {"ops", kOps}, {"peerx", kPeer}, {"orders-app", kOrders}};
  o.participant_args = std::move(participant_args);
  return o;
}

void Deadline(grpc::ClientContext* ctx, int ms = 3000) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

// What the cluster holds, as the admin sees it: queues with their counts,
// the coordinator's transactions, each participant's transactions.
std::string Snapshot(Cluster& c) {
  std::string out;
  for (int i = 1; i <= c.participants(); ++i) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::ListQueuesResponse q;
    EXPECT_TRUE(c.queue(i)->ListQueues(&ctx, v1::ListQueuesRequest(), &q).ok());
    grpc::ClientContext tctx;
    Deadline(&tctx);
    v1::ListParticipantTxnsResponse t;
    EXPECT_TRUE(c.txn(i)->ListTransactions(&tctx, v1::ListParticipantTxnsRequest(), &t).ok());
    absl::StrAppend(&out, "p", i, " ", q.ShortDebugString(), " ", t.ShortDebugString(), "\n");
  }
  grpc::ClientContext ctx;
  Deadline(&ctx);
  v1::ListTransactionsResponse l;
  EXPECT_TRUE(c.coordinator()->ListTransactions(&ctx, v1::ListTransactionsRequest(), &l).ok());
  absl::StrAppend(&out, "c1 ", l.ShortDebugString(), "\n");
  return out;
}

// Who makes a call: a bearer token (none when empty) and, under TLS, the
// client certificate it presents (Cluster::credentials; empty: "client").
struct Caller {
  explicit Caller(std::string token, std::string certificate = "")
      : token(std::move(token)), certificate(std::move(certificate)) {}
  std::string token;
  std::string certificate;
};

// One call of every RPC either server has (Health aside), made by a Caller;
// `roles` are the roles that may make it (empty: any authenticated caller).
struct Call {
  std::string method;
  std::set<std::string> roles;
  std::function<grpc::Status(Cluster&, const Caller&)> run;
};

// The call's status; its response in `out` when given.
template <typename Stub, typename Req, typename Resp>
grpc::Status Unary(std::unique_ptr<Stub> stub,
                   grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                   const Req& req, Resp* out = nullptr) {
  grpc::ClientContext ctx;
  Deadline(&ctx);
  Resp resp;
  return ((*stub).*method)(&ctx, req, out != nullptr ? out : &resp);
}

grpc::Status ExecuteStream(Cluster& c, const Caller& who) {
  auto stub = c.coordinator_as(who.token, who.certificate);
  grpc::ClientContext ctx;
  Deadline(&ctx);
  auto stream = stub->ExecuteStream(&ctx);
  v1::ExecuteStreamRequest req;
  v1::StreamedExecute* item = req.add_items();
  item->set_tag(1);
  *item->mutable_request()->add_ops() = EnqueueOp("p1", "q", "streamed");
  stream->Write(req);
  stream->WritesDone();
  v1::ExecuteStreamResponse resp;
  while (stream->Read(&resp)) {
  }
  return stream->Finish();
}

// Opens a Subscribe stream on `queue`, half-closes it and returns how it ended.
grpc::Status Subscribe(Cluster& c, const Caller& who, const std::string& queue) {
  auto stub = c.queue_as(1, who.token, who.certificate);
  grpc::ClientContext ctx;
  Deadline(&ctx);
  auto stream = stub->Subscribe(&ctx);
  v1::SubscribeRequest open;
  open.mutable_open()->set_queue(queue);
  stream->Write(open);
  stream->WritesDone();
  v1::SubscribeResponse resp;
  while (stream->Read(&resp)) {
  }
  return stream->Finish();
}

std::vector<Call> EveryCall() {
  using C = v1::Coordinator::Stub;
  using T = v1::ParticipantTxn::Stub;
  using Q = v1::Queue::Stub;
  v1::ExecuteRequest exec;
  *exec.add_ops() = EnqueueOp("p1", "q", "executed");
  v1::TxnRef nope;
  nope.set_txn_id("no-such-txn");
  v1::GetTransactionRequest get;
  get.set_txn_id("no-such-txn");
  v1::CommitTxnRequest commit;
  commit.set_txn_id("no-such-txn");
  v1::RollbackTxnRequest rollback;
  rollback.set_txn_id("no-such-txn");
  v1::PrepareRequest prepare;  // empty: refused as invalid once allowed
  v1::PromiseRequest promise;
  promise.set_txn_id("no-such-txn");
  promise.set_ballot(1);
  v1::AcceptRequest accept;
  accept.set_txn_id("no-such-txn");
  accept.set_ballot(1);
  accept.set_value(v1::STATE_ABORTED);
  v1::BatchRequest batch;
  batch.add_items()->mutable_abort()->set_txn_id("no-such-txn");
  v1::StageRequest stage;
  stage.set_txn_id("staged-1");
  *stage.add_ops() = EnqueueOp("p1", "q", "staged");
  v1::ResolveRequest resolve;
  resolve.set_txn_id("no-such-txn");
  resolve.set_outcome(v1::ABORTED);
  v1::CreateQueueRequest create;
  create.set_name("made");
  v1::DeleteQueueRequest del;
  del.set_name("no-such-queue");
  v1::ReceiveRequest receive;
  receive.set_queue("q");
  receive.set_lease_ms(1);  // what it takes is back at once
  v1::AckRequest ack;
  ack.set_queue("q");
  ack.set_sequence(1);
  ack.set_lease_token("not-a-lease");
  v1::NackRequest nack;
  nack.set_queue("q");
  nack.set_sequence(1);
  nack.set_lease_token("not-a-lease");
  v1::SendRequest send;
  send.set_queue("q");
  send.set_payload("sent");

  auto coord = [](auto method, auto req) {
    return [method, req](Cluster& c, const Caller& who) {
      return Unary(c.coordinator_as(who.token, who.certificate), method, req);
    };
  };
  auto txn = [](auto method, auto req) {
    return [method, req](Cluster& c, const Caller& who) {
      return Unary(c.txn_as(1, who.token, who.certificate), method, req);
    };
  };
  auto queue = [](auto method, auto req) {
    return [method, req](Cluster& c, const Caller& who) {
      return Unary(c.queue_as(1, who.token, who.certificate), method, req);
    };
  };
  const std::set<std::string> producer{"producer"}, consumer{"consumer"}, op{"operator"},
      peer{"peer"};
  return {
      {"Coordinator.Execute", producer, coord(&C::Execute, exec)},
      {"Coordinator.ExecuteStream", producer, ExecuteStream},
      {"Coordinator.Begin", producer, coord(&C::Begin, v1::BeginTxnRequest())},
      {"Coordinator.Commit", producer, coord(&C::Commit, commit)},
      {"Coordinator.Rollback", producer, coord(&C::Rollback, rollback)},
      {"Coordinator.GetTransaction", {"producer", "operator"}, coord(&C::GetTransaction, get)},
      {"Coordinator.ListTransactions", op,
       coord(&C::ListTransactions, v1::ListTransactionsRequest())},
      {"Coordinator.QueryState", peer, coord(&C::QueryState, nope)},
      {"ParticipantTxn.Prepare", peer, txn(&T::Prepare, prepare)},
      {"ParticipantTxn.PreCommit", peer, txn(&T::PreCommit, nope)},
      {"ParticipantTxn.Commit", peer, txn(&T::Commit, nope)},
      {"ParticipantTxn.Abort", peer, txn(&T::Abort, nope)},
      {"ParticipantTxn.QueryState", peer, txn(&T::QueryState, nope)},
      {"ParticipantTxn.Promise", peer, txn(&T::Promise, promise)},
      {"ParticipantTxn.Accept", peer, txn(&T::Accept, accept)},
      {"ParticipantTxn.Batch", peer, txn(&T::Batch, batch)},
      {"ParticipantTxn.Stage", producer, txn(&T::Stage, stage)},
      {"ParticipantTxn.ListTransactions", op,
       txn(&T::ListTransactions, v1::ListParticipantTxnsRequest())},
      {"ParticipantTxn.Resolve", op, txn(&T::Resolve, resolve)},
      {"Queue.CreateQueue", op, queue(&Q::CreateQueue, create)},
      {"Queue.DeleteQueue", op, queue(&Q::DeleteQueue, del)},
      {"Queue.ListQueues", {}, queue(&Q::ListQueues, v1::ListQueuesRequest())},
      {"Queue.Receive", consumer, queue(&Q::Receive, receive)},
      {"Queue.Ack", consumer, queue(&Q::Ack, ack)},
      {"Queue.Nack", consumer, queue(&Q::Nack, nack)},
      {"Queue.Send", producer, queue(&Q::Send, send)},
      {"Queue.Subscribe", consumer,
       [](Cluster& c, const Caller& who) { return Subscribe(c, who, "q"); }},
  };
}

struct Identity {
  std::string name;
  std::string role;
  std::string token;
};

const std::vector<Identity>& Identities() {
  static const std::vector<Identity> ids = {{"app", "producer", kApp},
                                            {"reader", "consumer", kReader},
                                            {"ops", "operator", kOps},
                                            {"peerx", "peer", kPeer}};
  return ids;
}

TEST(AccessTest, EachRoleMakesExactlyItsCalls) {
  Cluster c(AccessOptions());
  c.StartAll();
  c.CreateQueue(1, "q");
  const std::string before = Snapshot(c);
  // Every refusal first: none of them may change anything.
  int refused = 0;
  for (const Identity& id : Identities()) {
    for (const Call& call : EveryCall()) {
      if (call.roles.empty() || call.roles.count(id.role) > 0) continue;
      grpc::Status s = call.run(c, Caller{id.token});
      EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED)
          << id.name << " " << call.method << ": " << s.error_message();
      for (const std::string& part : {call.method, id.name}) {
        EXPECT_TRUE(absl::StrContains(s.error_message(), part))
            << id.name << " " << call.method << ": " << s.error_message();
      }
      ++refused;
    }
  }
  EXPECT_GT(refused, 60);
  EXPECT_EQ(Snapshot(c), before);
  // Then each identity's own calls get past the check (they may fail for
  // other reasons: made-up ids, tokens).
  for (const Identity& id : Identities()) {
    for (const Call& call : EveryCall()) {
      if (!call.roles.empty() && call.roles.count(id.role) == 0) continue;
      grpc::Status s = call.run(c, Caller{id.token});
      EXPECT_NE(s.error_code(), StatusCode::PERMISSION_DENIED)
          << id.name << " " << call.method << ": " << s.error_message();
      EXPECT_NE(s.error_code(), StatusCode::UNAUTHENTICATED)
          << id.name << " " << call.method << ": " << s.error_message();
    }
  }
  // The producer's Execute, stream and Send reached the queue.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the 1 ms lease returns
  std::vector<std::string> got = c.Drain(1, "q");
  std::set<std::string> payloads(got.begin(), got.end());
  EXPECT_EQ(payloads, (std::set<std::string>{"executed", "streamed", "sent"}));
}

TEST(AccessTest, NobodyKnownIsUnauthenticated) {
  Cluster c(AccessOptions());
  c.StartAll();
  c.CreateQueue(1, "q");
  const std::string before = Snapshot(c);
  for (const std::string& token : {std::string(), std::string("wrong-token-0123456789abcdef")}) {
    for (const Call& call : EveryCall()) {
      grpc::Status s = call.run(c, Caller{token});
      EXPECT_EQ(s.error_code(), StatusCode::UNAUTHENTICATED)
          << "token \"" << token << "\" " << call.method << ": " << s.error_message();
    }
  }
  EXPECT_EQ(Snapshot(c), before);
}

TEST(AccessTest, ForgedPrepareAndCommitFromAProducerEnqueueNothing) {
  Cluster c(AccessOptions());
  c.StartAll();
  c.CreateQueue(1, "q");
  v1::PrepareRequest prepare;
  prepare.set_txn_id("forged-1");
  prepare.set_coordinator_id("c1");
  prepare.set_coordinator_address(c.coordinator_address());
  prepare.set_participant("p1");
  prepare.set_one_phase(false);
  *prepare.add_ops() = EnqueueOp("p1", "q", "forged");
  grpc::Status s = Unary(c.txn_as(1, kApp), &v1::ParticipantTxn::Stub::Prepare, prepare);
  EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
  v1::TxnRef ref;
  ref.set_txn_id("forged-1");
  s = Unary(c.txn_as(1, kApp), &v1::ParticipantTxn::Stub::Commit, ref);
  EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
  v1::BatchRequest batch;
  *batch.add_items()->mutable_prepare() = prepare;
  batch.add_items()->mutable_commit()->set_txn_id("forged-1");
  s = Unary(c.txn_as(1, kApp), &v1::ParticipantTxn::Stub::Batch, batch);
  EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_TRUE(c.Drain(1, "q").empty());
  // The real path still works: the coordinator is a peer.
  v1::ExecuteRequest exec;
  *exec.add_ops() = EnqueueOp("p1", "q", "real");
  *exec.add_ops() = EnqueueOp("p2", "q2", "real");
  c.CreateQueue(2, "q2");
  s = Unary(c.coordinator_as(kApp), &v1::Coordinator::Stub::Execute, exec);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(c.Drain(1, "q"), std::vector<std::string>{"real"});
}

TEST(AccessTest, QueueGlobsRestrictProducersAndConsumers) {
  Cluster c(AccessOptions());
  c.StartAll();
  c.CreateQueue(1, "orders-eu");
  c.CreateQueue(1, "payroll");
  v1::SendRequest send;
  send.set_queue("orders-eu");
  send.set_payload("o1");
  grpc::Status s = Unary(c.queue_as(1, kOrders), &v1::Queue::Stub::Send, send);
  EXPECT_TRUE(s.ok()) << s.error_message();
  send.set_queue("payroll");
  s = Unary(c.queue_as(1, kOrders), &v1::Queue::Stub::Send, send);
  EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "payroll")) << s.error_message();
  // One op on a queue outside the globs refuses the whole transaction.
  v1::ExecuteRequest exec;
  *exec.add_ops() = EnqueueOp("p1", "orders-eu", "o2");
  *exec.add_ops() = EnqueueOp("p1", "payroll", "p2");
  s = Unary(c.coordinator_as(kOrders), &v1::Coordinator::Stub::Execute, exec);
  EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "op 1")) << s.error_message();
  v1::ReceiveRequest receive;
  receive.set_queue("payroll");
  s = Unary(c.queue_as(1, kOrders), &v1::Queue::Stub::Receive, receive);
  EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
  s = Subscribe(c, Caller{kOrders}, "payroll");
  EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
  s = Subscribe(c, Caller{kOrders}, "orders-eu");
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(c.Drain(1, "payroll").empty());
  EXPECT_EQ(c.Drain(1, "orders-eu"), std::vector<std::string>{"o1"});
}

TEST(AccessTest, EachIdentityHasItsShare) {
  Cluster c(AccessOptions({"--waiters_per_identity_max=1", "--subscriptions_per_identity_max=1",
                           "--staged_bytes_per_identity_max=10"}));
  c.StartAll();
  c.CreateQueue(1, "q");
  // A long-poll of reader's waits; its second is refused, reader2's is not.
  std::thread waiting([&] {
    v1::ReceiveRequest r;
    r.set_queue("q");
    r.set_wait_ms(3000);
    grpc::Status s = Unary(c.queue_as(1, kReader), &v1::Queue::Stub::Receive, r);
    EXPECT_TRUE(s.ok()) << s.error_message();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  v1::ReceiveRequest r;
  r.set_queue("q");
  r.set_wait_ms(200);
  grpc::Status s = Unary(c.queue_as(1, kReader), &v1::Queue::Stub::Receive, r);
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "--waiters_per_identity_max=1"))
      << s.error_message();
  s = Unary(c.queue_as(1, kReader2), &v1::Queue::Stub::Receive, r);
  EXPECT_TRUE(s.ok()) << s.error_message();
  waiting.join();

  // One open stream each.
  auto stub = c.queue_as(1, kReader);
  grpc::ClientContext ctx;
  Deadline(&ctx, 10000);
  auto first = stub->Subscribe(&ctx);
  v1::SubscribeRequest open;
  open.mutable_open()->set_queue("q");
  ASSERT_TRUE(first->Write(open));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  s = Subscribe(c, Caller{kReader}, "q");
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "--subscriptions_per_identity_max=1"))
      << s.error_message();
  s = Subscribe(c, Caller{kReader2}, "q");
  EXPECT_TRUE(s.ok()) << s.error_message();
  first->WritesDone();
  v1::SubscribeResponse ignored;
  while (first->Read(&ignored)) {
  }
  EXPECT_TRUE(first->Finish().ok());

  // Staged bytes: 8 for app, then 3 more refused; app2 has its own 10.
  auto stage = [&](const char* token, const std::string& txn, const std::string& payload) {
    v1::StageRequest req;
    req.set_txn_id(txn);
    *req.add_ops() = EnqueueOp("p1", "q", payload);
    return Unary(c.txn_as(1, token), &v1::ParticipantTxn::Stub::Stage, req);
  };
  s = stage(kApp, "s1", "12345678");
  EXPECT_TRUE(s.ok()) << s.error_message();
  s = stage(kApp, "s2", "123");
  EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "--staged_bytes_per_identity_max=10"))
      << s.error_message();
  s = stage(kApp2, "s3", "12345678");
  EXPECT_TRUE(s.ok()) << s.error_message();
  s = stage(kApp2, "s1", "1");  // app's transaction
  EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(AccessTest, AdminActionsAreAuditedOnOneLineEach) {
  Cluster c(AccessOptions());
  c.StartAll();
  v1::CreateQueueRequest create;
  create.set_name("audited");
  ASSERT_TRUE(Unary(c.queue_as(1, kOps), &v1::Queue::Stub::CreateQueue, create).ok());
  v1::ResolveRequest resolve;
  resolve.set_txn_id("no-such-txn");
  resolve.set_outcome(v1::ABORTED);
  resolve.set_operator_note("ticket 7\n2026-01-01T00:00:00Z audit who=\"root\" action=\"x\"");
  (void)Unary(c.txn_as(1, kOps), &v1::ParticipantTxn::Stub::Resolve, resolve);
  v1::DeleteQueueRequest del;
  del.set_name("audited");
  (void)Unary(c.queue_as(1, kApp), &v1::Queue::Stub::DeleteQueue, del);  // refused
  ASSERT_TRUE(Unary(c.queue_as(1, kOps), &v1::Queue::Stub::DeleteQueue, del).ok());
  const std::string log = ReadAll(c.dir() + "/p1.log");
  EXPECT_TRUE(absl::StrContains(
      log,
      "audit who=\"ops\" action=\"create-queue\" queue=\"audited\" dead_letter_queue=\"\" "
      "result=\"OK\""))
      << log;
  EXPECT_TRUE(absl::StrContains(log, "audit who=\"ops\" action=\"resolve\" txn=\"no-such-txn\""))
      << log;
  EXPECT_TRUE(absl::StrContains(log, "note=\"ticket 7\\x0a2026")) << log;
  EXPECT_FALSE(absl::StrContains(log, "who=\"root\"")) << log;
  EXPECT_TRUE(absl::StrContains(log,
                                "audit who=\"app\" action=\"refused\" "
                                "method=\"Queue.DeleteQueue\""))
      << log;
  EXPECT_TRUE(absl::StrContains(log, "audit who=\"ops\" action=\"delete-queue\"")) << log;
}

// mTLS, the identity a certificate names holding the roles: the Cluster's
// "client" holds every role (its calls look and set up), "app" and
// "orders-app" what their lines say. Each test's certificates have a common
// name other than their identity, so an identity taken from it would show.
ClusterOptions CertificateOptions() {
  ClusterOptions o;
  o.tls = true;
  o.participants = 2;
  o.roles = {"client producer,consumer,operator,peer", "app producer",
             "orders-app producer,consumer orders*"};
  return o;
}

TEST(AccessTest, ProducerCertificateCommitsAndIsRefusedEveryOtherCall) {
  Cluster c(CertificateOptions());
  c.MakeClientCertificate("app-cert", "app");
  c.StartAll();
  c.CreateQueue(1, "q");
  c.CreateQueue(2, "q");
  v1::SendRequest send;
  send.set_queue("q");
  send.set_payload("before");
  ASSERT_TRUE(Unary(c.queue(1), &v1::Queue::Stub::Send, send).ok());
  const Caller app{"", "app-cert"};
  // Every refusal first. (A token beside the certificate would name the
  // caller instead, common/auth.h: the web console calls that way.)
  const std::string before = Snapshot(c);
  int refused = 0;
  for (const Caller& who : {app}) {
    for (const Call& call : EveryCall()) {
      if (call.roles.empty() || call.roles.count("producer") > 0) continue;
      grpc::Status s = call.run(c, who);
      EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED)
          << call.method << ": " << s.error_message();
      EXPECT_TRUE(absl::StrContains(s.error_message(), call.method)) << s.error_message();
      EXPECT_TRUE(absl::StrContains(s.error_message(), ": app does not have the"))
          << s.error_message();
      ++refused;
    }
    // The operator calls on what exists: the queue holding a message, a
    // transaction this producer commits below.
    v1::DeleteQueueRequest del;
    del.set_name("q");
    grpc::Status s =
        Unary(c.queue_as(1, who.token, who.certificate), &v1::Queue::Stub::DeleteQueue, del);
    EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
    v1::ResolveRequest resolve;
    resolve.set_txn_id("interactive-1");
    resolve.set_outcome(v1::ABORTED);
    s = Unary(c.txn_as(1, who.token, who.certificate), &v1::ParticipantTxn::Stub::Resolve, resolve);
    EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
  }
  EXPECT_GT(refused, 15);
  EXPECT_EQ(Snapshot(c), before);
  EXPECT_TRUE(absl::StrContains(ReadFile(c.dir() + "/p1.log"),
                                "audit who=\"app\" action=\"refused\" "
                                "method=\"Queue.DeleteQueue\""));

  // Its transactions commit: one across both participants, one interactive.
  v1::ExecuteRequest exec;
  exec.set_txn_id("executed-1");
  *exec.add_ops() = EnqueueOp("p1", "q", "executed");
  *exec.add_ops() = EnqueueOp("p2", "q", "executed");
  v1::ExecuteResponse executed;
  grpc::Status s = Unary(c.coordinator_as(app.token, app.certificate),
                         &v1::Coordinator::Stub::Execute, exec, &executed);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(executed.outcome(), v1::COMMITTED) << executed.reason();
  v1::BeginTxnRequest begin;
  begin.set_txn_id("interactive-1");
  v1::BeginTxnResponse began;
  s = Unary(c.coordinator_as(app.token, app.certificate), &v1::Coordinator::Stub::Begin, begin,
            &began);
  ASSERT_TRUE(s.ok()) << s.error_message();
  v1::StageRequest stage;
  stage.set_txn_id(began.txn_id());
  stage.set_expires_unix_ms(began.expires_unix_ms());
  *stage.add_ops() = EnqueueOp("p1", "q", "staged");
  s = Unary(c.txn_as(1, app.token, app.certificate), &v1::ParticipantTxn::Stub::Stage, stage);
  ASSERT_TRUE(s.ok()) << s.error_message();
  v1::CommitTxnRequest commit;
  commit.set_txn_id(began.txn_id());
  v1::TxnParticipant* staged_at = commit.add_participants();
  staged_at->set_participant("p1");
  staged_at->set_staged_ops(1);
  v1::ExecuteResponse committed;
  s = Unary(c.coordinator_as(app.token, app.certificate), &v1::Coordinator::Stub::Commit, commit,
            &committed);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(committed.outcome(), v1::COMMITTED) << committed.reason();
  EXPECT_EQ(c.Drain(1, "q"), (std::vector<std::string>{"before", "executed", "staged"}));
  EXPECT_EQ(c.Drain(2, "q"), std::vector<std::string>{"executed"});
}

TEST(AccessTest, CertificateOfNoRolesLineIsRefusedEveryCallNeedingARole) {
  Cluster c(CertificateOptions());
  c.MakeClientCertificate("stranger-cert", "stranger");
  c.StartAll();
  c.CreateQueue(1, "q");
  const std::string before = Snapshot(c);
  // The CA vouches for it, so it is somebody (common/access.h): not
  // UNAUTHENTICATED, but PERMISSION_DENIED wherever a role is needed, on
  // every service.
  for (const Caller& who : {Caller{"", "stranger-cert"}}) {
    for (const Call& call : EveryCall()) {
      grpc::Status s = call.run(c, who);
      if (call.roles.empty()) {  // ListQueues: names and counts, to any known caller
        EXPECT_TRUE(s.ok()) << call.method << ": " << s.error_message();
        continue;
      }
      EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED)
          << call.method << ": " << s.error_message();
      for (const std::string& part : {call.method, std::string("stranger")}) {
        EXPECT_TRUE(absl::StrContains(s.error_message(), part))
            << call.method << ": " << s.error_message();
      }
    }
  }
  EXPECT_EQ(Snapshot(c), before);
}

TEST(AccessTest, QueueGlobsHoldForCertificateIdentities) {
  Cluster c(CertificateOptions());
  c.MakeClientCertificate("orders-cert", "orders-app");
  c.StartAll();
  c.CreateQueue(1, "orders-eu");
  c.CreateQueue(1, "payroll");
  c.CreateQueue(2, "orders-us");
  const Caller orders{"", "orders-cert"};
  auto queue = [&] { return c.queue_as(1, orders.token, orders.certificate); };
  v1::SendRequest send;
  send.set_queue("orders-eu");
  send.set_payload("o1");
  grpc::Status s = Unary(queue(), &v1::Queue::Stub::Send, send);
  EXPECT_TRUE(s.ok()) << s.error_message();
  send.set_queue("payroll");
  s = Unary(queue(), &v1::Queue::Stub::Send, send);
  EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
  for (const char* part : {"payroll", "orders-app"}) {
    EXPECT_TRUE(absl::StrContains(s.error_message(), part)) << s.error_message();
  }
  // Its consumer role on orders-eu: o1 received and acked.
  v1::ReceiveRequest receive;
  receive.set_queue("orders-eu");
  v1::ReceiveResponse got;
  s = Unary(queue(), &v1::Queue::Stub::Receive, receive, &got);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(got.deliveries_size(), 1);
  EXPECT_EQ(got.deliveries(0).payload(), "o1");
  v1::AckRequest ack;
  ack.set_queue("orders-eu");
  ack.set_sequence(got.deliveries(0).sequence());
  ack.set_lease_token(got.deliveries(0).lease_token());
  s = Unary(queue(), &v1::Queue::Stub::Ack, ack);
  EXPECT_TRUE(s.ok()) << s.error_message();
  receive.set_queue("payroll");
  s = Unary(queue(), &v1::Queue::Stub::Receive, receive);
  EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
  s = Subscribe(c, orders, "payroll");
  EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
  s = Subscribe(c, orders, "orders-eu");
  EXPECT_TRUE(s.ok()) << s.error_message();
  // A transaction is judged op by op: one on payroll refuses all of it;
  // matching queues on both participants commit.
  v1::ExecuteRequest exec;
  *exec.add_ops() = EnqueueOp("p1", "orders-eu", "o2");
  *exec.add_ops() = EnqueueOp("p1", "payroll", "o2");
  s = Unary(c.coordinator_as(orders.token, orders.certificate), &v1::Coordinator::Stub::Execute,
            exec);
  EXPECT_EQ(s.error_code(), StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "op 1")) << s.error_message();
  exec.clear_ops();
  *exec.add_ops() = EnqueueOp("p1", "orders-eu", "o3");
  *exec.add_ops() = EnqueueOp("p2", "orders-us", "o3");
  v1::ExecuteResponse executed;
  s = Unary(c.coordinator_as(orders.token, orders.certificate), &v1::Coordinator::Stub::Execute,
            exec, &executed);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(executed.outcome(), v1::COMMITTED) << executed.reason();
  EXPECT_TRUE(c.Drain(1, "payroll").empty());
  EXPECT_EQ(c.Drain(1, "orders-eu"), std::vector<std::string>{"o3"});
  EXPECT_EQ(c.Drain(2, "orders-us"), std::vector<std::string>{"o3"});
}

TEST(AccessTest, BadAccessFilesRefuseStart) {
  {
    ClusterOptions o = AccessOptions();
    o.roles.push_back("mallory admin");
    Cluster c(o);
    c.StartParticipant(1, {}, /*wait=*/false);
    EXPECT_EQ(c.WaitParticipantExit(1, 10000), 2);
    const std::string log = ReadAll(c.dir() + "/p1.log");
    EXPECT_TRUE(absl::StrContains(log, c.dir() + "/roles:12: unknown role \"admin\"")) << log;
  }
  {
    Cluster c(AccessOptions());
    chmod((c.dir() + "/tokens").c_str(), 0644);
    c.StartParticipant(1, {}, /*wait=*/false);
    EXPECT_EQ(c.WaitParticipantExit(1, 10000), 2);
    const std::string log = ReadAll(c.dir() + "/p1.log");
    EXPECT_TRUE(absl::StrContains(log, "chmod 600")) << log;
  }
  {
    // Plaintext without a roles file: every caller may do everything, said at start.
    ClusterOptions o;
    o.participants = 1;
    Cluster c(o);
    c.StartParticipant(1);
    EXPECT_TRUE(absl::StrContains(ReadAll(c.dir() + "/p1.log"), "warning: no --roles_file"));
  }
}

}  // namespace
}  // namespace atomq::testing
