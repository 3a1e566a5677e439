// A replica's own record of its group's log, in its store next to the state
// the log is applied to: the entries (sub-database "raft_log", key = index)
// and term, vote and snapshot point ("raft_meta", key "state"). Each engine
// update becomes one Batch, written with the store's group commit, so many
// updates share one fsync.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/storage.h"
#include "replication/raft_engine.h"

namespace atomq::replication {

class RaftLog {
 public:
  // The sub-databases it needs (LmdbOptions::dbs).
  static const std::vector<std::string>& Dbs();
  // What the disk holds. DATA_LOSS for a record that does not decode or a
  // gap in the entries.
  static absl::StatusOr<DurableState> Load(Storage* storage);

  explicit RaftLog(const DurableState& loaded);

  // The writes that put `d` on an empty disk (a new group's first state,
  // RaftEngine::Bootstrap). Tracks it from then on.
  Batch Initialize(const DurableState& d);

  // The writes `update` asks for: term and vote, and its entries (erasing
  // what the log held after them). Empty when it asks for neither.
  Batch Persist(const RaftUpdate& update);
  // The writes of a snapshot at `point` that keeps the entries from
  // `keep_from` on (RaftEngine::Snapshot with `trailing`).
  Batch Compact(const SnapshotPoint& point, uint64_t keep_from);
  // The writes of a snapshot installed from the leader: every entry goes.
  Batch Install(const SnapshotPoint& point);

  uint64_t first_index() const { return first_; }
  uint64_t last_index() const { return last_; }

 private:
  Write StateWrite() const;
  void Erase(uint64_t from, uint64_t to, Batch* batch) const;  // [from, to]

  uint64_t first_ = 1;
  uint64_t last_ = 0;  // first_ - 1 when empty
  uint64_t term_ = 0;
  uint64_t vote_ = 0;
  std::optional<SnapshotPoint> snapshot_;
};

}  // namespace atomq::replication
