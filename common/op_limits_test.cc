#include "common/op_limits.h"

#include "atomq/v1/types.pb.h"
#include "gtest/gtest.h"

namespace atomq {
namespace {

TEST(OpLimits, PayloadAndHeadersWithinLimitsPass) {
  v1::Enqueue e;
  e.set_payload(std::string(10, 'x'));
  (*e.mutable_headers())["k"] = "v";
  EXPECT_TRUE(CheckMessageLimits({10, 1}, "op 0: ", e.payload(), e.headers()).ok());
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
