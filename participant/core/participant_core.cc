#include "participant/core/participant_core.h"

#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/validate.h"

namespace atomq::participant {
namespace {

using v1::TxnState;

std::string Plural(uint64_t n, const char* word) {
  return absl::StrCat(n, " ", word, n == 1 ? "" : "s");
}

std::string MessageName(const std::string& queue, uint64_t sequence) {
  return absl::StrCat(queue, "/", sequence);
}

// A committed, durable message. Payloads stay in storage.
struct Message {
  uint32_t delivery_count = 0;
  std::string lease_token;  // empty: never leased, or the lease was returned
  int64_t lease_expires_ms = 0;
  std::string pinned_by;   // a prepared transaction that acks it
  uint64_t ack_token = 0;  // batch of a plain Ack in flight
};

// A message sits in exactly one of: `ready`, `leases` (leased, neither pinned
// nor being acked), or neither (pinned or being acked).
struct Queue {
  v1::QueueRecord rec;                 // next_sequence: the next one to assign
  uint64_t durable_next_sequence = 1;  // what the disk says; the visible version
  std::map<uint64_t, Message> messages;
  std::set<uint64_t> ready;
  std::set<std::pair<int64_t, uint64_t>> leases;  // (expires_ms, sequence)
  uint64_t pinned = 0;                            // messages pinned by prepared transactions
  uint64_t staged = 0;                            // enqueues of prepared transactions
  uint32_t txn_refs = 0;                          // prepared transactions touching the queue
  uint64_t delete_token = 0;                      // a DeleteQueue in flight
};

enum class ReplyKind { kPrepare, kPreCommit, kCommit, kAbort, kQuery, kCreate, kDelete, kAck };

struct Waiter {
  ReplyKind kind;
  RequestId request;
};

enum class BatchKind {
  kPrepare,
  kPreCommit,
  kCommit,
  kAbort,
  kAbortUnknown,
  kCreate,
  kDelete,
  kAck
};

// A batch handed to the adapter and not yet reported.
struct Pending {
  BatchKind kind;
  std::string key;  // txn id or queue name
  uint64_t queue_id = 0;
  uint64_t sequence = 0;
  std::string settled_by;  // in-doubt resolution: who told us
  std::vector<Waiter> waiters;
};

// A request on a transaction that arrived while a batch for it was in flight;
// replayed once that batch is reported, so each transaction has at most one
// batch in flight and every answer reflects durable state.
enum class Call { kPreCommit, kCommit, kAbort, kQuery, kSettleCommit, kSettleAbort };
struct Deferred {
  Call call;
  RequestId request = 0;
  std::string by;
};

struct Txn {
  v1::PreparedRecord rec;
  bool durable = false;  // some version of rec is on disk (the YES is given)
  uint64_t pending = 0;  // token of the batch in flight for it
  std::vector<Deferred> deferred;
  std::vector<uint64_t> sequences;  // assigned by the commit in flight
  v1::OutcomeRecord outcome;        // what the commit or abort in flight writes
  uint32_t enqueues = 0;
  uint32_t acks = 0;
  // In doubt.
  bool in_doubt = false;
  bool ask_peers = false;
  uint64_t timer_id = 0;
  uint32_t backoff_ms = 0;
  uint32_t preparing_streak = 0;
};

struct CachedOutcome {
  v1::OutcomeRecord rec;
  uint64_t token = 0;  // nonzero: the record is not durable yet
};

// Coordinator answers of PREPARING in a row before peers are asked too.
constexpr uint32_t kPreparingBeforePeers = 3;

}  // namespace

struct ParticipantCore::Impl {
  Impl(Config c, const DurableView* v) : config(std::move(c)), view(v) {}

  Config config;
  const DurableView* view;
  bool recovered = false;
  Output out;

  uint64_t next_token = 1;
  uint64_t next_timer_id = 1;
  uint64_t next_lease = 1;
  uint64_t next_queue_id = 1;

  std::map<std::string, Queue> queues;
  std::map<uint64_t, std::string> queue_names;                           // id -> name
  std::map<std::string, std::pair<v1::QueueRecord, uint64_t>> creating;  // name -> (rec, token)
  std::map<std::string, Txn> txns;
  std::map<uint64_t, Pending> pending;
  std::map<uint64_t, std::string> timers;  // timer id -> txn id
  std::map<std::string, CachedOutcome> outcomes;
  std::deque<std::string> outcome_order;  // FIFO eviction

  // --- plumbing ---

  void RequireRecovered() const { ATOMQ_CHECK(recovered, "Recover() must come first"); }

  uint64_t Submit(std::vector<Write> writes, Pending p) {
    uint64_t token = next_token++;
    out.persist.push_back(Batch{token, std::move(writes)});
    pending.emplace(token, std::move(p));
    return token;
  }

  static Write Put(const char* db, std::string key, const google::protobuf::MessageLite& m) {
    return Write{db, std::move(key), EncodeRecord(m), false};
  }
  static Write Erase(const char* db, std::string key) {
    return Write{db, std::move(key), std::string(), true};
  }

  void Send(RequestId r, absl::Status s, ReplyBody body) {
    out.replies.push_back(Reply{r, std::move(s), std::move(body)});
  }

  static ReplyBody EmptyBody(ReplyKind k) {
    switch (k) {
      case ReplyKind::kPrepare:
        return v1::PrepareResponse();
      case ReplyKind::kPreCommit:
        return v1::PreCommitResponse();
      case ReplyKind::kCommit:
        return v1::CommitResponse();
      case ReplyKind::kAbort:
        return v1::AbortResponse();
      case ReplyKind::kQuery:
        return v1::QueryStateResponse();
      case ReplyKind::kCreate:
        return v1::CreateQueueResponse();
      case ReplyKind::kDelete:
        return v1::DeleteQueueResponse();
      case ReplyKind::kAck:
        return v1::AckResponse();
    }
    return v1::AckResponse();
  }

  void Fail(const Waiter& w, absl::Status s) { Send(w.request, std::move(s), EmptyBody(w.kind)); }

  void Vote(RequestId r, v1::Vote vote, std::string reason = "") {
    v1::PrepareResponse resp;
    resp.set_vote(vote);
    resp.set_reason(std::move(reason));
    Send(r, absl::OkStatus(), resp);
  }

  void SendState(RequestId r, TxnState state) {
    v1::QueryStateResponse resp;
    resp.set_state(state);
    Send(r, absl::OkStatus(), resp);
  }

  void SendSequences(RequestId r, const google::protobuf::RepeatedField<uint64_t>& seqs) {
    v1::CommitResponse resp;
    *resp.mutable_sequences() = seqs;
    Send(r, absl::OkStatus(), resp);
  }

