#include "common/storage.h"

#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "atomq/v1/records.pb.h"
#include "common/server_util.h"
#include "common/temp_dir.h"
#include "gtest/gtest.h"

namespace atomq {
namespace {

LmdbOptions Options(const std::string& dir, uint64_t map_size_mb = 64) {
  LmdbOptions o;
  o.dir = dir + "/data";  // not yet existing: Open creates it
  o.dbs = {"txn", "meta", "messages"};
  o.map_size_mb = map_size_mb;
  return o;
}

std::unique_ptr<Storage> MustOpen(const LmdbOptions& o) {
  absl::StatusOr<std::unique_ptr<Storage>> s = OpenLmdbStorage(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

Write Put(std::string db, std::string key, std::string value) {
  return Write{std::move(db), std::move(key), std::move(value), false};
}
Write Erase(std::string db, std::string key) {
  return Write{std::move(db), std::move(key), "", true};
}

std::optional<std::string> MustGet(Storage& s, const std::string& db, const std::string& key) {
  absl::StatusOr<std::optional<std::string>> v = s.Get(db, key);
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : std::nullopt;
}

std::vector<std::pair<std::string, std::string>> ScanAll(Storage& s, const std::string& db,
                                                         const std::string& prefix) {
  std::vector<std::pair<std::string, std::string>> out;
  absl::Status st = s.Scan(db, prefix, [&](std::string_view k, std::string_view v) {
    out.emplace_back(std::string(k), std::string(v));
    return true;
  });
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

bool Mentions(const absl::Status& s, const std::string& text) {
  return std::string(s.message()).find(text) != std::string::npos;
}

TEST(StorageTest, PutGetEraseScan) {
  TempDir tmp;
  auto s = MustOpen(Options(tmp.path()));
  ASSERT_NE(s, nullptr);
  const std::string nul_key("k\0x", 3);
  ASSERT_TRUE(
      s->Write(Batch{1,
                     {Put("txn", "a1", "v-a1"), Put("txn", "a2", "v-a2"), Put("txn", "b1", "v-b1"),
                      Put("txn", nul_key, "nul"), Put("meta", "a1", "meta-a1")}})
          .ok());
  EXPECT_EQ(MustGet(*s, "txn", "a1"), "v-a1");
  EXPECT_EQ(MustGet(*s, "txn", nul_key), "nul");
  EXPECT_EQ(MustGet(*s, "txn", "k"), std::nullopt);  // a NUL is part of the key
  EXPECT_EQ(MustGet(*s, "meta", "a1"), "meta-a1");   // dbs are separate
  EXPECT_EQ(MustGet(*s, "messages", "a1"), std::nullopt);

  using KV = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(ScanAll(*s, "txn", "a"), (KV{{"a1", "v-a1"}, {"a2", "v-a2"}}));
  EXPECT_EQ(ScanAll(*s, "txn", "b"), (KV{{"b1", "v-b1"}}));
  EXPECT_EQ(ScanAll(*s, "txn", "c"), KV{});
  EXPECT_EQ(ScanAll(*s, "txn", "zz"), KV{});  // past the last key
  EXPECT_EQ(ScanAll(*s, "txn", std::string("k\0", 2)), (KV{{nul_key, "nul"}}));
  EXPECT_EQ(ScanAll(*s, "txn", "").size(), 4u);
  EXPECT_EQ(ScanAll(*s, "meta", ""), (KV{{"a1", "meta-a1"}}));

  // Early stop.
  int visited = 0;
  ASSERT_TRUE(
      s->Scan("txn", "", [&](std::string_view, std::string_view) { return ++visited < 2; }).ok());
  EXPECT_EQ(visited, 2);

  // Overwrite, erase, erase of a missing key.
  ASSERT_TRUE(
      s->Write(
           Batch{2, {Put("txn", "a1", "v-a1'"), Erase("txn", "a2"), Erase("txn", "never-there")}})
          .ok());
  EXPECT_EQ(MustGet(*s, "txn", "a1"), "v-a1'");
  EXPECT_EQ(MustGet(*s, "txn", "a2"), std::nullopt);
  EXPECT_EQ(ScanAll(*s, "txn", "a"), (KV{{"a1", "v-a1'"}}));

  // Numeric big-endian keys come back in numeric order.
  Batch nums{3, {}};
  for (uint64_t n : {300, 2, 70000, 1}) {
    std::string k(8, '\0');
    for (int i = 0; i < 8; ++i) k[7 - i] = static_cast<char>((n >> (8 * i)) & 0xff);
    nums.writes.push_back(Put("messages", k, std::to_string(n)));
  }
  ASSERT_TRUE(s->Write(nums).ok());
  std::vector<std::string> order;
  for (const auto& kv : ScanAll(*s, "messages", "")) order.push_back(kv.second);
  EXPECT_EQ(order, (std::vector<std::string>{"1", "2", "300", "70000"}));
}

// A reader sees the store as it was when it began, across sub-databases,
// while writes go on; a clear write empties one sub-database only.
TEST(StorageTest, AReaderSeesOneVersionAndAClearEmptiesOneSubDatabase) {
  TempDir tmp;
  auto s = MustOpen(Options(tmp.path()));
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(s->Write(Batch{1,
                             {Put("txn", "a", "1"), Put("txn", "b", "2"), Put("meta", "m", "3"),
                              Put("messages", "x", "4")}})
                  .ok());
  absl::StatusOr<std::unique_ptr<StoreReader>> reader = s->Read({"meta"});
  ASSERT_TRUE(reader.ok()) << reader.status();
  // Written after the reader began: not part of what it reads.
  ASSERT_TRUE(s->Write(Batch{2, {Put("txn", "c", "5"), Erase("messages", "x")}}).ok());
  std::vector<Write> got;
  int pieces = 0;
  for (bool more = true; more; ++pieces) {
    absl::StatusOr<bool> next = (*reader)->Next(1, &got);  // one record a piece
    ASSERT_TRUE(next.ok()) << next.status();
    more = *next;
  }
  std::vector<std::string> seen;
  for (const Write& w : got) seen.push_back(absl::StrCat(w.db, "/", w.key, "=", w.value));
  // Sub-databases in name order, keys in order; "meta" left out.
  EXPECT_EQ(seen, (std::vector<std::string>{"messages/x=4", "txn/a=1", "txn/b=2"}));
  EXPECT_GE(pieces, 3);
  reader->reset();

  Write clear;
  clear.db = "txn";
  clear.clear = true;
  ASSERT_TRUE(s->Write(Batch{3, {clear, Put("txn", "d", "6")}}).ok());
  using KV = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(ScanAll(*s, "txn", ""), (KV{{"d", "6"}}));
  EXPECT_EQ(MustGet(*s, "meta", "m"), "3");
  EXPECT_EQ(s->Dbs(), (std::vector<std::string>{"txn", "meta", "messages"}));
}

// A damaged record is never taken for a missing one: for an outcome that
// would presume the abort of a committed transaction.
TEST(StorageDeathTest, FindRecordStopsOnARecordItCannotRead) {
  TempDir tmp;
  auto s = MustOpen(Options(tmp.path()));
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(s->Write(Batch{1, {Put("txn", "t1", "\xff\xfe not a record")}}).ok());
  EXPECT_EQ(FindRecord<v1::OutcomeRecord>(s.get(), "txn", "t2"), std::nullopt);
  EXPECT_DEATH(FindRecord<v1::OutcomeRecord>(s.get(), "txn", "t1"), "cannot read a record in txn");
}

TEST(StorageTest, BadWritesFailTheirBatchOnly) {
  TempDir tmp;
  auto s = MustOpen(Options(tmp.path()));
  ASSERT_NE(s, nullptr);

  absl::Status st = s->Write(Batch{1, {Put("txn", "ok", "1"), Put("nope", "k", "v")}});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(st, "nope")) << st;
  st = s->Write(Batch{2, {Put("txn", "ok", "1"), Put("txn", std::string(600, 'k'), "v")}});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(st, "600 bytes")) << st;
  st = s->Write(Batch{3, {Put("txn", "ok", "1"), Put("txn", "", "v")}});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MustGet(*s, "txn", "ok"), std::nullopt);  // none of them landed

  EXPECT_EQ(s->Get("nope", "k").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s->Scan("nope", "", [](std::string_view, std::string_view) { return true; }).code(),
            absl::StatusCode::kInvalidArgument);

  // A bad batch amid good ones in one group: only it fails.
  std::vector<absl::Status> results(3);
  absl::Notification done;
  std::atomic<int> left{3};
  auto cb = [&](int i) {
    return [&, i](absl::Status r) {
      results[i] = r;
      if (--left == 0) done.Notify();
    };
  };
  s->Submit(Batch{10, {Put("txn", "g1", "1")}}, cb(0));
  s->Submit(Batch{11, {Put("txn", "bad1", "1"), Put("txn", std::string(512, 'x'), "v")}}, cb(1));
  s->Submit(Batch{12, {Put("txn", "g2", "2")}}, cb(2));
  done.WaitForNotification();
  EXPECT_TRUE(results[0].ok()) << results[0];
  EXPECT_EQ(results[1].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(results[2].ok()) << results[2];
  EXPECT_EQ(MustGet(*s, "txn", "g1"), "1");
  EXPECT_EQ(MustGet(*s, "txn", "bad1"), std::nullopt);
  EXPECT_EQ(MustGet(*s, "txn", "g2"), "2");
  EXPECT_EQ(s->Stats().failures, 4u);
  EXPECT_EQ(s->Stats().batches, 2u);
}

TEST(StorageTest, ReopenKeepsAcknowledgedWrites) {
  TempDir tmp;
  LmdbOptions o = Options(tmp.path());
  {
    auto s = MustOpen(o);
    ASSERT_NE(s, nullptr);
    for (int i = 0; i < 50; ++i) {
      ASSERT_TRUE(
          s->Write(Batch{uint64_t(i), {Put("txn", absl::StrCat("k", i), absl::StrCat("v", i))}})
              .ok());
    }
    ASSERT_TRUE(s->Write(Batch{99, {Erase("txn", "k7")}}).ok());
  }
  auto s = MustOpen(o);
  ASSERT_NE(s, nullptr);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(MustGet(*s, "txn", absl::StrCat("k", i)),
              i == 7 ? std::nullopt : std::optional<std::string>(absl::StrCat("v", i)));
  }
  EXPECT_EQ(ScanAll(*s, "txn", "").size(), 49u);
}

TEST(StorageTest, DestructorDrainsPendingBatches) {
  TempDir tmp;
  LmdbOptions o = Options(tmp.path());
  std::atomic<int> ok{0};
  constexpr int kBatches = 500;
  {
    auto s = MustOpen(o);
    ASSERT_NE(s, nullptr);
    for (int i = 0; i < kBatches; ++i) {
      s->Submit(Batch{uint64_t(i), {Put("txn", absl::StrCat("k", i), "v")}}, [&](absl::Status st) {
        if (st.ok()) ok++;
      });
    }
  }  // no wait: the destructor must finish them
  EXPECT_EQ(ok.load(), kBatches);
  auto s = MustOpen(o);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(ScanAll(*s, "txn", "k").size(), size_t{kBatches});
}

TEST(StorageTest, GroupCommit) {
  TempDir tmp;
  LmdbOptions o = Options(tmp.path());
  constexpr int kThreads = 16;
  constexpr int kPerThread = 200;
  constexpr int kBatches = kThreads * kPerThread;
  {
    auto s = MustOpen(o);
    ASSERT_NE(s, nullptr);
    std::vector<std::thread> threads;
    std::atomic<int> out_of_order{0};
    std::atomic<int> failed{0};
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        absl::Mutex mu;
        int completed = 0;
        for (int i = 0; i < kPerThread; ++i) {
          s->Submit(Batch{uint64_t(i),
                          {Put("txn", absl::StrCat("t", t, ":", i), absl::StrCat(t * i)),
                           Put("meta", absl::StrCat("last", t), absl::StrCat(i))}},
                    [&, i](absl::Status st) {
                      absl::MutexLock l(&mu);
                      if (!st.ok()) failed++;
                      if (completed != i) out_of_order++;  // done in submit order
                      completed++;
                    });
        }
        absl::MutexLock l(&mu);
        auto all_done = [&]() -> bool { return completed == kPerThread; };
        mu.Await(absl::Condition(&all_done));
      });
    }
    for (std::thread& th : threads) th.join();
    EXPECT_EQ(failed.load(), 0);
    EXPECT_EQ(out_of_order.load(), 0);
    StorageStats stats = s->Stats();
    EXPECT_EQ(stats.batches, uint64_t{kBatches});
    EXPECT_EQ(stats.failures, 0u);
    EXPECT_GE(stats.commits, 1u);
    EXPECT_LT(stats.commits, uint64_t{kBatches / 4}) << "no group commit";
    std::printf("%d batches in %llu commits\n", kBatches,
                static_cast<unsigned long long>(stats.commits));
  }
  auto s = MustOpen(o);
  ASSERT_NE(s, nullptr);
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      ASSERT_EQ(MustGet(*s, "txn", absl::StrCat("t", t, ":", i)), absl::StrCat(t * i));
    }
    // Batches of one thread applied in submit order: the last one wins.
    EXPECT_EQ(MustGet(*s, "meta", absl::StrCat("last", t)), absl::StrCat(kPerThread - 1));
  }
  EXPECT_EQ(ScanAll(*s, "txn", "").size(), size_t{kBatches});
}

