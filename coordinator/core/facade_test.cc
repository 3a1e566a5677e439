// The facade: idempotent retries, validation and limits, and seeded runs
// with faults checked against the invariants.

#include "coordinator/core/coordinator_core_test_util.h"

namespace atomq::coordinator {
namespace {

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
  config.header_bytes_max = 5;
  config.txn_bytes_max = 20;
  v1::Op big_header = Enq("p1", "q", "");
  (*big_header.mutable_enqueue()->mutable_headers())["k"] = "12345";
  v1::Op header_and_payload = Enq("p1", "q", "0123456");
  (*header_and_payload.mutable_enqueue()->mutable_headers())["k"] = "123";
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
       "4 ops; at most --ops_per_txn_max=3"},
      {Req("t", {Enq("p1", "q", "a"), Enq("p9", "q", "a")}),
       "op 1: participant \"p9\" is not known"},
      {Req("t", {Enq("p1", "q", "01234567890")}),
       "op 0: payload is 11 bytes; at most --payload_bytes_max=10"},
      {Req("t", {Enq("p1", "q", "a"), Enq("p1", "bad queue", "a")}), "op 1: queue name"},
      {Req("t", {Enq("p1", "", "a")}), "op 0: queue name is empty"},
      {Req("t", {two_headers}), "op 0: 2 headers; at most --headers_max=1"},
      {Req("t", {big_header}), "op 0: headers are 6 bytes; at most --header_bytes_max=5"},
      {Req("t", {header_and_payload}),
       "op 0: payload and headers are 11 bytes; at most --payload_bytes_max=10"},
      {Req("t", {Enq("p1", "q", "0123456789"), Enq("p1", "q", "0123456789"), Enq("p1", "q", "0")}),
       "the transaction has 21 bytes of messages; at most --txn_bytes_max=20"},
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

// Decided transactions wait in memory for every acknowledgement; with a
// participant silent they are bounded, and new work is refused meanwhile.
TEST_F(CoordinatorCoreTest, UnendedLimitHoldsWhileAParticipantDoesNotAcknowledge) {
  config.txns_unended_max = 1;
  v1::ExecuteRequest a = Req("a", {Enq("p1", "q", "a"), Enq("p2", "q", "b")});
  a.set_reply_at_decision(true);
  core().Execute(1, a, now);
  Take();
  core().OnPrepareReply("a", "p1", Vote(v1::YES), now);
  core().OnPrepareReply("a", "p2", Vote(v1::YES), now);
  Durable(Take().persist.at(0));
  ASSERT_EQ(Take().replies.size(), 1u);  // answered at the decision
  EXPECT_EQ(core().in_flight(), 0u);
  core().OnCommitReply("a", "p1", Seqs({1}), now);  // p2 stays silent
  Take();
  core().Execute(2, Req("b", {Enq("p1", "q", "c")}), now);
  Output o = Take();
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(std::string(o.replies[0].status.message()), "--txns_unended_max"));
  EXPECT_TRUE(o.send.empty());
  core().OnCommitReply("a", "p2", Seqs({2}), now);
  for (const Batch& b : Take().persist) Durable(b);
  Take();
  core().Execute(3, Req("b", {Enq("p1", "q", "c")}), now);
  o = Take();
  EXPECT_TRUE(o.replies.empty());
  EXPECT_EQ(Targets(o, MsgType::kPrepare), (Strs{"p1"}));
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

// ------------------------------------------------------------- simulation

// Seeded runs with dropped, duplicated and reordered messages, failed writes
// and restarts; the invariants of docs/design.md section 4 are checked as outputs
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
    v1::ListTransactionsRequest all;
    for (const v1::TransactionInfo& t : core_->ListTransactions(all, 1000000)->transactions()) {
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

}  // namespace
}  // namespace atomq::coordinator