  void Log(std::string line) { out.log.push_back(std::move(line)); }

  // --- outcomes ---

  // Durable or in flight (token != 0), from memory, else from storage.
  std::optional<CachedOutcome> FindOutcome(const std::string& id) const {
    auto it = outcomes.find(id);
    if (it != outcomes.end()) return it->second;
    if (view == nullptr) return std::nullopt;
    std::optional<v1::OutcomeRecord> rec = view->FindOutcome(id);
    if (!rec) return std::nullopt;
    return CachedOutcome{*std::move(rec), 0};
  }

  void RememberOutcome(v1::OutcomeRecord rec, uint64_t token) {
    const std::string id = rec.txn_id();
    auto [it, inserted] = outcomes.insert_or_assign(id, CachedOutcome{std::move(rec), token});
    if (inserted) outcome_order.push_back(id);
    EvictOutcomes();
  }

  // Only durable outcomes go: storage (the DurableView) still has them.
  void EvictOutcomes() {
    while (outcomes.size() > config.outcome_cache_max && !outcome_order.empty()) {
      auto it = outcomes.find(outcome_order.front());
      if (it != outcomes.end() && it->second.token != 0) break;
      if (it != outcomes.end()) outcomes.erase(it);
      outcome_order.pop_front();
    }
  }

  // --- queue model ---

  Queue* FindQueue(const std::string& name) {
    auto it = queues.find(name);
    if (it == queues.end() || it->second.delete_token != 0) return nullptr;
    return &it->second;
  }
  Queue* FindQueueById(uint64_t id) {
    auto it = queue_names.find(id);
    if (it == queue_names.end()) return nullptr;
    auto q = queues.find(it->second);
    return q == queues.end() ? nullptr : &q->second;
  }

  absl::Status NoQueue(const std::string& name) const {
    return absl::NotFoundError(
        absl::StrCat("queue \"", name, "\" does not exist on ", config.participant_id));
  }

  static bool Expired(const Message& m, int64_t now_ms) { return now_ms >= m.lease_expires_ms; }

  // Takes a message out of `ready`/`leases`, e.g. to pin it.
  static void Detach(Queue& q, uint64_t seq, const Message& m) {
    if (q.ready.erase(seq) == 0) q.leases.erase({m.lease_expires_ms, seq});
  }

  // Puts a message that is neither pinned nor being acked back where its
  // lease says.
  static void Restore(Queue& q, uint64_t seq, Message& m, int64_t now_ms) {
    ATOMQ_CHECK(m.pinned_by.empty() && m.ack_token == 0, "restoring a held message");
    if (!m.lease_token.empty() && !Expired(m, now_ms)) {
      q.leases.insert({m.lease_expires_ms, seq});
    } else {
      m.lease_token.clear();
      q.ready.insert(seq);
    }
  }

  void ExpireLeases(Queue& q, int64_t now_ms) {
    while (!q.leases.empty() && q.leases.begin()->first <= now_ms) {
      uint64_t seq = q.leases.begin()->second;
      q.leases.erase(q.leases.begin());
      Message& m = q.messages.at(seq);
      m.lease_token.clear();
      q.ready.insert(seq);
    }
  }

  v1::QueueInfo Info(const Queue& q) const {
    v1::QueueInfo info;
    info.set_name(q.rec.name());
    info.set_version(q.durable_next_sequence);
    info.set_ready(q.ready.size());
    info.set_leased(q.messages.size() - q.ready.size() - q.pinned);
    info.set_pending_in_txn(q.staged + q.pinned);
    info.set_created_unix_ms(q.rec.created_unix_ms());
    return info;
  }

  static std::set<std::string> TouchedQueues(const v1::PreparedRecord& rec) {
    std::set<std::string> names;
    for (const v1::Op& op : rec.ops()) {
      names.insert(op.has_enqueue() ? op.enqueue().queue() : op.ack().queue());
    }
    return names;
  }

  // Pins acked messages, counts staged enqueues; undone by Unstage.
  void Stage(Txn& t) {
    const std::string& id = t.rec.txn_id();
    for (const std::string& name : TouchedQueues(t.rec)) {
      Queue* q = FindQueue(name);
      ATOMQ_CHECK(q != nullptr, "a prepared transaction's queue exists");
      q->txn_refs++;
    }
    for (const v1::Op& op : t.rec.ops()) {
      if (op.has_enqueue()) {
        queues.at(op.enqueue().queue()).staged++;
        t.enqueues++;
        continue;
      }
      t.acks++;
      Queue& q = queues.at(op.ack().queue());
      auto m = q.messages.find(op.ack().sequence());
      // Recover may find a message gone; the commit then erases nothing.
      if (m == q.messages.end()) continue;
      ATOMQ_CHECK(m->second.pinned_by.empty(), "a message is pinned by one transaction");
      Detach(q, m->first, m->second);
      m->second.pinned_by = id;
      q.pinned++;
    }
  }

  void Unstage(Txn& t, int64_t now_ms) {
    for (const v1::Op& op : t.rec.ops()) {
      if (op.has_enqueue()) {
        Queue& q = queues.at(op.enqueue().queue());
        ATOMQ_CHECK(q.staged > 0, "staged count matches staged enqueues");
        q.staged--;
        continue;
      }
      Queue& q = queues.at(op.ack().queue());
      auto m = q.messages.find(op.ack().sequence());
      if (m == q.messages.end() || m->second.pinned_by != t.rec.txn_id()) continue;
      m->second.pinned_by.clear();
      q.pinned--;
      Restore(q, m->first, m->second, now_ms);
    }
    for (const std::string& name : TouchedQueues(t.rec)) queues.at(name).txn_refs--;
  }

  void EraseTxn(const std::string& id) {
    auto it = txns.find(id);
    ATOMQ_CHECK(it != txns.end(), "erasing a known transaction");
    timers.erase(it->second.timer_id);
    txns.erase(it);
  }

  // --- Prepare ---

  absl::Status ValidatePrepare(const v1::PrepareRequest& req) const {
    absl::Status s = ValidateTxnId(req.txn_id());
    if (!s.ok()) return s;
    s = ValidateNodeId(req.participant());
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("participant: ", s.message()));
    // A misrouted Prepare must not be staged under another node's name:
    // cooperative termination would then ask the wrong peers.
    if (!config.participant_id.empty() && req.participant() != config.participant_id) {
      return absl::InvalidArgumentError(absl::StrCat("Prepare for participant \"",
                                                     req.participant(), "\" reached \"",
                                                     config.participant_id, "\""));
    }
    for (int i = 0; i < req.ops_size(); ++i) {
      const v1::Op& op = req.ops(i);
      if (op.participant() != req.participant()) {
        return absl::InvalidArgumentError(absl::StrCat("op ", i, " is for participant \"",
                                                       op.participant(), "\", not \"",
                                                       req.participant(), "\""));
      }
      if (!op.has_enqueue() && !op.has_ack()) {
        return absl::InvalidArgumentError(absl::StrCat("op ", i, " is neither enqueue nor ack"));
      }
    }
    return absl::OkStatus();
  }

