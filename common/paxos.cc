#include "common/paxos.h"

#include <algorithm>

#include "common/check.h"

namespace atomq::paxos {

bool Decided(v1::TxnState state) {
  return state == v1::STATE_COMMITTED || state == v1::STATE_ABORTED;
}

size_t Majority(size_t acceptors) { return acceptors / 2 + 1; }

uint64_t FreshBallot(uint64_t seen, size_t acceptors, uint64_t slot) {
  const uint64_t n = static_cast<uint64_t>(acceptors) + 1;
  ATOMQ_CHECK(slot < n, "a proposer slot is within the ballot space");
  const uint64_t ballot = (seen / n + 1) * n + slot;
  ATOMQ_CHECK(ballot > seen && ballot % n == slot, "a new ballot is fresh and the proposer's own");
  return ballot;
}

Answer OnPromise(uint64_t promised, uint64_t ballot) {
  if (ballot < promised) return Answer::kRefuse;
  return ballot == promised ? Answer::kGrant : Answer::kWrite;
}

Answer OnAccept(uint64_t promised, const Accepted& accepted, uint64_t ballot, v1::TxnState value) {
  if (ballot < promised) return Answer::kRefuse;
  if (ballot == accepted.ballot && value == accepted.value) return Answer::kGrant;
  return Answer::kWrite;
}

void Round::Begin(uint64_t ballot, size_t acceptors) {
  ATOMQ_CHECK(ballot > 0, "ballot 0 is the coordinator's PreCommit, never a round");
  const uint64_t seen = highest_seen_;
  *this = Round{};
  highest_seen_ = seen;
  ballot_ = ballot;
  majority_ = Majority(acceptors);
}

void Round::End() {
  const uint64_t seen = highest_seen_;
  *this = Round{};
  highest_seen_ = seen;
}

void Round::Saw(uint64_t ballot) { highest_seen_ = std::max(highest_seen_, ballot); }

bool Round::Promised(const std::string& voter, const Accepted& accepted) {
  if (!running() || accepting_) return false;
  if (!promised_.insert(voter).second) return false;
  if (Decided(accepted.value) && (!Decided(best_.value) || accepted.ballot > best_.ballot)) {
    best_ = accepted;
  }
  return promised_.size() >= majority_;
}

v1::TxnState Round::Proposal() const {
  return Decided(best_.value) ? best_.value : v1::STATE_ABORTED;
}

void Round::Propose(v1::TxnState value) {
  ATOMQ_CHECK(running() && !accepting_ && promised_.size() >= majority_,
              "a round proposes once, after a majority promised");
  ATOMQ_CHECK(Decided(value), "a round proposes COMMIT or ABORT");
  accepting_ = true;
  value_ = value;
}

bool Round::AcceptedBy(const std::string& voter) {
  if (!accepting_) return false;
  accepted_.insert(voter);
  return accepted_.size() >= majority_;
}

}  // namespace atomq::paxos
