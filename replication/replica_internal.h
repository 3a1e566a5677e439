// What replicated_storage.cc and replica_snapshot.cc share, and nothing
// else uses.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "common/storage.h"

namespace atomq::replication {

inline constexpr char kAppliedKey[] = "applied";       // in ReplicatedStorage::kAppliedDb
inline constexpr char kReplicaMetaDb[] = "raft_meta";  // RaftLog's; this replica's own
inline constexpr char kDiskKey[] = "disk";
inline constexpr char kHeardPrefix[] = "heard/";  // + member id: the first disk heard from it

// A replica whose own disk fails cannot go on: what it acknowledged could
// be lost. Stop, as a failed write does on a single disk.
[[noreturn]] void Fatal(const std::string& what);

// The group's disk registry as this replica's store holds it.
absl::StatusOr<std::map<uint64_t, std::string>> LoadRegistry(Storage* local);

}  // namespace atomq::replication
