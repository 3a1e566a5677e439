// The participant's protocol node behind the ParticipantCore facade: the
// transaction transitions that span its components (queue model, producers,
// outcome store, staged work). All of its state is declared here; its
// methods are defined in the file named for their responsibility (each
// group below names it).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/op_limits.h"
#include "participant/core/batches.h"
#include "participant/core/outcomes.h"
#include "participant/core/participant_core.h"
#include "participant/core/producers.h"
#include "participant/core/queue_model.h"
#include "participant/core/schema.h"
#include "participant/core/staging.h"
#include "participant/core/termination.h"
#include "participant/core/transactions.h"

namespace atomq::participant {

// "1 ack", "2 acks".
inline std::string Plural(uint64_t n, const char* word) {
  return absl::StrCat(n, " ", word, n == 1 ? "" : "s");
}

class Node {
 public:
  Node(Config config, const DurableView* view);

  // --- node.cc: replies and plumbing ---
  void RequireRecovered() const;
  Output TakeOutput();
  void Answer(RequestId r, absl::Status s, ReplyBody body);
  static ReplyBody EmptyBody(ReplyKind k);
  void Fail(const Waiter& w, absl::Status s);
  void Vote(RequestId r, v1::Vote vote, std::string reason = "");
  void AnswerState(RequestId r, v1::TxnState state, bool heuristic = false);
  void AnswerSequences(RequestId r, const google::protobuf::RepeatedField<uint64_t>& seqs);
  void Log(std::string line);
  // Fails `w` unless `id` is a valid txn id.
  absl::Status ValidateId(const Waiter& w, const std::string& id);
  uint64_t NewTimerId();

  // --- batches.cc: batch bookkeeping ---
  uint64_t Submit(std::vector<Write> writes, BatchRecord record);
  // The requests waiting for batch `token`, which must be of a kind that
  // answers requests.
  std::vector<Waiter>& WaitersOf(uint64_t token);
  // The batch in flight for `t` when it is a B, else nullptr.
  template <typename B>
  B* TxnBatch(const Txn& t) {
    return t.batch == 0 ? nullptr : std::get_if<B>(&batches_.at(t.batch));
  }
  // The waiters of the batch in flight for `t` when it is a B (a call
  // may join them), else nullptr.
  template <typename B>
  std::vector<Waiter>* JoinableWaiters(const Txn& t) {
    B* b = TxnBatch<B>(t);
    return b == nullptr ? nullptr : &b->waiters;
  }
  void OnPersisted(uint64_t token, const absl::Status& status, int64_t now_ms);
  // One per kind of BatchRecord, dispatched by OnPersisted.
  void Reported(uint64_t token, PrepareBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, PreCommitBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, CommitBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, AbortBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, BallotBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, OnePhaseBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, PresumedAbortBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, HeuristicConflictBatch& b, const absl::Status& status,
                int64_t now_ms);
  void Reported(uint64_t token, ForgettableBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, CollectBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, CreateQueueBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, DeleteQueueBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, AckBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, MoveBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, SendBatch& b, const absl::Status& status, int64_t now_ms);
  void Reported(uint64_t token, PurgeQueueBatch& b, const absl::Status& status, int64_t now_ms);
  // Ends the batch in flight of transaction `id`, applies `done` to it and
  // replays the calls deferred behind it (batches.cc only).
  template <typename Done>
  void ReportTxn(uint64_t token, const std::string& id, int64_t now_ms, Done done);

