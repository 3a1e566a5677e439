#include "common/codec.h"

#include <algorithm>
#include <vector>

#include "atomq/v1/records.pb.h"
#include "atomq/v1/types.pb.h"
#include "gtest/gtest.h"

namespace atomq {
namespace {

v1::CoordinatorTxnRecord SampleRecord() {
  v1::CoordinatorTxnRecord r;
  r.set_txn_id("t-1:42");
  r.set_protocol(v1::THREE_PC);
  r.set_state(v1::STATE_COMMITTED);
  r.set_created_unix_ms(1'700'000'000'123);
  r.set_ops_digest(0xdeadbeefcafef00dull);
  r.add_participants("p1");
  r.add_participants("p2");
  r.add_sequences(7);
  return r;
}

TEST(CodecTest, RecordRoundTrip) {
  v1::CoordinatorTxnRecord in = SampleRecord();
  std::string value = EncodeRecord(in);
  v1::CoordinatorTxnRecord out;
  ASSERT_TRUE(DecodeRecord(value, &out).ok());
  EXPECT_EQ(out.SerializeAsString(), in.SerializeAsString());
  EXPECT_EQ(out.txn_id(), "t-1:42");
  EXPECT_EQ(out.participants_size(), 2);
}

TEST(CodecTest, EmptyMessageRoundTrip) {
  v1::MetaRecord in;
  std::string value = EncodeRecord(in);
  EXPECT_EQ(value.size(), 4u);  // the checksum alone
  v1::MetaRecord out;
  EXPECT_TRUE(DecodeRecord(value, &out).ok());
}

TEST(CodecTest, FlippedByteIsDataLoss) {
  const std::string value = EncodeRecord(SampleRecord());
  // Every position, checksum bytes included.
  for (size_t i = 0; i < value.size(); ++i) {
    std::string bad = value;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    v1::CoordinatorTxnRecord out;
    absl::Status s = DecodeRecord(bad, &out);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "byte " << i << ": " << s;
  }
}

TEST(CodecTest, TruncatedIsDataLoss) {
  const std::string value = EncodeRecord(SampleRecord());
  for (size_t n = 0; n < value.size(); ++n) {
    v1::CoordinatorTxnRecord out;
    absl::Status s = DecodeRecord(std::string_view(value).substr(0, n), &out);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "length " << n << ": " << s;
  }
  v1::CoordinatorTxnRecord out;
  EXPECT_NE(DecodeRecord("ab", &out).message().find("shorter"), std::string::npos);
}

TEST(CodecTest, Crc32cHardwareAndTableAgreeOnEveryLengthAndChain) {
  std::string data;
  for (int i = 0; i < 300; ++i) data.push_back(static_cast<char>(i * 131 + 7));
  EXPECT_EQ(Crc32cPortableForTest("123456789"), 0xE3069283u);
  for (size_t n = 0; n <= data.size(); ++n) {
    std::string_view v(data.data(), n);
    ASSERT_EQ(Crc32c(v), Crc32cPortableForTest(v)) << "length " << n;
    ASSERT_EQ(Crc32c(v.substr(n / 3), Crc32c(v.substr(0, n / 3))), Crc32cPortableForTest(v))
        << "chained at " << n / 3;
  }
}

TEST(CodecTest, Crc32cKnownValue) {
  // The standard check value of CRC-32C.
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  // Chaining equals one pass.
  EXPECT_EQ(Crc32c("6789", Crc32c("12345")), Crc32c("123456789"));
}

TEST(CodecTest, U64RoundTrip) {
  for (uint64_t v : {0ull, 1ull, 255ull, 256ull, 0x0102030405060708ull, ~0ull}) {
    std::string b = EncodeU64(v);
    ASSERT_EQ(b.size(), 8u);
    EXPECT_EQ(DecodeU64(b), v);
  }
}

TEST(CodecTest, BigEndianKeysSortNumerically) {
  std::vector<uint64_t> nums = {0,          1,          255,        256,       65535,
                                65536,      1ull << 32, ~0ull,      12345678,  7,
                                1ull << 63, 300,        (1ull << 40) + 1};
  std::vector<std::string> keys;
  for (uint64_t n : nums) keys.push_back(EncodeU64(n));
  std::sort(nums.begin(), nums.end());
  std::sort(keys.begin(), keys.end());  // byte order, as LMDB compares
  for (size_t i = 0; i < nums.size(); ++i) EXPECT_EQ(DecodeU64(keys[i]), nums[i]);

  // Message keys: by queue, then by sequence.
  EXPECT_LT(MessageKey(1, 999), MessageKey(2, 0));
  EXPECT_LT(MessageKey(1, 255), MessageKey(1, 256));
  EXPECT_EQ(MessageKey(3, 4).substr(0, 8), EncodeU64(3));
  EXPECT_EQ(DecodeU64(MessageKey(3, 4).substr(8)), 4u);
}

google::protobuf::RepeatedPtrField<v1::Op> Ops(
    const std::vector<std::pair<std::string, std::string>>& headers,
    const std::string& payload = "hello") {
  google::protobuf::RepeatedPtrField<v1::Op> ops;
  v1::Op* op = ops.Add();
  op->set_participant("p1");
  v1::Enqueue* e = op->mutable_enqueue();
  e->set_queue("orders");
  e->set_payload(payload);
  for (const auto& [k, v] : headers) (*e->mutable_headers())[k] = v;
  v1::Op* ack = ops.Add();
  ack->set_participant("p2");
  ack->mutable_ack()->set_queue("in");
  ack->mutable_ack()->set_sequence(9);
  ack->mutable_ack()->set_lease_token("lease");
  return ops;
}

TEST(CodecTest, OpsDigestEqualForEqualOps) {
  EXPECT_EQ(OpsDigest(Ops({{"a", "1"}})), OpsDigest(Ops({{"a", "1"}})));
  // Map order does not leak into the digest.
  std::vector<std::pair<std::string, std::string>> h;
  for (int i = 0; i < 20; ++i) h.emplace_back("k" + std::to_string(i), std::to_string(i));
  std::vector<std::pair<std::string, std::string>> reversed(h.rbegin(), h.rend());
  EXPECT_EQ(OpsDigest(Ops(h)), OpsDigest(Ops(reversed)));
}

TEST(CodecTest, OpsDigestDiffersForDifferentOps) {
  const uint64_t base = OpsDigest(Ops({{"a", "1"}}));
  EXPECT_NE(base, OpsDigest(Ops({{"a", "2"}})));
  EXPECT_NE(base, OpsDigest(Ops({{"b", "1"}})));
  EXPECT_NE(base, OpsDigest(Ops({})));
  EXPECT_NE(base, OpsDigest(Ops({{"a", "1"}}, "hellO")));
  google::protobuf::RepeatedPtrField<v1::Op> fewer = Ops({{"a", "1"}});
  fewer.RemoveLast();
  EXPECT_NE(base, OpsDigest(fewer));
  // Same ops in another order are other ops.
  google::protobuf::RepeatedPtrField<v1::Op> swapped = Ops({{"a", "1"}});
  swapped.SwapElements(0, 1);
  EXPECT_NE(base, OpsDigest(swapped));
  EXPECT_NE(OpsDigest({}), base);
}

}  // namespace
}  // namespace atomq
