// What atomqctl verify finds in a data file, and whether restore may put a
// backup in place (cli/data_dir_commands.cc).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "atomq/v1/records.pb.h"
#include "common/codec.h"
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
// of `cluster_id`, when given), and a group member's only to begin a new
// group (`new_group`, which takes nothing else).
absl::Status CheckRestorable(const VerifyReport& r, const std::string& id,
                             const std::string& cluster_id, bool new_group);

// Every record of `db`, decoded as `Record`; a damaged one ends the scan
// with DATA_LOSS naming it.
template <typename Record>
absl::Status ScanRecords(DataFile& f, const std::string& db,
                         const std::function<void(const Record&)>& fn) {
  absl::Status bad;
  absl::Status st = f.Scan(db, [&](std::string_view key, std::string_view value) {
    Record r;
    bad = DecodeRecord(value, &r);
    if (!bad.ok()) {
      bad = absl::DataLossError(absl::StrCat(db, " key \"", std::string(key), "\": ", bad.message(),
                                             " (atomqctl verify lists every damaged record)"));
      return false;
    }
    fn(r);
    return true;
  });
  return st.ok() ? bad : st;
}

}  // namespace atomq::ctl
