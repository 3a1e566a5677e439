#include "common/bearer.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/tls.h"
#include "grpcpp/support/interceptor.h"

namespace atomq {
namespace {

class Bearer final : public grpc::experimental::Interceptor {
 public:
  explicit Bearer(const std::string* header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", *header_});
    }
    methods->Proceed();
  }

 private:
  const std::string* header_;  // owned by the factory, which outlives its channel's calls
};

class BearerFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerFactory(std::string token) : header_("Bearer " + std::move(token)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new Bearer(&header_);
  }

 private:
  const std::string header_;
};

absl::Mutex token_mu;
std::string* dial_token ABSL_GUARDED_BY(token_mu) = nullptr;

std::string DialToken() {
  absl::MutexLock l(&token_mu);
  return dial_token != nullptr ? *dial_token : std::string();
}

}  // namespace

absl::Status CheckPrivateFile(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("cannot read ", path));
  }
  const mode_t shared = st.st_uid == 0 ? 027 : 077;
  if ((st.st_mode & shared) != 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s may be read by others (mode %03o): chmod 600 it (or, owned by root, "
                        "640 for its group)",
                        path, st.st_mode & 0777));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  if (absl::Status st = CheckPrivateFile(path); !st.ok()) return st;
  std::ifstream in(path);
  if (!in) return absl::FailedPreconditionError(absl::StrCat("cannot read token file ", path));
  std::string token;
  std::string text;
  for (int n = 1; std::getline(in, text); ++n) {
    absl::string_view t = absl::StripAsciiWhitespace(text);
    if (t.empty() || t[0] == '#') continue;
    if (t.find_first_of(" \t") != absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", n,
                       ": a token file holds one token (no white space); an IDENTITY TOKEN "
                       "table is a server's --tokens_file"));
    }
    if (!token.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": a second token"));
    }
    token = std::string(t);
  }
  if (token.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no token in it"));
  return token;
}

absl::Status SetDialTokenFrom(const std::string& token_file, bool from_env) {
  if (!token_file.empty()) {
    absl::StatusOr<std::string> t = ReadTokenFile(token_file);
    if (!t.ok())
      return absl::Status(t.status().code(), absl::StrCat("--token_file: ", t.status().message()));
    SetDialToken(*std::move(t));
    return absl::OkStatus();
  }
  const char* env = from_env ? std::getenv("ATOMQ_TOKEN") : nullptr;
  SetDialToken(env != nullptr ? std::string(absl::StripAsciiWhitespace(env)) : std::string());
  return absl::OkStatus();
}

void SetDialToken(std::string token) {
  absl::MutexLock l(&token_mu);
  delete dial_token;
  dial_token = new std::string(std::move(token));
}

std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface> BearerInterceptor(
    std::string token) {
  return std::make_unique<BearerFactory>(std::move(token));
}

std::shared_ptr<grpc::Channel> DialChannel(const std::string& address,
                                           const grpc::ChannelArguments& args) {
  std::string token = DialToken();
  if (token.empty()) return grpc::CreateCustomChannel(address, DialCredentials(), args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> f;
  f.push_back(BearerInterceptor(std::move(token)));
  return grpc::experimental::CreateCustomChannelWithInterceptors(address, DialCredentials(), args,
                                                                 std::move(f));
}

}  // namespace atomq
