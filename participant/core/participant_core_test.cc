#include "participant/core/participant_core.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"

namespace atomq::participant {
namespace {

using ::testing::Test;

// The disk: sub-database -> key -> value, changed only by applied batches.
class FakeStore : public DurableView {
 public:
  void Apply(const Batch& b) {
    for (const Write& w : b.writes) {
      if (w.erase) {
        dbs_[w.db].erase(w.key);
      } else {
        dbs_[w.db][w.key] = w.value;
      }
    }
  }

  std::optional<v1::MessageRecord> FindMessage(uint64_t queue_id, uint64_t seq) const override {
    return Get<v1::MessageRecord>(kMessagesDb, MessageKey(queue_id, seq));
  }

  absl::StatusOr<std::vector<uint64_t>> ScanMessages(uint64_t queue_id, uint64_t from,
                                                     uint64_t to,
                                                     uint32_t limit) const override {
    scans_++;
    if (!scan_error_.ok()) return scan_error_;
    std::vector<uint64_t> seqs;
    auto d = dbs_.find(kMessagesDb);
    if (d == dbs_.end()) return seqs;
    for (auto it = d->second.lower_bound(MessageKey(queue_id, from));
         it != d->second.end() && seqs.size() < limit; ++it) {
      if (DecodeU64(it->first) != queue_id || DecodeU64(it->first.substr(8)) >= to) break;
      seqs.push_back(DecodeU64(it->first.substr(8)));
    }
    return seqs;
  }

  std::optional<v1::OutcomeRecord> FindOutcome(const std::string& id) const override {
    auto db = dbs_.find(kOutcomesDb);
    if (db == dbs_.end()) return std::nullopt;
    auto it = db->second.find(id);
    if (it == db->second.end()) return std::nullopt;
    v1::OutcomeRecord rec;
    EXPECT_TRUE(DecodeRecord(it->second, &rec).ok());
    return rec;
  }

  template <typename T>
  std::optional<T> Get(const std::string& db, const std::string& key) const {
    auto d = dbs_.find(db);
    if (d == dbs_.end()) return std::nullopt;
    auto it = d->second.find(key);
    if (it == d->second.end()) return std::nullopt;
    T rec;
    EXPECT_TRUE(DecodeRecord(it->second, &rec).ok());
    return rec;
  }

  size_t Count(const std::string& db) const {
    auto d = dbs_.find(db);
    return d == dbs_.end() ? 0 : d->second.size();
  }

  // What the adapter would read at start.
  RecoveredState Recovered() const {
    RecoveredState st;
    st.meta = Get<v1::MetaRecord>(kMetaDb, "meta");
    for (const auto& [db, kv] : dbs_) {
      for (const auto& [key, value] : kv) {
        if (db == kQueuesDb) {
          st.queues.emplace_back();
          EXPECT_TRUE(DecodeRecord(value, &st.queues.back()).ok());
        } else if (db == kMessagesDb) {
          RecoveredState::Backlog& b = st.messages[DecodeU64(key)];
          b.count++;
          b.last_sequence = DecodeU64(key.substr(8));
        } else if (db == kPreparedDb) {
          st.prepared.emplace_back();
          EXPECT_TRUE(DecodeRecord(value, &st.prepared.back()).ok());
        } else if (db == kDedupDb) {
          st.dedup.emplace_back();
          EXPECT_TRUE(DecodeRecord(value, &st.dedup.back()).ok());
        } else if (db == kHeuristicDb) {
          st.heuristic.emplace_back();
          EXPECT_TRUE(DecodeRecord(value, &st.heuristic.back()).ok());
        }
      }
    }
    return st;
  }

  mutable int scans_ = 0;         // ScanMessages calls
  absl::Status scan_error_;       // ScanMessages fails with it when set

 private:
  std::map<std::string, std::map<std::string, std::string>> dbs_;
};

v1::Op EnqueueOp(const std::string& queue, const std::string& payload,
                 const std::string& participant = "p1") {
  v1::Op op;
  op.set_participant(participant);
  op.mutable_enqueue()->set_queue(queue);
  op.mutable_enqueue()->set_payload(payload);
  return op;
}

v1::Op AckOp(const std::string& queue, uint64_t seq, const std::string& token) {
  v1::Op op;
  op.set_participant("p1");
  op.mutable_ack()->set_queue(queue);
  op.mutable_ack()->set_sequence(seq);
  op.mutable_ack()->set_lease_token(token);
  return op;
}

v1::PrepareRequest PrepareReq(const std::string& txn, std::vector<v1::Op> ops) {
  v1::PrepareRequest req;
  req.set_txn_id(txn);
  req.set_protocol(v1::TWO_PC);
  req.set_coordinator_id("c1");
  req.set_coordinator_address("coord:1");
  req.set_participant("p1");
  for (const char* p : {"p1", "p2", "p3"}) {
    v1::PeerAddress* peer = req.add_participants();
    peer->set_participant(p);
    peer->set_address(absl::StrCat(p, ":1"));
  }
  for (v1::Op& op : ops) *req.add_ops() = std::move(op);
  return req;
}

v1::QueryStateResponse StateReply(v1::TxnState s) {
  v1::QueryStateResponse r;
  r.set_state(s);
  return r;
}

class ParticipantCoreTest : public Test {
 protected:
  ParticipantCoreTest() {
    config_.participant_id = "p1";
    config_.boot_count = 7;
  }

  void Start() { Restart(); }

  // A fresh core over what is on disk; batches in flight are lost.
  void Restart() {
    in_flight_.clear();
    core_ = std::make_unique<ParticipantCore>(config_, &store_);
    core_->Recover(store_.Recovered(), now_);
    last_ = Collect();
  }

  // The latest timer the core asked for.
  uint64_t last_timer() const { return timer_ids_.empty() ? 0 : timer_ids_.back(); }

  Output Collect() {
    Output o = core_->TakeOutput();
    for (const TimerRequest& t : o.timers) timer_ids_.push_back(t.timer_id);
    for (const Batch& b : o.persist) in_flight_.push_back(b);
    for (const std::string& l : o.log) log_.push_back(l);
    return o;
  }

  // Reports every batch in flight, in order, with `status`; returns all
  // output not yet collected.
  Output Persist(absl::Status status = absl::OkStatus()) {
    Output before = Collect();
    std::vector<Batch> batches = std::move(in_flight_);
    in_flight_.clear();
    for (const Batch& b : batches) {
      if (status.ok()) store_.Apply(b);
      core_->OnPersisted(b.token, status, now_);
    }
    Output after = Collect();
    Append(before.persist, after.persist);
    Append(before.queries, after.queries);
    Append(before.timers, after.timers);
    Append(before.replies, after.replies);
    Append(before.peer_msgs, after.peer_msgs);
    Append(before.log, after.log);
    Append(before.ready_queues, after.ready_queues);
    return before;
  }

  template <typename T>
  static void Append(std::vector<T>& to, std::vector<T>& from) {
    for (T& x : from) to.push_back(std::move(x));
  }

  static const Reply* Find(const Output& o, RequestId r) {
    const Reply* found = nullptr;
    for (const Reply& reply : o.replies) {
      if (reply.request == r) {
        EXPECT_EQ(found, nullptr) << "two replies to request " << r;
        found = &reply;
      }
    }
    return found;
  }

  template <typename T>
  static T Body(const Output& o, RequestId r) {
    const Reply* reply = Find(o, r);
    EXPECT_NE(reply, nullptr) << "no reply to request " << r;
    if (reply == nullptr) return T();
    EXPECT_TRUE(reply->status.ok()) << reply->status;
    EXPECT_TRUE(std::holds_alternative<T>(reply->body));
    return std::holds_alternative<T>(reply->body) ? std::get<T>(reply->body) : T();
  }

  static absl::Status StatusOf(const Output& o, RequestId r) {
    const Reply* reply = Find(o, r);
    EXPECT_NE(reply, nullptr) << "no reply to request " << r;
    return reply ? reply->status : absl::UnknownError("no reply");
  }

  void CreateQueue(const std::string& name) {
    core_->CreateQueue(next_req_, name, now_);
    Output o = Collect();
    EXPECT_EQ(Find(o, next_req_), nullptr);
    o = Persist();
    EXPECT_TRUE(StatusOf(o, next_req_).ok());
    next_req_++;
  }

  v1::PrepareResponse Prepare(const v1::PrepareRequest& req) {
    RequestId r = next_req_++;
    core_->Prepare(r, req, now_);
    Output o = Collect();
    if (Find(o, r) == nullptr) o = Persist();
    return Body<v1::PrepareResponse>(o, r);
  }

  std::vector<uint64_t> Commit(const std::string& txn) {
    RequestId r = next_req_++;
    core_->Commit(r, txn, now_);
    Output o = Collect();
    if (Find(o, r) == nullptr) o = Persist();
    v1::CommitResponse resp = Body<v1::CommitResponse>(o, r);
    return {resp.sequences().begin(), resp.sequences().end()};
  }

  absl::Status Abort(const std::string& txn) {
    RequestId r = next_req_++;
    core_->Abort(r, txn, now_);
    Output o = Collect();
    if (Find(o, r) == nullptr) o = Persist();
    return StatusOf(o, r);
  }

  std::vector<Lease> Receive(const std::string& queue, uint32_t max = 10, uint32_t lease_ms = 0) {
    absl::StatusOr<std::vector<Lease>> got = core_->Receive(queue, max, lease_ms, now_);
    EXPECT_TRUE(got.ok()) << got.status();
    return got.ok() ? *got : std::vector<Lease>();
  }

  // Enqueues one message per payload in one committed transaction.
  std::vector<uint64_t> Produce(const std::string& txn, const std::string& queue,
                                std::vector<std::string> payloads) {
    std::vector<v1::Op> ops;
    for (const std::string& p : payloads) ops.push_back(EnqueueOp(queue, p));
    EXPECT_EQ(Prepare(PrepareReq(txn, ops)).vote(), v1::YES);
    return Commit(txn);
  }

  v1::QueueInfo Info(const std::string& name) {
    for (const v1::QueueInfo& i : core_->ListQueues()) {
      if (i.name() == name) return i;
    }
    ADD_FAILURE() << "no queue " << name;
    return v1::QueueInfo();
  }

  std::optional<v1::ParticipantTxnInfo> Txn(const std::string& id) {
    for (const v1::ParticipantTxnInfo& t : core_->ListTransactions()) {
      if (t.txn_id() == id) return t;
    }
    return std::nullopt;
  }

  bool Logged(const std::string& needle) const {
    for (const std::string& l : log_) {
      if (absl::StrContains(l, needle)) return true;
    }
    return false;
  }

  Config config_;
  FakeStore store_;
  std::unique_ptr<ParticipantCore> core_;
  std::vector<Batch> in_flight_;
  std::vector<uint64_t> timer_ids_;
  std::vector<std::string> log_;
  Output last_;
  int64_t now_ = 1'000'000;
  RequestId next_req_ = 1;
};

// --- Prepare ---

TEST_F(ParticipantCoreTest, PrepareVotesYesOnlyAfterRecordIsDurable) {
  Start();
  CreateQueue("q");
  core_->Prepare(100, PrepareReq("t1", {EnqueueOp("q", "a")}), now_);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  ASSERT_EQ(o.persist[0].writes.size(), 1u);
  EXPECT_EQ(o.persist[0].writes[0].db, kPreparedDb);
  EXPECT_EQ(o.persist[0].writes[0].key, "t1");
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.timers.empty());
  EXPECT_FALSE(Txn("t1").has_value());  // not prepared until durable

  o = Persist();
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 100).vote(), v1::YES);
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now_ + config_.in_doubt_after_ms);
  auto rec = store_.Get<v1::PreparedRecord>(kPreparedDb, "t1");
  ASSERT_TRUE(rec.has_value());
  EXPECT_EQ(rec->state(), v1::PREPARED);
  EXPECT_EQ(rec->coordinator_address(), "coord:1");
  ASSERT_TRUE(Txn("t1").has_value());
  EXPECT_EQ(Txn("t1")->state(), v1::PREPARED);
  EXPECT_FALSE(Txn("t1")->in_doubt());
  EXPECT_EQ(Info("q").pending_in_txn(), 1u);
  EXPECT_EQ(Info("q").ready(), 0u);
}

TEST_F(ParticipantCoreTest, PrepareVotesNoForMissingQueue) {
  Start();
  core_->Prepare(1, PrepareReq("t1", {EnqueueOp("nope", "a")}), now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  v1::PrepareResponse r = Body<v1::PrepareResponse>(o, 1);
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_EQ(r.reason(), "queue \"nope\" does not exist on p1");
  EXPECT_TRUE(core_->ListTransactions().empty());
}

TEST_F(ParticipantCoreTest, PrepareVotesNoForSizeLimits) {
  config_.payload_bytes_max = 4;
  config_.headers_max = 1;
  config_.ops_per_txn_max = 2;
  Start();
  CreateQueue("q");
  v1::PrepareResponse r = Prepare(PrepareReq("t1", {EnqueueOp("q", "12345")}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "payload_bytes_max")) << r.reason();

  v1::Op op = EnqueueOp("q", "1");
  (*op.mutable_enqueue()->mutable_headers())["a"] = "1";
  (*op.mutable_enqueue()->mutable_headers())["b"] = "2";
  r = Prepare(PrepareReq("t2", {op}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "headers_max")) << r.reason();

  r = Prepare(PrepareReq("t3", {EnqueueOp("q", "1"), EnqueueOp("q", "2"), EnqueueOp("q", "3")}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "ops_per_txn_max")) << r.reason();

  EXPECT_EQ(Prepare(PrepareReq("t4", {EnqueueOp("q", "1234")})).vote(), v1::YES);
}

TEST_F(ParticipantCoreTest, MalformedPrepareIsInvalidArgument) {
  Start();
  CreateQueue("q");
  core_->Prepare(1, PrepareReq("bad id", {EnqueueOp("q", "a")}), now_);
  core_->Prepare(2, PrepareReq("t2", {EnqueueOp("q", "a", "p2")}), now_);
  v1::PrepareRequest wrong_node = PrepareReq("t3", {});
  wrong_node.set_participant("p9");
  core_->Prepare(3, wrong_node, now_);
  v1::PrepareRequest no_kind = PrepareReq("t4", {});
  no_kind.add_ops()->set_participant("p1");
  core_->Prepare(4, no_kind, now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  for (RequestId r : {1, 2, 3, 4}) {
    EXPECT_EQ(StatusOf(o, r).code(), absl::StatusCode::kInvalidArgument) << r;
  }
}

TEST_F(ParticipantCoreTest, EmptyOpsVoteReadOnlyAndKeepNothing) {
  Start();
  core_->Prepare(1, PrepareReq("t1", {}), now_);
  Output o = Collect();
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 1).vote(), v1::READ_ONLY);
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(core_->ListTransactions().empty());
}

TEST_F(ParticipantCoreTest, PreparedMaxIsResourceExhausted) {
  config_.prepared_max = 1;
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  core_->Prepare(50, PrepareReq("t2", {EnqueueOp("q", "b")}), now_);
  Output o = Collect();
  EXPECT_EQ(StatusOf(o, 50).code(), absl::StatusCode::kResourceExhausted);
  // A retry of the prepared one still answers.
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
}

