// Three replicas on real disks in one process, linked by an in-memory
// network: a batch's DoneFn reports success only once a majority stored
// it, every replica applies the same writes, a follower refuses writes
// naming the leader, and the group survives a restarted follower and a
// killed leader.
#include "replication/replicated_storage.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/temp_dir.h"
#include "gtest/gtest.h"
#include "replication/replica_testing.h"

namespace atomq::replication {
namespace {

constexpr const char* kDataDb = kTestDataDb;

// Delivers each message on its own thread, in order; drops what goes to or
// comes from a cut member, or to one not attached (down).
class Net {
 public:
  Net() : thread_([this] { Run(); }) {}
  ~Net() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  class Endpoint : public Transport {
   public:
    Endpoint(Net* net, uint64_t id) : net_(net), id_(id) {}
    void Send(uint64_t to, const std::string&, RaftMessage m) override {
      m.peer = id_;
      m.peer_address = absl::StrCat("r", id_);
      net_->Queue(Item{id_, to, std::move(m), nullptr, 0, nullptr});
    }
    void FetchState(uint64_t to, const std::string&, uint64_t bytes_max, FetchedFn done) override {
      net_->Queue(Item{id_, to, RaftMessage{}, std::move(done), bytes_max, nullptr});
    }
    void Probe(uint64_t to, const std::string&, ProbedFn done) override {
      net_->Queue(Item{id_, to, RaftMessage{}, nullptr, 0, std::move(done)});
    }

   private:
    Net* const net_;
    const uint64_t id_;
  };

  Transport* endpoint(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& e = endpoints_[id];
    if (e == nullptr) e = std::make_unique<Endpoint>(this, id);
    return e.get();
  }
  // Null detaches (the replica is down); waits for a delivery under way.
  void Attach(uint64_t id, ReplicatedStorage* r) {
    std::lock_guard<std::mutex> deliver(deliver_mu_);
    std::lock_guard<std::mutex> lock(mu_);
    if (r == nullptr) {
      attached_.erase(id);
    } else {
      attached_[id] = r;
    }
  }
  // Applied to every copy of a state on its way (null: none).
  void Tamper(std::function<void(std::vector<Write>*)> fn) {
    std::lock_guard<std::mutex> lock(mu_);
    tamper_ = std::move(fn);
  }
  void Cut(uint64_t id, bool cut) {
    std::lock_guard<std::mutex> lock(mu_);
    if (cut) {
      cut_.insert(id);
    } else {
      cut_.erase(id);
    }
  }

 private:
  // A message, or a copy of `to`'s state for `fetched`.
  struct Item {
    uint64_t from, to;
    RaftMessage m;
    Transport::FetchedFn fetched;
    uint64_t bytes_max;
    Transport::ProbedFn probed;  // or what `to`'s log holds
  };
  void Queue(Item item) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(item));
    }
    cv_.notify_all();
  }
  void Run() {
    while (true) {
      Item item;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        item = std::move(queue_.front());
        queue_.pop_front();
      }
      std::lock_guard<std::mutex> deliver(deliver_mu_);
      ReplicatedStorage* target = nullptr;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = attached_.find(item.to);
        if (!cut_.count(item.from) && !cut_.count(item.to) && it != attached_.end()) {
          target = it->second;
        }
      }
      if (item.probed) {
        if (target == nullptr) {
          item.probed(absl::UnavailableError("unreachable"));
        } else {
          const GroupStatus s = target->Status();
          item.probed(PeerLog{s.last_index, s.snapshot_index, target->KnowsDisk(item.from)});
        }
      } else if (item.fetched) {
        absl::StatusOr<std::vector<Write>> copy =
            target == nullptr ? absl::UnavailableError("unreachable")
                              : ReadWholeState(target->source(), item.bytes_max, 0);
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (copy.ok() && tamper_) tamper_(&*copy);
        }
        item.fetched(std::move(copy));
      } else if (target != nullptr) {
        target->Receive(std::move(item.m));
      }
    }
  }

  std::mutex deliver_mu_;  // held while a message is delivered
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::deque<Item> queue_;
  std::map<uint64_t, std::unique_ptr<Endpoint>> endpoints_;
  std::map<uint64_t, ReplicatedStorage*> attached_;
  std::set<uint64_t> cut_;
  std::function<void(std::vector<Write>*)> tamper_;
  std::thread thread_;
};

