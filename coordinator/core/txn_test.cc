// The transaction state machine: the table of allowed phase changes, and
// the check that stops any other.

#include "coordinator/core/txn.h"

#include <set>

#include "gtest/gtest.h"

namespace atomq::coordinator {
namespace {

constexpr Phase kAllPhases[] = {
    Phase::kNew,          Phase::kPreparing,  Phase::kProbing,
    Phase::kFencing,      Phase::kFetching,   Phase::kPrecommitting,
    Phase::kPrecommitted, Phase::kCommitting, Phase::kCommittingPrecommitted,
    Phase::kCommitted,    Phase::kAborting,   Phase::kAborted,
    Phase::kCommitEnded,  Phase::kAbortEnded,
};

TEST(PhaseTableTest, EveryPhaseHasOneRule) {
  std::set<Phase> seen;
  for (const PhaseRule& r : PhaseRules())
    EXPECT_TRUE(seen.insert(r.phase).second) << PhaseName(r.phase);
  for (Phase p : kAllPhases) EXPECT_EQ(seen.count(p), 1u) << PhaseName(p);
}

TEST(PhaseTableTest, EveryListedChangeIsAllowedAndNoOther) {
  for (const PhaseRule& r : PhaseRules()) {
    for (Phase prev : kAllPhases) {
      const bool listed = std::find(r.after.begin(), r.after.end(), prev) != r.after.end();
      EXPECT_EQ(PhaseMayFollow(r.phase, prev), listed)
          << PhaseName(prev) << " -> " << PhaseName(r.phase);
    }
    for (Phase prev : r.after) {
      Txn t;
      t.phase = prev;  // a test may place it anywhere; the core only moves it
      MoveTo(t, r.phase);
      EXPECT_EQ(t.phase, r.phase);
    }
  }
}

TEST(PhaseTableTest, DecisionsNeverTurnAround) {
  for (Phase commit : {Phase::kCommittingPrecommitted, Phase::kCommitted, Phase::kCommitEnded}) {
    EXPECT_FALSE(PhaseMayFollow(Phase::kAborting, commit)) << PhaseName(commit);
  }
  for (Phase abort : {Phase::kAborting, Phase::kAborted, Phase::kAbortEnded}) {
    EXPECT_FALSE(PhaseMayFollow(Phase::kCommitting, abort)) << PhaseName(abort);
    EXPECT_FALSE(PhaseMayFollow(Phase::kCommitted, abort)) << PhaseName(abort);
  }
  // ENDED follows a durable decision only.
  EXPECT_FALSE(PhaseMayFollow(Phase::kAbortEnded, Phase::kAborting));
  EXPECT_FALSE(PhaseMayFollow(Phase::kCommitEnded, Phase::kCommitting));
}

TEST(PhaseTableDeathTest, AnIllegalChangeTripsTheCheck) {
  Txn t;
  MoveTo(t, Phase::kPreparing);
  MoveTo(t, Phase::kCommitting);
  MoveTo(t, Phase::kCommitted);
  EXPECT_DEATH(MoveTo(t, Phase::kAborting), "a transaction phase change the table allows");
  Txn ended;
  EXPECT_DEATH(MoveTo(ended, Phase::kFetching), "a transaction phase change the table allows");
}

}  // namespace
}  // namespace atomq::coordinator
