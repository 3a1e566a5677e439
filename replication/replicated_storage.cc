#include "replication/replicated_storage.h"

#include <sys/random.h>

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "atomq/v1/replica.pb.h"
#include "common/clock.h"
#include "common/codec.h"
#include "common/log.h"
#include "common/validate.h"
#include "replication/replica_internal.h"

namespace atomq::replication {
namespace {

std::string EncodeBatch(const Batch& batch) {
  v1::ReplicatedBatch r;
  for (const atomq::Write& w : batch.writes) {
    v1::ReplicatedWrite* o = r.add_writes();
    o->set_db(w.db);
    o->set_key(w.key);
    o->set_value(w.value);
    o->set_erase(w.erase);
  }
  return r.SerializeAsString();
}

absl::StatusOr<std::vector<atomq::Write>> DecodeBatch(const std::string& data) {
  v1::ReplicatedBatch r;
  if (!r.ParseFromString(data)) return absl::DataLossError("a log entry that is not a batch");
  std::vector<atomq::Write> out;
  for (const v1::ReplicatedWrite& w : r.writes()) {
    out.push_back(atomq::Write{w.db(), w.key(), w.value(), w.erase()});
  }
  return out;
}

// This replica's disk id (raft_meta "disk"), made on first use: random, so
// that a wiped disk comes back as another.
absl::StatusOr<std::string> LoadDiskId(Storage* local) {
  absl::StatusOr<std::optional<std::string>> id = local->Get(kReplicaMetaDb, kDiskKey);
  if (!id.ok()) return id.status();
  if (id->has_value()) return **id;
  uint8_t raw[16];
  if (getrandom(raw, sizeof(raw), 0) != static_cast<ssize_t>(sizeof(raw))) {
    return absl::InternalError("getrandom failed: no disk id can be made");
  }
  std::string made =
      absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(raw), sizeof(raw)));
  if (absl::Status st =
          local->Write(Batch{0, {atomq::Write{kReplicaMetaDb, kDiskKey, made, false}}});
      !st.ok()) {
    return st;
  }
  return made;
}

}  // namespace

void Fatal(const std::string& what) {
  LogLine(absl::StrCat("replica: ", what, "; stopping"));
  std::abort();
}

absl::StatusOr<std::map<uint64_t, std::string>> LoadRegistry(Storage* local) {
  std::map<uint64_t, std::string> out;
  bool bad = false;
  absl::Status st = local->Scan(ReplicatedStorage::kDisksDb, "",
                                [&](std::string_view key, std::string_view value) {
                                  if (key.size() != 8) {
                                    bad = true;
                                    return false;
                                  }
                                  out[DecodeU64(std::string(key))] = std::string(value);
                                  return true;
                                });
  if (!st.ok()) return st;
  if (bad) return absl::DataLossError("a disk registry key is not a member id");
  return out;
}

// What this replica heard each member speak from first (kHeardPrefix).
absl::StatusOr<std::map<uint64_t, std::string>> LoadHeard(Storage* local) {
  std::map<uint64_t, std::string> out;
  bool bad = false;
  const std::string prefix = kHeardPrefix;
  absl::Status st =
      local->Scan(kReplicaMetaDb, prefix, [&](std::string_view key, std::string_view value) {
        if (key.size() != prefix.size() + 8) {
          bad = true;
          return false;
        }
        out[DecodeU64(std::string(key.substr(prefix.size())))] = std::string(value);
        return true;
      });
  if (!st.ok()) return st;
  if (bad) return absl::DataLossError("a heard-disk key is not a member id");
  return out;
}

Batch ReplicatedStorage::DiskIdWrite(const std::string& disk_id) {
  return Batch{0, {atomq::Write{kReplicaMetaDb, kDiskKey, disk_id, false}}};
}

const std::vector<std::string>& ReplicatedStorage::ReplicaDbs() {
  static const std::vector<std::string> dbs = [] {
    std::vector<std::string> d = RaftLog::Dbs();
    d.push_back(kAppliedDb);
    d.push_back(kDisksDb);
    return d;
  }();
  return dbs;
}

const char* RoleName(RaftState state) {
  switch (state) {
    case RaftState::kLeader:
      return "leader";
    case RaftState::kCandidate:
      return "candidate";
    case RaftState::kFollower:
      return "follower";
    default:
      return "unavailable";
  }
}

