// Scripted scenarios against the pure coordinator core: each step feeds one
// input and checks everything the core asked for in response.
#include "coordinator/core/coordinator_core.h"

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"

namespace atomq::coordinator {
namespace {

// The build links gtest only, not gmock.
::testing::AssertionResult Contains(const std::string& haystack, const std::string& needle) {
  if (haystack.find(needle) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << haystack << "\" lacks \"" << needle << "\"";
}

class FakeView : public DurableView {
 public:
  std::optional<v1::CoordinatorTxnRecord> FindTxn(const std::string& txn_id) const override {
    auto it = records.find(txn_id);
    if (it == records.end()) return std::nullopt;
    return it->second;
  }

  // What a storage adapter does when a batch is durable.
  void Apply(const Batch& b) {
    for (const Write& w : b.writes) {
      if (w.db == kEndedDb) continue;  // the time index; checked by EndedRecordsAreIndexedByTime
      EXPECT_EQ(w.db, kTxnDb);
      v1::CoordinatorTxnRecord r;
      ASSERT_TRUE(DecodeRecord(w.value, &r).ok());
      EXPECT_EQ(r.txn_id(), w.key);
      records[w.key] = r;
    }
  }

  std::vector<v1::CoordinatorTxnRecord> All() const {
    std::vector<v1::CoordinatorTxnRecord> v;
    for (const auto& [k, r] : records) v.push_back(r);
    return v;
  }

  std::map<std::string, v1::CoordinatorTxnRecord> records;
};

v1::Op Enq(const std::string& participant, const std::string& queue, const std::string& payload) {
  v1::Op op;
  op.set_participant(participant);
  op.mutable_enqueue()->set_queue(queue);
  op.mutable_enqueue()->set_payload(payload);
  return op;
}

v1::Op AckOp(const std::string& participant, const std::string& queue, uint64_t seq,
             const std::string& token) {
  v1::Op op;
  op.set_participant(participant);
  op.mutable_ack()->set_queue(queue);
  op.mutable_ack()->set_sequence(seq);
  op.mutable_ack()->set_lease_token(token);
  return op;
}

v1::ExecuteRequest Req(const std::string& id, std::vector<v1::Op> ops,
                       v1::Protocol protocol = v1::PROTOCOL_UNSPECIFIED, uint32_t timeout_ms = 0) {
  v1::ExecuteRequest r;
  r.set_txn_id(id);
  r.set_protocol(protocol);
  r.set_timeout_ms(timeout_ms);
  for (v1::Op& op : ops) *r.add_ops() = op;
  return r;
}

v1::PrepareResponse Vote(v1::Vote v, const std::string& reason = "") {
  v1::PrepareResponse r;
  r.set_vote(v);
  r.set_reason(reason);
  return r;
}

v1::CommitResponse Seqs(std::vector<uint64_t> seqs) {
  v1::CommitResponse r;
  for (uint64_t s : seqs) r.add_sequences(s);
  return r;
}

// The record a batch writes. An ENDED record comes with its time-index key.
v1::CoordinatorTxnRecord Rec(const Batch& b) {
  EXPECT_TRUE(b.writes.size() == 1u || (b.writes.size() == 2u && b.writes[1].db == kEndedDb))
      << b.writes.size() << " writes";
  v1::CoordinatorTxnRecord r;
  EXPECT_TRUE(DecodeRecord(b.writes.at(0).value, &r).ok());
  return r;
}

std::vector<std::string> Targets(const Output& out, MsgType type) {
  std::vector<std::string> v;
  for (const OutMessage& m : out.send) {
    if (m.type == type) v.push_back(m.participant);
  }
  std::sort(v.begin(), v.end());
  return v;
}

std::vector<uint64_t> Results(const v1::ExecuteResponse& r) {
  std::vector<uint64_t> v;
  for (const v1::OpResult& x : r.results()) v.push_back(x.sequence());
  return v;
}

using Strs = std::vector<std::string>;

class CoordinatorCoreTest : public ::testing::Test {
 protected:
  CoordinatorCoreTest() {
    config.coordinator_id = "c1";
    config.coordinator_address = "coord:7000";
    config.participants = {{"p1", "h1:7001"}, {"p2", "h2:7001"}, {"p3", "h3:7001"}};
    config.boot_count = 7;
    config.resend_initial_ms = 50;
    config.resend_max_ms = 200;
    // These scripts run single-participant transactions through full 2PC/3PC;
    // the OnePhase tests below switch one-phase commit (the default) on.
    config.one_phase = false;
    // Likewise they write a COMMITTED record; the ParallelCommit tests below
    // switch parallel commit (the default) on.
    config.parallel_commit = false;
  }

  CoordinatorCore& core() {
    if (!core_) core_ = std::make_unique<CoordinatorCore>(config, &view);
    return *core_;
  }

  // A restart: memory is gone, the view is what was made durable.
  void Restart() {
    core_ = std::make_unique<CoordinatorCore>(config, &view);
    core_->Recover(view.All(), now);
  }

  Output Take() { return core().TakeOutput(); }

  // Reports `b` durable, as the adapter would once it is fsync'd.
  void Durable(const Batch& b) {
    view.Apply(b);
    core().OnPersisted(b.token, absl::OkStatus(), now);
  }

  void Fire(const TimerRequest& t) {
    now = std::max(now, t.at_ms);
    core().OnTimer(t.timer_id, now);
  }

  // Runs `req` through a full 2PC commit on every participant it names.
  v1::ExecuteResponse CommitAll(RequestId id, const v1::ExecuteRequest& req,
                                const std::map<std::string, std::vector<uint64_t>>& seqs) {
    core().Execute(id, req, now);
    Output o = Take();
    EXPECT_TRUE(o.replies.empty());
    std::string txn = o.send.at(0).txn_id;
    for (const OutMessage& m : o.send)
      core().OnPrepareReply(txn, m.participant, Vote(v1::YES), now);
    o = Take();
    EXPECT_EQ(o.persist.size(), 1u);
    Durable(o.persist.at(0));
    o = Take();
    for (const OutMessage& m : o.send) {
      auto it = seqs.find(m.participant);
      core().OnCommitReply(txn, m.participant,
                           Seqs(it == seqs.end() ? std::vector<uint64_t>{} : it->second), now);
    }
    o = Take();
    EXPECT_EQ(o.replies.size(), 1u);
    for (const Batch& b : o.persist) Durable(b);
    Take();
    return o.replies.empty() ? v1::ExecuteResponse() : o.replies[0].response;
  }

  Config config;
  FakeView view;
  int64_t now = 1'000'000;

 private:
  std::unique_ptr<CoordinatorCore> core_;
};

// ---------------------------------------------------------------- 2PC

TEST_F(CoordinatorCoreTest, TwoPcHappyPathThreeParticipants) {
  v1::ExecuteRequest req = Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p1", "r", "c"),
                                      AckOp("p3", "in", 7, "lease-1"), Enq("p2", "q", "d")});
  core().Execute(1, req, now);
  Output o = Take();
  ASSERT_EQ(o.send.size(), 3u);
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now + 5000);
  std::map<std::string, std::vector<std::string>> payloads;
  for (const OutMessage& m : o.send) {
    EXPECT_EQ(m.type, MsgType::kPrepare);
    EXPECT_EQ(m.txn_id, "t1");
    EXPECT_EQ(m.address, config.participants.at(m.participant));
    const v1::PrepareRequest& p = m.prepare;
    EXPECT_EQ(p.txn_id(), "t1");
    EXPECT_EQ(p.participant(), m.participant);
    EXPECT_EQ(p.protocol(), v1::TWO_PC);
    EXPECT_EQ(p.coordinator_id(), "c1");
    EXPECT_EQ(p.coordinator_address(), "coord:7000");
    ASSERT_EQ(p.participants_size(), 3);
    EXPECT_EQ(p.participants(0).participant(), "p1");
    EXPECT_EQ(p.participants(0).address(), "h1:7001");
    EXPECT_EQ(p.participants(2).participant(), "p3");
    for (const v1::Op& op : p.ops()) {
      EXPECT_EQ(op.participant(), m.participant);
      payloads[m.participant].push_back(op.has_ack() ? "ack" : op.enqueue().payload());
    }
  }
  EXPECT_EQ(payloads["p1"], (Strs{"a", "c"}));  // only its ops, request order
  EXPECT_EQ(payloads["p2"], (Strs{"b", "d"}));
  EXPECT_EQ(payloads["p3"], (Strs{"ack"}));
  EXPECT_EQ(core().in_flight(), 1u);

  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p3", Vote(v1::YES), now);
  EXPECT_TRUE(Take().empty());
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  o = Take();
  // The decision is being forced: nothing goes out before it is durable.
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  ASSERT_EQ(o.persist[0].writes.size(), 1u);
  EXPECT_EQ(o.persist[0].writes[0].db, kTxnDb);
  EXPECT_EQ(o.persist[0].writes[0].key, "t1");
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_COMMITTED);
  EXPECT_EQ(rec.ops_digest(), OpsDigest(req.ops()));
  EXPECT_EQ(Strs(rec.participants().begin(), rec.participants().end()), (Strs{"p1", "p2", "p3"}));
  EXPECT_EQ(std::vector<uint32_t>(rec.op_participant().begin(), rec.op_participant().end()),
            (std::vector<uint32_t>{0, 1, 0, 2, 1}));
  EXPECT_EQ(rec.acknowledged_size(), 0);

  now += 3;
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
  EXPECT_EQ(o.timers.size(), 3u);  // one resend timer each
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_EQ(o.log[0], "txn t1 COMMITTED (2pc, 3 participants)");
  EXPECT_TRUE(o.replies.empty());  // waits for the sequences

  core().OnCommitReply("t1", "p2", Seqs({20, 21}), now);
  core().OnCommitReply("t1", "p1", Seqs({10, 11}), now);
  EXPECT_TRUE(Take().replies.empty());
  core().OnCommitReply("t1", "p3", Seqs({0}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].request, 1u);
  EXPECT_TRUE(o.replies[0].status.ok());
  EXPECT_EQ(o.replies[0].response.txn_id(), "t1");
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{10, 20, 11, 0, 21}));
  ASSERT_EQ(o.persist.size(), 1u);
  rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::ENDED);
  EXPECT_EQ(rec.acknowledged_size(), 3);
  EXPECT_EQ(std::vector<uint64_t>(rec.sequences().begin(), rec.sequences().end()),
            (std::vector<uint64_t>{10, 20, 11, 0, 21}));
  // Beside it, the time-index key that lets old records be found and erased.
  ASSERT_EQ(o.persist[0].writes.size(), 2u);
  EXPECT_EQ(o.persist[0].writes[1].db, kEndedDb);
  EXPECT_EQ(o.persist[0].writes[1].key, EncodeU64(rec.decided_unix_ms()) + "t1");
  EXPECT_FALSE(o.persist[0].sync);
  EXPECT_EQ(core().in_flight(), 0u);
  Durable(o.persist[0]);
  // ENDED is not waited on; its END notices wait for the next message.
  EXPECT_TRUE(Take().empty());
}

TEST_F(CoordinatorCoreTest, ReplyAtDecisionAnswersOnceTheCommitIsDurableNotApplied) {
  v1::ExecuteRequest req = Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")});
  req.set_reply_at_decision(true);
  core().Execute(1, req, now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.replies.empty());  // never before the decision is on disk
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2"}));
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{0, 0}));
  // A retry meanwhile is answered at once too.
  core().Execute(2, req, now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].request, 2u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  // The commit still runs to the end: acks are awaited and ENDED written.
  core().OnCommitReply("t1", "p1", Seqs({7}), now);
  EXPECT_TRUE(Take().persist.empty());
  core().OnCommitReply("t1", "p2", Seqs({9}), now);
  o = Take();
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
  EXPECT_EQ(core().in_flight(), 0u);
}

TEST_F(CoordinatorCoreTest, NoVoteAbortsAndAbortGoesOnlyToThoseThatMayHavePrepared) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "audit", "b"), Enq("p3", "q", "c")}),
                 now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::NO, "queue \"audit\" does not exist"), now);
  Output o = Take();
  // p1 prepared, p3 has not answered: either may hold a PREPARED record.
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p3"}));
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_ABORTED);
  EXPECT_EQ(rec.reason(), "p2 voted NO: queue \"audit\" does not exist");
  EXPECT_EQ(Strs(rec.acknowledged().begin(), rec.acknowledged().end()), (Strs{"p2"}));
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_EQ(o.log[0], "txn t1 ABORTED: p2 voted NO: queue \"audit\" does not exist");

  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_TRUE(o.replies[0].status.ok());
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_EQ(o.replies[0].response.reason(), "p2 voted NO: queue \"audit\" does not exist");
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{0, 0, 0}));
  EXPECT_EQ(core().in_flight(), 0u);

  // A vote after the decision changes nothing.
  core().OnPrepareReply("t1", "p3", Vote(v1::YES), now);
  EXPECT_TRUE(Take().empty());
  core().OnAbortReply("t1", "p1", absl::OkStatus(), now);
  EXPECT_TRUE(Take().empty());
  core().OnAbortReply("t1", "p3", absl::OkStatus(), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::ENDED);
  EXPECT_EQ(rec.reason(), "p2 voted NO: queue \"audit\" does not exist");
  Durable(o.persist[0]);
  absl::StatusOr<v1::TransactionInfo> info = core().GetTransaction("t1");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::ENDED);
  EXPECT_EQ(info->outcome(), v1::ABORTED);
}

