// Participants and the coordinator as groups of replicas in the simulator
// (docs/design.md 2.6, 10.2): each replica the real ReplicatedStorage on its
// own simulated disk, the core hosted on the serving replica, and the checks
// of one state per version.
#include <algorithm>

#include "tests/sim/sim_internal.h"

namespace atomq::sim::internal {

void SeedParticipant(const std::string& id, Disk* disk) {
  v1::QueueRecord q;
  q.set_name("q");
  q.set_id(1);
  q.set_next_sequence(1);
  (*disk)[participant::kQueuesDb]["q"] = EncodeRecord(q);
  v1::MetaRecord meta;
  meta.set_node_id(id);
  meta.set_boot_count(1);
  meta.set_next_queue_id(2);
  (*disk)[participant::kMetaDb]["meta"] = EncodeRecord(meta);
}

void SeedNode(const Node& n, Disk* disk) {
  if (!n.is_coordinator) SeedParticipant(n.id, disk);
}

// A replica's state: every sub-database but the log's own.
uint64_t StateHash(const Disk& disk) {
  const std::vector<std::string>& own = replication::RaftLog::Dbs();
  uint64_t h = 1469598103934665603ull;
  auto fold = [&h](const std::string& s) {
    for (unsigned char c : EncodeU64(s.size()) + s) h = (h ^ c) * 1099511628211ull;
  };
  for (const auto& [db, records] : disk) {
    if (std::find(own.begin(), own.end(), db) != own.end() || records.empty()) continue;
    fold(db);
    for (const auto& [key, value] : records) {
      fold(key);
      fold(value);
    }
  }
  return h;
}

void ReplicaLink::Send(uint64_t to, const std::string&, replication::RaftMessage message) {
  sim_->SendRaft(node_, member_, to, std::move(message));
}

void ReplicaLink::FetchState(uint64_t to, const std::string&, uint64_t bytes_max, FetchedFn done) {
  sim_->FetchRaftState(node_, member_, to, bytes_max, std::move(done));
}

void ReplicaLink::Probe(uint64_t to, const std::string&, ProbedFn done) {
  sim_->ProbeRaft(node_, member_, to, std::move(done));
}

void Sim::ProbeRaft(const std::string& id, uint64_t from, uint64_t to,
                    replication::Transport::ProbedFn done) {
  auto shared = std::make_shared<replication::Transport::ProbedFn>(std::move(done));
  const std::string asker = replica(node(id), from).name;
  At(now_ + rng_.Range(1, 10), [this, id, from, to, asker, shared] {
    Node& x = node(id);
    absl::StatusOr<replication::PeerLog> answer = absl::UnavailableError("unreachable");
    if (to >= 1 && to <= x.group->replicas.size()) {
      Replica& target = replica(x, to);
      if (target.group != nullptr && !Cut(asker, target.name)) {
        const replication::GroupStatus s = target.group->Status();
        answer =
            replication::PeerLog{s.last_index, s.snapshot_index, target.group->KnowsDisk(from)};
      }
    }
    auto result = std::make_shared<absl::StatusOr<replication::PeerLog>>(std::move(answer));
    At(now_ + rng_.Range(1, 10), [shared, result] { (*shared)(std::move(*result)); });
  });
}

Disk& Sim::CoreDisk(Node& n) {
  if (n.group == nullptr || n.group->host == 0) return n.disk;
  return replica(n, n.group->host).store->disk();
}

void Sim::MakeGroup(Node& n) {
  n.group = std::make_unique<Group>();
  n.up = false;  // until a replica serves
  std::vector<std::string> dbs = {participant::kQueuesDb,    participant::kMessagesDb,
                                  participant::kPreparedDb,  participant::kOutcomesDb,
                                  participant::kDedupDb,     participant::kMetaDb,
                                  participant::kHeuristicDb, participant::kForgettableDb};
  if (n.is_coordinator) dbs = {coordinator::kTxnDb, coordinator::kMetaDb, coordinator::kEndedDb};
  for (const std::string& db : replication::ReplicatedStorage::ReplicaDbs()) dbs.push_back(db);
  const int slots = options_.replicas + (options_.membership ? 1 : 0);
  for (int j = 1; j <= slots; ++j) {
    Replica r;
    r.member = uint64_t(j);
    r.spare = j > options_.replicas;
    r.name = absl::StrCat(n.id, "/", j);
    r.store = std::make_unique<SimStore>(
        this, dbs, [this, id = n.id, j](const Batch& b) { ReplicaSynced(id, uint64_t(j), b); });
    SeedNode(n, &r.store->disk());
    r.link = std::make_unique<ReplicaLink>(this, n.id, uint64_t(j));
    n.group->replicas.push_back(std::move(r));
  }
  // Index 0: the seeded state every replica starts from.
  n.group->hash_at[0] = StateHash(replica(n, 1).store->disk());
}

void Sim::StartReplica(Node& n, uint64_t member) {
  Replica& r = replica(n, member);
  if (r.group != nullptr || r.retired || (r.spare && !r.joined)) return;
  ++r.incarnation;
  replication::ReplicatedStorage::Options o;
  o.engine.id = member;
  o.engine.address = r.name;
  o.engine.seed = static_cast<uint32_t>(rng_.Next());
  o.engine.election_timeout = kElectionMs;
  o.engine.heartbeat_timeout = kHeartbeatMs;
  for (const Replica& m : n.group->replicas) {
    if (m.spare) continue;
    o.bootstrap.push_back(replication::Member{m.member, m.name, replication::MemberRole::kVoter});
  }
  o.join = r.spare;
  o.snapshot_entries = kSnapshotEntries;
  o.snapshot_trailing = kSnapshotTrailing;
  o.clock = &clock_;
  // Votes released early: the participants' groups (as the plant is
  // defined); an amnesiac rejoin: any group.
  if ((options_.plant == Plant::kReplyBeforeReplicated && !n.is_coordinator) ||
      options_.plant == Plant::kRejoinWithAmnesia) {
    o.plant = options_.plant;
  }
  if (!r.store->Get(replication::RaftLog::Dbs()[1], "disk").value().has_value()) {
    // A fresh (or wiped) disk: what Open would write first, written now.
    r.store->set_immediate(true);
    r.store->Submit(
        replication::ReplicatedStorage::DiskIdWrite(absl::StrCat(r.name, "#", r.incarnation)),
        [](absl::Status) {});
    if (options_.plant == Plant::kRejoinWithAmnesia && !r.spare) {
      // What the planted Open writes on an empty disk: a new group, at once.
      r.store->Submit(replication::RaftLog{replication::DurableState{}}.Initialize(
                          replication::RaftEngine::Bootstrap(o.bootstrap)),
                      [](absl::Status) {});
    }
    r.store->set_immediate(false);
  }
  absl::StatusOr<std::unique_ptr<replication::ReplicatedStorage>> s =
      replication::ReplicatedStorage::Open(o, r.store.get(), r.link.get(), this);
  if (!s.ok()) {
    Trace(absl::StrCat(r.name, " does not start: ", s.status().ToString()));
    return;
  }
  r.group = *std::move(s);
  r.group->SetServingHook(
      [this, id = n.id](bool, uint64_t) { At(now_, [this, id] { Reconcile(id); }); });
  Trace(absl::StrCat(r.name, " up (incarnation ", r.incarnation, ")"));
}

void Sim::StopReplica(Node& n, uint64_t member) {
  Replica& r = replica(n, member);
  if (r.group == nullptr) return;
  if (n.group->host == member) Unhost(n);
  Trace(absl::StrCat(r.name, " CRASH"));
  r.group.reset();
  r.store->Crash();
  At(now_, [this, id = n.id] { Reconcile(id); });
}

void Sim::WipeReplica(Node& n, uint64_t member) {
  StopReplica(n, member);
  Replica& r = replica(n, member);
  Trace(absl::StrCat(r.name, " DISK WIPED"));
  r.store->disk().clear();
  SeedNode(n, &r.store->disk());
  n.group->wiped = true;
}

void Sim::StartGroup(Node& n) {
  for (Replica& r : n.group->replicas) StartReplica(n, r.member);
}

void Sim::StopGroup(Node& n) {
  for (Replica& r : n.group->replicas) StopReplica(n, r.member);
}

void Sim::Unhost(Node& n) {
  if (n.group->host == 0) return;
  Trace(absl::StrCat(n.id, " core stops on ", replica(n, n.group->host).name));
  n.up = false;
  ++n.incarnation;
  n.routes.clear();
  n.participant.reset();
  n.coordinator.reset();
  n.group->host = 0;
}

void Sim::Reconcile(const std::string& id) {
  Node& n = node(id);
  uint64_t serving = 0, term = 0;
  for (Replica& r : n.group->replicas) {
    if (r.group == nullptr) continue;
    replication::GroupStatus s = r.group->Status();
    if (s.serving && keep_down_.count(id) == 0) {
      serving = r.member;
      term = r.group->Status().term;
    }
  }
  // The serving term as the hook counts it is the replica's own; the
  // engine's term tells one leadership from the next.
  if (serving == n.group->host && term == n.group->serving_term) return;
  Unhost(n);
  if (serving == 0) return;
  n.group->host = serving;
  n.group->serving_term = term;
  ++leaderships_;
  ++n.incarnation;
  Trace(absl::StrCat(n.id, " core starts on ", replica(n, serving).name, " (term ", term, ")"));
  Boot(n);
}

void Sim::SubmitToGroup(Node& n, Batch b) {
  const uint64_t host = n.group->host;
  Replica& r = replica(n, host);
  const uint64_t token = b.token;
  auto done = [this, id = n.id, inc = n.incarnation, host, token](absl::Status st) {
    Node& x = node(id);
    if (!x.up || x.incarnation != inc) return;
    if (absl::IsUnavailable(st) && options_.plant != Plant::kActOnLostWrite) {
      // The group stopped serving it, and the batch may yet commit: the
      // core stops there, as CoreDriver fences it (common/core_driver.h).
      Trace(absl::StrCat(id, ": ", st.ToString()));
      Unhost(x);
      return;
    }
    if (st.ok() && faults_ && rng_.Chance(kCrashAfterCommit)) {
      // Committed in the group; the host dies before its core hears, so
      // nobody is answered. The next leader's core finds it in the store.
      // (Its store cannot be destroyed from inside its own callback.)
      Trace(absl::StrCat(replica(x, host).name, " crashes between commit and reply"));
      At(now_, [this, id, host] { CrashReplica(node(id), host); });
      return;
    }
    if (x.is_coordinator) {
      x.coordinator->OnPersisted(token, st, now_);
    } else {
      x.participant->OnPersisted(token, st, now_);
    }
    Drain(x);
  };
  r.group->Submit(std::move(b), std::move(done));
  // Cut off as it replicates: the batch may reach some followers, all or
  // none, and the leadership is lost with it pending.
  if (faults_ && rng_.Chance(kIsolateAfterSubmit)) IsolateReplica(n, host);
}

void Sim::ReplicaSynced(const std::string& id, uint64_t member, const Batch& b) {
  std::optional<uint64_t> index;
  bool copy = false;
  for (const Write& w : b.writes) {
    if (w.db == replication::ReplicatedStorage::kAppliedDb && w.key == "applied" && !w.erase) {
      index = DecodeU64(w.value);
    }
    copy |= w.clear;
  }
  if (!index.has_value()) return;
  Node& n = node(id);
  Group& g = *n.group;
  Replica& r = replica(n, member);
  if (copy) ++state_copies_;
  const uint64_t hash = StateHash(r.store->disk());
  if (*index > g.version + 1 || (*index == g.version + 1 && copy)) {
    checker_.GroupViolation(absl::StrCat(r.name, " reached version ", *index,
                                         " before any replica applied ", g.version + 1));
    return;
  }
  if (*index == g.version + 1) {
    // First applied anywhere: committed in the group, so durable.
    for (const Write& w : b.writes) {
      if (w.db != replication::ReplicatedStorage::kAppliedDb) Durable(n, w);
    }
    g.version = *index;
    g.hash_at[*index] = hash;
    Trace(absl::StrCat(id, " version ", *index, " (first on ", r.name, ")"));
    return;
  }
  auto at = g.hash_at.find(*index);
  if (at != g.hash_at.end() && at->second != hash) {
    checker_.GroupViolation(
        absl::StrCat(r.name, " holds another state than the group's at version ", *index));
  }
}

void Sim::SendRaft(const std::string& id, uint64_t from, uint64_t to, replication::RaftMessage m) {
  Node& n = node(id);
  if (to == 0 || to > n.group->replicas.size()) return;
  Replica& sender = replica(n, from);
  if (sender.group == nullptr) return;
  m.peer = from;
  m.peer_address = sender.name;
  const std::string disk = sender.group->disk();
  auto shared = std::make_shared<replication::RaftMessage>(std::move(m));
  Deliver(sender.name, replica(n, to).name, [this, id, from, to, disk, shared] {
    Node& x = node(id);
    Replica& target = replica(x, to);
    if (target.group == nullptr) return;
    if (options_.plant != Plant::kRejoinWithAmnesia) {
      absl::Status st = target.group->CheckPeer(from, disk);
      if (!st.ok()) {
        Replica& back = replica(x, from);
        if (back.group != nullptr && back.group->disk() == disk) {
          back.group->Refused(to, std::string(st.message()));
        }
        return;
      }
    }
    target.group->Receive(*shared);
  });
}

void Sim::FetchRaftState(const std::string& id, uint64_t from, uint64_t to, uint64_t bytes_max,
                         replication::Transport::FetchedFn done) {
  Node& n = node(id);
  auto shared = std::make_shared<replication::Transport::FetchedFn>(std::move(done));
  const std::string asker = replica(n, from).name;
  At(now_ + rng_.Range(1, 10), [this, id, to, bytes_max, asker, shared] {
    Node& x = node(id);
    Replica* source = to >= 1 && to <= x.group->replicas.size() ? &replica(x, to) : nullptr;
    absl::StatusOr<std::vector<Write>> copy = absl::UnavailableError("unreachable");
    if (source != nullptr && source->group != nullptr && !Cut(asker, source->name)) {
      copy = replication::ReadWholeState(source->group->source(), bytes_max, now_);
    }
    auto result = std::make_shared<absl::StatusOr<std::vector<Write>>>(std::move(copy));
    At(now_ + rng_.Range(1, 10), [shared, result] { (*shared)(std::move(*result)); });
  });
}

void Sim::CrashReplica(Node& n, uint64_t member) {
  Replica& r = replica(n, member);
  if (r.group == nullptr) return;
  StopReplica(n, member);
  At(now_ + rng_.Range(5, 700), [this, id = n.id, member, inc = r.incarnation] {
    Node& x = node(id);
    if (replica(x, member).incarnation == inc && keep_down_.count(id) == 0) {
      StartReplica(x, member);
    }
  });
}

void Sim::IsolateReplica(Node& n, uint64_t member) {
  // Cut off from the other replicas (not from the coordinator).
  Replica& r = replica(n, member);
  std::vector<std::pair<std::string, std::string>> cuts;
  for (const Replica& o : n.group->replicas) {
    if (o.member == member) continue;
    cuts.emplace_back(std::min(r.name, o.name), std::max(r.name, o.name));
  }
  for (const auto& c : cuts) cuts_.insert(c);
  Trace(absl::StrCat("partition ", r.name, " from its group"));
  At(now_ + rng_.Range(10, 900), [this, cuts, name = r.name] {
    for (const auto& c : cuts) cuts_.erase(c);
    Trace(absl::StrCat("heal ", name));
  });
}

void Sim::GroupFault(Node& n) {
  uint64_t member = static_cast<uint64_t>(rng_.Range(1, options_.replicas));
  // The member that replaced one takes its faults, leadership included.
  if (replica(n, member).retired) member = n.group->replicas.back().member;
  const int64_t what = rng_.Range(0, 19);
  if (what < 9) {
    CrashReplica(n, member);
  } else if (what < 14) {
    IsolateReplica(n, member);
  } else if (what < 18) {
    // Leadership handed over, maybe in the middle of a transaction.
    if (n.group->host == 0 || replica(n, n.group->host).group == nullptr) return;
    absl::Status st = replica(n, n.group->host).group->Transfer(member);
    Trace(absl::StrCat(n.id, ": leadership to member ", member, ": ", st.ToString()));
  } else if (options_.membership && n.group->replacing == 0) {
    if (ReplaceableNow(n)) ReplaceMember(n, member);
  } else if (!n.group->wiped && (options_.wipes || options_.plant == Plant::kRejoinWithAmnesia)) {
    WipeReplica(n, member);
    At(now_ + rng_.Range(5, 700), [this, id = n.id, member] {
      if (keep_down_.count(id) == 0) StartReplica(node(id), member);
    });
  }
}

bool Sim::ReplaceableNow(Node& n) {
  if (n.group->host == 0) return false;
  for (const Replica& r : n.group->replicas) {
    if (r.spare) continue;
    if (r.group == nullptr || r.group->Status().last_index == 0) return false;
  }
  return true;
}

void Sim::ReplaceMember(Node& n, uint64_t old) {
  Group& g = *n.group;
  Replica& spare = g.replicas.back();
  g.replacing = old;
  WipeReplica(n, old);
  replica(n, old).retired = true;
  spare.joined = true;
  Trace(absl::StrCat(n.id, ": ", spare.name, " replaces ", replica(n, old).name));
  StartReplica(n, spare.member);
  At(now_ + rng_.Range(1, 100), [this, id = n.id] { AdvanceReplacement(id); });
}

void Sim::AdvanceReplacement(const std::string& id) {
  Node& n = node(id);
  Group& g = *n.group;
  if (g.replaced) return;
  if (g.host == 0 || replica(n, g.host).group == nullptr) {
    At(now_ + 100, [this, id] { AdvanceReplacement(id); });
    return;
  }
  replication::ReplicatedStorage* leader = replica(n, g.host).group.get();
  const Replica& spare = g.replicas.back();
  std::optional<replication::MemberRole> spare_role;
  bool old_in = false;
  for (const replication::Member& m : leader->Members()) {
    if (m.id == spare.member) spare_role = m.role;
    old_in |= m.id == g.replacing;
  }
  // The old member is gone (its disk lost): removed first, as atomqctl
  // cluster replace does then. Added first, a promotion appended by a
  // leader that crashed at once could leave the group needing a vote from
  // the new member, which does not know yet that it votes (seed 200 of
  // --membership stalled so).
  using replication::MemberChange;
  MemberChange change = MemberChange::kAdd;
  uint64_t member = spare.member;
  if (old_in) {
    change = MemberChange::kRemove;
    member = g.replacing;
  } else if (spare_role == replication::MemberRole::kVoter) {
    g.replaced = true;
    Trace(absl::StrCat(id, ": ", spare.name, " replaced member ", g.replacing));
    return;
  } else if (spare_role.has_value()) {
    change = MemberChange::kPromote;
  }
  const std::string what = change == MemberChange::kAdd       ? "add"
                           : change == MemberChange::kPromote ? "promote"
                                                              : "remove";
  leader->ChangeMembers(
      change,
      replication::Member{member, replica(n, member).name, replication::MemberRole::kStandby},
      [this, id, what, member](absl::Status st) {
        // Out of the store's callback, whatever its outcome: the next look
        // at the configuration says what is left.
        At(now_ + (st.ok() ? 1 : 100), [this, id, what, member, st] {
          Trace(absl::StrCat(id, ": ", what, " member ", member, ": ", st.ToString()));
          AdvanceReplacement(id);
        });
      });
}

}  // namespace atomq::sim::internal
