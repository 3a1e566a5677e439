// AuthPolicy (common/auth.h), Access and audit lines (common/access.h) and
// token files (common/bearer.h).
#include "common/auth.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "common/access.h"
#include "common/bearer.h"
#include "grpcpp/test/server_context_test_spouse.h"
#include "gtest/gtest.h"

namespace atomq {
namespace {

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("atomq-auth-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string File(const std::string& name, const std::string& text, mode_t mode = 0600) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    chmod(path.c_str(), mode);
    return path;
  }
  absl::StatusOr<AuthPolicy> Standard() {
    return AuthPolicy::Load(File("roles",
                                 "# who may do what\n"
                                 "c1 peer\n"
                                 "app producer,consumer orders*,audit\n"
                                 "ops   operator\n"),
                            File("tokens", "app 0123456789abcdef0123\nops fedcba9876543210fedc\n"));
  }
  std::shared_ptr<const Access> StandardAccess() {
    AccessFlags f;
    f.roles_file = File("roles", "c1 peer\napp producer,consumer orders*\nops operator\n");
    f.tokens_file = File("tokens", "app 0123456789abcdef0123\nops fedcba9876543210fedc\n");
    absl::StatusOr<std::shared_ptr<const Access>> a = LoadAccess(f, /*plaintext=*/true);
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? *a : nullptr;
  }
  std::filesystem::path dir_;
};

TEST_F(AuthTest, EachRoleIsAllowedItsCallsOnly) {
  absl::StatusOr<AuthPolicy> p = Standard();
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->Authorize("c1", Role::kPeer).ok());
  EXPECT_EQ(p->Authorize("c1", Role::kProducer).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(p->Authorize("app", Role::kProducer, "orders-eu").ok());
  EXPECT_TRUE(p->Authorize("app", Role::kConsumer, "audit").ok());
  absl::Status s = p->Authorize("app", Role::kProducer, "payroll");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(s.message(), "may not use queue payroll")) << s;
  EXPECT_EQ(p->Authorize("app", Role::kOperator).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(p->Authorize("ops", Role::kOperator).ok());
  EXPECT_EQ(p->Authorize("stranger", Role::kConsumer).code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(AuthTest, CertificateOrKnownTokenAuthenticates) {
  absl::StatusOr<AuthPolicy> p = Standard();
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p->Authenticate("c1", ""), "c1");
  EXPECT_EQ(*p->Authenticate("", "Bearer 0123456789abcdef0123"), "app");
  EXPECT_EQ(*p->Authenticate("", "Bearer fedcba9876543210fedc"), "ops");
  EXPECT_EQ(p->Authenticate("", "Bearer 0123456789abcdef0124").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(p->Authenticate("", "0123456789abcdef0123").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(p->Authenticate("", "").status().code(), absl::StatusCode::kUnauthenticated);
}

// The console calls for its user through its server's mTLS channel: the
// user's token, not the server's certificate, names the caller, and a token
// nobody holds never falls back to the certificate.
TEST_F(AuthTest, ATokenNamesTheCallerOverACertificate) {
  absl::StatusOr<AuthPolicy> p = Standard();
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p->Authenticate("c1", "Bearer fedcba9876543210fedc"), "ops");
  EXPECT_EQ(p->Authenticate("c1", "Bearer 0123456789abcdef0124").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(*p->Authenticate("c1", "Basic abc"), "c1");
}

TEST_F(AuthTest, BadFilesAreRefusedWithFileAndLine) {
  absl::StatusOr<AuthPolicy> p = AuthPolicy::Load(File("r1", "c1 peer\nx admin\n"), "");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(p.status().message(), "r1:2: unknown role \"admin\""))
      << p.status();
  p = AuthPolicy::Load(File("r2", "c1 peer\nc1 operator\n"), "");
  EXPECT_TRUE(absl::StrContains(p.status().message(), "listed twice")) << p.status();
  p = AuthPolicy::Load(File("r3", "c1 peer\n"), File("t1", "app short\n"));
  EXPECT_TRUE(absl::StrContains(p.status().message(), "16 bytes")) << p.status();
  p = AuthPolicy::Load(File("r4", "c1 peer\n"), File("t2", "app 0123456789abcdef0123\n", 0644));
  EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(p.status().message(), "chmod 600")) << p.status();
}

// A Secret mounted by Kubernetes for a pod's fsGroup: owned by root,
// readable by its group. Anyone else's file must be the owner's alone.
TEST_F(AuthTest, ATokensFileOwnedByRootMayBeReadByItsGroupOnly) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to own files as others";
  const std::string tokens = File("t-root", "app 0123456789abcdef0123\n", 0440);
  EXPECT_TRUE(AuthPolicy::Load(File("r", "app producer\n"), tokens).ok());
  EXPECT_TRUE(ReadTokenFile(File("one-root", "0123456789abcdef\n", 0640)).ok());
  chmod(tokens.c_str(), 0444);
  EXPECT_EQ(AuthPolicy::Load(File("r", "app producer\n"), tokens).status().code(),
            absl::StatusCode::kFailedPrecondition);
  chmod(tokens.c_str(), 0440);
  ASSERT_EQ(chown(tokens.c_str(), 1, 1), 0);
  EXPECT_EQ(AuthPolicy::Load(File("r", "app producer\n"), tokens).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(AuthTest, OpenPolicyAllowsEverything) {
  AuthPolicy p = AuthPolicy::Open();
  EXPECT_EQ(*p.Authenticate("", ""), "anonymous");
  EXPECT_TRUE(p.Authorize("anonymous", Role::kOperator).ok());
}

TEST(ConstantTimeEquals, ComparesContentsAndLengths) {
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

// A call's context carrying `authorization` (none when empty). The spouse
// holds the metadata the context points into.
struct Call {
  explicit Call(const std::string& authorization) {
    if (!authorization.empty()) spouse.AddClientMetadata("authorization", authorization);
  }
  grpc::ServerContext ctx;
  grpc::testing::ServerContextTestSpouse spouse{&ctx};
};

TEST_F(AuthTest, RefusalsNameIdentityRoleAndMethod) {
  std::shared_ptr<const Access> a = StandardAccess();
  ASSERT_NE(a, nullptr);
  Call nobody("");
  absl::StatusOr<std::string> who = a->Check(nobody.ctx, "Queue.Send", {Role::kProducer});
  EXPECT_EQ(who.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(who.status().message(), "Queue.Send")) << who.status();
  Call wrong("Bearer 0123456789abcdef0124");
  EXPECT_EQ(a->Check(wrong.ctx, "Queue.Send", {Role::kProducer}).status().code(),
            absl::StatusCode::kUnauthenticated);

  Call app("Bearer 0123456789abcdef0123");
  who = a->Check(app.ctx, "Queue.Send", {Role::kProducer}, "orders");
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ(*who, "app");
  who = a->Check(app.ctx, "ParticipantTxn.Prepare", {Role::kPeer});
  EXPECT_EQ(who.status().code(), absl::StatusCode::kPermissionDenied);
  for (const char* part : {"ParticipantTxn.Prepare", "peer", "app"}) {
    EXPECT_TRUE(absl::StrContains(who.status().message(), part)) << who.status();
  }
  who = a->Check(app.ctx, "Coordinator.GetTransaction", {Role::kProducer, Role::kOperator});
  EXPECT_TRUE(who.ok()) << who.status();
  Call ops("Bearer fedcba9876543210fedc");
  EXPECT_TRUE(
      a->Check(ops.ctx, "Coordinator.GetTransaction", {Role::kProducer, Role::kOperator}).ok());
  EXPECT_EQ(a->Check(ops.ctx, "Queue.Receive", {Role::kConsumer}, "orders").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(AuthTest, EachOpNeedsItsRoleOnItsQueue) {
  std::shared_ptr<const Access> a = StandardAccess();
  ASSERT_NE(a, nullptr);
  google::protobuf::RepeatedPtrField<v1::Op> ops;
  ops.Add()->mutable_enqueue()->set_queue("orders-eu");
  ops.Add()->mutable_ack()->set_queue("orders-us");
  EXPECT_TRUE(a->AllowOps("app", "Coordinator.Execute", ops).ok());
  ops.Add()->mutable_ack()->set_queue("payroll");
  absl::Status s = a->AllowOps("app", "Coordinator.Execute", ops);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(s.message(), "op 2: ")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "payroll as consumer")) << s;
}

TEST_F(AuthTest, NoRolesFileOnlyWithPlaintextOrAllowAnyone) {
  AccessFlags f;
  absl::StatusOr<std::shared_ptr<const Access>> a = LoadAccess(f, /*plaintext=*/false);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(a.status().message(), "--allow_anyone")) << a.status();
  a = LoadAccess(f, /*plaintext=*/true);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE((*a)->open());
  f.allow_anyone = true;
  a = LoadAccess(f, /*plaintext=*/false);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE((*a)->open());
  f.roles_file = File("roles", "c1 peer\n");
  EXPECT_EQ(LoadAccess(f, false).status().code(), absl::StatusCode::kInvalidArgument);
  f.allow_anyone = false;
  f.roles_file.clear();
  f.tokens_file = File("tokens", "app 0123456789abcdef0123\n");
  EXPECT_EQ(LoadAccess(f, true).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(AuthTest, TokenFileHoldsOnePrivateToken) {
  absl::StatusOr<std::string> t = ReadTokenFile(File("t1", "# mine\n0123456789abcdef\n"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, "0123456789abcdef");
  t = ReadTokenFile(File("t2", "0123456789abcdef\n", 0644));
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  t = ReadTokenFile(File("t3", "app 0123456789abcdef\n"));
  EXPECT_TRUE(absl::StrContains(t.status().message(), "t3:1:")) << t.status();
  t = ReadTokenFile(File("t4", "\n"));
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(AuditLineTest, ContentCannotForgeALineOrAField) {
  const std::string line =
      AuditLine("ops", "resolve",
                {{"txn", "t1"}, {"note", "fine\n2026-01-01 audit who=\"root\" action=\"delete\""}});
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  EXPECT_TRUE(absl::StartsWith(line, "audit who=\"ops\" action=\"resolve\" txn=\"t1\" note=\""))
      << line;
  EXPECT_TRUE(absl::StrContains(line, "fine\\x0a2026")) << line;
  EXPECT_FALSE(absl::StrContains(line, "who=\"root\"")) << line;
  // A long value is clipped.
  EXPECT_LT(AuditLine("ops", "resolve", {{"note", std::string(10000, 'x')}}).size(), 400u);
}

}  // namespace
}  // namespace atomq
