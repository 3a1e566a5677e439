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

// A message in memory sits in exactly one of: `ready`, `leases` (leased,
// neither pinned nor being acked), or neither (pinned or being acked).
// The backlog on disk: `on_disk` visible messages are in storage only, none
// below `disk_from`, and every visible message below `disk_from` is in
// `messages`. While on_disk > 0, ready messages in memory precede them all.
struct Queue {
  v1::QueueRecord rec;                 // next_sequence: the next one to assign
  uint64_t durable_next_sequence = 1;  // what the disk says; the visible version
  std::map<uint64_t, Message> messages;
  std::set<uint64_t> ready;
  uint64_t on_disk = 0;
  uint64_t disk_from = 0;
  std::set<std::pair<int64_t, uint64_t>> leases;  // (expires_ms, sequence)
  uint64_t pinned = 0;                            // messages pinned by prepared transactions
  uint64_t staged = 0;                            // enqueues of prepared transactions
  uint32_t txn_refs = 0;                          // prepared transactions touching the queue
  uint64_t delete_token = 0;                      // a DeleteQueue in flight
};

enum class ReplyKind {
  kPrepare,
  kPreCommit,
  kCommit,
  kAbort,
  kQuery,
  kCreate,
  kDelete,
  kAck,
  kPromise,
  kAccept,
  kNack,
  kSend
};

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
  kOnePhase,  // a one-phase Prepare's commit: messages, acks and COMMITTED outcome in one batch
  kCreate,
  kDelete,
  kAck,
  kMove,  // dead-lettering: a message to its queue's dead-letter queue
  kSend,  // Queue.Send: one message outside any transaction
  kBallot,  // 3PC termination: a PREPARED record with a new promised/accepted/proposed ballot
  kHeuristic,  // a heuristic outcome that learnt of a conflicting one (Resolve)
  kForgettable,  // a kForgettableDb entry (Forget)
  kCollect       // kForgettableDb entries and their outcomes erased (CollectOutcomes)
};

// A batch handed to the adapter and not yet reported.
struct Pending {
  BatchKind kind;
  std::string key;  // txn id or queue name
  uint64_t queue_id = 0;
  uint64_t sequence = 0;
  std::string settled_by;  // in-doubt resolution: who told us
  std::vector<Waiter> waiters;
  uint64_t lead_ballot = 0;  // kBallot: a termination round this node leads, begun once durable
};

// A request on a transaction that arrived while a batch for it was in flight;
// replayed once that batch is reported, so each transaction has at most one
// batch in flight and every answer reflects durable state.
enum class Call {
  kPreCommit,
  kCommit,
  kAbort,
  kQuery,
  kSettleCommit,
  kSettleAbort,
  kPromise,
  kAccept
};
struct Deferred {
  Call call;
  RequestId request = 0;
  std::string by;
  uint64_t ballot = 0;                          // kPromise, kAccept
  v1::TxnState value = v1::TXN_STATE_UNSPECIFIED;  // kAccept
};

// A 3PC termination round this node leads (memory only; its ballot is on disk
// as proposed_ballot before any message carries it).
struct Round {
  uint64_t ballot = 0;  // 0: none running
  bool accepting = false;
  v1::TxnState value = v1::TXN_STATE_UNSPECIFIED;  // proposed in phase 2
  std::set<std::string> promised;
  std::set<std::string> accepted;
  bool has_best = false;  // some promise reported an accepted value
  uint64_t best_ballot = 0;
  v1::TxnState best_value = v1::TXN_STATE_UNSPECIFIED;
  uint64_t highest_seen = 0;  // highest ballot any acceptor reported
  uint32_t awaiting = 0;      // Promise/Accept messages sent, not answered yet
};

struct Txn {
  v1::PreparedRecord rec;
  // Committed by a one-phase Prepare: in `txns` only while its one batch is
  // in flight; `rec` is never written (no PREPARED, never in doubt).
  bool one_phase = false;
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
  // 3PC termination.
  Round round;
  v1::PreparedRecord writing;  // what the kBallot batch in flight writes
  // Dueling leaders never finish: a node that promised another leader's
  // ballot, or runs a round of its own, lets it work for resend_max_ms.
  int64_t round_started_ms = 0;
  int64_t foreign_ballot_ms = INT64_MIN / 2;
};

struct CachedOutcome {
  v1::OutcomeRecord rec;
  uint64_t token = 0;  // nonzero: the record is not durable yet
};

// Coordinator answers of PREPARING in a row before peers are asked too.
constexpr uint32_t kPreparingBeforePeers = 3;

}  // namespace

struct ParticipantCore::Impl {
  Impl(Config c, const DurableView* v) : config(std::move(c)), view(v) {
    ATOMQ_CHECK(config.queue_memory_window > 0, "a queue keeps at least one message in memory");
  }

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
      case ReplyKind::kPromise:
        return v1::PromiseResponse();
      case ReplyKind::kAccept:
        return v1::AcceptResponse();
      case ReplyKind::kNack:
        return v1::NackResponse();
      case ReplyKind::kSend:
        return v1::SendResponse();
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

