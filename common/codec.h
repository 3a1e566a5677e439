// Encoding of LMDB keys and values.
//
// Values are a protobuf message behind a 4-byte little-endian CRC32C of the
// message bytes, so a torn or corrupted value is detected (DATA_LOSS) instead
// of being parsed into nonsense. Keys that hold numbers are big-endian so
// that LMDB's byte order is numeric order.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "google/protobuf/message_lite.h"
#include "google/protobuf/repeated_ptr_field.h"

namespace atomq {

namespace v1 {
class Op;
}

// CRC32C (Castagnoli), software table; `crc` chains calls.
uint32_t Crc32c(std::string_view data, uint32_t crc = 0);
// The table-driven Crc32c, which Crc32c uses when the CPU lacks SSE4.2; for
// tests that check both agree.
uint32_t Crc32cPortableForTest(std::string_view data, uint32_t crc = 0);

// Checksum + deterministic serialization of `msg`.
std::string EncodeRecord(const google::protobuf::MessageLite& msg);
// DATA_LOSS when the value is shorter than its checksum, the checksum does not
// match, or the bytes do not parse.
absl::Status DecodeRecord(std::string_view value, google::protobuf::MessageLite* msg);

// 8-byte big-endian.
std::string EncodeU64(uint64_t v);
uint64_t DecodeU64(std::string_view b);  // requires b.size() >= 8
// Key of a message in the "messages" sub-database.
std::string MessageKey(uint64_t queue_id, uint64_t sequence);

// A stable 64-bit digest of ops (deterministic serialization, FNV-1a), used
// to tell a retry with the same ops from a reuse of the id with other ops.
uint64_t OpsDigest(const google::protobuf::RepeatedPtrField<v1::Op>& ops);

}  // namespace atomq
