// CoordinatorCore's implementation: every member in one place; the logic
// lives in one file per responsibility, named in the sections below.
// Internal to coordinator/core.

#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "coordinator/core/coordinator_core.h"
#include "coordinator/core/txn.h"

namespace atomq::coordinator {

struct CoordinatorCore::Impl {
  // An interactive transaction between Begin and Commit/Rollback: memory
  // only (interactive.cc).
  struct OpenTxn {
    v1::Protocol protocol = v1::TWO_PC;
    uint32_t timeout_ms = 0;
    int64_t expires_ms = 0;
    uint64_t timer = 0;
  };
  using Parts = google::protobuf::RepeatedPtrField<v1::TxnParticipant>;

  Config config;
  const DurableView* view;
  Output out;
  std::map<std::string, Txn> txns;  // ordered: ListTransactions is deterministic
  std::deque<std::string> finished;
  std::unordered_map<uint64_t, TokenRef> tokens;
  std::unordered_map<uint64_t, TimerRef> timers;
  // END notices waiting for the next message to their participant.
  std::map<std::string, std::vector<OutMessage>> held_forgets;
  std::map<std::string, OpenTxn> open;
  std::unordered_map<uint64_t, std::string> open_timers;  // expiry timer -> txn id
  // Record collection: kEndedDb keys a batch in flight erases, and the keys
  // and record ids of each such batch by token.
  std::set<std::string> collecting;
  std::unordered_map<uint64_t, std::pair<std::vector<std::string>, size_t>> collect_batches;
  uint64_t records_erased = 0;
  uint64_t next_token = 1;
  uint64_t next_timer = 1;
  uint64_t next_minted = 1;
  size_t in_flight = 0;
  // RESOURCE_EXHAUSTED when --txns_in_flight_max or --txns_unended_max
  // transactions are in memory already (`what`: "in flight", "open or in flight").
  absl::Status CheckRoom(const char* what) const;
  bool started = false;

  Impl(Config c, const DurableView* v) : config(std::move(c)), view(v) {}

  void Log(std::string line) { out.log.push_back(std::move(line)); }
  Txn* Find(const std::string& id) {
    auto it = txns.find(id);
    return it == txns.end() ? nullptr : &it->second;
  }

  // ---- decision log: records, Persist, what a durable batch releases (decision_log.cc) ----
  v1::CoordinatorTxnRecord MakeRecord(const Txn& t, v1::TxnState state) const;
  void Persist(Txn& t, RecordKind kind, v1::TxnState state);
  void MaybeEnd(Txn& t);
  void ScheduleRetry(Txn& t, RecordKind kind, const absl::Status& status, int64_t now_ms);
  void OnPersisted(uint64_t token, const absl::Status& status, int64_t now_ms);
  void OnEndDurable(Txn& t, const absl::Status& status);
  void OnPersistRetry(Txn& t);

  // ---- fan-out: messages to participants, resends, timers, END notices (fan_out.cc) ----
  uint64_t SetTimer(const Txn& t, TimerKind kind, size_t party, int64_t at_ms);
  void SendToParty(Txn& t, size_t i, MsgType type, int64_t now_ms);
  void SendRound(Txn& t, size_t i, MsgType type, int64_t now_ms);
  void SendForget(const Txn& t);
  void SendForget(const std::string& id);
  void Forget(const std::string& id, const std::string& participant, const std::string& address);
  void ReleaseForgets();
  void OnTimer(uint64_t timer_id, int64_t now_ms);
  void Resend(Txn& t, size_t i, int64_t now_ms);
  void BackOff(Party& p) const;

  // ---- client replies (client_replies.cc) ----
  v1::ExecuteResponse Response(const Txn& t, int op_count) const;
  void ReplyError(RequestId request, absl::Status status, const std::string& txn_id);
  bool OutcomeReady(const Txn& t) const;
  void ReplyAll(Txn& t);
  void MaybeReplyCommitted(Txn& t, int64_t now_ms);
  void ReplyStates(Txn& t);
  void ReplyFromRecord(RequestId request, const v1::CoordinatorTxnRecord& r, int op_count);
  void Attach(Txn& t, RequestId request, int op_count);