  // Empty when every op can be applied; else the reason for a NO.
  std::string CheckOps(const v1::PrepareRequest& req, int64_t now_ms) {
    if (static_cast<uint64_t>(req.ops_size()) > config.ops_per_txn_max) {
      return absl::StrCat(req.ops_size(),
                          " ops; at most --ops_per_txn_max=", config.ops_per_txn_max);
    }
    std::set<std::pair<std::string, uint64_t>> acked;
    for (int i = 0; i < req.ops_size(); ++i) {
      const v1::Op& op = req.ops(i);
      const std::string& name = op.has_enqueue() ? op.enqueue().queue() : op.ack().queue();
      absl::Status s = ValidateQueueName(name);
      if (!s.ok()) return absl::StrCat("op ", i, ": ", s.message());
      Queue* q = FindQueue(name);
      if (q == nullptr) return std::string(NoQueue(name).message());
      if (op.has_enqueue()) {
        const v1::Enqueue& e = op.enqueue();
        if (e.payload().size() > config.payload_bytes_max) {
          return absl::StrCat("op ", i, ": payload is ", e.payload().size(),
                              " bytes; at most --payload_bytes_max=", config.payload_bytes_max);
        }
        if (static_cast<uint64_t>(e.headers_size()) > config.headers_max) {
          return absl::StrCat("op ", i, ": ", e.headers_size(),
                              " headers; at most --headers_max=", config.headers_max);
        }
        continue;
      }
      const v1::Ack& a = op.ack();
      const std::string msg = MessageName(name, a.sequence());
      if (!acked.insert({name, a.sequence()}).second) {
        return absl::StrCat("op ", i, ": acks ", msg, " twice");
      }
      auto m = q->messages.find(a.sequence());
      if (m == q->messages.end()) {
        return absl::StrCat("message ", msg, " does not exist on ", config.participant_id,
                            " (already acked, or never committed)");
      }
      if (!m->second.pinned_by.empty()) {
        return absl::StrCat("message ", msg, " is held by prepared transaction ",
                            m->second.pinned_by);
      }
      if (m->second.ack_token != 0) return absl::StrCat("message ", msg, " is being acked");
      if (m->second.lease_token.empty()) {
        return absl::StrCat("message ", msg, " is not leased (stale lease token)");
      }
      if (m->second.lease_token != a.lease_token()) {
        return absl::StrCat("lease token \"", a.lease_token(), "\" is not the current lease of ",
                            msg, " (stale or foreign token)");
      }
      if (Expired(m->second, now_ms)) {
        return absl::StrCat("lease on ", msg, " expired at ", m->second.lease_expires_ms,
                            " ms (stale lease)");
      }
    }
    return "";
  }

  void Prepare(RequestId r, const v1::PrepareRequest& req, int64_t now_ms) {
    absl::Status s = ValidatePrepare(req);
    if (!s.ok()) return Fail({ReplyKind::kPrepare, r}, s);
    const std::string& id = req.txn_id();
    const uint64_t digest = OpsDigest(req.ops());
    auto it = txns.find(id);
    if (it != txns.end()) {
      Txn& t = it->second;
      if (t.rec.ops_digest() != digest) {
        return Vote(r, v1::NO,
                    absl::StrCat("transaction ", id, " is prepared here with other ops"));
      }
      if (!t.durable) {
        Pending& p = pending.at(t.pending);
        ATOMQ_CHECK(p.kind == BatchKind::kPrepare, "a transaction is durable once prepared");
        p.waiters.push_back({ReplyKind::kPrepare, r});
        return;
      }
      return Vote(r, v1::YES);
    }
    if (std::optional<CachedOutcome> o = FindOutcome(id)) {
      if (o->rec.state() == v1::STATE_ABORTED) return Vote(r, v1::NO, "already aborted here");
      if (o->rec.ops_digest() != digest) {
        return Vote(r, v1::NO, absl::StrCat("transaction ", id, " committed here with other ops"));
      }
      return Vote(r, v1::YES);
    }
    if (req.ops_size() == 0) return Vote(r, v1::READ_ONLY);
    std::string reason = CheckOps(req, now_ms);
    if (!reason.empty()) return Vote(r, v1::NO, std::move(reason));
    if (txns.size() >= config.prepared_max) {
      return Fail(
          {ReplyKind::kPrepare, r},
          absl::ResourceExhaustedError(absl::StrCat(
              txns.size(), " transactions prepared here; --prepared_max=", config.prepared_max)));
    }

    Txn& t = txns[id];
    t.rec.set_txn_id(id);
    t.rec.set_protocol(req.protocol());
    t.rec.set_state(v1::PREPARED);
    t.rec.set_coordinator_id(req.coordinator_id());
    t.rec.set_coordinator_address(req.coordinator_address());
    t.rec.set_participant(req.participant());
    *t.rec.mutable_participants() = req.participants();
    *t.rec.mutable_ops() = req.ops();
    t.rec.set_ops_digest(digest);
    t.rec.set_prepared_unix_ms(now_ms);
    Stage(t);
    t.pending = Submit({Put(kPreparedDb, id, t.rec)},
                       Pending{BatchKind::kPrepare, id, 0, 0, "", {{ReplyKind::kPrepare, r}}});
  }

  // --- transaction transitions ---

  // True when the call was queued or joined because a batch for `t` is in
  // flight; `joins` is the batch kind whose waiters it may join.
  bool DeferIfBusy(Txn& t, std::optional<BatchKind> joins, std::optional<Waiter> w, Call call,
                   const std::string& by) {
    if (t.pending == 0) return false;
    Pending& p = pending.at(t.pending);
    if (joins && p.kind == *joins) {
      if (w) p.waiters.push_back(*w);
    } else {
      t.deferred.push_back(Deferred{call, w ? w->request : 0, by});
    }
    return true;
  }

