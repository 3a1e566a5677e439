// The coordinator's protocol state machine: pure, single-threaded, no I/O,
// no threads, no clock. Every input carries `now_ms`; every effect is an
// Output the adapter carries out (persist, send, set a timer, reply).
//
// Durability is enforced here, not in the adapter: a message or reply that
// depends on a record is emitted only after OnPersisted() reported that
// record durable. So the adapter may carry out every output at once, in any
// order.
//
// Protocol (docs/design.md section 3):
//   2PC, presumed abort: Prepare to all -> all YES/READ_ONLY -> persist COMMIT
//   (forced) -> reply to the client once every participant acknowledged the
//   commit (or at the deadline, without the missing sequences) -> Commit
//   fan-out, resent with backoff until acknowledged -> persist ENDED (lazy)
//   -> once it is durable, Forget to each participant that may keep an
//   outcome (all but READ_ONLY voters), so that it can collect it; the
//   notice leaves with the next message to that participant.
//   Any NO, failed prepare, or deadline -> ABORT: Abort is sent at once to
//   every participant that may have prepared; the ABORT record is persisted
//   and the client reply waits for it (so a retry with the same id returns the
//   same outcome).
//   3PC: after all YES, persist PRECOMMITTED (forced), send PreCommit to the
//   YES voters, resend until acknowledged; when a majority of all participants
//   acknowledged, persist COMMIT and continue as 2PC. PreCommit is ballot 0's
//   accept of COMMIT in the participants' quorum termination (Paxos): a
//   participant that promised a higher ballot refuses it, and a refusal is
//   not counted. When a majority of acks cannot come any more, after
//   Config::termination_after_ms without a decision, and at recovery of a
//   PRECOMMITTED record, the coordinator runs a termination round itself
//   (its ballots are the multiples of participants + 1, written to its log
//   before use): the value it learns, COMMIT or ABORT, is the decision. After
//   PRECOMMITTED it aborts only when a round chose ABORT.
//   Read-only voters (READ_ONLY) get no second-round message.
//   If every participant voted READ_ONLY, the transaction commits and the
//   client is answered at once, with no forced record (an ENDED record follows,
//   not waited on, so that a retry with the same id finds the outcome).
//   One phase (Config::one_phase): an Execute with a single participant
//   (2PC or 3PC) sends it one Prepare with one_phase; the participant's own
//   durable COMMITTED outcome is the decision. YES (with the sequences) ->
//   reply COMMITTED at once, ENDED written lazily, nothing forced here;
//   NO -> ABORT as above. An unknown outcome (failed RPC, deadline) is never
//   presumed aborted: Abort is sent until answered; OK -> ABORT decided,
//   FAILED_PRECONDITION (it committed) -> the Prepare is resent for the
//   sequences. Interactive Commit (use_staged) always runs 2PC/3PC.
//   Parallel commit (Config::parallel_commit; 2PC Execute with two or more
//   participants): a PREPARING record naming the participants is forced
//   beside the Prepares. Once it is durable and every participant voted YES
//   the transaction is committed (every vote is a durable PREPARED record):
//   Commit goes out and the client is answered as after a COMMITTED record,
//   with no decision write on the way; the record next written is ENDED. So
//   one forced write (the participants' prepares and this record, in
//   parallel) sits before the decision instead of two in a row. A READ_ONLY
//   vote (which leaves nothing to find), or a failed PREPARING write, falls
//   back to the COMMITTED record. An abort sends its Abort messages only
//   once the ABORT record is durable (it replaces PREPARING): an Abort
//   still on its way when the coordinator crashed could otherwise reach a
//   participant after recovery committed from everyone's PREPARED.
//   At recovery a PREPARING record means
//   "committed if every participant holds it prepared": each is asked
//   (participant QueryState, which records an unknown id ABORTED before
//   answering, so a late Prepare can never make the answer wrong); all
//   PREPARED or COMMITTED -> commit, any ABORTED -> abort. An outcome an
//   operator set while the participant was prepared (heuristic) counts as
//   its YES, so that, as with a COMMITTED record, the others commit and
//   that participant is reported mixed.

#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "atomq/v1/coordinator.pb.h"
#include "atomq/v1/participant.pb.h"
#include "atomq/v1/records.pb.h"
#include "common/plant.h"
#include "common/storage.h"