struct Replica {
  uint64_t id = 0;
  TempDir dir{"atomq_replica_test"};
  std::unique_ptr<Storage> local;
  std::unique_ptr<ReplicatedStorage> group;
};

class Group3 {
 public:
  // `snapshot_entries`, `trailing`: how the replicas compact their logs.
  explicit Group3(uint64_t snapshot_entries = 8192, uint32_t trailing = 1024)
      : snapshot_entries_(snapshot_entries), trailing_(trailing) {
    for (uint64_t id = 1; id <= 3; ++id) {
      replicas_[id].id = id;
      Start(id);
    }
  }
  ~Group3() {
    for (auto& [id, r] : replicas_) Kill(id);
    timers_.Stop();
  }

  // With `join`, a member with an empty disk that waits to be added.
  void Start(uint64_t id, bool join = false) {
    Replica& r = replicas_[id];
    r.id = id;
    r.local = OpenReplicaStore(r.dir.path());
    ReplicatedStorage::Options g;
    g.join = join;
    g.snapshot_entries = snapshot_entries_;
    g.snapshot_trailing = trailing_;
    g.engine.id = id;
    g.engine.address = absl::StrCat("r", id);
    g.engine.seed = uint32_t(id) * 7919;
    g.engine.election_timeout = 200;
    g.engine.heartbeat_timeout = 40;
    for (uint64_t m = 1; m <= 3 && !join; ++m) {
      g.bootstrap.push_back(Member{m, absl::StrCat("r", m), MemberRole::kVoter});
    }
    absl::StatusOr<std::unique_ptr<ReplicatedStorage>> s =
        ReplicatedStorage::Open(g, r.local.get(), net_.endpoint(id), &timers_);
    ASSERT_TRUE(s.ok()) << s.status();
    r.group = std::move(*s);
    net_.Attach(id, r.group.get());
  }

  // As a SIGKILL would: the replica and its store go (what its store holds
  // on disk stays).
  void Kill(uint64_t id) {
    Replica& r = replicas_[id];
    net_.Attach(id, nullptr);
    if (r.group != nullptr) r.group->Stop();
    r.local.reset();  // the writer drains; callbacks find the replica stopped
    r.group.reset();
  }

  uint64_t Leader() {
    return ServingLeader(replicas_.rbegin()->first, [this](uint64_t id) { return at(id); });
  }
  absl::Status Put(uint64_t id, const std::string& key, const std::string& value,
                   int wait_ms = 5000) {
    return PutThrough(at(id), key, value, wait_ms);
  }
  bool WaitApplied(uint64_t id, uint64_t index) { return replication::WaitApplied(at(id), index); }
  ReplicatedStorage* at(uint64_t id) {
    auto it = replicas_.find(id);
    return it == replicas_.end() ? nullptr : it->second.group.get();
  }
  Net& net() { return net_; }
  absl::Status Erase(uint64_t id, const std::string& key) {
    return WriteThrough(at(id), Write{kDataDb, key, "", true});
  }
  // Every key and value of the data sub-database.
  std::map<std::string, std::string> Data(uint64_t id) {
    std::map<std::string, std::string> out;
    EXPECT_TRUE(at(id)
                    ->Scan(kDataDb, "",
                           [&](std::string_view k, std::string_view v) {
                             out.emplace(k, v);
                             return true;
                           })
                    .ok());
    return out;
  }

  std::string Value(uint64_t id, const std::string& key) {
    absl::StatusOr<std::optional<std::string>> v = at(id)->Get(kDataDb, key);
    return v.ok() && v->has_value() ? **v : "(none)";
  }

