#include "common/auth.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
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

}  // namespace
}  // namespace atomq
