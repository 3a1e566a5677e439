#include "common/leader_book.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/rpc/status.pb.h"

namespace atomq {

std::vector<std::string> SplitMembers(const std::string& members) {
  return absl::StrSplit(members, '|', absl::SkipEmpty());
}

grpc::Status NotLeaderStatus(const v1::NotLeader& where) {
  std::string msg = absl::StrCat("this member of ", where.group(), " is not its leader; ");
  if (where.leader_address().empty()) {
    absl::StrAppend(&msg, "no leader is known (an election may be under way); retry shortly");
  } else {
    absl::StrAppend(&msg, "the leader is ", where.leader_address(), " (member ",
                    where.leader_member(), ", term ", where.term(), ")");
  }
  google::rpc::Status details;
  details.set_code(grpc::StatusCode::UNAVAILABLE);
  details.set_message(msg);
  details.add_details()->PackFrom(where);
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, msg, details.SerializeAsString());
}

std::optional<v1::NotLeader> NotLeaderOf(const grpc::Status& status) {
  if (status.error_code() != grpc::StatusCode::UNAVAILABLE || status.error_details().empty()) {
    return std::nullopt;
  }
  google::rpc::Status details;
  if (!details.ParseFromString(status.error_details())) return std::nullopt;
  for (const google::protobuf::Any& any : details.details()) {
    v1::NotLeader where;
    if (any.UnpackTo(&where)) return where;
  }
  return std::nullopt;
}

std::string LeaderBook::Current(const std::string& members) {
  absl::MutexLock lock(&mu_);
  auto it = current_.find(members);
  if (it != current_.end()) return it->second;
  std::vector<std::string> all = SplitMembers(members);
  return all.empty() ? members : all.front();
}

bool LeaderBook::Learn(const std::string& members, const std::string& address,
                       const grpc::Status& status) {
  const grpc::StatusCode code = status.error_code();
  if (code != grpc::StatusCode::UNAVAILABLE && code != grpc::StatusCode::DEADLINE_EXCEEDED) {
    return false;
  }
  std::optional<v1::NotLeader> where = NotLeaderOf(status);
  return Move(members, address, where.has_value() ? where->leader_address() : "");
}

bool LeaderBook::Learn(const std::string& members, const std::string& address,
                       const absl::Status& status) {
  if (!absl::IsUnavailable(status) && !absl::IsDeadlineExceeded(status)) return false;
  return Move(members, address, "");
}

bool LeaderBook::Move(const std::string& members, const std::string& address,
                      const std::string& leader) {
  std::vector<std::string> all = SplitMembers(members);
  if (all.size() < 2) return false;
  auto at = std::find(all.begin(), all.end(), address);
  if (at == all.end()) return false;
  std::string next;
  if (!leader.empty() && std::find(all.begin(), all.end(), leader) != all.end()) {
    next = leader;
  } else {
    ++at;
    next = at == all.end() ? all.front() : *at;
  }
  absl::MutexLock lock(&mu_);
  std::string& current = current_[members];
  if (current.empty()) current = all.front();
  // Another call may have learnt already; only a call to the current guess
  // moves it.
  if (current != address || next == address) return false;
  current = next;
  return true;
}

}  // namespace atomq