absl::StatusOr<std::unique_ptr<ReplicatedStorage>> ReplicatedStorage::Open(const Options& options,
                                                                           Storage* local,
                                                                           Transport* transport,
                                                                           Timers* timers) {
  absl::StatusOr<DurableState> disk = RaftLog::Load(local);
  if (!disk.ok()) return disk.status();
  bool probe = false;
  if (disk->term == 0 && disk->entries.empty() && !disk->snapshot.has_value()) {
    if (options.join) {
      // Nothing to write: the leader sends the log from its start.
    } else if (options.bootstrap.empty()) {
      return absl::FailedPreconditionError(
          "this replica's disk holds no log and no members were given to start a group with");
    } else if (options.plant == Plant::kRejoinWithAmnesia) {
      // TEST ONLY: starts a new group without asking whether one exists.
      *disk = RaftEngine::Bootstrap(options.bootstrap);
      RaftLog fresh{DurableState{}};
      if (absl::Status st = local->Write(fresh.Initialize(*disk)); !st.ok()) return st;
    } else {
      probe = true;  // below, once the replica runs
    }
  }
  absl::StatusOr<std::optional<std::string>> applied = local->Get(kAppliedDb, kAppliedKey);
  if (!applied.ok()) return applied.status();
  uint64_t applied_index = 0;
  if (applied->has_value()) {
    if ((*applied)->size() != 8) return absl::DataLossError("the applied index does not decode");
    applied_index = DecodeU64(**applied);
  }
  absl::StatusOr<std::string> disk_id = LoadDiskId(local);
  if (!disk_id.ok()) return disk_id.status();
  absl::StatusOr<std::map<uint64_t, std::string>> disks = LoadRegistry(local);
  if (!disks.ok()) return disks.status();
  absl::StatusOr<std::map<uint64_t, std::string>> heard = LoadHeard(local);
  if (!heard.ok()) return heard.status();
  if (auto mine = disks->find(options.engine.id);
      mine != disks->end() && mine->second != *disk_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the group registered disk ", mine->second, " for member ", options.engine.id,
        ", not this one (", *disk_id, "): this replica lost its data; replace it as a member"));
  }
  absl::StatusOr<std::unique_ptr<RaftEngine>> engine = RaftEngine::Create(options.engine);
  if (!engine.ok()) return engine.status();
  std::unique_ptr<ReplicatedStorage> r(new ReplicatedStorage(
      options, local, transport, timers, std::move(*engine), *disk, applied_index,
      *std::move(disk_id), *std::move(disks), *std::move(heard)));
  {
    absl::MutexLock lock(&r->mu_);
    r->Handle(r->engine_->Start(r->Now(), *disk));
    r->RestoreConfiguration(*disk);
    if (probe) {
      r->probing_ = true;
      r->Probe();
    }
  }
  r->RunHook();
  return r;
}

namespace {
const Clock& RealClockInstance() {
  static const RealClock clock;
  return clock;
}
}  // namespace

ReplicatedStorage::ReplicatedStorage(const Options& options, Storage* local, Transport* transport,
                                     Timers* timers, std::unique_ptr<RaftEngine> engine,
                                     const DurableState& disk, uint64_t applied,
                                     std::string disk_id, std::map<uint64_t, std::string> disks,
                                     std::map<uint64_t, std::string> heard)
    : local_(local),
      disk_(std::move(disk_id)),
      transport_(transport),
      timers_(timers),
      clock_(options.clock != nullptr ? options.clock : &RealClockInstance()),
      plant_(options.plant),
      engine_options_(options.engine),
      bootstrap_(options.bootstrap),
      life_(std::make_shared<Life>()),
      engine_(std::move(engine)),
      log_(disk),
      submitted_apply_(applied),
      applied_(applied),
      // What a snapshot holds was applied (compacted or installed with it).
      seen_(disk.snapshot.has_value() ? disk.snapshot->index : 0),
      snapshot_index_(disk.snapshot.has_value() ? disk.snapshot->index : 0),
      snapshot_entries_(options.snapshot_entries),
      snapshot_trailing_(options.snapshot_trailing),
      state_bytes_max_(options.state_bytes_max),
      source_(local, RaftLog::Dbs(), options.source),
      disks_(std::move(disks)),
      heard_(std::move(heard)) {
  absl::MutexLock lock(&life_->mu);
  life_->self = this;
}