  // --- queue_model.cc: receive, ack, leases, pins ---
  absl::StatusOr<std::vector<Lease>> Receive(const std::string& name, uint32_t max_messages,
                                             uint32_t lease_ms, int64_t now_ms);
  absl::StatusOr<std::vector<Lease>> Peek(const v1::ReceiveRequest& req) const;
  // The queue a Receive or peek of `max_messages` (0 = 1, then capped at
  // --receive_max) reads, or why not.
  absl::StatusOr<const Queue*> ReceivableQueue(const std::string& name,
                                               uint32_t* max_messages) const;
  // The message `seq` (named `msg`) of `q` under the lease `token`, or why
  // an Ack or Nack with that token cannot touch it.
  static absl::StatusOr<Message*> HeldLease(Queue& q, const std::string& msg, uint64_t seq,
                                            const std::string& token);
  static absl::Status NotCurrentLease(const std::string& token, const std::string& msg);
  void Ack(RequestId r, const std::string& name, uint64_t seq, const std::string& token,
           int64_t now_ms);
  void AckDone(const AckBatch& b, const absl::Status& status, int64_t now_ms);
  // Expired leases: back to ready, or to the dead-letter queue once the
  // message reached max_deliveries.
  void ExpireQueueLeases(Queue& q, int64_t now_ms);
  void ExpireAllLeases(int64_t now_ms);
  // Pins acked messages, counts pending enqueues and queue references of a
  // prepared transaction; undone by Unpin (or by the commit).
  void Pin(Txn& t);
  void Unpin(Txn& t, int64_t now_ms);

  // --- queue_admin.cc: create, delete, dead-lettering, nack ---
  void CreateQueue(RequestId r, const v1::CreateQueueRequest& req, int64_t now_ms);
  void CreateDone(const CreateQueueBatch& b, const absl::Status& status);
  void DeleteQueue(RequestId r, const std::string& name, int64_t now_ms);
  void DeleteDone(const DeleteQueueBatch& b, const absl::Status& status);
  // --- queue_purge.cc ---
  void PurgeQueue(RequestId r, const std::string& name);
  void PurgeDone(uint64_t token, const PurgeQueueBatch& b, const absl::Status& status,
                 int64_t now_ms);
  absl::Status ValidateQueueOptions(const v1::CreateQueueRequest& req) const;
  absl::Status CheckDeletable(const Queue& q) const;
  // Copies a free message of `q` to its dead-letter queue and erases it, in
  // one batch; the message is held until the batch is reported. False (the
  // caller keeps the message) when there is no dead-letter queue or the
  // payload cannot be read.
  bool StartMove(Queue& q, uint64_t seq, const std::string& reason, std::optional<RequestId> nack,
                 int64_t now_ms);
  void MoveDone(uint64_t token, const MoveBatch& b, const absl::Status& status, int64_t now_ms);
  void Nack(RequestId r, const v1::NackRequest& req, int64_t now_ms);

  // --- send.cc: Queue.Send ---
  void SendMessage(RequestId r, const v1::SendRequest& req, int64_t now_ms);
  // Why `req` cannot be sent, or OK with its queue in `*q`.
  absl::Status ValidateSend(const v1::SendRequest& req, Queue** q);
  // True when `req` repeats a Send of producer `key`: answered (or waiting
  // for the original's batch).
  bool AnswerDuplicate(RequestId r, const v1::SendRequest& req, const std::string& key);
  void SendDone(uint64_t token, SendBatch& b, const absl::Status& status);