TEST_F(CoordinatorCoreTest, FailedPrepareRpcAborts) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p3", "q", "c")}),
                 now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", absl::UnavailableError("connection refused"), now);
  Output o = Take();
  // The failed call may have reached p2 and prepared it.
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2", "p3"}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).reason(), "p2 unreachable: UNAVAILABLE: connection refused");
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_EQ(o.replies[0].response.reason(), "p2 unreachable: UNAVAILABLE: connection refused");
}

TEST_F(CoordinatorCoreTest, PrepareDeadlineAborts) {
  core().Execute(
      1,
      Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p3", "q", "c")}, v1::TWO_PC, 300),
      now);
  Output o = Take();
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now + 300);
  TimerRequest deadline = o.timers[0];
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  EXPECT_TRUE(Take().empty());
  Fire(deadline);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2", "p3"}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).reason(), "prepare timed out after 300 ms waiting for p2, p3");
  EXPECT_TRUE(o.replies.empty());
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.reason(), "prepare timed out after 300 ms waiting for p2, p3");
  // A stale firing of the same timer does nothing.
  core().OnTimer(deadline.timer_id, now);
  EXPECT_TRUE(Take().empty());
}

TEST_F(CoordinatorCoreTest, TimeoutDefaultsAndCap) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a")}), now);
  EXPECT_EQ(Take().timers.at(0).at_ms, now + 5000);
  core().Execute(2, Req("t2", {Enq("p1", "q", "a")}, v1::TWO_PC, 999'999'999), now);
  EXPECT_EQ(Take().timers.at(0).at_ms, now + 60000);
}

TEST_F(CoordinatorCoreTest, DuplicateAndLateMessagesAreIgnored) {
  // Inputs about transactions nobody knows.
  core().OnPrepareReply("nope", "p1", Vote(v1::YES), now);
  core().OnCommitReply("nope", "p1", Seqs({1}), now);
  core().OnAbortReply("nope", "p1", absl::OkStatus(), now);
  core().OnPreCommitReply("nope", "p1", absl::OkStatus(), now);
  core().OnTimer(12345, now);
  core().OnPersisted(999, absl::OkStatus(), now);
  EXPECT_TRUE(Take().empty());

  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Output o = Take();
  TimerRequest deadline = o.timers.at(0);
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);      // duplicate
  core().OnPrepareReply("t1", "p1", Vote(v1::NO, "x"), now);  // contradicts: first vote stands
  core().OnPrepareReply("t1", "p3", Vote(v1::NO, "x"), now);  // not a participant of t1
  EXPECT_TRUE(Take().empty());
  core().OnCommitReply("t1", "p1", Seqs({1}), now);  // before any Commit was sent
  EXPECT_TRUE(Take().empty());
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Batch commit = o.persist[0];
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);  // duplicate after the decision
  EXPECT_TRUE(Take().empty());
  Durable(commit);
  o = Take();
  std::map<std::string, TimerRequest> resend;
  for (size_t i = 0; i < o.send.size(); ++i) resend[o.send[i].participant] = o.timers.at(i);
  core().OnPersisted(commit.token, absl::OkStatus(), now);  // duplicate report
  EXPECT_TRUE(Take().empty());
  core().OnCommitReply("t1", "p1", Seqs({5}), now);
  core().OnCommitReply("t1", "p1", Seqs({6}), now);        // duplicate ack
  core().OnAbortReply("t1", "p1", absl::OkStatus(), now);  // wrong outcome: ignored
  EXPECT_TRUE(Take().empty());
  Fire(resend["p1"]);  // p1 acked: stale
  EXPECT_TRUE(Take().empty());
  core().OnCommitReply("t1", "p2", Seqs({8}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{5, 8}));
  Fire(deadline);  // the transaction is done
  Fire(resend["p2"]);
  core().OnCommitReply("t1", "p2", Seqs({8}), now);
  EXPECT_TRUE(Take().persist.size() <= 1u);
  EXPECT_TRUE(Take().empty());
}

// ------------------------------------------------------------ idempotence

TEST_F(CoordinatorCoreTest, RetryWithSameIdGetsTheSameOutcome) {
  v1::ExecuteRequest req = Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")});
  core().Execute(1, req, now);
  Take();
  core().Execute(2, req, now);  // retry while preparing: joins
  Output o = Take();
  EXPECT_TRUE(o.empty());
  EXPECT_EQ(core().in_flight(), 1u);
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  o = Take();
  Durable(o.persist.at(0));
  Take();
  core().OnCommitReply("t1", "p1", Seqs({3}), now);
  core().OnCommitReply("t1", "p2", Seqs({4}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 2u);
  for (const ExecuteReply& r : o.replies) {
    EXPECT_EQ(r.response.outcome(), v1::COMMITTED);
    EXPECT_EQ(Results(r.response), (std::vector<uint64_t>{3, 4}));
  }
  Durable(o.persist.at(0));

  core().Execute(3, req, now);  // after the end: answered at once
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].request, 3u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{3, 4}));
  EXPECT_TRUE(o.send.empty());

  core().Execute(4, Req("t1", {Enq("p1", "q", "other")}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(o.send.empty());
}

TEST_F(CoordinatorCoreTest, RetryOfAnAbortedTransactionGetsAborted) {
  v1::ExecuteRequest req = Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")});
  core().Execute(1, req, now);
  Take();
  core().OnPrepareReply("t1", "p2", Vote(v1::NO, "full"), now);
  Output o = Take();
  core().Execute(2, req, now);  // the abort is not durable yet: waits
  EXPECT_TRUE(Take().replies.empty());
  Durable(o.persist.at(0));
  o = Take();
  ASSERT_EQ(o.replies.size(), 2u);
  EXPECT_EQ(o.replies[1].response.outcome(), v1::ABORTED);
  EXPECT_EQ(o.replies[1].response.reason(), "p2 voted NO: full");
}

TEST_F(CoordinatorCoreTest, IdKnownOnlyToTheDurableView) {
  v1::ExecuteRequest req = Req("old", {Enq("p1", "q", "a"), Enq("p2", "q", "b")});
  v1::CoordinatorTxnRecord r;
  r.set_txn_id("old");
  r.set_state(v1::ENDED);
  r.set_ops_digest(OpsDigest(req.ops()));
  r.add_participants("p1");
  r.add_participants("p2");
  r.add_op_participant(0);
  r.add_op_participant(1);
  r.add_sequences(41);
  r.add_sequences(42);
  view.records["old"] = r;
  r.set_txn_id("gone");
  r.set_state(v1::STATE_ABORTED);
  r.set_reason("p1 voted NO: no");
  view.records["gone"] = r;

  core().Execute(1, req, now);
  Output o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_TRUE(o.replies[0].status.ok());
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{41, 42}));
  EXPECT_TRUE(o.send.empty());

  core().Execute(2, Req("old", {Enq("p1", "q", "z")}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].status.code(), absl::StatusCode::kAlreadyExists);

  v1::ExecuteRequest gone = req;
  gone.set_txn_id("gone");
  core().Execute(3, gone, now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_EQ(o.replies[0].response.reason(), "p1 voted NO: no");
  EXPECT_EQ(core().in_flight(), 0u);
}

// ------------------------------------------------------------- validation

TEST_F(CoordinatorCoreTest, ValidationErrors) {
  config.ops_per_txn_max = 3;
  config.payload_bytes_max = 10;
  config.headers_max = 1;
  v1::Op two_headers = Enq("p1", "q", "a");
  (*two_headers.mutable_enqueue()->mutable_headers())["a"] = "1";
  (*two_headers.mutable_enqueue()->mutable_headers())["b"] = "2";
  v1::Op neither;
  neither.set_participant("p1");
  struct Case {
    v1::ExecuteRequest req;
    std::string message;
  };
  std::vector<Case> cases = {
      {Req("bad id!", {Enq("p1", "q", "a")}), "transaction id"},
      {Req(std::string(129, 'x'), {Enq("p1", "q", "a")}), "transaction id"},
      {Req("t", {}), "ops is empty"},
      {Req("t",
           {Enq("p1", "q", "a"), Enq("p1", "q", "a"), Enq("p1", "q", "a"), Enq("p1", "q", "a")}),
       "4 ops; at most 3"},
      {Req("t", {Enq("p1", "q", "a"), Enq("p9", "q", "a")}),
       "op 1: participant \"p9\" is not known"},
      {Req("t", {Enq("p1", "q", "01234567890")}), "op 0: payload is 11 bytes; at most 10"},
      {Req("t", {Enq("p1", "q", "a"), Enq("p1", "bad queue", "a")}), "op 1: queue name"},
      {Req("t", {Enq("p1", "", "a")}), "op 0: queue name is empty"},
      {Req("t", {two_headers}), "op 0: 2 headers; at most 1"},
      {Req("t", {AckOp("p1", "q", 0, "tok")}), "op 0: ack sequence must be > 0"},
      {Req("t", {AckOp("p1", "q", 3, "")}), "op 0: ack lease_token is empty"},
      {Req("t", {neither}), "op 0: neither enqueue nor ack is set"},
      {Req("t", {Enq("p1", "q", "a")}, static_cast<v1::Protocol>(9)), "protocol 9"},
  };
  RequestId id = 1;
  for (const Case& c : cases) {
    core().Execute(id, c.req, now);
    Output o = Take();
    ASSERT_EQ(o.replies.size(), 1u) << c.message;
    EXPECT_EQ(o.replies[0].request, id);
    EXPECT_EQ(o.replies[0].status.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_TRUE(Contains(std::string(o.replies[0].status.message()), c.message));
    EXPECT_TRUE(o.send.empty());
    EXPECT_TRUE(o.persist.empty());
    EXPECT_TRUE(o.timers.empty());
    ++id;
  }
  EXPECT_EQ(core().in_flight(), 0u);
}

TEST_F(CoordinatorCoreTest, InFlightLimit) {
  config.txns_in_flight_max = 2;
  v1::ExecuteRequest a = Req("a", {Enq("p1", "q", "a")});
  core().Execute(1, a, now);
  core().Execute(2, Req("b", {Enq("p1", "q", "a")}), now);
  Take();
  core().Execute(3, Req("c", {Enq("p1", "q", "a")}), now);
  Output o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(o.send.empty());
  core().Execute(4, a, now);  // a retry adds nothing in flight: it joins
  EXPECT_TRUE(Take().empty());
  // Once "a" is answered there is room again.
  core().OnPrepareReply("a", "p1", Vote(v1::NO, "x"), now);
  Durable(Take().persist.at(0));
  EXPECT_EQ(Take().replies.size(), 2u);
  EXPECT_EQ(core().in_flight(), 1u);
  core().Execute(5, Req("c", {Enq("p1", "q", "a")}), now);
  EXPECT_EQ(Take().send.size(), 1u);
}

TEST_F(CoordinatorCoreTest, MintedIdsBeginWithTheCoordinatorId) {
  view.records["c1-7-2"].set_txn_id("c1-7-2");  // a client took this one
  core().Execute(1, Req("", {Enq("p1", "q", "a")}), now);
  core().Execute(2, Req("", {Enq("p1", "q", "a")}), now);
  Output o = Take();
  ASSERT_EQ(o.send.size(), 2u);
  EXPECT_EQ(o.send[0].txn_id, "c1-7-1");
  EXPECT_EQ(o.send[1].txn_id, "c1-7-3");
}

TEST_F(CoordinatorCoreTest, DefaultProtocolApplies) {
  config.default_protocol = v1::THREE_PC;
  core().Execute(1, Req("t", {Enq("p1", "q", "a")}), now);
  EXPECT_EQ(Take().send.at(0).prepare.protocol(), v1::THREE_PC);
}

// -------------------------------------------------------- completion round

TEST_F(CoordinatorCoreTest, CommitResentWithBackoffUntilAcknowledged) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Durable(Take().persist.at(0));
  Output o = Take();
  ASSERT_EQ(o.send.size(), 2u);
  ASSERT_EQ(o.timers.size(), 2u);
  EXPECT_EQ(o.timers[0].at_ms, now + 50);
  TimerRequest p2_timer = o.send[1].participant == "p2" ? o.timers[1] : o.timers[0];
  core().OnCommitReply("t1", "p1", Seqs({1}), now);
  Take();

  std::vector<int64_t> gaps;
  for (int i = 0; i < 4; ++i) {
    int64_t before = p2_timer.at_ms;
    Fire(p2_timer);
    core().OnCommitReply("t1", "p2", absl::UnavailableError("down"), now);
    o = Take();
    EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p2"}));
    ASSERT_EQ(o.timers.size(), 1u);
    p2_timer = o.timers[0];
    gaps.push_back(p2_timer.at_ms - before);
    EXPECT_TRUE(o.persist.empty());
  }
  EXPECT_EQ(gaps, (std::vector<int64_t>{100, 200, 200, 200}));  // doubling, capped
  core().OnCommitReply("t1", "p2", Seqs({2}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{1, 2}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
  Fire(p2_timer);  // stale now
  EXPECT_TRUE(Take().empty());
}

TEST_F(CoordinatorCoreTest, DeadlineReleasesCommitReplyWithoutMissingSequences) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}, v1::TWO_PC, 1000), now);
  TimerRequest deadline = Take().timers.at(0);
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Durable(Take().persist.at(0));
  Take();
  core().OnCommitReply("t1", "p1", Seqs({7}), now);
  EXPECT_TRUE(Take().replies.empty());
  Fire(deadline);
  Output o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{7, 0}));
  EXPECT_TRUE(o.persist.empty());  // p2 still owes its ack
  EXPECT_EQ(core().in_flight(), 0u);
  core().OnCommitReply("t1", "p2", Seqs({9}), now);
  o = Take();
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).sequences(1), 9u);
  absl::StatusOr<v1::TransactionInfo> info = core().GetTransaction("t1");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->results(1).sequence(), 9u);
}