TEST(StorageTest, SynchronousWritersShareCommits) {
  TempDir tmp;
  auto s = MustOpen(Options(tmp.path()));
  ASSERT_NE(s, nullptr);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 40;
  std::vector<std::thread> threads;
  std::atomic<int> failed{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        if (!s->Write(Batch{0, {Put("txn", absl::StrCat(t, ":", i), "v")}}).ok()) failed++;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(s->Stats().batches, uint64_t{kThreads * kPerThread});
  EXPECT_LE(s->Stats().commits, s->Stats().batches);
}

TEST(StorageTest, MapFullFailsOnlyTheBatchThatDoesNotFit) {
  TempDir tmp;
  LmdbOptions o = Options(tmp.path(), /*map_size_mb=*/1);
  const std::string value(3000, 'v');
  int full_at = -1;
  {
    auto s = MustOpen(o);
    ASSERT_NE(s, nullptr);
    absl::Status st;
    for (int b = 0; b < 1000; ++b) {
      Batch batch{uint64_t(b), {}};
      for (int i = 0; i < 8; ++i) {
        batch.writes.push_back(Put("txn", absl::StrCat("b", b, "/", i), value));
      }
      st = s->Write(std::move(batch));
      if (!st.ok()) {
        full_at = b;
        break;
      }
    }
    ASSERT_GT(full_at, 0) << "never filled the map";
    EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
    EXPECT_TRUE(Mentions(st, "map is full")) << st;
    EXPECT_TRUE(Mentions(st, "MDB_MAP_FULL")) << st;
    std::printf("batch %d: %s\n", full_at, st.ToString().c_str());

    // Still serving: reads work, the failed batch is wholly absent.
    for (int i = 0; i < 8; ++i) {
      EXPECT_EQ(MustGet(*s, "txn", absl::StrCat("b", full_at, "/", i)), std::nullopt);
    }
    EXPECT_EQ(MustGet(*s, "txn", "b0/0"), value);

    // A too-big batch between two small ones in one group: only it fails.
    std::vector<absl::Status> results(3);
    absl::Notification done;
    std::atomic<int> left{3};
    auto cb = [&](int i) {
      return [&, i](absl::Status r) {
        results[i] = r;
        if (--left == 0) done.Notify();
      };
    };
    s->Submit(Batch{1, {Erase("txn", "b0/0")}}, cb(0));
    s->Submit(Batch{2, {Erase("txn", "b0/1"), Put("txn", "huge", std::string(2 << 20, 'h'))}},
              cb(1));
    s->Submit(Batch{3, {Erase("txn", "b0/2")}}, cb(2));
    done.WaitForNotification();
    EXPECT_EQ(results[1].code(), absl::StatusCode::kResourceExhausted) << results[1];
    if (results[0].ok()) {
      EXPECT_EQ(MustGet(*s, "txn", "b0/0"), std::nullopt);
    }
    EXPECT_EQ(MustGet(*s, "txn", "b0/1"), value);  // its erase undone
    EXPECT_EQ(MustGet(*s, "txn", "huge"), std::nullopt);
    if (results[2].ok()) {
      EXPECT_EQ(MustGet(*s, "txn", "b0/2"), std::nullopt);
    }
    EXPECT_GE(s->Stats().failures, 2u);
  }
  // After a reopen: every acknowledged batch, nothing of the failed one.
  auto s = MustOpen(o);
  ASSERT_NE(s, nullptr);
  for (int b = 0; b < full_at; ++b) {
    for (int i = (b == 0 ? 3 : 0); i < 8; ++i) {
      ASSERT_EQ(MustGet(*s, "txn", absl::StrCat("b", b, "/", i)), value) << b << "/" << i;
    }
  }
  EXPECT_EQ(ScanAll(*s, "txn", absl::StrCat("b", full_at, "/")).size(), 0u);
  EXPECT_EQ(MustGet(*s, "txn", "b0/1"), value);
}

TEST(StorageTest, LazyBatchSharesTheNextSyncedCommit) {
  TempDir tmp;
  LmdbOptions o = Options(tmp.path());
  o.lazy_delay_ms = 5000;  // longer than the test: only the synced batch can release it
  std::unique_ptr<Storage> s = MustOpen(o);
  ASSERT_NE(s, nullptr);
  uint64_t before = s->Stats().commits;
  absl::Notification lazy_done;
  Batch lazy;
  lazy.sync = false;
  lazy.writes.push_back(Put("txn", "end", "lazy"));
  s->Submit(std::move(lazy), [&](absl::Status st) {
    EXPECT_TRUE(st.ok()) << st;
    lazy_done.Notify();
  });
  EXPECT_FALSE(lazy_done.WaitForNotificationWithTimeout(absl::Milliseconds(100)));
  Batch forced;
  forced.writes.push_back(Put("txn", "commit", "forced"));
  ASSERT_TRUE(s->Write(std::move(forced)).ok());
  ASSERT_TRUE(lazy_done.WaitForNotificationWithTimeout(absl::Seconds(2)));
  EXPECT_EQ(s->Stats().commits - before, 1u);
  EXPECT_EQ(MustGet(*s, "txn", "end"), std::optional<std::string>("lazy"));
}

TEST(StorageTest, LazyBatchAloneIsSyncedAfterItsDelay) {
  TempDir tmp;
  LmdbOptions o = Options(tmp.path());
  o.lazy_delay_ms = 50;
  std::unique_ptr<Storage> s = MustOpen(o);
  ASSERT_NE(s, nullptr);
  absl::Time start = absl::Now();
  Batch lazy;
  lazy.sync = false;
  lazy.writes.push_back(Put("txn", "end", "lazy"));
  ASSERT_TRUE(s->Write(std::move(lazy)).ok());
  absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, absl::Milliseconds(40));
  EXPECT_LT(took, absl::Seconds(2));
  s.reset();
  s = MustOpen(o);
  EXPECT_EQ(MustGet(*s, "txn", "end"), std::optional<std::string>("lazy"));
}