  // --- transactions.cc: the transaction table ---
  void EraseTxn(const std::string& id);
  absl::Status ValidatePrepare(const v1::PrepareRequest& req) const;
  // Empty when every op can be applied; else the reason for a NO.
  std::string CheckOps(const v1::PrepareRequest& req, int64_t now_ms);
  // Why `req` is too old to prepare (PresumeAbort says why), or empty.
  std::string TooOld(const v1::PrepareRequest& req, int64_t now_ms) const;
  void Prepare(RequestId r, const v1::PrepareRequest& req, int64_t now_ms);
  // True when `id` is prepared or settled here already: answered as the
  // first Prepare was (a NO when `digest` says other ops), or waiting for
  // its PREPARED record. No digest: a Prepare with use_staged.
  bool AnswerRepeatedPrepare(RequestId r, const std::string& id, std::optional<uint64_t> digest);
  // RESOURCE_EXHAUSTED when --prepared_max transactions are in the table,
  // or when `bytes` more messages would pass --prepared_bytes_max.
  absl::Status CheckPreparedRoom(uint64_t bytes) const;
  // A new entry for `req` with `ops`, PREPARED in memory only.
  Txn& AddTxn(const v1::PrepareRequest& req, google::protobuf::RepeatedPtrField<v1::Op> ops,
              int64_t now_ms);
  // Pins what `t` holds and submits its PREPARED record; `w` waits for it.
  void StartPrepare(const Waiter& w, Txn& t);
  // True when the call was queued or joined because a batch for `t` is in
  // flight; `join` are the waiters of that batch it may join (nullptr:
  // queued).
  bool DeferIfBusy(Txn& t, std::vector<Waiter>* join, std::optional<Waiter> w, Call call,
                   const std::string& by);
  void PreCommit(RequestId r, const std::string& id, int64_t now_ms);
  // `w` empty: an in-doubt resolution learnt from `by`, nobody to answer.
  void CommitTxn(std::optional<Waiter> w, const std::string& id, int64_t now_ms,
                 const std::string& by);
  static v1::OutcomeRecord DecidedOutcome(const Txn& t, v1::TxnState state, int64_t now_ms);
  void StartCommit(Txn& t, std::optional<Waiter> w, int64_t now_ms, const std::string& by);
  void AbortTxn(std::optional<Waiter> w, const std::string& id, int64_t now_ms,
                const std::string& by);
  // An ABORTED outcome, answered once it is durable.
  void AnswerAborted(const Waiter& w, const CachedOutcome& o);
  // Presumed abort made durable, so that a Prepare arriving later votes NO.
  void PresumeAbort(const Waiter& w, const std::string& id, int64_t now_ms);
  void QueryState(RequestId r, const std::string& id, int64_t now_ms);
  void Replay(std::vector<Deferred> deferred, const std::string& id, int64_t now_ms);
  void PrepareDone(Txn& t, const PrepareBatch& b, const absl::Status& status, int64_t now_ms);
  void PreCommitDone(Txn& t, const PreCommitBatch& b, const absl::Status& status);
  std::string Summary(const Txn& t, const std::string& by) const;
  void CommitDone(Txn& t, const std::string& settled_by, const std::vector<Waiter>& waiters,
                  const absl::Status& status);
  void AbortDone(Txn& t, const AbortBatch& b, const absl::Status& status, int64_t now_ms);
  void PresumedAbortDone(uint64_t token, const PresumedAbortBatch& b, const absl::Status& status);
  // --- listing.cc ---
  absl::StatusOr<v1::ListParticipantTxnsResponse> ListTransactions(
      const v1::ListParticipantTxnsRequest& req, uint32_t limit_max, uint64_t bytes_max) const;
  v1::ParticipantTxnInfo InfoOf(const std::string& id, const Txn& t, bool payloads) const;

  // --- in_doubt.cc: asking the coordinator and the peers ---
  void ArmTimer(Txn& t, int64_t at_ms);
  void QueryCoordinator(Txn& t);
  void QueryPeers(const Txn& t);
  void OnTimer(uint64_t timer_id, int64_t now_ms);
  void OnQueryReply(const std::string& id, const std::string& target,
                    const absl::StatusOr<v1::QueryStateResponse>& reply, int64_t now_ms);

  // --- one_phase.cc: one-phase commit (PrepareRequest.one_phase) ---
  static std::string OnePhaseOnly(const std::string& id);
  void VoteCommitted(RequestId r, const google::protobuf::RepeatedField<uint64_t>& seqs);
  void PrepareOnePhase(RequestId r, const v1::PrepareRequest& req, int64_t now_ms);
  // A one-phase NO, recorded before it is told.
  void OnePhaseNo(const Waiter& w, const std::string& id, uint64_t digest, std::string reason,
                  int64_t now_ms);
  void OnePhaseDone(Txn& t, const OnePhaseBatch& b, const absl::Status& status, int64_t now_ms);