TEST_F(CoordinatorCoreTest, CommitRecordWriteFailureAborts) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Batch commit = Take().persist.at(0);
  core().OnPersisted(commit.token, absl::ResourceExhaustedError("map full"), now);
  Output o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2"}));
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_ABORTED);
  EXPECT_EQ(rec.reason(), "decision log write failed: RESOURCE_EXHAUSTED: map full");
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_EQ(o.replies[0].response.reason(),
            "decision log write failed: RESOURCE_EXHAUSTED: map full");
}

TEST_F(CoordinatorCoreTest, AbortRecordWriteFailureIsRetriedBeforeTheReply) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::NO, "nope"), now);
  Output o = Take();
  core().OnPersisted(o.persist.at(0).token, absl::ResourceExhaustedError("disk full"), now);
  o = Take();
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.persist.empty());
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now + 50);
  Fire(o.timers[0]);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_ABORTED);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
}

TEST_F(CoordinatorCoreTest, AbortRefusedAsCommittedIsAnAlarm) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::NO, "nope"), now);
  Durable(Take().persist.at(0));
  Take();
  core().OnAbortReply("t1", "p1", absl::FailedPreconditionError("committed here"), now);
  Output o = Take();
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_TRUE(Contains(o.log[0], "ALARM txn t1: p1 refused Abort"));
  ASSERT_EQ(o.persist.size(), 1u);  // nothing more to send: it ends
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
}

// -------------------------------------------------------------- read-only

TEST_F(CoordinatorCoreTest, ReadOnlyVoterGetsNoSecondRound) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), AckOp("p2", "q", 3, "l")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::READ_ONLY), now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_COMMITTED);
  EXPECT_EQ(Strs(rec.acknowledged().begin(), rec.acknowledged().end()), (Strs{"p2"}));
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1"}));
  core().OnCommitReply("t1", "p1", Seqs({12}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{12, 0}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.send.empty());
  Durable(o.persist[0]);
  EXPECT_TRUE(Take().empty());
  // A read-only voter kept nothing: the next messages to p1 and p2 carry an
  // END notice for t1 to p1 only.
  core().Execute(2, Req("t2", {Enq("p1", "q", "b"), Enq("p2", "q", "c")}), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPrepare), (Strs{"p1", "p2"}));
  EXPECT_EQ(Targets(o, MsgType::kForget), (Strs{"p1"}));
  for (const OutMessage& m : o.send) {
    if (m.type == MsgType::kForget) {
      EXPECT_EQ(m.txn_id, "t1");
    }
  }
}

TEST_F(CoordinatorCoreTest, EndNoticesGoOnlyAfterADurableEndWithTheNextMessage) {
  auto commit = [&](RequestId r, const std::string& id, const Strs& parts) {
    std::vector<v1::Op> ops;
    for (const std::string& p : parts) ops.push_back(Enq(p, "q", id));
    core().Execute(r, Req(id, ops), now);
    Output o = Take();
    for (const std::string& p : parts) core().OnPrepareReply(id, p, Vote(v1::YES), now);
    o = Take();
    Durable(o.persist.at(0));
    Take();
    for (const std::string& p : parts) core().OnCommitReply(id, p, Seqs({1}), now);
    return Take();  // the reply and the ENDED record, not yet durable
  };
  auto forgets = [](const Output& o) {
    Strs v;
    for (const OutMessage& m : o.send) {
      if (m.type == MsgType::kForget) v.push_back(m.participant + ":" + m.txn_id);
    }
    std::sort(v.begin(), v.end());
    return v;
  };

  // Not before ENDED is durable, not for one whose write failed (recovery
  // resends its outcome instead), and not without another message.
  Output o = commit(1, "t1", {"p1", "p2"});
  ASSERT_EQ(o.persist.size(), 1u);
  ASSERT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
  core().OnPersisted(o.persist[0].token, absl::ResourceExhaustedError("disk full"), now);
  o = commit(2, "t2", {"p1", "p2"});
  EXPECT_TRUE(forgets(o).empty());
  Durable(o.persist.at(0));
  EXPECT_TRUE(Take().empty());
  // t3's Prepare to p1 takes t2's notice to p1 along; p2's waits.
  o = commit(3, "t3", {"p1", "p3"});
  Durable(o.persist.at(0));
  core().Execute(4, Req("t4", {Enq("p1", "q", "x")}), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPrepare), (Strs{"p1"}));
  EXPECT_EQ(forgets(o), (Strs{"p1:t3"}));
  core().Execute(5, Req("t5", {Enq("p2", "q", "x"), Enq("p3", "q", "y")}), now);
  o = Take();
  EXPECT_EQ(forgets(o), (Strs{"p2:t2", "p3:t3"}));
  EXPECT_EQ(o.timers.size(), 1u);  // t5's deadline: notices get no resend timer

  // Evicted from memory before its ENDED is durable: the notice comes from
  // the durable record, to every participant it names (votes are not in it,
  // so the read-only p2 hears it too).
  config.finished_cache_max = 0;
  Restart();
  Take();
  core().Execute(6, Req("t6", {Enq("p1", "q", "a"), AckOp("p2", "q", 3, "l"), Enq("p3", "q", "b")}),
                 now);
  Take();
  core().OnPrepareReply("t6", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t6", "p2", Vote(v1::READ_ONLY), now);
  core().OnPrepareReply("t6", "p3", Vote(v1::YES), now);
  o = Take();
  Durable(o.persist.at(0));
  Take();
  core().OnCommitReply("t6", "p1", Seqs({1}), now);
  core().OnCommitReply("t6", "p3", Seqs({2}), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  EXPECT_TRUE(Take().send.empty());
  core().Execute(7, Req("t7", {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p3", "q", "c")}),
                 now);
  o = Take();
  EXPECT_EQ(forgets(o), (Strs{"p1:t6", "p2:t6", "p3:t6"}));
  for (const OutMessage& m : o.send) {
    EXPECT_EQ(m.address, config.participants.at(m.participant));
  }
}

TEST_F(CoordinatorCoreTest, AllReadOnlyCommitsWithoutAForcedRecord) {
  core().Execute(1, Req("t1", {AckOp("p1", "q", 3, "l"), AckOp("p2", "q", 4, "l")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::READ_ONLY), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::READ_ONLY), now);
  Output o = Take();
  EXPECT_TRUE(o.send.empty());
  // Answered at once; only ENDED follows, for retries, and is not waited on.
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
  EXPECT_TRUE(Rec(o.persist[0]).reason().empty());
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_TRUE(Contains(o.log[0], "COMMITTED"));
  EXPECT_EQ(core().in_flight(), 0u);
}

TEST_F(CoordinatorCoreTest, ReadOnlyAndNoVotesAbortWithoutAborts) {
  core().Execute(1, Req("t1", {AckOp("p1", "q", 3, "l"), Enq("p2", "q", "a")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::READ_ONLY), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::NO, "x"), now);
  Output o = Take();
  EXPECT_TRUE(o.send.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  ASSERT_EQ(o.persist.size(), 1u);  // everyone is done: ENDED follows at once
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
}

// -------------------------------------------------------------------- 3PC

TEST_F(CoordinatorCoreTest, ThreePcPreCommitsThenCommitsOnMajority) {
  core().Execute(
      1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p3", "q", "c")}, v1::THREE_PC),
      now);
  Output o = Take();
  TimerRequest deadline = o.timers.at(0);
  for (const char* p : {"p1", "p2", "p3"}) core().OnPrepareReply("t1", p, Vote(v1::YES), now);
  o = Take();
  EXPECT_TRUE(o.send.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::PRECOMMITTED);
  Batch pre = o.persist[0];
  core().QueryState(5, "t1", now);  // not durable yet: still undecided
  EXPECT_EQ(Take().state_replies.at(0).state, v1::PREPARING);

  Durable(pre);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPreCommit), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.persist.empty());
  core().QueryState(6, "t1", now);
  EXPECT_EQ(Take().state_replies.at(0).state, v1::PRECOMMITTED);
  Fire(deadline);  // never aborts after PRECOMMITTED
  o = Take();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.replies.empty());

  core().OnPreCommitReply("t1", "p2", absl::OkStatus(), now);
  core().OnPreCommitReply("t1", "p2", absl::OkStatus(), now);  // a duplicate is not a majority
  EXPECT_TRUE(Take().empty());
  core().OnPreCommitReply("t1", "p3", absl::OkStatus(), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(o.send.empty());
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_EQ(o.log[0], "txn t1 COMMITTED (3pc, 3 participants)");
  // The deadline passed already: the reply goes with the commit.
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  for (const char* p : {"p1", "p2", "p3"}) core().OnCommitReply("t1", p, Seqs({1}), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
}

TEST_F(CoordinatorCoreTest, ThreePcWithFewYesVotersWaitsForAllOfThem) {
  core().Execute(
      1,
      Req("t1", {Enq("p1", "q", "a"), AckOp("p2", "q", 1, "l"), AckOp("p3", "q", 1, "l")},
          v1::THREE_PC),
      now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::READ_ONLY), now);
  core().OnPrepareReply("t1", "p3", Vote(v1::READ_ONLY), now);
  Durable(Take().persist.at(0));
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPreCommit), (Strs{"p1"}));
  core().OnPreCommitReply("t1", "p1", absl::OkStatus(), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p1"}));
}

TEST_F(CoordinatorCoreTest, ThreePcPreCommitResentUntilAcknowledged) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}, v1::THREE_PC), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Durable(Take().persist.at(0));
  Output o = Take();
  ASSERT_EQ(o.timers.size(), 3u);  // a resend per PreCommit, then the termination timer
  core().OnPreCommitReply("t1", "p1", absl::OkStatus(), now);
  core().OnPreCommitReply("t1", "p2", absl::UnavailableError("down"), now);
  EXPECT_TRUE(Take().empty());  // 1 of 2 is not a majority
  TimerRequest p2 = o.send[0].participant == "p2" ? o.timers[0] : o.timers[1];
  Fire(p2);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPreCommit), (Strs{"p2"}));
  core().OnPreCommitReply("t1", "p2", absl::OkStatus(), now);
  EXPECT_EQ(Take().persist.size(), 1u);
}

TEST_F(CoordinatorCoreTest, ThreePcPrecommitWriteFailureAborts) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}, v1::THREE_PC), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Batch pre = Take().persist.at(0);
  core().OnPersisted(pre.token, absl::InternalError("io"), now);
  Output o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kPreCommit).empty());
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2"}));
  EXPECT_EQ(Rec(o.persist.at(0)).state(), v1::STATE_ABORTED);
}

TEST_F(CoordinatorCoreTest, ThreePcCommitWriteFailureRetriesInsteadOfAborting) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}, v1::THREE_PC), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Durable(Take().persist.at(0));
  Take();
  core().OnPreCommitReply("t1", "p1", absl::OkStatus(), now);
  core().OnPreCommitReply("t1", "p2", absl::OkStatus(), now);
  Batch commit = Take().persist.at(0);
  core().OnPersisted(commit.token, absl::InternalError("io"), now);
  Output o = Take();
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.timers.size(), 1u);
  Fire(o.timers[0]);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
  Durable(o.persist[0]);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p1", "p2"}));
}

