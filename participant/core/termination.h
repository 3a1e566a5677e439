// 3PC quorum termination (docs/design.md section 3.7): single-decree Paxos
// (common/paxos.h) over a transaction's participants, this node as acceptor
// and as a leader of rounds.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <utility>

#include "atomq/v1/participant.pb.h"
#include "atomq/v1/records.pb.h"
#include "common/paxos.h"

namespace atomq::participant {

// A 3PC termination round this node leads (memory only; its ballot is on disk
// as proposed_ballot before any message carries it).
struct Round {
  paxos::Round paxos;     // ballot (0: none running), promises, accepts, value
  uint32_t awaiting = 0;  // Promise/Accept messages sent, not answered yet
};

using paxos::Decided;
// What the record accepted; a PRECOMMITTED record from before ballots were
// recorded accepted COMMIT at ballot 0.
paxos::Accepted AcceptedOf(const v1::PreparedRecord& rec);
// This node's index in the participant list, -1 when absent.
int SelfIndex(const v1::PreparedRecord& rec);
bool IsParticipant(const v1::PreparedRecord& rec, const std::string& id);

}  // namespace atomq::participant