  // --- termination.cc: 3PC quorum termination ---
  // --payload_bytes_max, --headers_max, --header_bytes_max, --txn_bytes_max.
  MessageLimits message_limits() const {
    return {config_.payload_bytes_max, config_.headers_max, config_.header_bytes_max,
            config_.txn_bytes_max};
  }
  static absl::Status NotThreePc(const std::string& id);
  void AnswerPromise(RequestId r, const Txn& t, bool promised);
  void AnswerAccept(RequestId r, v1::TxnState state, bool accepted, uint64_t promised);
  // A Promise or Accept answered by a node that decided `outcome` (durable).
  void AnswerDecided(const Waiter& w, v1::TxnState outcome);
  // Ballot calls wait for the transaction's batch in flight, like the others.
  bool DeferBallot(Txn& t, Call call, RequestId r, uint64_t ballot, v1::TxnState value);
  void WriteBallot(Txn& t, v1::PreparedRecord rec, std::optional<Waiter> w, uint64_t lead);
  void BallotDone(Txn& t, const BallotBatch& b, const absl::Status& status, int64_t now_ms);
  void Promise(RequestId r, const std::string& id, uint64_t ballot, int64_t now_ms);
  void Accept(RequestId r, const std::string& id, uint64_t ballot, v1::TxnState value,
              int64_t now_ms);
  // Accept for an id not prepared here.
  void AcceptSettled(const Waiter& w, const std::string& id, uint64_t ballot, v1::TxnState value,
                     int64_t now_ms);
  // Writes a ballot above every ballot seen, in this node's ballot space,
  // with its own promise; the round begins once that is durable.
  void StartRound(Txn& t, int64_t now_ms);
  void BeginRound(Txn& t, uint64_t ballot, int64_t now_ms);
  void ProposeRound(Txn& t);
  Txn* RoundOf(const std::string& id, const std::string& from, uint64_t ballot, bool accepting);
  void OnPromiseReply(const std::string& id, const std::string& from, uint64_t ballot,
                      const absl::StatusOr<v1::PromiseResponse>& reply, int64_t now_ms);
  void OnAcceptReply(const std::string& id, const std::string& from, uint64_t ballot,
                     const absl::StatusOr<v1::AcceptResponse>& reply, int64_t now_ms);
  // `value` is chosen: settle here and tell the others.
  void DecideRound(Txn& t, v1::TxnState value, const std::string& by, int64_t now_ms);
  // A 3PC round this node leads whose messages are not all answered yet.
  bool RoundUnderWay(const Txn& t, int64_t now_ms) const;

  // --- staging.cc: interactive staged work ---
  absl::StatusOr<v1::StageResponse> Stage(const v1::StageRequest& req, int64_t now_ms,
                                          const std::string& identity);
  // The bytes `req` stages, or why its ops are malformed.
  absl::StatusOr<uint64_t> ValidateStageOps(const v1::StageRequest& req) const;
  // Why `req` cannot be staged now (batch order, limits, its ops), or OK;
  // `*retry` is set when it repeats a batch applied already.
  absl::Status CheckStageable(const v1::StageRequest& req, uint64_t bytes, int64_t now_ms,
                              const std::string& identity, const StagedTxn** retry);
  // Whether `identity` may add `bytes` to `existing` (null: a new transaction).
  absl::Status CheckStagedShare(const StagedTxn* existing, const std::string& id, uint64_t bytes,
                                const std::string& identity) const;
  void PinStagedOp(const std::string& id, const v1::Op& op);
  // Undoes PinStagedOp for every op; `restore` puts acked messages back
  // where their leases say (else the caller pins them again at once).
  void ReleaseStaged(const std::string& id, StagedTxn& st, bool restore, int64_t now_ms);
  void DropStaged(const std::string& id, int64_t now_ms, const char* why);
  bool OnStageTimer(uint64_t timer_id, int64_t now_ms);
  static v1::StageResponse StagedResponse(const StagedTxn& st);
  // A Prepare with use_staged: prepares exactly the staged ops.
  void PrepareStaged(RequestId r, const v1::PrepareRequest& req, int64_t now_ms);
  size_t staged_transactions() const;
  ParticipantCore::PreparedGauges prepared_gauges() const;
  std::vector<std::pair<std::string, ParticipantCore::QueueCounts>> queue_counts() const;

