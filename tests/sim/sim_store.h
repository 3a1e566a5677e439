// A replica's disk in the simulator, as a Storage (docs/design.md 2.6):
// batches become durable, in order, when a simulated fsync completes; a
// crash loses what was not synced, and its DoneFns never run.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/storage.h"
#include "tests/sim/checker.h"

namespace atomq::sim {

// The simulator's clock and event queue, as the pieces it hosts use them.
class World {
 public:
  virtual ~World() = default;
  virtual int64_t Now() const = 0;
  virtual void At(int64_t at, std::function<void()> fn) = 0;
  virtual int64_t FsyncDelay() = 0;
};

class SimStore : public Storage {
 public:
  // `synced(batch)` runs as each batch lands, before its DoneFn.
  SimStore(World* world, std::vector<std::string> dbs, std::function<void(const Batch&)> synced)
      : world_(world), dbs_(std::move(dbs)), synced_(std::move(synced)) {}

  // While true, a batch lands inside Submit (what a server writes before it
  // runs, with Storage::Write).
  void set_immediate(bool immediate) { immediate_ = immediate; }
  // Loses what is not synced; DoneFns handed out stay uncalled.
  void Crash();
  const Disk& disk() const { return disk_; }
  Disk& disk() { return disk_; }

  void Submit(Batch batch, DoneFn done) override;
  absl::StatusOr<std::optional<std::string>> Get(const std::string& db,
                                                 const std::string& key) override;
  absl::Status Scan(const std::string& db, const std::string& prefix,
                    const std::function<bool(std::string_view, std::string_view)>& fn) override;
  StorageStats Stats() const override { return StorageStats{}; }
  std::vector<std::string> Dbs() const override { return dbs_; }
  // A copy of the disk as it is now, read in pieces.
  absl::StatusOr<std::unique_ptr<StoreReader>> Read(
      const std::vector<std::string>& except) override;

 private:
  void Land(const Batch& batch);
  void MaybeSync();
  void Synced(uint64_t epoch);

  World* const world_;
  const std::vector<std::string> dbs_;
  const std::function<void(const Batch&)> synced_;
  bool immediate_ = false;
  Disk disk_;
  std::deque<std::pair<Batch, DoneFn>> unsynced_;
  size_t syncing_ = 0;  // a prefix of unsynced_ under fsync
  uint64_t epoch_ = 0;  // raised by a crash: a sync under way then lands nothing
};

}  // namespace atomq::sim