ReplicatedStorage::~ReplicatedStorage() {
  Stop();
  Settle();
  absl::MutexLock lock(&life_->mu);  // waits for a callback under way
  life_->self = nullptr;
}

void ReplicatedStorage::Stop() {
  absl::MutexLock lock(&mu_);
  stopped_ = true;
  FailPending("the replica stopped");
}

void ReplicatedStorage::Settle() {
  // In line with the timer thread, but not depending on it: it may be
  // stopped already.
  while (RunLater()) {
  }
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](ReplicatedStorage* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return !self->later_.empty() || (self->callbacks_ == 0 && self->pending_.empty());
          },
          this));
      if (later_.empty()) return;
    }
    RunLater();
  }
}

void ReplicatedStorage::Later(std::vector<DoneFn> fns, absl::Status status) {
  if (fns.empty()) return;
  for (DoneFn& done : fns) later_.emplace_back(std::move(done), status);
  timers_->At(0, Guarded([](ReplicatedStorage* self) { self->RunLater(); }));
}

bool ReplicatedStorage::RunLater() {
  std::vector<std::pair<DoneFn, absl::Status>> fns;
  {
    absl::MutexLock lock(&mu_);
    fns.swap(later_);
    if (fns.empty()) return false;
    ++callbacks_;
  }
  RunCallbacks(std::move(fns));
  return true;
}

void ReplicatedStorage::RunCallbacks(std::vector<std::pair<DoneFn, absl::Status>> fns) {
  for (auto& [done, status] : fns) done(status);
  absl::MutexLock lock(&mu_);
  --callbacks_;
}

void ReplicatedStorage::Submit(Batch batch, DoneFn done) {
  {
    absl::MutexLock lock(&mu_);
    SubmitLocked(serving_term_, std::move(batch), std::move(done));
  }
  RunHook();
}

void ReplicatedStorage::SubmitIn(uint64_t term, Batch batch, DoneFn done) {
  {
    absl::MutexLock lock(&mu_);
    SubmitLocked(term, std::move(batch), std::move(done));
  }
  RunHook();
}

void ReplicatedStorage::SubmitLocked(uint64_t term, Batch batch, DoneFn done) {
  absl::Status refused;
  if (!stopped_ && serving_ && term != serving_term_) {
    refused = absl::UnavailableError(
        "this replica's leadership changed since the node was built; it is being rebuilt");
  } else if (stopped_ || !serving_) {
    refused = absl::UnavailableError(
        engine_->leader_id() != 0 && engine_->leader_id() != engine_->id()
            ? absl::StrCat("not the leader; the leader is member ", engine_->leader_id(), " at ",
                           engine_->leader_address())
            : "not the leader; no leader is known yet");
  } else {
    absl::StatusOr<RaftUpdate> u =
        engine_->Submit(Now(), {LogEntry{0, EntryType::kCommand, EncodeBatch(batch)}});
    if (!u.ok()) {
      // Nothing entered the log (a leadership transfer under way, say),
      // and the replica still serves: a definite refusal, unlike the
      // UNAVAILABLE ones, after which the node is rebuilt (storage.h).
      refused = absl::FailedPreconditionError(u.status().message());
    } else {
      pending_[engine_->last_index()] = std::move(done);
      Handle(std::move(u));
    }
  }
  // Never on the caller's thread: it may hold a lock its DoneFn takes.
  if (!refused.ok()) Later({std::move(done)}, refused);
}