TEST_F(ParticipantCoreTest, AckOpVotesNoForStaleForeignPinnedOrMissing) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"m1", "m2"});
  std::vector<Lease> got = Receive("q", 2, 1000);
  ASSERT_EQ(got.size(), 2u);

  // Foreign token.
  v1::PrepareResponse r = Prepare(PrepareReq("t1", {AckOp("q", 1, "someone-else")}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "not the current lease")) << r.reason();
  // Missing message.
  r = Prepare(PrepareReq("t2", {AckOp("q", 99, got[0].lease_token)}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "q/99 does not exist")) << r.reason();
  // The same message twice.
  r = Prepare(
      PrepareReq("t3", {AckOp("q", 1, got[0].lease_token), AckOp("q", 1, got[0].lease_token)}));
  EXPECT_EQ(r.vote(), v1::NO);
  // Pinned by another transaction.
  EXPECT_EQ(Prepare(PrepareReq("t4", {AckOp("q", 1, got[0].lease_token)})).vote(), v1::YES);
  r = Prepare(PrepareReq("t5", {AckOp("q", 1, got[0].lease_token)}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "held by prepared transaction t4")) << r.reason();
  // Stale: the lease expired.
  now_ += 1000;
  r = Prepare(PrepareReq("t6", {AckOp("q", 2, got[1].lease_token)}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "expired")) << r.reason();
  // Stale: redelivered under a new token.
  std::vector<Lease> again = Receive("q");
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].sequence, 2u);
  r = Prepare(PrepareReq("t7", {AckOp("q", 2, got[1].lease_token)}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_EQ(Prepare(PrepareReq("t8", {AckOp("q", 2, again[0].lease_token)})).vote(), v1::YES);
}

TEST_F(ParticipantCoreTest, DuplicatePrepareSameOpsAnswersAsFirstOtherOpsVoteNo) {
  Start();
  CreateQueue("q");
  v1::PrepareRequest req = PrepareReq("t1", {EnqueueOp("q", "a")});
  core_->Prepare(1, req, now_);
  core_->Prepare(2, req, now_);  // while the record is in flight
  Output o = Collect();
  EXPECT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.replies.empty());
  o = Persist();
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 1).vote(), v1::YES);
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 2).vote(), v1::YES);

  core_->Prepare(3, req, now_);  // after: at once, nothing new persisted
  o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 3).vote(), v1::YES);

  v1::PrepareResponse r = Prepare(PrepareReq("t1", {EnqueueOp("q", "other")}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "other ops")) << r.reason();
  EXPECT_EQ(Info("q").pending_in_txn(), 1u);  // the NO did not disturb t1

  // Once committed, a duplicate Prepare still answers YES.
  Commit("t1");
  EXPECT_EQ(Prepare(req).vote(), v1::YES);
}

// --- Commit and Abort ---

TEST_F(ParticipantCoreTest, CommitAssignsSequencesInCommitOrder) {
  Start();
  CreateQueue("q");
  CreateQueue("r");
  EXPECT_EQ(
      Prepare(PrepareReq("A", {EnqueueOp("q", "a1"), EnqueueOp("r", "a2"), EnqueueOp("q", "a3")}))
          .vote(),
      v1::YES);
  EXPECT_EQ(Prepare(PrepareReq("B", {EnqueueOp("q", "b1"), EnqueueOp("q", "b2")})).vote(), v1::YES);
  EXPECT_EQ(Commit("B"), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(Commit("A"), (std::vector<uint64_t>{3, 1, 4}));
  EXPECT_EQ(Info("q").version(), 5u);
  EXPECT_EQ(Info("r").version(), 2u);
  EXPECT_EQ(Info("q").ready(), 4u);
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);

  auto msg = store_.Get<v1::MessageRecord>(kMessagesDb, MessageKey(1, 3));
  ASSERT_TRUE(msg.has_value());
  EXPECT_EQ(msg->payload(), "a1");
  EXPECT_EQ(msg->txn_id(), "A");
  auto out = store_.Get<v1::OutcomeRecord>(kOutcomesDb, "A");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->state(), v1::STATE_COMMITTED);
  EXPECT_EQ(store_.Count(kPreparedDb), 0u);
  EXPECT_EQ(store_.Get<v1::QueueRecord>(kQueuesDb, "q")->next_sequence(), 5u);

  std::vector<Lease> got = Receive("q", 10);
  ASSERT_EQ(got.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(got[i].sequence, uint64_t(i + 1));
  EXPECT_TRUE(Logged("txn A COMMITTED here (3 enqueues, 0 acks)"));
  EXPECT_TRUE(Logged("txn B COMMITTED here (2 enqueues, 0 acks)"));
}

TEST_F(ParticipantCoreTest, MessagesInvisibleUntilCommitDurableAndAfterAbort) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  EXPECT_TRUE(Receive("q").empty());
  core_->Commit(9, "t1", now_);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Find(o, 9), nullptr);
  EXPECT_TRUE(Receive("q").empty());  // not durable yet
  EXPECT_EQ(Info("q").ready(), 0u);
  o = Persist();
  EXPECT_EQ(Body<v1::CommitResponse>(o, 9).sequences_size(), 1);
  EXPECT_EQ(Receive("q").size(), 1u);

  EXPECT_EQ(Prepare(PrepareReq("t2", {EnqueueOp("q", "b")})).vote(), v1::YES);
  EXPECT_TRUE(Abort("t2").ok());
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_EQ(Info("q").version(), 2u);  // the abort used no sequence
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t2")->state(), v1::STATE_ABORTED);
  EXPECT_EQ(store_.Count(kPreparedDb), 0u);
  EXPECT_TRUE(Logged("txn t2 ABORTED here (1 enqueue, 0 acks)"));
}

TEST_F(ParticipantCoreTest, CommitIsIdempotentEvenAfterTheCacheForgets) {
  config_.outcome_cache_max = 0;  // every answer comes from the DurableView
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a"), EnqueueOp("q", "b")})).vote(), v1::YES);
  core_->Commit(1, "t1", now_);
  core_->Commit(2, "t1", now_);  // joins the batch in flight
  Output o = Collect();
  EXPECT_EQ(o.persist.size(), 1u);
  o = Persist();
  EXPECT_EQ(Body<v1::CommitResponse>(o, 1).sequences_size(), 2);
  EXPECT_EQ(Body<v1::CommitResponse>(o, 2).sequences_size(), 2);
  EXPECT_EQ(Commit("t1"), (std::vector<uint64_t>{1, 2}));
  EXPECT_TRUE(Collect().persist.empty());
  EXPECT_EQ(Info("q").ready(), 2u);

  // Abort of a committed transaction is refused; a late PreCommit is acked.
  core_->Abort(3, "t1", now_);
  core_->PreCommit(4, "t1", now_);
  o = Collect();
  EXPECT_EQ(StatusOf(o, 3).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(StatusOf(o, 4).ok());
  EXPECT_TRUE(Logged("protocol alarm"));
}

TEST_F(ParticipantCoreTest, CommitUnknownAnswersEmptyCommitAbortedRefuses) {
  Start();
  core_->Commit(1, "ghost", now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(Body<v1::CommitResponse>(o, 1).sequences_size(), 0);
  EXPECT_TRUE(Logged("txn ghost Commit for a transaction unknown here"));

  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  EXPECT_TRUE(Abort("t1").ok());
  core_->Commit(2, "t1", now_);
  o = Collect();
  EXPECT_EQ(StatusOf(o, 2).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Logged("txn t1 protocol alarm"));
  EXPECT_TRUE(Abort("t1").ok());  // idempotent
}

TEST_F(ParticipantCoreTest, AbortUnknownIsRecordedSoLatePrepareVotesNo) {
  Start();
  CreateQueue("q");
  core_->Abort(1, "t1", now_);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(o.persist[0].writes[0].db, kOutcomesDb);
  EXPECT_EQ(Find(o, 1), nullptr);  // only once durable
  // A late Prepare while the record is in flight already votes NO.
  core_->Prepare(2, PrepareReq("t1", {EnqueueOp("q", "a")}), now_);
  o = Collect();
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 2).vote(), v1::NO);
  o = Persist();
  EXPECT_TRUE(StatusOf(o, 1).ok());
  v1::PrepareResponse r = Prepare(PrepareReq("t1", {EnqueueOp("q", "a")}));
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_EQ(r.reason(), "already aborted here");
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
}

TEST_F(ParticipantCoreTest, PreCommitPersistsThenAcks) {
  Start();
  CreateQueue("q");
  core_->PreCommit(1, "ghost", now_);
  Output o = Collect();
  EXPECT_EQ(StatusOf(o, 1).code(), absl::StatusCode::kFailedPrecondition);

  v1::PrepareRequest req = PrepareReq("t1", {EnqueueOp("q", "a")});
  req.set_protocol(v1::THREE_PC);
  EXPECT_EQ(Prepare(req).vote(), v1::YES);
  core_->PreCommit(2, "t1", now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Find(o, 2), nullptr);
  o = Persist();
  EXPECT_TRUE(StatusOf(o, 2).ok());
  EXPECT_EQ(store_.Get<v1::PreparedRecord>(kPreparedDb, "t1")->state(), v1::PRECOMMITTED);
  EXPECT_EQ(Txn("t1")->state(), v1::PRECOMMITTED);
  core_->PreCommit(3, "t1", now_);
  o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(StatusOf(o, 3).ok());
  EXPECT_EQ(Commit("t1"), std::vector<uint64_t>{1});
}

TEST_F(ParticipantCoreTest, RequestsDuringAPrepareInFlightWaitForIt) {
  Start();
  CreateQueue("q");
  core_->Prepare(1, PrepareReq("t1", {EnqueueOp("q", "a")}), now_);
  core_->QueryState(2, "t1", now_);
  core_->Abort(3, "t1", now_);
  Output o = Collect();
  EXPECT_TRUE(o.replies.empty());
  EXPECT_EQ(o.persist.size(), 1u);
  o = Persist();
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 1).vote(), v1::YES);
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 2).state(), v1::PREPARED);
  EXPECT_EQ(Find(o, 3), nullptr);  // the abort record is now in flight
  o = Persist();
  EXPECT_TRUE(StatusOf(o, 3).ok());
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->state(), v1::STATE_ABORTED);
}

TEST_F(ParticipantCoreTest, ConflictingRequestsWhileADecisionIsInFlight) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  EXPECT_EQ(Prepare(PrepareReq("t2", {EnqueueOp("q", "b")})).vote(), v1::YES);
  core_->Commit(1, "t1", now_);
  core_->Abort(2, "t1", now_);
  core_->QueryState(3, "t1", now_);
  core_->Abort(4, "t2", now_);
  core_->Commit(5, "t2", now_);
  core_->Prepare(6, PrepareReq("t2", {EnqueueOp("q", "b")}), now_);
  Output o = Collect();
  EXPECT_EQ(o.persist.size(), 2u);
  // The record is durable, so the duplicate Prepare still says YES.
  EXPECT_EQ(Body<v1::PrepareResponse>(o, 6).vote(), v1::YES);
  EXPECT_EQ(o.replies.size(), 1u);
  o = Persist();
  EXPECT_EQ(Body<v1::CommitResponse>(o, 1).sequences_size(), 1);
  EXPECT_EQ(StatusOf(o, 2).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 3).state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(StatusOf(o, 4).ok());
  EXPECT_EQ(StatusOf(o, 5).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(Info("q").ready(), 1u);
}

// --- transactional acks and leases ---

TEST_F(ParticipantCoreTest, AckInTransactionPinsUntilCommitDeletesIt) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"m"});
  std::vector<Lease> got = Receive("q", 1, 100);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(
      Prepare(PrepareReq("t1", {AckOp("q", 1, got[0].lease_token), EnqueueOp("q", "out")})).vote(),
      v1::YES);
  EXPECT_EQ(Info("q").pending_in_txn(), 2u);
  EXPECT_EQ(Info("q").leased(), 0u);
  now_ += 1000;  // the lease expires while in doubt
  EXPECT_TRUE(Receive("q").empty());
  // A plain Ack cannot take it either.
  core_->Ack(5, "q", 1, got[0].lease_token, now_);
  EXPECT_EQ(StatusOf(Collect(), 5).code(), absl::StatusCode::kFailedPrecondition);

  EXPECT_EQ(Commit("t1"), (std::vector<uint64_t>{0, 2}));
  EXPECT_FALSE(store_.Get<v1::MessageRecord>(kMessagesDb, MessageKey(1, 1)).has_value());
  std::vector<Lease> next = Receive("q");
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].sequence, 2u);
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_TRUE(Logged("txn t1 COMMITTED here (1 enqueue, 1 ack)"));
}

TEST_F(ParticipantCoreTest, AbortReturnsPinnedMessageToItsLease) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"m1", "m2"});
  std::vector<Lease> got = Receive("q", 2, 100);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(Prepare(PrepareReq("t1", {AckOp("q", 1, got[0].lease_token)})).vote(), v1::YES);
  EXPECT_EQ(Prepare(PrepareReq("t2", {AckOp("q", 2, got[1].lease_token)})).vote(), v1::YES);
  // t1 aborts while its lease still holds: leased again, same token.
  EXPECT_TRUE(Abort("t1").ok());
  EXPECT_EQ(Info("q").leased(), 1u);
  EXPECT_TRUE(Receive("q").empty());
  core_->Ack(7, "q", 1, got[0].lease_token, now_);
  Collect();
  EXPECT_TRUE(StatusOf(Persist(), 7).ok());
  // t2 aborts after its lease expired: ready again.
  now_ += 200;
  EXPECT_TRUE(Abort("t2").ok());
  EXPECT_EQ(Info("q").ready(), 1u);
  std::vector<Lease> again = Receive("q");
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].sequence, 2u);
  EXPECT_EQ(again[0].delivery_count, 2u);
}

TEST_F(ParticipantCoreTest, ExpiredLeaseRedeliversWithHigherDeliveryCount) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"m1", "m2", "m3"});
  std::vector<Lease> first = Receive("q", 2, 50);
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].delivery_count, 1u);
  EXPECT_EQ(first[0].expires_ms, now_ + 50);
  EXPECT_EQ(first[0].lease_token.rfind("7-", 0), 0u);  // carries the boot count
  EXPECT_NE(first[0].lease_token, first[1].lease_token);
  EXPECT_EQ(Info("q").leased(), 2u);
  EXPECT_EQ(Info("q").ready(), 1u);
  now_ += 49;
  std::vector<Lease> mid = Receive("q", 5);
  ASSERT_EQ(mid.size(), 1u);
  EXPECT_EQ(mid[0].sequence, 3u);
  EXPECT_EQ(mid[0].expires_ms, now_ + config_.lease_ms);
  now_ += 1;
  std::vector<Lease> again = Receive("q", 5);
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[0].sequence, 1u);
  EXPECT_EQ(again[0].delivery_count, 2u);
  EXPECT_EQ(again[1].delivery_count, 2u);
  EXPECT_NE(again[0].lease_token, first[0].lease_token);
}