// A deferred batch waits for its submitter's Drive(), which writes it on
// the calling thread: no hand-off to the writer thread and back.
TEST(StorageTest, DriveWritesDeferredBatchesOnTheCallingThread) {
  TempDir tmp;
  std::unique_ptr<Storage> s = MustOpen(Options(tmp.path()));
  ASSERT_NE(s, nullptr);
  std::atomic<bool> done{false};
  std::thread::id done_on;
  Batch b;
  b.writes.push_back(Put("txn", "k", "v"));
  s->SubmitDeferred(std::move(b), [&](absl::Status st) {
    EXPECT_TRUE(st.ok()) << st;
    done_on = std::this_thread::get_id();
    done = true;
  });
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_FALSE(done) << "the writer thread took a deferred batch nobody handed over";
  s->Drive();
  ASSERT_TRUE(done);  // before Drive() returned
  EXPECT_EQ(done_on, std::this_thread::get_id());
  EXPECT_EQ(MustGet(*s, "txn", "k"), std::optional<std::string>("v"));
  EXPECT_EQ(s->Stats().commits, 1u);
}

// What a DoneFn submits while Drive() writes goes to the writer thread,
// after the group, so order holds and the caller is held for one commit.
TEST(StorageTest, BatchesSubmittedDuringDriveGoToTheWriterInOrder) {
  TempDir tmp;
  std::unique_ptr<Storage> s = MustOpen(Options(tmp.path()));
  ASSERT_NE(s, nullptr);
  absl::Notification second_done;
  std::thread::id second_on;
  Batch first;
  first.writes.push_back(Put("txn", "k", "first"));
  s->SubmitDeferred(std::move(first), [&](absl::Status st) {
    ASSERT_TRUE(st.ok()) << st;
    Batch second;
    second.writes.push_back(Put("txn", "k", "second"));
    s->SubmitDeferred(std::move(second), [&](absl::Status st2) {
      EXPECT_TRUE(st2.ok()) << st2;
      second_on = std::this_thread::get_id();
      second_done.Notify();
    });
    s->Drive();  // a group is being written: returns at once
    EXPECT_FALSE(second_done.HasBeenNotified());
  });
  s->Drive();
  ASSERT_TRUE(second_done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_NE(second_on, std::this_thread::get_id());
  EXPECT_EQ(MustGet(*s, "txn", "k"), std::optional<std::string>("second"));
}

// Drive() leaves lazy batches to the writer thread, which waits for a
// synced one to share the fsync (or for its delay).
TEST(StorageTest, DriveHandsLazyBatchesToTheWriter) {
  TempDir tmp;
  LmdbOptions o = Options(tmp.path());
  o.lazy_delay_ms = 50;
  std::unique_ptr<Storage> s = MustOpen(o);
  ASSERT_NE(s, nullptr);
  absl::Notification done;
  Batch lazy;
  lazy.sync = false;
  lazy.writes.push_back(Put("txn", "end", "lazy"));
  s->SubmitDeferred(std::move(lazy), [&](absl::Status st) {
    EXPECT_TRUE(st.ok()) << st;
    done.Notify();
  });
  s->Drive();
  EXPECT_FALSE(done.HasBeenNotified());
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(MustGet(*s, "txn", "end"), std::optional<std::string>("lazy"));
}

// Deferred batches nobody drove are still written before the env closes.
TEST(StorageTest, DestructorWritesUndrivenDeferredBatches) {
  TempDir tmp;
  LmdbOptions o = Options(tmp.path());
  std::atomic<int> ok{0};
  {
    std::unique_ptr<Storage> s = MustOpen(o);
    ASSERT_NE(s, nullptr);
    for (int i = 0; i < 3; ++i) {
      Batch b;
      b.writes.push_back(Put("txn", absl::StrCat("k", i), "v"));
      s->SubmitDeferred(std::move(b), [&](absl::Status st) { ok += st.ok(); });
    }
  }
  EXPECT_EQ(ok, 3);
  std::unique_ptr<Storage> s = MustOpen(o);
  EXPECT_EQ(ScanAll(*s, "txn", "").size(), 3u);
}

// The group hook wraps every DoneFn of a group, once per group.
TEST(StorageTest, GroupHookWrapsEachGroupsReports) {
  TempDir tmp;
  std::unique_ptr<Storage> s = MustOpen(Options(tmp.path()));
  ASSERT_NE(s, nullptr);
  int hooks = 0;
  bool inside = false;
  std::vector<bool> reported_inside;
  s->SetGroupHook([&](const std::function<void()>& run) {
    ++hooks;
    inside = true;
    run();
    inside = false;
  });
  for (int i = 0; i < 3; ++i) {
    Batch b;
    b.writes.push_back(Put("txn", absl::StrCat("k", i), "v"));
    s->SubmitDeferred(std::move(b), [&](absl::Status st) {
      EXPECT_TRUE(st.ok()) << st;
      reported_inside.push_back(inside);
    });
  }
  s->Drive();
  EXPECT_EQ(hooks, 1);
  EXPECT_EQ(reported_inside, std::vector<bool>({true, true, true}));
  EXPECT_EQ(s->Stats().commits, 1u);
}

TEST(StorageTest, SecondOpenOfALockedDirFails) {
  TempDir tmp;
  LmdbOptions o = Options(tmp.path());
  {
    auto first = MustOpen(o);
    ASSERT_NE(first, nullptr);
    absl::StatusOr<std::unique_ptr<Storage>> second = OpenLmdbStorage(o);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(Mentions(second.status(), "in use by another process")) << second.status();
    EXPECT_TRUE(Mentions(second.status(), o.dir)) << second.status();
  }
  EXPECT_NE(MustOpen(o), nullptr);  // the lock went with the first
}

TEST(StorageTest, UnusableDirFails) {
  TempDir tmp;
  const std::string file = tmp.path() + "/plain-file";
  std::ofstream(file) << "not a directory";

  LmdbOptions o = Options(tmp.path());
  o.dir = file + "/data";
  absl::StatusOr<std::unique_ptr<Storage>> s = OpenLmdbStorage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Mentions(s.status(), o.dir)) << s.status();
  EXPECT_TRUE(Mentions(s.status(), "Not a directory")) << s.status();

  o.dir = file;
  s = OpenLmdbStorage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Mentions(s.status(), file)) << s.status();
}