absl::Status ReplicatedStorage::CheckPeer(uint64_t member, const std::string& disk) {
  {
    absl::MutexLock lock(&mu_);
    if (disk.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("member ", member, " sent no disk id"));
    }
    auto known = disks_.find(member);
    if (known != disks_.end()) {
      if (known->second == disk) return absl::OkStatus();
      return absl::FailedPreconditionError(absl::StrCat(
          "member ", member, " speaks from disk ", Clip(disk, 40), " but the group registered ",
          known->second, " for it: its data was lost; replace it as a member, do not rejoin it"));
    }
    auto heard = heard_.find(member);
    if (heard == heard_.end()) {
      heard_[member] = disk;
      // Ahead of any write its messages lead to (the store keeps order).
      local_->Submit(
          Batch{0, {atomq::Write{kReplicaMetaDb, kHeardPrefix + EncodeU64(member), disk, false}}},
          [](absl::Status) {});
    } else if (heard->second != disk) {
      return absl::FailedPreconditionError(
          absl::StrCat("member ", member, " speaks from disk ", Clip(disk, 40),
                       " but this replica heard it from ", heard->second,
                       " before: its data was lost; replace it as a member, do not rejoin it"));
    }
    Register(member, disk);
  }
  RunHook();
  return absl::OkStatus();
}

void ReplicatedStorage::Refused(uint64_t peer, const std::string& why) {
  absl::MutexLock lock(&mu_);
  if (!fault_.empty()) return;
  fault_ = absl::StrCat("member ", peer, " refuses this replica: ", why);
  LogLine(absl::StrCat("replica: ", fault_));
}

void ReplicatedStorage::Register(uint64_t member, const std::string& disk) {
  if (!serving_ || disks_.count(member) > 0 || !registering_.insert(member).second) return;
  Batch b;
  b.writes.push_back(atomq::Write{kDisksDb, EncodeU64(member), disk, false});
  // Not Guarded: it runs among other DoneFns, inside a Guarded callback;
  // Settle waits for it.
  SubmitLocked(serving_term_, std::move(b), [this, member](absl::Status) {
    absl::MutexLock lock(&mu_);
    registering_.erase(member);
  });
}

void ReplicatedStorage::Registered(const atomq::Write& w) {
  if (w.key.size() != 8) Fatal("a disk registry entry whose key is not a member id");
  Learn(DecodeU64(w.key), w.value);
}

void ReplicatedStorage::Learn(uint64_t member, const std::string& disk) {
  disks_[member] = disk;
  if (member != engine_->id() || disk == disk_ || !fault_.empty()) return;
  fault_ =
      absl::StrCat("the group registered disk ", disk, " for member ", member, ", not this one (",
                   disk_, "): this replica lost its data and takes no part; replace it");
  LogLine(absl::StrCat("replica: ", fault_));
  stopped_ = true;
  FailPending(fault_);
}

absl::StatusOr<std::optional<std::string>> ReplicatedStorage::Get(const std::string& db,
                                                                  const std::string& key) {
  return local_->Get(db, key);
}

absl::Status ReplicatedStorage::Scan(
    const std::string& db, const std::string& prefix,
    const std::function<bool(std::string_view, std::string_view)>& fn) {
  return local_->Scan(db, prefix, fn);
}

StorageStats ReplicatedStorage::Stats() const { return local_->Stats(); }

void ReplicatedStorage::Receive(RaftMessage message) {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_ || probing_) return;
    if (message.type == MessageType::kInstallSnapshot) snapshot_sender_ = message.peer;
    Handle(engine_->Receive(Now(), message));
  }
  RunHook();
}

void ReplicatedStorage::Handle(absl::StatusOr<RaftUpdate> result) {
  if (!result.ok()) {
    // A peer's message the engine refused, or an event at the wrong time:
    // nothing changed.
    LogLine(absl::StrCat("replica ", engine_->id(), ": ", result.status().ToString()));
    return;
  }
  RaftUpdate u = std::move(*result);
  Batch persist = log_.Persist(u);
  const uint64_t write = u.entries_index.has_value() ? u.write : 0;
  const uint64_t stored = write != 0 ? *u.entries_index + u.entries.size() - 1 : 0;
  if (!persist.writes.empty()) {
    // Term and vote must be on disk before any message of this update goes.
    std::vector<RaftMessage> held;
    if (u.term_or_vote) held = std::move(u.messages);
    local_->Submit(std::move(persist), Guarded([write, stored, held = std::move(held)](
                                                   ReplicatedStorage* self, absl::Status st) {
                     {
                       absl::MutexLock lock(&self->mu_);
                       if (self->stopped_) return;  // a closing store may fail what is left
                       if (!st.ok()) {
                         Fatal(absl::StrCat("the log could not be written: ", st.ToString()));
                       }
                       if (write != 0) {
                         self->Handle(self->engine_->PersistedEntries(self->Now(), write));
                       }
                       if (self->plant_ == Plant::kReplyBeforeReplicated) {
                         self->ReleaseStored(stored);
                       }
                       self->Send(held);
                     }
                     self->RunHook();
                   }));
  }
  if (u.install.has_value()) BeginInstall(*u.install);
  Send(std::move(u.messages));
  if (engine_->state() == RaftState::kLeader && barrier_ == 0) {
    // A new leader's first entry: once applied, everything committed before
    // it is applied too, and the core may recover from the store.
    absl::StatusOr<RaftUpdate> b = engine_->Submit(Now(), {LogEntry{0, EntryType::kBarrier, ""}});
    if (b.ok()) {
      barrier_ = engine_->last_index();
      Handle(std::move(b));
    }
  } else if (engine_->state() != RaftState::kLeader) {
    barrier_ = 0;
  }
  Apply();
  CheckServing();
  CheckPromotion();
  Arm(engine_->next_timeout());
}

