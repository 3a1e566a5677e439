// A replica on an empty disk starts a new group only when every other
// member is new, joins a running group that never knew it, waits for
// answers, and is refused once the group knew its disk.
#include "replication/fresh_start.h"

#include "gtest/gtest.h"

namespace atomq::replication {
namespace {

TEST(FreshStartTest, EveryOtherMemberDecides) {
  const std::vector<uint64_t> others = {2, 3};
  EXPECT_EQ(DecideFreshStart(others, {{2, PeerLog{0, 0, false}}}).kind, FreshStart::kWait);
  EXPECT_EQ(DecideFreshStart(others, {{2, PeerLog{1, 0, false}}, {3, PeerLog{0, 0, false}}}).kind,
            FreshStart::kNewGroup);
  // A lagging member new-looking, one with the log: not a new group.
  EXPECT_EQ(DecideFreshStart(others, {{2, PeerLog{1, 0, false}}, {3, PeerLog{9, 0, false}}}).kind,
            FreshStart::kLate);
  EXPECT_EQ(DecideFreshStart(others, {{2, PeerLog{1, 0, false}}, {3, PeerLog{0, 7, false}}}).kind,
            FreshStart::kLate);
  // The group knew this member's disk: refused, even before all answer.
  const FreshStart refused = DecideFreshStart(others, {{3, PeerLog{9, 0, true}}});
  EXPECT_EQ(refused.kind, FreshStart::kRefused);
  EXPECT_NE(refused.why.find("replace this member"), std::string::npos) << refused.why;
  // A lagging member alone is not enough to decide the group is running.
  EXPECT_EQ(DecideFreshStart(others, {{3, PeerLog{9, 0, false}}}).kind, FreshStart::kWait);
}

}  // namespace
}  // namespace atomq::replication
