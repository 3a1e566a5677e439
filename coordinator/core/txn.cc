#include "coordinator/core/txn.h"

#include <algorithm>

#include "common/check.h"

namespace atomq::coordinator {

const std::vector<PhaseRule>& PhaseRules() {
  static const std::vector<PhaseRule> rules = {
      {Phase::kNew, {}},
      {Phase::kPreparing, {Phase::kNew}},
      {Phase::kProbing, {Phase::kNew}},
      {Phase::kFencing, {Phase::kPreparing}},
      {Phase::kFetching, {Phase::kFencing}},
      {Phase::kPrecommitting, {Phase::kPreparing}},
      {Phase::kPrecommitted, {Phase::kNew, Phase::kPrecommitting}},
      {Phase::kCommitting, {Phase::kPreparing, Phase::kProbing}},
      {Phase::kCommittingPrecommitted, {Phase::kPrecommitted}},
      {Phase::kCommitted,
       {Phase::kNew, Phase::kPreparing, Phase::kProbing, Phase::kFencing, Phase::kFetching,
        Phase::kCommitting, Phase::kCommittingPrecommitted}},
      // From kPrecommitted only when a termination round chose ABORT.
      {Phase::kAborting,
       {Phase::kNew, Phase::kPreparing, Phase::kProbing, Phase::kFencing, Phase::kFetching,
        Phase::kPrecommitting, Phase::kPrecommitted, Phase::kCommitting}},
      {Phase::kAborted, {Phase::kNew, Phase::kAborting}},
      {Phase::kCommitEnded, {Phase::kNew, Phase::kCommitted}},
      {Phase::kAbortEnded, {Phase::kNew, Phase::kAborted}},
  };
  return rules;
}

const char* PhaseName(Phase p) {
  switch (p) {
    case Phase::kNew:
      return "new";
    case Phase::kPreparing:
      return "preparing";
    case Phase::kProbing:
      return "probing";
    case Phase::kFencing:
      return "fencing";
    case Phase::kFetching:
      return "fetching";
    case Phase::kPrecommitting:
      return "precommitting";
    case Phase::kPrecommitted:
      return "precommitted";
    case Phase::kCommitting:
      return "committing";
    case Phase::kCommittingPrecommitted:
      return "committing-precommitted";
    case Phase::kCommitted:
      return "committed";
    case Phase::kAborting:
      return "aborting";
    case Phase::kAborted:
      return "aborted";
    case Phase::kCommitEnded:
      return "commit-ended";
    case Phase::kAbortEnded:
      return "abort-ended";
  }
  return "?";
}

bool PhaseMayFollow(Phase next, Phase prev) {
  for (const PhaseRule& r : PhaseRules()) {
    if (r.phase == next) return std::find(r.after.begin(), r.after.end(), prev) != r.after.end();
  }
  return false;
}

void MoveTo(Txn& t, Phase next) {
  ATOMQ_CHECK(PhaseMayFollow(next, t.phase), "a transaction phase change the table allows");
  t.phase = next;
}

bool Acked(const Party& p) {
  return p.answer == Answer::kAcked || p.answer == Answer::kAckedOtherOutcome;
}

bool Refused(const Party& p) {
  return p.answer == Answer::kPrecommitRefused || p.answer == Answer::kAckedOtherOutcome;
}

void Reopen(Party& p) {
  if (Acked(p)) p.answer = Answer::kNone;
}

void SetOwed(Party& p, bool owed) {
  if (!owed) {
    p.answer = Answer::kAcked;
  } else {
    Reopen(p);
  }
}

bool Collecting(const Txn& t) {
  return t.phase == Phase::kPreparing || t.phase == Phase::kProbing || Fencing(t);
}

bool Fencing(const Txn& t) { return t.phase == Phase::kFencing || t.phase == Phase::kFetching; }

bool PrecommitDurable(const Txn& t) {
  return t.phase == Phase::kPrecommitted || t.phase == Phase::kCommittingPrecommitted;
}

bool Committed(const Txn& t) {
  return t.phase == Phase::kCommitted || t.phase == Phase::kCommitEnded;
}

bool Aborted(const Txn& t) { return t.phase == Phase::kAborting || AbortDurable(t); }

bool AbortDurable(const Txn& t) {
  return t.phase == Phase::kAborted || t.phase == Phase::kAbortEnded;
}

bool DecisionDurable(const Txn& t) { return Committed(t) || AbortDurable(t); }

bool Ended(const Txn& t) { return t.phase == Phase::kCommitEnded || t.phase == Phase::kAbortEnded; }

bool AllAcked(const Txn& t) {
  for (const Party& p : t.parties) {
    if (!Acked(p)) return false;
  }
  return true;
}

size_t CountVotes(const Txn& t, Vote v) {
  size_t n = 0;
  for (const Party& p : t.parties) n += p.vote == v ? 1 : 0;
  return n;
}

size_t PrecommitAcksNeeded(const Txn& t) {
  return std::min(t.parties.size() / 2 + 1, CountVotes(t, Vote::kYes));
}

size_t PrecommitAcks(const Txn& t) {
  size_t n = 0;
  for (const Party& p : t.parties) n += p.answer == Answer::kPrecommitAcked ? 1 : 0;
  return n;
}

int PartyIndex(const Txn& t, const std::string& participant) {
  for (size_t i = 0; i < t.parties.size(); ++i) {
    if (t.parties[i].id == participant) return static_cast<int>(i);
  }
  return -1;
}

const char* ProtocolName(v1::Protocol p) { return p == v1::THREE_PC ? "3pc" : "2pc"; }

bool RecordCommitted(const v1::CoordinatorTxnRecord& r) {
  switch (r.state()) {
    case v1::STATE_COMMITTED:
      return true;
    case v1::ENDED:
      return r.reason().empty();
    default:
      return false;
  }
}

v1::TransactionInfo TransactionInfoOf(const v1::CoordinatorTxnRecord& r) {
  v1::TransactionInfo info;
  info.set_txn_id(r.txn_id());
  info.set_protocol(r.protocol());
  info.set_state(r.state());
  bool committed = RecordCommitted(r);
  bool aborted = r.state() == v1::STATE_ABORTED || (r.state() == v1::ENDED && !committed);
  info.set_outcome(committed ? v1::COMMITTED : aborted ? v1::ABORTED : v1::PENDING);
  info.set_reason(r.reason());
  info.set_created_unix_ms(r.created_unix_ms());
  for (const std::string& id : r.participants()) {
    bool acked =
        std::find(r.acknowledged().begin(), r.acknowledged().end(), id) != r.acknowledged().end();
    v1::ParticipantStatus* ps = info.add_participants();
    ps->set_participant(id);
    ps->set_acknowledged(acked && (committed || aborted));
    if (acked && committed) {
      ps->set_state(v1::STATE_COMMITTED);
    } else if (acked && aborted) {
      ps->set_state(v1::STATE_ABORTED);
    } else {
      ps->set_state(r.state() == v1::PRECOMMITTED ? v1::PRECOMMITTED : v1::PREPARED);
    }
  }
  for (uint64_t s : r.sequences()) info.add_results()->set_sequence(committed ? s : 0);
  return info;
}

}  // namespace atomq::coordinator
