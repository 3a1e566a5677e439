#include "common/tls.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpc/grpc_security_constants.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace atomq {
namespace {

using grpc::experimental::FileWatcherCertificateProvider;

absl::Status MustExist(const std::string& flag, const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " is not a readable file"));
}

std::shared_ptr<FileWatcherCertificateProvider> Provider(const TlsFlags& f) {
  if (f.cert.empty()) return std::make_shared<FileWatcherCertificateProvider>(f.ca, f.reload_s);
  return std::make_shared<FileWatcherCertificateProvider>(f.key, f.cert, f.ca, f.reload_s);
}

grpc_ssl_client_certificate_request_type RequestType(const std::string& client_auth) {
  if (client_auth == "none") return GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  if (client_auth == "request") return GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  return GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
}

}  // namespace

void AddTlsFlags(CLI::App& app, TlsFlags* f, bool server) {
  CLI::Option* cert =
      app.add_option("--tls_cert", f->cert, "certificate chain (PEM) this process presents");
  CLI::Option* key = app.add_option("--tls_key", f->key, "private key (PEM) of --tls_cert");
  CLI::Option* ca =
      app.add_option("--tls_ca", f->ca, "CA bundle (PEM) that peers' certificates must chain to");
  CLI::Option* plain = app.add_flag("--plaintext", f->plaintext,
                                    "no TLS: only on a trusted network, asked for explicitly");
  if (!server) {  // clients also read them from the environment, as PGSSLROOTCERT
    cert->envname("ATOMQ_TLS_CERT");
    key->envname("ATOMQ_TLS_KEY");
    ca->envname("ATOMQ_TLS_CA");
    plain->envname("ATOMQ_PLAINTEXT");
  }
  app.add_option("--tls_reload_s", f->reload_s,
                 "how often certificate files are looked at for a rotation")
      ->check(CLI::Range(1u, 86400u))
      ->capture_default_str();
  if (server) {
    app.add_option("--tls_client_auth", f->client_auth,
                   "client certificates: none, request (verified if given) or require")
        ->check(CLI::IsMember({"none", "request", "require"}))
        ->capture_default_str();
  }
}

absl::Status CheckTlsFlags(const TlsFlags& f, bool server) {
  const bool tls = !f.cert.empty() || !f.key.empty() || !f.ca.empty();
  if (f.plaintext && tls) {
    return absl::InvalidArgumentError("--plaintext and --tls_* flags exclude each other");
  }
  if (f.plaintext) return absl::OkStatus();
  if (!tls) {
    return absl::InvalidArgumentError(
        "no TLS certificates given: pass --tls_cert, --tls_key and --tls_ca, or --plaintext");
  }
  if (f.cert.empty() != f.key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (server && f.cert.empty()) {
    return absl::InvalidArgumentError("a server needs --tls_cert and --tls_key");
  }
  if (f.ca.empty() && (!server || f.client_auth != "none")) {
    return absl::InvalidArgumentError("--tls_ca is needed to verify peers' certificates");
  }
  for (const auto& [flag, path] : {std::pair<const char*, const std::string&>{"--tls_cert", f.cert},
                                   {"--tls_key", f.key},
                                   {"--tls_ca", f.ca}}) {
    if (!path.empty()) {
      if (absl::Status st = MustExist(flag, path); !st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::ServerCredentials> ServerCredentials(const TlsFlags& f) {
  if (f.plaintext) return grpc::InsecureServerCredentials();
  grpc::experimental::TlsServerCredentialsOptions options(Provider(f));
  options.watch_identity_key_cert_pairs();
  if (!f.ca.empty()) options.watch_root_certs();
  options.set_cert_request_type(f.ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                             : RequestType(f.client_auth));
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials(const TlsFlags& f) {
  if (f.plaintext) return grpc::InsecureChannelCredentials();
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(Provider(f));
  options.watch_root_certs();
  if (!f.cert.empty()) options.watch_identity_key_cert_pairs();
  return grpc::experimental::TlsCredentials(options);
}

namespace {
absl::Mutex dial_mu;
std::shared_ptr<grpc::ChannelCredentials>* dial ABSL_GUARDED_BY(dial_mu) = nullptr;
}  // namespace

void SetDialCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials) {
  absl::MutexLock l(&dial_mu);
  delete dial;
  dial = new std::shared_ptr<grpc::ChannelCredentials>(std::move(credentials));
}

std::shared_ptr<grpc::ChannelCredentials> DialCredentials() {
  absl::MutexLock l(&dial_mu);
  return dial != nullptr ? *dial : grpc::InsecureChannelCredentials();
}

std::string PeerIdentity(const grpc::ServerContextBase& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return "";
  for (const char* name : {GRPC_X509_SAN_PROPERTY_NAME, GRPC_X509_CN_PROPERTY_NAME}) {
    std::vector<grpc::string_ref> values = auth->FindPropertyValues(name);
    if (!values.empty()) return std::string(values.front().data(), values.front().size());
  }
  return "";
}

}  // namespace atomq
