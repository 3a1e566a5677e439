// Random SIGKILLs of any process while clients run transactions: afterwards
// no transaction is half applied, no message is duplicated, and every client
// that was told an outcome sees it. ATOMQ_CHAOS_SECONDS and ATOMQ_CHAOS_SEED
// lengthen or vary the run.
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/process/cluster.h"

namespace atomq::testing {
namespace {

int EnvInt(const char* name, int def) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : def;
}

struct Told {
  std::set<int> participants;  // which participants the txn enqueued on
  int outcome = 0;             // 0 unknown, 1 committed, 2 aborted
};

TEST(ChaosTest, NoTransactionIsHalfAppliedUnderRandomKills) {
  const int seconds = EnvInt("ATOMQ_CHAOS_SECONDS", 8);
  const uint64_t seed = EnvInt("ATOMQ_CHAOS_SEED", 20261123);
  std::printf("chaos: seed %llu, %d s (replay: ATOMQ_CHAOS_SEED=%llu)\n",
              static_cast<unsigned long long>(seed), seconds,
              static_cast<unsigned long long>(seed));
  Cluster c;
  c.StartAll();
  for (int i = 1; i <= 3; ++i) c.CreateQueue(i, "q");

  std::mutex mu;
  std::map<std::string, Told> told;
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int w = 0; w < 4; ++w) {
    clients.emplace_back([&, w] {
      std::mt19937_64 rng(seed * 31 + w);
      for (int n = 0; !stop; ++n) {
        std::string id = absl::StrCat("chaos-", w, "-", n);
        v1::ExecuteRequest req;
        req.set_txn_id(id);
        req.set_protocol(rng() % 2 ? v1::THREE_PC : v1::TWO_PC);
        req.set_timeout_ms(1500);
        Told t;
        for (int i = 1; i <= 3; ++i) {
          if (rng() % 3 == 0 && !(i == 3 && t.participants.empty())) continue;
          t.participants.insert(i);
          v1::Op* op = req.add_ops();
          op->set_participant(c.participant_id(i));
          op->mutable_enqueue()->set_queue("q");
          op->mutable_enqueue()->set_payload(id);
        }
        // Retries with the same id must never apply twice.
        for (int attempt = 0; attempt < 3 && !stop; ++attempt) {
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
          v1::ExecuteResponse resp;
          grpc::Status s = c.coordinator()->Execute(&ctx, req, &resp);
          if (s.ok()) {
            t.outcome = resp.outcome() == v1::COMMITTED ? 1 : 2;
            break;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        std::lock_guard<std::mutex> l(mu);
        told[id] = t;
      }
    });
  }

  std::mt19937_64 rng(seed);
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  int kills = 0;
  while (std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + rng() % 400));
    int victim = rng() % 4;  // 0 = coordinator
    if (victim == 0)
      c.KillCoordinator();
    else
      c.KillParticipant(victim);
    ++kills;
    std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 300));
    if (victim == 0)
      c.StartCoordinator();
    else
      c.StartParticipant(victim);
  }
  stop = true;
  for (auto& t : clients) t.join();

  // Everything up: every prepared transaction must get settled.
  for (int i = 1; i <= 3; ++i) {
    bool settled = false;
    for (int tries = 0; tries < 300 && !settled; ++tries) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      v1::ListParticipantTxnsResponse list;
      settled = c.txn(i)->ListTransactions(&ctx, v1::ListParticipantTxnsRequest(), &list).ok() &&
                list.transactions_size() == 0;
      if (!settled) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_TRUE(settled) << "p" << i << " still holds prepared transactions";
  }

  std::map<std::string, std::set<int>> found;
  for (int i = 1; i <= 3; ++i) {
    std::vector<std::string> payloads = c.Drain(i, "q");
    std::set<std::string> seen;
    for (const std::string& p : payloads) {
      EXPECT_TRUE(seen.insert(p).second) << p << " enqueued twice on p" << i;
      found[p].insert(i);
    }
  }
  int committed = 0, aborted = 0, unknown = 0;
  for (const auto& [id, t] : told) {
    auto it = found.find(id);
    std::set<int> where = it == found.end() ? std::set<int>{} : it->second;
    EXPECT_TRUE(where.empty() || where == t.participants)
        << id << " is half applied: on " << where.size() << " of " << t.participants.size();
    if (t.outcome == 1) {
      EXPECT_EQ(where, t.participants) << id << " was told COMMITTED but is not applied";
      ++committed;
    } else if (t.outcome == 2) {
      EXPECT_TRUE(where.empty()) << id << " was told ABORTED but is applied";
      ++aborted;
    } else {
      ++unknown;
    }
  }
  for (const auto& [id, where] : found) EXPECT_TRUE(told.count(id)) << "unknown payload " << id;
  std::printf("chaos: %d kills, %zu transactions: %d committed, %d aborted, %d unanswered\n", kills,
              told.size(), committed, aborted, unknown);
  EXPECT_GT(committed, 0);
}

}  // namespace
}  // namespace atomq::testing