TEST_F(ParticipantCoreTest, AckRequiresTheCurrentLeaseAndWaitsForDurability) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"m"});
  std::vector<Lease> first = Receive("q", 1, 10);
  now_ += 10;
  std::vector<Lease> second = Receive("q", 1, 1000);
  ASSERT_EQ(second.size(), 1u);
  core_->Ack(1, "q", 1, first[0].lease_token, now_);
  core_->Ack(2, "q", 1, "", now_);
  core_->Ack(3, "q", 9, second[0].lease_token, now_);
  core_->Ack(4, "nope", 1, second[0].lease_token, now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(StatusOf(o, 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(StatusOf(o, 2).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(StatusOf(o, 3).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(StatusOf(o, 4).code(), absl::StatusCode::kNotFound);

  core_->Ack(5, "q", 1, second[0].lease_token, now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.persist[0].writes[0].erase);
  EXPECT_EQ(Find(o, 5), nullptr);
  now_ += 5000;  // the lease expires before the deletion is durable
  EXPECT_TRUE(Receive("q").empty());
  o = Persist();
  EXPECT_TRUE(StatusOf(o, 5).ok());
  EXPECT_EQ(store_.Count(kMessagesDb), 0u);
  EXPECT_EQ(Info("q").ready() + Info("q").leased(), 0u);
  core_->Ack(6, "q", 1, second[0].lease_token, now_);
  EXPECT_EQ(StatusOf(Collect(), 6).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ParticipantCoreTest, ReceiveValidatesLimits) {
  config_.receive_max = 3;
  config_.lease_ms_max = 100;
  config_.lease_ms = 40;
  Start();
  EXPECT_EQ(core_->Receive("nope", 1, 0, now_).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->Receive("bad name", 1, 0, now_).status().code(),
            absl::StatusCode::kInvalidArgument);
  CreateQueue("q");
  Produce("p", "q", {"a", "b", "c", "d"});
  EXPECT_EQ(core_->Receive("q", 4, 0, now_).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->Receive("q", 1, 101, now_).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<Lease> one = Receive("q", 0, 0);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].expires_ms, now_ + 40);
  EXPECT_EQ(Receive("q", 3, 100).size(), 3u);
}

// --- queues ---

TEST_F(ParticipantCoreTest, QueueCreateListDelete) {
  config_.queues_max = 2;
  Start();
  core_->CreateQueue(1, "q", now_);
  Output o = Collect();
  EXPECT_EQ(Find(o, 1), nullptr);
  EXPECT_TRUE(core_->ListQueues().empty());  // usable once durable
  core_->CreateQueue(2, "q", now_);
  EXPECT_EQ(StatusOf(Collect(), 2).code(), absl::StatusCode::kAlreadyExists);
  o = Persist();
  v1::CreateQueueResponse created = Body<v1::CreateQueueResponse>(o, 1);
  EXPECT_EQ(created.queue().name(), "q");
  EXPECT_EQ(created.queue().version(), 1u);
  EXPECT_EQ(created.queue().created_unix_ms(), now_);
  EXPECT_EQ(store_.Get<v1::MetaRecord>(kMetaDb, "meta")->next_queue_id(), 2u);
  EXPECT_EQ(store_.Get<v1::QueueRecord>(kQueuesDb, "q")->id(), 1u);

  core_->CreateQueue(3, "bad/name", now_);
  core_->CreateQueue(4, "q", now_);
  o = Collect();
  EXPECT_EQ(StatusOf(o, 3).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StatusOf(o, 4).code(), absl::StatusCode::kAlreadyExists);
  CreateQueue("r");
  core_->CreateQueue(5, "s", now_);
  EXPECT_EQ(StatusOf(Collect(), 5).code(), absl::StatusCode::kResourceExhausted);

  Produce("p", "q", {"a", "b", "c"});
  Receive("q", 1);
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "x")})).vote(), v1::YES);
  std::vector<v1::QueueInfo> all = core_->ListQueues();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name(), "q");
  EXPECT_EQ(all[0].version(), 4u);
  EXPECT_EQ(all[0].ready(), 2u);
  EXPECT_EQ(all[0].leased(), 1u);
  EXPECT_EQ(all[0].pending_in_txn(), 1u);
  EXPECT_EQ(all[1].name(), "r");

  core_->DeleteQueue(6, "nope", now_);
  core_->DeleteQueue(7, "q", now_);  // t1 is prepared on it
  o = Collect();
  EXPECT_EQ(StatusOf(o, 6).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(StatusOf(o, 7).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(o.persist.empty());
  Commit("t1");

  core_->DeleteQueue(8, "q", now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(o.persist[0].writes.size(), 5u);  // the record and 4 messages
  EXPECT_EQ(Find(o, 8), nullptr);
  // Gone for new work at once, answered once durable.
  EXPECT_EQ(core_->Receive("q", 1, 0, now_).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Prepare(PrepareReq("t2", {EnqueueOp("q", "x")})).vote(), v1::NO);
  o = Persist();
  EXPECT_TRUE(StatusOf(o, 8).ok());
  EXPECT_EQ(store_.Count(kMessagesDb), 0u);
  EXPECT_FALSE(store_.Get<v1::QueueRecord>(kQueuesDb, "q").has_value());
  ASSERT_EQ(core_->ListQueues().size(), 1u);

  // Re-created: a new id, so old keys cannot collide.
  CreateQueue("q");
  EXPECT_EQ(store_.Get<v1::QueueRecord>(kQueuesDb, "q")->id(), 3u);
  EXPECT_EQ(Produce("p2", "q", {"z"}), std::vector<uint64_t>{1});
}

// --- recovery and in doubt ---

TEST_F(ParticipantCoreTest, InDoubtTimerQueriesCoordinatorAndStaleTimersAreIgnored) {
  Start();
  CreateQueue("q");
  core_->Prepare(1, PrepareReq("t1", {EnqueueOp("q", "a")}), now_);
  Collect();
  Output o = Persist();
  ASSERT_EQ(o.timers.size(), 1u);
  uint64_t timer = o.timers[0].timer_id;
  now_ = o.timers[0].at_ms;
  core_->OnTimer(timer, now_);
  o = Collect();
  ASSERT_EQ(o.queries.size(), 1u);
  EXPECT_TRUE(o.queries[0].to_coordinator);
  EXPECT_EQ(o.queries[0].target, "c1");
  EXPECT_EQ(o.queries[0].address, "coord:1");
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now_ + config_.resend_initial_ms);
  EXPECT_TRUE(Txn("t1")->in_doubt());
  core_->OnTimer(timer, now_);  // fired already
  EXPECT_TRUE(Collect().empty());

  uint64_t retry = o.timers[0].timer_id;
  EXPECT_EQ(Commit("t1"), std::vector<uint64_t>{1});
  core_->OnTimer(retry, now_ + 1000);  // the transaction is settled
  EXPECT_TRUE(Collect().empty());
  core_->OnTimer(12345, now_);
  EXPECT_TRUE(Collect().empty());
}

TEST_F(ParticipantCoreTest, RecoveredPreparedAsksCoordinatorAndAppliesCommit) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"old"});
  std::vector<Lease> got = Receive("q");
  EXPECT_EQ(
      Prepare(PrepareReq("t1", {EnqueueOp("q", "new"), AckOp("q", 1, got[0].lease_token)})).vote(),
      v1::YES);
  now_ += 100'000;
  Restart();
  // In doubt at once, with a timer due now; the pinned ack stays pinned.
  ASSERT_EQ(last_.timers.size(), 1u);
  EXPECT_EQ(last_.timers[0].at_ms, now_);
  ASSERT_TRUE(Txn("t1").has_value());
  EXPECT_TRUE(Txn("t1")->in_doubt());
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_EQ(Info("q").pending_in_txn(), 2u);

  core_->OnTimer(last_.timers[0].timer_id, now_);
  Output o = Collect();
  ASSERT_EQ(o.queries.size(), 1u);
  EXPECT_TRUE(o.queries[0].to_coordinator);
  core_->OnQueryReply("t1", "c1", StateReply(v1::STATE_COMMITTED), now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(Receive("q").empty());  // not before durable
  Persist();
  EXPECT_FALSE(Txn("t1").has_value());
  std::vector<Lease> now_visible = Receive("q");
  ASSERT_EQ(now_visible.size(), 1u);
  EXPECT_EQ(now_visible[0].sequence, 2u);
  EXPECT_TRUE(Logged("txn t1 COMMITTED here (1 enqueue, 1 ack; settled by coordinator c1)"));
  EXPECT_EQ(Commit("t1"), (std::vector<uint64_t>{2, 0}));  // the coordinator's late Commit
}

TEST_F(ParticipantCoreTest, RecoveredPrecommittedAppliesCoordinatorAbort) {
  Start();
  CreateQueue("q");
  Produce("p", "q", {"old"});
  std::vector<Lease> got = Receive("q");
  v1::PrepareRequest req = PrepareReq("t1", {AckOp("q", 1, got[0].lease_token)});
  req.set_protocol(v1::THREE_PC);
  EXPECT_EQ(Prepare(req).vote(), v1::YES);
  core_->PreCommit(1, "t1", now_);
  Collect();
  Persist();
  Restart();
  EXPECT_EQ(Txn("t1")->state(), v1::PRECOMMITTED);
  EXPECT_EQ(Txn("t1")->protocol(), v1::THREE_PC);
  core_->OnTimer(last_.timers[0].timer_id, now_);
  Collect();
  core_->OnQueryReply("t1", "c1", StateReply(v1::STATE_ABORTED), now_);
  Persist();  // the termination ballot the timer wrote (3PC: a round starts too)
  Persist();  // then the abort, which waited for it
  EXPECT_FALSE(Txn("t1").has_value());
  std::vector<Lease> again = Receive("q");  // the ack is undone
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].delivery_count, 1u);  // leases do not survive a restart
  EXPECT_TRUE(Logged("txn t1 ABORTED here (0 enqueues, 1 ack; settled by coordinator c1)"));
}

TEST_F(ParticipantCoreTest, UnreachableCoordinatorThenPeerCommitSettles) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  Restart();
  core_->OnTimer(last_.timers[0].timer_id, now_);
  Collect();
  core_->OnQueryReply("t1", "c1", absl::UnavailableError("connection refused"), now_);
  Output o = Collect();
  ASSERT_EQ(o.queries.size(), 2u);  // every peer but itself
  EXPECT_EQ(o.queries[0].target, "p2");
  EXPECT_EQ(o.queries[0].address, "p2:1");
  EXPECT_FALSE(o.queries[0].to_coordinator);
  EXPECT_EQ(o.queries[1].target, "p3");
  core_->OnQueryReply("t1", "p2", StateReply(v1::PREPARED), now_);
  EXPECT_TRUE(Collect().empty());
  core_->OnQueryReply("t1", "p3", StateReply(v1::STATE_COMMITTED), now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  // A second definitive answer while the commit is in flight changes nothing.
  core_->OnQueryReply("t1", "c1", StateReply(v1::STATE_COMMITTED), now_);
  EXPECT_TRUE(Collect().persist.empty());
  Persist();
  EXPECT_TRUE(Collect().persist.empty());
  EXPECT_EQ(Receive("q").size(), 1u);
  EXPECT_TRUE(Logged("settled by peer p3"));
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->state(), v1::STATE_COMMITTED);
}

TEST_F(ParticipantCoreTest, AllUncertainStaysInDoubtWithBackoff) {
  config_.resend_initial_ms = 100;
  config_.resend_max_ms = 300;
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  Restart();
  uint64_t timer = last_.timers[0].timer_id;
  std::vector<int64_t> delays;
  for (int round = 0; round < 5; ++round) {
    core_->OnTimer(timer, now_);
    Output o = Collect();
    ASSERT_EQ(o.timers.size(), 1u);
    delays.push_back(o.timers[0].at_ms - now_);
    timer = o.timers[0].timer_id;
    // Round 0 asks the coordinator only; later rounds ask the peers too.
    ASSERT_EQ(o.queries.size(), round == 0 ? 1u : 3u) << round;
    core_->OnQueryReply("t1", "c1", absl::DeadlineExceededError("timeout"), now_);
    Output peers = Collect();
    EXPECT_EQ(peers.queries.size(), round == 0 ? 2u : 0u);
    core_->OnQueryReply("t1", "p2", StateReply(v1::PREPARED), now_);
    core_->OnQueryReply("t1", "p3", StateReply(v1::PRECOMMITTED), now_);
    EXPECT_TRUE(Collect().empty());
    now_ = o.timers[0].at_ms;
  }
  EXPECT_EQ(delays, (std::vector<int64_t>{100, 200, 300, 300, 300}));
  ASSERT_TRUE(Txn("t1").has_value());
  EXPECT_TRUE(Txn("t1")->in_doubt());
  EXPECT_EQ(Info("q").pending_in_txn(), 1u);
}

TEST_F(ParticipantCoreTest, CoordinatorPreparingThreeTimesAsksPeers) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  Restart();
  uint64_t timer = last_.timers[0].timer_id;
  for (int i = 1; i <= 3; ++i) {
    core_->OnTimer(timer, now_);
    Output o = Collect();
    timer = o.timers[0].timer_id;
    core_->OnQueryReply("t1", "c1", StateReply(v1::PREPARING), now_);
    EXPECT_EQ(Collect().queries.size(), i == 3 ? 2u : 0u) << i;
  }
  core_->OnQueryReply("t1", "p2", StateReply(v1::STATE_ABORTED), now_);
  Persist();
  EXPECT_FALSE(Txn("t1").has_value());
  EXPECT_TRUE(Logged("txn t1 ABORTED here (1 enqueue, 0 acks; settled by peer p2)"));
}

TEST_F(ParticipantCoreTest, QueryStateAnswersWhatIsDurable) {
  Start();
  CreateQueue("q");
  core_->QueryState(1, "unknown", now_);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Find(o, 1), nullptr);  // the ABORTED record comes first
  core_->QueryState(2, "unknown", now_);
  EXPECT_TRUE(Collect().empty());
  o = Persist();
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 1).state(), v1::STATE_ABORTED);
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 2).state(), v1::STATE_ABORTED);
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "unknown")->state(), v1::STATE_ABORTED);
  EXPECT_EQ(Prepare(PrepareReq("unknown", {EnqueueOp("q", "a")})).vote(), v1::NO);

  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  core_->QueryState(3, "t1", now_);
  EXPECT_EQ(Body<v1::QueryStateResponse>(Collect(), 3).state(), v1::PREPARED);
  Commit("t1");
  core_->QueryState(4, "t1", now_);
  EXPECT_EQ(Body<v1::QueryStateResponse>(Collect(), 4).state(), v1::STATE_COMMITTED);
  core_->QueryState(5, "bad id", now_);
  EXPECT_EQ(StatusOf(Collect(), 5).code(), absl::StatusCode::kInvalidArgument);
}

// --- storage failures ---

TEST_F(ParticipantCoreTest, PersistFailuresAnswerWithErrorsAndChangeNothing) {
  Start();
  const absl::Status disk_full = absl::ResourceExhaustedError("MDB_MAP_FULL");
  core_->CreateQueue(1, "q", now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 1).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(core_->ListQueues().empty());
  CreateQueue("q");
  Produce("p", "q", {"m"});
  std::vector<Lease> got = Receive("q", 1, 1000);

  // Prepare: NO with the storage error; the ack is not pinned.
  core_->Prepare(2, PrepareReq("t1", {AckOp("q", 1, got[0].lease_token), EnqueueOp("q", "x")}),
                 now_);
  Collect();
  Output o = Persist(disk_full);
  v1::PrepareResponse r = Body<v1::PrepareResponse>(o, 2);
  EXPECT_EQ(r.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(r.reason(), "MDB_MAP_FULL")) << r.reason();
  EXPECT_TRUE(o.timers.empty());
  EXPECT_FALSE(Txn("t1").has_value());
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_EQ(Info("q").leased(), 1u);

  // Commit: an error; still prepared, nothing visible; a retry commits.
  EXPECT_EQ(
      Prepare(PrepareReq("t1", {AckOp("q", 1, got[0].lease_token), EnqueueOp("q", "x")})).vote(),
      v1::YES);
  core_->Commit(3, "t1", now_);
  Collect();
  o = Persist(disk_full);
  EXPECT_EQ(StatusOf(o, 3).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Txn("t1")->state(), v1::PREPARED);
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_EQ(Info("q").pending_in_txn(), 2u);
  std::vector<uint64_t> seqs = Commit("t1");
  ASSERT_EQ(seqs.size(), 2u);
  EXPECT_EQ(seqs[0], 0u);
  EXPECT_GE(seqs[1], 2u);  // a failed commit may burn a sequence, never reuse one

  // Plain Ack: an error; still leased.
  got = Receive("q", 1, 1000);
  ASSERT_EQ(got.size(), 1u);
  core_->Ack(4, "q", got[0].sequence, got[0].lease_token, now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 4).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Info("q").leased(), 1u);

  // Abort of an unknown id: an error, and not remembered as aborted.
  core_->Abort(5, "t9", now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 5).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Prepare(PrepareReq("t9", {EnqueueOp("q", "y")})).vote(), v1::YES);

  // Abort of a prepared one: an error; still prepared.
  core_->Abort(6, "t9", now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 6).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Txn("t9").has_value());

  // PreCommit: an error; still PREPARED.
  core_->PreCommit(8, "t9", now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 8).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Txn("t9")->state(), v1::PREPARED);

  // QueryState of an unknown id: an error, not an answer.
  core_->QueryState(9, "t10", now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 9).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(store_.FindOutcome("t10").has_value());

  // DeleteQueue: an error; still there.
  EXPECT_TRUE(Abort("t9").ok());
  core_->DeleteQueue(7, "q", now_);
  Collect();
  EXPECT_EQ(StatusOf(Persist(disk_full), 7).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(core_->ListQueues().size(), 1u);
}

TEST_F(ParticipantCoreTest, SequencesAreNeverReusedAfterRecover) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Produce("a", "q", {"1", "2"}), (std::vector<uint64_t>{1, 2}));
  // A commit whose batch never reached the disk.
  EXPECT_EQ(Prepare(PrepareReq("b", {EnqueueOp("q", "3")})).vote(), v1::YES);
  core_->Commit(1, "b", now_);
  Collect();
  Restart();
  EXPECT_EQ(Info("q").version(), 3u);
  std::vector<Lease> got = Receive("q");
  ASSERT_EQ(got.size(), 2u);  // every message is ready after a restart
  core_->OnTimer(last_.timers[0].timer_id, now_);
  Collect();
  core_->OnQueryReply("b", "c1", StateReply(v1::STATE_COMMITTED), now_);
  Persist();
  EXPECT_EQ(Commit("b"), std::vector<uint64_t>{3});
  EXPECT_EQ(Produce("c", "q", {"4"}), std::vector<uint64_t>{4});
  Restart();
  CreateQueue("r");
  EXPECT_EQ(store_.Get<v1::QueueRecord>(kQueuesDb, "r")->id(), 2u);  // queue ids too
  EXPECT_EQ(Produce("d", "q", {"5"}), std::vector<uint64_t>{5});
  EXPECT_EQ(Info("q").ready(), 5u);
}

