// Batch bookkeeping: what each batch handed to the adapter is for, until
// OnPersisted reports it. One typed record per kind of batch, in one token ->
// record map (Node::batches_), dispatched by Node::OnPersisted.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "atomq/v1/participant.pb.h"
#include "atomq/v1/records.pb.h"
#include "common/codec.h"
#include "common/storage.h"
#include "participant/core/participant_core.h"

namespace atomq::participant {

// What a request waiting for a batch is answered with.
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
  kSend,
  kPurge
};

struct Waiter {
  ReplyKind kind;
  RequestId request;
};

inline Write Put(const char* db, std::string key, const google::protobuf::MessageLite& m) {
  return Write{db, std::move(key), EncodeRecord(m), false};
}
inline Write Erase(const char* db, std::string key) {
  return Write{db, std::move(key), std::string(), true};
}

// Requests answered once the batch is reported.
struct Waiting {
  std::vector<Waiter> waiters;
};

// --- a transaction's batch (Txn::batch: at most one in flight per id) ---
// Its PREPARED record.
struct PrepareBatch : Waiting {
  std::string txn_id;
};
// Its PRECOMMITTED record (ballot 0's accept of COMMIT).
struct PreCommitBatch : Waiting {
  std::string txn_id;
};
// An operator's Resolve riding on a commit or abort: answered once durable.
struct Resolution {
  RequestId request = 0;
  v1::HeuristicOutcome heuristic;
};
// Its messages, acks and COMMITTED outcome; the PREPARED record goes.
struct CommitBatch : Waiting {
  std::string txn_id;
  std::string settled_by;  // in-doubt resolution: who told us
  std::optional<Resolution> resolution;
};
// Its ABORTED outcome; the PREPARED record goes.
struct AbortBatch : Waiting {
  std::string txn_id;
  std::string settled_by;
  std::optional<Resolution> resolution;
};
// 3PC termination: its PREPARED record with a new promised/accepted/proposed
// ballot.
struct BallotBatch : Waiting {
  std::string txn_id;
  uint64_t lead_ballot = 0;  // a termination round this node leads, begun once durable
};
// A one-phase Prepare's commit: messages, acks and COMMITTED outcome.
struct OnePhaseBatch : Waiting {
  std::string txn_id;
  std::string settled_by;
};

// --- outcomes ---
// An ABORTED outcome for an id not prepared here (presumed abort, or a
// one-phase NO).
struct PresumedAbortBatch : Waiting {
  std::string txn_id;
  std::string reason;  // empty: never prepared here
};
// A heuristic outcome that learnt of a conflicting one (Resolve).
struct HeuristicConflictBatch {
  std::string txn_id;
  v1::OutcomeRecord record;  // what it writes
};
// kForgettableDb entries (Forget); later notices join it while unsent.
struct ForgettableBatch {
  std::string txn_id;  // the first notice
};
// kForgettableDb entries and their outcomes erased (CollectOutcomes).
struct CollectBatch {
  std::vector<std::string> keys;
  std::vector<std::string> txn_ids;
};

// --- queues ---
struct CreateQueueBatch : Waiting {
  std::string name;
};
struct DeleteQueueBatch : Waiting {
  std::string name;
  uint64_t queue_id = 0;
};
// Queue.PurgeQueue: the ready messages in memory (held, ack_token) and the
// backlog on disk, erased; answered with their count once durable.
struct PurgeQueueBatch : Waiting {
  uint64_t queue_id = 0;
  std::vector<uint64_t> in_memory;  // sequences
  uint64_t on_disk = 0;             // the backlog's messages erased
};
// A plain Ack: the message is held (ack_token) until durable.
struct AckBatch : Waiting {
  uint64_t queue_id = 0;
  uint64_t sequence = 0;
};
// Dead-lettering: a message copied to its queue's dead-letter queue and
// erased; it is held (ack_token) in its queue until durable.
struct MoveBatch {
  uint64_t from_queue_id = 0;
  uint64_t from_sequence = 0;
  uint64_t to_queue_id = 0;
  uint64_t to_sequence = 0;
  std::optional<RequestId> nack;  // a Nack waiting for it
};
// Queue.Send: one message outside any transaction, with the requests
// waiting for it (the Send itself and duplicates that arrived meanwhile).
struct SendBatch {
  uint64_t queue_id = 0;
  uint64_t sequence = 0;
  std::string producer_key;  // empty: no deduplication
  uint64_t producer_sequence = 0;
  std::vector<std::pair<RequestId, v1::SendResponse>> waits;
};

using BatchRecord = std::variant<PrepareBatch, PreCommitBatch, CommitBatch, AbortBatch, BallotBatch,
                                 OnePhaseBatch, PresumedAbortBatch, HeuristicConflictBatch,
                                 ForgettableBatch, CollectBatch, CreateQueueBatch, DeleteQueueBatch,
                                 AckBatch, MoveBatch, SendBatch, PurgeQueueBatch>;

}  // namespace atomq::participant
