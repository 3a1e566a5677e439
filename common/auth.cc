#include "common/auth.h"

#include <fnmatch.h>
#include <sys/stat.h>

#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/bearer.h"
#include "common/validate.h"

namespace atomq {
namespace {

struct Line {
  int number;
  std::vector<std::string> fields;
};

// Non-empty, non-comment lines split on white space.
absl::StatusOr<std::vector<Line>> ReadLines(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::FailedPreconditionError(absl::StrCat("cannot read ", path));
  std::vector<Line> lines;
  std::string text;
  for (int n = 1; std::getline(in, text); ++n) {
    absl::string_view t = absl::StripAsciiWhitespace(text);
    if (t.empty() || t[0] == '#') continue;
    lines.push_back({n, absl::StrSplit(t, absl::ByAnyChar(" \t"), absl::SkipEmpty())});
  }
  return lines;
}

absl::Status Bad(const std::string& path, int line, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(path, ":", line, ": ", why));
}

absl::StatusOr<uint32_t> ParseRoles(absl::string_view list) {
  uint32_t roles = 0;
  for (absl::string_view name : absl::StrSplit(list, ',')) {
    bool known = false;
    for (Role r : {Role::kProducer, Role::kConsumer, Role::kOperator, Role::kPeer}) {
      if (name == RoleName(r)) {
        roles |= static_cast<uint32_t>(r);
        known = true;
      }
    }
    if (!known) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown role \"", name, "\" (producer, consumer, operator or peer)"));
    }
  }
  return roles;
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kProducer:
      return "producer";
    case Role::kConsumer:
      return "consumer";
    case Role::kOperator:
      return "operator";
    case Role::kPeer:
      return "peer";
  }
  return "?";
}

AuthPolicy AuthPolicy::Open() {
  AuthPolicy p;
  p.open_ = true;
  return p;
}

absl::StatusOr<AuthPolicy> AuthPolicy::Load(const std::string& roles_file,
                                            const std::string& tokens_file) {
  AuthPolicy p;
  absl::StatusOr<std::vector<Line>> roles = ReadLines(roles_file);
  if (!roles.ok()) return roles.status();
  for (const Line& l : *roles) {
    if (l.fields.size() < 2 || l.fields.size() > 3) {
      return Bad(roles_file, l.number, "want: IDENTITY ROLE[,ROLE...] [QUEUE_GLOB[,...]]");
    }
    Grant g;
    g.identity = l.fields[0];
    absl::StatusOr<uint32_t> r = ParseRoles(l.fields[1]);
    if (!r.ok()) return Bad(roles_file, l.number, r.status().message());
    g.roles = *r;
    if (l.fields.size() == 3) g.queues = absl::StrSplit(l.fields[2], ',', absl::SkipEmpty());
    if (p.Find(g.identity) != nullptr) {
      return Bad(roles_file, l.number, absl::StrCat("identity ", g.identity, " is listed twice"));
    }
    p.grants_.push_back(std::move(g));
  }
  if (tokens_file.empty()) return p;
  if (absl::Status st = CheckPrivateFile(tokens_file); !st.ok()) return st;
  absl::StatusOr<std::vector<Line>> tokens = ReadLines(tokens_file);
  if (!tokens.ok()) return tokens.status();
  for (const Line& l : *tokens) {
    if (l.fields.size() != 2) return Bad(tokens_file, l.number, "want: IDENTITY TOKEN");
    if (l.fields[1].size() < 16)
      return Bad(tokens_file, l.number, "a token needs 16 bytes or more");
    p.tokens_.push_back({l.fields[0], l.fields[1]});
  }
  return p;
}

const AuthPolicy::Grant* AuthPolicy::Find(absl::string_view identity) const {
  for (const Grant& g : grants_) {
    if (g.identity == identity) return &g;
  }
  return nullptr;
}

absl::StatusOr<std::string> AuthPolicy::Authenticate(absl::string_view cert_identity,
                                                     absl::string_view authorization) const {
  absl::string_view secret = authorization;
  const bool bearer = absl::ConsumePrefix(&secret, "Bearer ") && !secret.empty();
  if (!bearer) {
    if (!cert_identity.empty()) return std::string(cert_identity);
    if (open_) return std::string("anonymous");
    return absl::UnauthenticatedError(
        "no client certificate and no bearer token (metadata \"authorization: Bearer TOKEN\")");
  }
  // Every token is compared, so the time does not say which one was close.
  const Token* match = nullptr;
  for (const Token& t : tokens_) {
    if (ConstantTimeEquals(t.secret, secret)) match = &t;
  }
  if (match != nullptr) return match->identity;
  if (open_) return std::string(cert_identity.empty() ? "anonymous" : cert_identity);
  return absl::UnauthenticatedError("the bearer token is not known");
}

absl::Status AuthPolicy::Authorize(absl::string_view identity, Role role,
                                   absl::string_view queue) const {
  if (open_) return absl::OkStatus();
  const Grant* g = Find(identity);
  if (g == nullptr || (g->roles & static_cast<uint32_t>(role)) == 0) {
    return absl::PermissionDeniedError(
        absl::StrCat(Clip(identity), " does not have the ", RoleName(role), " role"));
  }
  const bool per_queue = role == Role::kProducer || role == Role::kConsumer;
  if (!per_queue || queue.empty() || g->queues.empty()) return absl::OkStatus();
  const std::string q(queue);
  for (const std::string& glob : g->queues) {
    if (fnmatch(glob.c_str(), q.c_str(), 0) == 0) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat(Clip(identity), " may not use queue ", Clip(queue), " as ", RoleName(role)));
}

}  // namespace atomq