void ReplicatedStorage::RestoreConfiguration(const DurableState& disk) {
  if (disk.snapshot.has_value()) {
    conf_ = disk.snapshot->conf;
    conf_index_ = disk.snapshot->conf_index;
  }
  // The engine takes a restored log's last configuration entry (past index
  // 1) as uncommitted, and would refuse every later change while it waits
  // to hear otherwise; one this replica applied is committed. Entries past
  // the log's end that a copied state holds are told as they arrive.
  const uint64_t upto = std::min(applied_, engine_->last_index());
  for (uint64_t i = engine_->first_index(); i <= upto; ++i) {
    const LogEntry* e = engine_->entry(i);
    if (e == nullptr || e->type != EntryType::kChange) continue;
    conf_ = e->data;
    conf_index_ = i;
    if (i >= 2) Handle(engine_->Configuration(Now(), i));
  }
  seen_ = std::max(seen_, upto);
}

void ReplicatedStorage::Send(std::vector<RaftMessage> messages) {
  for (RaftMessage& m : messages) {
    const uint64_t to = m.peer;
    const std::string address = m.peer_address;
    transport_->Send(to, address, std::move(m));
  }
}

void ReplicatedStorage::Apply() {
  if (installing_.has_value()) return;  // the state is being replaced
  while (seen_ < engine_->applicable_index()) {
    const uint64_t index = seen_ + 1;
    const LogEntry* e = engine_->entry(index);
    if (e == nullptr) {
      Fatal(absl::StrCat("member ", engine_->id(), ": committed entry ", index,
                         " is not in the log (it starts at ", engine_->first_index(), ")"));
    }
    seen_ = index;
    if (e->type == EntryType::kChange) {
      conf_ = e->data;
      conf_index_ = index;
    }
    if (index <= submitted_apply_) {  // in a state copied from another member
      if (e->type == EntryType::kChange) Handle(engine_->Configuration(Now(), index));
      continue;
    }
    Batch b;
    if (e->type == EntryType::kCommand) {
      absl::StatusOr<std::vector<atomq::Write>> writes = DecodeBatch(e->data);
      if (!writes.ok()) Fatal(absl::StrCat("entry ", index, ": ", writes.status().message()));
      b.writes = std::move(*writes);
      for (const atomq::Write& w : b.writes) {
        if (w.db == kDisksDb) Registered(w);
      }
      if (stopped_) return;
    }
    // The index with the writes, in one transaction: a replay after a
    // crash starts after it.
    b.writes.push_back(atomq::Write{kAppliedDb, kAppliedKey, EncodeU64(index), false});
    submitted_apply_ = index;
    local_->Submit(std::move(b), Guarded([index](ReplicatedStorage* self, absl::Status st) {
                     self->Applied(index, std::move(st));
                   }));
    if (e->type == EntryType::kChange) Handle(engine_->Configuration(Now(), index));
  }
}

void ReplicatedStorage::Probe() {
  if (stopped_ || !probing_) return;
  const uint64_t round = ++probe_round_;
  answers_.clear();
  for (const Member& m : bootstrap_) {
    if (m.id == engine_->id()) continue;
    transport_->Probe(
        m.id, m.address,
        Guarded([round, id = m.id](ReplicatedStorage* self, absl::StatusOr<PeerLog> answer) {
          absl::MutexLock lock(&self->mu_);
          self->Probed(round, id, std::move(answer));
        }));
  }
  // Who has not answered by then counts as not answering.
  timers_->At(Now() + 1000, Guarded([round](ReplicatedStorage* self) {
                absl::MutexLock lock(&self->mu_);
                self->ProbeDone(round);
              }));
}