  void PreCommit(RequestId r, const std::string& id, int64_t now_ms) {
    const Waiter w{ReplyKind::kPreCommit, r};
    auto it = txns.find(id);
    if (it != txns.end()) {
      Txn& t = it->second;
      if (DeferIfBusy(t, BatchKind::kPreCommit, w, Call::kPreCommit, "")) return;
      if (t.rec.state() == v1::PRECOMMITTED)
        return Send(r, absl::OkStatus(), v1::PreCommitResponse());
      v1::PreparedRecord rec = t.rec;
      rec.set_state(v1::PRECOMMITTED);
      t.pending =
          Submit({Put(kPreparedDb, id, rec)}, Pending{BatchKind::kPreCommit, id, 0, 0, "", {w}});
      return;
    }
    std::optional<CachedOutcome> o = FindOutcome(id);
    if (o && o->rec.state() == v1::STATE_COMMITTED) {
      return Send(r, absl::OkStatus(), v1::PreCommitResponse());
    }
    Fail(w, absl::FailedPreconditionError(absl::StrCat(
                "transaction ", id, o ? " was aborted here" : " is not prepared here")));
  }

  // `w` empty: an in-doubt resolution learnt from `by`, nobody to answer.
  void CommitTxn(std::optional<Waiter> w, const std::string& id, int64_t now_ms,
                 const std::string& by) {
    auto it = txns.find(id);
    if (it != txns.end()) {
      Txn& t = it->second;
      if (DeferIfBusy(t, BatchKind::kCommit, w, w ? Call::kCommit : Call::kSettleCommit, by)) {
        return;
      }
      ATOMQ_CHECK(t.durable, "only a durable PREPARED record is committed");
      StartCommit(t, w, now_ms, by);
      return;
    }
    std::optional<CachedOutcome> o = FindOutcome(id);
    if (!o && !w) return;
    if (!o) {
      Log(absl::StrCat("txn ", id,
                       " Commit for a transaction unknown here: answered OK (late duplicate "
                       "after forgetting)"));
      if (w) SendSequences(w->request, {});
      return;
    }
    if (o->rec.state() == v1::STATE_COMMITTED) {
      if (w) SendSequences(w->request, o->rec.sequences());
      return;
    }
    Log(absl::StrCat("txn ", id, " protocol alarm: told to commit by ", w ? "Commit" : by,
                     " but it ABORTED here"));
    if (w) {
      Fail(*w,
           absl::FailedPreconditionError(absl::StrCat("transaction ", id, " was aborted here")));
    }
  }

  static v1::OutcomeRecord DecidedOutcome(const Txn& t, TxnState state, int64_t now_ms) {
    v1::OutcomeRecord o;
    o.set_txn_id(t.rec.txn_id());
    o.set_state(state);
    for (uint64_t s : t.sequences) o.add_sequences(s);
    o.set_decided_unix_ms(now_ms);
    o.set_ops_digest(t.rec.ops_digest());
    return o;
  }

  void StartCommit(Txn& t, std::optional<Waiter> w, int64_t now_ms, const std::string& by) {
    const std::string& id = t.rec.txn_id();
    std::vector<Write> writes;
    std::set<std::string> touched;
    t.sequences.clear();
    for (const v1::Op& op : t.rec.ops()) {
      if (op.has_ack()) {
        Queue& q = queues.at(op.ack().queue());
        writes.push_back(Erase(kMessagesDb, MessageKey(q.rec.id(), op.ack().sequence())));
        t.sequences.push_back(0);
        continue;
      }
      const v1::Enqueue& e = op.enqueue();
      Queue& q = queues.at(e.queue());
      const uint64_t seq = q.rec.next_sequence();
      ATOMQ_CHECK(q.messages.count(seq) == 0 && seq >= q.durable_next_sequence,
                  "a sequence is never reused");
      q.rec.set_next_sequence(seq + 1);
      t.sequences.push_back(seq);
      touched.insert(e.queue());
      v1::MessageRecord m;
      m.set_payload(e.payload());
      *m.mutable_headers() = e.headers();
      m.set_txn_id(id);
      m.set_enqueued_unix_ms(now_ms);
      writes.push_back(Put(kMessagesDb, MessageKey(q.rec.id(), seq), m));
    }
    for (const std::string& name : touched) {
      writes.push_back(Put(kQueuesDb, name, queues.at(name).rec));
    }
    writes.push_back(Erase(kPreparedDb, id));
    t.outcome = DecidedOutcome(t, v1::STATE_COMMITTED, now_ms);
    writes.push_back(Put(kOutcomesDb, id, t.outcome));
    Pending p{BatchKind::kCommit, id, 0, 0, by, {}};
    if (w) p.waiters.push_back(*w);
    t.pending = Submit(std::move(writes), std::move(p));
  }

  void AbortTxn(std::optional<Waiter> w, const std::string& id, int64_t now_ms,
                const std::string& by) {
    auto it = txns.find(id);
    if (it != txns.end()) {
      Txn& t = it->second;
      if (DeferIfBusy(t, BatchKind::kAbort, w, w ? Call::kAbort : Call::kSettleAbort, by)) return;
      ATOMQ_CHECK(t.durable, "only a durable PREPARED record is aborted");
      t.outcome = DecidedOutcome(t, v1::STATE_ABORTED, now_ms);
      Pending p{BatchKind::kAbort, id, 0, 0, by, {}};
      if (w) p.waiters.push_back(*w);
      t.pending = Submit({Erase(kPreparedDb, id), Put(kOutcomesDb, id, t.outcome)}, std::move(p));
      return;
    }
    std::optional<CachedOutcome> o = FindOutcome(id);
    if (o && o->rec.state() == v1::STATE_COMMITTED) {
      Log(absl::StrCat("txn ", id, " protocol alarm: told to abort by ", w ? "Abort" : by,
                       " but it COMMITTED here"));
      if (w) {
        Fail(*w, absl::FailedPreconditionError(
                     absl::StrCat("transaction ", id, " was committed here")));
      }
      return;
    }
    if (!w) return;  // a resolution for a transaction already finished
    if (o) return AnswerAborted(*w, *o);
    AbortUnknown(*w, id, now_ms);
  }

  // An ABORTED outcome, answered once it is durable.
  void AnswerAborted(const Waiter& w, const CachedOutcome& o) {
    if (o.token != 0) {
      pending.at(o.token).waiters.push_back(w);
      return;
    }
    if (w.kind == ReplyKind::kQuery) return SendState(w.request, v1::STATE_ABORTED);
    Send(w.request, absl::OkStatus(), v1::AbortResponse());
  }

  // Presumed abort made durable, so that a Prepare arriving later votes NO.
  void AbortUnknown(const Waiter& w, const std::string& id, int64_t now_ms) {
    v1::OutcomeRecord o;
    o.set_txn_id(id);
    o.set_state(v1::STATE_ABORTED);
    o.set_decided_unix_ms(now_ms);
    uint64_t token =
        Submit({Put(kOutcomesDb, id, o)}, Pending{BatchKind::kAbortUnknown, id, 0, 0, "", {w}});
    RememberOutcome(std::move(o), token);
  }

