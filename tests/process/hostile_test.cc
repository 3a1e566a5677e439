// Hostile input against a real cluster: malformed requests on every RPC
// (empty, oversized, invalid characters, unknown enums, bodies that are not
// protobuf, strings that are not UTF-8, someone else's lease), each answered
// with the right code and a short message, and the cluster's state the same
// afterwards (docs/design.md section 11). Every case runs twice: against a
// plaintext cluster that lets anyone call, and against one with mTLS on
// every link and a roles file, the suite's certificate holding every role,
// so that authentication and roles change none of the answers.
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/message.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

constexpr size_t kMessageBytesMax = 1100;  // 1 KiB of message and its "...(N bytes)"

struct Case {
  std::string name;
  std::string method;  // "/atomq.v1.Service/Method"
  std::string body;    // the serialized request, or bytes that are not one
  grpc::StatusCode want;
  bool coordinator = false;  // else participant p1
};

std::string Bytes(const google::protobuf::Message& m) { return m.SerializeAsString(); }

// A protobuf body whose field `field` (a string field) holds `value`, bytes
// and all: what a client that skips UTF-8 checks would send.
std::string RawString(int field, const std::string& value) {
  std::string out;
  out.push_back(static_cast<char>((field << 3) | 2));
  size_t n = value.size();
  while (n >= 0x80) {
    out.push_back(static_cast<char>((n & 0x7f) | 0x80));
    n >>= 7;
  }
  out.push_back(static_cast<char>(n));
  return out + value;
}

grpc::Status Call(const std::shared_ptr<grpc::Channel>& channel, const Case& c,
                  std::string* message) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Slice slice(c.body);
  grpc::ByteBuffer req(&slice, 1), resp;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&ctx, c.method, grpc::StubOptions(), &req, &resp, [&](grpc::Status s) {
    std::lock_guard<std::mutex> lock(mu);
    status = std::move(s);
    done = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  *message = status.error_message();
  return status;
}

// Sends `body` as one message of stream `method`, then half-closes; the
// call's final status.
grpc::Status StreamCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                        const std::string& body) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::CompletionQueue cq;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call = stub.PrepareCall(&ctx, method, &cq);
  void* tag = nullptr;
  bool ok = false;
  call->StartCall(reinterpret_cast<void*>(1));
  cq.Next(&tag, &ok);
  grpc::Slice slice(body);
  grpc::ByteBuffer msg(&slice, 1);
  call->Write(msg, reinterpret_cast<void*>(2));
  cq.Next(&tag, &ok);
  call->WritesDone(reinterpret_cast<void*>(3));
  cq.Next(&tag, &ok);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

// The parameter: mTLS with roles, else plaintext without.
class HostileTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    ClusterOptions options;
    options.participants = 2;
    if (GetParam()) {
      options.tls = true;
      options.roles = {"client producer,consumer,operator,peer"};
    }
    cluster_ = std::make_unique<Cluster>(options);
    cluster_->StartAll();
    cluster_->CreateQueue(1, "q");
    cluster_->CreateQueue(2, "q");
    grpc::ClientContext sctx;
    v1::SendRequest send;
    send.set_queue("q");
    send.set_payload("hello");
    v1::SendResponse sresp;
    ASSERT_TRUE(cluster_->queue(1)->Send(&sctx, send, &sresp).ok());
    grpc::ClientContext rctx;
    v1::ReceiveRequest recv;
    recv.set_queue("q");
    recv.set_lease_ms(600000);
    v1::ReceiveResponse rresp;
    ASSERT_TRUE(cluster_->queue(1)->Receive(&rctx, recv, &rresp).ok());
    ASSERT_EQ(rresp.deliveries_size(), 1);
    leased_ = rresp.deliveries(0);
  }

  // What a client can see of the cluster's state: queues and their counts,
  // transactions on both sides.
  std::string Snapshot() {
    std::string out;
    for (int i = 1; i <= cluster_->participants(); ++i) {
      grpc::ClientContext qctx;
      v1::ListQueuesResponse queues;
      EXPECT_TRUE(cluster_->queue(i)->ListQueues(&qctx, {}, &queues).ok());
      for (v1::QueueInfo q : queues.queues()) {
        q.clear_created_unix_ms();
        absl::StrAppend(&out, "p", i, " ", q.ShortDebugString(), "\n");
      }
      grpc::ClientContext tctx;
      v1::ListParticipantTxnsResponse txns;
      EXPECT_TRUE(cluster_->txn(i)->ListTransactions(&tctx, {}, &txns).ok());
      absl::StrAppend(&out, "p", i, " txns ", txns.ShortDebugString(), "\n");
    }
    grpc::ClientContext cctx;
    v1::ListTransactionsResponse txns;
    EXPECT_TRUE(cluster_->coordinator()->ListTransactions(&cctx, {}, &txns).ok());
    for (v1::TransactionInfo t : txns.transactions()) {
      t.clear_created_unix_ms();
      absl::StrAppend(&out, "c ", t.ShortDebugString(), "\n");
    }
    return out;
  }

  std::unique_ptr<Cluster> cluster_;
  v1::Delivery leased_;
};

