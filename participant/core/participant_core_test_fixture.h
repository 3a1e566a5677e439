// The fixtures the participant core's tests share: a disk that applies the
// core's batches, request builders, and a core driven over that disk.
#pragma once

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "gtest/gtest.h"
#include "participant/core/participant_core.h"
#include "participant/core/schema.h"

namespace atomq::participant {

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

  absl::StatusOr<std::vector<uint64_t>> ScanMessages(uint64_t queue_id, uint64_t from, uint64_t to,
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

  std::vector<std::string> Keys(const std::string& db) const {
    std::vector<std::string> keys;
    auto d = dbs_.find(db);
    if (d != dbs_.end()) {
      for (const auto& [key, value] : d->second) keys.push_back(key);
    }
    return keys;
  }

  size_t Count(const std::string& db) const {
    auto d = dbs_.find(db);
    return d == dbs_.end() ? 0 : d->second.size();
  }

  // What the adapter would read at start.
  RecoveredState Recovered() const {
    absl::StatusOr<RecoveredState> st =
        schema::LoadRecoveredState([this](const char* db, const schema::RecordFn& fn) {
          auto d = dbs_.find(db);
          if (d == dbs_.end()) return absl::OkStatus();
          for (const auto& [key, value] : d->second) {
            if (!fn(key, value)) break;
          }
          return absl::OkStatus();
        });
    EXPECT_TRUE(st.ok()) << st.status();
    return st.ok() ? *std::move(st) : RecoveredState();
  }

  mutable int scans_ = 0;    // ScanMessages calls
  absl::Status scan_error_;  // ScanMessages fails with it when set

 private:
  std::map<std::string, std::map<std::string, std::string>> dbs_;
};

inline v1::Op EnqueueOp(const std::string& queue, const std::string& payload,
                        const std::string& participant = "p1") {
  v1::Op op;
  op.set_participant(participant);
  op.mutable_enqueue()->set_queue(queue);
  op.mutable_enqueue()->set_payload(payload);
  return op;
}

inline v1::Op AckOp(const std::string& queue, uint64_t seq, const std::string& token) {
  v1::Op op;
  op.set_participant("p1");
  op.mutable_ack()->set_queue(queue);
  op.mutable_ack()->set_sequence(seq);
  op.mutable_ack()->set_lease_token(token);
  return op;
}

inline v1::PrepareRequest PrepareReq(const std::string& txn, std::vector<v1::Op> ops) {
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

// A 3PC Prepare of one enqueue.
inline v1::PrepareRequest ThreePcReq(const std::string& txn) {
  v1::PrepareRequest req = PrepareReq(txn, {EnqueueOp("q", "m")});
  req.set_protocol(v1::THREE_PC);
  return req;
}

inline v1::QueryStateResponse StateReply(v1::TxnState s) {
  v1::QueryStateResponse r;
  r.set_state(s);
  return r;
}

class ParticipantCoreTest : public ::testing::Test {
 protected:
  ParticipantCoreTest() {
    config_.participant_id = "p1";
    config_.boot_count = 7;
    // Distinct bytes for every token, across restarts too, as the kernel's
    // would be.
    config_.random_bytes = [gen = std::make_shared<std::mt19937_64>(7)](uint8_t* out, size_t n) {
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>((*gen)() >> 56);
    };
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

  // Every prepared transaction, payloads included (one page).
  std::vector<v1::ParticipantTxnInfo> Prepared() {
    v1::ListParticipantTxnsRequest req;
    req.set_payloads(true);
    absl::StatusOr<v1::ListParticipantTxnsResponse> page =
        core_->ListTransactions(req, 1000000, uint64_t{1} << 40);
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) return {};
    return {page->transactions().begin(), page->transactions().end()};
  }

  std::optional<v1::ParticipantTxnInfo> Txn(const std::string& id) {
    for (const v1::ParticipantTxnInfo& t : Prepared()) {
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

}  // namespace atomq::participant
