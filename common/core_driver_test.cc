#include "common/core_driver.h"

#include <deque>
#include <map>
#include <utility>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace atomq {
namespace {

struct FakeTimer {
  uint64_t timer_id;
  int64_t at_ms;
};

struct FakeOutput {
  std::vector<Batch> persist;
  std::vector<uint64_t> replies;  // request ids answered
  std::vector<FakeTimer> timers;
  bool empty() const { return persist.empty() && replies.empty() && timers.empty(); }
};

// A core whose writes answer their request once durable, like the real ones.
class FakeCore {
 public:
  void Write(uint64_t request) {
    Batch b;
    b.token = next_token_++;
    b.writes.push_back(atomq::Write{"db", "key", "value", false});
    waiting_[b.token] = request;
    out_.persist.push_back(std::move(b));
  }
  void Answer(uint64_t request) { out_.replies.push_back(request); }
  void SetTimer(uint64_t id, int64_t at_ms) { out_.timers.push_back({id, at_ms}); }

  void OnPersisted(uint64_t token, const absl::Status& st, int64_t) {
    persisted.emplace_back(token, st.ok());
    if (st.ok()) out_.replies.push_back(waiting_[token]);
  }
  void OnTimer(uint64_t id, int64_t) { fired.push_back(id); }
  FakeOutput TakeOutput() {
    ++inputs;
    return std::exchange(out_, FakeOutput{});
  }

  std::vector<std::pair<uint64_t, bool>> persisted;  // token, ok
  std::vector<uint64_t> fired;
  int inputs = 0;

 private:
  uint64_t next_token_ = 1;
  std::map<uint64_t, uint64_t> waiting_;  // token -> request
  FakeOutput out_;
};

// Keeps submitted batches until the test writes them, as one group.
class ManualStorage : public Storage {
 public:
  struct Submitted {
    uint64_t token;
    bool deferred;
    DoneFn done;
  };
  void Submit(Batch batch, DoneFn done) override {
    queued.push_back({batch.token, false, std::move(done)});
  }
  void SubmitDeferred(Batch batch, DoneFn done) override {
    queued.push_back({batch.token, true, std::move(done)});
  }
  void Drive() override { ++drives; }
  void SetGroupHook(GroupHook hook) override { hook_ = std::move(hook); }
  // Writes everything queued as one group; `fail` fails the batch with that
  // token, with `failure`.
  void WriteGroup(uint64_t fail = 0, absl::Status failure = absl::InternalError("disk")) {
    std::deque<Submitted> group;
    group.swap(queued);
    hook_([&] {
      for (Submitted& s : group) s.done(s.token == fail ? failure : absl::OkStatus());
    });
  }
  absl::StatusOr<std::optional<std::string>> Get(const std::string&, const std::string&) override {
    return std::nullopt;
  }
  absl::Status Scan(const std::string&, const std::string&,
                    const std::function<bool(std::string_view, std::string_view)>&) override {
    return absl::OkStatus();
  }
  StorageStats Stats() const override { return {}; }
  std::vector<std::string> Dbs() const override { return {}; }

  std::deque<Submitted> queued;
  int drives = 0;

 private:
  GroupHook hook_;
};

class CoreDriverTest : public ::testing::Test {
 protected:
  CoreDriverTest()
      : driver_(
            std::make_unique<FakeCore>(), &storage_, &clock_, &timers_, &stopped_,
            [this](FakeOutput out) {
              ASSERT_TRUE(out.persist.empty()) << "batches are submitted, not dispatched";
              driver_.ArmTimers(out.timers);
              for (uint64_t r : out.replies) replies_.push_back(r);
            },
            [this](const Batch& b) -> std::function<void()> {
              if (b.token != watched_) return nullptr;
              return [this] {
                // Before the core hears of it.
                durable_before_core_ =
                    driver_.Inspect([](const FakeCore& c) { return c.persisted.empty(); });
              };
            }) {}
  // The timer thread may be inside the driver: stop it first.
  ~CoreDriverTest() override { timers_.Stop(); }

