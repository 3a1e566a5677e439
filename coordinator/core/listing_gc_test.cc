// Transaction info, listing, the finished cache and record collection.

#include <algorithm>
#include <string>
#include <vector>

#include "coordinator/core/coordinator_core_test_util.h"

namespace atomq::coordinator {
namespace {

// One page of ListTransactions, at most `limit` (0: the most a page holds).
std::vector<v1::TransactionInfo> List(const CoordinatorCore& c, std::vector<v1::TxnState> states,
                                      uint32_t limit) {
  v1::ListTransactionsRequest req;
  for (v1::TxnState s : states) req.add_states(s);
  req.set_limit(limit);
  absl::StatusOr<v1::ListTransactionsResponse> page = c.ListTransactions(req, 1000);
  EXPECT_TRUE(page.ok()) << page.status();
  if (!page.ok()) return {};
  return {page->transactions().begin(), page->transactions().end()};
}

// ------------------------------------------------------ Get / List / cache

TEST_F(CoordinatorCoreTest, GetAndListTransactions) {
  now = 1'700'000'000'000;
  core().Execute(1, Req("prep", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  core().OnPrepareReply("prep", "p1", Vote(v1::YES), now);
  Take();
  CommitAll(2, Req("done", {Enq("p1", "q", "x")}), {{"p1", {3}}});
  core().Execute(3, Req("abrt", {Enq("p1", "q", "a"), Enq("p3", "q", "b")}), now);
  core().OnPrepareReply("abrt", "p3", Vote(v1::NO, "no room"), now);
  Durable(Take().persist.at(0));
  Take();

  absl::StatusOr<v1::TransactionInfo> info = core().GetTransaction("prep");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::PREPARING);
  EXPECT_EQ(info->outcome(), v1::PENDING);
  EXPECT_EQ(info->protocol(), v1::TWO_PC);
  EXPECT_EQ(info->created_unix_ms(), now);
  ASSERT_EQ(info->participants_size(), 2);
  EXPECT_EQ(info->participants(0).participant(), "p1");
  EXPECT_EQ(info->participants(0).state(), v1::PREPARED);
  EXPECT_EQ(info->participants(1).state(), v1::PREPARING);
  EXPECT_FALSE(info->participants(0).acknowledged());
  ASSERT_EQ(info->ops_size(), 2);
  EXPECT_EQ(info->ops(1).enqueue().payload(), "b");

  info = core().GetTransaction("abrt");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::STATE_ABORTED);
  EXPECT_EQ(info->outcome(), v1::ABORTED);
  EXPECT_EQ(info->reason(), "p3 voted NO: no room");
  EXPECT_EQ(info->participants(0).state(), v1::UNKNOWN);  // never voted; owes an Abort ack
  EXPECT_FALSE(info->participants(0).acknowledged());
  EXPECT_EQ(info->participants(1).state(), v1::STATE_ABORTED);

  info = core().GetTransaction("done");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::ENDED);
  EXPECT_EQ(info->outcome(), v1::COMMITTED);
  EXPECT_EQ(info->results(0).sequence(), 3u);
  EXPECT_EQ(info->participants(0).state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(info->participants(0).acknowledged());

  EXPECT_EQ(core().GetTransaction("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(core().GetTransaction("bad id!").status().code(), absl::StatusCode::kInvalidArgument);

  std::vector<v1::TransactionInfo> list = List(core(), {}, 0);
  ASSERT_EQ(list.size(), 2u);  // not ENDED, in id order
  EXPECT_EQ(list[0].txn_id(), "abrt");
  EXPECT_EQ(list[1].txn_id(), "prep");
  EXPECT_EQ(list[1].ops_size(), 0);  // ops only from GetTransaction
  list = List(core(), {v1::ENDED}, 0);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].txn_id(), "done");
  list = List(core(), {v1::PREPARING, v1::STATE_ABORTED, v1::ENDED}, 2);
  EXPECT_EQ(list.size(), 2u);
}

TEST_F(CoordinatorCoreTest, ListTransactionsPagesInIdOrderAndSaysWhenMoreExist) {
  for (const char* id : {"t3", "t1", "t5", "t2", "t4"}) {
    core().Execute(1, Req(id, {Enq("p1", "q", "x")}), now);
  }
  Take();
  v1::ListTransactionsRequest req;
  req.set_limit(2);
  std::vector<std::string> seen;
  int pages = 0;
  for (;;) {
    absl::StatusOr<v1::ListTransactionsResponse> page = core().ListTransactions(req, 1000);
    ASSERT_TRUE(page.ok()) << page.status();
    ASSERT_LE(page->transactions_size(), 2);
    for (const v1::TransactionInfo& t : page->transactions()) seen.push_back(t.txn_id());
    pages++;
    if (page->next_page_token().empty()) break;
    EXPECT_EQ(page->next_page_token(), seen.back());
    req.set_page_token(page->next_page_token());
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"t1", "t2", "t3", "t4", "t5"}));
  EXPECT_EQ(pages, 3);
  // A page exactly full with nothing after it says there is no more.
  req.set_page_token("t3");
  absl::StatusOr<v1::ListTransactionsResponse> last = core().ListTransactions(req, 1000);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->transactions_size(), 2);
  EXPECT_TRUE(last->next_page_token().empty());
  // The server's bound cuts a larger (or absent) limit.
  req.Clear();
  req.set_limit(100);
  absl::StatusOr<v1::ListTransactionsResponse> cut = core().ListTransactions(req, 3);
  ASSERT_TRUE(cut.ok());
  EXPECT_EQ(cut->transactions_size(), 3);
  EXPECT_EQ(cut->next_page_token(), "t3");
  req.set_page_token("not an id!");
  EXPECT_EQ(core().ListTransactions(req, 3).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CoordinatorCoreTest, FinishedCacheEvictsOldestThenUsesTheView) {
  config.finished_cache_max = 1;
  CommitAll(1, Req("a", {Enq("p1", "q", "x")}), {{"p1", {1}}});
  CommitAll(2, Req("b", {Enq("p1", "q", "y")}), {{"p1", {2}}});
  // "a" left memory; the view still answers.
  EXPECT_TRUE(List(core(), {v1::ENDED}, 0).size() == 1u);
  EXPECT_EQ(List(core(), {v1::ENDED}, 0)[0].txn_id(), "b");
  absl::StatusOr<v1::TransactionInfo> info = core().GetTransaction("a");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::ENDED);
  EXPECT_EQ(info->outcome(), v1::COMMITTED);
  EXPECT_EQ(info->results(0).sequence(), 1u);
  core().Execute(3, Req("a", {Enq("p1", "q", "x")}), now);
  Output o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{1}));
  core().Execute(4, Req("a", {Enq("p1", "q", "other")}), now);
  EXPECT_EQ(Take().replies.at(0).status.code(), absl::StatusCode::kAlreadyExists);
}