// A participant that promised a termination ballot refuses PreCommit (ballot
// 0); when a majority of acks cannot come, the coordinator runs a round, and
// a round that finds nothing accepted chose ABORT: the client is told so.
TEST_F(CoordinatorCoreTest, ThreePcRefusedPreCommitRunsARoundThatCanAbort) {
  core().Execute(
      1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p3", "q", "c")}, v1::THREE_PC),
      now);
  Take();
  for (const char* p : {"p1", "p2", "p3"}) core().OnPrepareReply("t1", p, Vote(v1::YES), now);
  Durable(Take().persist.at(0));
  Take();
  const absl::Status refused = absl::FailedPreconditionError("promised ballot 5");
  core().OnPreCommitReply("t1", "p1", refused, now);
  EXPECT_TRUE(Take().persist.empty());  // 2 of 3 may still accept
  core().OnPreCommitReply("t1", "p2", refused, now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);  // the round's ballot first
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::PRECOMMITTED);
  const uint64_t b = Rec(o.persist[0]).ballot();
  EXPECT_EQ(b % 4, 0u);  // the coordinator's ballots: multiples of participants + 1
  EXPECT_TRUE(o.send.empty());
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPromise), (Strs{"p1", "p2", "p3"}));
  // Stale or refused answers do not count.
  v1::PromiseResponse none;
  none.set_promised(true);
  none.set_state(v1::PREPARED);
  core().OnPromiseReply("t1", "p1", b + 4, none, now);
  EXPECT_TRUE(Take().empty());
  core().OnPromiseReply("t1", "p1", b, none, now);
  core().OnPromiseReply("t1", "p2", b, none, now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAccept), (Strs{"p1", "p2", "p3"}));
  EXPECT_EQ(o.send.at(0).value, v1::STATE_ABORTED);
  v1::AcceptResponse yes;
  yes.set_accepted(true);
  core().OnAcceptReply("t1", "p1", b, yes, now);
  core().OnAcceptReply("t1", "p3", b, yes, now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2", "p3"}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_ABORTED);
  EXPECT_TRUE(o.replies.empty());  // not before the abort is durable
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "termination round chose ABORT"));
}

// --------------------------------------------------------------- recovery

TEST_F(CoordinatorCoreTest, RecoverResendsOutcomes) {
  v1::ExecuteRequest creq = Req("c", {Enq("p1", "q", "a"), Enq("p2", "q", "b")});
  v1::CoordinatorTxnRecord c;
  c.set_txn_id("c");
  c.set_state(v1::STATE_COMMITTED);
  c.set_ops_digest(OpsDigest(creq.ops()));
  c.add_participants("p1");
  c.add_participants("p2");
  c.add_acknowledged("p1");
  c.add_op_participant(0);
  c.add_op_participant(1);
  c.add_sequences(5);
  c.add_sequences(0);
  v1::CoordinatorTxnRecord a;
  a.set_txn_id("a");
  a.set_state(v1::STATE_ABORTED);
  a.set_reason("p3 voted NO: x");
  a.add_participants("p1");
  a.add_participants("p3");
  a.add_acknowledged("p3");
  v1::CoordinatorTxnRecord pc;
  pc.set_txn_id("pc");
  pc.set_protocol(v1::THREE_PC);
  pc.set_state(v1::PRECOMMITTED);
  pc.add_participants("p1");
  pc.add_participants("p2");
  pc.add_participants("p3");
  pc.add_acknowledged("p3");  // READ_ONLY
  v1::CoordinatorTxnRecord e;
  e.set_txn_id("e");
  e.set_state(v1::ENDED);
  e.add_participants("p2");
  e.add_acknowledged("p2");
  e.add_op_participant(0);
  e.add_sequences(77);
  for (const auto& r : {c, a, pc, e}) view.records[r.txn_id()] = r;

  Restart();
  Output o = Take();
  std::map<std::string, Strs> sent;
  for (const OutMessage& m : o.send) {
    sent[m.txn_id].push_back(m.participant);
    EXPECT_EQ(m.address, config.participants.at(m.participant));
  }
  EXPECT_EQ(sent["c"], (Strs{"p2"}));
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p2"}));
  EXPECT_EQ(sent["a"], (Strs{"p1"}));
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1"}));
  // PRECOMMITTED: no blind PreCommit; a termination round, whose ballot is
  // written first (ballots of a 3-participant transaction: multiples of 4).
  EXPECT_EQ(sent.count("pc"), 0u);
  EXPECT_TRUE(Targets(o, MsgType::kPreCommit).empty());
  EXPECT_EQ(sent.count("e"), 0u);
  EXPECT_EQ(o.timers.size(), o.send.size() + 1);  // every resend is timed, and the round
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::PRECOMMITTED);
  EXPECT_EQ(Rec(o.persist[0]).ballot(), 4u);
  ASSERT_EQ(o.log.size(), 2u);
  EXPECT_TRUE(Contains(o.log[1], "recovered 4"));

  // A client retrying "c" learns the outcome at once.
  core().Execute(1, creq, now);
  Output r = Take();
  ASSERT_EQ(r.replies.size(), 1u);
  EXPECT_EQ(r.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(r.replies[0].response), (std::vector<uint64_t>{5, 0}));

  // Timers after recovery work: the Commit is resent.
  TimerRequest c_timer{0, 0};
  for (size_t i = 0; i < o.send.size(); ++i) {
    if (o.send[i].txn_id == "c") c_timer = o.timers[i];
  }
  Fire(c_timer);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p2"}));

  core().OnCommitReply("c", "p2", Seqs({9}), now);
  Output x = Take();
  ASSERT_EQ(x.persist.size(), 1u);
  v1::CoordinatorTxnRecord ended = Rec(x.persist[0]);
  EXPECT_EQ(ended.state(), v1::ENDED);
  EXPECT_EQ(std::vector<uint64_t>(ended.sequences().begin(), ended.sequences().end()),
            (std::vector<uint64_t>{5, 9}));

  core().OnAbortReply("a", "p1", absl::OkStatus(), now);
  EXPECT_EQ(Rec(Take().persist.at(0)).state(), v1::ENDED);

  core().QueryState(2, "pc", now);
  EXPECT_EQ(Take().state_replies.at(0).state, v1::PRECOMMITTED);
  // The round begins once its ballot is durable; p3 (READ_ONLY) is left out.
  Durable(o.persist[0]);
  x = Take();
  EXPECT_EQ(Targets(x, MsgType::kPromise), (Strs{"p1", "p2"}));
  EXPECT_EQ(x.send.at(0).ballot, 4u);
  v1::PromiseResponse pr;
  pr.set_promised(true);
  pr.set_state(v1::PRECOMMITTED);
  pr.set_accepted_ballot(0);
  pr.set_accepted_value(v1::STATE_COMMITTED);  // p1 accepted ballot 0 (PreCommit)
  core().OnPromiseReply("pc", "p1", 4, pr, now);
  EXPECT_TRUE(Take().empty());  // majority of 3 is 2
  v1::PromiseResponse none;
  none.set_promised(true);
  none.set_state(v1::PREPARED);
  core().OnPromiseReply("pc", "p2", 4, none, now);
  x = Take();
  EXPECT_EQ(Targets(x, MsgType::kAccept), (Strs{"p1", "p2"}));
  EXPECT_EQ(x.send.at(0).value, v1::STATE_COMMITTED);  // the accepted value, not ABORT
  v1::AcceptResponse ar;
  ar.set_accepted(true);
  core().OnAcceptReply("pc", "p1", 4, ar, now);
  EXPECT_TRUE(Take().empty());
  core().OnAcceptReply("pc", "p2", 4, ar, now);
  x = Take();
  ASSERT_EQ(x.persist.size(), 1u);
  EXPECT_EQ(Rec(x.persist[0]).state(), v1::STATE_COMMITTED);
  Durable(x.persist[0]);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p1", "p2"}));

  absl::StatusOr<v1::TransactionInfo> info = core().GetTransaction("e");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::ENDED);
  EXPECT_EQ(info->outcome(), v1::COMMITTED);
  EXPECT_EQ(info->results(0).sequence(), 77u);
  core().QueryState(3, "e", now);
  EXPECT_EQ(Take().state_replies.at(0).state, v1::STATE_COMMITTED);
}

TEST_F(CoordinatorCoreTest, CrashAfterCommitRecordThenRestartFinishes) {
  v1::ExecuteRequest req = Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")});
  core().Execute(1, req, now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Durable(Take().persist.at(0));
  Take();
  core().OnCommitReply("t1", "p1", Seqs({4}), now);
  Take();

  Restart();  // the ack of p1 was only in memory
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2"}));
  core().OnCommitReply("t1", "p1", Seqs({4}), now);
  core().OnCommitReply("t1", "p2", Seqs({6}), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  Restart();
  EXPECT_TRUE(Take().send.empty());
  absl::StatusOr<v1::TransactionInfo> info = core().GetTransaction("t1");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::ENDED);
  EXPECT_EQ(info->results(1).sequence(), 6u);
  core().Execute(2, req, now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{4, 6}));
}

TEST_F(CoordinatorCoreTest, CrashBeforeDecisionIsPresumedAbort) {
  core().Execute(1, Req("t1", {Enq("p1", "q", "a")}), now);
  Take();
  Restart();  // nothing was durable
  EXPECT_TRUE(Take().send.empty());
  core().QueryState(1, "t1", now);  // p1 is in doubt and asks
  Output o = Take();
  EXPECT_TRUE(o.state_replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  EXPECT_EQ(Take().state_replies.at(0).state, v1::STATE_ABORTED);
}

// ------------------------------------------------------------- QueryState

TEST_F(CoordinatorCoreTest, QueryStateForUnknownIdPersistsAbortFirst) {
  core().QueryState(1, "ghost", now);
  Output o = Take();
  EXPECT_TRUE(o.state_replies.empty());  // not before the record is durable
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(o.persist[0].writes.at(0).key, "ghost");
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_ABORTED);
  EXPECT_FALSE(rec.reason().empty());
  Batch abort = o.persist[0];

  // Another query and a client using the id meanwhile both wait for it.
  core().QueryState(2, "ghost", now);
  core().Execute(3, Req("ghost", {Enq("p1", "q", "a")}), now);
  o = Take();
  EXPECT_TRUE(o.state_replies.empty());
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.send.empty());

  Durable(abort);
  o = Take();
  ASSERT_EQ(o.state_replies.size(), 2u);
  EXPECT_EQ(o.state_replies[0].request, 1u);
  EXPECT_EQ(o.state_replies[0].state, v1::STATE_ABORTED);
  EXPECT_EQ(o.state_replies[1].state, v1::STATE_ABORTED);
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{0}));
  for (const Batch& b : o.persist) Durable(b);

  // Later, after a restart and with nothing cached, the id still cannot commit.
  config.finished_cache_max = 0;
  Restart();
  Take();
  core().Execute(4, Req("ghost", {Enq("p2", "q", "b")}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_TRUE(o.replies[0].status.ok());
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(o.send.empty());
  core().QueryState(5, "ghost", now);
  o = Take();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(o.state_replies.at(0).state, v1::STATE_ABORTED);
}

TEST_F(CoordinatorCoreTest, QueryStateFollowsTheDurableDecision) {
  auto query = [&](const std::string& id) {
    core().QueryState(9, id, now);
    Output o = Take();
    EXPECT_EQ(o.state_replies.size(), 1u) << id;
    return o.state_replies.empty() ? v1::TXN_STATE_UNSPECIFIED : o.state_replies[0].state;
  };
  core().Execute(1, Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}), now);
  Take();
  EXPECT_EQ(query("t1"), v1::PREPARING);
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  Batch commit = Take().persist.at(0);
  EXPECT_EQ(query("t1"), v1::PREPARING);  // the commit is not durable yet
  Durable(commit);
  Take();
  EXPECT_EQ(query("t1"), v1::STATE_COMMITTED);
  core().QueryState(10, "bad id!", now);  // can never commit: no record needed
  Output o = Take();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_EQ(o.state_replies.at(0).state, v1::STATE_ABORTED);
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

  std::vector<v1::TransactionInfo> list = core().ListTransactions({}, 0);
  ASSERT_EQ(list.size(), 2u);  // not ENDED, in id order
  EXPECT_EQ(list[0].txn_id(), "abrt");
  EXPECT_EQ(list[1].txn_id(), "prep");
  EXPECT_EQ(list[1].ops_size(), 0);  // ops only from GetTransaction
  list = core().ListTransactions({v1::ENDED}, 0);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].txn_id(), "done");
  list = core().ListTransactions({v1::PREPARING, v1::STATE_ABORTED, v1::ENDED}, 2);
  EXPECT_EQ(list.size(), 2u);
}

