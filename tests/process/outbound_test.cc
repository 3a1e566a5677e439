// Whom a participant dials (docs/design.md section 11): only the coordinators
// and peers of its own configuration, never an address a request names. A
// forged Prepare naming 2,000 peers and a coordinator address of its own
// makes it dial none of them (listeners on loopback ports this test holds
// see no connection, and its channel count stays at the configured ones),
// and a Prepare from a coordinator it does not know is refused.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

constexpr int kForgedPeers = 2000;
constexpr int kListeners = 8;

void Deadline(grpc::ClientContext* ctx, int ms) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

// A non-blocking listening socket on a free loopback port.
struct Listener {
  int fd = -1;
  int port = 0;
  Listener() {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(fd, 64);
    socklen_t len = sizeof(addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  ~Listener() { close(fd); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port); }
  // Connections accepted (and closed) since the last call.
  int Accepted() {
    int n = 0;
    for (int c; (c = accept(fd, nullptr, nullptr)) >= 0; ++n) close(c);
    return n;
  }
};

// A Prepare of one enqueue on p1 whose coordinator address and 2,000 peers
// are all this test's listeners.
v1::PrepareRequest Forged(const std::string& txn, v1::Protocol protocol,
                          const std::string& coordinator, const std::vector<Listener>& ls) {
  v1::PrepareRequest req;
  req.set_txn_id(txn);
  req.set_protocol(protocol);
  req.set_coordinator_id(coordinator);
  req.set_coordinator_address(ls[0].address());
  req.set_participant("p1");
  v1::PeerAddress* self = req.add_participants();
  self->set_participant("p1");
  self->set_address(ls[1].address());
  for (int i = 0; i < kForgedPeers; ++i) {
    v1::PeerAddress* p = req.add_participants();
    p->set_participant(absl::StrCat("forged-", i));
    p->set_address(ls[static_cast<size_t>(i % kListeners)].address());
  }
  *req.add_ops() = EnqueueOp("p1", "q", "forged");
  return req;
}

int CountLines(const std::string& path, const std::string& needle) {
  std::ifstream in(path);
  int n = 0;
  for (std::string line; std::getline(in, line);) n += absl::StrContains(line, needle);
  return n;
}

TEST(OutboundTest, ForgedPrepareMakesTheParticipantDialNoAddressItNames) {
  std::vector<Listener> ls(kListeners);
  ClusterOptions opts;
  opts.participants = 1;
  opts.participant_metrics = true;
  // Past the default bound on a Prepare's peers, so that what is not dialled
  // is shown on a list this long.
  opts.participant_args = {"--participants_per_txn_max=5000"};
  Cluster c(opts);
  c.StartParticipant(1);  // its coordinator c1 stays down: its address refuses
  c.CreateQueue(1, "q");

  // Prepared (2PC) and precommitted (3PC): in doubt after 300 ms, each asks
  // its coordinator and peers, and the 3PC one also runs termination rounds.
  for (const auto& [txn, protocol] :
       {std::pair<std::string, v1::Protocol>{"forged-2pc", v1::TWO_PC},
        {"forged-3pc", v1::THREE_PC}}) {
    grpc::ClientContext ctx;
    Deadline(&ctx, 5000);
    v1::PrepareResponse vote;
    grpc::Status st = c.txn(1)->Prepare(&ctx, Forged(txn, protocol, "c1", ls), &vote);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(vote.vote(), v1::YES) << vote.reason();
  }
  {
    grpc::ClientContext ctx;
    Deadline(&ctx, 5000);
    v1::TxnRef ref;
    ref.set_txn_id("forged-3pc");
    v1::PreCommitResponse resp;
    ASSERT_TRUE(c.txn(1)->PreCommit(&ctx, ref, &resp).ok());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(3000));

  int accepted = 0;
  for (Listener& l : ls) accepted += l.Accepted();
  EXPECT_EQ(accepted, 0) << "the participant dialled an address a request named";
  // At most its one configured coordinator; every forged peer was skipped.
  EXPECT_LE(c.ParticipantMetric(1, "atomq_channels_created_total"), 1);
  EXPECT_GE(c.ParticipantMetric(1, "atomq_dials_skipped_total"), kForgedPeers);
  // Skips are logged at most once per 10 s, however many.
  const std::string log = c.dir() + "/p1.log";
  EXPECT_GE(CountLines(log, "not asking peer"), 1);
  EXPECT_LE(CountLines(log, "not asking"), 1);
  EXPECT_EQ(c.AwaitOutcome(1, "forged-2pc", 100), v1::PREPARED);  // nobody answered it
}

TEST(OutboundTest, PrepareFromAnUnconfiguredCoordinatorIsRefusedAndChangesNothing) {
  std::vector<Listener> ls(kListeners);
  ClusterOptions opts;
  opts.participants = 1;
  Cluster c(opts);
  c.StartParticipant(1);
  c.CreateQueue(1, "q");
  {
    grpc::ClientContext ctx;
    Deadline(&ctx, 5000);
    v1::PrepareResponse vote;
    grpc::Status st =
        c.txn(1)->Prepare(&ctx, Forged("stranger-1", v1::TWO_PC, "c-evil", ls), &vote);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_TRUE(absl::StrContains(st.error_message(),
                                  "\"c-evil\" is not one of this "
                                  "participant's --coordinators"))
        << st.error_message();
  }
  {  // the same inside a Batch: that item refused, the others answered
    v1::BatchRequest batch;
    *batch.add_items()->mutable_prepare() = Forged("stranger-2", v1::TWO_PC, "c-evil", ls);
    batch.add_items()->mutable_abort()->set_txn_id("stranger-3");
    grpc::ClientContext ctx;
    Deadline(&ctx, 5000);
    v1::BatchResponse resp;
    ASSERT_TRUE(c.txn(1)->Batch(&ctx, batch, &resp).ok());
    ASSERT_EQ(resp.results_size(), 2);
    EXPECT_EQ(resp.results(0).code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
    EXPECT_TRUE(absl::StrContains(resp.results(0).message(), "--coordinators"));
    EXPECT_EQ(resp.results(1).code(), 0) << resp.results(1).message();
  }
  grpc::ClientContext ctx;
  Deadline(&ctx, 5000);
  v1::ListParticipantTxnsResponse list;
  ASSERT_TRUE(c.txn(1)->ListTransactions(&ctx, v1::ListParticipantTxnsRequest(), &list).ok());
  EXPECT_EQ(list.transactions_size(), 0);
  int accepted = 0;
  for (Listener& l : ls) accepted += l.Accepted();
  EXPECT_EQ(accepted, 0);
}

}  // namespace
}  // namespace atomq::testing
