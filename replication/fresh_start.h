// Whether a replica whose disk holds nothing may start a new group
// (docs/design.md 10.2, amnesia). A disk that lost its data looks the same
// as a new one; starting a new group on it would forget the votes and
// entries it had, and with a lagging member (whose registry does not name
// its old disk yet) it could elect a leader that lacks committed entries.
// So it asks every other member what its log holds: a new group starts only
// when none holds anything past the first configuration (an entry committed
// past it is on a majority, so on one of the others); when the group runs
// already and has registered a disk for this member, this disk lost its data
// and the member must be replaced; when the group runs and never registered
// it (it started late), it takes the log from the leader as a joining member.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace atomq::replication {

// What another member's log holds, as it answered.
struct PeerLog {
  uint64_t last_index = 0;      // in its log (0: empty)
  uint64_t snapshot_index = 0;  // its log was compacted up to it
  bool registered = false;      // it knows a disk for the asking member (registered or heard)
};

struct FreshStart {
  enum Kind {
    kNewGroup,  // every other member is new too
    kLate,      // the group runs and never knew this member: join it
    kWait,      // some did not answer: ask again
    kRefused,   // the group knew this member's disk: it lost its data
  };
  Kind kind = kWait;
  std::string why;
};

FreshStart DecideFreshStart(const std::vector<uint64_t>& others,
                            const std::map<uint64_t, PeerLog>& answers);

}  // namespace atomq::replication
