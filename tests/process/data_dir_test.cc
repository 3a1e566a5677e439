// A participant never starts on a data dir that is not its own or is
// damaged, and a full disk fails writes cleanly and heals (issue 11, item 5).
#include <sys/mount.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "atomq/v1/records.pb.h"
#include "atomq/v1/replica.pb.h"
#include "common/codec.h"
#include "common/storage.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

namespace fs = std::filesystem;

void Deadline(grpc::ClientContext* ctx, int ms) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

grpc::Status Send(Cluster& c, int i, const std::string& queue, const std::string& payload) {
  grpc::ClientContext ctx;
  Deadline(&ctx, 5000);
  v1::SendRequest req;
  req.set_queue(queue);
  req.set_payload(payload);
  v1::SendResponse resp;
  return c.queue(i)->Send(&ctx, req, &resp);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Starts participant i, which must exit non-zero with `why` in its log.
void ExpectRefused(Cluster& c, int i, const std::string& why) {
  const std::string log = c.dir() + "/" + c.participant_id(i) + ".log";
  const size_t before = ReadFile(log).size();
  c.StartParticipant(i, {}, /*wait=*/false);
  std::optional<int> code = c.WaitParticipantExit(i, 10000);
  ASSERT_TRUE(code.has_value()) << "the participant kept running";
  EXPECT_NE(*code, 0);
  EXPECT_LT(*code, 128) << "it must exit with an error, not die of a signal";
  const std::string said = ReadFile(log).substr(before);
  EXPECT_NE(said.find(why), std::string::npos) << "log: " << said;
}

class DataDirTest : public ::testing::Test {
 protected:
  DataDirTest() : c_(ClusterOptions{.participants = 2}) {}
  void SetUp() override {
    c_.StartParticipant(1);
    c_.CreateQueue(1, "q");
    ASSERT_TRUE(Send(c_, 1, "q", "kept").ok());
    c_.KillParticipant(1);
    data_ = c_.dir() + "/p1/data.mdb";
    fs::copy_file(data_, c_.dir() + "/good.mdb");
  }
  // The data file as it was before the damage: the node starts with its message.
  void ExpectRestoredNodeStarts() {
    fs::copy_file(c_.dir() + "/good.mdb", data_, fs::copy_options::overwrite_existing);
    c_.StartParticipant(1);
    EXPECT_EQ(c_.Drain(1, "q"), std::vector<std::string>({"kept"}));
  }
  Cluster c_;
  std::string data_;
};

TEST_F(DataDirTest, TruncatedDataFileIsRefusedWithoutACrash) {
  fs::resize_file(data_, fs::file_size(data_) / 2);
  ExpectRefused(c_, 1, "is truncated");
  ExpectRestoredNodeStarts();
}

TEST_F(DataDirTest, EmptyDataFileIsRefusedNotStartedAsANewNode) {
  fs::resize_file(data_, 0);
  ExpectRefused(c_, 1, "is empty");
  ExpectRestoredNodeStarts();
}

TEST_F(DataDirTest, MissingDataFileIsRefused) {
  fs::remove(data_);
  ExpectRefused(c_, 1, "no data file");
  ExpectRestoredNodeStarts();
}

TEST_F(DataDirTest, AnotherNodesDirIsRefused) {
  const std::string p2 = c_.dir() + "/p2";
  fs::create_directories(p2);
  fs::copy_file(data_, p2 + "/data.mdb");
  ExpectRefused(c_, 2, "belongs to node \"p1\"");
}

TEST_F(DataDirTest, NewDirIsTheOwnersOnly) {
  EXPECT_EQ(fs::status(c_.dir() + "/p1").permissions(), fs::perms::owner_all);
  EXPECT_EQ(fs::status(data_).permissions(), fs::perms::owner_read | fs::perms::owner_write);
}

// A small tmpfs under participant 1's data dir: Sends fail with
// RESOURCE_EXHAUSTED once it is full, reads go on, and writes work again
// once space returns, with every acknowledged message kept.
TEST(FullDiskTest, WritesFailCleanlyReadsGoOnAndWritesHealWhenSpaceReturns) {
  if (geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
  Cluster c(ClusterOptions{.participants = 1, .participant_args = {"--lazy_write_delay_ms=0"}});
  const std::string dir = c.dir() + "/p1";
  fs::create_directories(dir);
  if (mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=3m,mode=0700") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here: " << std::strerror(errno);
  }
  struct Unmount {
    std::string dir;
    ~Unmount() { umount2(dir.c_str(), MNT_DETACH); }
  } unmount{dir};
  c.StartParticipant(1);
  c.CreateQueue(1, "q");
  // Space to give back later: taken after the first start (the dir was empty).
  std::ofstream(dir + "/reserve") << std::string(512 << 10, 'r');
  const std::string payload(16 << 10, 'x');
  int acknowledged = 0;
  grpc::Status last;
  for (int i = 0; i < 400; ++i) {
    last = Send(c, 1, "q", payload);
    if (!last.ok()) break;
    ++acknowledged;
  }
  ASSERT_EQ(last.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << last.error_message();
  EXPECT_NE(last.error_message().find("disk is full"), std::string::npos) << last.error_message();
  ASSERT_GT(acknowledged, 10);
  const std::string said = ReadFile(c.dir() + "/p1.log");
  EXPECT_NE(said.find("storage: a write to " + dir + " failed"), std::string::npos) << said;
  {  // reads go on
    grpc::ClientContext ctx;
    Deadline(&ctx, 5000);
    v1::ListQueuesResponse resp;
    ASSERT_TRUE(c.queue(1)->ListQueues(&ctx, v1::ListQueuesRequest(), &resp).ok());
    ASSERT_EQ(resp.queues_size(), 1);
    EXPECT_EQ(resp.queues(0).ready(), static_cast<uint64_t>(acknowledged));
  }
  fs::remove(dir + "/reserve");
  grpc::Status healed = Send(c, 1, "q", "after");
  ASSERT_TRUE(healed.ok()) << healed.error_message();
  c.KillParticipant(1);
  c.StartParticipant(1);
  std::vector<std::string> got = c.Drain(1, "q");
  ASSERT_EQ(got.size(), static_cast<size_t>(acknowledged) + 1);
  EXPECT_EQ(got.back(), "after");
  c.KillParticipant(1);
}

std::string Ctl(const std::string& args) {
  return RunCommand(absl::StrCat(ATOMQ_BIN_DIR, "/atomqctl ", args, " 2>&1; echo rc=$?"));
}

// A backup taken while producers send is one committed version: restored,
// the node holds every message acknowledged before the backup began, none
// twice, and nothing never sent; a restore never overwrites a node's data
// or takes another node's backup; verify finds a damaged record.
TEST(BackupTest, ABackupTakenUnderLoadRestoresWholeAndVerifies) {
  Cluster c(ClusterOptions{.participants = 1});
  c.StartParticipant(1);
  c.CreateQueue(1, "q");
  std::mutex mu;
  std::vector<std::string> acked;
  std::atomic<bool> stop{false};
  std::atomic<int> sent{0};
  std::thread load([&] {
    for (int n = 0; !stop; ++n) {
      sent = n + 1;
      if (Send(c, 1, "q", absl::StrCat("m", n)).ok()) {
        std::lock_guard<std::mutex> lock(mu);
        acked.push_back(absl::StrCat("m", n));
      }
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  size_t before;
  {
    std::lock_guard<std::mutex> lock(mu);
    before = acked.size();
  }
  const std::string data = c.dir() + "/p1", file = c.dir() + "/p1.backup";
  const std::string out = Ctl("backup --data_dir=" + data + " --to=" + file);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  stop = true;
  load.join();
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out;
  EXPECT_NE(out.find("backup of participant p1"), std::string::npos) << out;
  ASSERT_GT(before, 10u);
  EXPECT_NE(Ctl("verify --data_dir=" + file).find("verified:"), std::string::npos);
  EXPECT_NE(Ctl("backup --data_dir=" + data + " --to=" + file).find("exists"), std::string::npos);
  // On a terminal (script(1) gives it one), a progress line while it copies.
  const std::string tty =
      RunCommand(absl::StrCat("script -qec \"", ATOMQ_BIN_DIR, "/atomqctl backup --data_dir=", data,
                              " --to=", file, ".tty\" /dev/null 2>&1"));
  EXPECT_NE(tty.find("backing up: "), std::string::npos) << tty;
  EXPECT_NE(tty.find("backup of participant p1"), std::string::npos) << tty;

  EXPECT_NE(
      Ctl("restore --from=" + file + " --data_dir=" + data + " --id=p1").find("never overwritten"),
      std::string::npos);
  c.KillParticipant(1);
  fs::rename(data, data + ".lost");
  EXPECT_NE(Ctl("restore --from=" + file + " --data_dir=" + data + " --id=p2").find("not \"p2\""),
            std::string::npos);
  const std::string restored = Ctl("restore --from=" + file + " --data_dir=" + data + " --id=p1");
  ASSERT_NE(restored.find("rc=0"), std::string::npos) << restored;
  c.StartParticipant(1);
  const std::vector<std::string> got = c.Drain(1, "q");
  const std::set<std::string> held(got.begin(), got.end());
  EXPECT_EQ(held.size(), got.size()) << "a message twice";
  for (size_t i = 0; i < before; ++i) EXPECT_EQ(held.count(acked[i]), 1u) << acked[i];
  for (const std::string& m : held) EXPECT_LT(std::stoi(m.substr(1)), sent.load()) << m;
  c.KillParticipant(1);
  // A coordinator's data dir, read while it runs.
  c.StartCoordinator();
  const std::string coordinator = Ctl("verify --data_dir=" + c.dir() + "/c1");
  EXPECT_NE(coordinator.find("coordinator c1"), std::string::npos) << coordinator;
  EXPECT_NE(coordinator.find("rc=0"), std::string::npos) << coordinator;

  // A record damaged on disk: verify names it and fails.
  const std::string damaged = c.dir() + "/damaged";
  fs::create_directories(damaged);
  fs::copy_file(file, damaged + "/data.mdb");
  {
    LmdbOptions o;
    o.dir = damaged;
    o.dbs = {"outcomes", "raft_log"};
    absl::StatusOr<std::unique_ptr<Storage>> s = OpenLmdbStorage(o);
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_TRUE((*s)->Write(Batch{0, {Write{"outcomes", "t-bad", "not a record", false}}}).ok());
    // A replica's log entry whose batch carries a damaged record, and one
    // that is whole: each write is checked as its sub-database's record.
    v1::ReplicatedBatch bad, good;
    v1::ReplicatedWrite* w = bad.add_writes();
    w->set_db("prepared");
    w->set_key("t-log");
    w->set_value("not a record either");
    v1::OutcomeRecord outcome;
    outcome.set_txn_id("t-good");
    w = good.add_writes();
    w->set_db("outcomes");
    w->set_key("t-good");
    w->set_value(EncodeRecord(outcome));
    v1::RaftEntryRecord e;
    e.set_term(1);
    e.set_type(1);
    e.set_data(bad.SerializeAsString());
    const std::string bad_entry = EncodeRecord(e);
    e.set_data(good.SerializeAsString());
    ASSERT_TRUE((*s)->Write(Batch{0,
                                  {Write{"raft_log", EncodeU64(7), bad_entry, false},
                                   Write{"raft_log", EncodeU64(8), EncodeRecord(e), false}}})
                    .ok());
  }
  const std::string v = Ctl("verify --data_dir=" + damaged);
  EXPECT_NE(v.find("outcomes key \"t-bad\""), std::string::npos) << v;
  EXPECT_NE(v.find("its write to prepared key \"t-log\""), std::string::npos) << v;
  EXPECT_EQ(v.find("t-good"), std::string::npos) << v;
  EXPECT_NE(v.find("DAMAGED"), std::string::npos) << v;
  EXPECT_NE(v.find("rc=2"), std::string::npos) << v;
}

}  // namespace
}  // namespace atomq::testing
