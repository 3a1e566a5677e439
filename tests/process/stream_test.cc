// ExecuteStream over real processes: per-item results matched by tag, the
// same durability and errors as Execute, refusal of oversized messages,
// back-pressure, and the call's end once every item is answered.
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

v1::ExecuteRequest ThreeWay(const std::string& id) {
  v1::ExecuteRequest req;
  req.set_txn_id(id);
  for (int p = 1; p <= 3; ++p) {
    v1::Op* op = req.add_ops();
    op->set_participant(absl::StrCat("p", p));
    op->mutable_enqueue()->set_queue("q");
    op->mutable_enqueue()->set_payload(id);
  }
  return req;
}

struct Call {
  explicit Call(Cluster& c) : stub(c.coordinator()) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    stream = stub->ExecuteStream(&ctx);
  }
  void Send(const std::vector<std::pair<uint64_t, v1::ExecuteRequest>>& items) {
    v1::ExecuteStreamRequest m;
    for (const auto& [tag, req] : items) {
      v1::StreamedExecute* it = m.add_items();
      it->set_tag(tag);
      *it->mutable_request() = req;
    }
    ASSERT_TRUE(stream->Write(m));
  }
  // Reads until `n` results came (or the call ended).
  std::map<uint64_t, v1::StreamedResult> Read(size_t n) {
    std::map<uint64_t, v1::StreamedResult> got;
    v1::ExecuteStreamResponse m;
    while (got.size() < n && stream->Read(&m)) {
      for (const v1::StreamedResult& r : m.results()) {
        EXPECT_TRUE(got.emplace(r.tag(), r).second) << "tag " << r.tag() << " answered twice";
      }
    }
    return got;
  }
  std::unique_ptr<v1::Coordinator::Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ExecuteStreamRequest, v1::ExecuteStreamResponse>>
      stream;
};

class StreamTest : public ::testing::Test {
 protected:
  void Start(std::vector<std::string> coordinator_args = {}) {
    ClusterOptions o;
    o.coordinator_args = std::move(coordinator_args);
    cluster_ = std::make_unique<Cluster>(o);
    cluster_->StartAll();
    for (int p = 1; p <= 3; ++p) cluster_->CreateQueue(p, "q");
  }
  std::unique_ptr<Cluster> cluster_;
};

TEST_F(StreamTest, CommitsEveryItemAndAnswersEachTagOnce) {
  Start();
  Call call(*cluster_);
  std::vector<std::pair<uint64_t, v1::ExecuteRequest>> items;
  for (uint64_t i = 0; i < 20; ++i) items.emplace_back(100 + i, ThreeWay(absl::StrCat("s", i)));
  call.Send(items);
  // A second message on the same call, and a retry of an id already sent.
  call.Send({{500, ThreeWay("s20")}, {501, ThreeWay("s3")}});
  std::map<uint64_t, v1::StreamedResult> got = call.Read(22);
  ASSERT_EQ(got.size(), 22u);
  std::vector<uint64_t> sequences;
  for (const auto& [tag, r] : got) {
    ASSERT_EQ(r.code(), 0) << r.message();
    EXPECT_EQ(r.response().outcome(), v1::COMMITTED) << "tag " << tag;
  }
  EXPECT_EQ(got[103].response().txn_id(), "s3");
  EXPECT_EQ(got[501].response().txn_id(), "s3");
  call.stream->WritesDone();
  grpc::Status end = call.stream->Finish();
  EXPECT_TRUE(end.ok()) << end.error_message();
  // 21 distinct transactions: the retry enqueued nothing more.
  for (int p = 1; p <= 3; ++p) EXPECT_EQ(cluster_->Drain(p, "q").size(), 21u) << "p" << p;
}

