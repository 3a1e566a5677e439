#include "tests/sim/sim_store.h"

#include <algorithm>

namespace atomq::sim {
namespace {

// A copy of every record but `except`'s, handed out in db then key order.
class CopyReader : public StoreReader {
 public:
  CopyReader(const Disk& disk, const std::vector<std::string>& except) {
    for (const auto& [db, records] : disk) {
      if (std::find(except.begin(), except.end(), db) != except.end()) continue;
      for (const auto& [key, value] : records) records_.push_back(Write{db, key, value});
    }
  }
  absl::StatusOr<bool> Next(size_t bytes, std::vector<Write>* out) override {
    size_t taken = 0;
    while (next_ < records_.size() && (taken == 0 || taken < bytes)) {
      taken += records_[next_].key.size() + records_[next_].value.size();
      out->push_back(records_[next_++]);
    }
    return next_ < records_.size();
  }

 private:
  std::vector<Write> records_;
  size_t next_ = 0;
};

}  // namespace

void SimStore::Crash() {
  unsynced_.clear();
  syncing_ = 0;
  ++epoch_;
}

void SimStore::Submit(Batch batch, DoneFn done) {
  if (immediate_) {
    Land(batch);
    done(absl::OkStatus());
    return;
  }
  unsynced_.emplace_back(std::move(batch), std::move(done));
  MaybeSync();
}

absl::StatusOr<std::optional<std::string>> SimStore::Get(const std::string& db,
                                                         const std::string& key) {
  auto d = disk_.find(db);
  if (d == disk_.end()) return std::optional<std::string>();
  auto it = d->second.find(key);
  if (it == d->second.end()) return std::optional<std::string>();
  return std::optional<std::string>(it->second);
}

absl::Status SimStore::Scan(const std::string& db, const std::string& prefix,
                            const std::function<bool(std::string_view, std::string_view)>& fn) {
  auto d = disk_.find(db);
  if (d == disk_.end()) return absl::OkStatus();
  for (auto it = d->second.lower_bound(prefix);
       it != d->second.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
    if (!fn(it->first, it->second)) break;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<StoreReader>> SimStore::Read(
    const std::vector<std::string>& except) {
  return std::unique_ptr<StoreReader>(std::make_unique<CopyReader>(disk_, except));
}

void SimStore::Land(const Batch& batch) {
  for (const atomq::Write& w : batch.writes) {
    if (w.clear) {
      disk_[w.db].clear();
    } else if (w.erase) {
      disk_[w.db].erase(w.key);
    } else {
      disk_[w.db][w.key] = w.value;
    }
  }
  synced_(batch);
}

void SimStore::MaybeSync() {
  if (syncing_ > 0 || unsynced_.empty()) return;
  syncing_ = unsynced_.size();
  world_->At(world_->Now() + world_->FsyncDelay(), [this, epoch = epoch_] { Synced(epoch); });
}

void SimStore::Synced(uint64_t epoch) {
  if (epoch != epoch_) return;
  std::vector<DoneFn> done;
  for (size_t i = 0; i < syncing_ && !unsynced_.empty(); ++i) {
    auto [batch, fn] = std::move(unsynced_.front());
    unsynced_.pop_front();
    Land(batch);
    done.push_back(std::move(fn));
  }
  syncing_ = 0;
  // Landed first, then told, as LMDB's writer reports a group.
  const uint64_t at = epoch_;
  for (DoneFn& fn : done) {
    if (epoch_ != at) return;  // crashed from a DoneFn
    fn(absl::OkStatus());
  }
  MaybeSync();
}

}  // namespace atomq::sim
