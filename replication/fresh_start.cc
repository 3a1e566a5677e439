#include "replication/fresh_start.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace atomq::replication {

FreshStart DecideFreshStart(const std::vector<uint64_t>& others,
                            const std::map<uint64_t, PeerLog>& answers) {
  std::string missing;
  bool running = false;
  for (uint64_t m : others) {
    auto it = answers.find(m);
    if (it == answers.end()) {
      absl::StrAppend(&missing, missing.empty() ? "" : ", ", m);
      continue;
    }
    const PeerLog& p = it->second;
    if (p.registered) {
      return {FreshStart::kRefused,
              absl::StrCat("this replica's disk holds no log, but member ", m,
                           " knows this member by another disk (its log runs to index ",
                           std::max(p.last_index, p.snapshot_index),
                           "): this disk lost its data; replace this member (atomqctl cluster "
                           "replace), do not restart it on an empty disk")};
    }
    running |= p.last_index > 1 || p.snapshot_index > 0;
  }
  if (!missing.empty()) {
    return {FreshStart::kWait,
            absl::StrCat("on an empty disk, waiting for every other member to answer what it "
                         "holds (member(s) ",
                         missing, " did not)")};
  }
  if (running) {
    return {FreshStart::kLate,
            "the group runs already and never knew this member; joining it as it is"};
  }
  return {FreshStart::kNewGroup, "every member is new; starting the group"};
}

}  // namespace atomq::replication
