#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/validate.h"
#include "participant/core/node.h"

namespace atomq::participant {

// --- one-phase commit (PrepareRequest.one_phase) ---
// This node is the transaction's single participant, so its own COMMITTED
// outcome is the decision (docs/design.md section 3.5):
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
std::string Node::OnePhaseOnly(const std::string& id) {
  return absl::StrCat("transaction ", id,
                      " is committed (or being committed) here in one phase; only a one-phase "
                      "Prepare with the same ops gets its outcome");
}

void Node::VoteCommitted(RequestId r, const google::protobuf::RepeatedField<uint64_t>& seqs) {
  v1::PrepareResponse resp;
  resp.set_vote(v1::YES);
  *resp.mutable_sequences() = seqs;
  Answer(r, absl::OkStatus(), resp);
}

void Node::PrepareOnePhase(RequestId r, const v1::PrepareRequest& req, int64_t now_ms) {
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
  auto it = txns_.find(id);
  if (it != txns_.end()) {
    Txn& t = it->second;
    if (t.one_phase && t.rec.ops_digest() == digest) {
      OnePhaseBatch* p = TxnBatch<OnePhaseBatch>(t);
      ATOMQ_CHECK(p != nullptr,
                  "a one-phase transaction is kept only while its batch is in flight");
      p->waiters.push_back(w);  // a duplicate gets the same answer, once durable
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
  if (std::optional<CachedOutcome> o = outcomes_.Find(id)) {
    if (o->rec.state() == v1::STATE_ABORTED) {
      if (o->token != 0) return WaitersOf(o->token).push_back(w);
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
  s = CheckPreparedRoom(EnqueueBytes(req.ops()));
  if (!s.ok()) return Fail(w, s);
  // PREPARED in memory only: every call on the id waits for the batch.
  Txn& t = AddTxn(req, req.ops(), now_ms);
  t.one_phase = true;
  Pin(t);
  StartCommit(t, w, now_ms, "a one-phase Prepare");
  ATOMQ_CHECK(TxnBatch<OnePhaseBatch>(t) != nullptr, "a one-phase commit is one batch in flight");
}

void Node::OnePhaseNo(const Waiter& w, const std::string& id, uint64_t digest, std::string reason,
                      int64_t now_ms) {
  v1::OutcomeRecord o;
  o.set_txn_id(id);
  o.set_state(v1::STATE_ABORTED);
  o.set_decided_unix_ms(now_ms);
  o.set_ops_digest(digest);
  o.set_one_phase(true);
  // Forgettable from the start, as a presumed abort (PresumeAbort): a
  // coordinator that never heard of the id sends no END notice, and forged
  // one-phase Prepares must not grow storage for good. A late copy of the
  // Prepare is older than half of --retention_ms by then and votes NO.
  const uint64_t token =
      Submit({Put(kOutcomesDb, id, o),
              Write{kForgettableDb, schema::ForgettableKey(now_ms, id), "", false}},
             PresumedAbortBatch{{{w}}, id, std::move(reason)});
  outcomes_.Remember(std::move(o), token);
}

void Node::OnePhaseDone(Txn& t, const OnePhaseBatch& p, const absl::Status& status,
                        int64_t now_ms) {
  const std::string id = t.rec.txn_id();
  if (!status.ok()) {
    // Nothing is on disk. The assigned sequences stay burnt (as in CommitDone).
    t.sequences.clear();
    Unpin(t, now_ms);
    EraseTxn(id);
    Log(absl::StrCat("txn ", id, " one-phase commit not written: ", status.ToString()));
    for (const Waiter& w : p.waiters) {
      Fail(w, absl::Status(status.code(), absl::StrCat("transaction ", id,
                                                       ": the one-phase commit was not "
                                                       "written, nothing changed here: ",
                                                       status.message())));
    }
    return;
  }
  ATOMQ_CHECK(t.outcome.one_phase() && t.outcome.state() == v1::STATE_COMMITTED,
              "a one-phase batch writes a one-phase COMMITTED outcome");
  const google::protobuf::RepeatedField<uint64_t> seqs = t.outcome.sequences();
  CommitDone(t, p.settled_by, {}, status);  // applies it and forgets `t`
  for (const Waiter& w : p.waiters) VoteCommitted(w.request, seqs);
}

}  // namespace atomq::participant