TEST_F(StreamTest, BadItemsGetTheirOwnErrorsAndOthersCommit) {
  Start();
  Call call(*cluster_);
  v1::ExecuteRequest unknown = ThreeWay("bad1");
  unknown.mutable_ops(0)->set_participant("p9");
  v1::ExecuteRequest empty;
  empty.set_txn_id("bad2");
  v1::ExecuteRequest aborts = ThreeWay("abort1");
  aborts.mutable_ops(1)->mutable_enqueue()->set_queue("missing");
  call.Send({{1, unknown}, {2, ThreeWay("good")}, {3, empty}, {4, aborts}});
  std::map<uint64_t, v1::StreamedResult> got = call.Read(4);
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[1].code(), int(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_NE(got[1].message().find("p9"), std::string::npos) << got[1].message();
  EXPECT_EQ(got[2].code(), 0);
  EXPECT_EQ(got[2].response().outcome(), v1::COMMITTED);
  EXPECT_EQ(got[3].code(), int(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_EQ(got[4].code(), 0);
  EXPECT_EQ(got[4].response().outcome(), v1::ABORTED);
  EXPECT_NE(got[4].response().reason().find("missing"), std::string::npos);
  call.stream->WritesDone();
  EXPECT_TRUE(call.stream->Finish().ok());
  EXPECT_EQ(cluster_->Drain(1, "q"), std::vector<std::string>{"good"});
}

TEST_F(StreamTest, OversizedMessageIsRefusedItemByItemAndRunsNothing) {
  Start({"--stream_items_max=3"});
  Call call(*cluster_);
  call.Send({{1, ThreeWay("o1")}, {2, ThreeWay("o2")}, {3, ThreeWay("o3")}, {4, ThreeWay("o4")}});
  std::map<uint64_t, v1::StreamedResult> got = call.Read(4);
  ASSERT_EQ(got.size(), 4u);
  for (const auto& [tag, r] : got) {
    EXPECT_EQ(r.code(), int(grpc::StatusCode::INVALID_ARGUMENT)) << tag;
    EXPECT_NE(r.message().find("--stream_items_max"), std::string::npos) << r.message();
  }
  // The call is still usable.
  call.Send({{5, ThreeWay("o5")}});
  got = call.Read(1);
  ASSERT_EQ(got.count(5), 1u);
  EXPECT_EQ(got[5].response().outcome(), v1::COMMITTED);
  call.stream->WritesDone();
  EXPECT_TRUE(call.stream->Finish().ok());
  EXPECT_EQ(cluster_->Drain(1, "q"), std::vector<std::string>{"o5"});
}

TEST_F(StreamTest, ManyMessagesUnderATightInFlightLimitAreAllAnswered) {
  Start({"--stream_in_flight_max=2"});
  Call call(*cluster_);
  // Written before anything is read: the coordinator stops reading at two
  // unanswered transactions and resumes as they finish.
  for (uint64_t i = 0; i < 30; ++i) call.Send({{i, ThreeWay(absl::StrCat("f", i))}});
  call.stream->WritesDone();
  std::map<uint64_t, v1::StreamedResult> got = call.Read(30);
  ASSERT_EQ(got.size(), 30u);
  for (const auto& [tag, r] : got) EXPECT_EQ(r.response().outcome(), v1::COMMITTED) << tag;
  EXPECT_TRUE(call.stream->Finish().ok());
  EXPECT_EQ(cluster_->Drain(2, "q").size(), 30u);
}

TEST_F(StreamTest, ClosingEarlyStillAnswersWhatWasSent) {
  Start();
  Call call(*cluster_);
  call.Send({{7, ThreeWay("e1")}, {8, ThreeWay("e2")}});
  call.stream->WritesDone();                                  // before any result arrived
  std::map<uint64_t, v1::StreamedResult> got = call.Read(3);  // reads to the end
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[7].response().outcome(), v1::COMMITTED);
  EXPECT_EQ(got[8].response().outcome(), v1::COMMITTED);
  EXPECT_TRUE(call.stream->Finish().ok());
}

TEST_F(StreamTest, ReplyAtDecisionCommitsWithoutSequencesAndTheMessagesFollow) {
  Start();
  Call call(*cluster_);
  v1::ExecuteRequest req = ThreeWay("d1");
  req.set_reply_at_decision(true);
  call.Send({{1, req}});
  std::map<uint64_t, v1::StreamedResult> got = call.Read(1);
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(got[1].code(), 0) << got[1].message();
  EXPECT_EQ(got[1].response().outcome(), v1::COMMITTED);
  ASSERT_EQ(got[1].response().results_size(), 3);
  for (const v1::OpResult& r : got[1].response().results()) EXPECT_EQ(r.sequence(), 0u);
  call.stream->WritesDone();
  EXPECT_TRUE(call.stream->Finish().ok());
  // Applied shortly after the reply, on every participant.
  for (int p = 1; p <= 3; ++p) {
    std::vector<std::string> seen;
    for (int i = 0; i < 100 && seen.empty(); ++i) {
      seen = cluster_->Drain(p, "q");
      if (seen.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_EQ(seen, std::vector<std::string>{"d1"}) << "p" << p;
  }
}

}  // namespace
}  // namespace atomq::testing

namespace atomq::testing {
namespace {

// The coordinator's resident memory, from /proc/PID/status (VmRSS), in KiB.
long RssKb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  }
  return -1;
}

bool LogHas(const std::string& path, const std::string& needle) {
  std::ifstream in(path);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return all.find(needle) != std::string::npos;
}

constexpr int kMessages = 3000;
constexpr int kItemsPerMessage = 1001;  // one past --stream_items_max: each item refused

// A client that writes messages and never reads: each message makes 1,001
// results (about 150 KB in memory) for the coordinator to hold.
struct NonReader {
  explicit NonReader(Cluster& c) : call(c) {
    for (int i = 0; i < kItemsPerMessage; ++i) m.add_items()->set_tag(static_cast<uint64_t>(i));
    writer = std::thread([this] {
      for (int i = 0; i < kMessages && call.stream->Write(m); ++i) written = i + 1;
      ended = true;
    });
  }
  ~NonReader() {
    call.ctx.TryCancel();
    if (writer.joinable()) writer.join();
  }
  Call call;
  v1::ExecuteStreamRequest m;
  std::atomic<int> written{0};
  std::atomic<bool> ended{false};
  std::thread writer;
};

// Issue 11: an ExecuteStream client that never read drove the coordinator to
// 2 GB. Now it holds at most --stream_replies_buffered_max results for a
// call, reads no more from it meanwhile, and ends the call RESOURCE_EXHAUSTED
// after --stream_stalled_ms_max (cancelling it after as long again if the
// client still reads nothing).
// A SIGTERM under load stops every server cleanly (exit 0): the store's
// last reports reach a core that is still there (the coordinator once
// crashed here, with an ExecuteStream open).
TEST_F(StreamTest, SigtermUnderStreamLoadStopsEveryServerCleanly) {
  Start();
  Call call(*cluster_);
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    v1::ExecuteStreamResponse m;
    while (call.stream->Read(&m)) {
    }
  });
  std::thread writer([&] {
    for (uint64_t i = 0; !stop && i < 100000; ++i) {
      v1::ExecuteStreamRequest m;
      v1::StreamedExecute* it = m.add_items();
      it->set_tag(i);
      *it->mutable_request() = ThreeWay(absl::StrCat("t", i));
      if (!call.stream->Write(m)) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  ASSERT_EQ(kill(cluster_->coordinator_pid(), SIGTERM), 0);
  EXPECT_EQ(cluster_->WaitCoordinatorExit(20000), std::optional<int>(0));
  stop = true;
  call.ctx.TryCancel();
  writer.join();
  reader.join();
  for (int p = 1; p <= 3; ++p) {
    cluster_->SignalParticipant(p, SIGTERM);
    EXPECT_EQ(cluster_->WaitParticipantExit(p, 20000), std::optional<int>(0)) << "p" << p;
  }
}

TEST(StreamBackPressureTest, AClientThatNeverReadsCannotGrowTheCoordinator) {
  ClusterOptions o;
  o.participants = 1;
  const int metrics = FreePort();
  o.coordinator_args = {"--stream_items_max=1000", "--stream_replies_buffered_max=2000",
                        "--stream_stalled_ms_max=2000",
                        absl::StrCat("--metrics_listen=127.0.0.1:", metrics)};
  Cluster c(o);
  c.StartCoordinator();  // the refused items never reach a participant
  const pid_t pid = c.coordinator_pid();
  const long before = RssKb(pid);
  ASSERT_GT(before, 0);
  long peak = before;
  auto sample = [&] { peak = std::max(peak, RssKb(pid)); };

  {  // This one reads once the coordinator gave up on it: it sees why.
    NonReader a(c);
    const std::string log = c.dir() + "/c1.log";
    for (int i = 0; i < 150 && !LogHas(log, "ExecuteStream ended"); ++i) {
      sample();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_TRUE(LogHas(log, "ExecuteStream ended"));
    EXPECT_LT(a.written.load(), kMessages) << "the coordinator kept reading a stalled call";
    v1::ExecuteStreamResponse r;
    while (a.call.stream->Read(&r)) sample();
    a.writer.join();
    grpc::Status st = a.call.stream->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_NE(st.error_message().find("--stream_replies_buffered_max"), std::string::npos)
        << st.error_message();
    // What a dashboard sees of it: reading paused, then the call ended for it.
    EXPECT_GT(MetricAt(metrics, "atomq_execute_stream_read_pauses_total"), 0);
    EXPECT_EQ(MetricAt(metrics, "atomq_execute_streams_ended_stalled_total"), 1);
  }
  {  // This one never reads: its call is cancelled.
    NonReader b(c);
    for (int i = 0; i < 150 && !b.ended; ++i) {
      sample();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_TRUE(b.ended) << "a call that is never read was not ended";
    EXPECT_LT(b.written.load(), kMessages);
  }
  sample();
  // Unbounded, 3,000 messages' results would be about 450 MB.
  EXPECT_LT(peak - before, 64 * 1024) << "VmRSS grew from " << before << " to " << peak << " KiB";
  // The coordinator still serves.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ListTransactionsResponse list;
  EXPECT_TRUE(c.coordinator()->ListTransactions(&ctx, v1::ListTransactionsRequest(), &list).ok());
  EXPECT_EQ(MetricAt(metrics, "atomq_execute_streams_open"), 0);
}

}  // namespace
}  // namespace atomq::testing
