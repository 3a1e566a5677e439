// The engine's messages on the wire between the members of a group
// (atomq.v1.RaftMessageProto), checked on the way in: a peer's message
// that names no known type or entry type is INVALID_ARGUMENT, not a crash.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "atomq/v1/replica.pb.h"
#include "replication/raft_engine.h"

namespace atomq::replication {

v1::RaftMessageProto ToWire(const RaftMessage& m);
// `peer` and `peer_address` are the sender's, from the authenticated call.
absl::StatusOr<RaftMessage> FromWire(const v1::RaftMessageProto& p, uint64_t peer,
                                     const std::string& peer_address);

}  // namespace atomq::replication