// --- consumers and producers: dead letters, nack, Send, dedup ---

class QueueFeaturesTest : public ParticipantCoreTest {
 protected:
  absl::Status CreateQueueWith(const std::string& name, uint32_t max_deliveries,
                               const std::string& dlq) {
    v1::CreateQueueRequest req;
    req.set_name(name);
    req.set_max_deliveries(max_deliveries);
    req.set_dead_letter_queue(dlq);
    RequestId r = next_req_++;
    core_->CreateQueue(r, req, now_);
    Output o = Collect();
    if (Find(o, r) == nullptr) o = Persist();
    return StatusOf(o, r);
  }

  // The reply to a Nack, persisting first when it waits for a batch.
  std::pair<absl::Status, v1::NackResponse> Nack(const Lease& l, bool dead_letter,
                                                 const std::string& token = "") {
    v1::NackRequest req;
    req.set_queue(l.queue);
    req.set_sequence(l.sequence);
    req.set_lease_token(token.empty() ? l.lease_token : token);
    req.set_dead_letter(dead_letter);
    RequestId r = next_req_++;
    core_->Nack(r, req, now_);
    Output o = Collect();
    if (Find(o, r) == nullptr) o = Persist();
    const Reply* reply = Find(o, r);
    if (reply == nullptr) return {absl::UnknownError("no reply"), {}};
    const auto* body = std::get_if<v1::NackResponse>(&reply->body);
    return {reply->status, body ? *body : v1::NackResponse()};
  }

  static v1::SendRequest SendReq(const std::string& queue, const std::string& payload,
                                 const std::string& producer = "", uint64_t pseq = 0) {
    v1::SendRequest req;
    req.set_queue(queue);
    req.set_payload(payload);
    req.set_producer_id(producer);
    req.set_producer_sequence(pseq);
    return req;
  }

  std::pair<absl::Status, v1::SendResponse> SendMsg(const v1::SendRequest& req) {
    RequestId r = next_req_++;
    core_->Send(r, req, now_);
    Output o = Collect();
    if (Find(o, r) == nullptr) o = Persist();
    const Reply* reply = Find(o, r);
    if (reply == nullptr) return {absl::UnknownError("no reply"), {}};
    const auto* body = std::get_if<v1::SendResponse>(&reply->body);
    return {reply->status, body ? *body : v1::SendResponse()};
  }

  std::optional<v1::MessageRecord> Stored(const std::string& queue, uint64_t seq) {
    auto rec = store_.Get<v1::QueueRecord>(kQueuesDb, queue);
    if (!rec) return std::nullopt;
    return store_.Get<v1::MessageRecord>(kMessagesDb, MessageKey(rec->id(), seq));
  }

  static bool Has(const std::vector<std::string>& v, const std::string& x) {
    return std::find(v.begin(), v.end(), x) != v.end();
  }
};

TEST_F(QueueFeaturesTest, CreateQueueOptionsAreValidatedAndShown) {
  config_.max_deliveries_max = 10;
  Start();
  EXPECT_EQ(CreateQueueWith("q", 3, "").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateQueueWith("q", 3, "dlq").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CreateQueueWith("q", 0, "q").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateQueueWith("q", 0, "bad name").code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  EXPECT_EQ(CreateQueueWith("q", 11, "dlq").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->ListQueues().size(), 1u);  // nothing above created anything
  ASSERT_TRUE(CreateQueueWith("q", 3, "dlq").ok());
  EXPECT_EQ(Info("q").max_deliveries(), 3u);
  EXPECT_EQ(Info("q").dead_letter_queue(), "dlq");
  EXPECT_EQ(store_.Get<v1::QueueRecord>(kQueuesDb, "q")->max_deliveries(), 3u);

  // A dead-letter queue in use cannot be deleted.
  core_->DeleteQueue(50, "dlq", now_);
  EXPECT_EQ(StatusOf(Collect(), 50).code(), absl::StatusCode::kFailedPrecondition);
  // Options survive a restart.
  Restart();
  EXPECT_EQ(Info("q").max_deliveries(), 3u);
  EXPECT_EQ(Info("q").dead_letter_queue(), "dlq");
}

TEST_F(QueueFeaturesTest, ExpiredLeasesRedeliverThenDeadLetterAtMaxDeliveries) {
  Start();
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  ASSERT_TRUE(CreateQueueWith("q", 2, "dlq").ok());
  v1::Op op = EnqueueOp("q", "poison");
  (*op.mutable_enqueue()->mutable_headers())["k"] = "v";
  ASSERT_EQ(Prepare(PrepareReq("t1", {op})).vote(), v1::YES);
  ASSERT_EQ(Commit("t1"), std::vector<uint64_t>{1});

  std::vector<Lease> got = Receive("q", 10, 100);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].delivery_count, 1u);
  now_ += 100;
  core_->ExpireLeases(now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());  // below the maximum: just ready again
  EXPECT_TRUE(Has(o.ready_queues, "q"));
  EXPECT_EQ(Info("q").ready(), 1u);
  got = Receive("q", 10, 100);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].delivery_count, 2u);

  // The second expiry reaches max_deliveries: one batch moves it.
  now_ += 100;
  core_->ExpireLeases(now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_FALSE(Has(o.ready_queues, "dlq"));  // not before the move is durable
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_TRUE(Receive("dlq").empty());
  o = Persist();
  EXPECT_TRUE(Has(o.ready_queues, "dlq"));
  EXPECT_FALSE(Stored("q", 1).has_value());
  std::optional<v1::MessageRecord> moved = Stored("dlq", 1);
  ASSERT_TRUE(moved.has_value());
  EXPECT_EQ(moved->payload(), "poison");
  EXPECT_EQ(moved->headers().at("k"), "v");
  EXPECT_EQ(moved->headers().at("x-dead-letter-queue"), "q");
  EXPECT_EQ(moved->headers().at("x-dead-letter-sequence"), "1");
  EXPECT_EQ(moved->headers().at("x-dead-letter-reason"), "max-deliveries");
  EXPECT_EQ(moved->headers().at("x-delivery-count"), "2");
  EXPECT_EQ(Info("q").ready() + Info("q").leased(), 0u);
  EXPECT_EQ(Info("dlq").version(), 2u);
  got = Receive("dlq");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].sequence, 1u);
  EXPECT_EQ(got[0].delivery_count, 1u);

  // The dead-letter queue's sequence is durable: never reused after a restart.
  Restart();
  EXPECT_EQ(Produce("t2", "dlq", {"x"}), std::vector<uint64_t>{2});
}

TEST_F(QueueFeaturesTest, NackRequeuesAtOnceOrDeadLetters) {
  Start();
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  ASSERT_TRUE(CreateQueueWith("q", 0, "dlq").ok());
  CreateQueue("plain");
  Produce("t1", "q", {"a", "b"});
  Produce("t2", "plain", {"c"});

  std::vector<Lease> got = Receive("q", 1);
  ASSERT_EQ(got.size(), 1u);
  // Requeue needs nothing durable: answered at once, ready at once.
  v1::NackRequest req;
  req.set_queue("q");
  req.set_sequence(got[0].sequence);
  req.set_lease_token(got[0].lease_token);
  core_->Nack(10, req, now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(StatusOf(o, 10).ok());
  EXPECT_FALSE(std::get<v1::NackResponse>(Find(o, 10)->body).dead_lettered());
  EXPECT_TRUE(Has(o.ready_queues, "q"));
  // The old token is dead; the message comes first again (sequence order).
  EXPECT_EQ(Nack(got[0], false).first.code(), absl::StatusCode::kFailedPrecondition);
  got = Receive("q", 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].sequence, 1u);
  EXPECT_EQ(got[0].delivery_count, 2u);

  EXPECT_EQ(Nack(got[0], false, "1-bogus").first.code(), absl::StatusCode::kFailedPrecondition);
  auto [status, resp] = Nack(got[0], true);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(resp.dead_lettered());
  EXPECT_EQ(resp.dead_letter_sequence(), 1u);
  std::optional<v1::MessageRecord> moved = Stored("dlq", 1);
  ASSERT_TRUE(moved.has_value());
  EXPECT_EQ(moved->payload(), "a");
  EXPECT_EQ(moved->headers().at("x-dead-letter-reason"), "nack");
  EXPECT_EQ(Info("q").ready(), 1u);  // "b" stays

  // No dead-letter queue: refused, and the lease is untouched.
  std::vector<Lease> p = Receive("plain");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(Nack(p[0], true).first.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Info("plain").leased(), 1u);
  EXPECT_TRUE(Nack(p[0], false).first.ok());
  EXPECT_EQ(Info("plain").ready(), 1u);
}

TEST_F(QueueFeaturesTest, NackRequeueAtMaxDeliveriesDeadLetters) {
  Start();
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  ASSERT_TRUE(CreateQueueWith("q", 1, "dlq").ok());
  Produce("t1", "q", {"a"});
  std::vector<Lease> got = Receive("q");
  ASSERT_EQ(got.size(), 1u);
  auto [status, resp] = Nack(got[0], false);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(resp.dead_lettered());
  EXPECT_EQ(Stored("dlq", 1)->headers().at("x-dead-letter-reason"), "max-deliveries");
  EXPECT_TRUE(Receive("q").empty());
}

TEST_F(QueueFeaturesTest, FailedMoveLeavesTheMessageInItsQueue) {
  Start();
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  ASSERT_TRUE(CreateQueueWith("q", 0, "dlq").ok());
  Produce("t1", "q", {"a"});
  std::vector<Lease> got = Receive("q");
  v1::NackRequest req;
  req.set_queue("q");
  req.set_sequence(1);
  req.set_lease_token(got[0].lease_token);
  req.set_dead_letter(true);
  core_->Nack(10, req, now_);
  Output o = Persist(absl::ResourceExhaustedError("disk full"));
  EXPECT_EQ(StatusOf(o, 10).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Stored("q", 1).has_value());
  EXPECT_EQ(Info("dlq").ready(), 0u);
  got = Receive("q");
  ASSERT_EQ(got.size(), 1u);  // back in its queue, deliverable
}

TEST_F(QueueFeaturesTest, ReadyQueuesNameQueuesThatGainedMessagesOnce) {
  Start();
  CreateQueue("q");
  CreateQueue("r");
  ASSERT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a"), EnqueueOp("q", "b")})).vote(),
            v1::YES);
  core_->Commit(5, "t1", now_);
  Output o = Collect();
  EXPECT_TRUE(o.ready_queues.empty());  // staged and in-flight messages wake nobody
  o = Persist();
  EXPECT_EQ(o.ready_queues, std::vector<std::string>{"q"});
  std::vector<Lease> got = Receive("q", 10, 50);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_TRUE(Collect().ready_queues.empty());
  now_ += 49;
  core_->ExpireLeases(now_);
  EXPECT_TRUE(Collect().ready_queues.empty());
  now_ += 1;
  core_->ExpireLeases(now_);
  EXPECT_EQ(Collect().ready_queues, std::vector<std::string>{"q"});
  EXPECT_EQ(Info("q").ready(), 2u);
  EXPECT_EQ(Info("q").leased(), 0u);
}

// DESIGN.md section 4: a message under a pending transactional ack is not
// redelivered, acked or nacked by anyone while in doubt, even after its lease
// expires; an abort returns it.
TEST_F(QueueFeaturesTest, PinnedMessageSurvivesLeaseExpiryWhileInDoubt) {
  Start();
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  ASSERT_TRUE(CreateQueueWith("q", 1, "dlq").ok());
  Produce("t0", "q", {"a"});
  std::vector<Lease> got = Receive("q", 1, 100);
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(Prepare(PrepareReq("t1", {AckOp("q", 1, got[0].lease_token)})).vote(), v1::YES);
  now_ += 1000;
  core_->ExpireLeases(now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());  // not dead-lettered
  EXPECT_TRUE(o.ready_queues.empty());
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_EQ(Nack(got[0], false).first.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Info("q").pending_in_txn(), 1u);
  ASSERT_TRUE(Abort("t1").ok());
  // Back, and at its maximum: the next look moves it instead of delivering.
  EXPECT_TRUE(Receive("q").empty());
  Persist();
  EXPECT_EQ(Info("dlq").ready(), 1u);
}

TEST_F(QueueFeaturesTest, SendIsDurableBeforeItsReplyAndVisibleAfter) {
  Start();
  CreateQueue("q");
  v1::SendRequest req = SendReq("q", "hello");
  (*req.mutable_headers())["h"] = "1";
  core_->Send(10, req, now_);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Find(o, 10), nullptr);
  EXPECT_TRUE(Receive("q").empty());
  o = Persist();
  v1::SendResponse resp = Body<v1::SendResponse>(o, 10);
  EXPECT_EQ(resp.sequence(), 1u);
  EXPECT_FALSE(resp.duplicate());
  EXPECT_TRUE(Has(o.ready_queues, "q"));
  EXPECT_EQ(Stored("q", 1)->payload(), "hello");
  EXPECT_EQ(store_.Get<v1::QueueRecord>(kQueuesDb, "q")->next_sequence(), 2u);
  EXPECT_EQ(store_.Count(kDedupDb), 0u);  // no producer id: nothing to remember
  EXPECT_EQ(Info("q").version(), 2u);
  // Sends and transactions share the queue's sequence.
  EXPECT_EQ(Produce("t1", "q", {"x"}), std::vector<uint64_t>{2});
  EXPECT_EQ(SendMsg(SendReq("q", "again")).second.sequence(), 3u);
}