namespace atomq::coordinator {

// Values in kTxnDb (key = txn id) are v1::CoordinatorTxnRecord (EncodeRecord).
// `participants` lists every participant; `acknowledged` those that need no
// further message (acknowledged the outcome, or voted NO/READ_ONLY). Every
// abort has a non-empty `reason` and no commit has one: that is how an ENDED
// record tells its outcome.
inline constexpr char kTxnDb[] = "txn";
inline constexpr char kMetaDb[] = "meta";
// Finished transactions by time: key = decided ms (8 bytes BE) + txn id,
// empty value. Written beside every ENDED record so that records older than
// the retention window can be found and erased without a full scan.
inline constexpr char kEndedDb[] = "ended";

struct Config {
  std::string coordinator_id;       // --id
  std::string coordinator_address;  // --advertise: put in PrepareRequest
  // participant id -> address (--participants); also sent to participants
  // for cooperative termination.
  std::map<std::string, std::string> participants;
  // Participants run as groups of replicas (an address "a|b|c"): a Prepare
  // that finds one unreachable is sent again, with backoff, until the
  // votes' deadline, as its group may be electing a leader. Another
  // participant found unreachable aborts the transaction at once.
  std::set<std::string> participant_groups;
  uint64_t boot_count = 1;                     // minted ids: <id>-<boot_count>-<counter>
  v1::Protocol default_protocol = v1::TWO_PC;  // --default_protocol
  uint32_t txn_timeout_ms = 5000;              // --txn_timeout_ms: votes deadline default
  uint32_t txn_timeout_ms_max = 60000;         // --txn_timeout_ms_max
  uint32_t ops_per_txn_max = 1000;             // --ops_per_txn_max
  uint32_t payload_bytes_max = 1 << 20;        // --payload_bytes_max: payload + headers, per op
  uint32_t headers_max = 64;                   // --headers_max (per op)
  uint32_t header_bytes_max = 64 << 10;        // --header_bytes_max: header keys + values, per op
  uint64_t txn_bytes_max = 64 << 20;           // --txn_bytes_max: all enqueues of one Execute
  uint32_t txns_in_flight_max = 10000;         // --txns_in_flight_max (undecided + unreplied)
  // --txns_unended_max: transactions in memory that have not ENDED (in
  // flight, or decided and waiting for a participant's acknowledgement).
  uint32_t txns_unended_max = 100000;
  uint32_t resend_initial_ms = 50;       // --resend_initial_ms: backoff start
  uint32_t resend_max_ms = 2000;         // --resend_max_ms: backoff cap
  uint32_t finished_cache_max = 100000;  // --finished_cache_max: ended txns kept in memory
  // --termination_after_ms: 3PC, PRECOMMITTED this long without a decision:
  // run a termination round (and again every this long).
  uint32_t termination_after_ms = 2000;
  // --one_phase: an Execute with a single participant commits in one round
  // (PrepareRequest.one_phase; see the protocol notes above). false: 2PC/3PC
  // as for several participants.
  bool one_phase = true;
  // --parallel_commit: 2PC Executes with several participants force their
  // record beside the prepares (see the protocol notes above).
  bool parallel_commit = true;
  // --retention_ms: an ENDED record is erased this long after its decision
  // (CollectRecords), so that retries within it still get the outcome.
  uint64_t retention_ms = 600000;
  // TEST ONLY (tests/sim plants a known bug to show its checker catches
  // it; common/plant.h says what each does). kNone everywhere else.
  Plant plant = Plant::kNone;
};

// Read-only access to what is durable, for ids no longer in memory
// (raft's Storage: the core may read, never write).
class DurableView {
 public:
  virtual ~DurableView() = default;
  virtual std::optional<v1::CoordinatorTxnRecord> FindTxn(const std::string& txn_id) const = 0;
};

// Adapter-chosen handle of a pending client call or query.
using RequestId = uint64_t;

// kPromise/kAccept: 3PC termination round messages (participant.proto).
// kForget: the transaction's ENDED record is durable, so the participant may
// erase its outcome after its retention window (BatchItem.forget). Held until
// the core sends that participant another Batch-carried message (kPrepare,
// kPreCommit, kCommit or kAbort) and output beside it; sent once, never
// resent, and its reply needs no report: a lost one only means that
// participant keeps the outcome.
// kQuery: recovery of a PREPARING record asks the participant what it holds
// (ParticipantTxn.QueryState, one RPC each); report OnQueryReply.
enum class MsgType { kPrepare, kPreCommit, kCommit, kAbort, kPromise, kAccept, kForget, kQuery };

struct OutMessage {
  std::string participant;  // id
  std::string address;      // from Config::participants
  MsgType type;
  std::string txn_id;
  v1::PrepareRequest prepare;                      // kPrepare only
  uint64_t ballot = 0;                             // kPromise, kAccept
  v1::TxnState value = v1::TXN_STATE_UNSPECIFIED;  // kAccept
};

struct TimerRequest {
  uint64_t timer_id;
  int64_t at_ms;  // call OnTimer(timer_id, ...) at or after this time
};

struct ExecuteReply {
  RequestId request;
  absl::Status status;  // non-OK: nothing was done (validation, limits)
  v1::ExecuteResponse response;
};

struct StateReply {
  RequestId request;
  v1::TxnState state;
};

struct Output {
  std::vector<Batch> persist;    // submit; report OnPersisted(batch.token)
  std::vector<OutMessage> send;  // send; report the matching On*Reply
  std::vector<TimerRequest> timers;
  std::vector<ExecuteReply> replies;
  std::vector<StateReply> state_replies;
  std::vector<std::string> log;  // one line per decision

  bool empty() const {
    return persist.empty() && send.empty() && timers.empty() && replies.empty() &&
           state_replies.empty() && log.empty();
  }
};

class CoordinatorCore {
 public:
  CoordinatorCore(Config config, const DurableView* view);

