// The participant's protocol state machine and queue model: pure,
// single-threaded, no I/O, no threads, no clock (docs/design.md sections 2-5).
//
// It holds queue metadata in memory (names, ids, next sequence numbers,
// leases) and the sequence numbers of a window of each queue's messages:
// those leased, pinned or delivered, and up to Config::queue_memory_window
// ready ones. A longer backlog lives only in storage, counted; Receive pages
// the next ones in, in sequence order, through DurableView::ScanMessages.
// Message payloads live only in storage, and the adapter reads them by
// MessageKey() when it delivers.
//
// Durability is enforced here: a YES vote, a pre-commit ack, a commit ack, a
// queue create/delete or a message ack is released (Output::replies) only
// after OnPersisted() reported its batch durable. Committed messages become
// visible to Receive only once their batch is durable.
//
// In doubt: a transaction PREPARED (or PRECOMMITTED) without an outcome for
// Config::in_doubt_after_ms asks its coordinator (QueryState), with backoff
// between resend_initial_ms and resend_max_ms. When the coordinator cannot be
// reached or still answers PREPARING after a few tries, it also asks every
// peer (cooperative termination): a peer that committed or aborted settles it;
// a peer that never prepared it answers ABORTED and records that it did (so
// that it votes NO should the Prepare arrive later). If every peer is
// uncertain too, it stays in doubt and keeps asking.
//
// 3PC quorum termination (docs/design.md section 3.7): besides asking, an in-doubt
// 3PC transaction starts a termination round on every in-doubt timer: it
// writes a fresh ballot (proposed_ballot) to its PREPARED record, sends
// Promise to every participant (itself included), and on promises from a
// majority proposes the value accepted at the highest ballot, else ABORT
// (Accept). A majority of accepts decides: it settles itself and sends
// Commit/Abort to the others. As an acceptor it answers Promise/Accept only
// after the promised/accepted ballot is durable, and refuses the
// coordinator's PreCommit (ballot 0) once it promised a higher ballot.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "atomq/v1/participant.pb.h"
#include "atomq/v1/records.pb.h"
#include "common/plant.h"
#include "common/storage.h"
#include "participant/core/schema.h"