void ReplicatedStorage::Probed(uint64_t round, uint64_t member, absl::StatusOr<PeerLog> answer) {
  if (stopped_ || !probing_ || round != probe_round_) return;
  if (answer.ok()) answers_[member] = *answer;
  if (answers_.size() + 1 >= bootstrap_.size()) ProbeDone(round);
}

void ReplicatedStorage::ProbeDone(uint64_t round) {
  if (stopped_ || !probing_ || round != probe_round_) return;
  ++probe_round_;  // this round is over
  std::vector<uint64_t> others;
  for (const Member& m : bootstrap_) {
    if (m.id != engine_->id()) others.push_back(m.id);
  }
  const FreshStart d = DecideFreshStart(others, answers_);
  switch (d.kind) {
    case FreshStart::kNewGroup:
      return StartNewGroup();
    case FreshStart::kLate:
      // As a joining member: the leader sends the log from its start.
      LogLine(absl::StrCat("replica ", engine_->id(), ": ", d.why));
      probing_ = false;
      return;
    case FreshStart::kWait:
      if (!probe_logged_) LogLine(absl::StrCat("replica ", engine_->id(), ": ", d.why));
      probe_logged_ = true;
      timers_->At(Now() + 250, Guarded([](ReplicatedStorage* self) {
                    absl::MutexLock lock(&self->mu_);
                    self->Probe();
                  }));
      return;
    case FreshStart::kRefused:
      // For good: it takes no part, and says why.
      fault_ = d.why;
      LogLine(absl::StrCat("replica ", engine_->id(), ": ", fault_));
      return;
  }
}

void ReplicatedStorage::StartNewGroup() {
  const DurableState d = RaftEngine::Bootstrap(bootstrap_);
  LogLine(absl::StrCat("replica ", engine_->id(), ": every member is new; starting the group"));
  local_->Submit(RaftLog{DurableState{}}.Initialize(d),
                 Guarded([d](ReplicatedStorage* self, absl::Status st) {
                   {
                     absl::MutexLock lock(&self->mu_);
                     if (self->stopped_) return;
                     if (!st.ok())
                       Fatal(absl::StrCat("the log could not be written: ", st.ToString()));
                     absl::StatusOr<std::unique_ptr<RaftEngine>> engine =
                         RaftEngine::Create(self->engine_options_);
                     if (!engine.ok()) Fatal(std::string(engine.status().message()));
                     self->engine_ = *std::move(engine);
                     self->log_ = RaftLog(d);
                     self->probing_ = false;
                     self->armed_at_ = UINT64_MAX;
                     self->Handle(self->engine_->Start(self->Now(), d));
                     self->RestoreConfiguration(d);
                   }
                   self->RunHook();
                 }));
}

void ReplicatedStorage::ReleaseStored(uint64_t index) {
  std::vector<DoneFn> early;
  while (!pending_.empty() && pending_.begin()->first <= index) {
    early.push_back(std::move(pending_.begin()->second));
    pending_.erase(pending_.begin());
  }
  if (!early.empty()) Later(std::move(early), absl::OkStatus());
}

void ReplicatedStorage::Applied(uint64_t index, absl::Status status) {
  std::vector<std::pair<DoneFn, absl::Status>> done;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;  // a closing store may fail what is left
    if (!status.ok()) {
      Fatal(absl::StrCat("entry ", index, " could not be applied: ", status.ToString()));
    }
    // One applied before a copied state was installed reports late.
    applied_ = std::max(applied_, index);
    while (!pending_.empty() && pending_.begin()->first <= index) {
      done.emplace_back(std::move(pending_.begin()->second), absl::OkStatus());
      pending_.erase(pending_.begin());
    }
    CheckServing();
    Compact();
    if (!done.empty()) ++callbacks_;
  }
  if (!done.empty()) RunCallbacks(std::move(done));
  RunHook();
}

