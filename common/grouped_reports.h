// Storage reports grouped per writer group, so that an adapter takes its
// core's lock once per group rather than once per batch.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/storage.h"

namespace atomq {

// Collects the storage reports (batch token, status) of one group written
// on this thread, so that the adapter hands them to its core in one locked
// call rather than one call per batch.
class GroupedReports {
 public:
  using Report = std::pair<uint64_t, absl::Status>;
  // Installs the group hook on `storage`: `flush` gets each group's reports
  // that Collect() took, after the group's DoneFns ran.
  void Install(Storage* storage, std::function<void(std::vector<Report>&)> flush);
  // From a DoneFn. false: not inside one of this installer's groups, so the
  // caller reports it itself, now.
  bool Collect(uint64_t token, const absl::Status& status);
};

}  // namespace atomq