TEST_F(CoordinatorCoreTest, FinishedCacheEvictsOldestThenUsesTheView) {
  config.finished_cache_max = 1;
  CommitAll(1, Req("a", {Enq("p1", "q", "x")}), {{"p1", {1}}});
  CommitAll(2, Req("b", {Enq("p1", "q", "y")}), {{"p1", {2}}});
  // "a" left memory; the view still answers.
  EXPECT_TRUE(core().ListTransactions({v1::ENDED}, 0).size() == 1u);
  EXPECT_EQ(core().ListTransactions({v1::ENDED}, 0)[0].txn_id(), "b");
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

// ------------------------------------------------------------- simulation

// Seeded runs with dropped, duplicated and reordered messages, failed writes
// and restarts; the invariants of DESIGN.md section 4 are checked as outputs
// appear, and at the end every transaction must have ended.
class Sim {
 public:
  explicit Sim(uint32_t seed) : rng_(seed) {
    config_.coordinator_id = "c1";
    config_.participants = {{"p1", "a1"}, {"p2", "a2"}, {"p3", "a3"}};
    config_.resend_initial_ms = 10;
    config_.resend_max_ms = 80;
    config_.txn_timeout_ms = 200;
    config_.finished_cache_max = 2;
    config_.one_phase = false;  // its participant model is 2PC/3PC; tests/sim covers one phase
    config_.parallel_commit = false;  // and parallel commit
    core_ = std::make_unique<CoordinatorCore>(config_, &view_);
    core_->Recover({}, now_);
  }

  uint64_t forgets() const { return forgets_; }

  void Run() {
    for (int step = 0; step < 400; ++step) {
      chaos_ = step < 300;
      if (step < 250 && Chance(8)) NewRequest();
      if (chaos_ && Chance(1)) Restart();
      if (!events_.empty()) Deliver(Pick(events_.size()));
      Collect();
    }
    chaos_ = false;
    for (int i = 0; i < 20000 && !events_.empty(); ++i) {
      Deliver(Pick(events_.size()));
      Collect();
    }
    EXPECT_TRUE(events_.empty());
    for (const v1::TransactionInfo& t : core_->ListTransactions({}, 0)) {
      ADD_FAILURE() << "a transaction did not end: " << t.ShortDebugString();
    }
    // Participants left in doubt (a Prepare that came after the end) ask.
    for (auto& [participant, txns] : parts_) {
      for (auto& [txn, st] : txns) {
        if (st != kPrepared && st != kPrecommitted) continue;
        core_->QueryState(0, txn, now_);
        for (int i = 0; i < 100; ++i) {
          Collect();
          if (!state_replies_.empty() || events_.empty()) break;
          Deliver(0);
        }
        ASSERT_EQ(state_replies_.size(), 1u) << txn;
        v1::TxnState answer = state_replies_[0].state;
        state_replies_.clear();
        ASSERT_TRUE(answer == v1::STATE_COMMITTED || answer == v1::STATE_ABORTED)
            << txn << " answered " << v1::TxnState_Name(answer);
        st = answer == v1::STATE_COMMITTED ? kCommitted : kAborted;
      }
    }
    // Agreement across participants.
    std::map<std::string, std::set<int>> outcomes;
    for (const auto& [participant, txns] : parts_) {
      for (const auto& [txn, st] : txns) {
        if (st == kCommitted || st == kAborted) outcomes[txn].insert(st);
      }
    }
    for (const auto& [txn, set] : outcomes) EXPECT_EQ(set.size(), 1u) << "agreement: " << txn;
    for (const auto& [req, n] : expected_replies_) {
      EXPECT_EQ(n, 1) << "request " << req << " got " << n << " replies";
    }
    EXPECT_EQ(core_->in_flight(), 0u);
  }

 private:
  enum class Kind { kPrepare, kPreCommit, kCommit, kAbort, kPersisted, kTimer, kPromise, kAccept };
  struct Event {
    Kind kind = Kind::kTimer;
    std::string txn;
    std::string participant;
    v1::PrepareRequest prepare;
    uint64_t ballot = 0;                             // kPromise, kAccept
    v1::TxnState value = v1::TXN_STATE_UNSPECIFIED;  // kAccept
    Batch batch;
    TimerRequest timer{0, 0};
  };
  enum PState { kNone, kPrepared, kPrecommitted, kCommitted, kAborted };

  bool Chance(int percent) { return static_cast<int>(rng_() % 100) < percent; }
  size_t Pick(size_t n) { return rng_() % n; }

  void NewRequest() {
    v1::ExecuteRequest req;
    if (!requests_.empty() && Chance(25)) {
      req = requests_[Pick(requests_.size())];  // a client retry
    } else {
      req.set_txn_id(absl::StrCat("t", requests_.size()));
      req.set_protocol(Chance(50) ? v1::THREE_PC : v1::TWO_PC);
      int n = 1 + static_cast<int>(Pick(4));
      for (int i = 0; i < n; ++i) {
        *req.add_ops() = Enq(absl::StrCat("p", 1 + Pick(3)), "q", absl::StrCat("m", i));
      }
      requests_.push_back(req);
    }
    RequestId id = next_request_++;
    expected_replies_[id] = 0;
    core_->Execute(id, req, now_);
  }

  void Restart() {
    events_.clear();            // in-flight messages, writes and timers die with the process
    expected_replies_.clear();  // and so do the clients' calls
    core_ = std::make_unique<CoordinatorCore>(config_, &view_);
    core_->Recover(view_.All(), now_);
  }

  bool Committed(const std::string& txn) const {
    auto it = view_.records.find(txn);
    return it != view_.records.end() &&
           (it->second.state() == v1::STATE_COMMITTED ||
            (it->second.state() == v1::ENDED && it->second.reason().empty()));
  }
  bool Aborted(const std::string& txn) const {
    auto it = view_.records.find(txn);
    return it != view_.records.end() && !it->second.reason().empty() &&
           (it->second.state() == v1::STATE_ABORTED || it->second.state() == v1::ENDED);
  }

  void Collect() {
    Output o = core_->TakeOutput();
    for (Batch& b : o.persist) {
      Event e;
      e.kind = Kind::kPersisted;
      e.batch = std::move(b);
      events_.push_back(std::move(e));
    }
    for (const TimerRequest& t : o.timers) {
      Event e;
      e.kind = Kind::kTimer;
      e.timer = t;
      events_.push_back(std::move(e));
    }
    for (const OutMessage& m : o.send) {
      // Durability first: the outcome is on disk before it is sent.
      if (m.type == MsgType::kCommit) {
        ASSERT_TRUE(Committed(m.txn_id)) << m.txn_id;
      }
      if (m.type == MsgType::kPreCommit) {
        ASSERT_TRUE(view_.records.count(m.txn_id)) << m.txn_id;
      }
      if (m.type == MsgType::kAbort) {
        ASSERT_FALSE(Committed(m.txn_id)) << m.txn_id;
      }
      if (m.type == MsgType::kForget) {
        // Only once ENDED is durable. (A participant may be prepared by a
        // late duplicate Prepare after a NO; it ignores the notice then.)
        auto rec = view_.records.find(m.txn_id);
        ASSERT_TRUE(rec != view_.records.end() && rec->second.state() == v1::ENDED) << m.txn_id;
        ++forgets_;
        continue;  // a notice: nothing answers it
      }
      if (chaos_ && Chance(10)) continue;  // lost
      int copies = chaos_ && Chance(10) ? 2 : 1;
      for (int c = 0; c < copies; ++c) {
        Event e;
        e.kind = m.type == MsgType::kPrepare     ? Kind::kPrepare
                 : m.type == MsgType::kPreCommit ? Kind::kPreCommit
                 : m.type == MsgType::kCommit    ? Kind::kCommit
                 : m.type == MsgType::kPromise   ? Kind::kPromise
                 : m.type == MsgType::kAccept    ? Kind::kAccept
                                                 : Kind::kAbort;
        e.ballot = m.ballot;
        e.value = m.value;
        e.txn = m.txn_id;
        e.participant = m.participant;
        e.prepare = m.prepare;
        events_.push_back(e);
      }
    }
    for (const ExecuteReply& r : o.replies) {
      if (expected_replies_.count(r.request)) ++expected_replies_[r.request];
      if (!r.status.ok()) continue;
      const std::string& id = r.response.txn_id();
      if (r.response.outcome() == v1::COMMITTED && !view_.records.count(id) &&
          read_only_.count(id)) {
        // All READ_ONLY: nothing changed anywhere, so nothing had to be forced;
        // a retry after a restart may run it again.
        told_.erase(id);
        continue;
      }
      if (r.response.outcome() == v1::COMMITTED) {
        ASSERT_TRUE(Committed(id)) << id;
        ASSERT_FALSE(told_.count(id) && told_[id] != v1::COMMITTED) << id;
      } else {
        ASSERT_TRUE(Aborted(id)) << id;
        ASSERT_FALSE(told_.count(id) && told_[id] != v1::ABORTED) << id;
      }
      told_[id] = r.response.outcome();
    }
    for (const StateReply& r : o.state_replies) state_replies_.push_back(r);
  }

  void Deliver(size_t i) {
    Event e = std::move(events_[i]);
    events_.erase(events_.begin() + static_cast<long>(i));
    PState& st = parts_[e.participant][e.txn];
    switch (e.kind) {
      case Kind::kPrepare: {
        if (chaos_ && Chance(5)) {
          core_->OnPrepareReply(e.txn, e.participant, absl::UnavailableError("down"), now_);
          return;
        }
        v1::PrepareResponse r;
        if (st == kAborted || st == kCommitted) {
          r.set_vote(v1::NO);  // a retry after the end: like a participant that forgot
          r.set_reason("already finished");
        } else if (st != kNone) {
          r.set_vote(v1::YES);
        } else {
          int roll = static_cast<int>(Pick(100));
          if (chaos_ && roll < 8) {
            r.set_vote(v1::NO);
            r.set_reason("no");
          } else if (roll < 15 && e.prepare.protocol() != v1::THREE_PC) {
            r.set_vote(v1::READ_ONLY);  // under 3PC a participant always prepares
          } else {
            r.set_vote(v1::YES);
            st = kPrepared;
          }
        }
        if (r.vote() == v1::READ_ONLY) read_only_[e.txn].insert(e.participant);
        core_->OnPrepareReply(e.txn, e.participant, r, now_);
        return;
      }
      case Kind::kPreCommit: {
        // Ballot 0's accept of COMMIT, refused after a higher promise.
        auto& acc = accepted_[e.participant][e.txn];
        if (promised_[e.participant][e.txn] > 0 &&
            !(acc.first == 0 && acc.second == v1::STATE_COMMITTED)) {
          core_->OnPreCommitReply(e.txn, e.participant, absl::FailedPreconditionError("promised"),
                                  now_);
          return;
        }
        ASSERT_NE(st, kAborted) << e.txn << " " << e.participant;
        if (st == kPrepared) {
          st = kPrecommitted;
          acc = {0, v1::STATE_COMMITTED};
        }
        core_->OnPreCommitReply(e.txn, e.participant, absl::OkStatus(), now_);
        return;
      }
      case Kind::kPromise: {
        // An acceptor of the coordinator's termination round.
        v1::PromiseResponse r;
        uint64_t& promised = promised_[e.participant][e.txn];
        auto& acc = accepted_[e.participant][e.txn];
        if (st == kNone) st = kAborted;  // never prepared: presumed abort, recorded
        if (st == kCommitted || st == kAborted) {
          r.set_promised(true);
          r.set_state(st == kCommitted ? v1::STATE_COMMITTED : v1::STATE_ABORTED);
        } else {
          r.set_promised(e.ballot >= promised);
          promised = std::max(promised, e.ballot);
          r.set_state(st == kPrecommitted ? v1::PRECOMMITTED : v1::PREPARED);
          r.set_promised_ballot(promised);
          r.set_accepted_ballot(acc.first);
          r.set_accepted_value(acc.second);
        }
        core_->OnPromiseReply(e.txn, e.participant, e.ballot, r, now_);
        return;
      }
      case Kind::kAccept: {
        v1::AcceptResponse r;
        uint64_t& promised = promised_[e.participant][e.txn];
        if (st == kNone && e.value == v1::STATE_ABORTED) st = kAborted;
        if (st == kCommitted || st == kAborted) {
          r.set_accepted(true);
          r.set_state(st == kCommitted ? v1::STATE_COMMITTED : v1::STATE_ABORTED);
        } else if (st != kNone && e.ballot >= promised) {
          promised = e.ballot;
          accepted_[e.participant][e.txn] = {e.ballot, e.value};
          st = e.value == v1::STATE_COMMITTED ? kPrecommitted : kPrepared;
          r.set_accepted(true);
          r.set_state(st == kPrecommitted ? v1::PRECOMMITTED : v1::PREPARED);
        } else {
          r.set_promised_ballot(promised);
        }
        core_->OnAcceptReply(e.txn, e.participant, e.ballot, r, now_);
        return;
      }
      case Kind::kCommit:
        ASSERT_NE(st, kAborted) << "agreement: " << e.txn << " " << e.participant;
        ASSERT_NE(st, kNone) << "commit without a YES vote: " << e.txn << " " << e.participant;
        st = kCommitted;
        core_->OnCommitReply(e.txn, e.participant, Seqs({1}), now_);
        return;
      case Kind::kAbort:
        ASSERT_NE(st, kCommitted) << "agreement: " << e.txn << " " << e.participant;
        // After PreCommit only when a termination round chose ABORT.
        if (st == kPrecommitted) {
          ASSERT_NE(accepted_[e.participant][e.txn].first, 0u)
              << "abort after precommit: " << e.txn;
        }
        st = kAborted;
        core_->OnAbortReply(e.txn, e.participant, absl::OkStatus(), now_);
        return;
      case Kind::kPersisted:
        if (chaos_ && Chance(5)) {
          core_->OnPersisted(e.batch.token, absl::ResourceExhaustedError("disk full"), now_);
          return;
        }
        view_.Apply(e.batch);
        core_->OnPersisted(e.batch.token, absl::OkStatus(), now_);
        return;
      case Kind::kTimer:
        now_ = std::max(now_, e.timer.at_ms);
        core_->OnTimer(e.timer.timer_id, now_);
        return;
    }
  }

  std::mt19937 rng_;
  Config config_;
  FakeView view_;
  std::unique_ptr<CoordinatorCore> core_;
  int64_t now_ = 1'000'000;
  bool chaos_ = true;
  std::vector<Event> events_;
  std::vector<v1::ExecuteRequest> requests_;
  RequestId next_request_ = 1;
  std::map<RequestId, int> expected_replies_;
  std::map<std::string, v1::Outcome> told_;
  std::map<std::string, std::map<std::string, PState>> parts_;
  std::map<std::string, std::set<std::string>> read_only_;
  std::vector<StateReply> state_replies_;
  uint64_t forgets_ = 0;  // END notices sent
  // Termination rounds: participant -> txn -> promised / accepted (ballot, value).
  std::map<std::string, std::map<std::string, uint64_t>> promised_;
  std::map<std::string, std::map<std::string, std::pair<uint64_t, v1::TxnState>>> accepted_;
};

TEST(CoordinatorCoreSimTest, SeededRunsKeepTheInvariants) {
  uint64_t forgets = 0;
  for (uint32_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    Sim sim(seed);
    sim.Run();
    forgets += sim.forgets();
    if (::testing::Test::HasFailure()) break;
  }
  EXPECT_GT(forgets, 300u);  // END notices went out, each checked in Collect
}

// ---------------------------------------------------------------- interactive transactions

v1::CommitTxnRequest CommitReq(const std::string& id,
                               std::vector<std::pair<std::string, uint32_t>> parts) {
  v1::CommitTxnRequest r;
  r.set_txn_id(id);
  for (const auto& [p, n] : parts) {
    v1::TxnParticipant* tp = r.add_participants();
    tp->set_participant(p);
    tp->set_staged_ops(n);
  }
  return r;
}

v1::RollbackTxnRequest RollbackReq(const std::string& id, std::vector<std::string> parts) {
  v1::RollbackTxnRequest r;
  r.set_txn_id(id);
  for (const std::string& p : parts) r.add_participants()->set_participant(p);
  return r;
}

v1::BeginTxnRequest BeginReq(const std::string& id = "", uint32_t timeout_ms = 0) {
  v1::BeginTxnRequest r;
  r.set_txn_id(id);
  r.set_timeout_ms(timeout_ms);
  return r;
}

std::vector<std::vector<uint64_t>> StagedSeqs(const v1::ExecuteResponse& r) {
  std::vector<std::vector<uint64_t>> v;
  for (const v1::StagedResult& s : r.staged()) {
    v.emplace_back(s.sequences().begin(), s.sequences().end());
  }
  return v;
}

TEST_F(CoordinatorCoreTest, InteractiveBeginCommitPreparesStagedWorkOnly) {
  absl::StatusOr<v1::BeginTxnResponse> b = core().Begin(BeginReq("", 4000), now);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->txn_id(), "c1-7-1");
  EXPECT_EQ(b->expires_unix_ms(), now + 4000);
  Output o = Take();
  ASSERT_EQ(o.timers.size(), 1u);  // the expiry
  EXPECT_TRUE(o.persist.empty()) << "an open transaction is memory only";
  EXPECT_EQ(core().in_flight(), 1u);
  EXPECT_EQ(core().open_transactions(), 1u);
  const std::string id = b->txn_id();

  core().Commit(1, CommitReq(id, {{"p2", 1}, {"p1", 2}}), now);
  o = Take();
  ASSERT_EQ(o.send.size(), 2u);
  for (const OutMessage& m : o.send) {
    EXPECT_EQ(m.type, MsgType::kPrepare);
    EXPECT_TRUE(m.prepare.use_staged());
    EXPECT_EQ(m.prepare.ops_size(), 0);
    EXPECT_EQ(m.prepare.staged_ops(), m.participant == "p1" ? 2u : 1u);
    EXPECT_EQ(m.prepare.participants_size(), 2);
  }
  EXPECT_EQ(core().open_transactions(), 0u);
  core().OnPrepareReply(id, "p1", Vote(v1::YES), now);
  core().OnPrepareReply(id, "p2", Vote(v1::YES), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(Rec(o.persist[0]).interactive());
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2"}));
  core().OnCommitReply(id, "p1", Seqs({5, 0}), now);
  core().OnCommitReply(id, "p2", Seqs({9}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  const v1::ExecuteResponse r = o.replies[0].response;
  EXPECT_EQ(r.outcome(), v1::COMMITTED);
  EXPECT_EQ(r.results_size(), 0);
  ASSERT_EQ(r.staged_size(), 2);
  EXPECT_EQ(r.staged(0).participant(), "p2");  // the request's order
  EXPECT_EQ(StagedSeqs(r), (std::vector<std::vector<uint64_t>>{{9}, {5, 0}}));
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord ended = Rec(o.persist[0]);
  EXPECT_EQ(ended.state(), v1::ENDED);
  EXPECT_EQ(ended.sequences_size(), 3);
  Durable(o.persist[0]);
  EXPECT_EQ(core().in_flight(), 0u);

  // A retry gets the first outcome; other participants or an Execute with the id are refused.
  core().Commit(2, CommitReq(id, {{"p2", 1}, {"p1", 2}}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(StagedSeqs(o.replies[0].response), StagedSeqs(r));
  EXPECT_TRUE(o.send.empty());
  core().Commit(3, CommitReq(id, {{"p1", 2}}), now);
  EXPECT_EQ(Take().replies.at(0).status.code(), absl::StatusCode::kAlreadyExists);
  core().Execute(4, Req(id, {Enq("p1", "q", "x")}), now);
  EXPECT_EQ(Take().replies.at(0).status.code(), absl::StatusCode::kAlreadyExists);
  core().Rollback(5, RollbackReq(id, {}), now);
  EXPECT_EQ(Take().replies.at(0).status.code(), absl::StatusCode::kFailedPrecondition);

  // After a restart the record answers, sequences included.
  Restart();
  Take();
  core().Commit(6, CommitReq(id, {{"p2", 1}, {"p1", 2}}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(StagedSeqs(o.replies[0].response), StagedSeqs(r));
}

TEST_F(CoordinatorCoreTest, InteractiveNoVoteAbortsWithTheParticipantsReason) {
  ASSERT_TRUE(core().Begin(BeginReq("i-no"), now).ok());
  Take();
  core().Commit(1, CommitReq("i-no", {{"p1", 1}, {"p2", 1}}), now);
  Take();
  core().OnPrepareReply("i-no", "p1",
                        Vote(v1::NO,
                             "nothing staged for txn i-no on p1 (expired or lost in a "
                             "restart)"),
                        now);
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p2"}));
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "p1 voted NO: nothing staged"));
}

TEST_F(CoordinatorCoreTest, InteractiveExpiryAbortsAndALateCommitLearnsWhy) {
  absl::StatusOr<v1::BeginTxnResponse> b = core().Begin(BeginReq("i-exp", 1000), now);
  ASSERT_TRUE(b.ok());
  Output o = Take();
  ASSERT_EQ(o.timers.size(), 1u);
  EXPECT_EQ(o.timers[0].at_ms, now + 1000);
  Fire(o.timers[0]);
  EXPECT_EQ(core().open_transactions(), 0u);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_ABORTED);
  EXPECT_TRUE(rec.interactive());
  EXPECT_TRUE(Contains(rec.reason(), "expired"));
  EXPECT_TRUE(o.send.empty());  // no participant is known yet
  Durable(o.persist[0]);
  for (const Batch& x : Take().persist) Durable(x);
  EXPECT_EQ(core().in_flight(), 0u);

  // A late Commit: ABORTED, and the named participants are told to drop staged work.
  core().Commit(1, CommitReq("i-exp", {{"p1", 1}, {"p3", 1}}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "expired"));
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p3"}));
  // So does one after a restart, from the record.
  Restart();
  Take();
  core().Commit(2, CommitReq("i-exp", {{"p1", 1}}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "expired"));

  // A Commit that comes after the expiry time, before the timer fired, aborts too.
  ASSERT_TRUE(core().Begin(BeginReq("i-late", 500), now).ok());
  Take();
  now += 501;
  core().Commit(3, CommitReq("i-late", {{"p1", 1}}), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPrepare), Strs{});
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1"}));
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "expired"));
}

TEST_F(CoordinatorCoreTest, InteractiveRollbackAndCommitOfAnUnknownId) {
  ASSERT_TRUE(core().Begin(BeginReq("i-rb"), now).ok());
  Take();
  core().Rollback(1, RollbackReq("i-rb", {"p2"}), now);
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p2"}));
  EXPECT_TRUE(o.replies.empty()) << "answered only once the abort is durable";
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_TRUE(o.replies[0].status.ok());
  core().Commit(2, CommitReq("i-rb", {{"p2", 1}}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "rolled back"));
  core().Rollback(3, RollbackReq("i-rb", {}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_TRUE(o.replies[0].status.ok()) << "rolling back twice is fine";

  // Begun, then the coordinator restarted: the open transaction is gone.
  ASSERT_TRUE(core().Begin(BeginReq("i-lost"), now).ok());
  Restart();
  Take();
  core().Commit(4, CommitReq("i-lost", {{"p1", 1}, {"p3", 2}}), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p3"}));
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "not open"));
  // The id can never be begun again.
  EXPECT_EQ(core().Begin(BeginReq("i-lost"), now).status().code(),
            absl::StatusCode::kAlreadyExists);

  // Rollback while the commit is preparing aborts it; after the decision it is refused.
  ASSERT_TRUE(core().Begin(BeginReq("i-prep"), now).ok());
  core().Commit(5, CommitReq("i-prep", {{"p1", 1}, {"p2", 1}}), now);
  Take();
  core().OnPrepareReply("i-prep", "p1", Vote(v1::YES), now);
  core().Rollback(6, RollbackReq("i-prep", {}), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2"}));
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 2u);  // the Commit (ABORTED) and the Rollback (OK)
  for (const ExecuteReply& rep : o.replies) {
    EXPECT_TRUE(rep.status.ok());
    EXPECT_EQ(rep.response.outcome(), v1::ABORTED);
  }
}

TEST_F(CoordinatorCoreTest, InteractiveBadInputAndLimits) {
  config.txns_in_flight_max = 2;
  ASSERT_TRUE(core().Begin(BeginReq("a"), now).ok());
  absl::StatusOr<v1::BeginTxnResponse> again = core().Begin(BeginReq("a"), now + 10);
  ASSERT_TRUE(again.ok()) << "a repeated Begin of an open id answers as the first";
  EXPECT_EQ(again->expires_unix_ms(), now + 5000);
  ASSERT_TRUE(core().Begin(BeginReq("b"), now).ok());
  EXPECT_EQ(core().Begin(BeginReq("c"), now).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(core().Begin(BeginReq("bad id!"), now).status().code(),
            absl::StatusCode::kInvalidArgument);
  core().Execute(1, Req("a", {Enq("p1", "q", "x")}), now);
  EXPECT_EQ(Take().replies.at(0).status.code(), absl::StatusCode::kAlreadyExists);

  core().Commit(2, CommitReq("a", {}), now);
  core().Commit(3, CommitReq("a", {{"p9", 1}}), now);
  core().Commit(4, CommitReq("a", {{"p1", 1}, {"p1", 1}}), now);
  core().Commit(5, CommitReq("bad id!", {{"p1", 1}}), now);
  Output o = Take();
  ASSERT_EQ(o.replies.size(), 4u);
  for (const ExecuteReply& r : o.replies) {
    EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
  }
  EXPECT_TRUE(Contains(std::string(o.replies[1].status.message()), "p9"));
  EXPECT_TRUE(Contains(std::string(o.replies[2].status.message()), "twice"));
  EXPECT_TRUE(o.send.empty() && o.persist.empty()) << "bad input changes nothing";
  EXPECT_EQ(core().open_transactions(), 2u);

  // A participant asking about an open id hears "undecided", nothing is recorded.
  core().QueryState(6, "a", now);
  o = Take();
  ASSERT_EQ(o.state_replies.size(), 1u);
  EXPECT_EQ(o.state_replies[0].state, v1::PREPARING);
  EXPECT_TRUE(o.persist.empty());

  // Commit on an id run by Execute is refused.
  config.txns_in_flight_max = 100;
  Restart();
  Take();
  CommitAll(7, Req("ex", {Enq("p1", "q", "x")}), {{"p1", {1}}});
  core().Commit(8, CommitReq("ex", {{"p1", 1}}), now);
  EXPECT_EQ(Take().replies.at(0).status.code(), absl::StatusCode::kFailedPrecondition);
}

// ---------------------------------------------------------------- one phase

v1::PrepareResponse YesWith(std::vector<uint64_t> seqs) {
  v1::PrepareResponse r = Vote(v1::YES);
  for (uint64_t s : seqs) r.add_sequences(s);
  return r;
}

const TimerRequest* LatestTimer(const Output& o) {
  return o.timers.empty() ? nullptr : &o.timers.back();
}

TEST_F(CoordinatorCoreTest, OnePhaseCommitsOnTheVoteAndWritesOnlyALazyEnded) {
  config.one_phase = true;
  v1::ExecuteRequest req =
      Req("t1", {Enq("p1", "q", "a"), AckOp("p1", "in", 7, "lease-1"), Enq("p1", "r", "b")});
  core().Execute(1, req, now);
  Output o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_TRUE(o.persist.empty());
  const v1::PrepareRequest& p = o.send[0].prepare;
  EXPECT_EQ(o.send[0].type, MsgType::kPrepare);
  EXPECT_TRUE(p.one_phase());
  EXPECT_EQ(p.participant(), "p1");
  EXPECT_EQ(p.coordinator_address(), "coord:7000");
  ASSERT_EQ(p.participants_size(), 1);
  EXPECT_EQ(p.participants(0).address(), "h1:7001");
  ASSERT_EQ(p.ops_size(), 3);
  EXPECT_EQ(p.ops(2).enqueue().payload(), "b");

  core().OnPrepareReply("t1", "p1", YesWith({5, 0, 9}), now);
  o = Take();
  // The participant's durable commit is the decision: the client is answered
  // at once, nobody gets a second-round message, nothing is forced here.
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{5, 0, 9}));
  EXPECT_TRUE(o.send.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_FALSE(o.persist[0].sync);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::ENDED);
  EXPECT_TRUE(rec.reason().empty());
  EXPECT_EQ(Strs(rec.acknowledged().begin(), rec.acknowledged().end()), (Strs{"p1"}));
  EXPECT_EQ(std::vector<uint64_t>(rec.sequences().begin(), rec.sequences().end()),
            (std::vector<uint64_t>{5, 0, 9}));
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_EQ(o.log[0], "txn t1 COMMITTED (one phase at p1, 2pc)");
  EXPECT_EQ(core().in_flight(), 0u);
  // A duplicate vote changes nothing; a retry gets the outcome at once.
  core().OnPrepareReply("t1", "p1", YesWith({5, 0, 9}), now);
  EXPECT_TRUE(Take().empty());
  core().Execute(2, req, now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{5, 0, 9}));
  EXPECT_TRUE(o.send.empty());

  // 3PC with one participant: the same single round (no PRECOMMITTED).
  core().Execute(3, Req("t2", {Enq("p2", "q", "c")}, v1::THREE_PC), now);
  o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_TRUE(o.send[0].prepare.one_phase());
  EXPECT_EQ(o.send[0].prepare.protocol(), v1::THREE_PC);
  core().OnPrepareReply("t2", "p2", YesWith({4}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);

  // Two participants, or one-phase switched off: no one_phase flag.
  core().Execute(4, Req("t3", {Enq("p1", "q", "d"), Enq("p2", "q", "e")}), now);
  o = Take();
  ASSERT_EQ(o.send.size(), 2u);
  for (const OutMessage& m : o.send) EXPECT_FALSE(m.prepare.one_phase());
}

TEST_F(CoordinatorCoreTest, OnePhaseSwitchedOffRunsTwoPc) {
  config.one_phase = false;
  core().Execute(1, Req("t1", {Enq("p1", "q", "a")}), now);
  Output o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_FALSE(o.send[0].prepare.one_phase());
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.persist[0].sync);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
}

