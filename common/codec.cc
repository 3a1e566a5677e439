#include "common/codec.h"

#include <array>
#include <cstring>

#include "atomq/v1/types.pb.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace atomq {
namespace {

std::array<uint32_t, 256> MakeTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

std::string SerializeDeterministic(const google::protobuf::MessageLite& msg) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream sos(&out);
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);
    msg.SerializeToCodedStream(&cos);
  }
  return out;
}

}  // namespace

namespace {

uint32_t Crc32cTable(std::string_view data, uint32_t crc) {
  static const std::array<uint32_t, 256> table = MakeTable();
  for (unsigned char b : data) crc = table[(crc ^ b) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
// SSE4.2's crc32 instruction computes the same polynomial 8 bytes at a time;
// every record is checksummed on write and read.
__attribute__((target("sse4.2"))) uint32_t Crc32cSse42(std::string_view data, uint32_t crc) {
  const char* p = data.data();
  size_t n = data.size();
  uint64_t c = crc;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  for (; n > 0; ++p, --n) c32 = __builtin_ia32_crc32qi(c32, static_cast<unsigned char>(*p));
  return c32;
}
#endif

}  // namespace

uint32_t Crc32c(std::string_view data, uint32_t crc) {
#if defined(__x86_64__)
  static const bool hardware = __builtin_cpu_supports("sse4.2");
  if (hardware) return ~Crc32cSse42(data, ~crc);
#endif
  return ~Crc32cTable(data, ~crc);
}

uint32_t Crc32cPortableForTest(std::string_view data, uint32_t crc) {
  return ~Crc32cTable(data, ~crc);
}

std::string EncodeRecord(const google::protobuf::MessageLite& msg) {
  std::string body = SerializeDeterministic(msg);
  uint32_t crc = Crc32c(body);
  std::string out(4, '\0');
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((crc >> (8 * i)) & 0xff);
  out += body;
  return out;
}

absl::Status DecodeRecord(std::string_view value, google::protobuf::MessageLite* msg) {
  if (value.size() < 4) {
    return absl::DataLossError("record shorter than its 4-byte checksum");
  }
  uint32_t stored = 0;
  for (int i = 0; i < 4; ++i) stored |= uint32_t(static_cast<unsigned char>(value[i])) << (8 * i);
  std::string_view body = value.substr(4);
  if (Crc32c(body) != stored) {
    return absl::DataLossError("record checksum mismatch: the stored value is corrupt");
  }
  if (!msg->ParseFromArray(body.data(), static_cast<int>(body.size()))) {
    return absl::DataLossError("record does not parse as " + msg->GetTypeName());
  }
  return absl::OkStatus();
}

std::string EncodeU64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  return out;
}

uint64_t DecodeU64(std::string_view b) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(b[i]);
  return v;
}

std::string MessageKey(uint64_t queue_id, uint64_t sequence) {
  return EncodeU64(queue_id) + EncodeU64(sequence);
}

uint64_t OpsDigest(const google::protobuf::RepeatedPtrField<v1::Op>& ops) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](std::string_view s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
  };
  for (const v1::Op& op : ops) {
    std::string bytes = SerializeDeterministic(op);
    mix(EncodeU64(bytes.size()));
    mix(bytes);
  }
  return h;
}

}  // namespace atomq
