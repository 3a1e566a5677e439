#include "replication/new_group.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "replication/raft_log.h"
#include "replication/replica_internal.h"
#include "replication/replicated_storage.h"

namespace atomq::replication {
namespace {

// The term of entry `index`, which the store applied: its snapshot point's
// or its log's.
absl::StatusOr<uint64_t> TermOf(const DurableState& d, uint64_t index) {
  if (d.snapshot.has_value() && d.snapshot->index == index) return d.snapshot->term;
  if (index >= d.first_index && index - d.first_index < d.entries.size()) {
    return d.entries[index - d.first_index].term;
  }
  return absl::DataLossError(
      absl::StrCat("applied index ", index, " is neither the snapshot point nor in the log"));
}

// Every member id the old group had: its registry's and its last
// configuration's (the log's latest change, else the snapshot's).
absl::StatusOr<std::set<uint64_t>> OldMembers(Storage* store, const DurableState& d) {
  absl::StatusOr<std::map<uint64_t, std::string>> registry = LoadRegistry(store);
  if (!registry.ok()) return registry.status();
  std::set<uint64_t> ids;
  for (const auto& [id, disk] : *registry) ids.insert(id);
  std::string conf = d.snapshot.has_value() ? d.snapshot->conf : "";
  for (const LogEntry& e : d.entries) {
    if (e.type == EntryType::kChange) conf = e.data;
  }
  if (!conf.empty()) {
    absl::StatusOr<std::vector<Member>> members = DecodeConfiguration(conf);
    if (!members.ok()) return members.status();
    for (const Member& m : *members) ids.insert(m.id);
  }
  return ids;
}

}  // namespace

absl::StatusOr<Batch> NewGroupWrites(Storage* store, const Member& self) {
  absl::StatusOr<DurableState> d = RaftLog::Load(store);
  if (!d.ok()) return d.status();
  absl::StatusOr<std::optional<std::string>> applied =
      store->Get(ReplicatedStorage::kAppliedDb, kAppliedKey);
  if (!applied.ok()) return applied.status();
  if (!applied->has_value() || (*applied)->size() != 8 || DecodeU64(**applied) == 0) {
    return absl::FailedPreconditionError(
        "the store holds no applied index: it is not a group member's, or it applied nothing");
  }
  const uint64_t index = DecodeU64(**applied);
  absl::StatusOr<uint64_t> term = TermOf(*d, index);
  if (!term.ok()) return term.status();
  absl::StatusOr<std::set<uint64_t>> old = OldMembers(store, *d);
  if (!old.ok()) return old.status();

  DurableState kept = *d;
  kept.vote = 0;  // a vote of the old group's elections
  RaftLog log(kept);
  Member voter = self;
  voter.role = MemberRole::kVoter;
  Batch b = log.Install(SnapshotPoint{index, *term, EncodeConfiguration({voter}), index});
  b.writes.push_back(Write{kReplicaMetaDb, kDiskKey, "", true});
  absl::Status scanned =
      store->Scan(kReplicaMetaDb, kHeardPrefix, [&](std::string_view key, std::string_view) {
        b.writes.push_back(Write{kReplicaMetaDb, std::string(key), "", true});
        return true;
      });
  if (!scanned.ok()) return scanned;
  for (uint64_t id : *old) {
    const bool mine = id == self.id;
    b.writes.push_back(
        Write{ReplicatedStorage::kDisksDb, EncodeU64(id), mine ? "" : kRetiredDisk, mine});
  }
  return b;
}

}  // namespace atomq::replication
