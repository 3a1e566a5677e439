#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/op_limits.h"
#include "common/status.h"
#include "common/validate.h"
#include "participant/core/node.h"

namespace atomq::participant {

// Staged ops hold what a prepared transaction holds (pinned acks, pending
// enqueue counts, queue references) so that the Prepare that takes them
// cannot fail on a lease that expired meanwhile: the pin kept the message.

void Node::PinStagedOp(const std::string& id, const v1::Op& op) {
  Queue& q = queues_.by_name.at(OpQueue(op));
  q.txn_refs++;
  if (op.has_enqueue()) {
    q.pending_enqueues++;
    return;
  }
  queues_.PinMessage(q, op.ack().sequence(), q.messages.at(op.ack().sequence()), id);
}

void Node::ReleaseStaged(const std::string& id, StagedTxn& st, bool restore, int64_t now_ms) {
  for (const v1::Op& op : st.ops) {
    Queue& q = queues_.by_name.at(OpQueue(op));
    ATOMQ_CHECK(q.txn_refs > 0, "staged ops hold their queues");
    q.txn_refs--;
    if (op.has_enqueue()) {
      ATOMQ_CHECK(q.pending_enqueues > 0, "a queue counts the enqueues pending on it");
      q.pending_enqueues--;
      continue;
    }
    queues_.UnpinMessage(q, op.ack().sequence(), id, restore, now_ms);
  }
  ATOMQ_CHECK(staged_.bytes >= st.bytes, "staged bytes add up");
  staged_.bytes -= st.bytes;
  auto mine = staged_.bytes_by_identity.find(st.identity);
  if (mine != staged_.bytes_by_identity.end()) {
    ATOMQ_CHECK(mine->second >= st.bytes, "staged bytes add up per identity");
    mine->second -= st.bytes;
    if (mine->second == 0) staged_.bytes_by_identity.erase(mine);
  }
  staged_.timers.erase(st.timer_id);
}

void Node::DropStaged(const std::string& id, int64_t now_ms, const char* why) {
  auto it = staged_.txns.find(id);
  if (it == staged_.txns.end()) return;
  ReleaseStaged(id, it->second, true, now_ms);
  Log(absl::StrCat("txn ", id, " staged work dropped (", Plural(it->second.ops.size(), "op"),
                   "): ", why));
  staged_.txns.erase(it);
}

bool Node::OnStageTimer(uint64_t timer_id, int64_t now_ms) {
  auto it = staged_.timers.find(timer_id);
  if (it == staged_.timers.end()) return false;
  const std::string id = it->second;
  staged_.timers.erase(it);
  auto st = staged_.txns.find(id);
  if (st != staged_.txns.end() && st->second.timer_id == timer_id) {
    DropStaged(id, now_ms, "expired before a Prepare took it");
  }
  return true;
}

absl::StatusOr<uint64_t> Node::ValidateStageOps(const v1::StageRequest& req) const {
  absl::Status s = ValidateTxnId(req.txn_id());
  if (!s.ok()) return s;
  if (req.ops_size() == 0) {
    return absl::InvalidArgumentError("ops is empty: stage at least one op");
  }
  uint64_t bytes = 0;
  for (int i = 0; i < req.ops_size(); ++i) {
    const v1::Op& op = req.ops(i);
    const std::string at = absl::StrCat("op ", i, ": ");
    if (!op.participant().empty() && op.participant() != config_.participant_id) {
      return absl::InvalidArgumentError(absl::StrCat(at, "for participant \"", op.participant(),
                                                     "\", not \"", config_.participant_id, "\""));
    }
    if (!op.has_enqueue() && !op.has_ack()) {
      return absl::InvalidArgumentError(absl::StrCat(at, "neither enqueue nor ack"));
    }
    s = ValidateQueueName(OpQueue(op));
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(at, s.message()));
    if (op.has_enqueue()) {
      const v1::Enqueue& e = op.enqueue();
      ATOMQ_RETURN_IF_ERROR(CheckMessageLimits(message_limits(), at, e.payload(), e.headers()));
      bytes += MessageBytes(e.payload(), e.headers());
    } else if (op.ack().sequence() == 0 || op.ack().lease_token().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, "an ack needs a sequence > 0 and a lease_token"));
    }
  }
  return bytes;
}

