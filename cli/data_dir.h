// What atomqctl verify finds in a data file, and whether restore may put a
// backup in place (cli/data_dir_commands.cc).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "atomq/v1/records.pb.h"
#include "common/data_file.h"

namespace atomq::ctl {

struct DbReport {
  std::string name;
  uint64_t records = 0;
  uint64_t damaged = 0;  // checksum or shape wrong
};

struct VerifyReport {
  std::string kind;  // "participant", "coordinator", with " replica ..." for a group member
  v1::MetaRecord meta;
  bool has_meta = false;
  std::vector<DbReport> dbs;
  std::vector<std::string> problems;  // the first few damaged records, unknown sub-databases
  bool ok() const { return problems.empty(); }
};

// Reads every record of every sub-database once, checking it against what
// atomq writes there (a checksummed record of the right type, or the
// index's shape).
absl::StatusOr<VerifyReport> Verify(DataFile& file);

// A backup may become node `id`'s data dir only if it is that node's (and
// of `cluster_id`, when given), and not a group member's.
absl::Status CheckRestorable(const VerifyReport& r, const std::string& id,
                             const std::string& cluster_id);

}  // namespace atomq::ctl
