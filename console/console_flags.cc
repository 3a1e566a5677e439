#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/server_flags.h"
#include "console/console.h"

namespace atomq::console {

void AddConsoleFlags(CLI::App& app, ConsoleFlags* f) {
  app.add_option("--http_listen", f->http_listen,
                 "host:port to serve the web console on: HTTPS with --tls_cert, plain HTTP "
                 "with --plaintext (default: off)");
  app.add_flag("--http_allow_remote", f->http_allow_remote,
               "serve a plain-HTTP console (--plaintext) on a non-loopback --http_listen too");
  AddCheckedFlag(app, "--http_threads", f->http_threads, "threads answering console requests",
                 CLI::Range(1u, 64u));
  AddCheckedFlag(app, "--http_body_bytes_max", f->body_bytes_max,
                 "largest console request body accepted", CLI::Range(1024u, 1u << 24));
  AddCheckedFlag(app, "--console_rpc_timeout_ms", f->rpc_timeout_ms,
                 "deadline of each call the console makes to a node", CLI::Range(50u, 60000u));
  AddCheckedFlag(app, "--console_sample_ms", f->sample_ms,
                 "how often the console samples every participant's queues for its charts",
                 CLI::Range(100u, 3600000u));
  AddCheckedFlag(app, "--console_history_samples", f->history_samples,
                 "samples the console keeps (its charts span this many times "
                 "--console_sample_ms)",
                 CLI::Range(2u, 100000u));
  AddCheckedFlag(app, "--console_queues_max", f->queues_max,
                 "queues one sample keeps, over all participants (the rest are not charted)",
                 CLI::Range(1u, 1000000u));
}

absl::Status CheckConsoleFlags(const ConsoleFlags& f, const TlsFlags& tls) {
  const std::string& a = f.http_listen;
  if (a.empty()) return absl::OkStatus();
  const size_t colon = a.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(a.substr(colon + 1), &port) ||
      port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--http_listen=", a, ": want host:port"));
  }
  if (!tls.plaintext || f.http_allow_remote || IsLoopbackAddress(a)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("--http_listen=", a,
                   " is not a loopback address and the server runs --plaintext: the console "
                   "would be plain HTTP, its users' tokens in the clear; give the server "
                   "--tls_cert and --tls_key, or add --http_allow_remote"));
}

}  // namespace atomq::console