  void SendState(RequestId r, TxnState state, bool heuristic = false) {
    v1::QueryStateResponse resp;
    resp.set_state(state);
    resp.set_heuristic(heuristic);
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

  // --- outcome collection ---
  // A forgotten id is answered exactly as one never heard of. That is safe
  // because an outcome goes only after the coordinator's ENDED is durable
  // (every participant acknowledged the outcome, so none is in doubt and the
  // coordinator decided) and retention_ms after that, longer than a message
  // to this node stays in flight:
  // - QueryState, Promise and Accept come from a participant in doubt or a
  //   termination round, which ENDED rules out. Were one to come, presumed
  //   abort would record ABORTED for an id that may have committed: that is
  //   why nothing goes before the END notice.
  // - Commit comes only until this node acknowledged it; a late copy is
  //   answered OK with no sequences (CommitTxn), which the coordinator ignores
  //   once acknowledged, so it never fails the coordinator. Abort comes only
  //   for aborted ids; a late copy records ABORTED again and is answered OK.
  // - Prepare after the window is a stale copy or a client's retry of
  //   Execute with an id the coordinator forgot too: a new transaction, so a
  //   retry is idempotent only within --retention_ms (README).
  uint64_t forget_token = 0;  // the latest kForgettable batch (Forget appends while unsent)
  std::set<std::string> collecting;      // kForgettableDb keys a kCollect batch erases
  std::set<std::string> collecting_ids;  // outcomes a kCollect batch erases
  std::map<uint64_t, std::pair<std::vector<std::string>, std::vector<std::string>>>
      collect_batches;  // token -> (keys, txn ids)
  uint64_t outcomes_erased = 0;

  static std::string ForgettableKey(int64_t at_ms, const std::string& id) {
    return EncodeU64(static_cast<uint64_t>(std::max<int64_t>(0, at_ms))) + id;
  }

  void Forget(const std::string& id, int64_t now_ms) {
    if (!ValidateTxnId(id).ok() || txns.count(id) > 0 || heuristics.count(id) > 0) return;
    std::optional<CachedOutcome> o = FindOutcome(id);
    if (!o || o->token != 0 || o->rec.has_heuristic()) return;
    Write w{kForgettableDb, ForgettableKey(now_ms, id), "", false};
    // Notices that arrive together (one Batch call) share one batch.
    for (auto it = out.persist.rbegin(); it != out.persist.rend(); ++it) {
      if (it->token == forget_token) {
        it->writes.push_back(std::move(w));
        return;
      }
    }
    forget_token = Submit({std::move(w)}, Pending{BatchKind::kForgettable, id, 0, 0, "", {}});
    out.persist.back().sync = false;  // forgetting is never urgent
  }

  // Whether the outcome of `id` may go with a forgettable entry made at `at_ms`.
  bool Collectable(const std::string& id, int64_t at_ms) const {
    if (txns.count(id) > 0 || heuristics.count(id) > 0 || collecting_ids.count(id) > 0) {
      return false;
    }
    std::optional<CachedOutcome> o = FindOutcome(id);
    // A later outcome (the id ran again after an earlier collection) keeps
    // its own: only its own END notice lets it go.
    return o && o->token == 0 && !o->rec.has_heuristic() && o->rec.decided_unix_ms() <= at_ms;
  }

  size_t CollectOutcomes(const std::vector<std::string>& keys, int64_t now_ms) {
    const int64_t cutoff = now_ms - static_cast<int64_t>(config.retention_ms);
    std::vector<Write> writes;
    std::vector<std::string> taken, ids;
    for (const std::string& key : keys) {
      if (key.size() > 8 && static_cast<int64_t>(DecodeU64(key)) >= cutoff) break;
      if (!collecting.insert(key).second) continue;  // its batch is in flight
      taken.push_back(key);
      writes.push_back(Erase(kForgettableDb, key));
      if (key.size() <= 8) continue;  // not a key Forget writes: drop it
      const std::string id = key.substr(8);
      if (!Collectable(id, static_cast<int64_t>(DecodeU64(key)))) continue;
      writes.push_back(Erase(kOutcomesDb, id));
      collecting_ids.insert(id);
      ids.push_back(id);
      // Until the erase is durable, a question reads the outcome from disk.
      outcomes.erase(id);
    }
    if (writes.empty()) return 0;
    SubmitCollect(std::move(writes), taken, ids);
    CompactOutcomeOrder();
    return taken.size();
  }

  // Collection takes ids out of the cache anywhere in its FIFO: drop those
  // now and then, so that the FIFO stays within a multiple of the cache.
  void CompactOutcomeOrder() {
    if (outcome_order.size() <= 2 * outcomes.size() + 1024) return;
    std::set<std::string> seen;
    std::deque<std::string> kept;
    for (auto it = outcome_order.rbegin(); it != outcome_order.rend(); ++it) {
      if (outcomes.count(*it) > 0 && seen.insert(*it).second) kept.push_front(*it);
    }
    outcome_order.swap(kept);
  }

  void SubmitCollect(std::vector<Write> writes, std::vector<std::string> keys,
                     std::vector<std::string> ids) {
    const uint64_t token =
        Submit(std::move(writes), Pending{BatchKind::kCollect, "", 0, 0, "", {}});
    out.persist.back().sync = false;
    collect_batches[token] = {std::move(keys), std::move(ids)};
  }

  void CollectDone(uint64_t token, const absl::Status& status) {
    auto it = collect_batches.find(token);
    ATOMQ_CHECK(it != collect_batches.end(), "a collection batch is remembered");
    for (const std::string& k : it->second.first) collecting.erase(k);
    for (const std::string& id : it->second.second) collecting_ids.erase(id);
    // On failure the entries stay and the next collection tries again.
    if (status.ok()) {
      outcomes_erased += it->second.second.size();
    } else {
      Log(absl::StrCat("erasing ", Plural(it->second.second.size(), "outcome"),
                       " failed: ", status.ToString()));
    }
    collect_batches.erase(it);
  }

  // TEST ONLY ("forget-before-end"): the bug the simulator's checker must
  // catch, forgetting a commit with nobody's leave.
  void PlantForget(const std::string& id) {
    if (config.plant != Plant::kForgetBeforeEnd) return;
    outcomes.erase(id);
    collecting_ids.insert(id);
    SubmitCollect({Erase(kOutcomesDb, id)}, {}, {id});
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
  void Restore(Queue& q, uint64_t seq, Message& m, int64_t now_ms) {
    ATOMQ_CHECK(m.pinned_by.empty() && m.ack_token == 0, "restoring a held message");
    if (!m.lease_token.empty() && !Expired(m, now_ms)) {
      q.leases.insert({m.lease_expires_ms, seq});
    } else if (q.on_disk > 0 && seq >= q.disk_from && m.delivery_count == 0) {
      // Pinned since recovery, never delivered: back to the backlog on disk,
      // so that delivery stays in sequence order.
      q.messages.erase(seq);
      q.on_disk++;
      Woke(q);
    } else {
      m.lease_token.clear();
      q.ready.insert(seq);
      Woke(q);
    }
  }

  // A message a durable batch made visible (commit, Send, dead-lettering).
  // In memory while the queue's backlog is all there and the window has
  // room; else on disk only, after the rest of the backlog.
  void Visible(Queue& q, uint64_t seq) {
    ATOMQ_CHECK(seq >= q.durable_next_sequence && q.messages.count(seq) == 0,
                "a queue's sequences become durable in ascending order");
    q.durable_next_sequence = seq + 1;
    if (q.on_disk == 0 && q.ready.size() < config.queue_memory_window) {
      q.messages.emplace(seq, Message{});
      q.ready.insert(seq);
    } else {
      if (q.on_disk == 0) q.disk_from = seq;
      ATOMQ_CHECK(seq >= q.disk_from, "the backlog on disk grows at its end");
      q.on_disk++;
    }
    Woke(q);
  }

  // Stored messages of `q` in [from, to), to capped at what is reported
  // durable (a later batch may be in storage already, not yet reported).
  absl::StatusOr<std::vector<uint64_t>> ScanDisk(const Queue& q, uint64_t from, uint64_t to,
                                                 uint32_t limit) const {
    ATOMQ_CHECK(view != nullptr, "a backlog on disk is read through the DurableView");
    return view->ScanMessages(q.rec.id(), from, std::min(to, q.durable_next_sequence), limit);
  }

  // Reads the next part of the backlog on disk into memory, up to the window.
  absl::Status PageIn(Queue& q) {
    const uint32_t window = config.queue_memory_window;
    const uint32_t limit =
        q.ready.size() < window ? window - static_cast<uint32_t>(q.ready.size()) : 1;
    absl::StatusOr<std::vector<uint64_t>> seqs =
        ScanDisk(q, q.disk_from, q.durable_next_sequence, limit);
    if (!seqs.ok()) {
      Log(absl::StrCat("queue ", q.rec.name(), ": reading its backlog from storage failed: ",
                       seqs.status().ToString()));
      return seqs.status();
    }
    for (uint64_t seq : *seqs) {
      ATOMQ_CHECK(seq >= q.disk_from, "a backlog scan reads ascending from where it stopped");
      if (!q.messages.emplace(seq, Message{}).second) continue;  // pinned since recovery
      ATOMQ_CHECK(q.on_disk > 0, "the backlog on disk holds what it counts");
      q.on_disk--;
      q.ready.insert(seq);
    }
    const bool whole = seqs->size() < limit;
    q.disk_from = whole ? q.durable_next_sequence : seqs->back() + 1;
    ATOMQ_CHECK(!whole || q.on_disk == 0, "a whole backlog scan finds every message it counts");
    return absl::OkStatus();
  }

  // Erases of the backlog on disk, read in chunks of the window.
  absl::Status EraseBacklog(const Queue& q, std::vector<Write>* writes) const {
    const uint32_t chunk = std::max<uint32_t>(1, config.queue_memory_window);
    uint64_t from = q.disk_from, found = 0;
    for (;;) {
      absl::StatusOr<std::vector<uint64_t>> seqs =
          ScanDisk(q, from, q.durable_next_sequence, chunk);
      if (!seqs.ok()) return seqs.status();
      for (uint64_t seq : *seqs) {
        if (q.messages.count(seq) > 0) continue;  // erased with those in memory
        writes->push_back(Erase(kMessagesDb, MessageKey(q.rec.id(), seq)));
        found++;
      }
      if (seqs->size() < chunk) break;
      from = seqs->back() + 1;
    }
    ATOMQ_CHECK(found == q.on_disk, "the backlog on disk holds what it counts");
    return absl::OkStatus();
  }

  // Expired leases: back to ready, or to the dead-letter queue once the
  // message reached max_deliveries.
  void ExpireLeases(Queue& q, int64_t now_ms) {
    while (!q.leases.empty() && q.leases.begin()->first <= now_ms) {
      uint64_t seq = q.leases.begin()->second;
      q.leases.erase(q.leases.begin());
      Message& m = q.messages.at(seq);
      m.lease_token.clear();
      if (MaxedOut(q, m) && StartMove(q, seq, "max-deliveries", std::nullopt, now_ms)) continue;
      q.ready.insert(seq);
      Woke(q);
    }
  }

  v1::QueueInfo Info(const Queue& q) const {
    v1::QueueInfo info;
    info.set_name(q.rec.name());
    info.set_version(q.durable_next_sequence);
    info.set_ready(q.ready.size() + q.on_disk);
    info.set_leased(q.messages.size() - q.ready.size() - q.pinned);
    info.set_pending_in_txn(q.staged + q.pinned);
    info.set_created_unix_ms(q.rec.created_unix_ms());
    info.set_max_deliveries(q.rec.max_deliveries());
    info.set_dead_letter_queue(q.rec.dead_letter_queue());
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
      if (m == q->messages.end() && q->on_disk > 0 && a.sequence() >= q->disk_from &&
          a.sequence() < q->durable_next_sequence) {
        return absl::StrCat("message ", msg, " is not leased (stale lease token)");
      }
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
      if (t.one_phase) return Vote(r, v1::NO, OnePhaseOnly(id));
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
      if (o->rec.one_phase()) return Vote(r, v1::NO, OnePhaseOnly(id));
      if (o->rec.ops_digest() != digest) {
        return Vote(r, v1::NO, absl::StrCat("transaction ", id, " committed here with other ops"));
      }
      return Vote(r, v1::YES);
    }
    // Under 3PC a participant with nothing to change still prepares: it is
    // an acceptor of termination rounds, and one that kept nothing would
    // answer a Promise with a presumed ABORT.
    if (req.ops_size() == 0 && req.protocol() != v1::THREE_PC) return Vote(r, v1::READ_ONLY);
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

  // --- one-phase commit (PrepareRequest.one_phase) ---
  // This node is the transaction's single participant, so its own COMMITTED
  // outcome is the decision (DESIGN.md section 3, "One participant"):
  // - YES is released only once one batch with the messages, the acks and
  //   the COMMITTED outcome (marked one_phase) is durable; it carries the
  //   sequences. Nothing is ever PREPARED: never in doubt here, so this node
  //   never asks the coordinator, which keeps no record before its lazy
  //   ENDED and would presume abort.
  // - NO is released only once an ABORTED outcome is durable: a duplicated
  //   or delayed copy of the Prepare, arriving after the coordinator told
  //   the client ABORTED, must find the id settled and never commit.
  // - A failed write answers an error, not a NO: nothing is kept, and the
  //   coordinator settles the id with an Abort (ABORTED unless committed).
  // - A retry with the same id and ops (a coordinator crash before ENDED)
  //   gets the first answer: the same sequences, or NO. Other ops, or a
  //   two-phase Prepare, get a NO that writes nothing: the id is settled.

  static std::string OnePhaseOnly(const std::string& id) {
    return absl::StrCat("transaction ", id,
                        " is committed (or being committed) here in one phase; only a one-phase "
                        "Prepare with the same ops gets its outcome");
  }

  void VoteCommitted(RequestId r, const google::protobuf::RepeatedField<uint64_t>& seqs) {
    v1::PrepareResponse resp;
    resp.set_vote(v1::YES);
    *resp.mutable_sequences() = seqs;
    Send(r, absl::OkStatus(), resp);
  }

  void PrepareOnePhase(RequestId r, const v1::PrepareRequest& req, int64_t now_ms) {
    const Waiter w{ReplyKind::kPrepare, r};
    absl::Status s = ValidatePrepare(req);
    if (s.ok() && req.use_staged()) {
      s = absl::InvalidArgumentError(
          "one_phase with use_staged: a one-phase Prepare carries its ops");
    }
    if (s.ok() && req.participants_size() > 1) {
      s = absl::InvalidArgumentError(absl::StrCat("one_phase with ", req.participants_size(),
                                                  " participants; a one-phase commit has one"));
    }
    if (!s.ok()) return Fail(w, s);
    const std::string& id = req.txn_id();
    DropStaged(id, now_ms, "a Prepare with explicit ops came for the id");
    const uint64_t digest = OpsDigest(req.ops());
    auto it = txns.find(id);
    if (it != txns.end()) {
      Txn& t = it->second;
      if (t.one_phase && t.rec.ops_digest() == digest) {
        Pending& p = pending.at(t.pending);
        ATOMQ_CHECK(p.kind == BatchKind::kOnePhase,
                    "a one-phase transaction is kept only while its batch is in flight");
        p.waiters.push_back(w);  // a duplicate gets the same answer, once durable
        return;
      }
      // Prepared by an earlier two-phase attempt with this id (its
      // coordinator forgot it undecided), or other ops committing in one
      // phase: that transaction's own outcome settles the id.
      return Vote(r, v1::NO,
                  absl::StrCat("transaction ", id,
                               t.one_phase ? " is being committed here with other ops"
                                           : " is prepared here (two-phase); it cannot commit "
                                             "in one phase"));
    }
    if (std::optional<CachedOutcome> o = FindOutcome(id)) {
      if (o->rec.state() == v1::STATE_ABORTED) {
        if (o->token != 0) return pending.at(o->token).waiters.push_back(w);
        return Vote(r, v1::NO, "already aborted here");
      }
      if (!o->rec.one_phase() || o->rec.ops_digest() != digest) {
        return Vote(r, v1::NO,
                    absl::StrCat("transaction ", id, " committed here with other ops",
                                 o->rec.one_phase() ? "" : " (two-phase)"));
      }
      ATOMQ_CHECK(o->token == 0, "a committed outcome is remembered once durable");
      return VoteCommitted(r, o->rec.sequences());
    }
    if (req.ops_size() == 0) return Vote(r, v1::READ_ONLY);  // nothing to keep or refuse
    std::string reason = CheckOps(req, now_ms);
    if (!reason.empty()) return OnePhaseNo(w, id, digest, std::move(reason), now_ms);
    if (txns.size() >= config.prepared_max) {
      return Fail(w, absl::ResourceExhaustedError(absl::StrCat(
                         txns.size(), " transactions prepared here; --prepared_max=",
                         config.prepared_max)));
    }
    Txn& t = txns[id];
    t.one_phase = true;
    t.rec.set_txn_id(id);
    t.rec.set_protocol(req.protocol());
    t.rec.set_state(v1::PREPARED);  // memory only: every call on the id waits for the batch
    t.rec.set_coordinator_id(req.coordinator_id());
    t.rec.set_coordinator_address(req.coordinator_address());
    t.rec.set_participant(req.participant());
    *t.rec.mutable_participants() = req.participants();
    *t.rec.mutable_ops() = req.ops();
    t.rec.set_ops_digest(digest);
    t.rec.set_prepared_unix_ms(now_ms);
    Stage(t);
    StartCommit(t, w, now_ms, "a one-phase Prepare");
    ATOMQ_CHECK(t.pending != 0 && pending.at(t.pending).kind == BatchKind::kOnePhase,
                "a one-phase commit is one batch in flight");
  }

  // A one-phase NO, recorded before it is told (see above).
  void OnePhaseNo(const Waiter& w, const std::string& id, uint64_t digest, std::string reason,
                  int64_t now_ms) {
    v1::OutcomeRecord o;
    o.set_txn_id(id);
    o.set_state(v1::STATE_ABORTED);
    o.set_decided_unix_ms(now_ms);
    o.set_ops_digest(digest);
    o.set_one_phase(true);
    const uint64_t token = Submit({Put(kOutcomesDb, id, o)},
                                  Pending{BatchKind::kAbortUnknown, id, 0, 0, reason, {w}});
    RememberOutcome(std::move(o), token);
  }

  void OnePhaseDone(Txn& t, const Pending& p, const absl::Status& status, int64_t now_ms) {
    const std::string id = t.rec.txn_id();
    if (!status.ok()) {
      // Nothing is on disk. The assigned sequences stay burnt (as in CommitDone).
      t.sequences.clear();
      Unstage(t, now_ms);
      EraseTxn(id);
      Log(absl::StrCat("txn ", id, " one-phase commit not written: ", status.ToString()));
      for (const Waiter& w : p.waiters) {
        Fail(w, absl::Status(status.code(),
                             absl::StrCat("transaction ", id, ": the one-phase commit was not "
                                          "written, nothing changed here: ",
                                          status.message())));
      }
      return;
    }
    ATOMQ_CHECK(t.outcome.one_phase() && t.outcome.state() == v1::STATE_COMMITTED,
                "a one-phase batch writes a one-phase COMMITTED outcome");
    const google::protobuf::RepeatedField<uint64_t> seqs = t.outcome.sequences();
    Pending applied = p;
    applied.waiters.clear();
    CommitDone(t, applied, status);  // applies it and forgets `t`
    for (const Waiter& w : p.waiters) VoteCommitted(w.request, seqs);
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
      const auto [accepted_ballot, accepted_value] = AcceptedOf(t.rec);
      if (accepted_ballot == 0 && accepted_value == v1::STATE_COMMITTED)
        return Send(r, absl::OkStatus(), v1::PreCommitResponse());
      // PreCommit is ballot 0's accept of COMMIT: a promise of a higher
      // ballot (a termination round) refuses it.
      if (t.rec.promised_ballot() > 0) {
        return Fail(w, absl::FailedPreconditionError(absl::StrCat(
                           "transaction ", id, ": a termination round holds ballot ",
                           t.rec.promised_ballot(), " here; PreCommit (ballot 0) refused")));
      }
      v1::PreparedRecord rec = t.rec;
      rec.set_state(v1::PRECOMMITTED);
      rec.set_accepted_ballot(0);
      rec.set_accepted_value(v1::STATE_COMMITTED);
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
    if (o->rec.has_heuristic()) {
      HeuristicMixed(*o, v1::STATE_COMMITTED, w ? "a Commit (coordinator or peer)" : by, now_ms);
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
    o.set_one_phase(t.one_phase);
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
    if (!t.one_phase) writes.push_back(Erase(kPreparedDb, id));  // one phase wrote no PREPARED
    t.outcome = DecidedOutcome(t, v1::STATE_COMMITTED, now_ms);
    writes.push_back(Put(kOutcomesDb, id, t.outcome));
    Pending p{t.one_phase ? BatchKind::kOnePhase : BatchKind::kCommit, id, 0, 0, by, {}};
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
      if (o->rec.has_heuristic()) {
        HeuristicMixed(*o, v1::STATE_ABORTED, w ? "an Abort (coordinator or peer)" : by, now_ms);
      }
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
    if (w.kind == ReplyKind::kQuery) {
      return SendState(w.request, v1::STATE_ABORTED, o.rec.has_heuristic());
    }
    if (w.kind == ReplyKind::kPromise || w.kind == ReplyKind::kAccept) {
      return SendDecided(w, v1::STATE_ABORTED);
    }
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
    if (o && o->rec.state() == v1::STATE_COMMITTED) {
      return SendState(r, v1::STATE_COMMITTED, o->rec.has_heuristic());
    }
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
        case Call::kPromise:
          Promise(d.request, id, d.ballot, now_ms);
          break;
        case Call::kAccept:
          Accept(d.request, id, d.ballot, d.value, now_ms);
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
      case BatchKind::kAbort:
      case BatchKind::kBallot:
      case BatchKind::kOnePhase: {
        Txn& t = txns.at(p.key);
        ATOMQ_CHECK(t.pending == token, "one batch in flight per transaction");
        t.pending = 0;
        std::vector<Deferred> deferred = std::move(t.deferred);
        t.deferred.clear();
        if (p.kind == BatchKind::kPrepare) PrepareDone(t, p, status, now_ms);
        if (p.kind == BatchKind::kPreCommit) PreCommitDone(t, p, status);
        if (p.kind == BatchKind::kCommit) CommitDone(t, p, status);
        if (p.kind == BatchKind::kAbort) AbortDone(t, p, status, now_ms);
        if (p.kind == BatchKind::kBallot) BallotDone(t, p, status, now_ms);
        if (p.kind == BatchKind::kOnePhase) OnePhaseDone(t, p, status, now_ms);
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
      case BatchKind::kMove:
        MoveDone(token, status, now_ms);
        break;
      case BatchKind::kSend:
        SendDone(token, status);
        break;
      case BatchKind::kHeuristic:
        HeuristicDone(token, p, status);
        break;
      case BatchKind::kForgettable:
        if (!status.ok()) {
          Log(absl::StrCat("END notices (txn ", p.key, " and any sent with it) not recorded: ",
                           status.ToString()));
        }
        break;
      case BatchKind::kCollect:
        CollectDone(token, status);
        break;
    }
    ResolveDone(token, status);
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
    if (status.ok()) {
      t.rec.set_state(v1::PRECOMMITTED);
      t.rec.set_accepted_ballot(0);
      t.rec.set_accepted_value(v1::STATE_COMMITTED);
    }
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
      Visible(q, seq);
      q.staged--;
    }
    for (const std::string& name : TouchedQueues(t.rec)) queues.at(name).txn_refs--;
    Log(absl::StrCat("txn ", id, " COMMITTED here ", Summary(t, p.settled_by)));
    for (const Waiter& w : p.waiters) SendSequences(w.request, o.sequences());
    EraseTxn(id);
    RememberOutcome(std::move(o), 0);
    PlantForget(id);
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
    Log(absl::StrCat("txn ", p.key, " ABORTED here (",
                     p.settled_by.empty() ? "never prepared here; presumed abort" : p.settled_by,
                     ")"));
    for (const Waiter& w : p.waiters) {
      if (w.kind == ReplyKind::kQuery) {
        SendState(w.request, v1::STATE_ABORTED);
      } else if (w.kind == ReplyKind::kPromise || w.kind == ReplyKind::kAccept) {
        SendDecided(w, v1::STATE_ABORTED);
      } else if (w.kind == ReplyKind::kPrepare) {
        Vote(w.request, v1::NO, p.settled_by.empty() ? "already aborted here" : p.settled_by);
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
      // 3PC does not wait for the coordinator: a new round every time.
      if (txn.rec.protocol() == v1::THREE_PC) StartRound(txn, now_ms);
    }
    ArmTimer(txn, now_ms + txn.backoff_ms);
    txn.backoff_ms =
        std::min<uint32_t>(std::max(txn.backoff_ms, txn.backoff_ms * 2),
                           std::max<uint32_t>(config.resend_max_ms, config.resend_initial_ms));
  }

  void OnQueryReply(const std::string& id, const std::string& target,
                    const absl::StatusOr<v1::QueryStateResponse>& reply, int64_t now_ms) {
    auto it = txns.find(id);
    if (it == txns.end()) return HeuristicQueryReply(id, target, reply, now_ms);  // settled meanwhile
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

  // --- 3PC quorum termination (single-decree Paxos over the participants) ---

  static bool Decided(TxnState s) { return s == v1::STATE_COMMITTED || s == v1::STATE_ABORTED; }

  // (ballot, value) accepted; a PRECOMMITTED record from before ballots were
  // recorded accepted COMMIT at ballot 0.
  static std::pair<uint64_t, TxnState> AcceptedOf(const v1::PreparedRecord& rec) {
    if (rec.accepted_value() == v1::TXN_STATE_UNSPECIFIED && rec.state() == v1::PRECOMMITTED) {
      return {0, v1::STATE_COMMITTED};
    }
    return {rec.accepted_ballot(), rec.accepted_value()};
  }

  static size_t Majority(const Txn& t) {
    return static_cast<size_t>(t.rec.participants_size()) / 2 + 1;
  }

  static int SelfIndex(const Txn& t) {
    for (int i = 0; i < t.rec.participants_size(); ++i) {
      if (t.rec.participants(i).participant() == t.rec.participant()) return i;
    }
    return -1;
  }

  static bool IsParticipant(const Txn& t, const std::string& id) {
    for (const v1::PeerAddress& p : t.rec.participants()) {
      if (p.participant() == id) return true;
    }
    return false;
  }

  static absl::Status NotThreePc(const std::string& id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "transaction ", id, " runs 2PC here: no termination rounds (ask with QueryState)"));
  }

  void SendPromiseReply(RequestId r, const Txn& t, bool promised) {
    v1::PromiseResponse resp;
    resp.set_promised(promised);
    resp.set_state(t.rec.state());
    resp.set_promised_ballot(t.rec.promised_ballot());
    const auto [ballot, value] = AcceptedOf(t.rec);
    resp.set_accepted_ballot(ballot);
    resp.set_accepted_value(value);
    Send(r, absl::OkStatus(), resp);
  }

  void SendAcceptReply(RequestId r, TxnState state, bool accepted, uint64_t promised) {
    v1::AcceptResponse resp;
    resp.set_accepted(accepted);
    resp.set_state(state);
    resp.set_promised_ballot(promised);
    Send(r, absl::OkStatus(), resp);
  }

  // A Promise or Accept answered by a node that decided `outcome` (durable).
  void SendDecided(const Waiter& w, TxnState outcome) {
    if (w.kind == ReplyKind::kPromise) {
      v1::PromiseResponse resp;
      resp.set_promised(true);
      resp.set_state(outcome);
      return Send(w.request, absl::OkStatus(), resp);
    }
    ATOMQ_CHECK(w.kind == ReplyKind::kAccept, "a decided answer goes to Promise or Accept");
    SendAcceptReply(w.request, outcome, true, 0);
  }

  // Ballot calls wait for the transaction's batch in flight, like the others.
  bool DeferBallot(Txn& t, Call call, RequestId r, uint64_t ballot, TxnState value) {
    if (t.pending == 0) return false;
    Deferred d{call, r, ""};
    d.ballot = ballot;
    d.value = value;
    t.deferred.push_back(std::move(d));
    return true;
  }

  void WriteBallot(Txn& t, v1::PreparedRecord rec, std::optional<Waiter> w, uint64_t lead) {
    ATOMQ_CHECK(t.durable && t.pending == 0, "a ballot is written over a durable PREPARED record");
    ATOMQ_CHECK(rec.promised_ballot() >= t.rec.promised_ballot(), "promised ballots only grow");
    const std::string id = rec.txn_id();
    t.writing = rec;
    Pending p{BatchKind::kBallot, id, 0, 0, "", {}};
    if (w) p.waiters.push_back(*w);
    p.lead_ballot = lead;
    t.pending = Submit({Put(kPreparedDb, id, rec)}, std::move(p));
  }

  void BallotDone(Txn& t, const Pending& p, const absl::Status& status, int64_t now_ms) {
    if (!status.ok()) {
      for (const Waiter& w : p.waiters) Fail(w, status);
      return;  // a round this node meant to lead starts again at the next timer
    }
    t.rec = std::move(t.writing);
    t.writing.Clear();
    if (!p.waiters.empty() && t.rec.promised_ballot() != t.round.ballot) {
      t.foreign_ballot_ms = now_ms;
    }
    for (const Waiter& w : p.waiters) {
      if (w.kind == ReplyKind::kPromise) {
        SendPromiseReply(w.request, t, true);
      } else {
        ATOMQ_CHECK(w.kind == ReplyKind::kAccept, "a ballot write answers Promise or Accept");
        SendAcceptReply(w.request, t.rec.state(), true, t.rec.promised_ballot());
      }
    }
    if (p.lead_ballot != 0) BeginRound(t, p.lead_ballot, now_ms);
  }

  void Promise(RequestId r, const std::string& id, uint64_t ballot, int64_t now_ms) {
    const Waiter w{ReplyKind::kPromise, r};
    if (ballot == 0) {
      return Fail(w, absl::InvalidArgumentError(
                         "ballot 0 is the coordinator's PreCommit; a Promise needs a ballot > 0"));
    }
    auto it = txns.find(id);
    if (it != txns.end()) {
      Txn& t = it->second;
      if (DeferBallot(t, Call::kPromise, r, ballot, v1::TXN_STATE_UNSPECIFIED)) return;
      if (t.rec.protocol() != v1::THREE_PC) return Fail(w, NotThreePc(id));
      if (ballot <= t.rec.promised_ballot()) {
        return SendPromiseReply(r, t, ballot == t.rec.promised_ballot());
      }
      v1::PreparedRecord rec = t.rec;
      rec.set_promised_ballot(ballot);
      return WriteBallot(t, std::move(rec), w, 0);
    }
    std::optional<CachedOutcome> o = FindOutcome(id);
    if (o && o->rec.state() == v1::STATE_COMMITTED) return SendDecided(w, v1::STATE_COMMITTED);
    if (o) return AnswerAborted(w, *o);
    // Never prepared here, so never voted YES: presumed abort, made durable
    // so that this node votes NO should the Prepare arrive later.
    AbortUnknown(w, id, now_ms);
  }

  void Accept(RequestId r, const std::string& id, uint64_t ballot, TxnState value,
              int64_t now_ms) {
    const Waiter w{ReplyKind::kAccept, r};
    if (ballot == 0) {
      return Fail(w, absl::InvalidArgumentError(
                         "ballot 0 is the coordinator's PreCommit; an Accept needs a ballot > 0"));
    }
    if (!Decided(value)) {
      return Fail(w, absl::InvalidArgumentError(absl::StrCat(
                         "value ", v1::TxnState_Name(value),
                         " is not STATE_COMMITTED or STATE_ABORTED")));
    }
    auto it = txns.find(id);
    if (it != txns.end()) {
      Txn& t = it->second;
      if (DeferBallot(t, Call::kAccept, r, ballot, value)) return;
      if (t.rec.protocol() != v1::THREE_PC) return Fail(w, NotThreePc(id));
      if (ballot < t.rec.promised_ballot()) {
        return SendAcceptReply(r, t.rec.state(), false, t.rec.promised_ballot());
      }
      const auto [accepted_ballot, accepted_value] = AcceptedOf(t.rec);
      if (ballot == accepted_ballot && value == accepted_value) {
        return SendAcceptReply(r, t.rec.state(), true, t.rec.promised_ballot());
      }
      v1::PreparedRecord rec = t.rec;
      rec.set_promised_ballot(ballot);
      rec.set_accepted_ballot(ballot);
      rec.set_accepted_value(value);
      rec.set_state(value == v1::STATE_COMMITTED ? v1::PRECOMMITTED : v1::PREPARED);
      return WriteBallot(t, std::move(rec), w, 0);
    }
    std::optional<CachedOutcome> o = FindOutcome(id);
    if (o && o->rec.state() == value) {
      if (value == v1::STATE_COMMITTED) return SendDecided(w, value);
      return AnswerAborted(w, *o);
    }
    if (o) {
      if (o->token != 0) {
        return Fail(w, absl::UnavailableError(
                           absl::StrCat("transaction ", id, ": its outcome is being written; retry")));
      }
      if (o->rec.has_heuristic()) {
        Log(absl::StrCat("ALARM heuristic mixed: txn ", id, " was resolved ",
                         v1::TxnState_Name(o->rec.state()), " here by an operator, but a "
                         "termination round proposes ", v1::TxnState_Name(value), " at ballot ",
                         ballot));
      }
      Log(absl::StrCat("txn ", id, " protocol alarm: asked to accept ", v1::TxnState_Name(value),
                       " at ballot ", ballot, " but it is ", v1::TxnState_Name(o->rec.state()),
                       " here"));
      return SendAcceptReply(r, o->rec.state(), false, 0);
    }
    if (value == v1::STATE_ABORTED) return AbortUnknown(w, id, now_ms);
    Log(absl::StrCat("txn ", id, " protocol alarm: asked to accept COMMIT at ballot ", ballot,
                     " but it was never prepared here"));
    SendAcceptReply(r, v1::UNKNOWN, false, 0);
  }

  // Writes a ballot above every ballot seen, in this node's ballot space
  // (ballot mod (participants + 1) == 1 + its index), with its own promise;
  // the round begins once that is durable.
  void StartRound(Txn& t, int64_t now_ms) {
    if (t.rec.protocol() != v1::THREE_PC || !t.durable || t.pending != 0) return;
    const int64_t patience = std::max<uint32_t>(config.resend_max_ms, config.resend_initial_ms);
    if (t.round.ballot != 0 && now_ms - t.round_started_ms < patience) return;
    if (now_ms - t.foreign_ballot_ms < patience) return;
    const int self = SelfIndex(t);
    if (self < 0) return;  // not in its own participant list: cannot lead
    const uint64_t n = static_cast<uint64_t>(t.rec.participants_size()) + 1;
    const uint64_t seen = std::max({t.rec.promised_ballot(), t.rec.proposed_ballot(),
                                    t.rec.accepted_ballot(), t.round.highest_seen});
    const uint64_t ballot = (seen / n + 1) * n + static_cast<uint64_t>(self) + 1;
    ATOMQ_CHECK(ballot > seen && ballot % n == static_cast<uint64_t>(self) + 1,
                "a new ballot is fresh and in this node's ballot space");
    t.round = Round{};
    v1::PreparedRecord rec = t.rec;
    rec.set_proposed_ballot(ballot);
    rec.set_promised_ballot(ballot);
    WriteBallot(t, std::move(rec), std::nullopt, ballot);
  }

  void BeginRound(Txn& t, uint64_t ballot, int64_t now_ms) {
    ATOMQ_CHECK(t.rec.proposed_ballot() == ballot && t.rec.promised_ballot() == ballot,
                "a round begins with its ballot durable");
    Round& r = t.round;
    r = Round{};
    r.ballot = ballot;
    t.round_started_ms = now_ms;
    r.promised.insert(t.rec.participant());
    const auto [accepted_ballot, accepted_value] = AcceptedOf(t.rec);
    if (Decided(accepted_value)) {
      r.has_best = true;
      r.best_ballot = accepted_ballot;
      r.best_value = accepted_value;
    }
    for (const v1::PeerAddress& p : t.rec.participants()) {
      if (p.participant() == t.rec.participant()) continue;
      out.peer_msgs.push_back(OutPeerMsg{PeerMsgType::kPromise, t.rec.txn_id(), p.participant(),
                                         p.address(), ballot, v1::TXN_STATE_UNSPECIFIED});
      r.awaiting++;
    }
    MaybeAccept(t);
  }

  void MaybeAccept(Txn& t) {
    Round& r = t.round;
    if (r.accepting || r.promised.size() < Majority(t)) return;
    r.accepting = true;
    r.value = r.has_best ? r.best_value : v1::STATE_ABORTED;
    // TEST ONLY: a broken leader, for tests/sim to show its checker catches it.
    if (config.plant == Plant::kLeaderIgnoresAccepted) r.value = v1::STATE_ABORTED;
    ATOMQ_CHECK(Decided(r.value), "a round proposes COMMIT or ABORT");
    for (const v1::PeerAddress& p : t.rec.participants()) {
      out.peer_msgs.push_back(OutPeerMsg{PeerMsgType::kAccept, t.rec.txn_id(), p.participant(),
                                         p.address(), r.ballot, r.value});
      r.awaiting++;
    }
  }

  void OnPromiseReply(const std::string& id, const std::string& from, uint64_t ballot,
                      const absl::StatusOr<v1::PromiseResponse>& reply, int64_t now_ms) {
    auto it = txns.find(id);
    if (it == txns.end()) return;
    Txn& t = it->second;
    Round& r = t.round;
    if (r.ballot != 0 && r.ballot == ballot && r.awaiting > 0) r.awaiting--;
    if (r.ballot == 0 || r.ballot != ballot || r.accepting || !IsParticipant(t, from)) return;
    if (!reply.ok()) return;  // the next timer starts another round
    if (Decided(reply->state())) {
      return DecideRound(t, reply->state(), absl::StrCat("peer ", from, ", which decided"), now_ms);
    }
    if (!reply->promised()) {
      r.highest_seen = std::max(r.highest_seen, reply->promised_ballot());
      return;
    }
    if (!r.promised.insert(from).second) return;
    if (Decided(reply->accepted_value()) &&
        (!r.has_best || reply->accepted_ballot() > r.best_ballot)) {
      r.has_best = true;
      r.best_ballot = reply->accepted_ballot();
      r.best_value = reply->accepted_value();
    }
    MaybeAccept(t);
  }

  void OnAcceptReply(const std::string& id, const std::string& from, uint64_t ballot,
                     const absl::StatusOr<v1::AcceptResponse>& reply, int64_t now_ms) {
    auto it = txns.find(id);
    if (it == txns.end()) return;
    Txn& t = it->second;
    Round& r = t.round;
    if (r.ballot != 0 && r.ballot == ballot && r.awaiting > 0) r.awaiting--;
    if (r.ballot == 0 || r.ballot != ballot || !r.accepting || !IsParticipant(t, from)) return;
    if (!reply.ok()) return;
    if (Decided(reply->state())) {
      return DecideRound(t, reply->state(), absl::StrCat("peer ", from, ", which decided"), now_ms);
    }
    if (!reply->accepted()) {
      r.highest_seen = std::max(r.highest_seen, reply->promised_ballot());
      return;
    }
    r.accepted.insert(from);
    if (r.accepted.size() >= Majority(t)) {
      DecideRound(t, r.value, absl::StrCat("termination ballot ", r.ballot), now_ms);
    }
  }

  // `value` is chosen: settle here and tell the others.
  void DecideRound(Txn& t, TxnState value, const std::string& by, int64_t now_ms) {
    ATOMQ_CHECK(Decided(value), "a round decides COMMIT or ABORT");
    const std::string id = t.rec.txn_id();
    const uint64_t seen = t.round.highest_seen;
    t.round = Round{};
    t.round.highest_seen = seen;
    const PeerMsgType type =
        value == v1::STATE_COMMITTED ? PeerMsgType::kCommit : PeerMsgType::kAbort;
    for (const v1::PeerAddress& p : t.rec.participants()) {
      if (p.participant() == t.rec.participant()) continue;
      out.peer_msgs.push_back(OutPeerMsg{type, id, p.participant(), p.address(), 0,
                                         v1::TXN_STATE_UNSPECIFIED});
    }
    if (value == v1::STATE_COMMITTED) return CommitTxn(std::nullopt, id, now_ms, by);
    AbortTxn(std::nullopt, id, now_ms, by);
  }

  // --- queues ---

  void CreateQueue(RequestId r, const v1::CreateQueueRequest& req, int64_t now_ms) {
    const std::string& name = req.name();
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
    s = ValidateQueueOptions(req);
    if (!s.ok()) return Fail(w, s);
    v1::QueueRecord rec;
    rec.set_max_deliveries(req.max_deliveries());
    rec.set_dead_letter_queue(req.dead_letter_queue());
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
    s = CheckDeletable(q);
    if (!s.ok()) return Fail(w, s);
    std::vector<Write> writes;
    writes.push_back(Erase(kQueuesDb, name));
    for (const auto& [seq, m] : q.messages)
      writes.push_back(Erase(kMessagesDb, MessageKey(q.rec.id(), seq)));
    if (q.on_disk > 0) {
      s = EraseBacklog(q, &writes);
      if (!s.ok()) return Fail(w, s);
    }
    EraseProducers(q.rec.id(), &writes);
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
    ForgetProducers(p.queue_id);
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
    absl::Status paged;
    while (leases.size() < max_messages) {
      if (paged.ok() && q->on_disk > 0 && q->ready.size() * 2 < config.queue_memory_window) {
        paged = PageIn(*q);
      }
      if (q->ready.empty()) break;
      const uint64_t seq = *q->ready.begin();
      q->ready.erase(q->ready.begin());
      Message& m = q->messages.at(seq);
      ATOMQ_CHECK(m.pinned_by.empty() && m.ack_token == 0, "a held message is never delivered");
      ATOMQ_CHECK(q->on_disk == 0 || seq < q->disk_from,
                  "ready messages in memory precede the backlog on disk");
      if (MaxedOut(*q, m) && StartMove(*q, seq, "max-deliveries", std::nullopt, now_ms)) continue;
      m.delivery_count++;
      m.lease_token = absl::StrCat(config.boot_count, "-", next_lease++);
      m.lease_expires_ms = now_ms + lease_ms;
      q->leases.insert({m.lease_expires_ms, seq});
      leases.push_back(
          Lease{name, q->rec.id(), seq, m.delivery_count, m.lease_token, m.lease_expires_ms});
    }
    if (leases.empty() && !paged.ok()) return paged;
    return leases;
  }

  static absl::Status NotCurrentLease(const std::string& token, const std::string& msg) {
    return absl::FailedPreconditionError(
        absl::StrCat("lease token \"", token, "\" is not the current lease of ", msg));
  }

  // The message `seq` (named `msg`) of `q` under the lease `token`, or why
  // an Ack or Nack with that token cannot touch it.
  static absl::StatusOr<Message*> HeldLease(Queue& q, const std::string& msg, uint64_t seq,
                                            const std::string& token) {
    auto it = q.messages.find(seq);
    if (it == q.messages.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("message ", msg, " is not leased (already acked, or never delivered)"));
    }
    Message& m = it->second;
    if (!m.pinned_by.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("message ", msg, " is held by prepared transaction ", m.pinned_by));
    }
    if (m.lease_token.empty() || m.lease_token != token) return NotCurrentLease(token, msg);
    return &m;
  }