TEST_F(CoordinatorCoreTest, OnePhaseNoVoteAbortsWithoutAnAbortMessage) {
  config.one_phase = true;
  core().Execute(1, Req("t1", {Enq("p1", "missing", "a")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", Vote(v1::NO, "queue \"missing\" does not exist on p1"), now);
  Output o = Take();
  EXPECT_TRUE(o.send.empty());  // a NO kept nothing there (its ABORTED is durable)
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.persist[0].sync);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_ABORTED);
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_EQ(o.replies[0].response.reason(), "p1 voted NO: queue \"missing\" does not exist on p1");
}

TEST_F(CoordinatorCoreTest, OnePhaseRestartBeforeEndedThenRetryGetsTheSameSequences) {
  config.one_phase = true;
  v1::ExecuteRequest req = Req("t1", {Enq("p1", "q", "a"), Enq("p1", "q", "b")});
  core().Execute(1, req, now);
  Output o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  // Crash after the Prepare went out: nothing was written here.
  EXPECT_TRUE(o.persist.empty());
  Restart();
  EXPECT_TRUE(Take().send.empty());  // no record, nothing to recover
  // The client retries with the same id: the same one-phase Prepare, which
  // the participant answers from its committed outcome.
  core().Execute(2, req, now);
  o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_TRUE(o.send[0].prepare.one_phase());
  EXPECT_EQ(OpsDigest(o.send[0].prepare.ops()), OpsDigest(req.ops()));
  core().OnPrepareReply("t1", "p1", YesWith({1, 2}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].request, 2u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{1, 2}));
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  // Once ENDED is durable a restart answers from the log, sending nothing.
  Restart();
  EXPECT_TRUE(Take().send.empty());
  core().Execute(3, req, now);
  o = Take();
  EXPECT_TRUE(o.send.empty());
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{1, 2}));
  // The same id with other ops is refused.
  core().Execute(4, Req("t1", {Enq("p1", "q", "zz")}), now);
  EXPECT_EQ(Take().replies.at(0).status.code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(CoordinatorCoreTest, OnePhaseFailedPrepareIsSettledByAnAbortNotPresumed) {
  config.one_phase = true;
  core().Execute(1, Req("t1", {Enq("p1", "q", "a")}), now);
  Take();
  core().OnPrepareReply("t1", "p1", absl::UnavailableError("connection reset"), now);
  Output o = Take();
  // The Prepare may have committed there: no decision, no reply, an Abort.
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(o.replies.empty());
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1"}));
  ASSERT_NE(LatestTimer(o), nullptr);
  TimerRequest resend = *LatestTimer(o);
  EXPECT_EQ(resend.at_ms, now + 50);
  core().OnAbortReply("t1", "p1", absl::UnavailableError("down"), now);
  EXPECT_TRUE(Take().empty());
  Fire(resend);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1"}));  // resent, backing off
  ASSERT_NE(LatestTimer(o), nullptr);
  EXPECT_EQ(LatestTimer(o)->at_ms, now + 100);
  EXPECT_EQ(core().GetTransaction("t1")->outcome(), v1::PENDING);
  // Acknowledged: ABORTED is durable at p1, which can no longer commit it.
  core().OnAbortReply("t1", "p1", absl::OkStatus(), now);
  o = Take();
  EXPECT_TRUE(o.send.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_ABORTED);
  EXPECT_EQ(Strs(rec.acknowledged().begin(), rec.acknowledged().end()), (Strs{"p1"}));
  Durable(o.persist[0]);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_TRUE(Contains(o.replies[0].response.reason(), "connection reset"));
}

TEST_F(CoordinatorCoreTest, OnePhaseDeadlineAbortRefusedAsCommittedFetchesTheSequences) {
  config.one_phase = true;
  core().Execute(1, Req("t1", {Enq("p1", "q", "a")}, v1::TWO_PC, 300), now);
  Output o = Take();
  ASSERT_EQ(o.timers.size(), 1u);
  Fire(o.timers[0]);  // the vote deadline
  o = Take();
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(o.replies.empty());
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1"}));
  // It committed in one phase: the Abort is refused, and the same Prepare
  // (answered from its outcome) brings the sequences.
  core().OnAbortReply("t1", "p1",
                      absl::FailedPreconditionError("transaction t1 was committed here"), now);
  o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_EQ(o.send[0].type, MsgType::kPrepare);
  EXPECT_TRUE(o.send[0].prepare.one_phase());
  EXPECT_EQ(o.send[0].prepare.ops_size(), 1);
  EXPECT_TRUE(o.persist.empty());
  // Lost, then resent by its timer.
  core().OnPrepareReply("t1", "p1", absl::DeadlineExceededError("rpc deadline"), now);
  EXPECT_TRUE(Take().empty());
  Fire(*LatestTimer(o));
  o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_EQ(o.send[0].type, MsgType::kPrepare);
  core().OnPrepareReply("t1", "p1", YesWith({3}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{3}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
  EXPECT_FALSE(o.persist[0].sync);

  // A late YES while the Abort is under way also commits (it was committed).
  core().Execute(2, Req("t2", {Enq("p1", "q", "b")}, v1::TWO_PC, 300), now);
  o = Take();
  Fire(o.timers.at(0));
  EXPECT_EQ(Targets(Take(), MsgType::kAbort), (Strs{"p1"}));
  core().OnPrepareReply("t2", "p1", YesWith({4}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  core().OnAbortReply("t2", "p1", absl::FailedPreconditionError("committed"), now);
  EXPECT_TRUE(Take().send.empty());
}

}  // namespace
}  // namespace atomq::coordinator

// ---------------------------------------------------------- parallel commit

namespace atomq::coordinator {
namespace {

// A participant's QueryState answer.
v1::QueryStateResponse QS(v1::TxnState state, bool heuristic = false) {
  v1::QueryStateResponse r;
  r.set_state(state);
  r.set_heuristic(heuristic);
  return r;
}

// The PREPARING record a parallel-commit Execute of `req` writes.
v1::CoordinatorTxnRecord PreparingRecord(const v1::ExecuteRequest& req) {
  v1::CoordinatorTxnRecord r;
  r.set_txn_id(req.txn_id());
  r.set_protocol(v1::TWO_PC);
  r.set_state(v1::PREPARING);
  r.set_ops_digest(OpsDigest(req.ops()));
  std::map<std::string, uint32_t> index;
  for (const v1::Op& op : req.ops()) {
    auto [it, fresh] = index.emplace(op.participant(), static_cast<uint32_t>(index.size()));
    if (fresh) r.add_participants(op.participant());
    r.add_op_participant(it->second);
  }
  for (int i = 0; i < req.ops_size(); ++i) r.add_sequences(0);
  return r;
}

v1::ExecuteRequest ThreeWay(const std::string& id) {
  return Req(id, {Enq("p1", "q", "a"), Enq("p2", "q", "b"), Enq("p3", "q", "c")});
}

// The states of the txn records among `persist`.
std::vector<v1::TxnState> States(const Output& o) {
  std::vector<v1::TxnState> v;
  for (const Batch& b : o.persist) v.push_back(Rec(b).state());
  return v;
}

TEST_F(CoordinatorCoreTest, ParallelCommitWritesAForcedPreparingRecordBesideThePrepares) {
  config.parallel_commit = true;
  v1::ExecuteRequest req = ThreeWay("t1");
  core().Execute(1, req, now);
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPrepare), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_TRUE(o.persist[0].sync);
  ASSERT_EQ(o.persist[0].writes.size(), 1u);
  EXPECT_EQ(o.persist[0].writes[0].db, kTxnDb);
  EXPECT_EQ(o.persist[0].writes[0].key, "t1");
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::PREPARING);
  EXPECT_EQ(rec.txn_id(), "t1");
  EXPECT_EQ(rec.protocol(), v1::TWO_PC);
  EXPECT_EQ(rec.ops_digest(), OpsDigest(req.ops()));
  EXPECT_EQ(Strs(rec.participants().begin(), rec.participants().end()), (Strs{"p1", "p2", "p3"}));
  EXPECT_EQ(rec.acknowledged_size(), 0);
  EXPECT_TRUE(rec.reason().empty());
}

TEST_F(CoordinatorCoreTest,
       ParallelCommitVotesFirstThenDurableRecordCommitsWithoutACommittedRecord) {
  config.parallel_commit = true;
  v1::ExecuteRequest req = ThreeWay("t1");
  core().Execute(1, req, now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Batch preparing = o.persist[0];
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p3", Vote(v1::YES), now);
  o = Take();
  // Every vote is YES, but the PREPARING record is not durable yet.
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.persist.empty());  // no COMMITTED record: the PREPARING one decides
  EXPECT_TRUE(o.replies.empty());

  Durable(preparing);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(o.persist.empty());
  EXPECT_TRUE(o.replies.empty());  // waits for the sequences (no reply_at_decision)
  ASSERT_EQ(o.log.size(), 1u);
  EXPECT_TRUE(Contains(o.log[0], "COMMITTED"));
  EXPECT_TRUE(Contains(o.log[0], "parallel commit"));

  core().OnCommitReply("t1", "p1", Seqs({10}), now);
  core().OnCommitReply("t1", "p2", Seqs({20}), now);
  o = Take();
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.persist.empty());
  core().OnCommitReply("t1", "p3", Seqs({30}), now);
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].request, 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{10, 20, 30}));
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::ENDED);
  EXPECT_TRUE(Rec(o.persist[0]).reason().empty());  // an ENDED commit
  EXPECT_FALSE(o.persist[0].sync);
  Durable(o.persist[0]);
  EXPECT_EQ(core().in_flight(), 0u);
  EXPECT_EQ(view.records.at("t1").state(), v1::ENDED);
}

