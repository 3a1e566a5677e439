// The transaction table's entries: a transaction prepared here (or being
// committed in one phase), with what is in flight for it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "atomq/v1/participant.pb.h"
#include "atomq/v1/records.pb.h"
#include "participant/core/participant_core.h"
#include "participant/core/termination.h"

namespace atomq::participant {

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
  uint64_t ballot = 0;                             // kPromise, kAccept
  v1::TxnState value = v1::TXN_STATE_UNSPECIFIED;  // kAccept
};

struct Txn {
  v1::PreparedRecord rec;
  // Committed by a one-phase Prepare: in the table only while its one batch
  // is in flight; `rec` is never written (no PREPARED, never in doubt).
  bool one_phase = false;
  bool durable = false;  // some version of rec is on disk (the YES is given)
  uint64_t batch = 0;    // token of the batch in flight for it
  std::vector<Deferred> deferred;
  std::vector<uint64_t> sequences;  // assigned by the commit in flight
  v1::OutcomeRecord outcome;        // what the commit or abort in flight writes
  uint32_t enqueues = 0;
  uint32_t acks = 0;
  uint64_t bytes = 0;  // EnqueueBytes of its ops, counted against --prepared_bytes_max
  // In doubt.
  bool in_doubt = false;
  bool ask_peers = false;
  uint64_t timer_id = 0;
  uint32_t backoff_ms = 0;
  uint32_t preparing_streak = 0;
  // 3PC termination.
  Round round;
  v1::PreparedRecord writing;  // what the BallotBatch in flight writes
  // Dueling leaders never finish: a node that promised another leader's
  // ballot, or runs a round of its own, lets it work for resend_max_ms.
  int64_t round_started_ms = 0;
  int64_t foreign_ballot_ms = INT64_MIN / 2;
};

}  // namespace atomq::participant