  void QueryState(RequestId r, const std::string& id, int64_t now_ms) {
    const Waiter w{ReplyKind::kQuery, r};
    auto it = txns.find(id);
    if (it != txns.end()) {
      Txn& t = it->second;
      if (DeferIfBusy(t, std::nullopt, w, Call::kQuery, "")) return;
      return SendState(r, t.rec.state());
    }
    std::optional<CachedOutcome> o = FindOutcome(id);
    if (o && o->rec.state() == v1::STATE_COMMITTED) return SendState(r, v1::STATE_COMMITTED);
    if (o) return AnswerAborted(w, *o);
    AbortUnknown(w, id, now_ms);
  }

  void Replay(std::vector<Deferred> deferred, const std::string& id, int64_t now_ms) {
    for (Deferred& d : deferred) {
      switch (d.call) {
        case Call::kPreCommit:
          PreCommit(d.request, id, now_ms);
          break;
        case Call::kCommit:
          CommitTxn(Waiter{ReplyKind::kCommit, d.request}, id, now_ms, "");
          break;
        case Call::kAbort:
          AbortTxn(Waiter{ReplyKind::kAbort, d.request}, id, now_ms, "");
          break;
        case Call::kQuery:
          QueryState(d.request, id, now_ms);
          break;
        case Call::kSettleCommit:
          CommitTxn(std::nullopt, id, now_ms, d.by);
          break;
        case Call::kSettleAbort:
          AbortTxn(std::nullopt, id, now_ms, d.by);
          break;
      }
    }
  }

  // --- batch completions ---

  void OnPersisted(uint64_t token, const absl::Status& status, int64_t now_ms) {
    auto it = pending.find(token);
    ATOMQ_CHECK(it != pending.end(), "OnPersisted for a batch in flight");
    Pending p = std::move(it->second);
    pending.erase(it);
    switch (p.kind) {
      case BatchKind::kPrepare:
      case BatchKind::kPreCommit:
      case BatchKind::kCommit:
      case BatchKind::kAbort: {
        Txn& t = txns.at(p.key);
        ATOMQ_CHECK(t.pending == token, "one batch in flight per transaction");
        t.pending = 0;
        std::vector<Deferred> deferred = std::move(t.deferred);
        t.deferred.clear();
        if (p.kind == BatchKind::kPrepare) PrepareDone(t, p, status, now_ms);
        if (p.kind == BatchKind::kPreCommit) PreCommitDone(t, p, status);
        if (p.kind == BatchKind::kCommit) CommitDone(t, p, status);
        if (p.kind == BatchKind::kAbort) AbortDone(t, p, status, now_ms);
        Replay(std::move(deferred), p.key, now_ms);
        break;
      }
      case BatchKind::kAbortUnknown:
        AbortUnknownDone(token, p, status);
        break;
      case BatchKind::kCreate:
        CreateDone(p, status);
        break;
      case BatchKind::kDelete:
        DeleteDone(p, status);
        break;
      case BatchKind::kAck:
        AckDone(p, status, now_ms);
        break;
    }
  }

  void PrepareDone(Txn& t, const Pending& p, const absl::Status& status, int64_t now_ms) {
    if (!status.ok()) {
      for (const Waiter& w : p.waiters) {
        Vote(w.request, v1::NO, absl::StrCat("storage: ", status.ToString()));
      }
      Unstage(t, now_ms);
      EraseTxn(p.key);
      return;
    }
    t.durable = true;
    for (const Waiter& w : p.waiters) Vote(w.request, v1::YES);
    t.backoff_ms = std::max<uint32_t>(1, config.resend_initial_ms);
    ArmTimer(t, now_ms + config.in_doubt_after_ms);
  }

  void PreCommitDone(Txn& t, const Pending& p, const absl::Status& status) {
    if (status.ok()) t.rec.set_state(v1::PRECOMMITTED);
    for (const Waiter& w : p.waiters) {
      if (status.ok()) {
        Send(w.request, absl::OkStatus(), v1::PreCommitResponse());
      } else {
        Fail(w, status);
      }
    }
  }

  std::string Summary(const Txn& t, const std::string& by) const {
    return absl::StrCat("(", Plural(t.enqueues, "enqueue"), ", ", Plural(t.acks, "ack"),
                        by.empty() ? "" : "; settled by ", by, ")");
  }

  void CommitDone(Txn& t, const Pending& p, const absl::Status& status) {
    if (!status.ok()) {
      // The assigned sequences stay burnt: later batches may already carry
      // next_sequence past them.
      t.sequences.clear();
      for (const Waiter& w : p.waiters) Fail(w, status);
      return;
    }
    const std::string id = t.rec.txn_id();
    ATOMQ_CHECK(static_cast<int>(t.sequences.size()) == t.rec.ops_size() &&
                    t.outcome.state() == v1::STATE_COMMITTED,
                "a commit in flight carries one sequence per op");
    v1::OutcomeRecord o = std::move(t.outcome);
    for (int i = 0; i < t.rec.ops_size(); ++i) {
      const v1::Op& op = t.rec.ops(i);
      const uint64_t seq = t.sequences[i];
      if (op.has_ack()) {
        Queue& q = queues.at(op.ack().queue());
        auto m = q.messages.find(op.ack().sequence());
        if (m == q.messages.end()) continue;
        ATOMQ_CHECK(m->second.pinned_by == id, "an acked message is pinned by its transaction");
        q.messages.erase(m);
        q.pinned--;
        continue;
      }
      Queue& q = queues.at(op.enqueue().queue());
      ATOMQ_CHECK(seq < q.rec.next_sequence() && q.messages.count(seq) == 0,
                  "a committed message gets a fresh sequence");
      // Visible only now: the batch carrying it is durable.
      q.messages.emplace(seq, Message{});
      q.ready.insert(seq);
      q.staged--;
      q.durable_next_sequence = std::max(q.durable_next_sequence, seq + 1);
    }
    for (const std::string& name : TouchedQueues(t.rec)) queues.at(name).txn_refs--;
    Log(absl::StrCat("txn ", id, " COMMITTED here ", Summary(t, p.settled_by)));
    for (const Waiter& w : p.waiters) SendSequences(w.request, o.sequences());
    EraseTxn(id);
    RememberOutcome(std::move(o), 0);
  }