void ReplicatedStorage::Arm(uint64_t at) {
  if (stopped_ || at >= armed_at_) return;
  armed_at_ = at;
  timers_->At(static_cast<int64_t>(at), Guarded([](ReplicatedStorage* self) { self->OnTimer(); }));
}

void ReplicatedStorage::OnTimer() {
  {
    absl::MutexLock lock(&mu_);
    armed_at_ = UINT64_MAX;
    if (stopped_) return;
    const int64_t now = Now();
    if (static_cast<uint64_t>(now) >= engine_->next_timeout()) {
      Handle(engine_->Timeout(now));
    } else {
      Arm(engine_->next_timeout());
    }
  }
  RunHook();
}

void ReplicatedStorage::CheckServing() {
  const bool leading = engine_->state() == RaftState::kLeader;
  if (!leading && (!pending_.empty() || promoted_)) {
    FailPending("leadership was lost before the write committed; it may still commit");
  }
  const bool serving = leading && barrier_ != 0 && applied_ >= barrier_;
  if (serving != serving_) {
    serving_ = serving;
    if (serving) ++serving_term_;
    hook_due_ = true;
    if (serving) Register(engine_->id(), disk_);
  }
}

void ReplicatedStorage::FailPending(const std::string& why) {
  std::vector<DoneFn> fns;
  for (auto& [index, done] : pending_) fns.push_back(std::move(done));
  pending_.clear();
  if (promoted_) fns.push_back(std::move(promoted_));
  promoted_ = nullptr;
  promoting_ = 0;
  Later(std::move(fns), absl::UnavailableError(why));
}

void ReplicatedStorage::SetServingHook(ServingHook hook) {
  {
    absl::MutexLock lock(&mu_);
    hook_ = std::move(hook);
    hook_due_ = true;
  }
  RunHook();
}

void ReplicatedStorage::RunHook() {
  absl::MutexLock hook_lock(&hook_mu_);
  ServingHook hook;
  bool serving = false;
  uint64_t term = 0;
  {
    absl::MutexLock lock(&mu_);
    if (!hook_due_ || !hook_) return;
    hook_due_ = false;
    hook = hook_;
    serving = serving_;
    term = serving_term_;
  }
  hook(serving, term);
}

absl::Status ReplicatedStorage::Transfer(uint64_t to) {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_ || engine_->state() != RaftState::kLeader) {
      return absl::FailedPreconditionError(absl::StrCat(
          "member ", engine_->id(), " does not lead; the leader is member ", engine_->leader_id()));
    }
    if (to == engine_->id()) return absl::OkStatus();
    absl::StatusOr<RaftUpdate> u = engine_->Transfer(Now(), to);
    if (!u.ok()) return u.status();
    LogLine(absl::StrCat("replica ", engine_->id(), ": handing leadership to member ", to));
    Handle(std::move(u));
  }
  RunHook();
  return absl::OkStatus();
}

std::vector<Member> ReplicatedStorage::Members() {
  absl::MutexLock lock(&mu_);
  return engine_->members();
}

absl::StatusOr<std::vector<Member>> ReplicatedStorage::Changed(MemberChange change,
                                                               const Member& member) {
  std::vector<Member> members = engine_->members();
  auto it = std::find_if(members.begin(), members.end(),
                         [&](const Member& m) { return m.id == member.id; });
  const bool known = it != members.end();
  switch (change) {
    case MemberChange::kAdd:
      if (known) {
        return absl::InvalidArgumentError(absl::StrCat("member ", member.id, " is one already"));
      }
      // An id once used stays its disk's (the amnesia guard): a new member
      // takes a new one.
      if (disks_.count(member.id) > 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("member id ", member.id,
                         " was used before in this group; give the new member a new id"));
      }
      for (const Member& m : members) {
        if (m.address == member.address) {
          return absl::InvalidArgumentError(
              absl::StrCat("member ", m.id, " has address ", m.address, " already"));
        }
      }
      members.push_back(Member{member.id, member.address, MemberRole::kStandby});
      return members;
    case MemberChange::kPromote:
      if (!known) break;
      if (it->role == MemberRole::kVoter) {
        return absl::InvalidArgumentError(absl::StrCat("member ", member.id, " votes already"));
      }
      it->role = MemberRole::kVoter;
      return members;
    case MemberChange::kRemove:
      if (!known) break;
      if (member.id == engine_->id()) {
        return absl::FailedPreconditionError(
            absl::StrCat("member ", member.id, " leads: hand leadership to another first"));
      }
      members.erase(it);
      return members;
  }
  return absl::InvalidArgumentError(absl::StrCat("member ", member.id, " is not of the group"));
}

