// A deterministic simulator of an atomq cluster (docs/design.md section 2.6): the
// real CoordinatorCore and ParticipantCore driven as the gRPC adapters drive
// them, over a simulated network (drop, duplicate, delay, reorder, partition
// and heal), simulated disks (group commit; a crash loses what was not
// synced; slow fsyncs) and a simulated clock, with crashes and restarts of
// any process at any step. Everything derives from one seed: the same seed
// replays the same run (RunSeed returns a hash of the event trace).
//
// A checker (checker.h) observes every durable write and every reply and
// checks the invariants of docs/design.md section 4 after every step. At the end
// a liveness phase heals everything and requires every transaction decided;
// under 3PC first with the coordinator and one participant down (every 3PC
// transaction with a majority of its participants up must decide).
// Participants collect the outcomes of transactions the coordinator ENDED
// after a short retention (the END notice and the collection are modelled);
// the checker remembers every outcome that was ever durable.
// A consumer leases (never acks) from the participants' queue, whose memory
// window is 1 to 3 messages so that backlogs page in from disk; first
// deliveries must come in sequence order, and at the end each queue is
// drained and must match its disk, in order and in count.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/plant.h"

namespace atomq::sim {

enum class ProtocolMode { k2pc, k3pc, kMixed };

struct Options {
  uint64_t seed = 1;
  ProtocolMode mode = ProtocolMode::kMixed;
  // A deliberately broken behaviour (see Plants()).
  Plant plant = Plant::kNone;
  bool verbose = false;  // the event trace and the cores' log lines to stderr
  // Replicas of each participant and of the coordinator (docs/design.md
  // 10.2): 1 is one process on one disk; 3 makes each a group running the
  // real ReplicatedStorage and consensus engine, each replica on its own
  // simulated disk, with replica crashes, isolation, leadership transfer and
  // one wiped disk per group.
  int replicas = 1;
  // With replicas: one replica of each group may lose its disk and restart
  // empty under its old id (the amnesia docs/design.md 10.2 guards against).
  bool wipes = false;
  // With replicas: one replica of each group may lose its disk and be
  // replaced by a new member (a fourth, spare replica), added as a standby,
  // promoted and the old one removed, while transactions run.
  bool membership = false;
};

struct Result {
  uint64_t seed = 0;
  uint64_t txns = 0;
  uint64_t commits = 0;  // as the client was told
  uint64_t aborts = 0;
  uint64_t one_phase_commits = 0;   // commits of single-participant transactions (one phase)
  uint64_t outcomes_collected = 0;  // participants' outcomes erased from disk
  uint64_t state_copies = 0;        // replicas that installed another's state (replicas > 1)
  uint64_t leaderships = 0;         // times a replica began serving (replicas > 1)
  uint64_t steps = 0;
  uint64_t trace_hash = 0;
  std::vector<std::string> violations;  // safety: agreement, validity, durability, duplicates
  std::vector<std::string> blocked;     // liveness: undecided after the healing phases
};

Result RunSeed(const Options& options);

// Names accepted by Options::plant:
//   commit-without-votes     the coordinator counts a NO vote as YES
//   reply-before-durable     the coordinator's adapter answers COMMITTED as
//                            soon as the COMMIT record is submitted, before it is synced
//   leader-ignores-accepted  a participant's termination leader proposes ABORT
//                            whatever a majority accepted
//   forget-prepared          a participant loses its PREPARED records at a crash
//   one-phase-multi          the coordinator commits every participant of a
//                            transaction in one phase, each on its own
//   one-phase-presumed-abort the coordinator answers ABORTED when a one-phase
//                            vote is lost or late (the participant may have committed)
//   forget-before-end        a participant erases its COMMITTED outcome as soon
//                            as it is durable, without the coordinator's END
//   preparing-presumed-abort    the coordinator recovers a parallel commit's
//                            PREPARING record as aborted, without asking the
//                            participants (who may all hold it prepared)
//   reply-before-replicated  (replicas > 1) a replica answers a batch once
//                            the leader stored it, before the group committed it
//   rejoin-with-amnesia      (replicas > 1) a replica whose disk was wiped is
//                            taken back under its old id (it may vote twice)
//   act-on-lost-write        (replicas > 1) a core hears that a batch failed
//                            because its group's leadership was lost (the
//                            batch may still commit) and acts on the failure
const std::vector<std::string>& Plants();

const char* ModeName(ProtocolMode mode);
// "build/bin/atomq-sim --seed=S --protocol=P [--replicas=N] [--plant=X]"
std::string ReplayCommand(const Options& options);

}  // namespace atomq::sim
