// A data directory's identity: which node it belongs to, in which cluster,
// since when (MetaRecord under key "meta"). Written once, when the directory
// is initialised; every later start checks it, so that a start never takes
// another node's directory, or a damaged one, for its own.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "atomq/v1/records.pb.h"
#include "common/storage.h"

namespace atomq {

struct IdentityOptions {
  std::string node_id;     // --id
  std::string cluster_id;  // --cluster_id
  std::string data_dir;    // for messages
  // The data file was created by this start (an empty directory or --init):
  // the identity is written now. Otherwise it must be there already.
  bool fresh = false;
  int64_t now_unix_ms = 0;
};

// Checks (or, when fresh, writes) the identity in `meta_db` and raises the
// boot count, forced. FAILED_PRECONDITION when a directory that had data has
// no identity, or belongs to another node or cluster; DATA_LOSS when the
// record cannot be decoded. Messages are ready to print.
absl::StatusOr<v1::MetaRecord> StartFromIdentity(Storage* storage, const std::string& meta_db,
                                                 const IdentityOptions& options);

// Whether a start on `dir` may create its data file: `dir` is missing or
// empty, or `init` (--init) asks for it. A directory with a data file is
// never created anew: --init on it is refused. The error says what to do.
absl::StatusOr<bool> MayCreateDataFile(const std::string& dir, bool init);

}  // namespace atomq