  void Ack(RequestId r, const std::string& name, uint64_t seq, const std::string& token,
           int64_t now_ms) {
    const Waiter w{ReplyKind::kAck, r};
    absl::Status s = ValidateQueueName(name);
    if (!s.ok()) return Fail(w, s);
    Queue* q = FindQueue(name);
    if (q == nullptr) return Fail(w, NoQueue(name));
    const std::string msg = MessageName(name, seq);
    absl::StatusOr<Message*> held = HeldLease(*q, msg, seq, token);
    if (!held.ok()) return Fail(w, held.status());
    Message& m = **held;
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

  // --- consumers and producers: dead letters, nack, Send ---

  // A dead-lettering in flight: the message is held (ack_token) in its queue
  // until the batch that copies it to the dead-letter queue is durable.
  struct Move {
    uint64_t from_queue_id = 0;
    uint64_t from_sequence = 0;
    uint64_t to_queue_id = 0;
    uint64_t to_sequence = 0;
    std::optional<RequestId> nack;  // a Nack waiting for it
  };
  // A Send in flight, with the requests waiting for it (the Send itself and
  // duplicates that arrived meanwhile).
  struct InFlightSend {
    uint64_t queue_id = 0;
    uint64_t sequence = 0;
    std::string producer_key;  // empty: no deduplication
    uint64_t producer_sequence = 0;
    std::vector<std::pair<RequestId, v1::SendResponse>> waits;
  };
  // Dedup state of one (queue, producer). `last`/`msg_sequence` include a
  // Send in flight (`token`); the durable_* fields are what the disk holds.
  struct Producer {
    uint64_t last = 0;
    uint64_t msg_sequence = 0;
    uint64_t used = 0;  // key in producer_lru
    uint64_t token = 0;
    bool durable = false;
    uint64_t durable_last = 0;
    uint64_t durable_msg_sequence = 0;
  };

  std::set<std::string> woke;  // names already in out.ready_queues
  std::map<uint64_t, Move> moves;                 // batch token ->
  std::map<uint64_t, InFlightSend> sends;         // batch token ->
  std::map<uint64_t, uint32_t> inbound;           // queue id -> Sends and moves in flight into it
  std::map<std::string, Producer> producers;      // EncodeU64(queue id) + producer id ->
  std::map<uint64_t, std::string> producer_lru;   // recency stamp -> producers key
  uint64_t next_used = 1;

  void Woke(const Queue& q) {
    if (woke.insert(q.rec.name()).second) out.ready_queues.push_back(q.rec.name());
  }

  static bool MaxedOut(const Queue& q, const Message& m) {
    return q.rec.max_deliveries() > 0 && m.delivery_count >= q.rec.max_deliveries() &&
           !q.rec.dead_letter_queue().empty();
  }

  absl::Status ValidateQueueOptions(const v1::CreateQueueRequest& req) const {
    if (req.max_deliveries() > config.max_deliveries_max) {
      return absl::InvalidArgumentError(absl::StrCat("max_deliveries is ", req.max_deliveries(),
                                                     "; at most --max_deliveries_max=",
                                                     config.max_deliveries_max));
    }
    const std::string& dlq = req.dead_letter_queue();
    if (dlq.empty()) {
      if (req.max_deliveries() == 0) return absl::OkStatus();
      return absl::InvalidArgumentError(
          "max_deliveries needs a dead_letter_queue (where messages go after it)");
    }
    absl::Status s = ValidateQueueName(dlq);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("dead_letter_queue: ", s.message()));
    if (dlq == req.name()) {
      return absl::InvalidArgumentError("a queue cannot be its own dead_letter_queue");
    }
    auto it = queues.find(dlq);
    if (it == queues.end() || it->second.delete_token != 0) {
      return absl::NotFoundError(absl::StrCat("dead-letter queue \"", dlq,
                                              "\" does not exist on ", config.participant_id,
                                              "; create it first"));
    }
    return absl::OkStatus();
  }