TEST_F(CoordinatorCoreTest, ParallelCommitDurableRecordFirstThenLastYesCommitsAtOnce) {
  config.parallel_commit = true;
  v1::ExecuteRequest req = Req("t1", {Enq("p1", "q", "a"), Enq("p2", "q", "b")});
  req.set_reply_at_decision(true);
  core().Execute(1, req, now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  o = Take();
  // A durable PREPARING record alone decides nothing.
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.persist.empty());
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.replies.empty());
  core().OnPrepareReply("t1", "p2", Vote(v1::YES), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2"}));
  EXPECT_TRUE(o.persist.empty());   // no COMMITTED record on the way
  ASSERT_EQ(o.replies.size(), 1u);  // reply_at_decision
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);

  core().OnCommitReply("t1", "p1", Seqs({7}), now);
  EXPECT_TRUE(Take().persist.empty());
  core().OnCommitReply("t1", "p2", Seqs({9}), now);
  o = Take();
  EXPECT_TRUE(o.replies.empty());
  EXPECT_EQ(States(o), (std::vector<v1::TxnState>{v1::ENDED}));
  EXPECT_FALSE(o.persist.at(0).sync);
  EXPECT_EQ(core().in_flight(), 0u);
}

TEST_F(CoordinatorCoreTest, ParallelCommitNeverSendsCommitWhileThePreparingRecordIsPending) {
  config.parallel_commit = true;
  core().Execute(1, ThreeWay("t1"), now);
  Output first = Take();
  ASSERT_EQ(first.persist.size(), 1u);
  for (const char* p : {"p1", "p2", "p3"}) core().OnPrepareReply("t1", p, Vote(v1::YES), now);
  Output o = Take();
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.replies.empty());
  // Duplicate votes, the votes deadline, and participants asking change nothing.
  for (const char* p : {"p1", "p2", "p3"}) core().OnPrepareReply("t1", p, Vote(v1::YES), now);
  for (const TimerRequest& t : first.timers) Fire(t);
  core().QueryState(5, "t1", now);
  o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(Targets(o, MsgType::kAbort).empty());
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.persist.empty());
  ASSERT_EQ(o.state_replies.size(), 1u);
  EXPECT_NE(o.state_replies[0].state, v1::STATE_COMMITTED);
  // Only the durable report releases the Commit.
  Durable(first.persist[0]);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
}

