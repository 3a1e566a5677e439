// Who may do what (docs/design.md section 11). Every call is made by an
// identity: the subject of the caller's TLS certificate (its first SAN, else
// its CN) or, for a client without one, a bearer token from --tokens_file.
// Each identity has roles from --roles_file:
//
//   # identity   roles                        queues (optional globs)
//   c1           peer
//   orders-app   producer,consumer            orders*,audit
//   ops          operator
//
//   producer  Execute, ExecuteStream, Send, Begin/Stage/Commit/Rollback
//   consumer  Receive, Subscribe, Ack, Nack
//   operator  Resolve, queue create/delete/purge, transaction listings with payloads
//   peer      the protocol: Prepare, PreCommit, Commit, Abort, Batch,
//             QueryState, Promise, Accept
//
// With queue globs, producer and consumer calls are allowed on matching
// queues only. Tokens (`identity token` per line) are compared in constant
// time; the tokens file must not be readable by group or others.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/validate.h"  // ConstantTimeEquals

namespace atomq {

enum class Role : uint32_t {
  kProducer = 1,
  kConsumer = 2,
  kOperator = 4,
  kPeer = 8,
};
const char* RoleName(Role role);

class AuthPolicy {
 public:
  // Every call allowed, made by "anonymous": servers given neither file.
  static AuthPolicy Open();
  // INVALID_ARGUMENT naming the file and line of the first bad line;
  // FAILED_PRECONDITION for a tokens file others may read.
  static absl::StatusOr<AuthPolicy> Load(const std::string& roles_file,
                                         const std::string& tokens_file);

  bool open() const { return open_; }

  // The caller's identity: the bearer token's in `authorization` ("Bearer
  // X") when the call carries one, else `cert_identity` when the TLS
  // handshake gave one. A token names the caller even over a certificate:
  // the web console calls on a user's behalf through its server's mTLS
  // channel. UNAUTHENTICATED for a token nobody holds (never the
  // certificate's identity instead) or when neither names anybody.
  absl::StatusOr<std::string> Authenticate(absl::string_view cert_identity,
                                           absl::string_view authorization) const;
  // PERMISSION_DENIED unless `identity` holds `role` (and, for producer and
  // consumer calls naming a queue, the queue matches its globs).
  absl::Status Authorize(absl::string_view identity, Role role, absl::string_view queue = {}) const;

 private:
  struct Grant {
    std::string identity;
    uint32_t roles = 0;
    std::vector<std::string> queues;  // globs; empty: every queue
  };
  struct Token {
    std::string identity;
    std::string secret;
  };
  const Grant* Find(absl::string_view identity) const;

  bool open_ = false;
  std::vector<Grant> grants_;
  std::vector<Token> tokens_;
};

}  // namespace atomq