// Writes a few values so that the data file has pages beyond the meta pages.
void Fill(const LmdbOptions& o) {
  auto s = MustOpen(o);
  ASSERT_NE(s, nullptr);
  Batch b;
  for (int i = 0; i < 200; ++i) {
    b.writes.push_back(Put("messages", "k" + std::to_string(i), std::string(1000, 'v')));
  }
  ASSERT_TRUE(s->Write(std::move(b)).ok());
}

TEST(StorageTest, NewDirAndFilesAreTheOwnersOnly) {
  TempDir tmp;
  LmdbOptions o = Options(tmp.path());
  Fill(o);
  namespace fs = std::filesystem;
  EXPECT_EQ(fs::status(o.dir).permissions(), fs::perms::owner_all);
  for (const char* f : {"/data.mdb", "/lock.mdb", "/atomq.lock"}) {
    EXPECT_EQ(fs::status(o.dir + f).permissions(), fs::perms::owner_read | fs::perms::owner_write)
        << f;
  }
}

TEST(StorageTest, EmptyDataFileIsRefusedNotStartedAsNew) {
  TempDir tmp;
  LmdbOptions o = Options(tmp.path());
  Fill(o);
  std::filesystem::resize_file(o.dir + "/data.mdb", 0);
  absl::StatusOr<std::unique_ptr<Storage>> s = OpenLmdbStorage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Mentions(s.status(), "is empty")) << s.status();
  EXPECT_EQ(std::filesystem::file_size(o.dir + "/data.mdb"), 0u) << "left as found";
}

TEST(StorageTest, TruncatedDataFileIsRefusedBeforeAnyRead) {
  TempDir tmp;
  LmdbOptions o = Options(tmp.path());
  Fill(o);
  const std::string file = o.dir + "/data.mdb";
  const uintmax_t size = std::filesystem::file_size(file);
  std::filesystem::resize_file(file, size / 2);
  absl::StatusOr<std::unique_ptr<Storage>> s = OpenLmdbStorage(o);  // no SIGBUS
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Mentions(s.status(), "is truncated")) << s.status();
}

TEST(StorageTest, MissingDataFileIsRefusedUnlessCreating) {
  TempDir tmp;
  LmdbOptions o = Options(tmp.path());
  Fill(o);
  std::filesystem::remove(o.dir + "/data.mdb");
  o.create = false;
  absl::StatusOr<std::unique_ptr<Storage>> s = OpenLmdbStorage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Mentions(s.status(), "has no data file")) << s.status();
  EXPECT_FALSE(LmdbDataExists(o.dir));
  o.create = true;
  EXPECT_NE(MustOpen(o), nullptr);
  EXPECT_TRUE(LmdbDataExists(o.dir));
}

}  // namespace
}  // namespace atomq