void ReplicatedStorage::ChangeMembers(MemberChange change, Member member, DoneFn done) {
  {
    absl::MutexLock lock(&mu_);
    absl::Status refused;
    absl::StatusOr<std::vector<Member>> next = Changed(change, member);
    if (stopped_ || !serving_) {
      refused = absl::FailedPreconditionError(absl::StrCat("member ", engine_->id(),
                                                           " does not serve as leader; member ",
                                                           engine_->leader_id(), " leads"));
    } else if (engine_->changing()) {
      refused = absl::FailedPreconditionError("another change of members is under way");
    } else if (!next.ok()) {
      refused = next.status();
    } else if (change == MemberChange::kPromote) {
      absl::StatusOr<RaftUpdate> u = engine_->CatchUp(Now(), member.id);
      if (u.ok()) {
        promoting_ = member.id;
        promoted_ = std::move(done);
        LogLine(absl::StrCat("replica ", engine_->id(), ": catching up member ", member.id));
        Handle(std::move(u));
        // A round ends only when the member stores more: one that is up to
        // date already in an idle group would wait for a write that may
        // never come, and be given up on.
        absl::StatusOr<RaftUpdate> b =
            engine_->Submit(Now(), {LogEntry{0, EntryType::kBarrier, ""}});
        if (b.ok()) Handle(std::move(b));
      } else {
        refused = u.status();
      }
    } else {
      SubmitMembers(*next, std::move(done));
    }
    if (!refused.ok()) Later({std::move(done)}, refused);
  }
  RunHook();
}

void ReplicatedStorage::SubmitMembers(const std::vector<Member>& members, DoneFn done) {
  absl::StatusOr<RaftUpdate> u = engine_->ChangeMembers(Now(), members);
  if (!u.ok()) {
    Later({std::move(done)}, u.status());
    return;
  }
  LogLine(absl::StrCat("replica ", engine_->id(), ": members become ",
                       absl::StrJoin(members, ",", [](std::string* out, const Member& m) {
                         absl::StrAppend(out, m.id,
                                         m.role == MemberRole::kVoter ? "" : "(standby)");
                       })));
  pending_[engine_->last_index()] = std::move(done);
  Handle(std::move(u));
}

void ReplicatedStorage::CheckPromotion() {
  if (promoting_ == 0) return;
  const RaftEngine::CatchUpState state = engine_->catch_up(promoting_);
  if (state == RaftEngine::CatchUpState::kRunning) return;
  const uint64_t id = promoting_;
  DoneFn done = std::move(promoted_);
  promoting_ = 0;
  promoted_ = nullptr;
  if (state != RaftEngine::CatchUpState::kFinished) {
    Later({std::move(done)},
          absl::UnavailableError(absl::StrCat(
              "member ", id, " did not catch up (unreachable, or slower than the group writes)")));
    return;
  }
  absl::StatusOr<std::vector<Member>> next = Changed(MemberChange::kPromote, Member{id});
  if (!next.ok()) {
    Later({std::move(done)}, next.status());
    return;
  }
  SubmitMembers(*next, std::move(done));
}

GroupStatus ReplicatedStorage::Status() {
  absl::MutexLock lock(&mu_);
  GroupStatus s;
  s.id = engine_->id();
  s.state = engine_->state();
  s.term = engine_->term();
  s.leader_id = engine_->leader_id();
  s.leader_address = engine_->leader_address();
  s.commit_index = engine_->commit_index();
  s.applied_index = applied_;
  s.serving = serving_;
  s.fault = fault_;
  s.members = engine_->members();
  if (s.state == RaftState::kLeader) {
    for (const Member& m : s.members) s.match[m.id] = engine_->match_index(m.id);
  }
  s.snapshot_index = snapshot_index_;
  s.last_index = engine_->last_index();
  s.installing = installing_.has_value();
  s.copies = copies_;
  return s;
}

}  // namespace atomq::replication