absl::Status Node::CheckStagedShare(const StagedTxn* existing, const std::string& id,
                                    uint64_t bytes, const std::string& identity) const {
  if (existing != nullptr && existing->identity != identity) {
    return absl::PermissionDeniedError(
        absl::StrCat("transaction ", id, " was staged here by another identity"));
  }
  auto mine = staged_.bytes_by_identity.find(identity);
  const uint64_t have = mine == staged_.bytes_by_identity.end() ? 0 : mine->second;
  if (have + bytes > config_.staged_bytes_per_identity_max) {
    return absl::ResourceExhaustedError(
        absl::StrCat(have + bytes, " bytes would be staged here by ", Clip(identity),
                     "; --staged_bytes_per_identity_max=", config_.staged_bytes_per_identity_max));
  }
  return absl::OkStatus();
}

absl::Status Node::CheckStageable(const v1::StageRequest& req, uint64_t bytes, int64_t now_ms,
                                  const std::string& identity, const StagedTxn** retry) {
  const std::string& id = req.txn_id();
  auto it = staged_.txns.find(id);
  if (it != staged_.txns.end() && it->second.identity != identity) {
    return CheckStagedShare(&it->second, id, 0, identity);
  }
  const size_t applied = it == staged_.txns.end() ? 0 : it->second.batches.size();
  if (req.batch() != 0) {
    if (req.batch() <= applied) {
      if (it->second.batches[req.batch() - 1] != OpsDigest(req.ops())) {
        return absl::AlreadyExistsError(absl::StrCat("Stage batch ", req.batch(), " of ", id,
                                                     " was applied here with other ops"));
      }
      *retry = &it->second;  // applied once already
      return absl::OkStatus();
    }
    if (req.batch() > applied + 1) {
      return absl::FailedPreconditionError(absl::StrCat(
          "Stage batch ", req.batch(), " of ", id, ", but ", applied,
          " applied here: earlier staged work was lost (restart or expiry); roll back"));
    }
  }
  if (it == staged_.txns.end() && staged_.txns.size() >= config_.staged_txns_max) {
    return absl::ResourceExhaustedError(absl::StrCat(staged_.txns.size(),
                                                     " transactions staged here; "
                                                     "--staged_txns_max=",
                                                     config_.staged_txns_max));
  }
  const size_t have = it == staged_.txns.end() ? 0 : it->second.ops.size();
  if (have + req.ops_size() > config_.ops_per_txn_max) {
    return absl::ResourceExhaustedError(
        absl::StrCat(have + req.ops_size(), " ops staged for ", id,
                     "; --ops_per_txn_max=", config_.ops_per_txn_max));
  }
  const uint64_t mine = it == staged_.txns.end() ? 0 : it->second.bytes;
  ATOMQ_RETURN_IF_ERROR(CheckTxnBytes(
      message_limits(), absl::StrCat("transaction ", id, " would stage "), mine + bytes));
  if (staged_.bytes + bytes > config_.staged_bytes_max) {
    return absl::ResourceExhaustedError(absl::StrCat(staged_.bytes + bytes,
                                                     " bytes would be staged here; "
                                                     "--staged_bytes_max=",
                                                     config_.staged_bytes_max));
  }
  ATOMQ_RETURN_IF_ERROR(
      CheckStagedShare(it == staged_.txns.end() ? nullptr : &it->second, id, bytes, identity));
  for (const v1::Op& op : req.ops()) {
    if (queues_.Find(OpQueue(op)) == nullptr) return queues_.NoQueue(OpQueue(op));
  }
  v1::PrepareRequest probe;
  *probe.mutable_ops() = req.ops();
  std::string reason = CheckOps(probe, now_ms);
  if (!reason.empty()) return absl::FailedPreconditionError(reason);
  return absl::OkStatus();
}