namespace atomq::participant {

// Random bytes in a lease token (it is their hex: twice as many characters).
inline constexpr size_t kLeaseTokenBytes = 16;

struct Config {
  std::string participant_id;  // --id
  uint64_t boot_count = 1;     // this start's number (MetaRecord)
  // Fills `n` bytes at `out` with bytes nobody can predict: lease tokens are
  // made of them (kLeaseTokenBytes each). Required: the server fills it from
  // the kernel's CSPRNG, the simulator and unit tests from their seed.
  std::function<void(uint8_t* out, size_t n)> random_bytes;
  uint32_t ops_per_txn_max = 1000;           // --ops_per_txn_max (ops per prepare)
  uint32_t participants_per_txn_max = 1000;  // --participants_per_txn_max (a Prepare's peers)
  uint32_t payload_bytes_max = 1 << 20;      // --payload_bytes_max: payload + headers of a message
  uint32_t headers_max = 64;                 // --headers_max
  uint32_t header_bytes_max = 64 << 10;  // --header_bytes_max: header keys + values of a message
  uint64_t txn_bytes_max = 64 << 20;     // --txn_bytes_max: messages of one transaction here
  uint32_t prepared_max = 10000;         // --prepared_max: in-doubt + prepared at once
  // --prepared_bytes_max: messages of the transactions prepared here (in
  // doubt included) at once, MessageBytes (common/op_limits.h) of their
  // enqueues.
  uint64_t prepared_bytes_max = 1ull << 30;
  uint32_t queues_max = 10000;          // --queues_max
  uint32_t lease_ms = 30000;            // --lease_ms: default lease
  uint32_t lease_ms_max = 3600000;      // --lease_ms_max
  uint32_t receive_max = 1000;          // --receive_max: messages per Receive
  uint32_t max_deliveries_max = 1000;   // --max_deliveries_max: a queue's max_deliveries
  uint32_t producers_max = 100000;      // --producers_max: dedup entries (queue, producer)
  uint32_t in_doubt_after_ms = 2000;    // --in_doubt_after_ms
  uint32_t resend_initial_ms = 100;     // --resend_initial_ms
  uint32_t resend_max_ms = 5000;        // --resend_max_ms
  uint32_t outcome_cache_max = 100000;  // --outcome_cache_max: outcomes kept in memory
  // --queue_memory_window: ready, never-delivered messages of one queue kept
  // in memory; beyond it a queue's backlog stays on disk only.
  uint32_t queue_memory_window = 10000;
  // Interactive transactions (Stage): staged work is memory only.
  uint32_t staged_txns_max = 10000;          // --staged_txns_max: transactions with staged work
  uint64_t staged_bytes_max = 256ull << 20;  // --staged_bytes_max: payload bytes staged, all txns
  // --staged_bytes_per_identity_max: of those, what one caller's transactions
  // may hold, so that one client cannot take the whole budget.
  uint64_t staged_bytes_per_identity_max = 64ull << 20;
  uint32_t stage_timeout_ms_max = 60000;    // --stage_timeout_ms_max: longest life of staged work
  uint32_t operator_note_bytes_max = 4096;  // --operator_note_bytes_max: a Resolve's note
  // --retention_ms: an outcome the coordinator ENDED is erased this long after
  // the notice (Forget), so that retries and late messages within it still get
  // the same answer.
  uint64_t retention_ms = 600000;
  // TEST ONLY (tests/sim plants a known bug to show its checker catches
  // it; common/plant.h says what each does). kNone everywhere else.
  Plant plant = Plant::kNone;
};

// Read-only access to what is durable, for transactions no longer in memory
// and for queue backlogs kept on disk only.
class DurableView {
 public:
  virtual ~DurableView() = default;
  virtual std::optional<v1::OutcomeRecord> FindOutcome(const std::string& txn_id) const = 0;
  // Sequences of the stored messages of `queue_id` in [from_sequence,
  // to_sequence), ascending, at most `limit` of them. Called synchronously by
  // the core; it only asks below what OnPersisted already reported durable.
  virtual absl::StatusOr<std::vector<uint64_t>> ScanMessages(uint64_t queue_id,
                                                             uint64_t from_sequence,
                                                             uint64_t to_sequence,
                                                             uint32_t limit) const = 0;
  // A committed message (payload and headers), for dead-lettering, which
  // copies it to another queue. nullopt: unreadable; the message then stays.
  virtual std::optional<v1::MessageRecord> FindMessage(uint64_t /*queue_id*/,
                                                       uint64_t /*sequence*/) const {
    return std::nullopt;
  }
};

// Everything found in storage at start.
struct RecoveredState {
  std::optional<v1::MetaRecord> meta;
  std::vector<v1::QueueRecord> queues;
  // Stored messages per queue id, counted, not listed: the core pages them
  // in through DurableView::ScanMessages.
  struct Backlog {
    uint64_t count = 0;
    uint64_t last_sequence = 0;  // the highest stored
  };
  std::map<uint64_t, Backlog> messages;
  std::vector<v1::PreparedRecord> prepared;
  std::vector<v1::DedupRecord> dedup;           // producer deduplication, any order
  std::vector<v1::HeuristicOutcome> heuristic;  // sub-database "heuristic", any order
};

using RequestId = uint64_t;

// A query the adapter sends: QueryState(txn_id) to `target`, at the address
// its own configuration gives that id (never one a request named).
struct OutQuery {
  std::string txn_id;
  std::string target;  // participant id, or the coordinator id
  bool to_coordinator = false;
};

struct TimerRequest {
  uint64_t timer_id;
  int64_t at_ms;
};

// The reply to a request, typed by what was asked.
using ReplyBody =
    std::variant<v1::PrepareResponse, v1::PreCommitResponse, v1::CommitResponse, v1::AbortResponse,
                 v1::QueryStateResponse, v1::PromiseResponse, v1::AcceptResponse,
                 v1::CreateQueueResponse, v1::DeleteQueueResponse, v1::AckResponse,
                 v1::NackResponse, v1::SendResponse, v1::ResolveResponse, v1::PurgeQueueResponse>;

struct Reply {
  RequestId request;
  absl::Status status;  // non-OK: body is meaningless
  ReplyBody body;
};

// A leased message; the adapter adds payload and headers from storage.
struct Lease {
  std::string queue;
  uint64_t queue_id;
  uint64_t sequence;
  uint32_t delivery_count;
  std::string lease_token;
  int64_t expires_ms;
};

// A message of a 3PC termination round this node leads, to one participant
// of the transaction (itself included for Promise/Accept). Report the answer
// of a Promise through OnPromiseReply and of an Accept through OnAcceptReply;
// Commit/Abort (the decision) need no report. Like OutQuery, it names the
// target by id only.
enum class PeerMsgType { kPromise, kAccept, kCommit, kAbort };
struct OutPeerMsg {
  PeerMsgType type;
  std::string txn_id;
  std::string target;                              // participant id
  uint64_t ballot = 0;                             // kPromise, kAccept
  v1::TxnState value = v1::TXN_STATE_UNSPECIFIED;  // kAccept
};

struct Output {
  // Submit in this order, across calls: a later batch may rewrite a key an
  // earlier one wrote (a queue's next_sequence only grows batch by batch).
  // Every token is reported once through OnPersisted, in this order too (a
  // queue's sequences then become durable in ascending order, which paging
  // its backlog from disk relies on).
  std::vector<Batch> persist;
  std::vector<OutQuery> queries;      // report OnQueryReply
  std::vector<OutPeerMsg> peer_msgs;  // 3PC termination rounds
  std::vector<TimerRequest> timers;
  std::vector<Reply> replies;
  std::vector<std::string> log;  // one line per outcome
  // Queues that gained ready messages (a commit, a Send, a nack, an expired
  // lease, a dead-lettering): wake their waiting consumers. Each name once.
  std::vector<std::string> ready_queues;

