// A replica's snapshots (docs/design.md 10.2): compacting its own log, and
// installing a copy of another member's state when the leader's log no
// longer holds what it lacks.
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "common/log.h"
#include "replication/replica_internal.h"
#include "replication/replicated_storage.h"

namespace atomq::replication {

void ReplicatedStorage::Compact() {
  if (installing_.has_value() || snapshot_entries_ == 0 || conf_.empty()) return;
  // Durable in the store, and in this disk's log as the engine knows it.
  const uint64_t at = std::min(applied_, engine_->applicable_index());
  if (at < snapshot_index_ + snapshot_entries_ || conf_index_ > at) return;
  const LogEntry* e = engine_->entry(at);
  if (e == nullptr) return;
  const SnapshotPoint point{at, e->term, conf_, conf_index_};
  absl::StatusOr<RaftUpdate> u =
      engine_->Snapshot(Now(), at, conf_, conf_index_, snapshot_trailing_);
  if (!u.ok()) {
    LogLine(absl::StrCat("replica ", engine_->id(), ": no snapshot at ", at, ": ",
                         u.status().message()));
    return;
  }
  snapshot_index_ = at;
  const uint64_t keep_from = at > snapshot_trailing_ ? at - snapshot_trailing_ : 1;
  local_->Submit(log_.Compact(point, keep_from), Guarded([](ReplicatedStorage*, absl::Status st) {
                   if (!st.ok())
                     Fatal(absl::StrCat("the log could not be compacted: ", st.ToString()));
                 }));
  Handle(std::move(u));
}

void ReplicatedStorage::BeginInstall(const SnapshotPoint& point) {
  Installing in;
  in.point = point;
  // The snapshot's configuration says where the members are (a member
  // being added knows no other configuration yet).
  absl::StatusOr<std::vector<Member>> members = DecodeConfiguration(point.conf);
  in.members = members.ok() ? *std::move(members) : engine_->members();
  // The sender holds the state (its snapshot is of what it applied); the
  // others may, if it cannot serve the copy.
  if (snapshot_sender_ != 0) in.from.push_back(snapshot_sender_);
  for (const Member& m : in.members) {
    if (m.id != engine_->id() && m.id != snapshot_sender_) in.from.push_back(m.id);
  }
  LogLine(absl::StrCat("replica ", engine_->id(), ": the log it lacks is compacted; copying the ",
                       "state at ", point.index, " or later from member ", snapshot_sender_));
  installing_ = std::move(in);
  FetchNext();
}

void ReplicatedStorage::FetchNext() {
  if (stopped_ || !installing_.has_value()) return;
  Installing& in = *installing_;
  if (in.from.empty() || in.next >= in.from.size()) {
    in.next = 0;
    timers_->At(Now() + 1000, Guarded([](ReplicatedStorage* self) {
                  absl::MutexLock lock(&self->mu_);
                  self->FetchNext();
                }));
    return;
  }
  const uint64_t from = in.from[in.next++];
  std::string address;
  for (const Member& m : in.members) {
    if (m.id == from) address = m.address;
  }
  transport_->FetchState(
      from, address, state_bytes_max_,
      Guarded([from](ReplicatedStorage* self, absl::StatusOr<std::vector<atomq::Write>> copy) {
        absl::MutexLock lock(&self->mu_);
        self->Fetched(from, std::move(copy));
      }));
}

absl::StatusOr<uint64_t> ReplicatedStorage::CheckCopy(const std::vector<atomq::Write>& copy) {
  const std::vector<std::string> dbs = local_->Dbs();
  const std::vector<std::string>& own = RaftLog::Dbs();
  std::optional<uint64_t> applied;
  for (const atomq::Write& w : copy) {
    if (std::find(dbs.begin(), dbs.end(), w.db) == dbs.end() ||
        std::find(own.begin(), own.end(), w.db) != own.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("a record of sub-database \"", w.db, "\", which is not copied"));
    }
    if (w.erase || w.clear || w.key.empty()) {
      return absl::InvalidArgumentError("a record that is not a key and its value");
    }
    if (w.db == kAppliedDb && w.key == kAppliedKey) {
      if (w.value.size() != 8) return absl::InvalidArgumentError("an applied index of bad size");
      applied = DecodeU64(w.value);
    }
  }
  const SnapshotPoint& point = installing_->point;
  if (!applied.has_value() || *applied < point.index || *applied < applied_) {
    return absl::FailedPreconditionError(absl::StrCat("the copy is of applied index ",
                                                      applied.value_or(0), ", before ",
                                                      std::max(point.index, applied_)));
  }
  return *applied;
}

void ReplicatedStorage::Fetched(uint64_t from, absl::StatusOr<std::vector<atomq::Write>> copy) {
  if (stopped_ || !installing_.has_value()) return;
  absl::StatusOr<uint64_t> applied = copy.ok() ? CheckCopy(*copy) : copy.status();
  if (!applied.ok()) {
    LogLine(absl::StrCat("replica ", engine_->id(), ": no copy of member ", from,
                         "'s state: ", applied.status().ToString()));
    FetchNext();
    return;
  }
  // One transaction: the old state goes, the copy and the snapshot point
  // come; the log, term and vote stay this disk's own. A crash before it
  // leaves the replica as it was, to be sent the snapshot again.
  Batch b;
  const std::vector<std::string>& own = RaftLog::Dbs();
  for (const std::string& db : local_->Dbs()) {
    if (std::find(own.begin(), own.end(), db) != own.end()) continue;
    atomq::Write clear;
    clear.db = db;
    clear.clear = true;
    b.writes.push_back(std::move(clear));
  }
  for (atomq::Write& w : *copy) b.writes.push_back(std::move(w));
  for (atomq::Write& w : log_.Install(installing_->point).writes) b.writes.push_back(std::move(w));
  LogLine(absl::StrCat("replica ", engine_->id(), ": installing member ", from,
                       "'s state at applied index ", *applied, " (", copy->size(), " records)"));
  const uint64_t at = *applied;
  local_->Submit(std::move(b), Guarded([at](ReplicatedStorage* self, absl::Status st) {
                   self->Installed(at, std::move(st));
                 }));
}

void ReplicatedStorage::Installed(uint64_t applied, absl::Status status) {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    if (!status.ok())
      Fatal(absl::StrCat("a copied state could not be written: ", status.ToString()));
    const SnapshotPoint point = installing_->point;
    installing_.reset();
    ++copies_;
    applied_ = submitted_apply_ = applied;
    seen_ = point.index;
    conf_ = point.conf;
    conf_index_ = point.conf_index;
    snapshot_index_ = point.index;
    absl::StatusOr<std::map<uint64_t, std::string>> disks = LoadRegistry(local_);
    if (!disks.ok()) Fatal(absl::StrCat("the copied disk registry: ", disks.status().ToString()));
    disks_.clear();
    for (const auto& [member, disk] : *disks) Learn(member, disk);
    if (!stopped_) Handle(engine_->PersistedSnapshot(Now()));
  }
  RunHook();
}

}  // namespace atomq::replication
