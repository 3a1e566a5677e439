// What atomqctl's cluster commands share: asking every member of a group
// for its status, and finding its leader.
#pragma once

#include <string>
#include <vector>

#include "atomq/v1/replica.grpc.pb.h"
#include "cli/ctl_common.h"

namespace atomq::ctl {

// One status per member, in the order given, asked at its peer address
// (or, with `client`, at its client address, which serves Replica.Status
// too); a member that cannot be asked is "unreachable" with the error. Each
// one's lag is filled in.
v1::GroupStatusReport AskMembers(const Globals& g, const std::vector<std::string>& addresses,
                                 bool client = false);
// The member that says it leads in the highest term (a deposed leader cut
// off from the others may still say so), or null.
const v1::ReplicaStatus* LeaderIn(const v1::GroupStatusReport& report);

// Membership: cluster add, promote, remove and replace.
void AddMemberCommands(CLI::App* cluster, const Globals& g, int* rc);

}  // namespace atomq::ctl