TEST_F(QueueFeaturesTest, SendRejectsBadInputAndChangesNothing) {
  config_.payload_bytes_max = 4;
  config_.headers_max = 1;
  Start();
  CreateQueue("q");
  EXPECT_EQ(SendMsg(SendReq("nope", "a")).first.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(SendMsg(SendReq("bad name", "a")).first.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SendMsg(SendReq("q", "12345")).first.code(), absl::StatusCode::kInvalidArgument);
  v1::SendRequest h = SendReq("q", "a");
  (*h.mutable_headers())["a"] = "1";
  (*h.mutable_headers())["b"] = "2";
  EXPECT_EQ(SendMsg(h).first.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SendMsg(SendReq("q", "a", "bad producer!", 1)).first.code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SendMsg(SendReq("q", "a", "", 7)).first.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(in_flight_.empty());
  EXPECT_EQ(Info("q").version(), 1u);
  EXPECT_EQ(SendMsg(SendReq("q", "ok")).second.sequence(), 1u);
}

TEST_F(QueueFeaturesTest, ProducerRetriesAreDuplicatesAlsoAfterRestart) {
  Start();
  CreateQueue("q");
  CreateQueue("r");
  auto [s1, first] = SendMsg(SendReq("q", "m5", "prod-1", 5));
  ASSERT_TRUE(s1.ok()) << s1;
  EXPECT_EQ(first.sequence(), 1u);
  EXPECT_FALSE(first.duplicate());

  // The same sequence again: the first answer, nothing enqueued.
  RequestId r = next_req_++;
  core_->Send(r, SendReq("q", "m5", "prod-1", 5), now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  v1::SendResponse dup = Body<v1::SendResponse>(o, r);
  EXPECT_TRUE(dup.duplicate());
  EXPECT_EQ(dup.sequence(), 1u);
  // A lower sequence is a duplicate too (its message sequence is unknown).
  auto [s2, lower] = SendMsg(SendReq("q", "m3", "prod-1", 3));
  EXPECT_TRUE(lower.duplicate());
  EXPECT_EQ(lower.sequence(), 0u);
  // Per queue: the same producer sequence on another queue is new.
  EXPECT_FALSE(SendMsg(SendReq("r", "m5", "prod-1", 5)).second.duplicate());
  // A gap is fine.
  auto [s3, next] = SendMsg(SendReq("q", "m9", "prod-1", 9));
  EXPECT_FALSE(next.duplicate());
  EXPECT_EQ(next.sequence(), 2u);
  EXPECT_EQ(Info("q").ready(), 2u);

  Restart();
  auto [s4, after] = SendMsg(SendReq("q", "m9", "prod-1", 9));
  EXPECT_TRUE(after.duplicate());
  EXPECT_EQ(after.sequence(), 2u);
  EXPECT_TRUE(SendMsg(SendReq("q", "m5", "prod-1", 5)).second.duplicate());
  EXPECT_EQ(SendMsg(SendReq("q", "m10", "prod-1", 10)).second.sequence(), 3u);
  EXPECT_EQ(Info("q").ready(), 3u);
}

TEST_F(QueueFeaturesTest, DuplicateOfASendInFlightWaitsForItsBatch) {
  Start();
  CreateQueue("q");
  core_->Send(10, SendReq("q", "a", "p", 1), now_);
  core_->Send(11, SendReq("q", "a", "p", 1), now_);
  Output o = Collect();
  EXPECT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.replies.empty());
  o = Persist();
  EXPECT_FALSE(Body<v1::SendResponse>(o, 10).duplicate());
  EXPECT_TRUE(Body<v1::SendResponse>(o, 11).duplicate());
  EXPECT_EQ(Body<v1::SendResponse>(o, 11).sequence(), 1u);

  // A failed Send is forgotten: the retry enqueues.
  core_->Send(12, SendReq("q", "b", "p", 2), now_);
  o = Persist(absl::ResourceExhaustedError("disk full"));
  EXPECT_EQ(StatusOf(o, 12).code(), absl::StatusCode::kResourceExhausted);
  auto [s, retry] = SendMsg(SendReq("q", "b", "p", 2));
  EXPECT_FALSE(retry.duplicate());
  EXPECT_EQ(retry.sequence(), 3u);  // 2 stays burnt
  EXPECT_TRUE(SendMsg(SendReq("q", "a", "p", 1)).second.duplicate());
}

TEST_F(QueueFeaturesTest, ProducersMaxEvictsTheLeastRecentlyUsed) {
  config_.producers_max = 2;
  Start();
  CreateQueue("q");
  SendMsg(SendReq("q", "a", "A", 1));
  SendMsg(SendReq("q", "b", "B", 1));
  EXPECT_TRUE(SendMsg(SendReq("q", "a", "A", 1)).second.duplicate());  // A is now recent
  SendMsg(SendReq("q", "c", "C", 1));                                   // evicts B
  EXPECT_EQ(store_.Count(kDedupDb), 2u);
  EXPECT_TRUE(SendMsg(SendReq("q", "a", "A", 1)).second.duplicate());
  EXPECT_TRUE(SendMsg(SendReq("q", "c", "C", 1)).second.duplicate());
  Restart();
  EXPECT_TRUE(SendMsg(SendReq("q", "c", "C", 1)).second.duplicate());
  // B was forgotten: its retry is taken as new (the documented cost of the bound).
  EXPECT_FALSE(SendMsg(SendReq("q", "b", "B", 1)).second.duplicate());
}

TEST_F(QueueFeaturesTest, DeleteQueueErasesItsProducersAndWaitsForSends) {
  Start();
  CreateQueue("q");
  SendMsg(SendReq("q", "a", "A", 1));
  core_->Send(10, SendReq("q", "b", "A", 2), now_);
  core_->DeleteQueue(11, "q", now_);
  Output o = Collect();
  EXPECT_EQ(StatusOf(o, 11).code(), absl::StatusCode::kFailedPrecondition);  // Send in flight
  Persist();
  core_->DeleteQueue(12, "q", now_);
  o = Persist();
  EXPECT_TRUE(StatusOf(o, 12).ok());
  EXPECT_EQ(store_.Count(kDedupDb), 0u);
  EXPECT_EQ(store_.Count(kMessagesDb), 0u);
  CreateQueue("q");  // a new queue: a new id, no memory of A
  EXPECT_FALSE(SendMsg(SendReq("q", "a", "A", 1)).second.duplicate());
}


// --- interactive transactions: Stage, expiry, Prepare with use_staged ---

v1::StageRequest StageReq(const std::string& txn, std::vector<v1::Op> ops, int64_t expires_ms,
                          uint32_t batch = 0) {
  v1::StageRequest r;
  r.set_txn_id(txn);
  for (v1::Op& op : ops) *r.add_ops() = std::move(op);
  r.set_expires_unix_ms(expires_ms);
  r.set_batch(batch);
  return r;
}

v1::PrepareRequest StagedPrepareReq(const std::string& txn, uint32_t staged_ops) {
  v1::PrepareRequest req = PrepareReq(txn, {});
  req.set_use_staged(true);
  req.set_staged_ops(staged_ops);
  return req;
}

TEST_F(ParticipantCoreTest, StagePinsAcksAndPrepareTakesExactlyTheStagedOps) {
  Start();
  CreateQueue("in");
  CreateQueue("out");
  Produce("p", "in", {"m1", "m2"});
  std::vector<Lease> got = Receive("in", 2, 100);
  ASSERT_EQ(got.size(), 2u);

  absl::StatusOr<v1::StageResponse> r = core_->Stage(
      StageReq("s1", {AckOp("in", 1, got[0].lease_token), EnqueueOp("out", "x", "")}, now_ + 5000,
               1),
      now_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ops_staged(), 2u);
  EXPECT_EQ(r->expires_unix_ms(), now_ + 5000);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty()) << "staged work is memory only";
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now_ + 5000);
  EXPECT_EQ(core_->staged_transactions(), 1u);
  EXPECT_EQ(Info("in").pending_in_txn(), 1u);
  EXPECT_EQ(Info("out").pending_in_txn(), 1u);
  // Pinned: a plain Ack cannot take it, and an expired lease does not redeliver it.
  core_->Ack(50, "in", 1, got[0].lease_token, now_);
  EXPECT_EQ(StatusOf(Collect(), 50).code(), absl::StatusCode::kFailedPrecondition);
  // Nor can another transaction stage or prepare an ack of it.
  EXPECT_EQ(core_->Stage(StageReq("s2", {AckOp("in", 1, got[0].lease_token)}, now_ + 5000), now_)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);

  // A retried batch applies once; a reused number with other ops, or a gap, is refused.
  r = core_->Stage(
      StageReq("s1", {AckOp("in", 1, got[0].lease_token), EnqueueOp("out", "x", "")}, now_ + 5000,
               1),
      now_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ops_staged(), 2u);
  EXPECT_EQ(core_->Stage(StageReq("s1", {EnqueueOp("out", "other")}, now_ + 5000, 1), now_)
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
  absl::Status gap = core_->Stage(StageReq("s1", {EnqueueOp("out", "z")}, now_ + 5000, 3), now_)
                         .status();
  EXPECT_EQ(gap.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(gap.message(), "lost")) << gap;
  r = core_->Stage(StageReq("s1", {EnqueueOp("out", "y")}, now_ + 5000, 2), now_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ops_staged(), 3u);

  now_ += 1000;  // past the lease, within the transaction's life
  EXPECT_TRUE(Receive("in").size() == 1u) << "m2 only: m1 stays pinned";
  EXPECT_EQ(Prepare(StagedPrepareReq("s1", 3)).vote(), v1::YES);
  EXPECT_EQ(core_->staged_transactions(), 0u);
  auto rec = store_.Get<v1::PreparedRecord>(kPreparedDb, "s1");
  ASSERT_TRUE(rec.has_value());
  ASSERT_EQ(rec->ops_size(), 3);
  for (const v1::Op& op : rec->ops()) EXPECT_EQ(op.participant(), "p1");
  EXPECT_EQ(Prepare(StagedPrepareReq("s1", 3)).vote(), v1::YES) << "a repeated Prepare";
  EXPECT_EQ(Commit("s1"), (std::vector<uint64_t>{0, 1, 2}));
  EXPECT_FALSE(store_.Get<v1::MessageRecord>(kMessagesDb, MessageKey(1, 1)).has_value());
  EXPECT_EQ(Info("out").ready(), 2u);
  EXPECT_EQ(Info("in").pending_in_txn(), 0u);
  EXPECT_EQ(Info("out").pending_in_txn(), 0u);
  absl::Status after = core_->Stage(StageReq("s1", {EnqueueOp("out", "w")}, now_ + 5000), now_)
                           .status();
  EXPECT_EQ(after.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(after.message(), "already committed")) << after;
}

TEST_F(ParticipantCoreTest, StageRefusesBadOpsAndLimitsAndStagesNothing) {
  config_.staged_txns_max = 1;
  config_.ops_per_txn_max = 2;
  config_.staged_bytes_max = 10;
  Start();
  CreateQueue("in");
  Produce("p", "in", {"m1"});
  std::vector<Lease> got = Receive("in", 1, 100);
  ASSERT_EQ(got.size(), 1u);
  auto code = [&](const v1::StageRequest& req) { return core_->Stage(req, now_).status(); };
  const int64_t exp = now_ + 5000;

  absl::Status s = code(StageReq("a", {AckOp("in", 1, "7-999")}, exp));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "stale or foreign")) << s;
  EXPECT_EQ(code(StageReq("a", {EnqueueOp("nope", "x")}, exp)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(code(StageReq("a", {EnqueueOp("in", "x", "p2")}, exp)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(StageReq("a", {}, exp)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(StageReq("bad id!", {EnqueueOp("in", "x")}, exp)).code(),
            absl::StatusCode::kInvalidArgument);
  s = code(StageReq("a", {EnqueueOp("in", "x")}, now_ - 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "expired")) << s;
  // One bad op refuses the whole call: the good ack beside it is not pinned.
  EXPECT_EQ(code(StageReq("a", {AckOp("in", 1, got[0].lease_token), EnqueueOp("nope", "x")}, exp))
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->staged_transactions(), 0u);
  EXPECT_EQ(Info("in").pending_in_txn(), 0u);
  EXPECT_TRUE(Collect().timers.empty());

  // Limits.
  EXPECT_EQ(code(StageReq("a", {EnqueueOp("in", "12345678901")}, exp)).code(),
            absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(code(StageReq("a", {EnqueueOp("in", "x"), EnqueueOp("in", "y")}, exp)).ok());
  EXPECT_EQ(code(StageReq("a", {EnqueueOp("in", "z")}, exp)).code(),
            absl::StatusCode::kResourceExhausted);  // ops_per_txn_max
  EXPECT_EQ(code(StageReq("b", {EnqueueOp("in", "z")}, exp)).code(),
            absl::StatusCode::kResourceExhausted);  // staged_txns_max
  EXPECT_EQ(core_->staged_transactions(), 1u);
}

TEST_F(ParticipantCoreTest, StagedWorkExpiresAndPrepareThenVotesNo) {
  Start();
  CreateQueue("in");
  Produce("p", "in", {"m1"});
  std::vector<Lease> got = Receive("in", 1, 100);
  ASSERT_TRUE(core_
                  ->Stage(StageReq("s1", {AckOp("in", 1, got[0].lease_token), EnqueueOp("in", "x")},
                                   now_ + 1000),
                          now_)
                  .ok());
  Output o = Collect();
  ASSERT_EQ(o.timers.size(), 1u);
  now_ = o.timers[0].at_ms;
  core_->OnTimer(o.timers[0].timer_id, now_);
  Collect();
  EXPECT_EQ(core_->staged_transactions(), 0u);
  EXPECT_TRUE(Logged("txn s1 staged work dropped (2 ops): expired"));
  EXPECT_EQ(Info("in").pending_in_txn(), 0u);
  EXPECT_EQ(Receive("in").size(), 1u) << "the pin is gone and the lease expired";
  v1::PrepareResponse v = Prepare(StagedPrepareReq("s1", 2));
  EXPECT_EQ(v.vote(), v1::NO);
  EXPECT_EQ(v.reason(), "nothing staged for txn s1 on p1 (expired or lost in a restart)");
  EXPECT_TRUE(in_flight_.empty()) << "a NO writes nothing";
}

TEST_F(ParticipantCoreTest, StagedCountMismatchAbortAndRestartDropStagedWork) {
  Start();
  CreateQueue("in");
  Produce("p", "in", {"m1", "m2"});
  std::vector<Lease> got = Receive("in", 2, 10000);
  const int64_t exp = now_ + 5000;

  // The client staged 2 ops, this node holds 1 (e.g. the first was lost in a restart).
  ASSERT_TRUE(core_->Stage(StageReq("s1", {AckOp("in", 1, got[0].lease_token)}, exp), now_).ok());
  v1::PrepareResponse v = Prepare(StagedPrepareReq("s1", 2));
  EXPECT_EQ(v.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(v.reason(), "1 op staged for txn s1 on p1, the client staged 2"))
      << v.reason();
  EXPECT_EQ(core_->staged_transactions(), 0u);
  EXPECT_EQ(Info("in").leased(), 2u) << "the pin went back to its (current) lease";

  // Abort drops staged work and records the outcome: the id takes no more work.
  ASSERT_TRUE(core_->Stage(StageReq("s2", {AckOp("in", 2, got[1].lease_token)}, exp), now_).ok());
  EXPECT_EQ(Info("in").pending_in_txn(), 1u);
  EXPECT_TRUE(Abort("s2").ok());
  EXPECT_EQ(core_->staged_transactions(), 0u);
  EXPECT_EQ(Info("in").pending_in_txn(), 0u);
  EXPECT_EQ(core_->Stage(StageReq("s2", {EnqueueOp("in", "x")}, exp), now_).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Prepare(StagedPrepareReq("s2", 1)).vote(), v1::NO);

  // A plain Prepare for an id with staged work drops it.
  ASSERT_TRUE(core_->Stage(StageReq("s3", {AckOp("in", 2, got[1].lease_token)}, exp), now_).ok());
  EXPECT_EQ(Prepare(PrepareReq("s3", {EnqueueOp("in", "y")})).vote(), v1::YES);
  EXPECT_EQ(core_->staged_transactions(), 0u);
  EXPECT_TRUE(Abort("s3").ok());

  // A restart loses staged work (memory only).
  ASSERT_TRUE(core_->Stage(StageReq("s4", {EnqueueOp("in", "z")}, exp), now_).ok());
  Restart();
  EXPECT_EQ(core_->staged_transactions(), 0u);
  EXPECT_EQ(Info("in").pending_in_txn(), 0u);
  EXPECT_EQ(Prepare(StagedPrepareReq("s4", 1)).vote(), v1::NO);
}


// ------------------------------------------------- 3PC quorum termination

v1::PrepareRequest ThreePcReq(const std::string& txn) {
  v1::PrepareRequest req = PrepareReq(txn, {EnqueueOp("q", "m")});
  req.set_protocol(v1::THREE_PC);
  return req;
}

TEST_F(ParticipantCoreTest, PromiseIsDurableBeforeTheAnswerAndRefusesPreCommit) {
  Start();
  CreateQueue("q");
  ASSERT_EQ(Prepare(ThreePcReq("t1")).vote(), v1::YES);
  core_->Promise(50, "t1", 6, now_);
  Output o = Collect();
  EXPECT_EQ(Find(o, 50), nullptr);  // not before the ballot is on disk
  o = Persist();
  v1::PromiseResponse p = Body<v1::PromiseResponse>(o, 50);
  EXPECT_TRUE(p.promised());
  EXPECT_EQ(p.state(), v1::PREPARED);
  EXPECT_EQ(p.accepted_value(), v1::TXN_STATE_UNSPECIFIED);
  EXPECT_EQ(store_.Get<v1::PreparedRecord>(kPreparedDb, "t1")->promised_ballot(), 6u);
  // A lower ballot is refused, with the one promised.
  core_->Promise(51, "t1", 5, now_);
  p = Body<v1::PromiseResponse>(Collect(), 51);
  EXPECT_FALSE(p.promised());
  EXPECT_EQ(p.promised_ballot(), 6u);
  // The coordinator's PreCommit is ballot 0: refused now.
  core_->PreCommit(52, "t1", now_);
  EXPECT_EQ(StatusOf(Collect(), 52).code(), absl::StatusCode::kFailedPrecondition);
  // Accept at the promised ballot: durable, then answered.
  core_->Accept(53, "t1", 6, v1::STATE_ABORTED, now_);
  EXPECT_EQ(Find(Collect(), 53), nullptr);
  v1::AcceptResponse a = Body<v1::AcceptResponse>(Persist(), 53);
  EXPECT_TRUE(a.accepted());
  auto rec = store_.Get<v1::PreparedRecord>(kPreparedDb, "t1");
  EXPECT_EQ(rec->accepted_ballot(), 6u);
  EXPECT_EQ(rec->accepted_value(), v1::STATE_ABORTED);
  // Ballots survive a restart.
  Restart();
  core_->Promise(54, "t1", 6, now_);
  p = Body<v1::PromiseResponse>(Collect(), 54);
  EXPECT_TRUE(p.promised());
  EXPECT_EQ(p.accepted_ballot(), 6u);
  EXPECT_EQ(p.accepted_value(), v1::STATE_ABORTED);
}

TEST_F(ParticipantCoreTest, PromiseForUnknownTransactionRecordsAbort) {
  Start();
  CreateQueue("q");
  core_->Promise(60, "never", 5, now_);
  EXPECT_EQ(Find(Collect(), 60), nullptr);
  v1::PromiseResponse p = Body<v1::PromiseResponse>(Persist(), 60);
  EXPECT_EQ(p.state(), v1::STATE_ABORTED);
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "never")->state(), v1::STATE_ABORTED);
  EXPECT_EQ(Prepare(ThreePcReq("never")).vote(), v1::NO);
  // Bad input changes nothing.
  core_->Promise(61, "x", 0, now_);
  EXPECT_EQ(StatusOf(Collect(), 61).code(), absl::StatusCode::kInvalidArgument);
  core_->Accept(62, "x", 5, v1::PREPARED, now_);
  EXPECT_EQ(StatusOf(Collect(), 62).code(), absl::StatusCode::kInvalidArgument);
  // 2PC transactions have no rounds.
  ASSERT_EQ(Prepare(PrepareReq("two", {EnqueueOp("q", "m")})).vote(), v1::YES);
  core_->Promise(63, "two", 5, now_);
  EXPECT_EQ(StatusOf(Collect(), 63).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "x").has_value());
}

// p1 leads: promises from a majority; the value accepted at the highest
// ballot wins; accepts from a majority decide.
TEST_F(ParticipantCoreTest, TerminationLeaderAdoptsTheAcceptedValue) {
  Start();
  CreateQueue("q");
  ASSERT_EQ(Prepare(ThreePcReq("t1")).vote(), v1::YES);
  Output o = Collect();
  now_ += config_.in_doubt_after_ms;
  core_->OnTimer(last_timer(), now_);
  o = Persist();  // the ballot, with p1's own promise
  auto rec = store_.Get<v1::PreparedRecord>(kPreparedDb, "t1");
  const uint64_t b = rec->proposed_ballot();
  EXPECT_EQ(b % 4, 1u);  // p1 is index 0 of 3: ballots 4k+1
  EXPECT_EQ(rec->promised_ballot(), b);
  std::vector<std::string> promise_to;
  for (const OutPeerMsg& m : o.peer_msgs) {
    if (m.type == PeerMsgType::kPromise) promise_to.push_back(m.target);
  }
  EXPECT_EQ(promise_to, (std::vector<std::string>{"p2", "p3"}));
  v1::PromiseResponse p2;
  p2.set_promised(true);
  p2.set_state(v1::PRECOMMITTED);
  p2.set_accepted_ballot(0);
  p2.set_accepted_value(v1::STATE_COMMITTED);  // p2 got the coordinator's PreCommit
  core_->OnPromiseReply("t1", "p2", b, p2, now_);
  o = Collect();
  ASSERT_EQ(o.peer_msgs.size(), 3u);  // Accept to all three, itself included
  for (const OutPeerMsg& m : o.peer_msgs) {
    EXPECT_EQ(m.type, PeerMsgType::kAccept);
    EXPECT_EQ(m.value, v1::STATE_COMMITTED);
    EXPECT_EQ(m.ballot, b);
  }
  v1::AcceptResponse yes;
  yes.set_accepted(true);
  core_->OnAcceptReply("t1", "p2", b, yes, now_);
  EXPECT_TRUE(Collect().peer_msgs.empty());  // 1 of 3
  core_->OnAcceptReply("t1", "p3", b, yes, now_);
  o = Persist();
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->state(), v1::STATE_COMMITTED);
  std::vector<std::string> told;
  for (const OutPeerMsg& m : o.peer_msgs) {
    EXPECT_EQ(m.type, PeerMsgType::kCommit);
    told.push_back(m.target);
  }
  EXPECT_EQ(told, (std::vector<std::string>{"p2", "p3"}));
}