  void AbortDone(Txn& t, const Pending& p, const absl::Status& status, int64_t now_ms) {
    if (!status.ok()) {
      for (const Waiter& w : p.waiters) Fail(w, status);
      return;
    }
    const std::string id = t.rec.txn_id();
    std::optional<CachedOutcome> prior = FindOutcome(id);
    ATOMQ_CHECK(!prior || prior->rec.state() != v1::STATE_COMMITTED,
                "a committed transaction is never aborted");
    v1::OutcomeRecord o = std::move(t.outcome);
    ATOMQ_CHECK(o.state() == v1::STATE_ABORTED, "an abort in flight writes ABORTED");
    Log(absl::StrCat("txn ", id, " ABORTED here ", Summary(t, p.settled_by)));
    Unstage(t, now_ms);
    EraseTxn(id);
    for (const Waiter& w : p.waiters) Send(w.request, absl::OkStatus(), v1::AbortResponse());
    RememberOutcome(std::move(o), 0);
  }

  void AbortUnknownDone(uint64_t token, const Pending& p, const absl::Status& status) {
    auto it = outcomes.find(p.key);
    ATOMQ_CHECK(it != outcomes.end() && it->second.token == token,
                "an outcome in flight stays cached");
    if (!status.ok()) {
      outcomes.erase(it);
      for (const Waiter& w : p.waiters) Fail(w, status);
      return;
    }
    ATOMQ_CHECK(it->second.rec.state() == v1::STATE_ABORTED, "presumed abort records ABORTED");
    it->second.token = 0;
    Log(absl::StrCat("txn ", p.key, " ABORTED here (never prepared here; presumed abort)"));
    for (const Waiter& w : p.waiters) {
      if (w.kind == ReplyKind::kQuery) {
        SendState(w.request, v1::STATE_ABORTED);
      } else {
        Send(w.request, absl::OkStatus(), v1::AbortResponse());
      }
    }
    EvictOutcomes();
  }

  // --- in doubt ---

  void ArmTimer(Txn& t, int64_t at_ms) {
    timers.erase(t.timer_id);
    t.timer_id = next_timer_id++;
    timers[t.timer_id] = t.rec.txn_id();
    out.timers.push_back(TimerRequest{t.timer_id, at_ms});
  }

  void QueryCoordinator(Txn& t) {
    if (t.rec.coordinator_address().empty()) {
      // Nobody to ask but the peers.
      if (!t.ask_peers) {
        t.ask_peers = true;
        QueryPeers(t);
      }
      return;
    }
    out.queries.push_back(
        OutQuery{t.rec.txn_id(), t.rec.coordinator_id(), t.rec.coordinator_address(), true});
  }

  void QueryPeers(const Txn& t) {
    for (const v1::PeerAddress& p : t.rec.participants()) {
      if (p.participant() == t.rec.participant() || p.address().empty()) continue;
      out.queries.push_back(OutQuery{t.rec.txn_id(), p.participant(), p.address(), false});
    }
  }

  void OnTimer(uint64_t timer_id, int64_t now_ms) {
    auto it = timers.find(timer_id);
    if (it == timers.end()) return;
    const std::string id = it->second;
    timers.erase(it);
    auto t = txns.find(id);
    if (t == txns.end() || t->second.timer_id != timer_id) return;
    Txn& txn = t->second;
    ATOMQ_CHECK(txn.durable, "in doubt only after the YES record is durable");
    txn.timer_id = 0;
    txn.in_doubt = true;
    // A batch in flight (commit, abort) will settle it; only keep watch.
    if (txn.pending == 0) {
      bool peers_already = txn.ask_peers;
      QueryCoordinator(txn);
      if (peers_already) QueryPeers(txn);
    }
    ArmTimer(txn, now_ms + txn.backoff_ms);
    txn.backoff_ms =
        std::min<uint32_t>(std::max(txn.backoff_ms, txn.backoff_ms * 2),
                           std::max<uint32_t>(config.resend_max_ms, config.resend_initial_ms));
  }

  void OnQueryReply(const std::string& id, const std::string& target,
                    const absl::StatusOr<v1::QueryStateResponse>& reply, int64_t now_ms) {
    auto it = txns.find(id);
    if (it == txns.end()) return;  // settled meanwhile
    Txn& t = it->second;
    bool from_peer = false;
    for (const v1::PeerAddress& p : t.rec.participants()) {
      if (p.participant() == target && target != t.rec.participant()) from_peer = true;
    }
    const bool from_coordinator = !from_peer && target == t.rec.coordinator_id();
    if (!from_peer && !from_coordinator) return;
    const std::string by = absl::StrCat(from_peer ? "peer " : "coordinator ", target);
    if (reply.ok() && reply->state() == v1::STATE_COMMITTED) {
      return CommitTxn(std::nullopt, id, now_ms, by);
    }
    if (reply.ok() && reply->state() == v1::STATE_ABORTED) {
      return AbortTxn(std::nullopt, id, now_ms, by);
    }
    if (!from_coordinator) return;  // an uncertain peer: keep asking
    // UNKNOWN and ENDED count as uncertain: presumed abort has the
    // coordinator answer STATE_ABORTED for what it forgot.
    bool ask_peers = !reply.ok();
    if (reply.ok() && reply->state() == v1::PREPARING) {
      ask_peers = ++t.preparing_streak >= kPreparingBeforePeers;
    } else {
      t.preparing_streak = 0;
    }
    if (ask_peers && !t.ask_peers) {
      t.ask_peers = true;
      QueryPeers(t);
    }
  }

  // --- queues ---

  void CreateQueue(RequestId r, const std::string& name, int64_t now_ms) {
    const Waiter w{ReplyKind::kCreate, r};
    absl::Status s = ValidateQueueName(name);
    if (!s.ok()) return Fail(w, s);
    auto it = queues.find(name);
    if (it != queues.end() && it->second.delete_token != 0) {
      return Fail(w, absl::FailedPreconditionError(
                         absl::StrCat("queue \"", name, "\" is being deleted; retry")));
    }
    if (it != queues.end() || creating.count(name) > 0) {
      return Fail(w, absl::AlreadyExistsError(
                         absl::StrCat("queue \"", name, "\" exists on ", config.participant_id)));
    }
    if (queues.size() + creating.size() >= config.queues_max) {
      return Fail(
          w, absl::ResourceExhaustedError(absl::StrCat(
                 queues.size() + creating.size(), " queues; --queues_max=", config.queues_max)));
    }
    v1::QueueRecord rec;
    rec.set_name(name);
    rec.set_id(next_queue_id++);
    rec.set_next_sequence(1);  // 0 means "no sequence" in CommitResponse
    rec.set_created_unix_ms(now_ms);
    v1::MetaRecord meta;
    meta.set_node_id(config.participant_id);
    meta.set_boot_count(config.boot_count);
    meta.set_next_queue_id(next_queue_id);
    uint64_t token = Submit({Put(kQueuesDb, name, rec), Put(kMetaDb, "meta", meta)},
                            Pending{BatchKind::kCreate, name, rec.id(), 0, "", {w}});
    creating.emplace(name, std::make_pair(std::move(rec), token));
  }