// ------------------------------------------------------- record collection

TEST_F(CoordinatorCoreTest, CollectRecordsErasesEndedRecordsPastRetentionThroughTheCore) {
  config.retention_ms = 1000;
  const int64_t decided = now;
  CommitAll(1, Req("t1", {Enq("p1", "q", "a")}), {{"p1", {5}}});
  ASSERT_EQ(view.records.at("t1").state(), v1::ENDED);
  const std::string key = EncodeU64(static_cast<uint64_t>(decided)) + "t1";

  // Inside the window: nothing goes.
  EXPECT_EQ(core().CollectRecords({key}, decided + 1000), 0u);
  EXPECT_TRUE(Take().persist.empty());

  // Past it: one lazy batch erases the key and the record.
  EXPECT_EQ(core().CollectRecords({key}, decided + 1001), 1u);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  const Batch b = o.persist[0];
  EXPECT_FALSE(b.sync);
  ASSERT_EQ(b.writes.size(), 2u);
  EXPECT_TRUE(b.writes[0].erase && b.writes[0].db == kEndedDb && b.writes[0].key == key);
  EXPECT_TRUE(b.writes[1].erase && b.writes[1].db == kTxnDb && b.writes[1].key == "t1");

  // While that batch is in flight its key is not taken again.
  EXPECT_EQ(core().CollectRecords({key}, decided + 1002), 0u);
  EXPECT_TRUE(Take().persist.empty());
  EXPECT_EQ(core().records_erased(), 0u);
  Durable(b);
  EXPECT_EQ(core().records_erased(), 1u);
  EXPECT_EQ(view.records.count("t1"), 0u);
}

