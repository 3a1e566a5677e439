#include "common/validate.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace atomq {
namespace {

bool Allowed(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == ':' || c == '-';
}

absl::Status ValidateName(const char* what, std::string_view s, size_t max) {
  if (s.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  if (s.size() > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is ", s.size(), " bytes; at most ", max, " allowed"));
  }
  for (size_t i = 0; i < s.size(); ++i) {
    if (!Allowed(s[i])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s has byte 0x%02x at offset %d; allowed are [A-Za-z0-9._:-]", what,
                          static_cast<unsigned char>(s[i]), i));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateTxnId(std::string_view id) {
  return ValidateName("transaction id", id, kTxnIdBytesMax);
}
absl::Status ValidateNodeId(std::string_view id) {
  return ValidateName("node id", id, kNodeIdBytesMax);
}
absl::Status ValidateQueueName(std::string_view name) {
  return ValidateName("queue name", name, kQueueNameBytesMax);
}

std::string Clip(absl::string_view s, size_t max_bytes) {
  std::string out;
  const size_t n = std::min(s.size(), max_bytes);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    }
  }
  if (s.size() > max_bytes) absl::StrAppend(&out, "...(", s.size(), " bytes)");
  return out;
}

absl::StatusOr<uint32_t> PageLimit(uint32_t limit, uint32_t limit_max,
                                   std::string_view page_token) {
  if (!page_token.empty()) {
    if (absl::Status s = ValidateTxnId(page_token); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("page_token: ", s.message()));
    }
  }
  if (limit_max == 0) return absl::InternalError("a page holds at least one row");
  return limit == 0 ? limit_max : std::min(limit, limit_max);
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace atomq
