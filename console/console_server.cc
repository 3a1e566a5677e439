#include <atomic>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/validate.h"
#include "console/assets.h"
#include "console/certificate.h"
#include "console/cluster_view.h"
#include "console/console.h"
#include "console/history.h"
#include "google/protobuf/util/json_util.h"
#include "httplib.h"

namespace atomq::console {

namespace {

int HttpStatusOf(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return 200;
    case grpc::StatusCode::INVALID_ARGUMENT:
      return 400;
    case grpc::StatusCode::UNAUTHENTICATED:
      return 401;
    case grpc::StatusCode::PERMISSION_DENIED:
      return 403;
    case grpc::StatusCode::NOT_FOUND:
      return 404;
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::ABORTED:
      return 409;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return 429;
    case grpc::StatusCode::UNAVAILABLE:
      return 503;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return 504;
    default:
      return 500;
  }
}

// No page of another site may frame these pages or run script in them, and
// nothing is cached: what they show is who may see it now.
void Harden(httplib::Response& res) {
  res.set_header("Content-Security-Policy",
                 "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'");
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("X-Frame-Options", "DENY");
  res.set_header("Referrer-Policy", "no-referrer");
  res.set_header("Cache-Control", "no-store");
}

void SendJson(httplib::Response& res, const google::protobuf::Message& m, int status = 200) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  std::string body;
  (void)google::protobuf::util::MessageToJsonString(m, &body, options);
  Harden(res);
  res.status = status;
  res.set_content(body, "application/json");
}

void SendError(httplib::Response& res, grpc::StatusCode code, const std::string& message) {
  v1::ConsoleError e;
  e.set_code(absl::StatusCodeToString(static_cast<absl::StatusCode>(code)));
  e.set_message(message);
  SendJson(res, e, HttpStatusOf(code));
}

const char* ContentType(const std::string& path) {
  if (absl::EndsWith(path, ".js")) return "text/javascript; charset=utf-8";
  if (absl::EndsWith(path, ".css")) return "text/css; charset=utf-8";
  return "text/html; charset=utf-8";
}

}  // namespace

class ConsoleServer::Impl {
 public:
  explicit Impl(ConsoleOptions o) : o_(std::move(o)), view_(o_), history_(o_.flags, &view_) {}

