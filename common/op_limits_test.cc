#include "common/op_limits.h"

#include "atomq/v1/types.pb.h"
#include "gtest/gtest.h"

namespace atomq {
namespace {

TEST(OpLimits, PayloadAndHeadersWithinLimitsPass) {
  v1::Enqueue e;
  e.set_payload(std::string(8, 'x'));
  (*e.mutable_headers())["k"] = "v";
  EXPECT_TRUE(CheckMessageLimits({10, 1}, "op 0: ", e.payload(), e.headers()).ok());
  EXPECT_EQ(MessageBytes(e.payload(), e.headers()), 10u);
}

// Headers count with the payload against --payload_bytes_max: a small
// payload cannot carry a large message in its headers.
TEST(OpLimits, HeadersCountWithThePayload) {
  v1::Enqueue e;
  e.set_payload(std::string(8, 'x'));
  (*e.mutable_headers())["key"] = "v";
  absl::Status s = CheckMessageLimits({10, 1}, "op 1: ", e.payload(), e.headers());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "op 1: payload and headers are 12 bytes; at most --payload_bytes_max=10");
}

TEST(OpLimits, HeaderBytesHaveTheirOwnLimit) {
  v1::Enqueue e;
  (*e.mutable_headers())["k"] = std::string(100, 'v');
  MessageLimits limits;
  limits.header_bytes_max = 100;
  absl::Status s = CheckMessageLimits(limits, "", e.payload(), e.headers());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "headers are 101 bytes; at most --header_bytes_max=100");
  limits.header_bytes_max = 101;
  EXPECT_TRUE(CheckMessageLimits(limits, "", e.payload(), e.headers()).ok());
}

TEST(OpLimits, TxnBytes) {
  MessageLimits limits;
  limits.txn_bytes_max = 20;
  EXPECT_TRUE(CheckTxnBytes(limits, "", 20).ok());
  absl::Status s = CheckTxnBytes(limits, "transaction t1: ", 21);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "transaction t1: 21 bytes of messages; at most --txn_bytes_max=20");
}

TEST(OpLimits, OversizedPayloadNamesTheOpAndTheFlag) {
  v1::Enqueue e;
  e.set_payload(std::string(11, 'x'));
  absl::Status s = CheckMessageLimits({10, 1}, "op 2: ", e.payload(), e.headers());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "op 2: payload is 11 bytes; at most --payload_bytes_max=10");
}

TEST(OpLimits, TooManyHeaders) {
  v1::Enqueue e;
  (*e.mutable_headers())["a"] = "1";
  (*e.mutable_headers())["b"] = "2";
  absl::Status s = CheckMessageLimits({10, 1}, "", e.payload(), e.headers());
  EXPECT_EQ(s.message(), "2 headers; at most --headers_max=1");
}

TEST(OpLimits, OpCount) {
  EXPECT_TRUE(CheckOpCount(3, 3).ok());
  EXPECT_EQ(CheckOpCount(4, 3).message(), "4 ops; at most --ops_per_txn_max=3");
}

}  // namespace
}  // namespace atomq
