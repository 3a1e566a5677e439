// 3PC quorum termination (DESIGN.md section 3): single-decree Paxos over a
// transaction's participants. The ballot arithmetic lives in termination.cc.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <utility>

#include "atomq/v1/participant.pb.h"
#include "atomq/v1/records.pb.h"

namespace atomq::participant {

// A 3PC termination round this node leads (memory only; its ballot is on disk
// as proposed_ballot before any message carries it).
struct Round {
  uint64_t ballot = 0;  // 0: none running
  bool accepting = false;
  v1::TxnState value = v1::TXN_STATE_UNSPECIFIED;  // proposed in phase 2
  std::set<std::string> promised;
  std::set<std::string> accepted;
  bool has_best = false;  // some promise reported an accepted value
  uint64_t best_ballot = 0;
  v1::TxnState best_value = v1::TXN_STATE_UNSPECIFIED;
  uint64_t highest_seen = 0;  // highest ballot any acceptor reported
  uint32_t awaiting = 0;      // Promise/Accept messages sent, not answered yet
};

bool Decided(v1::TxnState s);
// (ballot, value) accepted; a PRECOMMITTED record from before ballots were
// recorded accepted COMMIT at ballot 0.
std::pair<uint64_t, v1::TxnState> AcceptedOf(const v1::PreparedRecord& rec);
size_t Majority(const v1::PreparedRecord& rec);
// This node's index in the participant list, -1 when absent.
int SelfIndex(const v1::PreparedRecord& rec);
bool IsParticipant(const v1::PreparedRecord& rec, const std::string& id);
// A ballot above `seen` in the ballot space of participant `self` of `n`
// (ballot mod (n + 1) == 1 + self).
uint64_t NextBallot(uint64_t seen, uint64_t n, int self);

}  // namespace atomq::participant
