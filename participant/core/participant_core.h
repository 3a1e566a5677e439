// The participant's protocol state machine and queue model: pure,
// single-threaded, no I/O, no threads, no clock (DESIGN.md sections 2-5).
//
// It holds queue metadata in memory (names, ids, next sequence numbers, the
// sequence numbers of stored messages, leases); message payloads live only in
// storage, and the adapter reads them by MessageKey() when it delivers.
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
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "atomq/v1/participant.pb.h"
#include "atomq/v1/records.pb.h"
#include "common/storage.h"

namespace atomq::participant {

inline constexpr char kQueuesDb[] = "queues";
inline constexpr char kMessagesDb[] = "messages";
inline constexpr char kPreparedDb[] = "prepared";
inline constexpr char kOutcomesDb[] = "outcomes";
inline constexpr char kDedupDb[] = "dedup";
inline constexpr char kMetaDb[] = "meta";

struct Config {
  std::string participant_id;            // --id
  uint64_t boot_count = 1;               // lease tokens carry it
  uint32_t ops_per_txn_max = 1000;       // --ops_per_txn_max (ops per prepare)
  uint32_t payload_bytes_max = 1 << 20;  // --payload_bytes_max
  uint32_t headers_max = 64;             // --headers_max
  uint32_t prepared_max = 10000;         // --prepared_max: in-doubt + prepared at once
  uint32_t queues_max = 10000;           // --queues_max
  uint32_t lease_ms = 30000;             // --lease_ms: default lease
  uint32_t lease_ms_max = 3600000;       // --lease_ms_max
  uint32_t receive_max = 1000;           // --receive_max: messages per Receive
  uint32_t in_doubt_after_ms = 2000;     // --in_doubt_after_ms
  uint32_t resend_initial_ms = 100;      // --resend_initial_ms
  uint32_t resend_max_ms = 5000;         // --resend_max_ms
  uint32_t outcome_cache_max = 100000;   // --outcome_cache_max: outcomes kept in memory
};

// Read-only access to what is durable, for transactions no longer in memory.
class DurableView {
 public:
  virtual ~DurableView() = default;
  virtual std::optional<v1::OutcomeRecord> FindOutcome(const std::string& txn_id) const = 0;
};

// Everything found in storage at start.
struct RecoveredState {
  std::optional<v1::MetaRecord> meta;
  std::vector<v1::QueueRecord> queues;
  // (queue id, sequence) of every stored message, in key order.
  std::vector<std::pair<uint64_t, uint64_t>> messages;
  std::vector<v1::PreparedRecord> prepared;
};

using RequestId = uint64_t;

// A query the adapter sends: QueryState(txn_id) to `address`.
struct OutQuery {
  std::string txn_id;
  std::string target;   // participant id, or the coordinator id
  std::string address;
  bool to_coordinator = false;
};

struct TimerRequest {
  uint64_t timer_id;
  int64_t at_ms;
};

// The reply to a request, typed by what was asked.
using ReplyBody = std::variant<v1::PrepareResponse, v1::PreCommitResponse, v1::CommitResponse,
                               v1::AbortResponse, v1::QueryStateResponse,
                               v1::CreateQueueResponse, v1::DeleteQueueResponse,
                               v1::AckResponse>;

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

struct Output {
  // Submit in this order, across calls: a later batch may rewrite a key an
  // earlier one wrote (a queue's next_sequence only grows batch by batch).
  // Every token is reported once through OnPersisted.
  std::vector<Batch> persist;
  std::vector<OutQuery> queries;  // report OnQueryReply
  std::vector<TimerRequest> timers;
  std::vector<Reply> replies;
  std::vector<std::string> log;   // one line per outcome

  bool empty() const {
    return persist.empty() && queries.empty() && timers.empty() && replies.empty() &&
           log.empty();
  }
};

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
  // transaction. NO with a reason otherwise. A repeated Prepare with the same
  // ops answers as the first; with other ops it is a NO.
  void Prepare(RequestId request, const v1::PrepareRequest& req, int64_t now_ms);
  void PreCommit(RequestId request, const std::string& txn_id, int64_t now_ms);
  void Commit(RequestId request, const std::string& txn_id, int64_t now_ms);
  void Abort(RequestId request, const std::string& txn_id, int64_t now_ms);
  // From a peer or the coordinator. Unknown ids answer STATE_ABORTED after an
  // ABORTED outcome is persisted (this node will then vote NO).
  void QueryState(RequestId request, const std::string& txn_id, int64_t now_ms);

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
  // leases return their messages to ready first. NOT_FOUND for a missing
  // queue; INVALID_ARGUMENT for limits.
  absl::StatusOr<std::vector<Lease>> Receive(const std::string& queue, uint32_t max_messages,
                                             uint32_t lease_ms, int64_t now_ms);
  // FAILED_PRECONDITION when the lease is not current or the message is
  // pinned by a prepared transaction; the reply waits for the deletion.
  void Ack(RequestId request, const std::string& queue, uint64_t sequence,
           const std::string& lease_token, int64_t now_ms);

  // Prepared and in-doubt transactions, for the CLI.
  std::vector<v1::ParticipantTxnInfo> ListTransactions() const;

  Output TakeOutput();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace atomq::participant