  bool empty() const {
    return persist.empty() && queries.empty() && timers.empty() && replies.empty() && log.empty() &&
           peer_msgs.empty() && ready_queues.empty();
  }
};

class Node;  // node.h: the internal state machine

class ParticipantCore {
 public:
  ParticipantCore(Config config, const DurableView* view);
  ~ParticipantCore();

  // Once, before any other input. PREPARED/PRECOMMITTED records become in
  // doubt at once (their lease-pinned acks stay pinned); messages become
  // ready (leases do not survive a restart: at-least-once).
  void Recover(RecoveredState state, int64_t now_ms);

  // --- commit protocol (each answers through Output::replies) ---
  // Validates this node's ops: queues exist, sizes within limits, each acked
  // message leased with that token and not already pinned by another
  // transaction; sizes include header bytes (--payload_bytes_max,
  // --header_bytes_max, --txn_bytes_max). NO with a reason otherwise, also for
  // a Prepare whose created_unix_ms is older than retention_ms / 2 (see
  // QueryState). RESOURCE_EXHAUSTED past --prepared_max or
  // --prepared_bytes_max. A repeated Prepare with the same ops answers as
  // the first; with other ops it is a NO.
  // With one_phase (this node is the only participant) it commits at once:
  // YES with the sequences once the one commit batch is durable, or NO once
  // an ABORTED outcome is durable; nothing is ever PREPARED (never in doubt).
  void Prepare(RequestId request, const v1::PrepareRequest& req, int64_t now_ms);
  void PreCommit(RequestId request, const std::string& txn_id, int64_t now_ms);
  void Commit(RequestId request, const std::string& txn_id, int64_t now_ms);
  void Abort(RequestId request, const std::string& txn_id, int64_t now_ms);
  // From a peer or the coordinator. Unknown ids answer STATE_ABORTED after an
  // ABORTED outcome is persisted (this node will then vote NO), together
  // with a kForgettableDb entry: the record is collected after retention_ms
  // (CollectOutcomes), when a Prepare of the id would be refused as too old.
  void QueryState(RequestId request, const std::string& txn_id, int64_t now_ms);

  // 3PC termination, as an acceptor (from a peer leading a round, or the
  // coordinator). Answered after the promise/accept is durable; see
  // PromiseRequest/AcceptRequest in participant.proto for the contract.
  void Promise(RequestId request, const std::string& txn_id, uint64_t ballot, int64_t now_ms);
  void Accept(RequestId request, const std::string& txn_id, uint64_t ballot, v1::TxnState value,
              int64_t now_ms);
  // Answers to this node's OutPeerMsg Promise/Accept (`from` = its target).
  void OnPromiseReply(const std::string& txn_id, const std::string& from, uint64_t ballot,
                      const absl::StatusOr<v1::PromiseResponse>& reply, int64_t now_ms);
  void OnAcceptReply(const std::string& txn_id, const std::string& from, uint64_t ballot,
                     const absl::StatusOr<v1::AcceptResponse>& reply, int64_t now_ms);