  // ---- Execute (execute.cc) ----
  absl::Status Validate(const v1::ExecuteRequest& req) const;
  std::string MintId();
  void Execute(RequestId request, const v1::ExecuteRequest& req, int64_t now_ms);
  bool AnswerKnownId(RequestId request, const v1::ExecuteRequest& req, uint64_t digest);
  Txn NewTxn(const v1::ExecuteRequest& req, uint64_t digest, int64_t now_ms);
  void SendPrepares(Txn& t);
  OutMessage PrepareTo(const Txn& x, size_t i) const;
  // Party i's Prepare as SendPrepares makes it: with its ops.
  OutMessage PrepareWithOps(const Txn& t, size_t i) const;

  // ---- 2PC: votes, the commit/abort decision, the outcome round, QueryState (two_phase.cc) ----
  void Abort(Txn& t, std::string reason, int64_t now_ms);
  void PersistCommit(Txn& t, CommitBy by);
  void DecideCommit(Txn& t, int64_t now_ms);
  void OnCommitDurable(Txn& t, int64_t now_ms);
  static bool Unreachable(absl::StatusCode c);
  bool PrepareAgain(Txn& t, size_t i, const absl::Status& failed, int64_t now_ms);
  void OnPrepareReply(const std::string& txn_id, const std::string& participant,
                      const absl::StatusOr<v1::PrepareResponse>& reply, int64_t now_ms);
  void OnCommitReply(const std::string& txn_id, const std::string& participant,
                     const absl::StatusOr<v1::CommitResponse>& reply, int64_t now_ms);
  void OnAbortReply(const std::string& txn_id, const std::string& participant,
                    const absl::Status& status, int64_t now_ms);
  void OnDeadline(Txn& t, int64_t now_ms);
  void OnCommitRecordDurable(Txn& t, const absl::Status& status, int64_t now_ms);
  void OnAbortRecordDurable(Txn& t, const absl::Status& status, int64_t now_ms);
  void QueryState(RequestId request, const std::string& txn_id, int64_t now_ms);

  // ---- 3PC: the PreCommit round (three_phase.cc) ----
  void OnPreCommitReply(const std::string& txn_id, const std::string& participant,
                        const absl::Status& status, int64_t now_ms);
  void OnPrecommitDurable(Txn& t, const absl::Status& status, int64_t now_ms);

  // ---- 3PC termination: the coordinator as a proposer (termination.cc) ----
  uint32_t TerminationPatienceMs() const;
  void ArmTermination(Txn& t, int64_t now_ms);
  void StartTermination(Txn& t, int64_t now_ms);
  void SendBallot(const Txn& t, size_t i, MsgType type, uint64_t ballot, v1::TxnState value);
  void BeginTermination(Txn& t, int64_t now_ms);
  void Learn(Txn& t, v1::TxnState value, const std::string& how, int64_t now_ms);
  void AbortChosen(Txn& t, std::string reason, int64_t now_ms);
  void OnPromiseReply(const std::string& txn_id, const std::string& participant, uint64_t ballot,
                      const absl::StatusOr<v1::PromiseResponse>& reply, int64_t now_ms);
  void OnAcceptReply(const std::string& txn_id, const std::string& participant, uint64_t ballot,
                     const absl::StatusOr<v1::AcceptResponse>& reply, int64_t now_ms);
  Txn* RoundOf(const std::string& txn_id, const std::string& participant, uint64_t ballot,
               bool accepting, int* index);
  bool AnsweredOtherwise(Txn& t, const std::string& participant, v1::TxnState state, bool granted,
                         uint64_t promised_ballot, int64_t now_ms);
  void OnTerminationTimer(Txn& t, int64_t now_ms);
  void OnBallotDurable(Txn& t, uint64_t token, const absl::Status& status, int64_t now_ms);

  // ---- one-phase commit (one_phase.cc) ----
  bool OnePhaseFor(const Txn& t) const;
  v1::PrepareRequest OnePhasePrepare(const Txn& t, size_t i) const;
  void SendOnePhase(Txn& t, size_t i, MsgType type, int64_t now_ms);
  void OnOnePhaseReply(Txn& t, size_t i, const absl::StatusOr<v1::PrepareResponse>& reply,
                       int64_t now_ms);
  void OnePhaseYes(Txn& t, size_t i, const v1::PrepareResponse& resp, int64_t now_ms);
  void MaybeCommitOnePhase(Txn& t, int64_t now_ms);
  void FenceOnePhase(Txn& t, std::string reason, int64_t now_ms);
  void ResendOnePhase(Txn& t, size_t i, int64_t now_ms);
  void OnFenceReply(Txn& t, const std::string& participant, const absl::Status& status,
                    int64_t now_ms);