// Ops, each alone in an ExecuteRequest.
v1::ExecuteRequest ExecuteOf(const std::string& txn_id, std::vector<v1::Op> ops) {
  v1::ExecuteRequest req;
  req.set_txn_id(txn_id);
  for (v1::Op& op : ops) *req.add_ops() = std::move(op);
  return req;
}

std::vector<Case> Cases(const v1::Delivery& leased) {
  using Code = grpc::StatusCode;
  const std::string kNotProto = "\xff\xff\xff\xff not protobuf at all";
  const std::string kBadUtf8 = "bad\xc3\x28id";
  const std::string kLong(10 * 1024, 'a');
  const std::string kHuge(300, 'z');
  std::vector<Case> cases;
  auto add = [&](std::string name, std::string method, std::string body, Code want,
                 bool coordinator = false) {
    cases.push_back(Case{std::move(name), std::move(method), std::move(body), want, coordinator});
  };
  const std::string P = "/atomq.v1.ParticipantTxn/", Q = "/atomq.v1.Queue/",
                    C = "/atomq.v1.Coordinator/";

  // Bodies that are not protobuf, and strings that are not UTF-8, on every unary RPC.
  for (const char* m : {"Prepare", "PreCommit", "Commit", "Abort", "QueryState", "ListTransactions",
                        "Promise", "Accept", "Stage", "Batch", "Resolve"}) {
    add(absl::StrCat(m, " not protobuf"), P + m, kNotProto, Code::INVALID_ARGUMENT);
  }
  for (const char* m :
       {"CreateQueue", "DeleteQueue", "ListQueues", "Receive", "Ack", "Nack", "Send"}) {
    add(absl::StrCat(m, " not protobuf"), Q + m, kNotProto, Code::INVALID_ARGUMENT);
  }
  for (const char* m : {"Execute", "GetTransaction", "ListTransactions", "QueryState", "Begin",
                        "Commit", "Rollback"}) {
    add(absl::StrCat(m, " not protobuf"), C + m, kNotProto, Code::INVALID_ARGUMENT, true);
  }
  // Field 1 is the id or queue name of each of these.
  for (const char* m : {"Prepare", "Commit", "Abort", "QueryState", "Resolve", "Stage"}) {
    add(absl::StrCat(m, " id not UTF-8"), P + m, RawString(1, kBadUtf8), Code::INVALID_ARGUMENT);
  }
  for (const char* m : {"CreateQueue", "DeleteQueue", "Receive", "Send", "Ack"}) {
    add(absl::StrCat(m, " queue not UTF-8"), Q + m, RawString(1, kBadUtf8), Code::INVALID_ARGUMENT);
  }
  for (const char* m : {"Execute", "GetTransaction", "Begin", "Commit", "Rollback"}) {
    add(absl::StrCat(m, " id not UTF-8"), C + m, RawString(1, kBadUtf8), Code::INVALID_ARGUMENT,
        true);
  }
  // A header key that is not UTF-8: field 3 of SendRequest is a map entry
  // (key = field 1, value = field 2).
  add("Send header key not UTF-8", Q + "Send",
      RawString(1, "q") + RawString(3, RawString(1, kBadUtf8) + RawString(2, "v")),
      Code::INVALID_ARGUMENT);

  // Ids and names: empty, too long, characters outside the alphabet.
  {
    // (An empty id asks the coordinator to choose one.)
    v1::ExecuteRequest e = ExecuteOf(kLong, {EnqueueOp("p1", "q", "x")});
    add("Execute 10 KiB id", C + "Execute", Bytes(e), Code::INVALID_ARGUMENT, true);
    e.set_txn_id("a b\nc");
    add("Execute id with newline", C + "Execute", Bytes(e), Code::INVALID_ARGUMENT, true);
    add("Execute no ops", C + "Execute", Bytes(ExecuteOf("t-noops", {})), Code::INVALID_ARGUMENT,
        true);
    add("Execute unknown participant", C + "Execute",
        Bytes(ExecuteOf("t-nop", {EnqueueOp("p9", "q", "x")})), Code::INVALID_ARGUMENT, true);
    add("Execute participant 10 KiB", C + "Execute",
        Bytes(ExecuteOf("t-longp", {EnqueueOp(kLong, "q", "x")})), Code::INVALID_ARGUMENT, true);
    v1::Op empty_op;
    empty_op.set_participant("p1");
    add("Execute op of no kind", C + "Execute", Bytes(ExecuteOf("t-empty-op", {empty_op})),
        Code::INVALID_ARGUMENT, true);
    e = ExecuteOf("t-proto", {EnqueueOp("p1", "q", "x")});
    e.set_protocol(static_cast<v1::Protocol>(77));
    add("Execute unknown protocol", C + "Execute", Bytes(e), Code::INVALID_ARGUMENT, true);
    e = ExecuteOf("t-queue", {EnqueueOp("p1", "no such queue!", "x")});
    add("Execute bad queue name", C + "Execute", Bytes(e), Code::INVALID_ARGUMENT, true);
  }
  {
    v1::BeginTxnRequest b;
    b.set_txn_id(kLong);
    add("Begin 10 KiB id", C + "Begin", Bytes(b), Code::INVALID_ARGUMENT, true);
    b.set_txn_id("b1");
    b.set_protocol(static_cast<v1::Protocol>(-3));
    add("Begin unknown protocol", C + "Begin", Bytes(b), Code::INVALID_ARGUMENT, true);
    v1::CommitTxnRequest c;
    c.set_txn_id("never-begun");
    add("Commit naming no participant", C + "Commit", Bytes(c), Code::INVALID_ARGUMENT, true);
    c.add_participants()->set_participant(kLong);
    add("Commit naming a 10 KiB participant", C + "Commit", Bytes(c), Code::INVALID_ARGUMENT, true);
    v1::RollbackTxnRequest r;
    add("Rollback empty id", C + "Rollback", Bytes(r), Code::INVALID_ARGUMENT, true);
    v1::GetTransactionRequest g;
    g.set_txn_id(kLong);
    add("GetTransaction 10 KiB id", C + "GetTransaction", Bytes(g), Code::INVALID_ARGUMENT, true);
    v1::ListTransactionsRequest l;
    l.add_states(static_cast<v1::TxnState>(99));
    add("ListTransactions unknown state", C + "ListTransactions", Bytes(l), Code::INVALID_ARGUMENT,
        true);
    // No transaction can have an invalid id: the peer's question has an answer.
    v1::TxnRef ref;
    add("Coordinator QueryState empty id", C + "QueryState", Bytes(ref), Code::OK, true);
  }
  {
    v1::CreateQueueRequest q;
    add("CreateQueue empty name", Q + "CreateQueue", Bytes(q), Code::INVALID_ARGUMENT);
    q.set_name(kLong);
    add("CreateQueue 10 KiB name", Q + "CreateQueue", Bytes(q), Code::INVALID_ARGUMENT);
    q.set_name("has space");
    add("CreateQueue name with space", Q + "CreateQueue", Bytes(q), Code::INVALID_ARGUMENT);
    q.set_name("q");
    add("CreateQueue existing", Q + "CreateQueue", Bytes(q), Code::ALREADY_EXISTS);
    q.set_name("q2");
    q.set_dead_letter_queue("no-such-dlq");
    add("CreateQueue unknown dead-letter queue", Q + "CreateQueue", Bytes(q), Code::NOT_FOUND);
    v1::DeleteQueueRequest d;
    d.set_name("absent");
    add("DeleteQueue absent", Q + "DeleteQueue", Bytes(d), Code::NOT_FOUND);
    d.set_name(kLong);
    add("DeleteQueue 10 KiB name", Q + "DeleteQueue", Bytes(d), Code::INVALID_ARGUMENT);
  }
  {
    v1::SendRequest s;
    s.set_queue("absent");
    add("Send to absent queue", Q + "Send", Bytes(s), Code::NOT_FOUND);
    s.set_queue("");
    add("Send empty queue", Q + "Send", Bytes(s), Code::INVALID_ARGUMENT);
    s.set_queue("q");
    for (int i = 0; i < 100000; ++i) (*s.mutable_headers())[absl::StrCat("h", i)] = "v";
    add("Send 100,000 headers", Q + "Send", Bytes(s), Code::INVALID_ARGUMENT);
    s.clear_headers();
    s.set_producer_id(kLong);
    s.set_producer_sequence(1);
    add("Send 10 KiB producer id", Q + "Send", Bytes(s), Code::INVALID_ARGUMENT);
    s.set_producer_id("");
    s.set_payload(std::string(3 * 1024 * 1024, 'p'));
    add("Send 3 MiB payload", Q + "Send", Bytes(s), Code::INVALID_ARGUMENT);
  }
  {
    v1::ReceiveRequest r;
    r.set_queue("absent");
    add("Receive absent queue", Q + "Receive", Bytes(r), Code::NOT_FOUND);
    r.set_queue("q");
    r.set_max_messages(1u << 30);
    add("Receive 2^30 messages", Q + "Receive", Bytes(r), Code::INVALID_ARGUMENT);
    r.set_max_messages(1);
    r.set_lease_ms(0xffffffffu);
    add("Receive lease of 49 days", Q + "Receive", Bytes(r), Code::INVALID_ARGUMENT);
    r.set_lease_ms(0);
    r.set_queue("q\nforged log line");
    add("Receive queue name with a newline", Q + "Receive", Bytes(r), Code::INVALID_ARGUMENT);
  }
  {
    v1::AckRequest a;
    a.set_queue("q");
    a.set_sequence(leased.sequence());
    a.set_lease_token("guessed");
    add("Ack with a guessed token", Q + "Ack", Bytes(a), Code::FAILED_PRECONDITION);
    a.set_lease_token(kLong);
    add("Ack with a 10 KiB token", Q + "Ack", Bytes(a), Code::FAILED_PRECONDITION);
    a.set_lease_token(leased.lease_token());
    a.set_sequence(leased.sequence() + 1000);
    add("Ack a message never delivered", Q + "Ack", Bytes(a), Code::FAILED_PRECONDITION);
    a.set_queue("absent");
    add("Ack on an absent queue", Q + "Ack", Bytes(a), Code::NOT_FOUND);
    v1::NackRequest n;
    n.set_queue("q");
    n.set_sequence(leased.sequence());
    n.set_lease_token("guessed");
    add("Nack with a guessed token", Q + "Nack", Bytes(n), Code::FAILED_PRECONDITION);
    n.set_lease_token(leased.lease_token());
    n.set_reason(std::string(2 * 1024 * 1024, 'r'));
    add("Nack with a reason over --payload_bytes_max", Q + "Nack", Bytes(n),
        Code::INVALID_ARGUMENT);
  }
  {
    v1::PrepareRequest p;
    add("Prepare empty", P + "Prepare", Bytes(p), Code::INVALID_ARGUMENT);
    p.set_txn_id("x1");
    p.set_coordinator_id("c1");
    p.set_participant("p1");
    p.set_protocol(static_cast<v1::Protocol>(9));
    *p.add_ops() = EnqueueOp("p1", "q", "x");
    add("Prepare unknown protocol", P + "Prepare", Bytes(p), Code::INVALID_ARGUMENT);
    p.set_protocol(v1::TWO_PC);
    p.set_participant("p2");
    add("Prepare for another participant", P + "Prepare", Bytes(p), Code::INVALID_ARGUMENT);
    p.set_participant("p1");
    p.clear_ops();
    *p.add_ops() = EnqueueOp("p2", "q", "x");
    add("Prepare with another node's op", P + "Prepare", Bytes(p), Code::INVALID_ARGUMENT);
    p.clear_ops();
    for (int i = 0; i < 2000; ++i) {
      v1::PeerAddress* peer = p.add_participants();
      peer->set_participant(absl::StrCat("peer", i));
      peer->set_address(kHuge);
    }
    add("Prepare with 2,000 peers and no ops", P + "Prepare", Bytes(p), Code::INVALID_ARGUMENT);
    v1::TxnRef ref;
    add("PreCommit empty id", P + "PreCommit", Bytes(ref), Code::INVALID_ARGUMENT);
    add("Commit empty id", P + "Commit", Bytes(ref), Code::INVALID_ARGUMENT);
    ref.set_txn_id(kLong);
    add("Abort 10 KiB id", P + "Abort", Bytes(ref), Code::INVALID_ARGUMENT);
    add("QueryState 10 KiB id", P + "QueryState", Bytes(ref), Code::INVALID_ARGUMENT);
    v1::PromiseRequest pr;
    pr.set_txn_id(kLong);
    pr.set_ballot(1);
    add("Promise 10 KiB id", P + "Promise", Bytes(pr), Code::INVALID_ARGUMENT);
    pr.set_txn_id("x2");
    pr.set_ballot(0);
    add("Promise ballot 0", P + "Promise", Bytes(pr), Code::INVALID_ARGUMENT);
    v1::AcceptRequest ac;
    ac.set_txn_id("x3");
    ac.set_ballot(5);
    ac.set_value(v1::PREPARED);
    add("Accept a value that is no outcome", P + "Accept", Bytes(ac), Code::INVALID_ARGUMENT);
    ac.set_value(static_cast<v1::TxnState>(1234));
    add("Accept unknown state", P + "Accept", Bytes(ac), Code::INVALID_ARGUMENT);
    v1::StageRequest st;
    st.set_txn_id("s1");
    add("Stage no ops", P + "Stage", Bytes(st), Code::INVALID_ARGUMENT);
    *st.add_ops() = EnqueueOp("p2", "q", "x");
    add("Stage another node's op", P + "Stage", Bytes(st), Code::INVALID_ARGUMENT);
    v1::BatchRequest batch;
    for (int i = 0; i < 20000; ++i) batch.add_items()->mutable_commit()->set_txn_id("b");
    add("Batch of 20,000 items", P + "Batch", Bytes(batch), Code::INVALID_ARGUMENT);
    v1::ResolveRequest res;
    res.set_txn_id("never-prepared");
    res.set_outcome(v1::COMMITTED);
    add("Resolve a transaction not in doubt here", P + "Resolve", Bytes(res), Code::NOT_FOUND);
    res.set_outcome(static_cast<v1::Outcome>(42));
    add("Resolve unknown outcome", P + "Resolve", Bytes(res), Code::INVALID_ARGUMENT);
    res.set_outcome(v1::ABORTED);
    res.set_operator_note(std::string(100 * 1024, 'n'));
    add("Resolve 100 KiB note", P + "Resolve", Bytes(res), Code::INVALID_ARGUMENT);
  }
  return cases;
}

