#include "common/access.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/bearer.h"
#include "common/log.h"
#include "common/tls.h"
#include "common/validate.h"

namespace atomq {
namespace {

// Longest value an audit line keeps of one field (an operator note).
constexpr size_t kAuditValueBytesMax = 256;

// Clip() leaves '"' as is: escaped here so a value cannot close its quotes.
std::string Quoted(absl::string_view v) {
  return absl::StrCat("\"", absl::StrReplaceAll(Clip(v, kAuditValueBytesMax), {{"\"", "\\x22"}}),
                      "\"");
}

std::string RoleList(std::initializer_list<Role> roles) {
  std::string out;
  for (Role r : roles) absl::StrAppend(&out, out.empty() ? "" : " or ", RoleName(r));
  return out;
}

}  // namespace

std::shared_ptr<const Access> Access::Open() {
  return std::make_shared<const Access>(AuthPolicy::Open());
}

absl::StatusOr<std::string> Access::Identify(const grpc::ServerContextBase& ctx,
                                             absl::string_view method) const {
  absl::string_view authorization;
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it != md.end()) authorization = absl::string_view(it->second.data(), it->second.size());
  absl::StatusOr<std::string> who = policy_.Authenticate(PeerIdentity(ctx), authorization);
  if (!who.ok()) {
    return absl::UnauthenticatedError(absl::StrCat(method, ": ", who.status().message()));
  }
  return who;
}

absl::StatusOr<std::string> Access::IdentifyBearer(absl::string_view authorization) const {
  return policy_.Authenticate("", authorization);
}

std::vector<std::string> Access::RolesOf(absl::string_view identity) const {
  std::vector<std::string> names;
  for (Role r : {Role::kProducer, Role::kConsumer, Role::kOperator, Role::kPeer}) {
    if (policy_.Authorize(identity, r).ok()) names.push_back(RoleName(r));
  }
  return names;
}

absl::StatusOr<std::string> Access::Check(const grpc::ServerContextBase& ctx,
                                          absl::string_view method,
                                          std::initializer_list<Role> roles,
                                          absl::string_view queue) const {
  absl::StatusOr<std::string> who = Identify(ctx, method);
  if (!who.ok()) return who;
  absl::Status allowed = Allow(*who, method, roles, queue);
  if (!allowed.ok()) return allowed;
  return who;
}

absl::StatusOr<std::string> Access::CheckOps(
    const grpc::ServerContextBase& ctx, absl::string_view method,
    const google::protobuf::RepeatedPtrField<v1::Op>& ops) const {
  absl::StatusOr<std::string> who = Check(ctx, method, {Role::kProducer});
  if (!who.ok()) return who;
  absl::Status allowed = AllowOps(*who, method, ops);
  if (!allowed.ok()) return allowed;
  return who;
}

absl::Status Access::Allow(absl::string_view identity, absl::string_view method,
                           std::initializer_list<Role> roles, absl::string_view queue) const {
  absl::Status last;
  bool operator_call = false;
  for (Role r : roles) {
    last = policy_.Authorize(identity, r, queue);
    if (last.ok()) return last;
    operator_call |= r == Role::kOperator;
  }
  std::string why = roles.size() == 1 ? std::string(last.message())
                                      : absl::StrCat(Clip(identity), " has neither the ",
                                                     RoleList(roles), " role");
  if (operator_call) {
    Audit(identity, "refused", {{"method", std::string(method)}, {"why", why}});
  }
  return absl::PermissionDeniedError(
      absl::StrCat(method, " needs the ", RoleList(roles), " role: ", why));
}

absl::Status Access::AllowOps(absl::string_view identity, absl::string_view method,
                              const google::protobuf::RepeatedPtrField<v1::Op>& ops) const {
  if (policy_.open()) return absl::OkStatus();
  for (int i = 0; i < ops.size(); ++i) {
    const v1::Op& op = ops.Get(i);
    if (!op.has_enqueue() && !op.has_ack()) continue;  // refused as invalid further on
    const bool enqueue = op.has_enqueue();
    absl::Status s = Allow(identity, method, {enqueue ? Role::kProducer : Role::kConsumer},
                           enqueue ? op.enqueue().queue() : op.ack().queue());
    if (!s.ok()) return absl::PermissionDeniedError(absl::StrCat("op ", i, ": ", s.message()));
  }
  return absl::OkStatus();
}

void AddAccessFlags(CLI::App& app, AccessFlags* f) {
  app.add_option("--roles_file", f->roles_file,
                 "who may do what: IDENTITY ROLE[,ROLE...] [QUEUE_GLOB,...] per line "
                 "(roles: producer, consumer, operator, peer)");
  app.add_option("--tokens_file", f->tokens_file,
                 "bearer tokens of clients without certificates: IDENTITY TOKEN per line "
                 "(mode 0600)");
  app.add_flag("--allow_anyone", f->allow_anyone,
               "no --roles_file on a TLS server: every caller may make every call");
  app.add_option("--token_file", f->token_file,
                 "bearer token this server presents on its own calls to participants and "
                 "coordinators, when it has no client certificate (mode 0600)");
}

absl::StatusOr<std::shared_ptr<const Access>> LoadAccess(const AccessFlags& f, bool plaintext) {
  if (absl::Status st = SetDialTokenFrom(f.token_file, /*from_env=*/false); !st.ok()) return st;
  if (f.roles_file.empty()) {
    if (!f.tokens_file.empty()) {
      return absl::InvalidArgumentError("--tokens_file needs --roles_file (the tokens' roles)");
    }
    if (!plaintext && !f.allow_anyone) {
      return absl::InvalidArgumentError(
          "no --roles_file: every caller could make every call (resolve, delete queues, forge "
          "protocol messages); give --roles_file, or --allow_anyone to run so on purpose");
    }
    LogLine(absl::StrCat("warning: no --roles_file: every caller may make every call (",
                         plaintext ? "--plaintext" : "--allow_anyone", ")"));
    return Access::Open();
  }
  if (f.allow_anyone) {
    return absl::InvalidArgumentError("--allow_anyone and --roles_file exclude each other");
  }
  absl::StatusOr<AuthPolicy> policy = AuthPolicy::Load(f.roles_file, f.tokens_file);
  if (!policy.ok()) return policy.status();
  if (plaintext && !f.tokens_file.empty()) {
    LogLine("warning: --plaintext: bearer tokens cross the network unencrypted");
  }
  return std::make_shared<const Access>(*std::move(policy));
}

bool IdentityShares::Take(const std::string& identity) {
  absl::MutexLock l(&mu_);
  uint32_t& n = held_[identity];
  if (n >= max_) {
    if (n == 0) held_.erase(identity);
    return false;
  }
  ++n;
  return true;
}

void IdentityShares::Give(const std::string& identity) {
  absl::MutexLock l(&mu_);
  auto it = held_.find(identity);
  if (it == held_.end()) return;
  if (--it->second == 0) held_.erase(it);
}

std::string AuditLine(absl::string_view who, absl::string_view action, const AuditFields& fields) {
  std::string line = absl::StrCat("audit who=", Quoted(who), " action=", Quoted(action));
  for (const auto& [k, v] : fields) absl::StrAppend(&line, " ", Clip(k), "=", Quoted(v));
  return line;
}

void Audit(absl::string_view who, absl::string_view action, const AuditFields& fields) {
  LogLine(AuditLine(who, action, fields));
}

}  // namespace atomq
