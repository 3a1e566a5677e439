// Single-decree Paxos over a transaction's participants: the 3PC quorum
// termination (docs/design.md, "3PC with quorum termination"). Pure: no I/O,
// no clock. The value is a transaction's outcome (STATE_COMMITTED or
// STATE_ABORTED); the acceptors are its participants; a proposer is a
// participant leading a termination round or the coordinator.
//
// Ballots: with n = participants + 1, the coordinator owns the multiples of
// n and participant i (its index in the transaction's list) owns the ballots
// b with b % n == i + 1, so no two proposers ever use the same ballot. The
// coordinator's PreCommit is ballot 0's accept of COMMIT.
#pragma once

#include <cstdint>
#include <set>
#include <string>

#include "atomq/v1/types.pb.h"

namespace atomq::paxos {

// STATE_COMMITTED or STATE_ABORTED.
bool Decided(v1::TxnState state);

// Votes of `acceptors` that make a majority.
size_t Majority(size_t acceptors);

// The proposer slot of the coordinator; participant i has slot i + 1.
inline constexpr uint64_t kCoordinatorSlot = 0;

// The smallest ballot above `seen` in `slot`'s ballot space.
uint64_t FreshBallot(uint64_t seen, size_t acceptors, uint64_t slot);

// An acceptor's highest accepted (ballot, value); value UNSPECIFIED: none.
struct Accepted {
  uint64_t ballot = 0;
  v1::TxnState value = v1::TXN_STATE_UNSPECIFIED;
};

// What an acceptor does with a request, given what it holds durably.
enum class Answer {
  kRefuse,  // below its promise: answer no, with the promised ballot
  kGrant,   // already holds it: answer yes at once, nothing to write
  kWrite,   // make the new promise (and accepted value) durable, then answer yes
};
// Promise(ballot), ballot > 0, at an acceptor that promised `promised`.
Answer OnPromise(uint64_t promised, uint64_t ballot);
// Accept(ballot, value) at an acceptor that promised `promised` and holds
// `accepted`.
Answer OnAccept(uint64_t promised, const Accepted& accepted, uint64_t ballot, v1::TxnState value);

// A proposer's round at one ballot. Memory only: the proposer makes its
// ballot durable before any message carries it. Voters are named by id;
// each counts once.
class Round {
 public:
  // A round at `ballot` (> 0) over `acceptors`. highest_seen() carries over.
  void Begin(uint64_t ballot, size_t acceptors);
  // No round running; highest_seen() carries over.
  void End();

  uint64_t ballot() const { return ballot_; }  // 0: no round running
  bool running() const { return ballot_ != 0; }
  // Accept requests are out (after a majority promised).
  bool accepting() const { return accepting_; }
  v1::TxnState value() const { return value_; }  // what the accepts carry
  // The highest ballot any acceptor reported promising.
  uint64_t highest_seen() const { return highest_seen_; }
  void Saw(uint64_t ballot);

  // `voter` promised, reporting what it accepted. True when this promise
  // completes a majority: the caller then proposes Proposal() (or what a
  // test plant says) with Propose() and sends the accepts.
  bool Promised(const std::string& voter, const Accepted& accepted);
  // The value a majority's promises force: the one accepted at the highest
  // ballot, else ABORT.
  v1::TxnState Proposal() const;
  void Propose(v1::TxnState value);
  // `voter` accepted value(). True once a majority did: value() is chosen.
  bool AcceptedBy(const std::string& voter);

 private:
  uint64_t ballot_ = 0;
  size_t majority_ = 1;
  bool accepting_ = false;
  v1::TxnState value_ = v1::TXN_STATE_UNSPECIFIED;
  std::set<std::string> promised_;
  std::set<std::string> accepted_;
  Accepted best_;  // highest accepted among the promises
  uint64_t highest_seen_ = 0;
};

}  // namespace atomq::paxos