TEST_P(HostileTest, EveryMalformedRequestIsRefusedClearlyAndChangesNothing) {
  const std::string before = Snapshot();
  // The suite's client: plaintext, or its certificate under mTLS.
  auto participant = cluster_->Channel(cluster_->participant_address(1));
  auto coordinator = cluster_->Channel(cluster_->coordinator_address());
  const std::vector<Case> cases = Cases(leased_);
  ASSERT_GE(cases.size(), 60u);
  for (const Case& c : cases) {
    std::string message;
    grpc::Status s = Call(c.coordinator ? coordinator : participant, c, &message);
    EXPECT_EQ(s.error_code(), c.want) << c.name << ": " << s.error_code() << " " << message;
    if (c.want != grpc::StatusCode::OK) {
      EXPECT_FALSE(message.empty()) << c.name << ": no message";
      EXPECT_LE(message.size(), kMessageBytesMax) << c.name << ": " << message.substr(0, 200);
    }
  }
  EXPECT_EQ(Snapshot(), before);
  // The leased message is still leased to its consumer, whose token acks it.
  grpc::ClientContext ctx;
  v1::AckRequest ack;
  ack.set_queue("q");
  ack.set_sequence(leased_.sequence());
  ack.set_lease_token(leased_.lease_token());
  v1::AckResponse resp;
  EXPECT_TRUE(cluster_->queue(1)->Ack(&ctx, ack, &resp).ok());
  if (!GetParam()) return;
  // The run above was under mTLS and roles: a certificate the roles file
  // does not name may not delete the queue, and plaintext is not spoken.
  cluster_->MakeClientCertificate("stranger", "stranger");
  grpc::ClientContext dctx;
  dctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::DeleteQueueRequest del;
  del.set_name("q");
  v1::DeleteQueueResponse dresp;
  grpc::Status s = cluster_->queue_as(1, "", "stranger")->DeleteQueue(&dctx, del, &dresp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  Case list{"ListQueues over plaintext", "/atomq.v1.Queue/ListQueues", "",
            grpc::StatusCode::UNAVAILABLE};
  std::string message;
  s = Call(
      grpc::CreateChannel(cluster_->participant_address(1), grpc::InsecureChannelCredentials()),
      list, &message);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << message;
}

// A stream message that is not what the method takes ends the call
// INVALID_ARGUMENT naming the method, not as if the client had closed.
TEST_P(HostileTest, MalformedStreamMessagesEndTheCallInvalidArgument) {
  const std::string before = Snapshot();
  auto participant = cluster_->Channel(cluster_->participant_address(1));
  auto coordinator = cluster_->Channel(cluster_->coordinator_address());
  const std::string bad_utf8 = "bad\xc3\x28id";
  const std::string not_protobuf = "\xff\xff\xff";
  // Subscribe: an `open` (field 1) whose queue (field 1) is not UTF-8;
  // ExecuteStream: an item whose request's id is not.
  const std::vector<std::pair<std::string, std::string>> bodies = {
      {not_protobuf, not_protobuf},
      {RawString(1, RawString(2, RawString(1, bad_utf8))), RawString(1, RawString(1, bad_utf8))}};
  for (const auto& [execute, subscribe] : bodies) {
    grpc::Status s = StreamCall(coordinator, "/atomq.v1.Coordinator/ExecuteStream", execute);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find("atomq.v1.Coordinator.ExecuteStream"), std::string::npos)
        << s.error_message();
    s = StreamCall(participant, "/atomq.v1.Queue/Subscribe", subscribe);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find("atomq.v1.Queue.Subscribe"), std::string::npos)
        << s.error_message();
  }
  EXPECT_EQ(Snapshot(), before);
}

INSTANTIATE_TEST_SUITE_P(Links, HostileTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "MtlsWithRoles" : "Plaintext";
                         });

}  // namespace
}  // namespace atomq::testing
