// Interactive transactions: Begin, Commit, Rollback.
// An open transaction is memory only: a crash forgets it, and presumed
// abort plus the participants' expiry of staged work cover that. Commit
// turns it into an ordinary Txn whose Prepares say use_staged.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status.h"
#include "common/validate.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {

// Tells a Commit retry with the same participants from one with others.
uint64_t CoordinatorCore::Impl::PartsDigest(const Parts& parts) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  auto mix = [&h](const std::string& s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
    h ^= 0xff;
    h *= 1099511628211ull;
  };
  mix("interactive");
  for (const v1::TxnParticipant& p : parts) {
    mix(p.participant());
    mix(std::to_string(p.staged_ops()));
  }
  return h;
}

absl::Status CoordinatorCore::Impl::ValidateParts(const Parts& parts, bool allow_empty) const {
  if (parts.empty() && !allow_empty) {
    return absl::InvalidArgumentError(
        "participants is empty: name every participant that staged work");
  }
  std::set<std::string> seen;
  for (const v1::TxnParticipant& p : parts) {
    if (config.participants.find(p.participant()) == config.participants.end()) {
      return absl::InvalidArgumentError(absl::StrCat("participant \"", Clip(p.participant()),
                                                     "\" is not known to this coordinator"));
    }
    if (!seen.insert(p.participant()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("participant \"", Clip(p.participant()), "\" is named twice"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::BeginTxnResponse> CoordinatorCore::Impl::Begin(const v1::BeginTxnRequest& req,
                                                                  int64_t now_ms) {
  if (!req.txn_id().empty()) {
    absl::Status s = ValidateTxnId(req.txn_id());
    if (!s.ok()) return s;
  }
  if (req.protocol() != v1::PROTOCOL_UNSPECIFIED && req.protocol() != v1::TWO_PC &&
      req.protocol() != v1::THREE_PC) {
    return absl::InvalidArgumentError(
        absl::StrCat("protocol ", static_cast<int>(req.protocol()), " is unknown"));
  }
  v1::BeginTxnResponse resp;
  if (!req.txn_id().empty()) {
    const std::string& id = req.txn_id();
    auto it = open.find(id);
    if (it != open.end()) {  // a retry of this Begin
      resp.set_txn_id(id);
      resp.set_expires_unix_ms(it->second.expires_ms);
      return resp;
    }
    if (Find(id) != nullptr || (view != nullptr && view->FindTxn(id).has_value())) {
      return absl::AlreadyExistsError(absl::StrCat("transaction id \"", id, "\" was already used"));
    }
  }
  ATOMQ_RETURN_IF_ERROR(CheckRoom("open or in flight"));
  OpenTxn o;
  o.protocol =
      req.protocol() == v1::PROTOCOL_UNSPECIFIED ? config.default_protocol : req.protocol();
  o.timeout_ms = std::min(req.timeout_ms() == 0 ? config.txn_timeout_ms : req.timeout_ms(),
                          config.txn_timeout_ms_max);
  o.expires_ms = now_ms + o.timeout_ms;
  const std::string id = req.txn_id().empty() ? MintId() : req.txn_id();
  o.timer = next_timer++;
  open_timers.emplace(o.timer, id);
  out.timers.push_back(TimerRequest{o.timer, o.expires_ms});
  ++in_flight;  // handed on to the Txn that Commit/Rollback/expiry makes of it
  open.emplace(id, o);
  resp.set_txn_id(id);
  resp.set_expires_unix_ms(o.expires_ms);
  return resp;
}

// A Txn for an interactive transaction. `counted`: it was open, and its
// in-flight slot passes to the Txn.
Txn& CoordinatorCore::Impl::Enlist(const std::string& id, v1::Protocol protocol, const Parts& parts,
                                   bool counted, int64_t now_ms) {
  ATOMQ_CHECK(open.count(id) == 0 && txns.count(id) == 0, "an id is open or a Txn, not both");
  Txn t;
  t.id = id;
  t.interactive = true;
  t.protocol = protocol;
  t.digest = PartsDigest(parts);
  t.created_ms = now_ms;
  t.timeout_ms = config.txn_timeout_ms;
  t.deadline_ms = now_ms + t.timeout_ms;
  for (const v1::TxnParticipant& tp : parts) {
    Party p;
    p.id = tp.participant();
    p.address = config.participants.at(p.id);
    t.parties.push_back(std::move(p));
  }
  t.in_flight = counted;
  auto [it, inserted] = txns.emplace(id, std::move(t));
  return it->second;
}

CoordinatorCore::Impl::OpenTxn CoordinatorCore::Impl::Close(
    std::map<std::string, OpenTxn>::iterator it) {
  OpenTxn o = it->second;
  open_timers.erase(o.timer);
  open.erase(it);
  return o;
}

// Returns true when `timer_id` was an open transaction's expiry.
bool CoordinatorCore::Impl::OnOpenTimer(uint64_t timer_id, int64_t now_ms) {
  auto tit = open_timers.find(timer_id);
  if (tit == open_timers.end()) return false;
  const std::string id = tit->second;
  auto it = open.find(id);
  if (it == open.end() || it->second.timer != timer_id) {
    open_timers.erase(tit);
    return true;
  }
  OpenTxn o = Close(it);
  // Recorded aborted, so a late Commit (even after a restart) learns why.
  // No participant is known: each drops its staged work at the same expiry.
  Txn& t = Enlist(id, o.protocol, Parts(), true, now_ms);
  t.presumed = true;
  Abort(t,
        absl::StrCat("transaction expired: not committed within its ", o.timeout_ms, " ms timeout"),
        now_ms);
  return true;
}

// Abort messages, not tracked, to `parts` outside `t`: they may hold staged
// work for an id already aborted here (it also expires on its own).
void CoordinatorCore::Impl::TellToDrop(const Txn& t, const Parts& parts) {
  for (const v1::TxnParticipant& tp : parts) {
    if (PartyIndex(t, tp.participant()) >= 0) continue;
    OutMessage m;
    m.participant = tp.participant();
    m.address = config.participants.at(tp.participant());
    m.type = MsgType::kAbort;
    m.txn_id = t.id;
    out.send.push_back(std::move(m));
  }
}

void CoordinatorCore::Impl::SendStagedPrepares(Txn& x, const Parts& parts) {
  ATOMQ_CHECK(x.interactive && x.parties.size() == static_cast<size_t>(parts.size()),
              "one party per named participant");
  for (size_t i = 0; i < x.parties.size(); ++i) {
    OutMessage m = PrepareTo(x, i);
    m.prepare.set_use_staged(true);
    m.prepare.set_staged_ops(parts.Get(static_cast<int>(i)).staged_ops());
    out.send.push_back(std::move(m));
  }
  MoveTo(x, Phase::kPreparing);
  x.deadline_timer = SetTimer(x, TimerKind::kDeadline, 0, x.deadline_ms);
}

void CoordinatorCore::Impl::AddStagedResults(const Txn& t, bool committed,
                                             v1::ExecuteResponse* r) const {
  for (const Party& p : t.parties) {
    v1::StagedResult* sr = r->add_staged();
    sr->set_participant(p.id);
    if (!committed) continue;
    for (int op : p.ops) {
      sr->add_sequences(static_cast<size_t>(op) < t.sequences.size() ? t.sequences[op] : 0);
    }
  }
}

// The commit reply of an interactive party lists its staged ops: they
// become the party's ops (and the record's), in staging order.
void CoordinatorCore::Impl::AdoptStagedOps(Txn& t, size_t party, int count) {
  if (!t.interactive || party >= t.parties.size() || !t.parties[party].ops.empty()) return;
  for (int k = 0; k < count; ++k) {
    t.parties[party].ops.push_back(static_cast<int>(t.sequences.size()));
    t.op_party.push_back(static_cast<uint32_t>(party));
    t.sequences.push_back(0);
  }
  ATOMQ_CHECK(t.op_party.size() == t.sequences.size(), "one party per adopted op");
}

void CoordinatorCore::Impl::ReplyInteractiveFromRecord(RequestId request,
                                                       const v1::CoordinatorTxnRecord& r) {
  v1::ExecuteResponse resp;
  resp.set_txn_id(r.txn_id());
  bool committed = RecordCommitted(r);
  resp.set_outcome(committed ? v1::COMMITTED : v1::ABORTED);
  if (!committed) resp.set_reason(r.reason());
  for (int pi = 0; pi < r.participants_size(); ++pi) {
    v1::StagedResult* sr = resp.add_staged();
    sr->set_participant(r.participants(pi));
    if (!committed) continue;
    for (int i = 0; i < r.op_participant_size() && i < r.sequences_size(); ++i) {
      if (r.op_participant(i) == static_cast<uint32_t>(pi)) sr->add_sequences(r.sequences(i));
    }
  }
  out.replies.push_back(ExecuteReply{request, absl::OkStatus(), std::move(resp)});
}

namespace {

absl::Status RunByExecute(const std::string& id, const char* call) {
  return absl::FailedPreconditionError(absl::StrCat("transaction ", id, " was run by Execute; ",
                                                    call, " is for transactions begun by Begin"));
}

}  // namespace

// An interactive Txn that `request` waits on.
Txn& CoordinatorCore::Impl::EnlistFor(RequestId request, const std::string& id,
                                      v1::Protocol protocol, const Parts& parts, bool counted,
                                      int64_t now_ms) {
  Txn& t = Enlist(id, protocol, parts, counted, now_ms);
  t.waiters.push_back(Waiter{request, 0});
  return t;
}

void CoordinatorCore::Impl::CommitInteractive(RequestId request, const v1::CommitTxnRequest& req,
                                              int64_t now_ms) {
  absl::Status s = ValidateTxnId(req.txn_id());
  if (s.ok()) s = ValidateParts(req.participants(), false);
  if (!s.ok()) return ReplyError(request, s, req.txn_id());
  const std::string& id = req.txn_id();
  auto oit = open.find(id);
  if (oit != open.end()) return CommitOpen(request, req, Close(oit), now_ms);
  if (Txn* t = Find(id)) return CommitAgain(request, req, *t);
  if (view != nullptr) {
    if (std::optional<v1::CoordinatorTxnRecord> r = view->FindTxn(id)) {
      return CommitFromRecord(request, req, *r);
    }
  }
  Txn& t = EnlistFor(request, id, config.default_protocol, req.participants(), false, now_ms);
  Abort(t,
        absl::StrCat("transaction ", id,
                     " is not open at this coordinator (never begun, expired and forgotten, "
                     "or lost in a coordinator restart)"),
        now_ms);
}

// The Commit of an open transaction: its Prepares, unless it expired.
void CoordinatorCore::Impl::CommitOpen(RequestId request, const v1::CommitTxnRequest& req,
                                       const OpenTxn& o, int64_t now_ms) {
  Txn& t = EnlistFor(request, req.txn_id(), o.protocol, req.participants(), true, now_ms);
  if (now_ms >= o.expires_ms) {
    return Abort(t,
                 absl::StrCat("transaction expired: Commit came ", now_ms - o.expires_ms,
                              " ms after its ", o.timeout_ms, " ms timeout"),
                 now_ms);
  }
  SendStagedPrepares(t, req.participants());
}

// A Commit retry for a transaction in memory: it waits for (or gets) the
// outcome.
void CoordinatorCore::Impl::CommitAgain(RequestId request, const v1::CommitTxnRequest& req,
                                        Txn& t) {
  if (!t.interactive) return ReplyError(request, RunByExecute(t.id, "Commit"), t.id);
  if (Aborted(t)) {
    TellToDrop(t, req.participants());
  } else if (t.digest != PartsDigest(req.participants())) {
    return ReplyError(request,
                      absl::AlreadyExistsError(absl::StrCat(
                          "transaction ", t.id, " is committing with other participants")),
                      t.id);
  }
  Attach(t, request, 0);
}

void CoordinatorCore::Impl::CommitFromRecord(RequestId request, const v1::CommitTxnRequest& req,
                                             const v1::CoordinatorTxnRecord& r) {
  if (!r.interactive() && r.participants_size() > 0) {
    return ReplyError(request, RunByExecute(r.txn_id(), "Commit"), r.txn_id());
  }
  if (RecordCommitted(r) && r.ops_digest() != PartsDigest(req.participants())) {
    return ReplyError(request,
                      absl::AlreadyExistsError(absl::StrCat("transaction ", r.txn_id(),
                                                            " committed with other participants")),
                      r.txn_id());
  }
  ReplyInteractiveFromRecord(request, r);
}

void CoordinatorCore::Impl::RollbackInteractive(RequestId request,
                                                const v1::RollbackTxnRequest& req, int64_t now_ms) {
  absl::Status s = ValidateTxnId(req.txn_id());
  if (s.ok()) s = ValidateParts(req.participants(), true);
  if (!s.ok()) return ReplyError(request, s, req.txn_id());
  const std::string& id = req.txn_id();
  auto oit = open.find(id);
  if (oit != open.end()) {
    const OpenTxn o = Close(oit);
    Txn& t = EnlistFor(request, id, o.protocol, req.participants(), true, now_ms);
    return Abort(t, "rolled back by the client", now_ms);
  }
  const absl::Status decided = absl::FailedPreconditionError(absl::StrCat(
      "transaction ", id, " committed (or its commit is decided); it cannot be rolled back"));
  if (Txn* t = Find(id)) {
    if (!t->interactive && !t->presumed) {
      return ReplyError(request, RunByExecute(id, "Rollback"), id);
    }
    if (Collecting(*t)) {
      Abort(*t, "rolled back by the client while its commit was preparing", now_ms);
    }
    if (!Aborted(*t)) return ReplyError(request, decided, id);
    TellToDrop(*t, req.participants());
    return Attach(*t, request, 0);
  }
  if (view != nullptr) {
    if (std::optional<v1::CoordinatorTxnRecord> r = view->FindTxn(id)) {
      if (RecordCommitted(*r) || r->state() == v1::PRECOMMITTED) {
        return ReplyError(request, decided, id);
      }
      out.replies.push_back(ExecuteReply{request, absl::OkStatus(), v1::ExecuteResponse()});
      return;
    }
  }
  Txn& t = EnlistFor(request, id, config.default_protocol, req.participants(), false, now_ms);
  Abort(t, "rolled back by the client (it was not open at this coordinator)", now_ms);
}

// A participant asking about an open id: undecided, and it cannot commit
// without a Commit here.
bool CoordinatorCore::Impl::AnswerOpen(RequestId request, const std::string& txn_id) {
  if (open.count(txn_id) == 0) return false;
  out.state_replies.push_back(StateReply{request, v1::PREPARING});
  return true;
}

}  // namespace atomq::coordinator
