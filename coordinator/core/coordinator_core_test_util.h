// Shared by the coordinator core's tests: scripted scenarios against the pure
// core, where each step feeds one input and checks everything the core asked
// for in response. One fixture for every test file (gtest wants one class
// per suite); the helpers are inline.

#pragma once

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "coordinator/core/coordinator_core.h"
#include "gtest/gtest.h"

namespace atomq::coordinator {

// The build links gtest only, not gmock.
inline ::testing::AssertionResult Contains(const std::string& haystack, const std::string& needle) {
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
      if (w.erase) {
        erased.push_back(w.db + "/" + w.key);
        if (w.db == kTxnDb) records.erase(w.key);
        continue;
      }
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
  std::vector<std::string> erased;  // "db/key" of every erase applied
};

inline v1::Op Enq(const std::string& participant, const std::string& queue,
                  const std::string& payload) {
  v1::Op op;
  op.set_participant(participant);
  op.mutable_enqueue()->set_queue(queue);
  op.mutable_enqueue()->set_payload(payload);
  return op;
}

inline v1::Op AckOp(const std::string& participant, const std::string& queue, uint64_t seq,
                    const std::string& token) {
  v1::Op op;
  op.set_participant(participant);
  op.mutable_ack()->set_queue(queue);
  op.mutable_ack()->set_sequence(seq);
  op.mutable_ack()->set_lease_token(token);
  return op;
}

inline v1::ExecuteRequest Req(const std::string& id, std::vector<v1::Op> ops,
                              v1::Protocol protocol = v1::PROTOCOL_UNSPECIFIED,
                              uint32_t timeout_ms = 0) {
  v1::ExecuteRequest r;
  r.set_txn_id(id);
  r.set_protocol(protocol);
  r.set_timeout_ms(timeout_ms);
  for (v1::Op& op : ops) *r.add_ops() = op;
  return r;
}

inline v1::PrepareResponse Vote(v1::Vote v, const std::string& reason = "") {
  v1::PrepareResponse r;
  r.set_vote(v);
  r.set_reason(reason);
  return r;
}

inline v1::CommitResponse Seqs(std::vector<uint64_t> seqs) {
  v1::CommitResponse r;
  for (uint64_t s : seqs) r.add_sequences(s);
  return r;
}

// The record a batch writes. An ENDED record comes with its time-index key.
inline v1::CoordinatorTxnRecord Rec(const Batch& b) {
  EXPECT_TRUE(b.writes.size() == 1u || (b.writes.size() == 2u && b.writes[1].db == kEndedDb))
      << b.writes.size() << " writes";
  v1::CoordinatorTxnRecord r;
  EXPECT_TRUE(DecodeRecord(b.writes.at(0).value, &r).ok());
  return r;
}

inline std::vector<std::string> Targets(const Output& out, MsgType type) {
  std::vector<std::string> v;
  for (const OutMessage& m : out.send) {
    if (m.type == type) v.push_back(m.participant);
  }
  std::sort(v.begin(), v.end());
  return v;
}

inline std::vector<uint64_t> Results(const v1::ExecuteResponse& r) {
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

}  // namespace atomq::coordinator
