// Execute: validation, ids, and the Prepares of a new transaction.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/op_limits.h"
#include "common/status.h"
#include "common/validate.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {
namespace {

MessageLimits MessageLimitsOf(const Config& config) {
  return {config.payload_bytes_max, config.headers_max, config.header_bytes_max,
          config.txn_bytes_max};
}

absl::Status ValidateOp(const Config& config, int i, const v1::Op& op) {
  std::string at = absl::StrCat("op ", i, ": ");
  if (config.participants.find(op.participant()) == config.participants.end()) {
    return absl::InvalidArgumentError(absl::StrCat(at, "participant \"", Clip(op.participant()),
                                                   "\" is not known to this coordinator"));
  }
  switch (op.kind_case()) {
    case v1::Op::kEnqueue: {
      const v1::Enqueue& e = op.enqueue();
      absl::Status s = ValidateQueueName(e.queue());
      if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(at, s.message()));
      return CheckMessageLimits(MessageLimitsOf(config), at, e.payload(), e.headers());
    }
    case v1::Op::kAck: {
      const v1::Ack& a = op.ack();
      absl::Status s = ValidateQueueName(a.queue());
      if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(at, s.message()));
      if (a.sequence() == 0) {
        return absl::InvalidArgumentError(absl::StrCat(at, "ack sequence must be > 0"));
      }
      if (a.lease_token().empty()) {
        return absl::InvalidArgumentError(absl::StrCat(at, "ack lease_token is empty"));
      }
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat(at, "neither enqueue nor ack is set"));
  }
}

}  // namespace

absl::Status CoordinatorCore::Impl::Validate(const v1::ExecuteRequest& req) const {
  if (!req.txn_id().empty()) {
    absl::Status s = ValidateTxnId(req.txn_id());
    if (!s.ok()) return s;
  }
  if (req.ops_size() == 0) {
    return absl::InvalidArgumentError("ops is empty: a transaction needs at least one op");
  }
  ATOMQ_RETURN_IF_ERROR(
      CheckOpCount(static_cast<uint64_t>(req.ops_size()), config.ops_per_txn_max));
  if (req.protocol() != v1::PROTOCOL_UNSPECIFIED && req.protocol() != v1::TWO_PC &&
      req.protocol() != v1::THREE_PC) {
    return absl::InvalidArgumentError(
        absl::StrCat("protocol ", static_cast<int>(req.protocol()), " is unknown"));
  }
  for (int i = 0; i < req.ops_size(); ++i) {
    ATOMQ_RETURN_IF_ERROR(ValidateOp(config, i, req.ops(i)));
  }
  return CheckTxnBytes(MessageLimitsOf(config), "the transaction has ", EnqueueBytes(req.ops()));
}

std::string CoordinatorCore::Impl::MintId() {
  for (;;) {
    std::string id =
        absl::StrCat(config.coordinator_id, "-", config.boot_count, "-", next_minted++);
    // A client may have picked an id of this shape.
    if (txns.count(id) == 0 && open.count(id) == 0 &&
        !(view != nullptr && view->FindTxn(id).has_value())) {
      return id;
    }
  }
}

absl::Status CoordinatorCore::Impl::CheckRoom(const char* what) const {
  if (in_flight >= config.txns_in_flight_max) {
    return absl::ResourceExhaustedError(absl::StrCat(in_flight, " transactions ", what,
                                                     "; at most ", config.txns_in_flight_max,
                                                     " allowed (--txns_in_flight_max)"));
  }
  // Decided transactions stay until every participant acknowledged: with
  // one down for long, they would fill memory without this bound.
  const size_t unended = txns.size() - std::min(txns.size(), finished.size());
  if (unended >= config.txns_unended_max) {
    return absl::ResourceExhaustedError(absl::StrCat(
        unended,
        " transactions wait for participants to acknowledge their outcome (is one down?); "
        "at most ",
        config.txns_unended_max, " allowed (--txns_unended_max)"));
  }
  return absl::OkStatus();
}

void CoordinatorCore::Impl::Execute(RequestId request, const v1::ExecuteRequest& req,
                                    int64_t now_ms) {
  absl::Status s = Validate(req);
  if (!s.ok()) return ReplyError(request, s, req.txn_id());
  const uint64_t digest = OpsDigest(req.ops());
  if (!req.txn_id().empty() && AnswerKnownId(request, req, digest)) return;
  if (absl::Status room = CheckRoom("in flight"); !room.ok()) {
    return ReplyError(request, room, req.txn_id());
  }
  Txn t = NewTxn(req, digest, now_ms);
  t.waiters.push_back(Waiter{request, req.ops_size()});
  t.in_flight = true;
  ++in_flight;
  auto [it, inserted] = txns.emplace(t.id, std::move(t));
  ATOMQ_CHECK(inserted, "a new transaction id is not in memory");
  SendPrepares(it->second);
}

