#include "common/reply_table.h"

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace atomq {
namespace {

TEST(ReplyTableTest, EachEntryIsTakenOnce) {
  ReplyTable<std::string> table;
  const uint64_t a = table.Expect("a");
  const uint64_t b = table.Expect("b");
  EXPECT_EQ(a, 1u);
  EXPECT_EQ(b, 2u);
  EXPECT_EQ(table.size(), 2u);
  EXPECT_EQ(table.Take(b), "b");
  EXPECT_EQ(table.Take(b), std::nullopt) << "answered already";
  EXPECT_EQ(table.Take(99), std::nullopt) << "never registered";
  EXPECT_EQ(table.Take(a), "a");
  EXPECT_EQ(table.size(), 0u);
  EXPECT_EQ(table.Expect("c"), 3u) << "ids are not reused";
}

TEST(ReplyTableTest, ManyThreadsGetDistinctIds) {
  ReplyTable<int> table;
  constexpr int kThreads = 4, kEach = 2000;
  std::vector<std::vector<uint64_t>> ids(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const uint64_t id = table.Expect(t);
        ids[t].push_back(id);
        if (i % 2 == 0) {
          EXPECT_EQ(table.Take(id), t);
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  std::set<uint64_t> all;
  for (const auto& v : ids) all.insert(v.begin(), v.end());
  EXPECT_EQ(all.size(), size_t{kThreads * kEach});
  EXPECT_EQ(*all.begin(), 1u);
  EXPECT_EQ(table.size(), size_t{kThreads * kEach / 2});
}

}  // namespace
}  // namespace atomq
