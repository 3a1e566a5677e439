// Fan-out: protocol messages to participants, their resends with backoff, the
// timers, and END notices riding on the next message.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/check.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {

uint64_t CoordinatorCore::Impl::SetTimer(const Txn& t, TimerKind kind, size_t party,
                                         int64_t at_ms) {
  uint64_t id = next_timer++;
  timers.emplace(id, TimerRef{t.id, kind, party});
  out.timers.push_back(TimerRequest{id, at_ms});
  return id;
}

void CoordinatorCore::Impl::SendToParty(Txn& t, size_t i, MsgType type, int64_t now_ms) {
  Party& p = t.parties[i];
  if (type == MsgType::kCommit) {
    ATOMQ_CHECK(Committed(t), "Commit sent before the commit record is durable");
  }
  if (type == MsgType::kAbort) {
    // The phase table keeps an abort from following a COMMITTED decision,
    // and a PRECOMMITTED one unless a termination round chose it.
    ATOMQ_CHECK(Aborted(t), "Abort sent without an abort decision");
  }
  if (type == MsgType::kPreCommit) {
    ATOMQ_CHECK(PrecommitDurable(t), "PreCommit sent before PRECOMMITTED is durable");
  }
  OutMessage m;
  m.participant = p.id;
  m.address = p.address;
  m.type = type;
  m.txn_id = t.id;
  out.send.push_back(std::move(m));
  p.resend_timer = SetTimer(t, TimerKind::kResend, i, now_ms + p.backoff_ms);
}

// First message of a round: backoff restarts.
void CoordinatorCore::Impl::SendRound(Txn& t, size_t i, MsgType type, int64_t now_ms) {
  // A refusal of the previous round's message.
  if (t.parties[i].answer == Answer::kPrecommitRefused) t.parties[i].answer = Answer::kNone;
  t.parties[i].backoff_ms = std::max<uint32_t>(1, config.resend_initial_ms);
  SendToParty(t, i, type, now_ms);
}

// Participants may collect their outcome once ENDED is durable, not
// before: until then a crash here recovers the COMMIT/ABORT record and
// resends the outcome, and a one-phase commit has no record at all, so a
// client retry would run the id again and must find the outcome there.
// READ_ONLY voters keep nothing. Not resent: a lost one leaves an outcome.
// A notice waits for the next protocol message to its participant and
// leaves with it (TakeOutput), so that it never calls an idle participant
// on its own: a call to one that is down would put the channel into
// reconnect backoff and fail the next Prepare after it is back. Held
// notices are bounded by the transactions in flight: each one that ends
// sent its participant a message first, which took the older notices.
void CoordinatorCore::Impl::SendForget(const Txn& t) {
  for (const Party& p : t.parties) {
    if (p.vote != Vote::kReadOnly) Forget(t.id, p.id, p.address);
  }
}

// The same from the durable record (votes unknown: every participant).
void CoordinatorCore::Impl::SendForget(const std::string& id) {
  std::optional<v1::CoordinatorTxnRecord> rec = view ? view->FindTxn(id) : std::nullopt;
  if (!rec || rec->state() != v1::ENDED) return;
  for (const std::string& p : rec->participants()) {
    auto it = config.participants.find(p);
    if (it != config.participants.end()) Forget(id, p, it->second);
  }
}

void CoordinatorCore::Impl::Forget(const std::string& id, const std::string& participant,
                                   const std::string& address) {
  OutMessage m;
  m.participant = participant;
  m.address = address;
  m.type = MsgType::kForget;
  m.txn_id = id;
  held_forgets[participant].push_back(std::move(m));
}

// Held notices join the messages to their participants that leave now.
void CoordinatorCore::Impl::ReleaseForgets() {
  if (held_forgets.empty()) return;
  std::set<std::string> called;
  for (const OutMessage& m : out.send) {
    // Promise/Accept go one RPC each; the others share Batch calls.
    if (m.type != MsgType::kPromise && m.type != MsgType::kAccept && m.type != MsgType::kForget &&
        m.type != MsgType::kQuery) {
      called.insert(m.participant);
    }
  }
  for (const std::string& p : called) {
    auto it = held_forgets.find(p);
    if (it == held_forgets.end()) continue;
    for (OutMessage& m : it->second) out.send.push_back(std::move(m));
    held_forgets.erase(it);
  }
}

void CoordinatorCore::Impl::OnTimer(uint64_t timer_id, int64_t now_ms) {
  auto tit = timers.find(timer_id);
  if (tit == timers.end()) return;
  TimerRef ref = std::move(tit->second);
  timers.erase(tit);
  Txn* t = Find(ref.txn_id);
  if (t == nullptr) return;
  // Each timer counts only while the transaction still holds its id.
  switch (ref.kind) {
    case TimerKind::kDeadline:
      if (t->deadline_timer != timer_id) return;
      t->deadline_timer = 0;
      return OnDeadline(*t, now_ms);
    case TimerKind::kResend:
      if (ref.party >= t->parties.size() || t->parties[ref.party].resend_timer != timer_id) return;
      t->parties[ref.party].resend_timer = 0;
      return Resend(*t, ref.party, now_ms);
    case TimerKind::kTerminate:
      if (t->term_timer != timer_id) return;
      t->term_timer = 0;
      return OnTerminationTimer(*t, now_ms);
    case TimerKind::kPersistRetry:
      if (t->retry_timer != timer_id) return;
      t->retry_timer = 0;
      return OnPersistRetry(*t);
  }
}

// The message the phase owes party i, sent again with a longer backoff.
void CoordinatorCore::Impl::Resend(Txn& t, size_t i, int64_t now_ms) {
  if (Fencing(t)) return ResendOnePhase(t, i, now_ms);
  Party& p = t.parties[i];
  MsgType type;
  if (t.phase == Phase::kProbing) {
    if (p.vote != Vote::kPending) return;
    type = MsgType::kQuery;
  } else if (PrecommitDurable(t)) {
    if (p.answer != Answer::kNone) return;
    type = MsgType::kPreCommit;
  } else if (Committed(t)) {
    if (Acked(p)) return;
    type = MsgType::kCommit;
  } else if (Aborted(t)) {
    if (Acked(p)) return;
    type = MsgType::kAbort;
  } else if (t.phase == Phase::kPreparing) {
    // A Prepare that found its group between leaders (OnPrepareReply).
    if (p.vote != Vote::kPending) return;
    out.send.push_back(PrepareWithOps(t, i));
    p.resend_timer = SetTimer(t, TimerKind::kResend, i, now_ms + p.backoff_ms);
    return;
  } else {
    return;
  }
  BackOff(p);
  SendToParty(t, i, type, now_ms);
}

void CoordinatorCore::Impl::BackOff(Party& p) const {
  p.backoff_ms = std::min(std::max<uint32_t>(1, p.backoff_ms) * 2, config.resend_max_ms);
}

}  // namespace atomq::coordinator
