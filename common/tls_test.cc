#include "common/tls.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "atomq/v1/participant.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace atomq {
namespace {

// Answers ListQueues with one queue named after the caller's identity.
class WhoAmI final : public v1::Queue::CallbackService {
  grpc::ServerUnaryReactor* ListQueues(grpc::CallbackServerContext* ctx,
                                       const v1::ListQueuesRequest*,
                                       v1::ListQueuesResponse* resp) override {
    resp->add_queues()->set_name(PeerIdentity(*ctx));
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }
};

// A CA, a server certificate for 127.0.0.1, a client certificate "c1", and a
// second CA with a client of its own, made with openssl for this test.
class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(
        (std::filesystem::temp_directory_path() / ("atomq-tls-" + std::to_string(getpid())))
            .string());
    std::filesystem::create_directories(*dir_);
    const std::string d = *dir_;
    const std::string quiet = " >/dev/null 2>&1";
    auto ca = [&](const std::string& n) {
      return absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=", n,
                          " -keyout ", d, "/", n, ".key -out ", d, "/", n, ".pem", quiet);
    };
    auto leaf = [&](const std::string& n, const std::string& ca_name, const std::string& san) {
      return absl::StrCat("openssl req -newkey rsa:2048 -nodes -subj /CN=", n, " -keyout ", d, "/",
                          n, ".key -out ", d, "/", n, ".csr", quiet, " && printf '",
                          "subjectAltName=", san, "' > ", d, "/", n,
                          ".ext && openssl x509 -req -in ", d, "/", n, ".csr -CA ", d, "/", ca_name,
                          ".pem -CAkey ", d, "/", ca_name, ".key -CAcreateserial -days 1 -extfile ",
                          d, "/", n, ".ext -out ", d, "/", n, ".pem", quiet);
    };
    for (const std::string& cmd :
         {ca("ca"), ca("otherca"), leaf("server", "ca", "IP:127.0.0.1,DNS:p1"),
          leaf("c1", "ca", "DNS:c1"), leaf("intruder", "otherca", "DNS:c1")}) {
      ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    }
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  static std::string F(const std::string& name) { return *dir_ + "/" + name; }

  void Serve(TlsFlags flags) {
    ASSERT_TRUE(CheckTlsFlags(flags, true).ok()) << CheckTlsFlags(flags, true);
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", ServerCredentials(flags), &port_);
    b.RegisterService(&service_);
    server_ = b.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  // The identity the server saw, or the call's error.
  grpc::Status Call(std::shared_ptr<grpc::ChannelCredentials> creds, std::string* who) {
    auto stub = v1::Queue::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_), std::move(creds)));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ListQueuesResponse resp;
    grpc::Status s = stub->ListQueues(&ctx, v1::ListQueuesRequest(), &resp);
    if (s.ok() && resp.queues_size() == 1) *who = resp.queues(0).name();
    return s;
  }
  TlsFlags ServerFlags() {
    TlsFlags f;
    f.cert = F("server.pem");
    f.key = F("server.key");
    f.ca = F("ca.pem");
    return f;
  }
  TlsFlags Client(const std::string& name, const std::string& ca = "ca") {
    TlsFlags f;
    f.cert = name.empty() ? "" : F(name + ".pem");
    f.key = name.empty() ? "" : F(name + ".key");
    f.ca = F(ca + ".pem");
    return f;
  }

  static std::string* dir_;
  WhoAmI service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};
std::string* TlsTest::dir_ = nullptr;

TEST_F(TlsTest, MutualTlsGivesTheClientsIdentity) {
  Serve(ServerFlags());
  std::string who;
  grpc::Status s = Call(ChannelCredentials(Client("c1")), &who);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(who, "c1");
}

TEST_F(TlsTest, PlaintextClientIsRefused) {
  Serve(ServerFlags());
  std::string who;
  EXPECT_FALSE(Call(grpc::InsecureChannelCredentials(), &who).ok());
}

TEST_F(TlsTest, ClientWithoutCertificateIsRefusedWhenRequired) {
  Serve(ServerFlags());
  std::string who;
  EXPECT_FALSE(Call(ChannelCredentials(Client("")), &who).ok());
}

TEST_F(TlsTest, ClientCertificateFromAnotherCaIsRefused) {
  Serve(ServerFlags());
  std::string who;
  TlsFlags intruder = Client("intruder");
  EXPECT_FALSE(Call(ChannelCredentials(intruder), &who).ok());
}

TEST_F(TlsTest, ClientRefusesAServerItsCaDidNotSign) {
  Serve(ServerFlags());
  std::string who;
  EXPECT_FALSE(Call(ChannelCredentials(Client("c1", "otherca")), &who).ok());
}

TEST_F(TlsTest, WithClientAuthNoneATokenClientConnectsWithoutIdentity) {
  TlsFlags f = ServerFlags();
  f.client_auth = "none";
  Serve(f);
  std::string who = "unset";
  grpc::Status s = Call(ChannelCredentials(Client("")), &who);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(who, "");
}

TEST(TlsFlagsTest, PlaintextMustBeAskedForAndExcludesTls) {
  TlsFlags f;
  EXPECT_EQ(CheckTlsFlags(f, true).code(), absl::StatusCode::kInvalidArgument);
  f.plaintext = true;
  EXPECT_TRUE(CheckTlsFlags(f, true).ok());
  f.ca = "/nonexistent";
  EXPECT_EQ(CheckTlsFlags(f, false).code(), absl::StatusCode::kInvalidArgument);
  f.plaintext = false;
  EXPECT_TRUE(CheckTlsFlags(f, false).message().find("not a readable file") != std::string::npos)
      << CheckTlsFlags(f, false);
  f.cert = "/x";
  EXPECT_TRUE(CheckTlsFlags(f, false).message().find("go together") != std::string::npos);
}

}  // namespace
}  // namespace atomq
