// Known bugs the simulator plants on purpose to show that its checker
// catches them (tests/sim). TEST ONLY: every server runs with kNone.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace atomq {

enum class Plant {
  kNone,
  // Coordinator core.
  kCommitWithoutVotes,     // counts a NO vote as YES
  kOnePhaseMulti,          // commits every participant in one phase, each on its own
  kOnePhasePresumedAbort,  // answers ABORTED when a one-phase vote is lost or late
  kPreparingPresumedAbort,    // recovers a PREPARING record as aborted without asking
  // Participant core.
  kLeaderIgnoresAccepted,  // a termination leader proposes ABORT whatever was accepted
  kForgetBeforeEnd,        // erases a COMMITTED outcome as soon as it is durable
  // The simulator's adapters.
  kReplyBeforeDurable,  // the coordinator answers before its decision is synced
  kForgetPrepared,      // a participant loses its PREPARED records at a crash
  // Replication (replication/replicated_storage.h, and the simulator's
  // transport between replicas).
  kReplyBeforeReplicated,  // a batch's DoneFn runs once the leader stored it, before it commits
  kRejoinWithAmnesia,      // a replica whose disk was wiped is taken under its old id
  kActOnLostWrite,         // a core hears a batch failed by a lost leadership and acts on it
};

// "commit-without-votes", ...; "" for kNone.
const char* PlantName(Plant plant);
std::optional<Plant> ParsePlant(const std::string& name);
// Every plant but kNone, by name.
const std::vector<std::string>& PlantNames();

}  // namespace atomq