  // The answer to an OutQuery.
  void OnQueryReply(const std::string& txn_id, const std::string& target,
                    const absl::StatusOr<v1::QueryStateResponse>& reply, int64_t now_ms);
  void OnTimer(uint64_t timer_id, int64_t now_ms);
  void OnPersisted(uint64_t token, const absl::Status& status, int64_t now_ms);

  // --- queues ---
  void CreateQueue(RequestId request, const std::string& name, int64_t now_ms);
  void DeleteQueue(RequestId request, const std::string& name, int64_t now_ms);
  std::vector<v1::QueueInfo> ListQueues() const;
  // Leases up to `max_messages` ready messages in sequence order; expired
  // leases return their messages to ready first, and a backlog on disk is
  // paged in (DurableView::ScanMessages) once fewer than half the window are
  // ready in memory. NOT_FOUND for a missing queue; INVALID_ARGUMENT for
  // limits; a failed read of the backlog answers its error when nothing else
  // could be leased.
  absl::StatusOr<std::vector<Lease>> Receive(const std::string& queue, uint32_t max_messages,
                                             uint32_t lease_ms, int64_t now_ms);
  // ReceiveRequest.peek: up to max_messages ready messages in sequence
  // order, those in memory and then the backlog on disk (read, not paged
  // in), with their delivery counts and no lease token. Changes nothing (an
  // expired lease not yet returned by ExpireLeases is not shown). Errors as
  // Receive, and INVALID_ARGUMENT with auto_ack or wait_ms.
  absl::StatusOr<std::vector<Lease>> Peek(const v1::ReceiveRequest& req) const;
  // Queue.PurgeQueue: erases the queue's ready messages, in memory and on
  // disk, in one batch; until it is durable they are delivered to nobody.
  // Leased, pinned and held messages stay. The reply (PurgeQueueResponse)
  // comes once durable; on a failed write the messages are ready again and
  // the reply is the error. NOT_FOUND, INVALID_ARGUMENT (name), UNAVAILABLE
  // while a purge of the queue is in flight.
  void PurgeQueue(RequestId request, const std::string& queue);
  // FAILED_PRECONDITION when the lease is not current or the message is
  // pinned by a prepared transaction; the reply waits for the deletion.
  void Ack(RequestId request, const std::string& queue, uint64_t sequence,
           const std::string& lease_token, int64_t now_ms);

  // --- consumers and producers (Queue service; see participant.proto) ---
  // CreateQueue with options: max_deliveries (<= max_deliveries_max, needs a
  // dead-letter queue) and dead_letter_queue (an existing queue, not itself).
  void CreateQueue(RequestId request, const v1::CreateQueueRequest& req, int64_t now_ms);
  // Requeue: answered at once (leases are memory only). Dead-letter (asked,
  // or the queue's max_deliveries reached): the message moves to the
  // dead-letter queue in one batch (new sequence there, x-dead-letter-*
  // headers) and the reply waits for it. Same lease checks as Ack.
  void Nack(RequestId request, const v1::NackRequest& req, int64_t now_ms);
  // One message in one batch with its queue record and, with a producer id,
  // its dedup record; answered once durable. Duplicates answer at once (or
  // when the original's batch is durable).
  void Send(RequestId request, const v1::SendRequest& req, int64_t now_ms);
  // Returns messages of expired leases to ready, or dead-letters those that
  // reached their queue's max_deliveries. Receive does this for its queue;
  // the adapter calls this periodically so that waiting consumers wake and
  // counts stay true. Delivery counts live in memory: a restart resets them.
  void ExpireLeases(int64_t now_ms);

  // One page of the prepared and in-doubt transactions and the heuristic
  // outcomes, merged in txn id order, after req.page_token: at most
  // req.limit rows (0 or above `limit_max`: `limit_max`, which is > 0), and
  // no more once the reply would pass `bytes_max` (but at least one row);
  // next_page_token set when more exist. Enqueue ops carry payloads and
  // headers only with req.payloads. INVALID_ARGUMENT for a page token that
  // is not a transaction id.
  absl::StatusOr<v1::ListParticipantTxnsResponse> ListTransactions(
      const v1::ListParticipantTxnsRequest& req, uint32_t limit_max, uint64_t bytes_max) const;