  absl::Status CheckDeletable(const Queue& q) const {
    auto in = inbound.find(q.rec.id());
    if (in != inbound.end() && in->second > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("queue \"", q.rec.name(), "\" has ", Plural(in->second, "message"),
                       " being written (Send or dead-lettering); retry"));
    }
    auto names_it = [&](const v1::QueueRecord& rec) {
      return rec.dead_letter_queue() == q.rec.name() && rec.name() != q.rec.name();
    };
    for (const auto& [name, other] : queues) {
      if (other.delete_token == 0 && names_it(other.rec)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "queue \"", q.rec.name(), "\" is the dead-letter queue of \"", name, "\""));
      }
    }
    for (const auto& [name, c] : creating) {
      if (names_it(c.first)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "queue \"", q.rec.name(), "\" is the dead-letter queue of \"", name, "\""));
      }
    }
    return absl::OkStatus();
  }

  // Copies a free message of `q` to its dead-letter queue and erases it, in
  // one batch; the message is held until the batch is reported. False (the
  // caller keeps the message) when there is no dead-letter queue or the
  // payload cannot be read.
  bool StartMove(Queue& q, uint64_t seq, const std::string& reason,
                 std::optional<RequestId> nack, int64_t now_ms) {
    Message& m = q.messages.at(seq);
    ATOMQ_CHECK(m.pinned_by.empty() && m.ack_token == 0, "only a free message is dead-lettered");
    Queue* dlq = FindQueue(q.rec.dead_letter_queue());
    if (dlq == nullptr) return false;
    std::optional<v1::MessageRecord> rec =
        view == nullptr ? std::nullopt : view->FindMessage(q.rec.id(), seq);
    if (!rec) {
      Log(absl::StrCat("queue ", q.rec.name(), " message ", seq,
                       " could not be read for dead-lettering; left in the queue"));
      return false;
    }
    auto& headers = *rec->mutable_headers();
    headers["x-dead-letter-queue"] = q.rec.name();
    headers["x-dead-letter-sequence"] = absl::StrCat(seq);
    headers["x-dead-letter-reason"] = reason;
    headers["x-delivery-count"] = absl::StrCat(m.delivery_count);
    rec->set_enqueued_unix_ms(now_ms);
    const uint64_t to_seq = dlq->rec.next_sequence();
    ATOMQ_CHECK(dlq->messages.count(to_seq) == 0 && to_seq >= dlq->durable_next_sequence,
                "a sequence is never reused");
    dlq->rec.set_next_sequence(to_seq + 1);
    Detach(q, seq, m);
    m.lease_token.clear();
    m.ack_token = Submit({Put(kMessagesDb, MessageKey(dlq->rec.id(), to_seq), *rec),
                          Put(kQueuesDb, dlq->rec.name(), dlq->rec),
                          Erase(kMessagesDb, MessageKey(q.rec.id(), seq))},
                         Pending{BatchKind::kMove, q.rec.name(), q.rec.id(), seq, "", {}});
    moves[m.ack_token] = Move{q.rec.id(), seq, dlq->rec.id(), to_seq, nack};
    inbound[dlq->rec.id()]++;
    return true;
  }

  void MoveDone(uint64_t token, const absl::Status& status, int64_t now_ms) {
    auto it = moves.find(token);
    ATOMQ_CHECK(it != moves.end(), "a move in flight is tracked");
    const Move mv = it->second;
    moves.erase(it);
    if (--inbound[mv.to_queue_id] == 0) inbound.erase(mv.to_queue_id);
    Queue* from = FindQueueById(mv.from_queue_id);
    Message* m = nullptr;
    if (from != nullptr) {
      auto f = from->messages.find(mv.from_sequence);
      if (f != from->messages.end() && f->second.ack_token == token) m = &f->second;
    }
    if (!status.ok()) {
      if (m != nullptr) {
        m->ack_token = 0;
        Restore(*from, mv.from_sequence, *m, now_ms);
      }
      if (mv.nack) Send(*mv.nack, status, v1::NackResponse());
      return;
    }
    if (m != nullptr) from->messages.erase(mv.from_sequence);
    Queue* to = FindQueueById(mv.to_queue_id);
    ATOMQ_CHECK(to != nullptr, "a dead-letter queue outlives the moves into it");
    Visible(*to, mv.to_sequence);
    if (mv.nack) {
      v1::NackResponse resp;
      resp.set_dead_lettered(true);
      resp.set_dead_letter_sequence(mv.to_sequence);
      Send(*mv.nack, absl::OkStatus(), resp);
    }
  }

  void Nack(RequestId r, const v1::NackRequest& req, int64_t now_ms) {
    const Waiter w{ReplyKind::kNack, r};
    const std::string& name = req.queue();
    const uint64_t seq = req.sequence();
    absl::Status s = ValidateQueueName(name);
    if (!s.ok()) return Fail(w, s);
    if (req.reason().size() > config.payload_bytes_max) {
      return Fail(w, absl::InvalidArgumentError(absl::StrCat(
                         "reason is ", req.reason().size(),
                         " bytes; at most --payload_bytes_max=", config.payload_bytes_max)));
    }
    Queue* q = FindQueue(name);
    if (q == nullptr) return Fail(w, NoQueue(name));
    const std::string msg = MessageName(name, seq);
    absl::StatusOr<Message*> held = HeldLease(*q, msg, seq, req.lease_token());
    if (!held.ok()) return Fail(w, held.status());
    Message& m = **held;
    if (m.ack_token != 0) return Fail(w, NotCurrentLease(req.lease_token(), msg));
    if (Expired(m, now_ms)) {
      return Fail(w, absl::FailedPreconditionError(absl::StrCat("lease on ", msg, " expired at ",
                                                                m.lease_expires_ms, " ms")));
    }
    if (req.dead_letter() && q->rec.dead_letter_queue().empty()) {
      return Fail(w, absl::FailedPreconditionError(
                         absl::StrCat("queue \"", name, "\" has no dead-letter queue")));
    }
    if (req.dead_letter() || MaxedOut(*q, m)) {
      const std::string reason = !req.dead_letter()    ? "max-deliveries"
                                 : req.reason().empty() ? "nack"
                                                        : req.reason();
      if (StartMove(*q, seq, reason, r, now_ms)) return;
      if (req.dead_letter()) {
        return Fail(w, absl::InternalError(absl::StrCat("message ", msg,
                                                        " could not be read; not moved")));
      }
    }
    Detach(*q, seq, m);
    m.lease_token.clear();
    q->ready.insert(seq);
    Woke(*q);
    Send(r, absl::OkStatus(), v1::NackResponse());
  }

  void ExpireAllLeases(int64_t now_ms) {
    for (auto& [name, q] : queues) {
      if (q.delete_token == 0 && !q.leases.empty() && q.leases.begin()->first <= now_ms) {
        ExpireLeases(q, now_ms);
      }
    }
  }

  // --- Send and producer deduplication ---

  static std::string ProducerKey(uint64_t queue_id, const std::string& producer) {
    return EncodeU64(queue_id) + producer;
  }

  void Touch(const std::string& key, Producer& p) {
    if (p.used != 0) producer_lru.erase(p.used);
    p.used = next_used++;
    producer_lru[p.used] = key;
  }

  // Evicts least recently used producers (none with a Send in flight) until
  // one more fits; their records are erased by `writes`.
  absl::Status MakeRoomForProducer(std::vector<Write>* writes) {
    while (producers.size() >= config.producers_max) {
      auto victim = producer_lru.begin();
      while (victim != producer_lru.end() && producers.at(victim->second).token != 0) ++victim;
      if (victim == producer_lru.end()) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "--producers_max=", config.producers_max, " producers, each with a Send in flight"));
      }
      writes->push_back(Erase(kDedupDb, victim->second));
      producers.erase(victim->second);
      producer_lru.erase(victim);
    }
    return absl::OkStatus();
  }

  void EraseProducers(uint64_t queue_id, std::vector<Write>* writes) const {
    const std::string prefix = EncodeU64(queue_id);
    for (auto it = producers.lower_bound(prefix);
         it != producers.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
      writes->push_back(Erase(kDedupDb, it->first));
    }
  }

  void ForgetProducers(uint64_t queue_id) {
    const std::string prefix = EncodeU64(queue_id);
    auto it = producers.lower_bound(prefix);
    while (it != producers.end() && it->first.compare(0, prefix.size(), prefix) == 0) {
      producer_lru.erase(it->second.used);
      it = producers.erase(it);
    }
  }

  void SendMessage(RequestId r, const v1::SendRequest& req, int64_t now_ms) {
    const Waiter w{ReplyKind::kSend, r};
    absl::Status s = ValidateQueueName(req.queue());
    if (!s.ok()) return Fail(w, s);
    Queue* q = FindQueue(req.queue());
    if (q == nullptr) return Fail(w, NoQueue(req.queue()));
    if (req.payload().size() > config.payload_bytes_max) {
      return Fail(w, absl::InvalidArgumentError(absl::StrCat(
                         "payload is ", req.payload().size(),
                         " bytes; at most --payload_bytes_max=", config.payload_bytes_max)));
    }
    if (static_cast<uint64_t>(req.headers_size()) > config.headers_max) {
      return Fail(w, absl::InvalidArgumentError(absl::StrCat(
                         req.headers_size(), " headers; at most --headers_max=", config.headers_max)));
    }
    std::string key;
    if (!req.producer_id().empty()) {
      s = ValidateNodeId(req.producer_id());
      if (!s.ok()) return Fail(w, absl::InvalidArgumentError(
                                      absl::StrCat("producer_id: ", s.message())));
      key = ProducerKey(q->rec.id(), req.producer_id());
      auto p = producers.find(key);
      if (p != producers.end() && req.producer_sequence() <= p->second.last) {
        v1::SendResponse resp;
        resp.set_duplicate(true);
        if (req.producer_sequence() == p->second.last) resp.set_sequence(p->second.msg_sequence);
        Touch(key, p->second);
        // Not "done" before the original is durable.
        if (p->second.token != 0) {
          sends.at(p->second.token).waits.emplace_back(r, std::move(resp));
          return;
        }
        return Send(r, absl::OkStatus(), std::move(resp));
      }
    } else if (req.producer_sequence() != 0) {
      return Fail(w, absl::InvalidArgumentError("producer_sequence without producer_id"));
    }
    std::vector<Write> writes;
    if (!key.empty() && producers.count(key) == 0) {
      s = MakeRoomForProducer(&writes);
      if (!s.ok()) return Fail(w, s);
    }
    const uint64_t seq = q->rec.next_sequence();
    ATOMQ_CHECK(q->messages.count(seq) == 0 && seq >= q->durable_next_sequence,
                "a sequence is never reused");
    q->rec.set_next_sequence(seq + 1);
    v1::MessageRecord m;
    m.set_payload(req.payload());
    *m.mutable_headers() = req.headers();
    m.set_enqueued_unix_ms(now_ms);
    writes.push_back(Put(kMessagesDb, MessageKey(q->rec.id(), seq), m));
    writes.push_back(Put(kQueuesDb, q->rec.name(), q->rec));
    if (!key.empty()) {
      Producer& p = producers[key];
      p.last = req.producer_sequence();
      p.msg_sequence = seq;
      Touch(key, p);
      v1::DedupRecord rec;
      rec.set_queue_id(q->rec.id());
      rec.set_producer_id(req.producer_id());
      rec.set_producer_sequence(p.last);
      rec.set_sequence(seq);
      rec.set_used(p.used);
      writes.push_back(Put(kDedupDb, key, rec));
    }
    const uint64_t token = Submit(std::move(writes), Pending{BatchKind::kSend, q->rec.name(),
                                                             q->rec.id(), seq, "", {}});
    if (!key.empty()) producers.at(key).token = token;
    v1::SendResponse resp;
    resp.set_sequence(seq);
    InFlightSend& f = sends[token];
    f.queue_id = q->rec.id();
    f.sequence = seq;
    f.producer_key = key;
    f.producer_sequence = req.producer_sequence();
    f.waits.emplace_back(r, std::move(resp));
    inbound[q->rec.id()]++;
  }

  void SendDone(uint64_t token, const absl::Status& status) {
    auto it = sends.find(token);
    ATOMQ_CHECK(it != sends.end(), "a Send in flight is tracked");
    InFlightSend f = std::move(it->second);
    sends.erase(it);
    if (--inbound[f.queue_id] == 0) inbound.erase(f.queue_id);
    auto p = f.producer_key.empty() ? producers.end() : producers.find(f.producer_key);
    if (!status.ok()) {
      // The sequence stays burnt; the dedup entry goes back to what is durable.
      if (p != producers.end() && p->second.token == token) {
        if (p->second.durable) {
          p->second.last = p->second.durable_last;
          p->second.msg_sequence = p->second.durable_msg_sequence;
          p->second.token = 0;
        } else {
          producer_lru.erase(p->second.used);
          producers.erase(p);
        }
      }
      for (const auto& [request, resp] : f.waits) Send(request, status, v1::SendResponse());
      return;
    }
    if (p != producers.end()) {
      if (!p->second.durable || f.producer_sequence >= p->second.durable_last) {
        p->second.durable_last = f.producer_sequence;
        p->second.durable_msg_sequence = f.sequence;
      }
      p->second.durable = true;
      if (p->second.token == token) p->second.token = 0;
    }
    Queue* q = FindQueueById(f.queue_id);
    ATOMQ_CHECK(q != nullptr, "a queue outlives the Sends into it");
    ATOMQ_CHECK(q->messages.count(f.sequence) == 0, "a sent message gets a fresh sequence");
    Visible(*q, f.sequence);
    for (const auto& [request, resp] : f.waits) Send(request, absl::OkStatus(), resp);
  }

  void RecoverProducers(std::vector<v1::DedupRecord> recs) {
    std::sort(recs.begin(), recs.end(), [](const v1::DedupRecord& a, const v1::DedupRecord& b) {
      return a.used() < b.used();
    });
    for (const v1::DedupRecord& rec : recs) {
      if (FindQueueById(rec.queue_id()) == nullptr) continue;  // erased with its queue
      const std::string key = ProducerKey(rec.queue_id(), rec.producer_id());
      Producer& p = producers[key];
      p.last = p.durable_last = rec.producer_sequence();
      p.msg_sequence = p.durable_msg_sequence = rec.sequence();
      p.durable = true;
      Touch(key, p);
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
    for (const auto& [queue_id, backlog] : state.messages) {
      Queue* q = FindQueueById(queue_id);
      if (q == nullptr) continue;  // no queue record: unreachable, and erased with it
      // Guards "never reused" even against a queue record older than its messages.
      if (backlog.count > 0 && backlog.last_sequence >= q->rec.next_sequence()) {
        q->rec.set_next_sequence(backlog.last_sequence + 1);
      }
      // All on disk; Receive pages them in.
      q->on_disk = backlog.count;
      q->disk_from = 0;
    }
    for (auto& [name, q] : queues) q.durable_next_sequence = q.rec.next_sequence();
    RecoverProducers(std::move(state.dedup));
    for (v1::HeuristicOutcome& h : state.heuristic) heuristics[h.txn_id()] = std::move(h);
    for (v1::PreparedRecord& rec : state.prepared) {
      const std::string id = rec.txn_id();
      ATOMQ_CHECK(txns.count(id) == 0, "one prepared record per transaction");
      Txn& t = txns[id];
      t.rec = std::move(rec);
      t.durable = true;
      t.in_doubt = true;
      LoadAcked(t);
      Stage(t);
      t.backoff_ms = std::max<uint32_t>(1, config.resend_initial_ms);
      ArmTimer(t, now_ms);
    }
  }

  // A recovered transaction's acked messages, from the backlog on disk into
  // memory, for Stage to pin (those gone stay gone: the commit erases nothing).
  void LoadAcked(const Txn& t) {
    for (const v1::Op& op : t.rec.ops()) {
      if (!op.has_ack()) continue;
      Queue* q = FindQueue(op.ack().queue());
      const uint64_t seq = op.ack().sequence();
      if (q == nullptr || q->on_disk == 0 || q->messages.count(seq) > 0) continue;
      absl::StatusOr<std::vector<uint64_t>> found = ScanDisk(*q, seq, seq + 1, 1);
      ATOMQ_CHECK(found.ok(), "storage is readable at recovery");
      if (found->empty()) continue;
      q->messages.emplace(seq, Message{});
      q->on_disk--;
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

  // --- interactive transactions: staged work (memory only) ---
  // Staged ops hold what a prepared transaction holds (pinned acks, staged
  // enqueue counts, queue references) so that the Prepare that takes them
  // cannot fail on a lease that expired meanwhile: the pin kept the message.

  struct StagedTxn {
    google::protobuf::RepeatedPtrField<v1::Op> ops;
    std::vector<uint64_t> batches;  // OpsDigest of each applied Stage call
    int64_t expires_ms = 0;
    uint64_t timer_id = 0;
    uint64_t bytes = 0;
  };
  std::map<std::string, StagedTxn> stage_txns;
  std::map<uint64_t, std::string> stage_timers;  // expiry timer -> txn id
  uint64_t stage_bytes = 0;

  static const std::string& OpQueue(const v1::Op& op) {
    return op.has_enqueue() ? op.enqueue().queue() : op.ack().queue();
  }

  void PinStagedOp(const std::string& id, const v1::Op& op) {
    Queue& q = queues.at(OpQueue(op));
    q.txn_refs++;
    if (op.has_enqueue()) {
      q.staged++;
      return;
    }
    Message& m = q.messages.at(op.ack().sequence());
    ATOMQ_CHECK(m.pinned_by.empty() && m.ack_token == 0, "a staged ack pins a free message");
    Detach(q, op.ack().sequence(), m);
    m.pinned_by = id;
    q.pinned++;
  }

  // Undoes PinStagedOp for every op; `restore` puts acked messages back
  // where their leases say (else the caller pins them again at once).
  void ReleaseStaged(const std::string& id, StagedTxn& st, bool restore, int64_t now_ms) {
    for (const v1::Op& op : st.ops) {
      Queue& q = queues.at(OpQueue(op));
      ATOMQ_CHECK(q.txn_refs > 0, "staged ops hold their queues");
      q.txn_refs--;
      if (op.has_enqueue()) {
        ATOMQ_CHECK(q.staged > 0, "staged count covers staged enqueues");
        q.staged--;
        continue;
      }
      auto m = q.messages.find(op.ack().sequence());
      if (m == q.messages.end() || m->second.pinned_by != id) continue;
      m->second.pinned_by.clear();
      q.pinned--;
      if (restore) Restore(q, m->first, m->second, now_ms);
    }
    ATOMQ_CHECK(stage_bytes >= st.bytes, "staged bytes add up");
    stage_bytes -= st.bytes;
    stage_timers.erase(st.timer_id);
  }

  void DropStaged(const std::string& id, int64_t now_ms, const char* why) {
    auto it = stage_txns.find(id);
    if (it == stage_txns.end()) return;
    ReleaseStaged(id, it->second, true, now_ms);
    Log(absl::StrCat("txn ", id, " staged work dropped (", Plural(it->second.ops.size(), "op"),
                     "): ", why));
    stage_txns.erase(it);
  }

  bool OnStageTimer(uint64_t timer_id, int64_t now_ms) {
    auto it = stage_timers.find(timer_id);
    if (it == stage_timers.end()) return false;
    const std::string id = it->second;
    stage_timers.erase(it);
    auto st = stage_txns.find(id);
    if (st != stage_txns.end() && st->second.timer_id == timer_id) {
      DropStaged(id, now_ms, "expired before a Prepare took it");
    }
    return true;
  }

  absl::StatusOr<v1::StageResponse> StageOps(const v1::StageRequest& req, int64_t now_ms) {
    const std::string& id = req.txn_id();
    absl::Status s = ValidateTxnId(id);
    if (!s.ok()) return s;
    if (req.ops_size() == 0) {
      return absl::InvalidArgumentError("ops is empty: stage at least one op");
    }
    uint64_t bytes = 0;
    for (int i = 0; i < req.ops_size(); ++i) {
      const v1::Op& op = req.ops(i);
      const std::string at = absl::StrCat("op ", i, ": ");
      if (!op.participant().empty() && op.participant() != config.participant_id) {
        return absl::InvalidArgumentError(absl::StrCat(at, "for participant \"", op.participant(),
                                                       "\", not \"", config.participant_id, "\""));
      }
      if (!op.has_enqueue() && !op.has_ack()) {
        return absl::InvalidArgumentError(absl::StrCat(at, "neither enqueue nor ack"));
      }
      s = ValidateQueueName(OpQueue(op));
      if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(at, s.message()));
      if (op.has_enqueue()) {
        const v1::Enqueue& e = op.enqueue();
        if (e.payload().size() > config.payload_bytes_max) {
          return absl::InvalidArgumentError(absl::StrCat(at, "payload is ", e.payload().size(),
                                                         " bytes; at most --payload_bytes_max=",
                                                         config.payload_bytes_max));
        }
        if (static_cast<uint64_t>(e.headers_size()) > config.headers_max) {
          return absl::InvalidArgumentError(absl::StrCat(
              at, e.headers_size(), " headers; at most --headers_max=", config.headers_max));
        }
        bytes += e.payload().size();
        for (const auto& [k, v] : e.headers()) bytes += k.size() + v.size();
      } else if (op.ack().sequence() == 0 || op.ack().lease_token().empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(at, "an ack needs a sequence > 0 and a lease_token"));
      }
    }
    if (txns.count(id) > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("transaction ", id,
                       " is already prepared here; it takes no more staged work"));
    }
    if (std::optional<CachedOutcome> o = FindOutcome(id)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "transaction ", id, " already ",
          o->rec.state() == v1::STATE_COMMITTED ? "committed" : "aborted", " here"));
    }
    const int64_t cap = now_ms + config.stage_timeout_ms_max;
    const int64_t expires =
        req.expires_unix_ms() == 0 ? cap : std::min<int64_t>(req.expires_unix_ms(), cap);
    if (expires <= now_ms) {
      return absl::FailedPreconditionError(absl::StrCat("transaction ", id, " expired at ",
                                                        req.expires_unix_ms(), " (now ", now_ms,
                                                        "); begin a new one"));
    }
    const uint64_t digest = OpsDigest(req.ops());
    auto it = stage_txns.find(id);
    const size_t applied = it == stage_txns.end() ? 0 : it->second.batches.size();
    if (req.batch() != 0) {
      if (req.batch() <= applied) {
        if (it->second.batches[req.batch() - 1] != digest) {
          return absl::AlreadyExistsError(absl::StrCat("Stage batch ", req.batch(), " of ", id,
                                                       " was applied here with other ops"));
        }
        return StagedResponse(it->second);  // a retry: applied once already
      }
      if (req.batch() > applied + 1) {
        return absl::FailedPreconditionError(absl::StrCat(
            "Stage batch ", req.batch(), " of ", id, ", but ", applied,
            " applied here: earlier staged work was lost (restart or expiry); roll back"));
      }
    }
    if (it == stage_txns.end() && stage_txns.size() >= config.staged_txns_max) {
      return absl::ResourceExhaustedError(absl::StrCat(stage_txns.size(),
                                                       " transactions staged here; "
                                                       "--staged_txns_max=",
                                                       config.staged_txns_max));
    }
    const size_t have = it == stage_txns.end() ? 0 : it->second.ops.size();
    if (have + req.ops_size() > config.ops_per_txn_max) {
      return absl::ResourceExhaustedError(absl::StrCat(have + req.ops_size(), " ops staged for ",
                                                       id, "; --ops_per_txn_max=",
                                                       config.ops_per_txn_max));
    }
    if (stage_bytes + bytes > config.staged_bytes_max) {
      return absl::ResourceExhaustedError(absl::StrCat(stage_bytes + bytes,
                                                       " bytes would be staged here; "
                                                       "--staged_bytes_max=",
                                                       config.staged_bytes_max));
    }
    for (const v1::Op& op : req.ops()) {
      if (FindQueue(OpQueue(op)) == nullptr) return NoQueue(OpQueue(op));
    }
    v1::PrepareRequest probe;
    *probe.mutable_ops() = req.ops();
    std::string reason = CheckOps(probe, now_ms);
    if (!reason.empty()) return absl::FailedPreconditionError(reason);

    StagedTxn& st = stage_txns[id];
    for (const v1::Op& op : req.ops()) {
      v1::Op* kept = st.ops.Add();
      *kept = op;
      kept->set_participant(config.participant_id);
      PinStagedOp(id, *kept);
    }
    st.batches.push_back(digest);
    st.bytes += bytes;
    stage_bytes += bytes;
    if (st.timer_id == 0 || expires < st.expires_ms) {
      stage_timers.erase(st.timer_id);
      st.expires_ms = expires;
      st.timer_id = next_timer_id++;
      stage_timers[st.timer_id] = id;
      out.timers.push_back(TimerRequest{st.timer_id, expires});
    }
    return StagedResponse(st);
  }

  static v1::StageResponse StagedResponse(const StagedTxn& st) {
    v1::StageResponse resp;
    resp.set_ops_staged(static_cast<uint32_t>(st.ops.size()));
    resp.set_expires_unix_ms(st.expires_ms);
    return resp;
  }

  // A Prepare with use_staged: prepares exactly the staged ops.
  void PrepareStaged(RequestId r, const v1::PrepareRequest& req, int64_t now_ms) {
    absl::Status s = ValidatePrepare(req);
    if (s.ok() && req.ops_size() > 0) {
      s = absl::InvalidArgumentError("a Prepare with use_staged carries no ops");
    }
    if (!s.ok()) return Fail({ReplyKind::kPrepare, r}, s);
    const std::string& id = req.txn_id();
    auto it = txns.find(id);
    if (it != txns.end()) {  // a repeated Prepare
      Txn& t = it->second;
      if (t.one_phase) return Vote(r, v1::NO, OnePhaseOnly(id));
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
      if (o->rec.one_phase()) return Vote(r, v1::NO, OnePhaseOnly(id));
      return Vote(r, v1::YES);
    }
    auto st = stage_txns.find(id);
    if (st == stage_txns.end()) {
      return Vote(r, v1::NO,
                  absl::StrCat("nothing staged for txn ", id, " on ", config.participant_id,
                               " (expired or lost in a restart)"));
    }
    const uint32_t have = static_cast<uint32_t>(st->second.ops.size());
    if (req.staged_ops() != 0 && req.staged_ops() != have) {
      std::string reason = absl::StrCat(Plural(have, "op"), " staged for txn ", id, " on ",
                                        config.participant_id, ", the client staged ",
                                        req.staged_ops(), " (staged work lost in a restart)");
      DropStaged(id, now_ms, "the client staged another count");
      return Vote(r, v1::NO, std::move(reason));
    }
    if (txns.size() >= config.prepared_max) {
      return Fail(
          {ReplyKind::kPrepare, r},
          absl::ResourceExhaustedError(absl::StrCat(
              txns.size(), " transactions prepared here; --prepared_max=", config.prepared_max)));
    }
    // The pins pass from the staged work to the prepared transaction.
    ReleaseStaged(id, st->second, false, now_ms);
    google::protobuf::RepeatedPtrField<v1::Op> ops = std::move(st->second.ops);
    stage_txns.erase(st);

    Txn& t = txns[id];
    t.rec.set_txn_id(id);
    t.rec.set_protocol(req.protocol());
    t.rec.set_state(v1::PREPARED);
    t.rec.set_coordinator_id(req.coordinator_id());
    t.rec.set_coordinator_address(req.coordinator_address());
    t.rec.set_participant(req.participant());
    *t.rec.mutable_participants() = req.participants();
    *t.rec.mutable_ops() = std::move(ops);
    t.rec.set_ops_digest(OpsDigest(t.rec.ops()));
    t.rec.set_prepared_unix_ms(now_ms);
    Stage(t);
    t.pending = Submit({Put(kPreparedDb, id, t.rec)},
                       Pending{BatchKind::kPrepare, id, 0, 0, "", {{ReplyKind::kPrepare, r}}});
  }

  // --- operator resolution: heuristic outcomes (ParticipantTxn.Resolve) ---

  std::map<std::string, v1::HeuristicOutcome> heuristics;  // durable ones, by txn id
  // Resolve batches in flight (a commit or abort): token -> (request, record).
  std::map<uint64_t, std::pair<RequestId, v1::HeuristicOutcome>> resolving;
  // kHeuristic batches in flight: token -> the outcome record they write.
  std::map<uint64_t, v1::OutcomeRecord> mixing;

  static const char* Word(TxnState s) {
    return s == v1::STATE_COMMITTED ? "committed" : s == v1::STATE_ABORTED ? "aborted" : "undecided";
  }

  void ResolveReply(RequestId r, absl::Status s, const v1::OutcomeRecord* o = nullptr) {
    v1::ResolveResponse resp;
    if (o != nullptr) {
      resp.set_state(o->state());
      resp.set_heuristic(o->has_heuristic());
      *resp.mutable_sequences() = o->sequences();
    }
    Send(r, std::move(s), std::move(resp));
  }

  // A 3PC round this node leads whose messages are not all answered yet.
  bool RoundUnderWay(const Txn& t, int64_t now_ms) const {
    const int64_t patience = std::max<uint32_t>(config.resend_max_ms, config.resend_initial_ms);
    return t.round.ballot != 0 && t.round.awaiting > 0 && now_ms - t.round_started_ms < patience;
  }

  void Resolve(RequestId r, const v1::ResolveRequest& req, int64_t now_ms) {
    const std::string& id = req.txn_id();
    absl::Status s = ValidateTxnId(id);
    if (!s.ok()) return ResolveReply(r, s);
    const TxnState outcome = req.outcome() == v1::COMMITTED ? v1::STATE_COMMITTED
                             : req.outcome() == v1::ABORTED ? v1::STATE_ABORTED
                                                            : v1::TXN_STATE_UNSPECIFIED;
    if (!Decided(outcome)) {
      return ResolveReply(r, absl::InvalidArgumentError(absl::StrCat(
                                 "outcome is ", v1::Outcome_Name(req.outcome()),
                                 "; want COMMITTED or ABORTED")));
    }
    if (req.operator_note().size() > config.operator_note_bytes_max) {
      return ResolveReply(r, absl::InvalidArgumentError(absl::StrCat(
                                 "operator_note is ", req.operator_note().size(),
                                 " bytes; at most --operator_note_bytes_max=",
                                 config.operator_note_bytes_max)));
    }
    auto it = txns.find(id);
    if (it == txns.end()) return ResolveNotPrepared(r, id, outcome);
    Txn& t = it->second;
    const auto refuse = [&](const std::string& why) {
      ResolveReply(r, absl::FailedPreconditionError(absl::StrCat("transaction ", id, " ", why)));
    };
    if (!t.durable) return refuse("is still being prepared here: not in doubt");
    if (t.pending != 0) {
      const Pending& p = pending.at(t.pending);
      if (p.kind == BatchKind::kCommit || p.kind == BatchKind::kAbort) {
        const std::string who =
            p.settled_by.empty() ? "" : absl::StrCat(" (told by ", p.settled_by, ")");
        return refuse(absl::StrCat("is being ",
                                   p.kind == BatchKind::kCommit ? "committed" : "aborted",
                                   " here", who, ": not in doubt"));
      }
      if (p.kind == BatchKind::kBallot && p.lead_ballot != 0) {
        return refuse(absl::StrCat("is starting a 3PC termination round led here (ballot ",
                                   p.lead_ballot, "); retry when it ends"));
      }
      return ResolveReply(r, absl::UnavailableError(absl::StrCat(
                                 "transaction ", id, ": a write for it is in flight here; retry")));
    }
    if (!t.in_doubt) {
      return refuse(absl::StrCat("was prepared here ", now_ms - t.rec.prepared_unix_ms(),
                                 " ms ago and is not in doubt yet (the coordinator may still "
                                 "settle it; in doubt after --in_doubt_after_ms=",
                                 config.in_doubt_after_ms, "); retry later"));
    }
    if (RoundUnderWay(t, now_ms)) {
      return refuse(absl::StrCat("has a 3PC termination round led here (ballot ", t.round.ballot,
                                 ") waiting for ", Plural(t.round.awaiting, "answer"),
                                 "; retry when it ends"));
    }
    v1::HeuristicOutcome h;
    h.set_txn_id(id);
    h.set_state(outcome);
    h.set_resolved_unix_ms(now_ms);
    h.set_operator_note(req.operator_note());
    h.set_resolved_from(t.rec.state());
    h.set_coordinator_id(t.rec.coordinator_id());
    *h.mutable_participants() = t.rec.participants();
    // The protocol's own path: same batch, sequences, acks, then the marks.
    const std::string by = "an operator (heuristic)";
    if (outcome == v1::STATE_COMMITTED) {
      CommitTxn(std::nullopt, id, now_ms, by);
    } else {
      AbortTxn(std::nullopt, id, now_ms, by);
    }
    ATOMQ_CHECK(t.pending != 0 && t.outcome.state() == outcome,
                "a resolution submits its outcome at once");
    MarkHeuristic(t, h);
    resolving[t.pending] = {r, std::move(h)};
  }

  // Marks the outcome of the batch just submitted for `t` heuristic, and
  // keeps the mark in kHeuristicDb too, in the same batch.
  void MarkHeuristic(Txn& t, const v1::HeuristicOutcome& h) {
    const std::string& id = t.rec.txn_id();
    *t.outcome.mutable_heuristic() = h;
    for (Batch& b : out.persist) {
      if (b.token != t.pending) continue;
      for (Write& w : b.writes) {
        if (w.db != kOutcomesDb || w.key != id || w.erase) continue;
        w.value = EncodeRecord(t.outcome);
        b.writes.push_back(Put(kHeuristicDb, id, h));
        return;
      }
    }
    ATOMQ_CHECK(false, "a resolution's batch writes the outcome");
  }

  // Resolve for an id not prepared here: settled, staged only, or unknown.
  void ResolveNotPrepared(RequestId r, const std::string& id, TxnState outcome) {
    if (std::optional<CachedOutcome> o = FindOutcome(id)) {
      if (o->token != 0) {
        return ResolveReply(r, absl::UnavailableError(absl::StrCat(
                                   "transaction ", id, ": its outcome is being written; retry")));
      }
      // A retry, or the protocol got there first (e.g. a peer resolved by
      // an operator answered this node's query): the outcome asked for holds.
      if (o->rec.state() == outcome) return ResolveReply(r, absl::OkStatus(), &o->rec);
      return ResolveReply(
          r, absl::FailedPreconditionError(absl::StrCat(
                 "transaction ", id, " was already ", Word(o->rec.state()), " here",
                 o->rec.has_heuristic() ? " by an operator (heuristic)" : " by the protocol",
                 ": not in doubt, nothing to resolve")));
    }
    if (stage_txns.count(id) > 0) {
      return ResolveReply(r, absl::FailedPreconditionError(absl::StrCat(
                                 "transaction ", id, " is only staged here, not prepared: "
                                 "nothing is in doubt (roll it back, or let it expire)")));
    }
    ResolveReply(r, absl::NotFoundError(absl::StrCat("transaction ", id,
                                                     " is not prepared here and has no "
                                                     "outcome here")));
  }

  void ResolveDone(uint64_t token, const absl::Status& status) {
    auto it = resolving.find(token);
    if (it == resolving.end()) return;
    const RequestId r = it->second.first;
    v1::HeuristicOutcome h = std::move(it->second.second);
    resolving.erase(it);
    const std::string id = h.txn_id();
    if (!status.ok()) {
      Log(absl::StrCat("txn ", id, " heuristic resolution not written (still in doubt): ",
                       status.ToString()));
      return ResolveReply(r, status);
    }
    std::optional<CachedOutcome> o = FindOutcome(id);
    ATOMQ_CHECK(o && o->rec.has_heuristic() && o->rec.state() == h.state(),
                "a durable resolution leaves its heuristic outcome");
    Log(absl::StrCat("HEURISTIC DECISION: txn ", id, " ", h.state() == v1::STATE_COMMITTED
                                                             ? "COMMITTED"
                                                             : "ABORTED",
                     " here by an operator (was ", v1::TxnState_Name(h.resolved_from()),
                     ", coordinator ", h.coordinator_id(), ", note \"", h.operator_note(),
                     "\"); it may contradict the coordinator and the other participants"));
    heuristics[id] = std::move(h);
    ResolveReply(r, absl::OkStatus(), &o->rec);
  }

  // A heuristic outcome told otherwise by `by`: it stays; the first
  // conflict is recorded (durably) for the operator to repair by hand.
  void HeuristicMixed(const CachedOutcome& o, TxnState other, const std::string& by,
                      int64_t now_ms) {
    const std::string& id = o.rec.txn_id();
    Log(absl::StrCat("ALARM heuristic mixed: txn ", id, " was ", Word(o.rec.state()),
                     " here by an operator, but ", by, " says ", Word(other), "; it stays ",
                     Word(o.rec.state()), " here: repair by hand (atomqctl txn list)"));
    if (o.rec.heuristic().conflicting_state() != v1::TXN_STATE_UNSPECIFIED) return;
    for (const auto& [token, rec] : mixing) {
      if (rec.txn_id() == id) return;  // being recorded
    }
    v1::OutcomeRecord rec = o.rec;
    v1::HeuristicOutcome* h = rec.mutable_heuristic();
    h->set_conflicting_state(other);
    h->set_conflict_by(by);
    h->set_conflict_unix_ms(now_ms);
    const uint64_t token = Submit({Put(kOutcomesDb, id, rec), Put(kHeuristicDb, id, *h)},
                                  Pending{BatchKind::kHeuristic, id, 0, 0, "", {}});
    mixing[token] = std::move(rec);
  }

  void HeuristicDone(uint64_t token, const Pending& p, const absl::Status& status) {
    auto it = mixing.find(token);
    ATOMQ_CHECK(it != mixing.end() && it->second.txn_id() == p.key,
                "a heuristic conflict in flight is tracked");
    v1::OutcomeRecord rec = std::move(it->second);
    mixing.erase(it);
    if (!status.ok()) {
      Log(absl::StrCat("txn ", p.key, " heuristic conflict not recorded: ", status.ToString()));
      return;
    }
    heuristics[p.key] = rec.heuristic();
    auto cached = outcomes.find(p.key);
    if (cached != outcomes.end() && cached->second.token == 0) cached->second.rec = std::move(rec);
  }

  // A QueryState answer after the transaction was settled here.
  void HeuristicQueryReply(const std::string& id, const std::string& target,
                           const absl::StatusOr<v1::QueryStateResponse>& reply, int64_t now_ms) {
    if (!reply.ok() || !Decided(reply->state())) return;
    std::optional<CachedOutcome> o = FindOutcome(id);
    if (!o || o->token != 0 || !o->rec.has_heuristic() || o->rec.state() == reply->state()) {
      return;
    }
    const v1::HeuristicOutcome& h = o->rec.heuristic();
    std::string by;
    if (target == h.coordinator_id()) by = absl::StrCat("coordinator ", target);
    for (const v1::PeerAddress& p : h.participants()) {
      if (p.participant() == target) by = absl::StrCat("peer ", target);
    }
    if (!by.empty()) HeuristicMixed(*o, reply->state(), by, now_ms);
  }

  std::vector<v1::HeuristicOutcome> HeuristicOutcomes() const {
    std::vector<v1::HeuristicOutcome> list;
    for (const auto& [id, h] : heuristics) list.push_back(h);
    return list;
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
  if (req.one_phase()) return impl_->PrepareOnePhase(request, req, now_ms);
  if (req.use_staged()) return impl_->PrepareStaged(request, req, now_ms);
  // Staged work under an id prepared with explicit ops can never be taken.
  impl_->DropStaged(req.txn_id(), now_ms, "a Prepare with explicit ops came for the id");
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
  impl_->DropStaged(txn_id, now_ms, "aborted");
  impl_->AbortTxn(w, txn_id, now_ms, "");
}

