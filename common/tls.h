// TLS and mTLS for every link (docs/design.md section 11): the flags, the
// credentials a server listens with and a client dials with, and the
// identity a peer's certificate gives. Certificates are watched: files
// replaced on disk (a rotation) are used from the next handshake, within
// TlsFlags::reload_s, without a restart.
#pragma once

#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_context.h"

namespace atomq {

struct TlsFlags {
  std::string cert;  // --tls_cert: this process's certificate chain (PEM)
  std::string key;   // --tls_key: its private key (PEM)
  std::string ca;    // --tls_ca: the CA bundle that peers' certificates must chain to
  // --tls_client_auth (servers): none, request (verify one if given) or require.
  std::string client_auth = "require";
  bool plaintext = false;  // --plaintext: no TLS at all, asked for explicitly
  unsigned reload_s = 10;  // --tls_reload_s: how often the files are looked at
};

// --tls_cert, --tls_key, --tls_ca, --plaintext, --tls_reload_s, and for a
// server --tls_client_auth. A client also takes ATOMQ_TLS_CERT,
// ATOMQ_TLS_KEY, ATOMQ_TLS_CA and ATOMQ_PLAINTEXT=1 from the environment.
void AddTlsFlags(CLI::App& app, TlsFlags* flags, bool server);

// INVALID_ARGUMENT when neither TLS nor --plaintext is asked for, when both
// are, or when files are missing; a server needs --tls_cert and --tls_key,
// a client --tls_ca (and both files of a client certificate, or neither).
absl::Status CheckTlsFlags(const TlsFlags& flags, bool server);

std::shared_ptr<grpc::ServerCredentials> ServerCredentials(const TlsFlags& flags);
std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials(const TlsFlags& flags);

// What this process's outbound channels dial with (to participants, peers,
// coordinators; atomqctl's and atomq-bench's calls): set once at start-up
// from its flags, plaintext until then.
void SetDialCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials);
std::shared_ptr<grpc::ChannelCredentials> DialCredentials();

// The identity the caller's verified certificate gives: its first subject
// alternative name, else its common name. Empty without a certificate.
std::string PeerIdentity(const grpc::ServerContextBase& context);

}  // namespace atomq