  // ---- parallel commit: the PREPARING record and its recovery (parallel_commit.cc) ----
  void OnQueryReply(const std::string& txn_id, const std::string& participant,
                    const absl::StatusOr<v1::QueryStateResponse>& reply, int64_t now_ms);
  void OnPreparingRecordDurable(Txn& t, const absl::Status& status, int64_t now_ms);
  void RecoverPreparing(Txn& t, int64_t now_ms);
  void MaybeWritePreparingRecord(Txn& t);

  // ---- interactive transactions: Begin / Commit / Rollback (interactive.cc) ----
  static uint64_t PartsDigest(const Parts& parts);
  absl::Status ValidateParts(const Parts& parts, bool allow_empty) const;
  absl::StatusOr<v1::BeginTxnResponse> Begin(const v1::BeginTxnRequest& req, int64_t now_ms);
  Txn& Enlist(const std::string& id, v1::Protocol protocol, const Parts& parts, bool counted,
              int64_t now_ms);
  OpenTxn Close(std::map<std::string, OpenTxn>::iterator it);
  bool OnOpenTimer(uint64_t timer_id, int64_t now_ms);
  void TellToDrop(const Txn& t, const Parts& parts);
  void SendStagedPrepares(Txn& x, const Parts& parts);
  void AddStagedResults(const Txn& t, bool committed, v1::ExecuteResponse* r) const;
  void AdoptStagedOps(Txn& t, size_t party, int count);
  void ReplyInteractiveFromRecord(RequestId request, const v1::CoordinatorTxnRecord& r);
  void CommitInteractive(RequestId request, const v1::CommitTxnRequest& req, int64_t now_ms);
  Txn& EnlistFor(RequestId request, const std::string& id, v1::Protocol protocol,
                 const Parts& parts, bool counted, int64_t now_ms);
  void CommitOpen(RequestId request, const v1::CommitTxnRequest& req, const OpenTxn& o,
                  int64_t now_ms);
  void CommitAgain(RequestId request, const v1::CommitTxnRequest& req, Txn& t);
  void CommitFromRecord(RequestId request, const v1::CommitTxnRequest& req,
                        const v1::CoordinatorTxnRecord& r);
  void RollbackInteractive(RequestId request, const v1::RollbackTxnRequest& req, int64_t now_ms);
  bool AnswerOpen(RequestId request, const std::string& txn_id);

  // ---- recovery (recovery.cc) ----
  void Recover(const std::vector<v1::CoordinatorTxnRecord>& records, int64_t now_ms);
  void RecoverOne(const v1::CoordinatorTxnRecord& r, int64_t now_ms, std::map<int, int>* counts);
  Txn TxnFromRecord(const v1::CoordinatorTxnRecord& r);
  void RecoverPrecommitted(Txn& t, uint64_t ballot, int64_t now_ms);
  void RecoverCommitted(Txn& t, int64_t now_ms);
  void RecoverAborted(Txn& t, int64_t now_ms);

  // ---- collection of finished records (record_collection.cc) ----
  size_t CollectRecords(const std::vector<std::string>& keys, int64_t now_ms);
  bool RecordCollectable(const std::string& id, int64_t ended_ms) const;
  // Returns false when `token` is not a collection batch.
  bool OnCollected(uint64_t token, const absl::Status& status);

  // ---- transaction info, listing and the finished cache (listing.cc) ----
  void MaybeFinish(Txn& t);
  void EvictFinished();
  static v1::TxnState TxnStateOf(const Txn& t);
  static v1::TxnState PartyStateOf(const Txn& t, const Party& p);
  v1::TransactionInfo InfoOf(const Txn& t, bool with_ops) const;
  absl::StatusOr<v1::TransactionInfo> GetTransaction(const std::string& txn_id) const;
  absl::StatusOr<v1::ListTransactionsResponse> ListTransactions(
      const v1::ListTransactionsRequest& req, uint32_t limit_max) const;
};

}  // namespace atomq::coordinator
