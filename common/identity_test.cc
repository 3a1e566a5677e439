#include "common/identity.h"

#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace atomq {
namespace {

class IdentityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = std::filesystem::temp_directory_path() /
            ("atomq-identity-" + std::to_string(getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(root_);
    dir_ = (root_ / "data").string();
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  // One start as the servers make it: may it create, open, identity.
  absl::StatusOr<v1::MetaRecord> Start(const std::string& node, const std::string& cluster,
                                       bool init = false) {
    absl::StatusOr<bool> fresh = MayCreateDataFile(dir_, init);
    if (!fresh.ok()) return fresh.status();
    LmdbOptions o;
    o.dir = dir_;
    o.dbs = {"meta"};
    o.map_size_mb = 16;
    o.create = *fresh;
    absl::StatusOr<std::unique_ptr<Storage>> s = OpenLmdbStorage(o);
    if (!s.ok()) return s.status();
    return StartFromIdentity(s->get(), "meta", {node, cluster, dir_, *fresh, 1234});
  }

  std::filesystem::path root_;
  std::string dir_;
};

TEST_F(IdentityTest, FirstStartWritesTheIdentityLaterStartsCheckIt) {
  absl::StatusOr<v1::MetaRecord> m = Start("p1", "prod");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->node_id(), "p1");
  EXPECT_EQ(m->cluster_id(), "prod");
  EXPECT_EQ(m->created_unix_ms(), 1234);
  EXPECT_EQ(m->boot_count(), 1u);
  m = Start("p1", "prod");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->boot_count(), 2u);
}

TEST_F(IdentityTest, AnotherNodesOrClustersDirIsRefused) {
  ASSERT_TRUE(Start("p1", "prod").ok());
  absl::StatusOr<v1::MetaRecord> m = Start("p2", "prod");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(m.status().message(), "belongs to node \"p1\"")) << m.status();
  m = Start("p1", "test");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(m.status().message(), "belongs to cluster \"prod\"")) << m.status();
}

TEST_F(IdentityTest, DataWithoutIdentityIsRefused) {
  {
    LmdbOptions o;
    o.dir = dir_;
    o.dbs = {"meta"};
    o.map_size_mb = 16;
    ASSERT_TRUE(OpenLmdbStorage(o).ok());  // a data file, no identity
  }
  absl::StatusOr<v1::MetaRecord> m = Start("p1", "prod");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(m.status().message(), "no identity record")) << m.status();
}

TEST_F(IdentityTest, NonEmptyDirWithoutDataFileNeedsInit) {
  std::filesystem::create_directories(dir_);
  std::ofstream(dir_ + "/atomq.lock") << "";
  absl::StatusOr<v1::MetaRecord> m = Start("p1", "prod");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(m.status().message(), "--init")) << m.status();
  m = Start("p1", "prod", /*init=*/true);
  ASSERT_TRUE(m.ok()) << m.status();
  m = Start("p1", "prod", /*init=*/true);
  EXPECT_TRUE(absl::StrContains(m.status().message(), "initialised already")) << m.status();
}

}  // namespace
}  // namespace atomq
