#include "console/certificate.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"

namespace atomq::console {

struct ReloadingCertificate::Pair {
  X509* cert = nullptr;
  STACK_OF(X509) * chain = nullptr;  // the certificates after the first
  EVP_PKEY* key = nullptr;
  ~Pair() {
    X509_free(cert);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(key);
  }
};

namespace {

// Sizes and modification times of both files: a change of either is a
// rotation.
std::string Stamp(const std::string& cert, const std::string& key) {
  std::string out;
  for (const std::string* path : {&cert, &key}) {
    struct stat st {};
    if (stat(path->c_str(), &st) != 0) return "";
    absl::StrAppend(&out, st.st_size, ":", st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec, ";");
  }
  return out;
}

}  // namespace

ReloadingCertificate::ReloadingCertificate(std::string cert, std::string key, unsigned reload_s)
    : cert_path_(std::move(cert)), key_path_(std::move(key)), reload_s_(reload_s) {}

ReloadingCertificate::~ReloadingCertificate() = default;

absl::StatusOr<std::shared_ptr<ReloadingCertificate::Pair>> ReloadingCertificate::Read(
    const std::string& cert, const std::string& key) {
  auto pair = std::make_shared<Pair>();
  auto fail = [&](const char* what) {
    return absl::FailedPreconditionError(
        absl::StrCat("--http_listen: cannot read ", what, " (", cert, ", ", key, ")"));
  };
  BIO* in = BIO_new_file(cert.c_str(), "r");
  if (in == nullptr) return fail("the certificate");
  pair->cert = PEM_read_bio_X509(in, nullptr, nullptr, nullptr);
  pair->chain = sk_X509_new_null();
  while (X509* more = PEM_read_bio_X509(in, nullptr, nullptr, nullptr)) {
    sk_X509_push(pair->chain, more);
  }
  BIO_free(in);
  if (pair->cert == nullptr) return fail("the certificate");
  in = BIO_new_file(key.c_str(), "r");
  if (in == nullptr) return fail("the key");
  pair->key = PEM_read_bio_PrivateKey(in, nullptr, nullptr, nullptr);
  BIO_free(in);
  if (pair->key == nullptr) return fail("the key");
  if (X509_check_private_key(pair->cert, pair->key) != 1) return fail("a key of the certificate");
  return pair;
}

absl::StatusOr<std::unique_ptr<ReloadingCertificate>> ReloadingCertificate::Load(
    std::string cert, std::string key, unsigned reload_s) {
  absl::StatusOr<std::shared_ptr<Pair>> pair = Read(cert, key);
  if (!pair.ok()) return pair.status();
  std::unique_ptr<ReloadingCertificate> c(
      new ReloadingCertificate(std::move(cert), std::move(key), reload_s));
  absl::MutexLock lock(&c->mu_);
  c->pair_ = std::move(*pair);
  c->stamp_ = Stamp(c->cert_path_, c->key_path_);
  c->looked_ms_ = absl::ToUnixMillis(absl::Now());
  return c;
}

std::shared_ptr<ReloadingCertificate::Pair> ReloadingCertificate::Current() {
  absl::MutexLock lock(&mu_);
  const int64_t now = absl::ToUnixMillis(absl::Now());
  if (now - looked_ms_ < int64_t{reload_s_} * 1000) return pair_;
  looked_ms_ = now;
  const std::string stamp = Stamp(cert_path_, key_path_);
  if (stamp.empty() || stamp == stamp_) return pair_;
  absl::StatusOr<std::shared_ptr<Pair>> fresh = Read(cert_path_, key_path_);
  if (!fresh.ok()) {
    LogLine(absl::StrCat("console: ", fresh.status().message(), "; the certificate before stays"));
    return pair_;
  }
  stamp_ = stamp;
  pair_ = std::move(*fresh);
  LogLine(absl::StrCat("console: serving the certificate in ", cert_path_, " (changed)"));
  return pair_;
}

int ReloadingCertificate::OnHandshake(SSL* ssl, int* alert, void* self) {
  std::shared_ptr<Pair> pair = static_cast<ReloadingCertificate*>(self)->Current();
  // Referenced by the connection (override = 1 replaces what the context set).
  if (SSL_use_cert_and_key(ssl, pair->cert, pair->key, pair->chain, 1) == 1) {
    return SSL_CLIENT_HELLO_SUCCESS;
  }
  *alert = SSL_AD_INTERNAL_ERROR;
  return SSL_CLIENT_HELLO_ERROR;
}

void ReloadingCertificate::Install(SSL_CTX* ctx) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION);
  {
    std::shared_ptr<Pair> pair = Current();
    SSL_CTX_use_cert_and_key(ctx, pair->cert, pair->key, pair->chain, 1);
  }
  // At each ClientHello, before the certificate is chosen.
  SSL_CTX_set_client_hello_cb(ctx, &ReloadingCertificate::OnHandshake, this);
}

}  // namespace atomq::console