void ParticipantCore::QueryState(RequestId request, const std::string& txn_id, int64_t now_ms) {
  impl_->RequireRecovered();
  if (!impl_->ValidateId({ReplyKind::kQuery, request}, txn_id).ok()) return;
  // The answer for an id not prepared here is ABORTED, recorded: staged work
  // under it could never commit.
  impl_->DropStaged(txn_id, now_ms, "its outcome was asked before it was prepared");
  impl_->QueryState(request, txn_id, now_ms);
}

void ParticipantCore::Promise(RequestId request, const std::string& txn_id, uint64_t ballot,
                              int64_t now_ms) {
  impl_->RequireRecovered();
  if (!impl_->ValidateId({ReplyKind::kPromise, request}, txn_id).ok()) return;
  impl_->Promise(request, txn_id, ballot, now_ms);
}

void ParticipantCore::Accept(RequestId request, const std::string& txn_id, uint64_t ballot,
                             v1::TxnState value, int64_t now_ms) {
  impl_->RequireRecovered();
  if (!impl_->ValidateId({ReplyKind::kAccept, request}, txn_id).ok()) return;
  impl_->Accept(request, txn_id, ballot, value, now_ms);
}

void ParticipantCore::OnPromiseReply(const std::string& txn_id, const std::string& from,
                                     uint64_t ballot,
                                     const absl::StatusOr<v1::PromiseResponse>& reply,
                                     int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->OnPromiseReply(txn_id, from, ballot, reply, now_ms);
}