  absl::Status Listen() {
    if (o_.tls.plaintext) {
      server_ = std::make_unique<httplib::Server>();
    } else {
      absl::StatusOr<std::unique_ptr<ReloadingCertificate>> cert =
          ReloadingCertificate::Load(o_.tls.cert, o_.tls.key, o_.tls.reload_s);
      if (!cert.ok()) return cert.status();
      certificate_ = std::move(*cert);
      auto tls = std::make_unique<httplib::SSLServer>([this](SSL_CTX& ctx) {
        certificate_->Install(&ctx);
        return true;
      });
      if (!tls->is_valid()) {
        return absl::FailedPreconditionError(absl::StrCat("--http_listen: cannot serve HTTPS with ",
                                                          o_.tls.cert, " and ", o_.tls.key));
      }
      server_ = std::move(tls);
    }
    RefuseSharedPort(server_.get());
    const uint32_t threads = o_.flags.http_threads;
    server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server_->set_payload_max_length(o_.flags.body_bytes_max);
    server_->set_read_timeout(10, 0);
    server_->set_write_timeout(10, 0);
    Route();
    const std::string& a = o_.flags.http_listen;
    const size_t colon = a.rfind(':');
    int port = 0;
    (void)absl::SimpleAtoi(a.substr(colon + 1), &port);
    std::string host = a.substr(0, colon);
    if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]"))
      host = host.substr(1, host.size() - 2);
    if (!server_->bind_to_port(host.c_str(), port)) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot listen on ", a, " for the console"));
    }
    thread_ = std::thread([this] {
      server_->listen_after_bind();
      ended_ = true;
    });
    return absl::OkStatus();
  }

  ~Impl() {
    if (!thread_.joinable()) return;
    StopHttpServer(server_.get(), ended_);
    thread_.join();
  }

 private:
  // Who the request comes from; false (and `res` answered) when nobody this
  // server knows, or when the call would go out under this server's own
  // certificate for want of a token.
  bool SignedIn(const httplib::Request& req, httplib::Response& res, Caller* who,
                std::string* identity) {
    who->authorization = req.get_header_value("Authorization");
    absl::StatusOr<std::string> id = o_.access->IdentifyBearer(who->authorization);
    if (!id.ok()) {
      SendError(res, grpc::StatusCode::UNAUTHENTICATED, std::string(id.status().message()));
      return false;
    }
    if (!o_.tls.plaintext && who->authorization.empty()) {
      SendError(res, grpc::StatusCode::UNAUTHENTICATED,
                "sign in with a bearer token (--tokens_file): over TLS the console acts only "
                "as its user's token");
      return false;
    }
    *identity = *id;
    return true;
  }

  void Route() {
    server_->Get("/", [](const httplib::Request&, httplib::Response& res) {
      Harden(res);
      res.set_content(std::string(*Asset("/index.html")), ContentType("/index.html"));
    });
    server_->Get(R"(/[a-z]+\.(js|css))", [](const httplib::Request& req, httplib::Response& res) {
      std::optional<std::string_view> file = Asset(req.path);
      Harden(res);
      if (!file) {
        res.status = 404;
        return;
      }
      res.set_content(std::string(*file), ContentType(req.path));
    });
    Api("/api/session", [this](const Caller&, const std::string& identity, const httplib::Request&,
                               httplib::Response& res) {
      v1::ConsoleSession s;
      s.set_identity(identity);
      for (const std::string& r : o_.access->RolesOf(identity)) s.add_roles(r);
      s.set_open(o_.access->open());
      s.set_node_id(o_.node_id);
      s.set_node_role(o_.node_role);
      s.set_version(o_.version);
      SendJson(res, s);
    });
    Api("/api/cluster", [this](const Caller& who, const std::string&, const httplib::Request&,
                               httplib::Response& res) { SendJson(res, view_.Cluster(who)); });
    Api("/api/transactions", [this](const Caller& who, const std::string&,
                                    const httplib::Request& req, httplib::Response& res) {
      const std::string txn = req.get_param_value("txn");
      if (!txn.empty()) {
        if (absl::Status s = ValidateTxnId(txn); !s.ok()) {
          return SendError(res, grpc::StatusCode::INVALID_ARGUMENT, std::string(s.message()));
        }
      }
      SendJson(res, view_.Transactions(who, txn));
    });
    Api("/api/queues", [this](const Caller& who, const std::string&, const httplib::Request&,
                              httplib::Response& res) { SendJson(res, view_.Queues(who)); });
    Api("/api/history", [this](const Caller&, const std::string&, const httplib::Request&,
                               httplib::Response& res) { SendJson(res, history_.Get()); });
    server_->Post("/api/resolve", [this](const httplib::Request& req, httplib::Response& res) {
      Resolve(req, res);
    });
  }

  using ApiHandler = std::function<void(const Caller&, const std::string&, const httplib::Request&,
                                        httplib::Response&)>;
  void Api(const char* path, ApiHandler handler) {
    server_->Get(path, [this, handler](const httplib::Request& req, httplib::Response& res) {
      Caller who;
      std::string identity;
      if (SignedIn(req, res, &who, &identity)) handler(who, identity, req, res);
    });
  }

  // A browser sends a header of a script's own only to its own origin, and
  // another site's form can send neither it nor a JSON body: no request
  // forged elsewhere resolves anything, even on an open cluster.
  void Resolve(const httplib::Request& req, httplib::Response& res) {
    if (req.get_header_value("X-Atomq-Console") != "1" ||
        !absl::StartsWith(req.get_header_value("Content-Type"), "application/json")) {
      return SendError(res, grpc::StatusCode::PERMISSION_DENIED,
                       "a resolve comes from the console's own page: JSON with X-Atomq-Console: 1");
    }
    Caller who;
    std::string identity;
    if (!SignedIn(req, res, &who, &identity)) return;
    v1::ConsoleResolveRequest r;
    google::protobuf::util::JsonParseOptions options;
    if (!google::protobuf::util::JsonStringToMessage(req.body, &r, options).ok()) {
      return SendError(res, grpc::StatusCode::INVALID_ARGUMENT,
                       "the body is not a ConsoleResolveRequest in JSON");
    }
    v1::ResolveResponse resp;
    grpc::Status s = view_.Resolve(who, r, &resp);
    LogLine(absl::StrCat("console: ", Clip(identity), " resolved ", Clip(r.txn_id()), " at ",
                         Clip(r.participant()), " as ", v1::Outcome_Name(r.outcome()), ": ",
                         s.ok() ? "OK" : Clip(s.error_message())));
    if (!s.ok()) return SendError(res, s.error_code(), s.error_message());
    SendJson(res, resp);
  }

  const ConsoleOptions o_;
  ClusterView view_;
  History history_;
  std::unique_ptr<ReloadingCertificate> certificate_;  // HTTPS only
  std::unique_ptr<httplib::Server> server_;
  std::atomic<bool> ended_{false};
  std::thread thread_;
};

ConsoleServer::ConsoleServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ConsoleServer::~ConsoleServer() = default;

absl::StatusOr<std::unique_ptr<ConsoleServer>> ConsoleServer::Start(ConsoleOptions options) {
  if (options.flags.http_listen.empty()) return std::unique_ptr<ConsoleServer>();
  auto impl = std::make_unique<Impl>(std::move(options));
  if (absl::Status s = impl->Listen(); !s.ok()) return s;
  return std::unique_ptr<ConsoleServer>(new ConsoleServer(std::move(impl)));
}

}  // namespace atomq::console
