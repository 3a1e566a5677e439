// Who makes a call and whether it may (docs/design.md section 11): every
// handler of both servers asks Access first, before anything changes, and
// answers the refusal as is: UNAUTHENTICATED when the caller is nobody
// known (no verified certificate, no known bearer token), PERMISSION_DENIED
// when it lacks the role (or the queue) the call needs; both name the
// identity, the role and the method. Admin actions leave an audit line.
#pragma once

#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "atomq/v1/types.pb.h"
#include "common/auth.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "grpcpp/server_context.h"

namespace atomq {

class Access {
 public:
  // Every call allowed (no --roles_file): the caller is its certificate's
  // identity, else "anonymous".
  static std::shared_ptr<const Access> Open();
  explicit Access(AuthPolicy policy) : policy_(std::move(policy)) {}

  bool open() const { return policy_.open(); }

  // The caller of `ctx`: its certificate's identity (common/tls.h), else the
  // identity of its "authorization: Bearer" token. UNAUTHENTICATED naming
  // `method` when neither is known.
  absl::StatusOr<std::string> Identify(const grpc::ServerContextBase& ctx,
                                       absl::string_view method) const;
  // The identity `authorization` ("Bearer X", or empty) names, as Identify
  // does for a call without a certificate: the web console's sign-in.
  absl::StatusOr<std::string> IdentifyBearer(absl::string_view authorization) const;
  // The names of the roles `identity` holds (on some queue, at least).
  std::vector<std::string> RolesOf(absl::string_view identity) const;
  // Identify, then Allow.
  absl::StatusOr<std::string> Check(const grpc::ServerContextBase& ctx, absl::string_view method,
                                    std::initializer_list<Role> roles,
                                    absl::string_view queue = {}) const;
  // Identify, then the producer role, then AllowOps: Execute and Stage.
  absl::StatusOr<std::string> CheckOps(const grpc::ServerContextBase& ctx, absl::string_view method,
                                       const google::protobuf::RepeatedPtrField<v1::Op>& ops) const;
  // OK when `identity` holds one of `roles` (on `queue`, for producer and
  // consumer roles); else PERMISSION_DENIED naming identity, role and method.
  // A refused operator call is audited.
  absl::Status Allow(absl::string_view identity, absl::string_view method,
                     std::initializer_list<Role> roles, absl::string_view queue = {}) const;
  // Each op of a transaction: an enqueue needs the producer role on its
  // queue, an ack the consumer role on its queue.
  absl::Status AllowOps(absl::string_view identity, absl::string_view method,
                        const google::protobuf::RepeatedPtrField<v1::Op>& ops) const;

 private:
  AuthPolicy policy_;
};

struct AccessFlags {
  std::string roles_file;     // --roles_file: who may do what
  std::string tokens_file;    // --tokens_file: IDENTITY TOKEN per line
  bool allow_anyone = false;  // --allow_anyone: no --roles_file on a TLS server, asked for
  std::string token_file;     // --token_file: what this server presents when it dials
};

// Registers --roles_file, --tokens_file, --allow_anyone and --token_file.
void AddAccessFlags(CLI::App& app, AccessFlags* flags);

// The policy the flags ask for, and the dial token (common/bearer.h) set.
// Without --roles_file every caller may do everything: allowed only with
// `plaintext` or --allow_anyone, and logged as a warning; otherwise
// INVALID_ARGUMENT. A bad roles, tokens or token file is refused naming file
// and line. The error message is ready to print.
absl::StatusOr<std::shared_ptr<const Access>> LoadAccess(const AccessFlags& flags, bool plaintext);

// Finishes `reactor` with the refusal and returns true when `who` is not OK:
//   if (Refused(reactor, access.Check(*ctx, "Queue.Send", {Role::kProducer}, q))) return reactor;
template <typename Reactor>
bool Refused(Reactor* reactor, const absl::StatusOr<std::string>& who) {
  if (who.ok()) return false;
  reactor->Finish(grpc::Status(static_cast<grpc::StatusCode>(who.status().code()),
                               std::string(who.status().message())));
  return true;
}

// What each identity holds of a budget all share (long-poll Receives
// parked, Subscribe streams open), so that one client cannot take it all.
class IdentityShares {
 public:
  explicit IdentityShares(uint32_t per_identity_max) : max_(per_identity_max) {}
  uint32_t max() const { return max_; }
  // One more for `identity`; false (nothing taken) when it holds max() already.
  bool Take(const std::string& identity);
  void Give(const std::string& identity);

 private:
  const uint32_t max_;
  absl::Mutex mu_;
  std::map<std::string, uint32_t> held_ ABSL_GUARDED_BY(mu_);  // none at 0
};

// One audit line of an admin action: "audit who=\"ID\" action=ACTION
// key=\"value\"...". Every value is clipped and escaped (no newline, quote
// or other control byte survives), so no content can forge a line or a
// field.
using AuditFields = std::vector<std::pair<std::string, std::string>>;
std::string AuditLine(absl::string_view who, absl::string_view action, const AuditFields& fields);
void Audit(absl::string_view who, absl::string_view action, const AuditFields& fields);

}  // namespace atomq