TEST_F(CoordinatorCoreTest, ParallelCommitReadOnlyVoteFallsBackToACommittedRecord) {
  config.parallel_commit = true;
  core().Execute(1, ThreeWay("t1"), now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);
  EXPECT_TRUE(Take().send.empty());
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::READ_ONLY), now);
  core().OnPrepareReply("t1", "p3", Vote(v1::YES), now);
  o = Take();
  // The PREPARING record is durable, yet a READ_ONLY voter leaves nothing to
  // find at recovery: the decision must be forced as a COMMITTED record.
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(o.persist[0].sync);
  Durable(o.persist[0]);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p3"}));  // not the READ_ONLY voter
}

TEST_F(CoordinatorCoreTest, ParallelCommitFailedPreparingWriteFallsBackToACommittedRecord) {
  config.parallel_commit = true;
  // The write fails after every vote is in.
  core().Execute(1, ThreeWay("t1"), now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  uint64_t token = o.persist[0].token;
  for (const char* p : {"p1", "p2", "p3"}) core().OnPrepareReply("t1", p, Vote(v1::YES), now);
  EXPECT_TRUE(Take().send.empty());
  core().OnPersisted(token, absl::InternalError("disk full"), now);
  o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
  EXPECT_TRUE(o.persist[0].sync);
  Durable(o.persist[0]);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p1", "p2", "p3"}));

  // The write fails before the votes.
  core().Execute(2, ThreeWay("t2"), now);
  o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  core().OnPersisted(o.persist[0].token, absl::InternalError("disk full"), now);
  o = Take();
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.persist.empty());
  for (const char* p : {"p1", "p2", "p3"}) core().OnPrepareReply("t2", p, Vote(v1::YES), now);
  o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_COMMITTED);
  Durable(o.persist[0]);
  EXPECT_EQ(Targets(Take(), MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
}

// A NO aborts as before, except that Abort waits for the ABORT record: an
// Abort in flight across a crash could reach a participant after a recovery
// that found everyone prepared and committed.
TEST_F(CoordinatorCoreTest, ParallelCommitNoVoteAbortsAfterTheAbortRecord) {
  config.parallel_commit = true;
  core().Execute(1, ThreeWay("t1"), now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Batch preparing = o.persist[0];
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t1", "p2", Vote(v1::NO, "no room"), now);
  o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kAbort).empty());
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  v1::CoordinatorTxnRecord rec = Rec(o.persist[0]);
  EXPECT_EQ(rec.state(), v1::STATE_ABORTED);
  EXPECT_EQ(rec.reason(), "p2 voted NO: no room");
  Batch abort = o.persist[0];
  // The PREPARING record becoming durable now, and a late YES, commit nothing.
  Durable(preparing);
  core().OnPrepareReply("t1", "p3", Vote(v1::YES), now);
  o = Take();
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.replies.empty());
  Durable(abort);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p3"}));
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  EXPECT_EQ(o.replies[0].response.reason(), "p2 voted NO: no room");
  EXPECT_EQ(view.records.at("t1").state(), v1::STATE_ABORTED);
}

TEST_F(CoordinatorCoreTest, ParallelCommitRecoveryAsksEveryParticipantThenCommits) {
  config.parallel_commit = true;
  v1::ExecuteRequest req = ThreeWay("t1");
  core().Execute(1, req, now);
  Output o = Take();
  ASSERT_EQ(o.persist.size(), 1u);
  Durable(o.persist[0]);  // the PREPARING record is on disk; then a crash
  ASSERT_EQ(view.records.at("t1").state(), v1::PREPARING);

  Restart();
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kQuery), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(Targets(o, MsgType::kPrepare).empty());
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(Targets(o, MsgType::kAbort).empty());
  EXPECT_TRUE(o.persist.empty());
  for (const OutMessage& m : o.send) EXPECT_EQ(m.address, config.participants.at(m.participant));

  // Undecided meanwhile: participants hear PREPARING, a retry waits.
  core().QueryState(7, "t1", now);
  o = Take();
  ASSERT_EQ(o.state_replies.size(), 1u);
  EXPECT_EQ(o.state_replies[0].state, v1::PREPARING);
  core().Execute(2, req, now);
  o = Take();
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.send.empty());

  core().OnQueryReply("t1", "p1", QS(v1::PREPARED), now);
  core().OnQueryReply("t1", "p2", QS(v1::STATE_COMMITTED), now);
  o = Take();
  EXPECT_TRUE(o.send.empty());  // p3 has not answered
  EXPECT_TRUE(o.replies.empty());
  core().OnQueryReply("t1", "p3", QS(v1::PREPARED), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(o.persist.empty());  // no COMMITTED record needed
  for (const char* p : {"p1", "p2", "p3"}) {
    core().OnCommitReply("t1", p, Seqs({p[1] == '1' ? 11u : p[1] == '2' ? 22u : 33u}), now);
  }
  o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].request, 2u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::COMMITTED);
  EXPECT_EQ(Results(o.replies[0].response), (std::vector<uint64_t>{11, 22, 33}));
  EXPECT_EQ(States(o), (std::vector<v1::TxnState>{v1::ENDED}));
}

TEST_F(CoordinatorCoreTest, ParallelCommitRecoveryAbortsWhenAParticipantAnswersAborted) {
  config.parallel_commit = true;
  v1::ExecuteRequest req = ThreeWay("t1");
  core().Recover({PreparingRecord(req)}, now);
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kQuery), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(o.persist.empty());
  core().Execute(2, req, now);
  EXPECT_TRUE(Take().replies.empty());
  core().OnQueryReply("t1", "p1", QS(v1::PREPARED), now);
  EXPECT_TRUE(Take().empty());
  core().OnQueryReply("t1", "p2", QS(v1::STATE_ABORTED), now);
  o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(Targets(o, MsgType::kAbort).empty());  // after the ABORT record
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.persist.size(), 1u);
  EXPECT_EQ(Rec(o.persist[0]).state(), v1::STATE_ABORTED);
  EXPECT_TRUE(o.persist[0].sync);
  Batch abort = o.persist[0];
  // A late PREPARED changes nothing.
  core().OnQueryReply("t1", "p3", QS(v1::PREPARED), now);
  EXPECT_TRUE(Take().send.empty());
  Durable(abort);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p3"}));
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].request, 2u);
  EXPECT_EQ(o.replies[0].response.outcome(), v1::ABORTED);
  core().QueryState(3, "t1", now);
  EXPECT_EQ(Take().state_replies.at(0).state, v1::STATE_ABORTED);
}

// An operator resolved p2 while the coordinator was down: it had prepared,
// so the others commit (as they would after a COMMITTED record) and p2's
// refusal of the Commit is what reports the damage.
TEST_F(CoordinatorCoreTest, ParallelCommitRecoveryCountsAHeuristicOutcomeAsAYesVote) {
  config.parallel_commit = true;
  core().Recover({PreparingRecord(ThreeWay("t1"))}, now);
  Take();
  core().OnQueryReply("t1", "p1", QS(v1::PREPARED), now);
  core().OnQueryReply("t1", "p2", QS(v1::STATE_ABORTED, /*heuristic=*/true), now);
  core().OnQueryReply("t1", "p3", QS(v1::PREPARED), now);
  Output o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kAbort).empty());
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
}

TEST_F(CoordinatorCoreTest, ParallelCommitRecoveryAsksAgainAfterAFailedOrUndecidedAnswer) {
  config.parallel_commit = true;
  core().Recover({PreparingRecord(ThreeWay("t1"))}, now);
  Output o = Take();
  ASSERT_EQ(o.send.size(), 3u);
  ASSERT_EQ(o.timers.size(), 3u);
  std::vector<TimerRequest> timers = o.timers;
  core().OnQueryReply("t1", "p1", absl::UnavailableError("connection refused"), now);
  core().OnQueryReply("t1", "p2", QS(v1::PREPARING), now);
  core().OnQueryReply("t1", "p3", QS(v1::PREPARED), now);
  o = Take();
  EXPECT_TRUE(o.send.empty());
  EXPECT_TRUE(o.persist.empty());
  for (const TimerRequest& t : timers) Fire(t);
  o = Take();
  // p3 answered; p1 and p2 are asked again.
  EXPECT_EQ(Targets(o, MsgType::kQuery), (Strs{"p1", "p2"}));
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_TRUE(Targets(o, MsgType::kAbort).empty());
  core().OnQueryReply("t1", "p1", QS(v1::PREPARED), now);
  EXPECT_TRUE(Take().send.empty());
  core().OnQueryReply("t1", "p2", QS(v1::PREPARED), now);
  o = Take();
  EXPECT_EQ(Targets(o, MsgType::kCommit), (Strs{"p1", "p2", "p3"}));
  EXPECT_TRUE(o.persist.empty());
}

TEST_F(CoordinatorCoreTest, ParallelCommitPlantedPresumedAbortSendsAbortWithoutAsking) {
  config.parallel_commit = true;
  config.plant = Plant::kStagedPresumedAbort;
  core().Recover({PreparingRecord(ThreeWay("t1"))}, now);
  Output o = Take();
  EXPECT_TRUE(Targets(o, MsgType::kQuery).empty());
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
  EXPECT_EQ(Targets(o, MsgType::kAbort), (Strs{"p1", "p2", "p3"}));
}

TEST_F(CoordinatorCoreTest, ParallelCommitNeverForThreePcOnePhaseOrOneParticipant) {
  config.parallel_commit = true;
  config.one_phase = true;
  // 3PC, several participants: PRECOMMITTED after the votes, never PREPARING.
  core().Execute(1, Req("t3", {Enq("p1", "q", "a"), Enq("p2", "q", "b")}, v1::THREE_PC), now);
  Output o = Take();
  EXPECT_EQ(Targets(o, MsgType::kPrepare), (Strs{"p1", "p2"}));
  EXPECT_TRUE(o.persist.empty());
  core().OnPrepareReply("t3", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("t3", "p2", Vote(v1::YES), now);
  o = Take();
  EXPECT_EQ(States(o), (std::vector<v1::TxnState>{v1::PRECOMMITTED}));
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());

  // One phase (a single participant): nothing written before the vote.
  core().Execute(2, Req("t1p", {Enq("p1", "q", "a")}, v1::TWO_PC), now);
  o = Take();
  ASSERT_EQ(o.send.size(), 1u);
  EXPECT_TRUE(o.send[0].prepare.one_phase());
  EXPECT_TRUE(o.persist.empty());

  // A single participant with one phase off: plain 2PC, no PREPARING.
  config.one_phase = false;
  Restart();
  Take();
  core().Execute(3, Req("t1", {Enq("p1", "q", "a")}, v1::TWO_PC), now);
  o = Take();
  EXPECT_TRUE(o.persist.empty());
  core().OnPrepareReply("t1", "p1", Vote(v1::YES), now);
  o = Take();
  EXPECT_EQ(States(o), (std::vector<v1::TxnState>{v1::STATE_COMMITTED}));
  EXPECT_TRUE(Targets(o, MsgType::kCommit).empty());
}

}  // namespace
}  // namespace atomq::coordinator
