#include "common/leader_book.h"

#include "gtest/gtest.h"

namespace atomq {
namespace {

v1::NotLeader Leader(const std::string& address) {
  v1::NotLeader where;
  where.set_group("p1");
  where.set_leader_address(address);
  where.set_leader_member(address.empty() ? 0 : 2);
  where.set_term(7);
  return where;
}

TEST(LeaderBookTest, NotLeaderRoundTripsThroughTheStatusDetails) {
  grpc::Status s = NotLeaderStatus(Leader("127.0.0.1:2"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(s.error_message().find("the leader is 127.0.0.1:2 (member 2, term 7)"),
            std::string::npos)
      << s.error_message();
  std::optional<v1::NotLeader> back = NotLeaderOf(s);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->leader_address(), "127.0.0.1:2");
  EXPECT_EQ(back->term(), 7u);
  EXPECT_FALSE(NotLeaderOf(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down")).has_value());
  EXPECT_FALSE(
      NotLeaderOf(grpc::Status(grpc::StatusCode::UNAVAILABLE, "x", "not a status")).has_value());
  EXPECT_NE(NotLeaderStatus(Leader("")).error_message().find("no leader is known"),
            std::string::npos);
}

TEST(LeaderBookTest, FollowsARedirectToAConfiguredMemberOnly) {
  LeaderBook book;
  const std::string group = "127.0.0.1:1|127.0.0.1:2|127.0.0.1:3";
  EXPECT_EQ(book.Current(group), "127.0.0.1:1");
  EXPECT_TRUE(book.Learn(group, "127.0.0.1:1", NotLeaderStatus(Leader("127.0.0.1:3"))));
  EXPECT_EQ(book.Current(group), "127.0.0.1:3");
  // A redirect elsewhere is not followed: the guess moves on as if the
  // member were down.
  EXPECT_TRUE(book.Learn(group, "127.0.0.1:3", NotLeaderStatus(Leader("127.0.0.9:1"))));
  EXPECT_EQ(book.Current(group), "127.0.0.1:1");
}

TEST(LeaderBookTest, MovesOnFromAMemberThatIsDownAndIgnoresOtherErrors) {
  LeaderBook book;
  const std::string group = "a:1|b:1|c:1";
  EXPECT_FALSE(book.Learn(group, "a:1", grpc::Status(grpc::StatusCode::NOT_FOUND, "no queue")));
  EXPECT_FALSE(book.Learn(group, "a:1", grpc::Status::OK));
  EXPECT_EQ(book.Current(group), "a:1");
  EXPECT_TRUE(book.Learn(group, "a:1", grpc::Status(grpc::StatusCode::UNAVAILABLE, "refused")));
  EXPECT_EQ(book.Current(group), "b:1");
  // A late failure of a call to a member no longer guessed changes nothing.
  EXPECT_FALSE(book.Learn(group, "a:1", grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "")));
  EXPECT_EQ(book.Current(group), "b:1");
  EXPECT_TRUE(book.Learn(group, "b:1", grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "")));
  EXPECT_TRUE(book.Learn(group, "c:1", NotLeaderStatus(Leader(""))));
  EXPECT_EQ(book.Current(group), "a:1");
}

TEST(LeaderBookTest, AGroupOfOneNeverMoves) {
  LeaderBook book;
  EXPECT_EQ(book.Current("a:1"), "a:1");
  EXPECT_FALSE(book.Learn("a:1", "a:1", NotLeaderStatus(Leader("b:1"))));
  EXPECT_EQ(book.Current("a:1"), "a:1");
}

}  // namespace
}  // namespace atomq