  // --- outcome collection (BatchItem.forget in participant.proto) ---
  // The coordinator ENDED the transaction: every participant holds its
  // outcome, none is in doubt. When the outcome here is durable, not
  // heuristic and the id is not prepared, a kForgettableDb entry keyed by
  // now_ms is written (lazily: Batch::sync false); otherwise nothing. Needs
  // no reply.
  void Forget(const std::string& txn_id, int64_t now_ms);
  // `keys`: kForgettableDb keys in key order, as the adapter scanned them
  // (at most --gc_batch_max). Each one older than retention_ms is erased in
  // one lazy batch together with its outcome (unless the id was prepared
  // again, is heuristic, or has a newer outcome), and the outcome leaves the
  // cache. Keys still inside the window, and keys of a batch in flight, are
  // skipped. Returns how many keys it took.
  size_t CollectOutcomes(const std::vector<std::string>& keys, int64_t now_ms);
  // Outcomes erased by CollectOutcomes batches that are durable.
  uint64_t outcomes_erased() const;

  // --- operator resolution (ParticipantTxn.Resolve in participant.proto) ---
  // Applies an operator's outcome to an in-doubt transaction through the
  // protocol's commit/abort path, marks the outcome heuristic (OutcomeRecord
  // and kHeuristicDb in the same batch) and answers once that is durable.
  // A Commit/Abort/Accept that later says otherwise changes nothing: it is
  // answered as any conflicting outcome, logged "ALARM heuristic mixed" and
  // recorded in the HeuristicOutcome (conflicting_state). `identity` is
  // the caller's (the adapter authenticated it), kept as resolved_by.
  void Resolve(RequestId request, const v1::ResolveRequest& req, int64_t now_ms,
               const std::string& identity = "");
  // Every heuristic outcome decided here (durable ones), by txn id.
  std::vector<v1::HeuristicOutcome> HeuristicOutcomes() const;

  // --- interactive transactions (StageRequest in participant.proto) ---
  // Validates `req.ops` as a Prepare would (queue, sizes, current lease,
  // message not held), pins acked messages, and keeps the ops in memory under
  // the id until a Prepare with use_staged takes them, an Abort or outcome
  // query for the id drops them, or they expire (a timer in Output::timers).
  // Nothing is persisted, so the answer is immediate. A Prepare with
  // use_staged prepares exactly the staged ops (NO if none, or if
  // staged_ops is set and differs); a plain Prepare for the id drops them.
  // `identity` is the caller's (the adapter authenticated it): its
  // transactions' staged bytes count against staged_bytes_per_identity_max,
  // and a transaction staged by one identity takes no work from another
  // (PERMISSION_DENIED).
  absl::StatusOr<v1::StageResponse> Stage(const v1::StageRequest& req, int64_t now_ms,
                                          const std::string& identity = "");
  // Transactions holding staged (not yet prepared) work.
  size_t staged_transactions() const;
  // What happened to each queue's messages since this start, for metrics.
  struct QueueCounts {
    uint64_t enqueued = 0;  // made visible: committed, sent, or moved in as dead letters
    uint64_t delivered = 0;
    uint64_t redelivered = 0;    // of those, delivered before
    uint64_t acked = 0;          // plain acks and acks committed in transactions
    uint64_t dead_lettered = 0;  // moved out to the dead-letter queue
  };
  std::vector<std::pair<std::string, QueueCounts>> queue_counts() const;
  // The prepared transactions here, for metrics.
  struct PreparedGauges {
    uint64_t prepared = 0;           // PREPARED and durable
    uint64_t precommitted = 0;       // PRECOMMITTED (3PC)
    uint64_t in_doubt = 0;           // of those, the ones asking for their outcome
    int64_t oldest_in_doubt_ms = 0;  // prepared_unix_ms of the oldest in doubt; 0: none
  };
  PreparedGauges prepared_gauges() const;

  Output TakeOutput();

 private:
  std::unique_ptr<Node> node_;
};

}  // namespace atomq::participant