TEST_F(ParticipantCoreTest, TerminationLeaderProposesAbortWhenNothingWasAccepted) {
  Start();
  CreateQueue("q");
  ASSERT_EQ(Prepare(ThreePcReq("t1")).vote(), v1::YES);
  Collect();
  now_ += config_.in_doubt_after_ms;
  core_->OnTimer(last_timer(), now_);
  Persist();
  const uint64_t b = store_.Get<v1::PreparedRecord>(kPreparedDb, "t1")->proposed_ballot();
  // A refusal (a higher ballot elsewhere) does not count.
  v1::PromiseResponse no;
  no.set_promised(false);
  no.set_promised_ballot(b + 1);
  core_->OnPromiseReply("t1", "p3", b, no, now_);
  EXPECT_TRUE(Collect().peer_msgs.empty());
  v1::PromiseResponse p2;
  p2.set_promised(true);
  p2.set_state(v1::PREPARED);
  core_->OnPromiseReply("t1", "p2", b, p2, now_);
  Output o = Collect();
  ASSERT_FALSE(o.peer_msgs.empty());
  EXPECT_EQ(o.peer_msgs[0].value, v1::STATE_ABORTED);
  // A peer that decided settles it at once.
  v1::AcceptResponse decided;
  decided.set_state(v1::STATE_ABORTED);
  core_->OnAcceptReply("t1", "p2", b, decided, now_);
  Persist();
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->state(), v1::STATE_ABORTED);
}

TEST_F(ParticipantCoreTest, NoEmptyReadOnlyVoteUnder3pc) {
  Start();
  v1::PrepareRequest req = PrepareReq("t1", {});
  EXPECT_EQ(Prepare(req).vote(), v1::READ_ONLY);
  req = PrepareReq("t2", {});
  req.set_protocol(v1::THREE_PC);
  EXPECT_EQ(Prepare(req).vote(), v1::YES);  // an acceptor of termination rounds
  EXPECT_TRUE(store_.Get<v1::PreparedRecord>(kPreparedDb, "t2").has_value());
}

// ------------------------------------------- operator resolution (Resolve)

class ResolveTest : public ParticipantCoreTest {
 protected:
  static v1::ResolveRequest Req(const std::string& txn, v1::Outcome outcome,
                                const std::string& note = "c1 lost its disk; ticket 42") {
    v1::ResolveRequest req;
    req.set_txn_id(txn);
    req.set_outcome(outcome);
    req.set_operator_note(note);
    return req;
  }

  // Prepared (YES given) and in doubt: its in-doubt timer fired.
  void InDoubt(const v1::PrepareRequest& req) {
    ASSERT_EQ(Prepare(req).vote(), v1::YES);
    Collect();
    now_ += config_.in_doubt_after_ms;
    core_->OnTimer(last_timer(), now_);
    Collect();
    ASSERT_TRUE(Txn(req.txn_id()).has_value());
    ASSERT_TRUE(Txn(req.txn_id())->in_doubt());
  }

  // A Resolve answered at once (a refusal): nothing may be written.
  absl::Status Refused(const v1::ResolveRequest& req) {
    RequestId r = next_req_++;
    core_->Resolve(r, req, now_);
    Output o = Collect();
    EXPECT_TRUE(o.persist.empty()) << "a refused Resolve wrote something";
    return StatusOf(o, r);
  }

  // A Resolve that is answered only once its batch is durable.
  v1::ResolveResponse Resolved(const v1::ResolveRequest& req) {
    RequestId r = next_req_++;
    core_->Resolve(r, req, now_);
    Output o = Collect();
    EXPECT_EQ(Find(o, r), nullptr) << "answered before the outcome is durable";
    EXPECT_EQ(o.persist.size(), 1u);
    return Body<v1::ResolveResponse>(Persist(), r);
  }

  std::optional<v1::HeuristicOutcome> Heuristic(const std::string& id) {
    for (const v1::HeuristicOutcome& h : core_->HeuristicOutcomes()) {
      if (h.txn_id() == id) return h;
    }
    return std::nullopt;
  }
};

// ------------------------------- outcome collection (BatchItem.forget)

std::string ForgettableKey(int64_t at_ms, const std::string& id) {
  return EncodeU64(static_cast<uint64_t>(at_ms)) + id;
}

TEST_F(ParticipantCoreTest, EndedOutcomesGoAfterRetentionAndAreThenAnsweredAsUnknownOnes) {
  config_.retention_ms = 1000;
  Start();
  CreateQueue("q");
  EXPECT_EQ(Produce("t1", "q", {"a"}), (std::vector<uint64_t>{1}));
  EXPECT_EQ(Prepare(PrepareReq("t2", {EnqueueOp("q", "b")})).vote(), v1::YES);
  EXPECT_TRUE(Abort("t2").ok());

  // The END notices: one lazy index entry each, in one batch when they
  // arrive together, nothing answered.
  const int64_t noticed = now_;
  core_->Forget("t1", now_);
  core_->Forget("t2", now_);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_FALSE(o.persist[0].sync);
  ASSERT_EQ(o.persist[0].writes.size(), 2u);
  for (const Write& w : o.persist[0].writes) {
    EXPECT_EQ(w.db, kForgettableDb);
    EXPECT_TRUE(w.value.empty());
  }
  EXPECT_EQ(o.persist[0].writes[0].key, ForgettableKey(noticed, "t1"));
  EXPECT_EQ(o.persist[0].writes[1].key, ForgettableKey(noticed, "t2"));
  EXPECT_TRUE(o.replies.empty());
  Persist();
  EXPECT_EQ(store_.Count(kForgettableDb), 2u);
  Restart();  // the entries and outcomes are on disk; the cache is gone
  const std::vector<std::string> keys = {ForgettableKey(noticed, "t1"),
                                         ForgettableKey(noticed, "t2")};

  // Within the window nothing goes.
  now_ = noticed + 1000;
  EXPECT_EQ(core_->CollectOutcomes(keys, now_), 0u);
  EXPECT_TRUE(Collect().persist.empty());

  now_ += 1;
  EXPECT_EQ(core_->CollectOutcomes(keys, now_), 2u);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_FALSE(o.persist[0].sync);
  std::set<std::pair<std::string, std::string>> erased;
  for (const Write& w : o.persist[0].writes) {
    EXPECT_TRUE(w.erase);
    erased.insert({w.db, w.key});
  }
  EXPECT_EQ(erased, (std::set<std::pair<std::string, std::string>>{
                        {kForgettableDb, keys[0]}, {kForgettableDb, keys[1]},
                        {kOutcomesDb, "t1"}, {kOutcomesDb, "t2"}}));
  // A second look while that batch is in flight takes nothing.
  EXPECT_EQ(core_->CollectOutcomes(keys, now_), 0u);
  EXPECT_TRUE(Collect().persist.empty());
  // Until the erase is durable the outcome is still read from disk.
  EXPECT_EQ(Commit("t1"), (std::vector<uint64_t>{1}));
  EXPECT_EQ(core_->outcomes_erased(), 0u);
  Persist();
  EXPECT_EQ(core_->outcomes_erased(), 2u);
  EXPECT_EQ(store_.Count(kOutcomesDb), 0u);
  EXPECT_EQ(store_.Count(kForgettableDb), 0u);

  // Now they are answered exactly as an id never heard of ("t9"): a late
  // Commit is OK with no sequences, a late Abort records ABORTED.
  for (const char* id : {"t1", "t9"}) {
    EXPECT_TRUE(Commit(id).empty()) << id;
    EXPECT_TRUE(Logged(absl::StrCat("txn ", id, " Commit for a transaction unknown here")));
  }
  for (const char* id : {"t2", "t9"}) {
    EXPECT_TRUE(Abort(id).ok()) << id;
    EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, id)->state(), v1::STATE_ABORTED);
  }
  EXPECT_EQ(Info("q").ready(), 1u);  // the committed message stays, of course
}

TEST_F(ParticipantCoreTest, ForgetAndCollectionLeaveWhatMustStay) {
  config_.retention_ms = 100;
  Start();
  CreateQueue("q");
  // Unknown, invalid, prepared (say, by a late duplicate Prepare after a NO)
  // or not yet durable: the notice is ignored.
  core_->Forget("nope", now_);
  core_->Forget("", now_);
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "a")})).vote(), v1::YES);
  core_->Forget("t1", now_);
  EXPECT_TRUE(Collect().persist.empty());
  core_->Abort(next_req_++, "t2", now_);  // unknown: ABORTED being recorded
  EXPECT_EQ(Collect().persist.size(), 1u);
  core_->Forget("t2", now_);
  EXPECT_TRUE(Collect().persist.empty());
  Persist();

  // An entry whose id is prepared again, or whose outcome is newer than the
  // notice (the id ran again after an earlier collection), loses only itself.
  EXPECT_EQ(Produce("t3", "q", {"b"}).size(), 1u);
  const std::vector<std::string> keys = {ForgettableKey(now_ - 1000, "t1"),
                                         ForgettableKey(now_ - 1, "t3")};
  now_ += 101;
  EXPECT_EQ(core_->CollectOutcomes(keys, now_), 2u);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  for (const Write& w : o.persist[0].writes) EXPECT_EQ(w.db, kForgettableDb);
  Persist();
  EXPECT_EQ(core_->outcomes_erased(), 0u);
  EXPECT_TRUE(Txn("t1").has_value());
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t3")->state(), v1::STATE_COMMITTED);

  // A failed collection changes nothing: the next one erases.
  const int64_t noticed = now_;
  core_->Forget("t3", now_);
  Persist();
  now_ += 101;
  const std::vector<std::string> again = {ForgettableKey(noticed, "t3")};
  EXPECT_EQ(core_->CollectOutcomes(again, now_), 1u);
  Persist(absl::ResourceExhaustedError("disk full"));
  EXPECT_EQ(core_->outcomes_erased(), 0u);
  EXPECT_EQ(store_.Count(kForgettableDb), 1u);
  EXPECT_EQ(Commit("t3").size(), 1u);  // still known, from disk
  EXPECT_EQ(core_->CollectOutcomes(again, now_), 1u);
  Persist();
  EXPECT_EQ(core_->outcomes_erased(), 1u);
  EXPECT_FALSE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t3").has_value());
}

TEST_F(ResolveTest, HeuristicOutcomesAreNeverForgotten) {
  config_.retention_ms = 100;
  Start();
  CreateQueue("q");
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "a")}));
  EXPECT_EQ(Resolved(Req("t1", v1::COMMITTED)).state(), v1::STATE_COMMITTED);
  core_->Forget("t1", now_);
  EXPECT_TRUE(Collect().persist.empty());
  now_ += 1000;
  EXPECT_EQ(core_->CollectOutcomes({ForgettableKey(now_ - 500, "t1")}, now_), 1u);
  Output o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  ASSERT_EQ(o.persist[0].writes.size(), 1u);
  EXPECT_EQ(o.persist[0].writes[0].db, kForgettableDb);
  Persist();
  EXPECT_TRUE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->has_heuristic());
  EXPECT_TRUE(Heuristic("t1").has_value());
}

// QueryState says when an operator set the outcome of a prepared
// transaction: a coordinator recovering a parallel commit counts it as YES.
TEST_F(ResolveTest, QueryStateMarksHeuristicOutcomes) {
  Start();
  CreateQueue("q");
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "a")}));
  EXPECT_EQ(Resolved(Req("t1", v1::ABORTED)).state(), v1::STATE_ABORTED);
  core_->QueryState(7, "t1", now_);
  Output o = Collect();
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 7).state(), v1::STATE_ABORTED);
  EXPECT_TRUE(Body<v1::QueryStateResponse>(o, 7).heuristic());
  // An id this node never prepared is aborted by the protocol, not an operator.
  core_->QueryState(8, "t2", now_);
  o = Persist();
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 8).state(), v1::STATE_ABORTED);
  EXPECT_FALSE(Body<v1::QueryStateResponse>(o, 8).heuristic());
}

