#include "tests/sim/checker.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "coordinator/core/coordinator_core.h"
#include "participant/core/participant_core.h"

namespace atomq::sim {

namespace {

const char* Name(v1::TxnState s) {
  switch (s) {
    case v1::STATE_COMMITTED:
      return "COMMITTED";
    case v1::STATE_ABORTED:
      return "ABORTED";
    default:
      return "undecided";
  }
}

}  // namespace

Checker::Checker(std::function<const Disk&(const std::string&)> disk) : disk_(std::move(disk)) {}

Checker::Txn& Checker::T(const std::string& txn_id) { return txns_[txn_id]; }

void Checker::AddTxn(const std::string& txn_id, v1::Protocol protocol,
                     std::vector<std::string> parties) {
  Txn& t = T(txn_id);
  t.protocol = protocol;
  t.parties = std::move(parties);
}

void Checker::Violation(const std::string& txn_id, const std::string& what) {
  Txn& t = T(txn_id);
  if (t.reported) return;
  t.reported = true;
  violations_.push_back(absl::StrCat("txn ", txn_id, ": ", what));
}

std::optional<v1::PreparedRecord> Checker::Prepared(const std::string& node,
                                                    const std::string& txn_id) const {
  const Disk& d = disk_(node);
  auto db = d.find(participant::kPreparedDb);
  if (db == d.end()) return std::nullopt;
  auto it = db->second.find(txn_id);
  if (it == db->second.end()) return std::nullopt;
  v1::PreparedRecord rec;
  if (!DecodeRecord(it->second, &rec).ok()) return std::nullopt;
  return rec;
}

std::optional<v1::OutcomeRecord> Checker::Outcome(const std::string& node,
                                                  const std::string& txn_id) const {
  const Disk& d = disk_(node);
  auto db = d.find(participant::kOutcomesDb);
  if (db == d.end()) return std::nullopt;
  auto it = db->second.find(txn_id);
  if (it == db->second.end()) return std::nullopt;
  v1::OutcomeRecord rec;
  if (!DecodeRecord(it->second, &rec).ok()) return std::nullopt;
  return rec;
}

void Checker::OnPut(const std::string& node, const std::string& db, const std::string& key,
                    const std::string& value) {
  if (db == coordinator::kTxnDb) {
    v1::CoordinatorTxnRecord rec;
    if (!DecodeRecord(value, &rec).ok()) {
      violations_.push_back(absl::StrCat(node, ": undecodable txn record ", key));
      return;
    }
    std::optional<bool> commit;
    if (rec.state() == v1::PREPARING) T(key).staged = true;
    if (rec.state() == v1::STATE_COMMITTED) commit = true;
    if (rec.state() == v1::STATE_ABORTED) commit = false;
    if (rec.state() == v1::ENDED) commit = rec.reason().empty();
    if (!commit) return;
    Txn& t = T(key);
    if (t.coordinator_commit && *t.coordinator_commit != *commit) {
      Violation(key, "the coordinator's log changed its decision");
    }
    t.coordinator_commit = commit;
    dirty_.insert(key);
    return;
  }
  if (db == participant::kPreparedDb) {
    Txn& t = T(key);
    t.prepared_ever.insert(node);
    dirty_.insert(key);
    return;
  }
  if (db == participant::kOutcomesDb) {
    v1::OutcomeRecord rec;
    if (!DecodeRecord(value, &rec).ok()) {
      violations_.push_back(absl::StrCat(node, ": undecodable outcome record ", key));
      return;
    }
    Txn& t = T(key);
    auto it = t.outcomes.find(node);
    if (it != t.outcomes.end() && it->second != rec.state()) {
      Violation(key, absl::StrCat(node, " changed its outcome from ", Name(it->second), " to ",
                                  Name(rec.state())));
    }
    t.outcomes[node] = rec.state();
    if (rec.state() == v1::STATE_COMMITTED && rec.one_phase()) t.one_phase.insert(node);
    dirty_.insert(key);
    return;
  }
  if (db == participant::kMessagesDb) {
    v1::MessageRecord m;
    if (!DecodeRecord(value, &m).ok()) {
      violations_.push_back(absl::StrCat(node, ": undecodable message ", key));
      return;
    }
    auto [it, fresh] = payloads_.emplace(std::make_pair(node, m.payload()), key);
    if (!fresh && it->second != key) {
      Violation(m.txn_id(),
                absl::StrCat("duplicate: payload \"", m.payload(), "\" enqueued twice on ", node));
    }
    committed_messages_[{node, key}] = m.txn_id();
  }
}

void Checker::OnErase(const std::string& node, const std::string& db, const std::string& key) {
  if (db == participant::kOutcomesDb) {
    // A collected ABORTED outcome (a presumed abort, or one after its END)
    // lets the id run anew at that node, but only while no coordinator
    // decided the id commit: the decision then stands and a later outcome
    // must agree with it.
    auto t = txns_.find(key);
    if (t == txns_.end()) return;
    auto o = t->second.outcomes.find(node);
    if (o != t->second.outcomes.end() && o->second == v1::STATE_ABORTED &&
        !t->second.coordinator_commit.value_or(false)) {
      t->second.outcomes.erase(o);
    }
    return;
  }
  if (db != participant::kMessagesDb) return;
  auto it = committed_messages_.find({node, key});
  if (it == committed_messages_.end()) return;
  Violation(it->second, absl::StrCat("a committed message was lost on ", node,
                                     " (erased, and nothing acked it)"));
}

void Checker::OnVoteYes(const std::string& node, const std::string& txn_id) {
  std::optional<v1::OutcomeRecord> o = Outcome(node, txn_id);
  if (Prepared(node, txn_id) || (o && o->state() == v1::STATE_COMMITTED)) return;
  Violation(txn_id, absl::StrCat(node, " voted YES before its PREPARED record was durable"));
}

void Checker::OnPreCommitAck(const std::string& node, const std::string& txn_id) {
  std::optional<v1::OutcomeRecord> o = Outcome(node, txn_id);
  if (o && o->state() == v1::STATE_COMMITTED) return;
  std::optional<v1::PreparedRecord> p = Prepared(node, txn_id);
  if (p && p->state() == v1::PRECOMMITTED && p->accepted_ballot() == 0) return;
  Violation(txn_id, absl::StrCat(node, " acknowledged PreCommit before PRECOMMITTED was durable"));
}

void Checker::OnCommitAck(const std::string& node, const std::string& txn_id) {
  std::optional<v1::OutcomeRecord> o = Outcome(node, txn_id);
  if (o && o->state() == v1::STATE_COMMITTED) return;
  // A Commit for an id unknown here (never prepared, nothing decided) is
  // acknowledged without a record; the end checks catch a lost part.
  if (!o && !Prepared(node, txn_id)) return;
  Violation(txn_id, absl::StrCat(node, " acknowledged Commit before COMMITTED was durable"));
}

void Checker::OnPromised(const std::string& node, const std::string& txn_id, uint64_t ballot,
                         v1::TxnState state) {
  if (state == v1::STATE_COMMITTED || state == v1::STATE_ABORTED) {
    std::optional<v1::OutcomeRecord> o = Outcome(node, txn_id);
    if (!o || o->state() != state) {
      Violation(txn_id, absl::StrCat(node, " answered a Promise with ", Name(state),
                                     " before that outcome was durable"));
    }
    return;
  }
  std::optional<v1::PreparedRecord> p = Prepared(node, txn_id);
  if (!p || p->promised_ballot() < ballot) {
    Violation(txn_id, absl::StrCat(node, " promised ballot ", ballot, " before it was durable"));
  }
}

void Checker::OnAccepted(const std::string& node, const std::string& txn_id, uint64_t ballot,
                         v1::TxnState state) {
  if (state == v1::STATE_COMMITTED || state == v1::STATE_ABORTED) {
    std::optional<v1::OutcomeRecord> o = Outcome(node, txn_id);
    if (!o || o->state() != state) {
      Violation(txn_id, absl::StrCat(node, " answered an Accept with ", Name(state),
                                     " before that outcome was durable"));
    }
    return;
  }
  std::optional<v1::PreparedRecord> p = Prepared(node, txn_id);
  if (!p || p->accepted_ballot() != ballot) {
    Violation(txn_id, absl::StrCat(node, " accepted ballot ", ballot, " before it was durable"));
  }
}

void Checker::OnClientOutcome(const std::string& txn_id, v1::Outcome outcome) {
  Txn& t = T(txn_id);
  if (t.told && *t.told != outcome) {
    Violation(txn_id, "the client was told COMMITTED once and ABORTED another time");
  }
  t.told = outcome;
  dirty_.insert(txn_id);
  // Durability: an outcome told to a client is on disk already: the
  // coordinator's decision, or every participant's COMMITTED outcome (a
  // one-phase commit's only decision record; the coordinator's ENDED is lazy),
  // or a parallel commit's PREPARING record with every participant holding
  // it prepared (or committed).
  if (outcome == v1::COMMITTED) {
    bool all = !t.parties.empty();
    bool all_prepared = t.staged && !t.parties.empty();
    for (const std::string& p : t.parties) {
      auto it = t.outcomes.find(p);
      const bool committed = it != t.outcomes.end() && it->second == v1::STATE_COMMITTED;
      all = all && committed;
      all_prepared = all_prepared && (committed || Prepared(p, txn_id).has_value());
    }
    if (!(t.coordinator_commit && *t.coordinator_commit) && !all && !all_prepared) {
      Violation(txn_id, "the client was told COMMITTED before the decision was durable");
    }
  } else if (!(t.coordinator_commit && !*t.coordinator_commit)) {
    Violation(txn_id, "the client was told ABORTED before the abort was durable");
  }
}

void Checker::OnDelivered(const std::string& node, uint64_t incarnation, uint64_t sequence,
                          uint32_t delivery_count) {
  if (delivery_count != 1) return;  // a redelivery goes first again: it was returned
  auto [it, fresh] = first_delivered_.try_emplace(node, incarnation, sequence);
  if (fresh || it->second.first != incarnation) {
    it->second = {incarnation, sequence};
    return;
  }
  if (sequence <= it->second.second) {
    violations_.push_back(absl::StrCat(node, ": message ", sequence,
                                       " first delivered after message ", it->second.second,
                                       " (out of sequence order, or twice)"));
  }
  it->second.second = std::max(it->second.second, sequence);
}

void Checker::CheckDrained(const std::string& node, uint64_t queue_id,
                           const std::vector<uint64_t>& drained, uint64_t counted) {
  std::vector<uint64_t> stored;
  const Disk& d = disk_(node);
  auto db = d.find(participant::kMessagesDb);
  if (db != d.end()) {
    const std::string prefix = EncodeU64(queue_id);
    for (auto it = db->second.lower_bound(prefix);
         it != db->second.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
      stored.push_back(DecodeU64(it->first.substr(8)));
    }
  }
  if (counted != stored.size()) {
    violations_.push_back(absl::StrCat(node, ": the queue counts ", counted,
                                       " ready and leased messages, its disk holds ",
                                       stored.size()));
  }
  if (drained != stored) {
    violations_.push_back(absl::StrCat(node, ": draining the queue returned ", drained.size(),
                                       " messages, not its ", stored.size(),
                                       " stored ones in sequence order"));
  }
}

void Checker::AfterStep() {
  for (const std::string& id : dirty_) {
    Txn& t = T(id);
    bool commit = t.coordinator_commit && *t.coordinator_commit;
    bool abort = t.coordinator_commit && !*t.coordinator_commit;
    std::string who_commit = commit ? "the coordinator" : "";
    std::string who_abort = abort ? "the coordinator" : "";
    for (const auto& [p, s] : t.outcomes) {
      if (s == v1::STATE_COMMITTED && !commit) {
        commit = true;
        who_commit = p;
      }
      if (s == v1::STATE_ABORTED && !abort) {
        abort = true;
        who_abort = p;
      }
    }
    if (commit && abort) {
      Violation(id,
                absl::StrCat("agreement: committed at ", who_commit, ", aborted at ", who_abort));
    }
    if (commit) {
      // Validity: every participant voted YES, i.e. made PREPARED durable;
      // the single participant of a one-phase transaction instead made its
      // COMMITTED outcome durable, which is its YES and the decision at once.
      for (const std::string& p : t.parties) {
        const bool one_phase_yes = t.parties.size() == 1 && t.one_phase.count(p) > 0;
        if (t.prepared_ever.count(p) == 0 && !one_phase_yes) {
          Violation(id, absl::StrCat("validity: committed at ", who_commit, " but ", p,
                                     t.one_phase.count(p) > 0
                                         ? absl::StrCat(" committed in one phase, one of ",
                                                        t.parties.size(), " participants")
                                         : std::string(" never voted YES (no PREPARED record)")));
          break;
        }
      }
    }
    if (t.told == v1::COMMITTED && abort) {
      Violation(id, absl::StrCat("durability: the client was told COMMITTED, but ", who_abort,
                                 " aborted"));
    }
    if (t.told == v1::ABORTED && commit) {
      Violation(id, absl::StrCat("the client was told ABORTED, but ", who_commit, " committed"));
    }
  }
  dirty_.clear();
}

void Checker::CheckMajorityProgress(const std::set<std::string>& up) {
  for (const auto& [id, t] : txns_) {
    if (t.protocol != v1::THREE_PC || t.parties.empty()) continue;
    size_t n_up = 0;
    for (const std::string& p : t.parties) n_up += up.count(p);
    if (n_up < t.parties.size() / 2 + 1) continue;
    for (const std::string& p : t.parties) {
      if (up.count(p) && Prepared(p, id)) {
        blocked_.push_back(absl::StrCat("txn ", id, ": 3PC, still in doubt at ", p, " with ", n_up,
                                        " of ", t.parties.size(),
                                        " participants up and the coordinator down"));
        break;
      }
    }
  }
}

void Checker::CheckAllDecided() {
  for (const auto& [id, t] : txns_) {
    if (t.parties.empty()) continue;
    if (!t.told) {
      blocked_.push_back(absl::StrCat("txn ", id, ": the client never got an outcome"));
      continue;
    }
    for (const std::string& p : t.parties) {
      if (Prepared(p, id)) {
        blocked_.push_back(absl::StrCat("txn ", id, ": still in doubt at ", p));
        break;
      }
      if (*t.told == v1::COMMITTED) {
        // An outcome collected after the coordinator's END counts: it was
        // durable (t.outcomes keeps it), and a different one would have
        // been caught when it was written.
        std::optional<v1::OutcomeRecord> o = Outcome(p, id);
        auto known = t.outcomes.find(p);
        const bool collected =
            !o && known != t.outcomes.end() && known->second == v1::STATE_COMMITTED;
        if (!collected && (!o || o->state() != v1::STATE_COMMITTED)) {
          violations_.push_back(absl::StrCat("txn ", id,
                                             ": durability: the client was told COMMITTED but ", p,
                                             " has no COMMITTED outcome"));
          break;
        }
      }
    }
  }
}

std::optional<v1::Outcome> Checker::told(const std::string& txn_id) const {
  auto it = txns_.find(txn_id);
  if (it == txns_.end()) return std::nullopt;
  return it->second.told;
}

}  // namespace atomq::sim