  ManualStorage storage_;
  RealClock clock_;
  TimerQueue timers_;
  std::atomic<bool> stopped_{false};
  std::vector<uint64_t> replies_;
  uint64_t watched_ = 0;
  bool durable_before_core_ = false;
  CoreDriver<FakeCore> driver_;
};

TEST_F(CoreDriverTest, RepliesLeaveOnlyAfterTheirBatchIsDurable) {
  driver_.Run([](FakeCore& c) {
    c.Write(7);
    c.Write(8);
    c.Write(9);
  });
  ASSERT_EQ(storage_.queued.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(storage_.queued[i].token, i + 1) << "in the order the core made them";
    EXPECT_TRUE(storage_.queued[i].deferred);
  }
  EXPECT_EQ(storage_.drives, 1);
  EXPECT_TRUE(replies_.empty());

  storage_.WriteGroup();
  EXPECT_EQ(replies_, (std::vector<uint64_t>{7, 8, 9}));
  const int inputs = driver_.Inspect([](const FakeCore& c) { return c.inputs; });
  EXPECT_EQ(inputs, 2) << "one core call for the whole group";
  // That call submitted nothing: no drive.
  EXPECT_EQ(storage_.drives, 1);
}

TEST_F(CoreDriverTest, AnInputWithoutWritesIsAnsweredAtOnceAndDrivesNothing) {
  driver_.Run([](FakeCore& c) { c.Answer(3); });
  EXPECT_EQ(replies_, (std::vector<uint64_t>{3}));
  EXPECT_EQ(storage_.drives, 0);
  driver_.Run([](FakeCore&) {});
  EXPECT_EQ(replies_.size(), 1u);
}

TEST_F(CoreDriverTest, DurableHookRunsBeforeTheCoreHearsAndNotOnFailure) {
  watched_ = 1;
  driver_.Run([](FakeCore& c) { c.Write(1); });
  storage_.WriteGroup();
  EXPECT_TRUE(durable_before_core_);

  durable_before_core_ = false;
  watched_ = 2;
  driver_.Run([](FakeCore& c) { c.Write(2); });
  storage_.WriteGroup(/*fail=*/2);
  EXPECT_FALSE(durable_before_core_);
  const auto persisted = driver_.Inspect([](const FakeCore& c) { return c.persisted; });
  EXPECT_EQ(persisted, (std::vector<std::pair<uint64_t, bool>>{{1, true}, {2, false}}));
  EXPECT_EQ(replies_, (std::vector<uint64_t>{1}));
}

// A batch failed UNAVAILABLE (a group's leadership lost with it pending:
// it may still commit) stops the core where it is: it hears of neither that
// batch nor those after it in the group, and takes no more input.
TEST_F(CoreDriverTest, ABatchThatMayStillCommitFencesTheCore) {
  driver_.Run([](FakeCore& c) {
    c.Write(1);
    c.Write(2);
    c.Write(3);
  });
  storage_.WriteGroup(/*fail=*/2, absl::UnavailableError("leadership was lost"));
  EXPECT_TRUE(driver_.fenced());
  const auto persisted = driver_.Inspect([](const FakeCore& c) { return c.persisted; });
  EXPECT_EQ(persisted, (std::vector<std::pair<uint64_t, bool>>{{1, true}}));
  EXPECT_EQ(replies_, (std::vector<uint64_t>{1}));

  const int inputs = driver_.Inspect([](const FakeCore& c) { return c.inputs; });
  driver_.Run([](FakeCore& c) { c.Answer(9); });
  EXPECT_EQ(driver_.Inspect([](const FakeCore& c) { return c.inputs; }), inputs);
  EXPECT_EQ(replies_, (std::vector<uint64_t>{1})) << "a fenced core answers nothing";
}

// Any other failure is definite (nothing of the batch is on disk): the core
// hears it and goes on.
TEST_F(CoreDriverTest, ADefiniteFailureReachesTheCore) {
  driver_.Run([](FakeCore& c) { c.Write(1); });
  storage_.WriteGroup(/*fail=*/1, absl::FailedPreconditionError("refused"));
  EXPECT_FALSE(driver_.fenced());
  driver_.Run([](FakeCore& c) { c.Answer(5); });
  EXPECT_EQ(replies_, (std::vector<uint64_t>{5}));
}

TEST_F(CoreDriverTest, SubmitOrderedFollowsTheCoresBatches) {
  driver_.Run([](FakeCore& c) { c.Write(1); });
  Batch mine;
  mine.token = 100;
  driver_.SubmitOrdered(std::move(mine), [](absl::Status) {});
  ASSERT_EQ(storage_.queued.size(), 2u);
  EXPECT_EQ(storage_.queued[1].token, 100u);
  EXPECT_FALSE(storage_.queued[1].deferred);
}

TEST_F(CoreDriverTest, DueTimersReachTheCoreUntilStopped) {
  const int64_t now = clock_.NowMs();
  driver_.Run([&](FakeCore& c) {
    c.SetTimer(1, now);
    c.SetTimer(2, now + 5);
  });
  std::vector<uint64_t> fired;
  for (int i = 0; i < 500 && fired.size() < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
    fired = driver_.Inspect([](const FakeCore& c) { return c.fired; });
  }
  EXPECT_EQ(fired, (std::vector<uint64_t>{1, 2}));

  stopped_ = true;
  driver_.Run([&](FakeCore& c) { c.SetTimer(3, clock_.NowMs()); });
  absl::SleepFor(absl::Milliseconds(50));
  fired = driver_.Inspect([](const FakeCore& c) { return c.fired; });
  EXPECT_EQ(fired.size(), 2u) << "a stopped adapter's timers are dropped";
}

}  // namespace
}  // namespace atomq