  // --- resolution.cc: operator resolution, heuristic outcomes ---
  static const char* Word(v1::TxnState s);
  void ResolveReply(RequestId r, absl::Status s, const v1::OutcomeRecord* o = nullptr);
  void Resolve(RequestId r, const v1::ResolveRequest& req, int64_t now_ms,
               const std::string& identity);
  // Why a prepared `t` cannot be resolved now, or OK.
  absl::Status CheckResolvable(const Txn& t, int64_t now_ms) const;
  // Marks the outcome of the batch just submitted for `t` heuristic, and
  // keeps the mark in kHeuristicDb too, in the same batch.
  void MarkHeuristic(Txn& t, const v1::HeuristicOutcome& h);
  // Resolve for an id not prepared here: settled, staged only, or unknown.
  void ResolveNotPrepared(RequestId r, const std::string& id, v1::TxnState outcome);
  void ResolveDone(std::optional<Resolution>& resolution, const absl::Status& status);
  // A heuristic outcome told otherwise by `by`: it stays; the first
  // conflict is recorded (durably) for the operator to repair by hand.
  void HeuristicMixed(const CachedOutcome& o, v1::TxnState other, const std::string& by,
                      int64_t now_ms);
  void HeuristicDone(const HeuristicConflictBatch& b, const absl::Status& status);
  // A QueryState answer after the transaction was settled here.
  void HeuristicQueryReply(const std::string& id, const std::string& target,
                           const absl::StatusOr<v1::QueryStateResponse>& reply, int64_t now_ms);
  std::vector<v1::HeuristicOutcome> HeuristicOutcomes() const;

  // --- outcomes.cc: outcome collection ---
  void Forget(const std::string& id, int64_t now_ms);
  // Whether the outcome of `id` may go with a forgettable entry made at `at_ms`.
  bool Collectable(const std::string& id, int64_t at_ms) const;
  size_t CollectOutcomes(const std::vector<std::string>& keys, int64_t now_ms);
  void SubmitCollect(std::vector<Write> writes, std::vector<std::string> keys,
                     std::vector<std::string> ids);
  void CollectDone(const CollectBatch& b, const absl::Status& status);
  // TEST ONLY ("forget-before-end"): the bug the simulator's checker must
  // catch, forgetting a commit with nobody's leave.
  void PlantForget(const std::string& id);
  uint64_t outcomes_erased() const;

  // --- recovery.cc ---
  void Recover(RecoveredState state, int64_t now_ms);
  // A recovered transaction's acked messages, from the backlog on disk into
  // memory, for Pin (those gone stay gone: the commit erases nothing).
  void LoadAcked(const Txn& t);

  std::vector<v1::QueueInfo> ListQueues() const;

 private:
  const Config config_;
  const DurableView* const view_;
  bool recovered_ = false;
  Output out_;
  uint64_t next_token_ = 1;
  uint64_t next_timer_id_ = 1;
  QueueModel queues_;
  Producers producers_;
  OutcomeStore outcomes_;
  StagedWork staged_;
  std::map<std::string, Txn> txns_;
  uint64_t prepared_bytes_ = 0;              // Txn::bytes of every entry of txns_
  std::map<uint64_t, std::string> timers_;   // in-doubt timer id -> txn id
  std::map<uint64_t, BatchRecord> batches_;  // token -> a batch handed out, not yet reported
  std::map<std::string, v1::HeuristicOutcome> heuristics_;  // durable ones, by txn id
};

}  // namespace atomq::participant
