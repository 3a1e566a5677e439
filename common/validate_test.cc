#include "common/validate.h"

#include <string>

#include "gtest/gtest.h"

namespace atomq {
namespace {

bool Mentions(const absl::Status& s, const std::string& text) {
  return std::string(s.message()).find(text) != std::string::npos;
}

TEST(ValidateTest, GoodIds) {
  EXPECT_TRUE(ValidateTxnId("a").ok());
  EXPECT_TRUE(ValidateTxnId("coord-1:7:000042").ok());
  EXPECT_TRUE(ValidateTxnId("A.Z_a-z:0.9").ok());
  EXPECT_TRUE(ValidateTxnId(std::string(kTxnIdBytesMax, 'x')).ok());
  EXPECT_TRUE(ValidateNodeId("participant-1").ok());
  EXPECT_TRUE(ValidateNodeId(std::string(kNodeIdBytesMax, 'n')).ok());
  EXPECT_TRUE(ValidateQueueName("orders.eu-west_1").ok());
  EXPECT_TRUE(ValidateQueueName(std::string(kQueueNameBytesMax, 'q')).ok());
}

TEST(ValidateTest, Empty) {
  absl::Status s = ValidateTxnId("");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(s, "transaction id")) << s;
  EXPECT_TRUE(Mentions(s, "empty")) << s;
  EXPECT_TRUE(Mentions(ValidateNodeId(""), "node id is empty"));
  EXPECT_TRUE(Mentions(ValidateQueueName(""), "queue name is empty"));
}

TEST(ValidateTest, TooLong) {
  absl::Status s = ValidateTxnId(std::string(kTxnIdBytesMax + 1, 'x'));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(s, "transaction id")) << s;
  EXPECT_TRUE(Mentions(s, "129 bytes")) << s;
  EXPECT_TRUE(Mentions(s, "at most 128")) << s;

  s = ValidateQueueName(std::string(kQueueNameBytesMax + 1, 'q'));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(s, "queue name")) << s;
  EXPECT_TRUE(Mentions(s, "at most 255")) << s;

  EXPECT_EQ(ValidateNodeId(std::string(kNodeIdBytesMax + 1, 'n')).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ValidateTest, BadByte) {
  absl::Status s = ValidateTxnId("abc/def");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(s, "transaction id")) << s;
  EXPECT_TRUE(Mentions(s, "0x2f")) << s;  // '/'
  EXPECT_TRUE(Mentions(s, "offset 3")) << s;

  s = ValidateNodeId(std::string("n\0de", 4));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(s, "node id")) << s;
  EXPECT_TRUE(Mentions(s, "0x00")) << s;

  for (const char* bad : {"a b", "é", "a\n", "a*", "q/1"}) {
    EXPECT_EQ(ValidateQueueName(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(Mentions(ValidateQueueName("\xff"), "0xff"));
}

TEST(ValidateTest, ClipEscapesAndShortens) {
  EXPECT_EQ(Clip("plain"), "plain");
  EXPECT_EQ(Clip("two\nlines \"q\" \\"), "two\\x0alines \"q\" \\x5c");
  EXPECT_EQ(Clip(std::string("\xff\0", 2)), "\\xff\\x00");
  EXPECT_EQ(Clip(std::string(10000, 'a'), 4), "aaaa...(10000 bytes)");
}

}  // namespace
}  // namespace atomq