  // Once, before any other input: every record found in the "txn" database.
  // COMMIT without END -> resend Commit; ABORT without END -> resend Abort;
  // PRECOMMITTED -> a termination round decides (never a blind commit);
  // PREPARING (parallel commit) -> every participant is asked.
  void Recover(std::vector<v1::CoordinatorTxnRecord> records, int64_t now_ms);

  // A client's Execute. The reply comes in Output::replies.
  void Execute(RequestId request, const v1::ExecuteRequest& req, int64_t now_ms);

  // Replies from participants. A non-OK status is a failed RPC (unreachable,
  // deadline) or an error status from the participant.
  void OnPrepareReply(const std::string& txn_id, const std::string& participant,
                      const absl::StatusOr<v1::PrepareResponse>& reply, int64_t now_ms);
  void OnPreCommitReply(const std::string& txn_id, const std::string& participant,
                        const absl::Status& status, int64_t now_ms);
  void OnCommitReply(const std::string& txn_id, const std::string& participant,
                     const absl::StatusOr<v1::CommitResponse>& reply, int64_t now_ms);
  void OnAbortReply(const std::string& txn_id, const std::string& participant,
                    const absl::Status& status, int64_t now_ms);
  // A participant's answer to kQuery: PREPARED, COMMITTED, ABORTED, ...
  void OnQueryReply(const std::string& txn_id, const std::string& participant,
                    const absl::StatusOr<v1::QueryStateResponse>& reply, int64_t now_ms);

  // Answers to kPromise / kAccept messages (`ballot` as sent).
  void OnPromiseReply(const std::string& txn_id, const std::string& participant, uint64_t ballot,
                      const absl::StatusOr<v1::PromiseResponse>& reply, int64_t now_ms);
  void OnAcceptReply(const std::string& txn_id, const std::string& participant, uint64_t ballot,
                     const absl::StatusOr<v1::AcceptResponse>& reply, int64_t now_ms);

  void OnTimer(uint64_t timer_id, int64_t now_ms);
  // `status` non-OK: the batch is not on disk (e.g. disk full).
  void OnPersisted(uint64_t token, const absl::Status& status, int64_t now_ms);

  // A participant asks for the outcome. Unknown ids are presumed aborted: an
  // ABORT record is persisted first, so a later Execute with that id cannot
  // commit. Undecided ids answer PREPARING.
  void QueryState(RequestId request, const std::string& txn_id, int64_t now_ms);

  // --- interactive transactions (coordinator.proto: Begin, Commit, Rollback) ---
  // Opens a transaction in memory only and sets its expiry timer; the answer
  // is immediate (nothing is persisted). Counts toward txns_in_flight_max.
  // At expiry it is recorded ABORTED (not forced).
  absl::StatusOr<v1::BeginTxnResponse> Begin(const v1::BeginTxnRequest& req, int64_t now_ms);
  // Prepares the named participants with use_staged and runs the protocol as
  // for Execute; the reply (Output::replies) has `staged` instead of
  // `results`. An id not open (expired, unknown, lost in a restart) aborts,
  // with Abort sent to the named participants so they drop staged work.
  void Commit(RequestId request, const v1::CommitTxnRequest& req, int64_t now_ms);
  // Aborts an open or still preparing transaction; the reply (an
  // ExecuteReply whose body means nothing) is OK once the abort is durable,
  // FAILED_PRECONDITION if the commit is decided.
  void Rollback(RequestId request, const v1::RollbackTxnRequest& req, int64_t now_ms);
  size_t open_transactions() const;

  // For GetTransaction / ListTransactions. NOT_FOUND if unknown.
  absl::StatusOr<v1::TransactionInfo> GetTransaction(const std::string& txn_id) const;
  // One page of the in-memory transactions in id order: those in
  // req.states (empty = all but ENDED) after req.page_token, at most
  // req.limit (0 or above `limit_max`: `limit_max`, which is > 0);
  // next_page_token is set when more match. INVALID_ARGUMENT for a page
  // token that is not a transaction id.
  absl::StatusOr<v1::ListTransactionsResponse> ListTransactions(
      const v1::ListTransactionsRequest& req, uint32_t limit_max) const;

  // --- collection of finished records (kEndedDb) ---
  // `keys`: kEndedDb keys in key order, as the adapter scanned them (at most
  // --gc_batch_max). Each one older than Config::retention_ms is erased in
  // one lazy batch (Output::persist, reported through OnPersisted) together
  // with its transaction's record, unless that record is newer than the key
  // (the id ran again) or the id is running in memory. Keys still inside the
  // window, and keys of a batch in flight, are skipped. A finished
  // transaction held in memory stays there (the cache answers as before).
  // Returns how many keys it took.
  size_t CollectRecords(const std::vector<std::string>& keys, int64_t now_ms);
  // Transaction records erased by CollectRecords batches that are durable.
  uint64_t records_erased() const;

  size_t in_flight() const;

  // Everything produced since the last call.
  Output TakeOutput();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;

 public:
  ~CoordinatorCore();
};

}  // namespace atomq::coordinator
