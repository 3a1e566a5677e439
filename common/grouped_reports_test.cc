#include "common/grouped_reports.h"

#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace atomq {
namespace {

// The reports of one group reach the flush together, in submission order;
// a DoneFn outside such a group is told to report by itself.
TEST(GroupedReportsTest, OneFlushPerGroupInOrder) {
  char tmpl[] = "/tmp/atomq_reports_test.XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  {
    LmdbOptions o;
    o.dir = dir + "/data";
    o.dbs = {"txn"};
    o.map_size_mb = 64;
    absl::StatusOr<std::unique_ptr<Storage>> s = OpenLmdbStorage(o);
    ASSERT_TRUE(s.ok()) << s.status();
    GroupedReports reports;
    EXPECT_FALSE(reports.Collect(7, absl::OkStatus()));
    std::vector<std::vector<uint64_t>> flushed;
    reports.Install(s->get(), [&](std::vector<GroupedReports::Report>& group) {
      std::vector<uint64_t> tokens;
      for (const auto& [token, st] : group) {
        EXPECT_TRUE(st.ok()) << st;
        tokens.push_back(token);
      }
      flushed.push_back(tokens);
    });
    int direct = 0;
    for (uint64_t token = 1; token <= 3; ++token) {
      Batch b;
      b.token = token;
      b.writes.push_back(Write{"txn", absl::StrCat("k", token), "v", false});
      (*s)->SubmitDeferred(std::move(b), [&, token](absl::Status st) {
        if (!reports.Collect(token, st)) ++direct;
      });
    }
    (*s)->Drive();
    EXPECT_EQ(direct, 0);
    EXPECT_EQ(flushed, std::vector<std::vector<uint64_t>>({{1, 2, 3}}));
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace atomq
