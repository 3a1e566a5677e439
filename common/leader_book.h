// Groups of replicas, seen from their callers. A participant or coordinator
// id may name a group: its members' addresses joined by '|' ("a|b|c"; one
// address is a group of one). Only the leader serves; another member refuses
// UNAVAILABLE with an atomq.v1.NotLeader in the status details, and callers
// follow it, but only to a member they were configured with (a reply never
// makes a server dial an address of its choosing).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "atomq/v1/replica.pb.h"
#include "grpcpp/grpcpp.h"

namespace atomq {

// "a|b|c" -> {"a", "b", "c"}, empty parts dropped.
std::vector<std::string> SplitMembers(const std::string& members);

// UNAVAILABLE, saying in its message and its details where the leader is.
grpc::Status NotLeaderStatus(const v1::NotLeader& where);
// The NotLeader a refusal carries, if it is one.
std::optional<v1::NotLeader> NotLeaderOf(const grpc::Status& status);

// Which member of each group to call now, learnt from how calls ended.
// Thread-safe.
class LeaderBook {
 public:
  // The address to call `members` at: the last leader learnt, else the
  // first member.
  std::string Current(const std::string& members) ABSL_LOCKS_EXCLUDED(mu_);
  // After a call to `address`, one of `members`, ended with `status`: a
  // NotLeader naming another member moves the guess there; UNAVAILABLE or
  // DEADLINE_EXCEEDED otherwise (the member is down or knows no leader)
  // moves it to the next member. True when the guess moved: a retry at
  // Current() may go at once.
  bool Learn(const std::string& members, const std::string& address, const grpc::Status& status)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Without the details (an answer already converted): only moves on.
  bool Learn(const std::string& members, const std::string& address, const absl::Status& status)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // A call to `address` failed; `leader` is the one it named, if any.
  bool Move(const std::string& members, const std::string& address, const std::string& leader)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Mutex mu_;
  std::map<std::string, std::string> current_ ABSL_GUARDED_BY(mu_);  // members -> address
};

}  // namespace atomq