  void CreateDone(const Pending& p, const absl::Status& status) {
    auto it = creating.find(p.key);
    ATOMQ_CHECK(it != creating.end(), "a queue being created is tracked");
    v1::QueueRecord rec = std::move(it->second.first);
    creating.erase(it);
    if (!status.ok()) {
      for (const Waiter& w : p.waiters) Fail(w, status);
      return;
    }
    ATOMQ_CHECK(queue_names.count(rec.id()) == 0, "queue ids are unique");
    Queue& q = queues[rec.name()];
    q.rec = rec;
    q.durable_next_sequence = rec.next_sequence();
    queue_names[rec.id()] = rec.name();
    v1::CreateQueueResponse resp;
    *resp.mutable_queue() = Info(q);
    for (const Waiter& w : p.waiters) Send(w.request, absl::OkStatus(), resp);
  }

  void DeleteQueue(RequestId r, const std::string& name, int64_t now_ms) {
    const Waiter w{ReplyKind::kDelete, r};
    absl::Status s = ValidateQueueName(name);
    if (!s.ok()) return Fail(w, s);
    auto it = queues.find(name);
    if (it == queues.end()) return Fail(w, NoQueue(name));
    Queue& q = it->second;
    if (q.delete_token != 0) {
      pending.at(q.delete_token).waiters.push_back(w);
      return;
    }
    if (q.txn_refs > 0) {
      return Fail(w, absl::FailedPreconditionError(absl::StrCat(
                         "queue \"", name, "\" is used by ", Plural(q.txn_refs, "transaction"),
                         " prepared here; retry when they finish")));
    }
    std::vector<Write> writes;
    writes.push_back(Erase(kQueuesDb, name));
    for (const auto& [seq, m] : q.messages)
      writes.push_back(Erase(kMessagesDb, MessageKey(q.rec.id(), seq)));
    q.delete_token =
        Submit(std::move(writes), Pending{BatchKind::kDelete, name, q.rec.id(), 0, "", {w}});
  }

  void DeleteDone(const Pending& p, const absl::Status& status) {
    Queue* q = FindQueueById(p.queue_id);
    ATOMQ_CHECK(q != nullptr && q->delete_token != 0, "a queue being deleted stays until durable");
    if (!status.ok()) {
      q->delete_token = 0;
      for (const Waiter& w : p.waiters) Fail(w, status);
      return;
    }
    ATOMQ_CHECK(q->txn_refs == 0, "no transaction prepared on a deleted queue");
    queue_names.erase(p.queue_id);
    queues.erase(p.key);
    for (const Waiter& w : p.waiters) Send(w.request, absl::OkStatus(), v1::DeleteQueueResponse());
  }

  absl::StatusOr<std::vector<Lease>> Receive(const std::string& name, uint32_t max_messages,
                                             uint32_t lease_ms, int64_t now_ms) {
    absl::Status s = ValidateQueueName(name);
    if (!s.ok()) return s;
    Queue* q = FindQueue(name);
    if (q == nullptr) return NoQueue(name);
    if (max_messages == 0) max_messages = 1;
    if (max_messages > config.receive_max) {
      return absl::InvalidArgumentError(absl::StrCat(
          "max_messages is ", max_messages, "; at most --receive_max=", config.receive_max));
    }
    if (lease_ms == 0) lease_ms = config.lease_ms;
    if (lease_ms > config.lease_ms_max) {
      return absl::InvalidArgumentError(
          absl::StrCat("lease_ms is ", lease_ms, "; at most --lease_ms_max=", config.lease_ms_max));
    }
    ExpireLeases(*q, now_ms);
    std::vector<Lease> leases;
    while (leases.size() < max_messages && !q->ready.empty()) {
      const uint64_t seq = *q->ready.begin();
      q->ready.erase(q->ready.begin());
      Message& m = q->messages.at(seq);
      ATOMQ_CHECK(m.pinned_by.empty() && m.ack_token == 0, "a held message is never delivered");
      m.delivery_count++;
      m.lease_token = absl::StrCat(config.boot_count, "-", next_lease++);
      m.lease_expires_ms = now_ms + lease_ms;
      q->leases.insert({m.lease_expires_ms, seq});
      leases.push_back(
          Lease{name, q->rec.id(), seq, m.delivery_count, m.lease_token, m.lease_expires_ms});
    }
    return leases;
  }

  void Ack(RequestId r, const std::string& name, uint64_t seq, const std::string& token,
           int64_t now_ms) {
    const Waiter w{ReplyKind::kAck, r};
    absl::Status s = ValidateQueueName(name);
    if (!s.ok()) return Fail(w, s);
    Queue* q = FindQueue(name);
    if (q == nullptr) return Fail(w, NoQueue(name));
    const std::string msg = MessageName(name, seq);
    auto it = q->messages.find(seq);
    if (it == q->messages.end()) {
      return Fail(w, absl::FailedPreconditionError(absl::StrCat(
                         "message ", msg, " is not leased (already acked, or never delivered)")));
    }
    Message& m = it->second;
    if (!m.pinned_by.empty()) {
      return Fail(w, absl::FailedPreconditionError(absl::StrCat(
                         "message ", msg, " is held by prepared transaction ", m.pinned_by)));
    }
    if (m.lease_token.empty() || m.lease_token != token) {
      return Fail(w, absl::FailedPreconditionError(absl::StrCat(
                         "lease token \"", token, "\" is not the current lease of ", msg)));
    }
    if (m.ack_token != 0) {
      pending.at(m.ack_token).waiters.push_back(w);
      return;
    }
    if (Expired(m, now_ms)) {
      return Fail(w, absl::FailedPreconditionError(absl::StrCat("lease on ", msg, " expired at ",
                                                                m.lease_expires_ms, " ms")));
    }
    Detach(*q, seq, m);
    m.ack_token = Submit({Erase(kMessagesDb, MessageKey(q->rec.id(), seq))},
                         Pending{BatchKind::kAck, name, q->rec.id(), seq, "", {w}});
  }

  void AckDone(const Pending& p, const absl::Status& status, int64_t now_ms) {
    Queue* q = FindQueueById(p.queue_id);
    auto it = q ? q->messages.find(p.sequence) : std::map<uint64_t, Message>::iterator();
    if (q != nullptr && it != q->messages.end()) {
      ATOMQ_CHECK(it->second.ack_token != 0, "an acked message is held until durable");
      it->second.ack_token = 0;
      if (status.ok()) {
        q->messages.erase(it);
      } else {
        Restore(*q, p.sequence, it->second, now_ms);
      }
    }
    for (const Waiter& w : p.waiters) {
      if (status.ok()) {
        Send(w.request, absl::OkStatus(), v1::AckResponse());
      } else {
        Fail(w, status);
      }
    }
  }