void ParticipantCore::OnAcceptReply(const std::string& txn_id, const std::string& from,
                                    uint64_t ballot,
                                    const absl::StatusOr<v1::AcceptResponse>& reply,
                                    int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->OnAcceptReply(txn_id, from, ballot, reply, now_ms);
}

void ParticipantCore::OnQueryReply(const std::string& txn_id, const std::string& target,
                                   const absl::StatusOr<v1::QueryStateResponse>& reply,
                                   int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->OnQueryReply(txn_id, target, reply, now_ms);
}

void ParticipantCore::OnTimer(uint64_t timer_id, int64_t now_ms) {
  impl_->RequireRecovered();
  if (impl_->OnStageTimer(timer_id, now_ms)) return;
  impl_->OnTimer(timer_id, now_ms);
}

absl::StatusOr<v1::StageResponse> ParticipantCore::Stage(const v1::StageRequest& req,
                                                         int64_t now_ms) {
  impl_->RequireRecovered();
  return impl_->StageOps(req, now_ms);
}

size_t ParticipantCore::staged_transactions() const { return impl_->stage_txns.size(); }

void ParticipantCore::OnPersisted(uint64_t token, const absl::Status& status, int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->OnPersisted(token, status, now_ms);
}

void ParticipantCore::CreateQueue(RequestId request, const std::string& name, int64_t now_ms) {
  impl_->RequireRecovered();
  v1::CreateQueueRequest req;
  req.set_name(name);
  impl_->CreateQueue(request, req, now_ms);
}