 private:
  const uint64_t snapshot_entries_;
  const uint32_t trailing_;
  TimerQueue timers_;
  Net net_;
  std::map<uint64_t, Replica> replicas_;
};

TEST(ReplicatedStorageTest, EveryReplicaAppliesWhatTheLeaderCommitted) {
  Group3 g;
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  for (int i = 0; i < 30; ++i) {
    ASSERT_TRUE(g.Put(l, absl::StrCat("k", i), absl::StrCat("v", i)).ok()) << i;
  }
  const uint64_t applied = g.at(l)->Status().applied_index;
  for (uint64_t id = 1; id <= 3; ++id) {
    ASSERT_TRUE(g.WaitApplied(id, applied)) << id;
    EXPECT_EQ(g.Value(id, "k29"), "v29") << id;
    EXPECT_EQ(g.Value(id, "k0"), "v0") << id;
  }
}

TEST(ReplicatedStorageTest, AFollowerRefusesWritesAndNamesTheLeader) {
  Group3 g;
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  ASSERT_TRUE(g.Put(l, "a", "1").ok());
  uint64_t f = l % 3 + 1;
  absl::Status st = g.Put(f, "b", "2");
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_NE(st.message().find(absl::StrCat("member ", l)), std::string::npos) << st;
  EXPECT_EQ(g.Value(l, "b"), "(none)");
}

TEST(ReplicatedStorageTest, AWriteIsAcknowledgedOnlyWithAMajority) {
  Group3 g;
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  // One follower cut: the other makes a majority.
  g.net().Cut(l % 3 + 1, true);
  EXPECT_TRUE(g.Put(l, "one cut", "ok").ok());
  // Both cut: never acknowledged as written (at most refused once the
  // leader steps down).
  g.net().Cut((l + 1) % 3 + 1, true);
  absl::Status st = g.Put(l, "both cut", "x", 1500);
  EXPECT_FALSE(st.ok()) << st;
  g.net().Cut(l % 3 + 1, false);
  g.net().Cut((l + 1) % 3 + 1, false);
  uint64_t l2 = g.Leader();
  ASSERT_NE(l2, 0u);
  EXPECT_TRUE(g.Put(l2, "healed", "ok").ok());
}

TEST(ReplicatedStorageTest, ARestartedFollowerCatchesUpFromItsDisk) {
  Group3 g;
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  ASSERT_TRUE(g.Put(l, "before", "1").ok());
  uint64_t f = l % 3 + 1;
  g.Kill(f);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(g.Put(l, absl::StrCat("while down ", i), "x").ok());
  g.Start(f);
  ASSERT_TRUE(g.WaitApplied(f, g.at(l)->Status().applied_index));
  EXPECT_EQ(g.Value(f, "before"), "1");
  EXPECT_EQ(g.Value(f, "while down 19"), "x");
}