TEST_F(CoordinatorCoreTest, CollectRecordsKeepsNewerAndRunningRecords) {
  config.retention_ms = 1000;
  CommitAll(1, Req("t1", {Enq("p1", "q", "a")}), {{"p1", {5}}});
  // A key older than t1's record (an earlier run of the id): only the key goes.
  const std::string stale = EncodeU64(static_cast<uint64_t>(now - 5000)) + "t1";
  // t2 is still preparing: its record is not an ended one.
  core().Execute(2, Req("t2", {Enq("p1", "q", "b")}), now);
  Take();
  const std::string running = EncodeU64(static_cast<uint64_t>(now - 5000)) + "t2";
  const std::string odd = "12345678";  // no id: not a key this coordinator writes
  EXPECT_EQ(core().CollectRecords({odd, stale, running}, now), 3u);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Strs erased;
  for (const Write& w : o.persist[0].writes) {
    EXPECT_TRUE(w.erase);
    erased.push_back(w.db + "/" + w.key);
  }
  EXPECT_EQ(erased, (Strs{std::string(kEndedDb) + "/" + odd, std::string(kEndedDb) + "/" + stale,
                          std::string(kEndedDb) + "/" + running}));

  // A failed batch leaves the keys for the next collection.
  core().OnPersisted(o.persist[0].token, absl::UnavailableError("disk full"), now);
  o = Take();
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_TRUE(Contains(o.log[0], "erasing finished records failed"));
  EXPECT_EQ(core().records_erased(), 0u);
  EXPECT_EQ(core().CollectRecords({stale}, now), 1u);
  EXPECT_EQ(Take().persist.size(), 1u);
  EXPECT_EQ(view.records.count("t1"), 1u);
}

// QueryState on ids nobody began presumes abort and records it, so that the
// id can never commit later; the record ends at once (nobody is owed an
// outcome) and is collected after retention like any ended one. So a
// stranger's questions about made-up ids cannot grow storage for good.
TEST_F(CoordinatorCoreTest, PresumedAbortsOfUnknownIdsAreCollectedAfterRetention) {
  config.retention_ms = 1000;
  const int64_t asked = now;
  for (int i = 0; i < 20; ++i) core().QueryState(i + 1, "made-up-" + std::to_string(i), now);
  std::vector<std::string> keys;
  size_t answered = 0;
  for (Output o = Take(); !o.empty(); o = Take()) {
    answered += o.state_replies.size();
    for (const StateReply& r : o.state_replies) EXPECT_EQ(r.state, v1::STATE_ABORTED);
    for (const Batch& b : o.persist) {
      for (const Write& w : b.writes) {
        if (w.db == kEndedDb) keys.push_back(w.key);
      }
      Durable(b);
    }
  }
  EXPECT_EQ(answered, 20u);
  ASSERT_EQ(keys.size(), 20u);
  EXPECT_EQ(view.records.size(), 20u);
  for (const auto& [id, r] : view.records) EXPECT_EQ(r.state(), v1::ENDED) << id;
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(core().CollectRecords(keys, asked + 1000), 0u);
  EXPECT_EQ(core().CollectRecords(keys, asked + 1001), 20u);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  EXPECT_EQ(core().records_erased(), 20u);
  EXPECT_TRUE(view.records.empty());
}

}  // namespace
}  // namespace atomq::coordinator
