// A group whose every member lost its disk, begun again from one member's
// backup (atomqctl restore --new_group, docs/design.md 10.2): the restored
// store becomes the only member of a new group that goes on from the
// backup's version.
//
// - Its log becomes a snapshot point at its applied index (the entries go),
//   so a member added later copies the state before it takes any entry: a
//   log begun again at index 1 would leave the added members without the
//   restored state.
// - It takes a new disk id and forgets whom it heard from.
// - Every other member id the old group registered is retired (registered
//   to a disk no replica has), so neither an old member's disk nor a new
//   disk under an old id is ever taken: members are added under new ids.
// - The leadership epoch stays, so that nothing a new leader mints from it
//   (the coordinator's transaction ids) repeats one of the old group's.
#pragma once

#include "absl/status/statusor.h"
#include "common/storage.h"
#include "replication/raft_engine.h"

namespace atomq::replication {

// What the registry holds for a member id the old group used.
inline constexpr char kRetiredDisk[] = "retired (its group was begun again from a backup)";

// The writes that make `store` (a group member's, restored) the seed of a
// new group whose only member, a voter, is `self`. FAILED_PRECONDITION for
// a store that is not a group member's or never applied anything.
absl::StatusOr<Batch> NewGroupWrites(Storage* store, const Member& self);

}  // namespace atomq::replication
