// What a server takes to run as one replica of a group (docs/design.md
// 10.2), the same for a participant and a coordinator, and its serving
// loop: the group member until SIGINT/SIGTERM.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "common/access.h"
#include "common/server_flags.h"
#include "replication/group_member.h"

namespace atomq::replication {

struct GroupFlags {
  std::string group;                            // --group; empty: one disk, no group
  std::map<uint64_t, MemberAddresses> members;  // --group, parsed by CheckGroupFlags
  uint64_t member_id = 0;                       // --member_id
  std::string peer_listen;                      // --peer_listen
  bool join = false;                            // --join
  ReplicaTuning tuning;                         // --election_timeout_ms ...
  std::string role;  // "participant" or "coordinator" (AddGroupFlags), for metrics
  bool enabled() const { return !group.empty(); }
};

// `what`: "participant" or "coordinator", for --help and f->role.
void AddGroupFlags(CLI::App& app, GroupFlags* f, const char* what);
// Parses --group and checks the flags against each other.
absl::Status CheckGroupFlags(GroupFlags* f);

// Where callers reach this server: its group's members' client addresses
// ("a|b|c"), or `listen` when it is no group.
std::string CallerAddresses(const GroupFlags& f, const std::string& listen);

// Runs this replica of group `server.id` on `local` (opened with
// ReplicatedStorage::ReplicaDbs() among its sub-databases): `start` builds the
// served node whenever it leads. Returns when SIGINT/SIGTERM came and
// everything stopped; an error (the message) when it could not start.
absl::Status ServeInGroup(const GroupFlags& f, const ServerFlags& server,
                          std::vector<std::string> service_names,
                          std::shared_ptr<const Access> access, Storage* local,
                          GroupMember::StartLeading start);

}  // namespace atomq::replication