  // --- recovery and listing ---

  void Recover(RecoveredState state, int64_t now_ms) {
    ATOMQ_CHECK(!recovered, "Recover() runs once");
    recovered = true;
    if (state.meta) next_queue_id = std::max<uint64_t>(1, state.meta->next_queue_id());
    for (v1::QueueRecord& rec : state.queues) {
      ATOMQ_CHECK(queue_names.count(rec.id()) == 0, "queue ids are unique");
      next_queue_id = std::max(next_queue_id, rec.id() + 1);
      queue_names[rec.id()] = rec.name();
      Queue& q = queues[rec.name()];
      if (rec.next_sequence() == 0) rec.set_next_sequence(1);
      q.rec = std::move(rec);
    }
    for (const auto& [queue_id, seq] : state.messages) {
      Queue* q = FindQueueById(queue_id);
      if (q == nullptr) continue;  // no queue record: unreachable, and erased with it
      // Guards "never reused" even against a queue record older than its messages.
      if (seq >= q->rec.next_sequence()) q->rec.set_next_sequence(seq + 1);
      q->messages.emplace(seq, Message{});
      q->ready.insert(seq);
    }
    for (auto& [name, q] : queues) q.durable_next_sequence = q.rec.next_sequence();
    for (v1::PreparedRecord& rec : state.prepared) {
      const std::string id = rec.txn_id();
      ATOMQ_CHECK(txns.count(id) == 0, "one prepared record per transaction");
      Txn& t = txns[id];
      t.rec = std::move(rec);
      t.durable = true;
      t.in_doubt = true;
      Stage(t);
      t.backoff_ms = std::max<uint32_t>(1, config.resend_initial_ms);
      ArmTimer(t, now_ms);
    }
  }

  std::vector<v1::QueueInfo> ListQueues() const {
    std::vector<v1::QueueInfo> infos;
    for (const auto& [name, q] : queues) {
      if (q.delete_token == 0) infos.push_back(Info(q));
    }
    return infos;
  }

  std::vector<v1::ParticipantTxnInfo> ListTransactions() const {
    std::vector<v1::ParticipantTxnInfo> infos;
    for (const auto& [id, t] : txns) {
      if (!t.durable) continue;
      v1::ParticipantTxnInfo info;
      info.set_txn_id(id);
      info.set_protocol(t.rec.protocol());
      info.set_state(t.rec.state());
      info.set_coordinator_id(t.rec.coordinator_id());
      info.set_coordinator_address(t.rec.coordinator_address());
      info.set_prepared_unix_ms(t.rec.prepared_unix_ms());
      *info.mutable_participants() = t.rec.participants();
      *info.mutable_ops() = t.rec.ops();
      info.set_in_doubt(t.in_doubt);
      infos.push_back(std::move(info));
    }
    return infos;
  }

  absl::Status ValidateId(const Waiter& w, const std::string& id) {
    absl::Status s = ValidateTxnId(id);
    if (!s.ok()) Fail(w, s);
    return s;
  }
};

ParticipantCore::ParticipantCore(Config config, const DurableView* view)
    : impl_(std::make_unique<Impl>(std::move(config), view)) {}

ParticipantCore::~ParticipantCore() = default;

void ParticipantCore::Recover(RecoveredState state, int64_t now_ms) {
  impl_->Recover(std::move(state), now_ms);
}

void ParticipantCore::Prepare(RequestId request, const v1::PrepareRequest& req, int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->Prepare(request, req, now_ms);
}

void ParticipantCore::PreCommit(RequestId request, const std::string& txn_id, int64_t now_ms) {
  impl_->RequireRecovered();
  if (!impl_->ValidateId({ReplyKind::kPreCommit, request}, txn_id).ok()) return;
  impl_->PreCommit(request, txn_id, now_ms);
}

void ParticipantCore::Commit(RequestId request, const std::string& txn_id, int64_t now_ms) {
  impl_->RequireRecovered();
  const Waiter w{ReplyKind::kCommit, request};
  if (!impl_->ValidateId(w, txn_id).ok()) return;
  impl_->CommitTxn(w, txn_id, now_ms, "");
}

void ParticipantCore::Abort(RequestId request, const std::string& txn_id, int64_t now_ms) {
  impl_->RequireRecovered();
  const Waiter w{ReplyKind::kAbort, request};
  if (!impl_->ValidateId(w, txn_id).ok()) return;
  impl_->AbortTxn(w, txn_id, now_ms, "");
}

void ParticipantCore::QueryState(RequestId request, const std::string& txn_id, int64_t now_ms) {
  impl_->RequireRecovered();
  if (!impl_->ValidateId({ReplyKind::kQuery, request}, txn_id).ok()) return;
  impl_->QueryState(request, txn_id, now_ms);
}

void ParticipantCore::OnQueryReply(const std::string& txn_id, const std::string& target,
                                   const absl::StatusOr<v1::QueryStateResponse>& reply,
                                   int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->OnQueryReply(txn_id, target, reply, now_ms);
}

void ParticipantCore::OnTimer(uint64_t timer_id, int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->OnTimer(timer_id, now_ms);
}

void ParticipantCore::OnPersisted(uint64_t token, const absl::Status& status, int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->OnPersisted(token, status, now_ms);
}

void ParticipantCore::CreateQueue(RequestId request, const std::string& name, int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->CreateQueue(request, name, now_ms);
}

void ParticipantCore::DeleteQueue(RequestId request, const std::string& name, int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->DeleteQueue(request, name, now_ms);
}

std::vector<v1::QueueInfo> ParticipantCore::ListQueues() const { return impl_->ListQueues(); }

absl::StatusOr<std::vector<Lease>> ParticipantCore::Receive(const std::string& queue,
                                                            uint32_t max_messages,
                                                            uint32_t lease_ms, int64_t now_ms) {
  impl_->RequireRecovered();
  return impl_->Receive(queue, max_messages, lease_ms, now_ms);
}

void ParticipantCore::Ack(RequestId request, const std::string& queue, uint64_t sequence,
                          const std::string& lease_token, int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->Ack(request, queue, sequence, lease_token, now_ms);
}

std::vector<v1::ParticipantTxnInfo> ParticipantCore::ListTransactions() const {
  return impl_->ListTransactions();
}

Output ParticipantCore::TakeOutput() { return std::exchange(impl_->out, Output{}); }

}  // namespace atomq::participant
