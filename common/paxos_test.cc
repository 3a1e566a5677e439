#include "common/paxos.h"

#include <map>
#include <optional>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace atomq::paxos {
namespace {

TEST(Paxos, FreshBallotsAreAboveWhatWasSeenAndInTheProposersSpace) {
  // Three participants: n = 4; the coordinator owns 4, 8, ...; participant 1
  // (slot 2) owns 2, 6, 10, ...; a fresh one is in the block above `seen`.
  EXPECT_EQ(FreshBallot(0, 3, kCoordinatorSlot), 4u);
  EXPECT_EQ(FreshBallot(4, 3, kCoordinatorSlot), 8u);
  EXPECT_EQ(FreshBallot(0, 3, 2), 6u);
  EXPECT_EQ(FreshBallot(5, 3, 2), 10u);  // always the next block of n
  EXPECT_EQ(FreshBallot(6, 3, 2), 10u);
  std::set<uint64_t> used;
  for (uint64_t slot = 0; slot <= 3; ++slot) {
    uint64_t b = 0;
    for (int i = 0; i < 50; ++i) {
      b = FreshBallot(b, 3, slot);
      EXPECT_TRUE(used.insert(b).second) << "ballot " << b << " used twice";
    }
  }
}

TEST(Paxos, AcceptorAnswers) {
  EXPECT_EQ(OnPromise(5, 4), Answer::kRefuse);
  EXPECT_EQ(OnPromise(5, 5), Answer::kGrant);
  EXPECT_EQ(OnPromise(5, 6), Answer::kWrite);
  const Accepted held{5, v1::STATE_COMMITTED};
  EXPECT_EQ(OnAccept(6, held, 5, v1::STATE_COMMITTED), Answer::kRefuse);
  EXPECT_EQ(OnAccept(5, held, 5, v1::STATE_COMMITTED), Answer::kGrant);
  EXPECT_EQ(OnAccept(5, held, 5, v1::STATE_ABORTED), Answer::kWrite);
  EXPECT_EQ(OnAccept(5, held, 9, v1::STATE_COMMITTED), Answer::kWrite);
}

TEST(Paxos, RoundProposesTheHighestAcceptedValueOfAMajority) {
  Round r;
  r.Begin(9, 3);
  EXPECT_FALSE(r.Promised("p1", {4, v1::STATE_COMMITTED}));
  EXPECT_FALSE(r.Promised("p1", {4, v1::STATE_COMMITTED})) << "a voter counts once";
  EXPECT_TRUE(r.Promised("p2", {6, v1::STATE_ABORTED}));
  EXPECT_EQ(r.Proposal(), v1::STATE_ABORTED);
  r.Propose(r.Proposal());
  EXPECT_FALSE(r.Promised("p3", {8, v1::STATE_COMMITTED})) << "late promises change nothing";
  EXPECT_EQ(r.value(), v1::STATE_ABORTED);
  EXPECT_FALSE(r.AcceptedBy("p1"));
  EXPECT_TRUE(r.AcceptedBy("p3"));
}

TEST(Paxos, RoundWithNothingAcceptedProposesAbortAndKeepsWhatItSaw) {
  Round r;
  r.Saw(12);
  r.Begin(13, 3);
  EXPECT_FALSE(r.Promised("p1", {}));
  EXPECT_TRUE(r.Promised("p2", {}));
  EXPECT_EQ(r.Proposal(), v1::STATE_ABORTED);
  r.End();
  EXPECT_FALSE(r.running());
  EXPECT_EQ(r.highest_seen(), 12u);
}

TEST(PaxosDeathTest, ProposingBeforeAMajorityTripsACheck) {
  Round r;
  r.Begin(5, 3);
  r.Promised("p1", {});
  EXPECT_DEATH(r.Propose(v1::STATE_COMMITTED), "after a majority promised");
}

// Two proposers race over three acceptors with messages delivered in a
// random order (some lost): whatever is chosen, never two values.
struct Acceptor {
  uint64_t promised = 0;
  Accepted accepted;
};

std::optional<v1::TxnState> RunRace(uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Acceptor> acceptors(3);
  // The coordinator's PreCommit is ballot 0's accept of COMMIT: in odd
  // seeds a majority accepted it (COMMIT is chosen before any round), in
  // even seeds one acceptor did (nothing is chosen yet).
  std::optional<v1::TxnState> chosen;
  acceptors[0].accepted = {0, v1::STATE_COMMITTED};
  if (seed % 2 == 1) {
    acceptors[1].accepted = {0, v1::STATE_COMMITTED};
    chosen = v1::STATE_COMMITTED;
  }
  struct Msg {
    int proposer, acceptor;
    bool accept;
    uint64_t ballot;
    v1::TxnState value;
  };
  std::vector<Round> rounds(2);
  std::vector<Msg> net;
  auto start = [&](int p) {
    const uint64_t b = FreshBallot(rounds[p].highest_seen(), 3, p + 1);
    rounds[p].Saw(b);
    rounds[p].Begin(b, 3);
    for (int a = 0; a < 3; ++a) net.push_back({p, a, false, b, v1::TXN_STATE_UNSPECIFIED});
  };
  start(0);
  start(1);
  for (int step = 0; step < 200 && !net.empty(); ++step) {
    const size_t k = rng() % net.size();
    const Msg m = net[k];
    net.erase(net.begin() + static_cast<long>(k));
    if (rng() % 5 == 0) continue;  // lost
    Acceptor& acc = acceptors[m.acceptor];
    Round& r = rounds[m.proposer];
    const std::string voter = std::to_string(m.acceptor);
    if (!m.accept) {
      const Answer a = OnPromise(acc.promised, m.ballot);
      if (a == Answer::kWrite) acc.promised = m.ballot;
      if (a == Answer::kRefuse || r.ballot() != m.ballot) {
        r.Saw(acc.promised);
        if (rng() % 3 == 0) start(m.proposer);
        continue;
      }
      if (r.Promised(voter, acc.accepted)) {
        r.Propose(r.Proposal());
        for (int a = 0; a < 3; ++a) net.push_back({m.proposer, a, true, m.ballot, r.value()});
      }
      continue;
    }
    const Answer a = OnAccept(acc.promised, acc.accepted, m.ballot, m.value);
    if (a == Answer::kRefuse) continue;
    acc.promised = m.ballot;
    acc.accepted = {m.ballot, m.value};
    if (r.ballot() == m.ballot && r.AcceptedBy(voter)) {
      if (chosen && *chosen != r.value()) return v1::TXN_STATE_UNSPECIFIED;  // two values
      chosen = r.value();
    }
  }
  return chosen;
}

TEST(Paxos, RacingProposersNeverChooseTwoValues) {
  int decided = 0;
  for (uint32_t seed = 1; seed <= 2000; ++seed) {
    std::optional<v1::TxnState> v = RunRace(seed);
    ASSERT_NE(v, std::optional<v1::TxnState>(v1::TXN_STATE_UNSPECIFIED)) << "seed " << seed;
    decided += v ? 1 : 0;
  }
  EXPECT_GT(decided, 100) << "the race should decide in many seeds";
}

}  // namespace
}  // namespace atomq::paxos