// docs/design.md 10.2, the amnesia guard before the registry: a replica
// remembers, on its own disk, the first disk it heard each member speak
// from, and refuses that member from another disk, across a restart too
// (a member wiped before the leader registered it would otherwise be taken
// back with what it acknowledged forgotten).
TEST(ReplicatedStorageTest, AMemberHeardFromOneDiskIsRefusedFromAnother) {
  Group3 g;
  const uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  const uint64_t f = l % 3 + 1;
  constexpr uint64_t kUnregistered = 99;
  EXPECT_FALSE(g.at(f)->KnowsDisk(kUnregistered));
  EXPECT_TRUE(g.at(f)->CheckPeer(kUnregistered, "disk-a").ok());
  EXPECT_TRUE(g.at(f)->KnowsDisk(kUnregistered));
  absl::Status other = g.at(f)->CheckPeer(kUnregistered, "disk-b");
  EXPECT_EQ(other.code(), absl::StatusCode::kFailedPrecondition) << other;
  EXPECT_NE(other.message().find("heard it from disk-a"), std::string::npos) << other;
  g.Kill(f);
  g.Start(f);
  EXPECT_TRUE(g.at(f)->KnowsDisk(kUnregistered));
  EXPECT_EQ(g.at(f)->CheckPeer(kUnregistered, "disk-b").code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(g.at(f)->CheckPeer(kUnregistered, "disk-a").ok());
}

// docs/design.md 10.2, state transfer: a follower behind the start of the
// leader's compacted log copies a member's whole state, old keys gone,
// then follows the log again, and keeps it all across a restart.
TEST(ReplicatedStorageTest, AFollowerBehindTheCompactedLogCopiesTheWholeState) {
  Group3 g(/*snapshot_entries=*/10, /*trailing=*/5);
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  ASSERT_TRUE(g.Put(l, "kept", "1").ok());
  ASSERT_TRUE(g.Put(l, "erased", "1").ok());
  const uint64_t f = l % 3 + 1;
  ASSERT_TRUE(g.WaitApplied(f, g.at(l)->Status().applied_index));
  ASSERT_EQ(g.Value(f, "erased"), "1");

  g.net().Cut(f, true);
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(g.Put(l, absl::StrCat("k", i), "x").ok()) << i;
  ASSERT_TRUE(g.Erase(l, "erased").ok());
  ASSERT_TRUE(g.Put(l, "kept", "2").ok());
  const GroupStatus before = g.at(l)->Status();
  EXPECT_GT(before.snapshot_index, g.at(f)->Status().applied_index + 5);
  g.net().Cut(f, false);

  ASSERT_TRUE(g.WaitApplied(f, before.applied_index));
  EXPECT_GE(g.at(f)->Status().snapshot_index, before.snapshot_index);
  EXPECT_FALSE(g.at(f)->Status().installing);
  EXPECT_EQ(g.Data(f), g.Data(l));
  EXPECT_EQ(g.Value(f, "erased"), "(none)");
  EXPECT_EQ(g.Value(f, "kept"), "2");

  g.Kill(f);
  g.Start(f);
  EXPECT_EQ(g.Value(f, "kept"), "2");
  EXPECT_EQ(g.Value(f, "erased"), "(none)");
  l = g.Leader();
  ASSERT_NE(l, 0u);
  ASSERT_TRUE(g.Put(l, "after", "3").ok());
  ASSERT_TRUE(g.WaitApplied(f, g.at(l)->Status().applied_index));
  EXPECT_EQ(g.Data(f), g.Data(l));
}

// A copy that is not a whole state at or past the snapshot point is not
// installed: the follower keeps what it had and asks again.
TEST(ReplicatedStorageTest, ACopyWithoutItsVersionOrWithTheLogIsRefused) {
  Group3 g(/*snapshot_entries=*/10, /*trailing=*/5);
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  ASSERT_TRUE(g.Put(l, "old", "1").ok());
  const uint64_t f = l % 3 + 1;
  ASSERT_TRUE(g.WaitApplied(f, g.at(l)->Status().applied_index));
  const uint64_t had = g.at(f)->Status().applied_index;
  int tampered = 0;
  g.net().Tamper([&](std::vector<Write>* copy) {
    if (++tampered % 2 == 0) {
      copy->erase(
          std::remove_if(copy->begin(), copy->end(),
                         [](const Write& w) { return w.db == ReplicatedStorage::kAppliedDb; }),
          copy->end());
    } else {
      copy->push_back(Write{RaftLog::Dbs()[0], "x", "y"});
    }
  });
  g.net().Cut(f, true);
  for (int i = 0; i < 30; ++i) ASSERT_TRUE(g.Put(l, absl::StrCat("k", i), "x").ok());
  g.net().Cut(f, false);
  for (int i = 0; i < 300 && tampered < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GE(tampered, 3);
  EXPECT_TRUE(g.at(f)->Status().installing);
  EXPECT_EQ(g.at(f)->Status().applied_index, had);
  EXPECT_EQ(g.Value(f, "old"), "1");
  EXPECT_EQ(g.Value(f, "k0"), "(none)");
  g.net().Tamper(nullptr);
  ASSERT_TRUE(g.WaitApplied(f, g.at(l)->Status().applied_index));
  EXPECT_EQ(g.Data(f), g.Data(l));
}

TEST(ReplicatedStorageTest, AKilledLeaderIsReplacedAndNothingCommittedIsLost) {
  Group3 g;
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(g.Put(l, absl::StrCat("k", i), "x").ok());
  // The whole group first: a member still starting (waiting to hear from
  // every other one) would leave a single survivor in the group.
  for (uint64_t m = 1; m <= 3; ++m) ASSERT_TRUE(g.WaitApplied(m, g.at(l)->Status().applied_index));
  g.Kill(l);
  uint64_t l2 = g.Leader();
  ASSERT_NE(l2, 0u);
  ASSERT_NE(l2, l);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(g.Value(l2, absl::StrCat("k", i)), "x") << i;
  EXPECT_TRUE(g.Put(l2, "after", "y").ok());
  g.Start(l);
  ASSERT_TRUE(g.WaitApplied(l, g.at(l2)->Status().applied_index));
  EXPECT_EQ(g.Value(l, "after"), "y");
}

TEST(ReplicatedStorageTest, LeadershipIsHandedOverOnRequest) {
  Group3 g;
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  ASSERT_TRUE(g.Put(l, "before", "1").ok());
  const uint64_t to = l % 3 + 1;
  EXPECT_EQ(g.at(to)->Transfer(l).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(g.at(l)->Transfer(to).ok());
  bool moved = false;
  for (int i = 0; i < 100 && !moved; ++i) {
    moved = g.at(to)->Status().serving;
    if (!moved) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(moved);
  EXPECT_TRUE(g.Put(to, "after", "2").ok());
  EXPECT_EQ(g.Value(to, "before"), "1");
}

TEST(ReplicatedStorageTest, ARefusalNeverRunsOnTheSubmittersThread) {
  // A core submits under its own lock and its DoneFn takes that lock: run
  // on the submitter's thread, a refusal would deadlock it.
  Group3 g;
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  absl::Mutex core;
  std::promise<absl::Status> got;
  {
    absl::MutexLock lock(&core);
    g.at(l % 3 + 1)->Submit(Batch{0, {Write{kTestDataDb, "k", "v", false}}}, [&](absl::Status st) {
      absl::MutexLock again(&core);
      got.set_value(st);
    });
  }
  std::future<absl::Status> f = got.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(f.get().code(), absl::StatusCode::kUnavailable);
}

TEST(ReplicatedStorageTest, ANodeBuiltInOneServingTermNeverWritesInAnother) {
  Group3 g;
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  std::promise<absl::Status> stale;
  // Terms count from 1; this one has not begun.
  g.at(l)->SubmitIn(999, Batch{0, {Write{kTestDataDb, "stale", "x", false}}},
                    [&](absl::Status st) { stale.set_value(st); });
  std::future<absl::Status> f = stale.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(f.get().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(g.Put(l, "current", "y").ok());
  g.at(l)->Settle();
  EXPECT_EQ(g.Value(l, "stale"), "(none)");
}

// Changes `r`'s group and waits for the answer.
absl::Status Change(ReplicatedStorage* r, MemberChange change, uint64_t id,
                    const std::string& address = "") {
  std::promise<absl::Status> done;
  r->ChangeMembers(change, Member{id, address, MemberRole::kStandby},
                   [&](absl::Status st) { done.set_value(st); });
  std::future<absl::Status> f = done.get_future();
  if (f.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    return absl::DeadlineExceededError("no answer");
  }
  return f.get();
}

MemberRole RoleOf(ReplicatedStorage* r, uint64_t id) {
  for (const Member& m : r->Members()) {
    if (m.id == id) return m.role;
  }
  return MemberRole::kSpare;
}

// docs/design.md 10.2, replacing a member: a new one joins with an empty
// disk, is added as a standby, caught up, made a voter, and the one it
// replaces removed; it then counts in the majority.
TEST(ReplicatedStorageTest, AJoiningMemberIsAddedPromotedAndCountsOnceAnotherIsRemoved) {
  Group3 g;
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(g.Put(l, absl::StrCat("k", i), "v").ok());
  g.Start(4, /*join=*/true);
  EXPECT_TRUE(g.at(4)->Members().empty());
  EXPECT_EQ(g.at(4)->Status().applied_index, 0u);
  ASSERT_TRUE(Change(g.at(l), MemberChange::kAdd, 4, "r4").ok());
  EXPECT_EQ(RoleOf(g.at(l), 4), MemberRole::kStandby);
  // Refusals change nothing.
  EXPECT_EQ(Change(g.at(l % 3 + 1), MemberChange::kRemove, l).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Change(g.at(l), MemberChange::kRemove, l).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Change(g.at(l), MemberChange::kAdd, 4, "r9").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Change(g.at(l), MemberChange::kAdd, 5, "r4").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Change(g.at(l), MemberChange::kPromote, l % 3 + 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Change(g.at(l), MemberChange::kRemove, 9).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(g.at(l)->Members().size(), 4u);

  // Up to date already, in a group that writes nothing meanwhile: it is
  // still promoted (a catch-up round ends only when the member stores more).
  ASSERT_TRUE(g.WaitApplied(4, g.at(l)->Status().commit_index));
  ASSERT_TRUE(Change(g.at(l), MemberChange::kPromote, 4).ok());
  EXPECT_EQ(RoleOf(g.at(l), 4), MemberRole::kVoter);
  ASSERT_TRUE(g.WaitApplied(4, g.at(l)->Status().commit_index));
  EXPECT_EQ(g.Value(4, "k19"), "v");
  EXPECT_EQ(RoleOf(g.at(4), 4), MemberRole::kVoter);

  // Restarted, every replica reads the members from its log, and whoever
  // leads may change them again: a configuration it applied is committed.
  for (uint64_t id = 1; id <= 4; ++id) g.Kill(id);
  for (uint64_t id = 1; id <= 4; ++id) g.Start(id, /*join=*/id == 4);
  l = g.Leader();
  ASSERT_NE(l, 0u);
  EXPECT_EQ(RoleOf(g.at(l), 4), MemberRole::kVoter);
  const uint64_t follower = l == 4 ? 1 : l % 3 + 1;

  g.Kill(follower);
  ASSERT_TRUE(Change(g.at(l), MemberChange::kRemove, follower).ok());
  EXPECT_EQ(g.at(l)->Members().size(), 3u);
  // Three voters left; with one more down, the other two are the
  // majority, so each must store what commits, member 4 too.
  uint64_t other = 0;
  for (uint64_t id = 1; id <= 4; ++id) {
    if (id != l && id != follower && id != 4) other = id;
  }
  g.Kill(other);
  ASSERT_TRUE(g.Put(l, "two of three", "y").ok());
  ASSERT_TRUE(g.WaitApplied(4, g.at(l)->Status().commit_index));
  EXPECT_EQ(g.Value(4, "two of three"), "y");
}

TEST(ReplicatedStorageTest, AStandbyThatCannotBeReachedIsNotPromoted) {
  Group3 g;
  uint64_t l = g.Leader();
  ASSERT_NE(l, 0u);
  ASSERT_TRUE(Change(g.at(l), MemberChange::kAdd, 4, "r4").ok());  // never started
  EXPECT_EQ(Change(g.at(l), MemberChange::kPromote, 4).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(RoleOf(g.at(l), 4), MemberRole::kStandby);
  // The group still commits, and the next change may go.
  EXPECT_TRUE(g.Put(l, "after", "1").ok());
  EXPECT_TRUE(Change(g.at(l), MemberChange::kRemove, 4).ok());
}

}  // namespace
}  // namespace atomq::replication