TEST_F(ResolveTest, CommitMakesMessagesVisibleAndAppliesAcksDurablyAndMarked) {
  Start();
  CreateQueue("q");
  Produce("t0", "q", {"in"});
  std::vector<Lease> got = Receive("q", 1);
  ASSERT_EQ(got.size(), 1u);
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "out"), AckOp("q", 1, got[0].lease_token)}));

  core_->Resolve(10, Req("t1", v1::COMMITTED), now_);
  Output o = Collect();
  EXPECT_EQ(Find(o, 10), nullptr);  // not before the outcome is durable
  ASSERT_EQ(o.persist.size(), 1u);
  // The protocol's commit batch, plus the heuristic mark.
  std::set<std::string> dbs;
  for (const Write& w : o.persist[0].writes) dbs.insert(w.db);
  EXPECT_EQ(dbs, (std::set<std::string>{kMessagesDb, kQueuesDb, kPreparedDb, kOutcomesDb,
                                        kHeuristicDb}));
  EXPECT_TRUE(Receive("q").empty());  // invisible until durable
  o = Persist();
  v1::ResolveResponse resp = Body<v1::ResolveResponse>(o, 10);
  EXPECT_EQ(resp.state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(resp.heuristic());
  EXPECT_EQ(std::vector<uint64_t>(resp.sequences().begin(), resp.sequences().end()),
            (std::vector<uint64_t>{2, 0}));

  auto rec = store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1");
  ASSERT_TRUE(rec.has_value());
  EXPECT_EQ(rec->state(), v1::STATE_COMMITTED);
  ASSERT_TRUE(rec->has_heuristic());
  EXPECT_EQ(rec->heuristic().operator_note(), "c1 lost its disk; ticket 42");
  EXPECT_EQ(rec->heuristic().resolved_unix_ms(), now_);
  EXPECT_EQ(rec->heuristic().resolved_from(), v1::PREPARED);
  EXPECT_EQ(rec->heuristic().coordinator_id(), "c1");
  EXPECT_TRUE(store_.Get<v1::HeuristicOutcome>(kHeuristicDb, "t1").has_value());
  EXPECT_FALSE(store_.Get<v1::PreparedRecord>(kPreparedDb, "t1").has_value());
  EXPECT_FALSE(store_.Get<v1::MessageRecord>(kMessagesDb, MessageKey(1, 1)).has_value());
  std::vector<Lease> next = Receive("q");
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].sequence, 2u);
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_FALSE(Txn("t1").has_value());
  EXPECT_TRUE(Logged("HEURISTIC DECISION: txn t1 COMMITTED here by an operator"));
  EXPECT_TRUE(Logged("txn t1 COMMITTED here (1 enqueue, 1 ack; settled by an operator"));

  // A retry answers the same; the other outcome is refused.
  RequestId r = next_req_++;
  core_->Resolve(r, Req("t1", v1::COMMITTED), now_);
  o = Collect();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(Body<v1::ResolveResponse>(o, r).sequences_size(), 2);
  absl::Status s = Refused(Req("t1", v1::ABORTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "already committed here by an operator")) << s;
  // The heuristic outcome is listed, also after a restart.
  ASSERT_TRUE(Heuristic("t1").has_value());
  Restart();
  ASSERT_TRUE(Heuristic("t1").has_value());
  EXPECT_EQ(Heuristic("t1")->state(), v1::STATE_COMMITTED);
  EXPECT_EQ(Heuristic("t1")->conflicting_state(), v1::TXN_STATE_UNSPECIFIED);
}

TEST_F(ResolveTest, AbortDropsStagedEnqueuesAndUnpinsAcks) {
  Start();
  CreateQueue("q");
  Produce("t0", "q", {"in"});
  std::vector<Lease> got = Receive("q", 1);
  ASSERT_EQ(got.size(), 1u);
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "out"), AckOp("q", 1, got[0].lease_token)}));
  EXPECT_EQ(Info("q").pending_in_txn(), 2u);

  v1::ResolveResponse resp = Resolved(Req("t1", v1::ABORTED, ""));
  EXPECT_EQ(resp.state(), v1::STATE_ABORTED);
  EXPECT_TRUE(resp.heuristic());
  auto rec = store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1");
  ASSERT_TRUE(rec.has_value());
  EXPECT_EQ(rec->state(), v1::STATE_ABORTED);
  EXPECT_TRUE(rec->has_heuristic());
  EXPECT_FALSE(store_.Get<v1::PreparedRecord>(kPreparedDb, "t1").has_value());
  EXPECT_TRUE(Logged("HEURISTIC DECISION: txn t1 ABORTED here by an operator"));
  // Nothing staged became visible; the acked message is back under its lease.
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_EQ(Info("q").version(), 2u);
  EXPECT_EQ(Info("q").leased(), 1u);
  EXPECT_TRUE(Receive("q").empty());
  core_->Ack(20, "q", 1, got[0].lease_token, now_);
  Collect();
  EXPECT_TRUE(StatusOf(Persist(), 20).ok());
  // A later Prepare of the id votes NO.
  EXPECT_EQ(Prepare(PrepareReq("t1", {EnqueueOp("q", "out")})).vote(), v1::NO);
}

TEST_F(ResolveTest, RefusesBadInputUnknownAndWhatIsNotInDoubtChangingNothing) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Refused(Req("bad id!", v1::COMMITTED)).code(), absl::StatusCode::kInvalidArgument);
  absl::Status s = Refused(Req("t1", v1::PENDING));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "COMMITTED or ABORTED")) << s;
  config_.operator_note_bytes_max = 8;
  Restart();
  s = Refused(Req("t1", v1::COMMITTED, "far too long a note"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "--operator_note_bytes_max=8")) << s;
  EXPECT_EQ(Refused(Req("t1", v1::COMMITTED, "")).code(), absl::StatusCode::kNotFound);
  config_.operator_note_bytes_max = 4096;
  Restart();

  // Unknown: NOT_FOUND, and no presumed abort is recorded.
  s = Refused(Req("nope", v1::ABORTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(s.message(), "not prepared here")) << s;
  EXPECT_FALSE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "nope").has_value());

  // Its PREPARED record not durable yet.
  core_->Prepare(next_req_++, PrepareReq("t1", {EnqueueOp("q", "m")}), now_);
  Collect();
  s = Refused(Req("t1", v1::COMMITTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "still being prepared")) << s;
  // Prepared, but not in doubt yet: the coordinator is still at work.
  Persist();
  s = Refused(Req("t1", v1::COMMITTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "not in doubt yet")) << s;
  // Settled by the protocol.
  EXPECT_EQ(Commit("t1").size(), 1u);
  s = Refused(Req("t1", v1::ABORTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "already committed here by the protocol")) << s;
  // Asking for the outcome it already has: OK, not heuristic, nothing written.
  core_->Resolve(next_req_, Req("t1", v1::COMMITTED), now_);
  Output o = Collect();
  EXPECT_TRUE(o.persist.empty());
  v1::ResolveResponse same = Body<v1::ResolveResponse>(o, next_req_++);
  EXPECT_EQ(same.state(), v1::STATE_COMMITTED);
  EXPECT_FALSE(same.heuristic());
  EXPECT_EQ(same.sequences_size(), 1);
  EXPECT_FALSE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->has_heuristic());
  // Staged only (interactive, never prepared).
  v1::StageRequest stage;
  stage.set_txn_id("t2");
  *stage.add_ops() = EnqueueOp("q", "x");
  ASSERT_TRUE(core_->Stage(stage, now_).ok());
  s = Refused(Req("t2", v1::COMMITTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "only staged")) << s;
  EXPECT_EQ(core_->staged_transactions(), 1u);
  EXPECT_TRUE(core_->HeuristicOutcomes().empty());
}

TEST_F(ResolveTest, ReplyWaitsForDurabilityAndAFailedWriteLeavesItInDoubt) {
  Start();
  CreateQueue("q");
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "m")}));
  core_->Resolve(30, Req("t1", v1::COMMITTED), now_);
  EXPECT_EQ(Find(Collect(), 30), nullptr);
  // A Resolve while the outcome is being written is refused.
  absl::Status s = Refused(Req("t1", v1::ABORTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "being committed")) << s;
  Output o = Persist(absl::ResourceExhaustedError("disk full"));
  EXPECT_EQ(StatusOf(o, 30).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1").has_value());
  ASSERT_TRUE(Txn("t1").has_value());
  EXPECT_TRUE(Txn("t1")->in_doubt());
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_TRUE(core_->HeuristicOutcomes().empty());
  // The operator retries once the disk has room.
  EXPECT_EQ(Resolved(Req("t1", v1::COMMITTED)).state(), v1::STATE_COMMITTED);
  EXPECT_EQ(Receive("q").size(), 1u);
}

TEST_F(ResolveTest, RefusedWhileATerminationRoundLedHereIsUnderWay) {
  Start();
  CreateQueue("q");
  ASSERT_EQ(Prepare(ThreePcReq("t1")).vote(), v1::YES);
  Collect();
  now_ += config_.in_doubt_after_ms;
  core_->OnTimer(last_timer(), now_);  // 3PC: writes a ballot to lead a round
  Collect();
  absl::Status s = Refused(Req("t1", v1::COMMITTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "termination round")) << s;
  Persist();  // the round begins: Promise to p2 and p3
  const uint64_t b = store_.Get<v1::PreparedRecord>(kPreparedDb, "t1")->proposed_ballot();
  s = Refused(Req("t1", v1::COMMITTED));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "waiting for 2 answers")) << s;
  // Both peers unreachable: the round stalls and no longer blocks the operator.
  core_->OnPromiseReply("t1", "p2", b, absl::UnavailableError("down"), now_);
  EXPECT_EQ(Refused(Req("t1", v1::COMMITTED)).code(), absl::StatusCode::kFailedPrecondition);
  core_->OnPromiseReply("t1", "p3", b, absl::UnavailableError("down"), now_);
  v1::ResolveResponse resp = Resolved(Req("t1", v1::COMMITTED));
  EXPECT_EQ(resp.state(), v1::STATE_COMMITTED);
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1")->heuristic().resolved_from(),
            v1::PREPARED);

  // Peers running their own rounds learn the decided state.
  core_->Promise(40, "t1", b + 4, now_);
  v1::PromiseResponse p = Body<v1::PromiseResponse>(Collect(), 40);
  EXPECT_EQ(p.state(), v1::STATE_COMMITTED);
  core_->Accept(41, "t1", b + 4, v1::STATE_ABORTED, now_);
  v1::AcceptResponse a = Body<v1::AcceptResponse>(Collect(), 41);
  EXPECT_FALSE(a.accepted());
  EXPECT_EQ(a.state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(Logged("ALARM heuristic mixed: txn t1"));
  core_->QueryState(42, "t1", now_);
  EXPECT_EQ(Body<v1::QueryStateResponse>(Collect(), 42).state(), v1::STATE_COMMITTED);
  // Late answers to the stalled round change nothing.
  v1::PromiseResponse late;
  late.set_promised(true);
  late.set_state(v1::PREPARED);
  core_->OnPromiseReply("t1", "p2", b, late, now_);
  EXPECT_TRUE(Collect().peer_msgs.empty());
}

TEST_F(ResolveTest, LaterConflictingCommitIsRefusedRecordedAndNeverFlips) {
  Start();
  CreateQueue("q");
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "m")}));
  ASSERT_EQ(Resolved(Req("t1", v1::ABORTED)).state(), v1::STATE_ABORTED);

  // The coordinator comes back with COMMIT in its log.
  core_->Commit(50, "t1", now_);
  Output o = Collect();
  absl::Status s = StatusOf(o, 50);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "aborted here")) << s;
  EXPECT_TRUE(Logged("ALARM heuristic mixed: txn t1 was aborted here by an operator"));
  ASSERT_EQ(o.persist.size(), 1u);  // the conflict, recorded
  Persist();
  auto rec = store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1");
  EXPECT_EQ(rec->state(), v1::STATE_ABORTED);  // no flip
  EXPECT_EQ(rec->heuristic().conflicting_state(), v1::STATE_COMMITTED);
  EXPECT_EQ(store_.Get<v1::HeuristicOutcome>(kHeuristicDb, "t1")->conflicting_state(),
            v1::STATE_COMMITTED);
  ASSERT_TRUE(Heuristic("t1").has_value());
  EXPECT_EQ(Heuristic("t1")->conflicting_state(), v1::STATE_COMMITTED);
  EXPECT_EQ(Heuristic("t1")->conflict_unix_ms(), now_);
  EXPECT_TRUE(Receive("q").empty());
  EXPECT_EQ(Info("q").version(), 1u);
  // A resend: refused again, recorded once.
  core_->Commit(51, "t1", now_);
  o = Collect();
  EXPECT_EQ(StatusOf(o, 51).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(o.persist.empty());
  Restart();
  EXPECT_EQ(Heuristic("t1")->conflicting_state(), v1::STATE_COMMITTED);
  core_->Resolve(52, Req("t1", v1::ABORTED), now_);  // a retry: answered at once
  EXPECT_EQ(Body<v1::ResolveResponse>(Collect(), 52).state(), v1::STATE_ABORTED);
}