absl::StatusOr<v1::StageResponse> Node::Stage(const v1::StageRequest& req, int64_t now_ms,
                                              const std::string& identity) {
  absl::StatusOr<uint64_t> bytes = ValidateStageOps(req);
  if (!bytes.ok()) return bytes.status();
  const std::string& id = req.txn_id();
  if (txns_.count(id) > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "transaction ", id, " is already prepared here; it takes no more staged work"));
  }
  if (std::optional<CachedOutcome> o = outcomes_.Find(id)) {
    return absl::FailedPreconditionError(
        absl::StrCat("transaction ", id, " already ",
                     o->rec.state() == v1::STATE_COMMITTED ? "committed" : "aborted", " here"));
  }
  const int64_t cap = now_ms + config_.stage_timeout_ms_max;
  const int64_t expires =
      req.expires_unix_ms() == 0 ? cap : std::min<int64_t>(req.expires_unix_ms(), cap);
  if (expires <= now_ms) {
    return absl::FailedPreconditionError(absl::StrCat("transaction ", id, " expired at ",
                                                      req.expires_unix_ms(), " (now ", now_ms,
                                                      "); begin a new one"));
  }
  const StagedTxn* retry = nullptr;
  absl::Status s = CheckStageable(req, *bytes, now_ms, identity, &retry);
  if (!s.ok()) return s;
  if (retry != nullptr) return StagedResponse(*retry);

  StagedTxn& st = staged_.txns[id];
  st.identity = identity;
  for (const v1::Op& op : req.ops()) {
    v1::Op* kept = st.ops.Add();
    *kept = op;
    kept->set_participant(config_.participant_id);
    PinStagedOp(id, *kept);
  }
  st.batches.push_back(OpsDigest(req.ops()));
  st.bytes += *bytes;
  staged_.bytes += *bytes;
  if (*bytes > 0) staged_.bytes_by_identity[identity] += *bytes;
  if (st.timer_id == 0 || expires < st.expires_ms) {
    staged_.timers.erase(st.timer_id);
    st.expires_ms = expires;
    st.timer_id = NewTimerId();
    staged_.timers[st.timer_id] = id;
    out_.timers.push_back(TimerRequest{st.timer_id, expires});
  }
  return StagedResponse(st);
}

v1::StageResponse Node::StagedResponse(const StagedTxn& st) {
  v1::StageResponse resp;
  resp.set_ops_staged(static_cast<uint32_t>(st.ops.size()));
  resp.set_expires_unix_ms(st.expires_ms);
  return resp;
}

void Node::PrepareStaged(RequestId r, const v1::PrepareRequest& req, int64_t now_ms) {
  absl::Status s = ValidatePrepare(req);
  if (s.ok() && req.ops_size() > 0) {
    s = absl::InvalidArgumentError("a Prepare with use_staged carries no ops");
  }
  if (!s.ok()) return Fail({ReplyKind::kPrepare, r}, s);
  const std::string& id = req.txn_id();
  if (AnswerRepeatedPrepare(r, id, std::nullopt)) return;  // a repeated Prepare
  auto st = staged_.txns.find(id);
  if (st == staged_.txns.end()) {
    return Vote(r, v1::NO,
                absl::StrCat("nothing staged for txn ", id, " on ", config_.participant_id,
                             " (expired or lost in a restart)"));
  }
  if (std::string old = TooOld(req, now_ms); !old.empty()) return Vote(r, v1::NO, std::move(old));
  const uint32_t have = static_cast<uint32_t>(st->second.ops.size());
  if (req.staged_ops() != 0 && req.staged_ops() != have) {
    std::string reason =
        absl::StrCat(Plural(have, "op"), " staged for txn ", id, " on ", config_.participant_id,
                     ", the client staged ", req.staged_ops(), " (staged work lost in a restart)");
    DropStaged(id, now_ms, "the client staged another count");
    return Vote(r, v1::NO, std::move(reason));
  }
  s = CheckPreparedRoom(st->second.bytes);
  if (!s.ok()) return Fail({ReplyKind::kPrepare, r}, s);
  // The pins pass from the staged work to the prepared transaction.
  ReleaseStaged(id, st->second, false, now_ms);
  google::protobuf::RepeatedPtrField<v1::Op> ops = std::move(st->second.ops);
  staged_.txns.erase(st);

  StartPrepare({ReplyKind::kPrepare, r}, AddTxn(req, std::move(ops), now_ms));
}

size_t Node::staged_transactions() const { return staged_.txns.size(); }

}  // namespace atomq::participant