void ParticipantCore::CreateQueue(RequestId request, const v1::CreateQueueRequest& req,
                                  int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->CreateQueue(request, req, now_ms);
}

void ParticipantCore::Nack(RequestId request, const v1::NackRequest& req, int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->Nack(request, req, now_ms);
}

void ParticipantCore::Send(RequestId request, const v1::SendRequest& req, int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->SendMessage(request, req, now_ms);
}

void ParticipantCore::ExpireLeases(int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->ExpireAllLeases(now_ms);
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

void ParticipantCore::Resolve(RequestId request, const v1::ResolveRequest& req, int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->Resolve(request, req, now_ms);
}

void ParticipantCore::Forget(const std::string& txn_id, int64_t now_ms) {
  impl_->RequireRecovered();
  impl_->Forget(txn_id, now_ms);
}

size_t ParticipantCore::CollectOutcomes(const std::vector<std::string>& keys, int64_t now_ms) {
  impl_->RequireRecovered();
  return impl_->CollectOutcomes(keys, now_ms);
}

uint64_t ParticipantCore::outcomes_erased() const { return impl_->outcomes_erased; }

std::vector<v1::HeuristicOutcome> ParticipantCore::HeuristicOutcomes() const {
  return impl_->HeuristicOutcomes();
}

Output ParticipantCore::TakeOutput() {
  impl_->woke.clear();
  return std::exchange(impl_->out, Output{});
}

}  // namespace atomq::participant