TEST_F(ResolveTest, LaterAgreeingCommitIsOkAndAConflictingQueryAnswerIsRecorded) {
  Start();
  CreateQueue("q");
  InDoubt(PrepareReq("t1", {EnqueueOp("q", "a")}));
  InDoubt(PrepareReq("t2", {EnqueueOp("q", "b")}));
  ASSERT_EQ(Resolved(Req("t1", v1::COMMITTED)).sequences(0), 1u);
  // The coordinator agrees: acknowledged as any repeated Commit.
  EXPECT_EQ(Commit("t1"), (std::vector<uint64_t>{1}));
  EXPECT_FALSE(Logged("ALARM"));
  EXPECT_TRUE(Collect().persist.empty());
  EXPECT_EQ(Heuristic("t1")->conflicting_state(), v1::TXN_STATE_UNSPECIFIED);
  // An Abort from a peer's termination round is the other outcome.
  EXPECT_EQ(Abort("t1").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Logged("ALARM heuristic mixed: txn t1 was committed here by an operator"));
  Persist();
  EXPECT_EQ(Heuristic("t1")->conflicting_state(), v1::STATE_ABORTED);

  // An outcome query sent before the resolution, answered after it.
  ASSERT_EQ(Resolved(Req("t2", v1::COMMITTED)).state(), v1::STATE_COMMITTED);
  core_->OnQueryReply("t2", "c1", StateReply(v1::STATE_ABORTED), now_);
  Persist();
  EXPECT_TRUE(Logged("ALARM heuristic mixed: txn t2 was committed here by an operator, but "
                     "coordinator c1 says aborted"));
  EXPECT_EQ(Heuristic("t2")->conflicting_state(), v1::STATE_ABORTED);
  EXPECT_EQ(Heuristic("t2")->conflict_by(), "coordinator c1");
  EXPECT_EQ(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t2")->state(), v1::STATE_COMMITTED);
  EXPECT_EQ(Receive("q").size(), 2u);  // both committed messages stay visible
}

// --- one-phase commit (PrepareRequest.one_phase) ---

v1::PrepareRequest OnePhaseReq(const std::string& txn, std::vector<v1::Op> ops) {
  v1::PrepareRequest req = PrepareReq(txn, std::move(ops));
  req.clear_participants();
  v1::PeerAddress* self = req.add_participants();
  self->set_participant("p1");
  self->set_address("p1:1");
  req.set_one_phase(true);
  return req;
}

std::vector<uint64_t> SeqsOf(const v1::PrepareResponse& r) {
  return {r.sequences().begin(), r.sequences().end()};
}

TEST_F(ParticipantCoreTest, OnePhaseCommitsInOneBatchAndVotesYesWithSequencesOnceDurable) {
  Start();
  CreateQueue("q");
  EXPECT_EQ(Produce("t0", "q", {"x", "y"}), (std::vector<uint64_t>{1, 2}));
  std::vector<Lease> leased = Receive("q", 1);
  ASSERT_EQ(leased.size(), 1u);
  const v1::PrepareRequest req = OnePhaseReq(
      "t1", {EnqueueOp("q", "a"), AckOp("q", 1, leased[0].lease_token), EnqueueOp("q", "b")});
  core_->Prepare(100, req, now_);
  Output o = Collect();
  EXPECT_TRUE(o.replies.empty());  // not before it is durable
  ASSERT_EQ(o.persist.size(), 1u);
  bool outcome = false, prepared = false, erased = false;
  int messages = 0;
  for (const Write& w : o.persist[0].writes) {
    prepared |= w.db == kPreparedDb;
    if (w.db == kMessagesDb && !w.erase) messages++;
    if (w.db == kMessagesDb && w.erase) erased = true;
    if (w.db == kOutcomesDb) {
      v1::OutcomeRecord rec;
      ASSERT_TRUE(DecodeRecord(w.value, &rec).ok());
      EXPECT_EQ(rec.state(), v1::STATE_COMMITTED);
      EXPECT_TRUE(rec.one_phase());
      EXPECT_EQ(rec.ops_digest(), OpsDigest(req.ops()));
      outcome = true;
    }
  }
  EXPECT_TRUE(outcome);
  EXPECT_FALSE(prepared);  // never PREPARED: never in doubt
  EXPECT_TRUE(erased);
  EXPECT_EQ(messages, 2);
  EXPECT_EQ(Info("q").ready(), 1u);  // the new messages are invisible until durable
  EXPECT_FALSE(Txn("t1").has_value());
  // A duplicate Prepare and a QueryState wait for that batch; no second one.
  core_->Prepare(101, req, now_);
  core_->QueryState(102, "t1", now_);
  o = Collect();
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.persist.empty());

  o = Persist();
  v1::PrepareResponse yes = Body<v1::PrepareResponse>(o, 100);
  EXPECT_EQ(yes.vote(), v1::YES);
  EXPECT_EQ(SeqsOf(yes), (std::vector<uint64_t>{3, 0, 4}));
  EXPECT_EQ(SeqsOf(Body<v1::PrepareResponse>(o, 101)), (std::vector<uint64_t>{3, 0, 4}));
  EXPECT_EQ(Body<v1::QueryStateResponse>(o, 102).state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(o.timers.empty());  // no in-doubt timer
  EXPECT_TRUE(o.queries.empty());
  EXPECT_EQ(Info("q").ready(), 3u);  // y, a, b; x was acked
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_TRUE(Logged("txn t1 COMMITTED here (2 enqueues, 1 ack; settled by a one-phase Prepare)"));

  // A late duplicate after the commit, also after a restart: the same answer.
  EXPECT_EQ(SeqsOf(Prepare(req)), (std::vector<uint64_t>{3, 0, 4}));
  EXPECT_TRUE(Collect().persist.empty());
  Restart();
  v1::PrepareResponse again = Prepare(req);
  EXPECT_EQ(again.vote(), v1::YES);
  EXPECT_EQ(SeqsOf(again), (std::vector<uint64_t>{3, 0, 4}));
  EXPECT_TRUE(core_->ListTransactions().empty());
  // Other ops under the id, or a two-phase Prepare of the same ops: NO, and
  // nothing changes (the id is settled).
  v1::PrepareResponse other = Prepare(OnePhaseReq("t1", {EnqueueOp("q", "zz")}));
  EXPECT_EQ(other.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(other.reason(), "committed here with other ops"));
  v1::PrepareRequest two_phase = req;
  two_phase.set_one_phase(false);
  v1::PrepareResponse no = Prepare(two_phase);
  EXPECT_EQ(no.vote(), v1::NO);
  EXPECT_TRUE(absl::StrContains(no.reason(), "in one phase"));
  EXPECT_TRUE(Collect().persist.empty());
  EXPECT_EQ(Info("q").ready(), 3u);
  // The coordinator's Abort (its way to settle an unknown outcome) is refused.
  EXPECT_EQ(Abort("t1").code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ParticipantCoreTest, OnePhaseNoIsDurableBeforeItIsToldAndFinal) {
  Start();
  const v1::PrepareRequest req = OnePhaseReq("t1", {EnqueueOp("late", "a")});
  core_->Prepare(100, req, now_);
  Output o = Collect();
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  ASSERT_EQ(o.persist[0].writes.size(), 1u);
  EXPECT_EQ(o.persist[0].writes[0].db, kOutcomesDb);
  core_->Prepare(101, req, now_);  // a duplicate joins it
  EXPECT_TRUE(Collect().replies.empty());
  o = Persist();
  for (RequestId r : {100, 101}) {
    v1::PrepareResponse no = Body<v1::PrepareResponse>(o, r);
    EXPECT_EQ(no.vote(), v1::NO);
    EXPECT_TRUE(absl::StrContains(no.reason(), "queue \"late\" does not exist")) << no.reason();
  }
  auto rec = store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1");
  ASSERT_TRUE(rec.has_value());
  EXPECT_EQ(rec->state(), v1::STATE_ABORTED);
  EXPECT_TRUE(rec->one_phase());
  // The queue appears; a delayed copy of the Prepare (the client was told
  // ABORTED already) must not commit, also after a restart.
  CreateQueue("late");
  EXPECT_EQ(Prepare(req).vote(), v1::NO);
  Restart();
  EXPECT_EQ(Prepare(req).vote(), v1::NO);
  EXPECT_TRUE(Collect().persist.empty());
  EXPECT_EQ(Info("late").ready(), 0u);
  EXPECT_EQ(Info("late").version(), 1u);
}

TEST_F(ParticipantCoreTest, OnePhaseFailedWriteIsAnErrorAndKeepsNothing) {
  Start();
  CreateQueue("q");
  Produce("t0", "q", {"x"});
  std::vector<Lease> leased = Receive("q", 1);
  ASSERT_EQ(leased.size(), 1u);
  const v1::PrepareRequest req =
      OnePhaseReq("t1", {AckOp("q", 1, leased[0].lease_token), EnqueueOp("q", "a")});
  core_->Prepare(100, req, now_);
  EXPECT_EQ(Info("q").pending_in_txn(), 2u);
  Output o = Persist(absl::ResourceExhaustedError("disk full"));
  absl::Status s = StatusOf(o, 100);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(s.message(), "nothing changed here")) << s;
  // Nothing kept: the ack's message is back under its lease, no outcome.
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_EQ(Info("q").leased(), 1u);
  EXPECT_FALSE(store_.Get<v1::OutcomeRecord>(kOutcomesDb, "t1").has_value());
  // A retry commits (the burnt sequence 2 is skipped).
  v1::PrepareResponse yes = Prepare(req);
  EXPECT_EQ(yes.vote(), v1::YES);
  EXPECT_EQ(SeqsOf(yes), (std::vector<uint64_t>{0, 3}));
}

TEST_F(ParticipantCoreTest, OnePhaseBadRequestsAndAbortOfAnUnknownIdSettleIt) {
  Start();
  CreateQueue("q");
  v1::PrepareRequest staged = OnePhaseReq("t1", {EnqueueOp("q", "a")});
  staged.set_use_staged(true);
  core_->Prepare(1, staged, now_);
  EXPECT_EQ(StatusOf(Collect(), 1).code(), absl::StatusCode::kInvalidArgument);
  v1::PrepareRequest many = PrepareReq("t1", {EnqueueOp("q", "a")});
  many.set_one_phase(true);  // lists p1, p2, p3
  core_->Prepare(2, many, now_);
  EXPECT_EQ(StatusOf(Collect(), 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Collect().persist.empty());

  // The coordinator lost the vote and sends Abort: once that is answered,
  // the Prepare (delayed in the network) can no longer commit.
  EXPECT_TRUE(Abort("t2").ok());
  v1::PrepareResponse no = Prepare(OnePhaseReq("t2", {EnqueueOp("q", "b")}));
  EXPECT_EQ(no.vote(), v1::NO);
  EXPECT_EQ(Info("q").version(), 1u);
  // An Abort that arrives while the one-phase batch is in flight waits for
  // it and is then refused: it committed.
  core_->Prepare(10, OnePhaseReq("t3", {EnqueueOp("q", "c")}), now_);
  core_->Abort(11, "t3", now_);
  EXPECT_TRUE(Collect().replies.empty());
  Output o = Persist();
  EXPECT_EQ(SeqsOf(Body<v1::PrepareResponse>(o, 10)), (std::vector<uint64_t>{1}));
  EXPECT_EQ(StatusOf(o, 11).code(), absl::StatusCode::kFailedPrecondition);
}

// --- paged queues: a backlog beyond --queue_memory_window lives on disk ---

class PagingTest : public QueueFeaturesTest {
 protected:
  PagingTest() { config_.queue_memory_window = 4; }

  static std::vector<std::string> Payloads(int from, int to) {
    std::vector<std::string> p;
    for (int i = from; i <= to; ++i) p.push_back(absl::StrCat("m", i));
    return p;
  }

  // Receives `max` at a time until nothing is left; the sequences in order.
  std::vector<uint64_t> ReceiveAll(const std::string& queue, uint32_t max) {
    std::vector<uint64_t> seqs;
    for (;;) {
      std::vector<Lease> got = Receive(queue, max, 60000);
      if (got.empty()) return seqs;
      for (const Lease& l : got) seqs.push_back(l.sequence);
    }
  }

  static std::vector<uint64_t> Range(uint64_t from, uint64_t to) {
    std::vector<uint64_t> r;
    for (uint64_t i = from; i <= to; ++i) r.push_back(i);
    return r;
  }
};

TEST_F(PagingTest, BacklogBeyondTheWindowPagesInInSequenceOrderWithExactCounts) {
  Start();
  CreateQueue("q");
  Produce("t1", "q", Payloads(1, 10));
  EXPECT_EQ(store_.Count(kMessagesDb), 10u);
  EXPECT_EQ(Info("q").ready(), 10u);
  // 1..4 are in memory: three Receives need no read of the disk.
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    std::vector<Lease> got = Receive("q", 1, 60000);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].sequence, seq);
    EXPECT_EQ(Info("q").ready(), 10 - seq);
    EXPECT_EQ(Info("q").leased(), seq);
  }
  EXPECT_EQ(store_.scans_, 0);
  // One ready in memory, fewer than half the window: the next 3 are read in.
  std::vector<Lease> got = Receive("q", 1, 60000);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].sequence, 4u);
  EXPECT_EQ(store_.scans_, 1);
  EXPECT_EQ(Info("q").ready(), 6u);
  EXPECT_EQ(Info("q").leased(), 4u);
  EXPECT_EQ(ReceiveAll("q", 3), Range(5, 10));
  EXPECT_EQ(Info("q").ready(), 0u);
  EXPECT_EQ(Info("q").leased(), 10u);
  // More than the window in one Receive pages in as it goes.
  Produce("t2", "q", Payloads(11, 30));
  EXPECT_EQ(Info("q").ready(), 20u);
  EXPECT_EQ(ReceiveAll("q", 20), Range(11, 30));
}

TEST_F(PagingTest, EnqueuesBehindABacklogOnDiskStayBehindItInOrder) {
  Start();
  CreateQueue("q");
  Produce("t1", "q", Payloads(1, 5));  // 1..4 in memory, 5 on disk
  std::vector<Lease> first = Receive("q", 3, 100);
  ASSERT_EQ(first.size(), 3u);
  ASSERT_EQ(first[0].sequence, 1u);
  // The window has room (only 4 is ready in memory), but the backlog on
  // disk comes first: 6 and 7 go behind 5.
  Produce("t2", "q", {"m6"});
  EXPECT_EQ(SendMsg(SendReq("q", "m7")).second.sequence(), 7u);
  EXPECT_EQ(Info("q").ready(), 4u);
  EXPECT_EQ(Info("q").leased(), 3u);
  // A nacked message goes first again, then the rest in sequence order.
  ASSERT_TRUE(Nack(first[0], false).first.ok());
  EXPECT_EQ(ReceiveAll("q", 2), (std::vector<uint64_t>{1, 4, 5, 6, 7}));
  EXPECT_EQ(Info("q").ready(), 0u);
  EXPECT_EQ(Info("q").leased(), 7u);
}

TEST_F(PagingTest, RestartCountsTheBacklogWithoutReadingItAndDeliversInOrder) {
  Start();
  CreateQueue("q");
  Produce("t1", "q", Payloads(1, 10));
  ASSERT_EQ(Receive("q", 2, 60000).size(), 2u);
  Restart();
  EXPECT_EQ(store_.scans_, 0);  // counted at recovery, nothing loaded
  EXPECT_EQ(Info("q").ready(), 10u);
  EXPECT_EQ(Info("q").leased(), 0u);
  EXPECT_EQ(Info("q").version(), 11u);
  // Appended after the restart, behind the counted backlog.
  EXPECT_EQ(Produce("t2", "q", {"m11"}), std::vector<uint64_t>{11});
  EXPECT_EQ(Info("q").ready(), 11u);
  std::vector<Lease> got = Receive("q", 3, 60000);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].sequence, 1u);
  EXPECT_EQ(got[0].delivery_count, 1u);
  EXPECT_EQ(ReceiveAll("q", 3), Range(4, 11));
}

TEST_F(PagingTest, RecoveredAckOfAMessageOnDiskIsPinnedAndAnAbortPutsItBackInOrder) {
  Start();
  CreateQueue("q");
  Produce("t0", "q", Payloads(1, 10));
  std::vector<Lease> got = Receive("q", 10, 60000);
  ASSERT_EQ(got.size(), 10u);
  ASSERT_EQ(Prepare(PrepareReq("t1", {AckOp("q", 9, got[8].lease_token)})).vote(), v1::YES);
  ASSERT_EQ(Prepare(PrepareReq("t2", {AckOp("q", 10, got[9].lease_token)})).vote(), v1::YES);
  Restart();
  EXPECT_EQ(Info("q").ready(), 8u);
  EXPECT_EQ(Info("q").pending_in_txn(), 2u);
  // t1 aborts before 9 is reached: back on disk, delivered in its place.
  // t2 commits: 10 is erased.
  core_->OnTimer(last_.timers[0].timer_id, now_);
  core_->OnTimer(last_.timers[1].timer_id, now_);
  Collect();
  core_->OnQueryReply("t1", "c1", StateReply(v1::STATE_ABORTED), now_);
  core_->OnQueryReply("t2", "c1", StateReply(v1::STATE_COMMITTED), now_);
  Persist();
  EXPECT_FALSE(Txn("t1").has_value());
  EXPECT_FALSE(Txn("t2").has_value());
  EXPECT_EQ(Info("q").ready(), 9u);
  EXPECT_EQ(Info("q").pending_in_txn(), 0u);
  EXPECT_FALSE(Stored("q", 10).has_value());
  EXPECT_EQ(ReceiveAll("q", 2), Range(1, 9));
  EXPECT_EQ(Info("q").leased(), 9u);
}

TEST_F(PagingTest, DeleteErasesTheBacklogOnDiskAndAFailedReadFailsIt) {
  Start();
  CreateQueue("q");
  Produce("t1", "q", Payloads(1, 10));
  ASSERT_EQ(Receive("q", 1, 60000).size(), 1u);
  store_.scan_error_ = absl::InternalError("disk read failed");
  core_->DeleteQueue(50, "q", now_);
  Output o = Collect();
  EXPECT_EQ(StatusOf(o, 50).code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(o.persist.empty());
  // Receive serves what is in memory, then answers the read error.
  EXPECT_EQ(Receive("q", 10, 60000).size(), 3u);
  absl::StatusOr<std::vector<Lease>> failed = core_->Receive("q", 10, 60000, now_);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal);
  Collect();
  EXPECT_TRUE(Logged("queue q: reading its backlog from storage failed"));
  EXPECT_EQ(Info("q").ready(), 6u);

  store_.scan_error_ = absl::OkStatus();
  core_->DeleteQueue(51, "q", now_);
  o = Collect();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(o.persist[0].writes.size(), 11u);  // the record and 10 messages
  EXPECT_TRUE(StatusOf(Persist(), 51).ok());
  EXPECT_EQ(store_.Count(kMessagesDb), 0u);
  Restart();
  EXPECT_TRUE(core_->ListQueues().empty());
}

TEST_F(PagingTest, DeadLetteringIntoAndOutOfQueuesWithBacklogsOnDisk) {
  Start();
  ASSERT_TRUE(CreateQueueWith("dlq", 0, "").ok());
  ASSERT_TRUE(CreateQueueWith("q", 0, "dlq").ok());
  Produce("t1", "dlq", Payloads(1, 6));  // 5 and 6 on disk
  Produce("t2", "q", Payloads(11, 20));  // sequences 5..10 on disk
  std::vector<Lease> got = Receive("q", 2, 60000);
  ASSERT_EQ(got.size(), 2u);
  auto [status, resp] = Nack(got[1], true);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(resp.dead_lettered());
  EXPECT_EQ(resp.dead_letter_sequence(), 7u);  // behind the dead-letter queue's backlog
  std::optional<v1::MessageRecord> moved = Stored("dlq", 7);
  ASSERT_TRUE(moved.has_value());
  EXPECT_EQ(moved->payload(), "m12");
  EXPECT_EQ(moved->headers().at("x-dead-letter-sequence"), "2");
  EXPECT_EQ(Info("dlq").ready(), 7u);
  EXPECT_EQ(Info("q").ready(), 8u);
  EXPECT_EQ(Info("q").leased(), 1u);
  EXPECT_EQ(ReceiveAll("dlq", 2), Range(1, 7));
  EXPECT_EQ(ReceiveAll("q", 3), Range(3, 10));
}

}  // namespace
}  // namespace atomq::participant