// A retry (or a reuse) of an id this coordinator knows: answered from
// memory or from its record. Returns false for an id it does not know.
bool CoordinatorCore::Impl::AnswerKnownId(RequestId request, const v1::ExecuteRequest& req,
                                          uint64_t digest) {
  const std::string& id = req.txn_id();
  const absl::Status reused = absl::AlreadyExistsError(
      absl::StrCat("transaction id \"", id, "\" was already used with different ops"));
  if (open.count(id) > 0) {
    ReplyError(request,
               absl::AlreadyExistsError(absl::StrCat("transaction id \"", id,
                                                     "\" is open (begun by Begin); use Commit")),
               id);
    return true;
  }
  if (Txn* t = Find(id)) {
    if (!t->presumed && t->digest != digest) {
      ReplyError(request, reused, id);
    } else {
      Attach(*t, request, req.ops_size());
    }
    return true;
  }
  if (view == nullptr) return false;
  std::optional<v1::CoordinatorTxnRecord> r = view->FindTxn(id);
  if (!r) return false;
  if (r->participants_size() > 0 && r->ops_digest() != digest) {
    ReplyError(request, reused, id);
  } else {
    ReplyFromRecord(request, *r, req.ops_size());
  }
  return true;
}

// The transaction a valid request describes, one party per participant
// named, in phase kNew.
Txn CoordinatorCore::Impl::NewTxn(const v1::ExecuteRequest& req, uint64_t digest, int64_t now_ms) {
  Txn t;
  t.id = req.txn_id().empty() ? MintId() : req.txn_id();
  t.protocol =
      req.protocol() == v1::PROTOCOL_UNSPECIFIED ? config.default_protocol : req.protocol();
  t.digest = digest;
  t.created_ms = now_ms;
  t.timeout_ms = req.timeout_ms() == 0 ? config.txn_timeout_ms : req.timeout_ms();
  t.timeout_ms = std::min(t.timeout_ms, config.txn_timeout_ms_max);
  t.reply_at_decision = req.reply_at_decision();
  t.deadline_ms = now_ms + t.timeout_ms;
  t.ops = req.ops();
  std::map<std::string, uint32_t> index;
  for (int i = 0; i < req.ops_size(); ++i) {
    const std::string& pid = req.ops(i).participant();
    auto [it, fresh] = index.emplace(pid, static_cast<uint32_t>(t.parties.size()));
    if (fresh) {
      Party p;
      p.id = pid;
      p.address = config.participants.at(pid);
      t.parties.push_back(std::move(p));
    }
    t.op_party.push_back(it->second);
    t.parties[it->second].ops.push_back(i);
  }
  t.sequences.assign(req.ops_size(), 0);
  ATOMQ_CHECK(!t.parties.empty() && t.op_party.size() == static_cast<size_t>(req.ops_size()),
              "every op maps to a participant");
  t.one_phase = OnePhaseFor(t);
  return t;
}

// Each party's Prepare with its ops, and the votes' deadline.
void CoordinatorCore::Impl::SendPrepares(Txn& t) {
  MoveTo(t, Phase::kPreparing);
  for (size_t i = 0; i < t.parties.size(); ++i) out.send.push_back(PrepareWithOps(t, i));
  MaybeWritePreparingRecord(t);
  t.deadline_timer = SetTimer(t, TimerKind::kDeadline, 0, t.deadline_ms);
}

OutMessage CoordinatorCore::Impl::PrepareWithOps(const Txn& t, size_t i) const {
  OutMessage m = PrepareTo(t, i);
  for (int op : t.parties[i].ops) *m.prepare.add_ops() = t.ops.Get(op);
  if (t.one_phase) m.prepare = OnePhasePrepare(t, i);
  return m;
}

// A Prepare to party i without its work (ops or staged count): who the
// coordinator and the other participants are.
OutMessage CoordinatorCore::Impl::PrepareTo(const Txn& x, size_t i) const {
  const Party& p = x.parties[i];
  OutMessage m;
  m.participant = p.id;
  m.address = p.address;
  m.type = MsgType::kPrepare;
  m.txn_id = x.id;
  v1::PrepareRequest& pr = m.prepare;
  pr.set_txn_id(x.id);
  pr.set_protocol(x.protocol);
  pr.set_coordinator_id(config.coordinator_id);
  pr.set_coordinator_address(config.coordinator_address);
  pr.set_participant(p.id);
  pr.set_created_unix_ms(x.created_ms);
  for (const Party& q : x.parties) {
    v1::PeerAddress* pa = pr.add_participants();
    pa->set_participant(q.id);
    pa->set_address(q.address);
  }
  return m;
}

}  // namespace atomq::coordinator
