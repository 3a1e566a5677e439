// The console's certificate and key (--tls_cert, --tls_key), read again
// when their files change, as gRPC's own are: a handshake looks at the
// files at most every --tls_reload_s and takes the pair then current. A
// pair that does not load (files half written, a key of another
// certificate) leaves the one before in use.
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace atomq::console {

class ReloadingCertificate {
 public:
  // FAILED_PRECONDITION when the pair cannot be read now.
  static absl::StatusOr<std::unique_ptr<ReloadingCertificate>> Load(std::string cert,
                                                                    std::string key,
                                                                    unsigned reload_s);
  ~ReloadingCertificate();
  // Every handshake of `ctx` takes the current pair.
  void Install(SSL_CTX* ctx);

 private:
  struct Pair;
  ReloadingCertificate(std::string cert, std::string key, unsigned reload_s);
  static int OnHandshake(SSL* ssl, int* alert, void* self);
  static absl::StatusOr<std::shared_ptr<Pair>> Read(const std::string& cert,
                                                    const std::string& key);
  std::shared_ptr<Pair> Current();

  const std::string cert_path_, key_path_;
  const unsigned reload_s_;
  absl::Mutex mu_;
  std::shared_ptr<Pair> pair_ ABSL_GUARDED_BY(mu_);
  int64_t looked_ms_ ABSL_GUARDED_BY(mu_) = 0;  // when the files were last looked at
  std::string stamp_ ABSL_GUARDED_BY(mu_);      // their sizes and times then
};

}  // namespace atomq::console
