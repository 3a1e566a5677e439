// Durable storage: one LMDB environment per process, named sub-databases,
// and one writer thread that applies every pending batch in one LMDB write
// transaction and one fsync (group commit).
//
// The protocol cores never call this: they emit Batches, and the adapters
// submit them and report back when they are durable.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace atomq {

struct Write {
  std::string db;      // sub-database name
  std::string key;     // 1..511 bytes
  std::string value;   // ignored when erase
  bool erase = false;  // erasing a missing key is not an error
  // Every key of `db` goes (key and value ignored): a replica taking a
  // copy of another's state empties what it held first.
  bool clear = false;
};

// Writes that become durable together or not at all.
struct Batch {
  uint64_t token = 0;  // the core's handle; storage does not interpret it
  std::vector<Write> writes;
  // false: nobody is waiting on it, so it may wait up to
  // LmdbOptions::lazy_delay_ms for a synced batch to share its fsync. It is
  // still fsync'd before done() runs.
  bool sync = true;
};

// Called once per batch, on the writer thread (or the thread in Drive()),
// after the LMDB transaction
// that holds it committed and was fsync'd (OK), or failed (then none of the
// batch is on disk: RESOURCE_EXHAUSTED for a full map or disk, INTERNAL or
// INVALID_ARGUMENT otherwise, with LMDB's message). UNAVAILABLE is the one
// failure that promises nothing: a replicated store that stopped serving
// its submitter (docs/design.md 10.2), whose batch may still commit under
// the next leader. Its submitter must act no further, as if it crashed.
using DoneFn = std::function<void(absl::Status)>;

// Wraps the DoneFn calls of one group (one thread, submission order): `run`
// makes them, and the hook calls it exactly once. An adapter uses it to take
// its lock once per group rather than once per batch.
using GroupHook = std::function<void(const std::function<void()>& run)>;

class Histogram;  // common/histogram.h

struct StorageStats {
  uint64_t batches = 0;  // batches applied
  uint64_t commits = 0;  // LMDB write transactions committed = fsyncs
  uint64_t failures = 0;
  // How long each commit (its write and fsync) took; the store's own, alive
  // as long as it is. Null for a store without one.
  const Histogram* commit_seconds = nullptr;
};

// One version of a store, read a piece at a time (a replica's state sent to
// another, docs/design.md 10.2): every record of its sub-databases, in
// sub-database then key order. One caller at a time, from any thread; the
// store must outlive it.
class StoreReader {
 public:
  virtual ~StoreReader() = default;
  // Appends the next records to `out` (as puts), at least one and about
  // `bytes` of keys and values; false once no record is left.
  virtual absl::StatusOr<bool> Next(size_t bytes, std::vector<Write>* out) = 0;
};

// Narrow on purpose, so a test can wrap it to fail or drop writes.
class Storage {
 public:
  virtual ~Storage() = default;
  // Queues `batch` for the writer thread; never blocks on I/O.
  virtual void Submit(Batch batch, DoneFn done) = 0;
  // Queues `batch` without waking the writer thread: the caller must call
  // Drive() once it holds no lock that a DoneFn takes. Batches keep their
  // order with every other submitted batch.
  virtual void SubmitDeferred(Batch batch, DoneFn done) {
    Submit(std::move(batch), std::move(done));
  }
  // When no group is being written and a synced batch waits, writes the
  // queued batches on the calling thread (their DoneFns run here, and may
  // submit and Drive again) and hands what queued meanwhile to the writer
  // thread. Otherwise returns at once. Saves the hand-off to the writer
  // thread and back when the load is light; under load the writer thread is
  // busy and Drive() does nothing.
  virtual void Drive() {}
  // Applies to groups written after it is set; without one, DoneFns are
  // called one by one.
  virtual void SetGroupHook(GroupHook hook) {}
  // Submit and wait. Not from a DoneFn: that runs on the writer thread.
  absl::Status Write(Batch batch);
  // A committed value, or nullopt.
  virtual absl::StatusOr<std::optional<std::string>> Get(const std::string& db,
                                                         const std::string& key) = 0;
  // Visits every committed key/value of `db` in key order (keys with `prefix`
  // only). `fn` returns false to stop early; its views are valid only during
  // the call.
  virtual absl::Status Scan(
      const std::string& db, const std::string& prefix,
      const std::function<bool(std::string_view key, std::string_view value)>& fn) = 0;
  virtual StorageStats Stats() const = 0;
  // The sub-databases it was opened with.
  virtual std::vector<std::string> Dbs() const = 0;
  // Every sub-database but `except`, as of now, in one read transaction
  // (writes keep going meanwhile). UNIMPLEMENTED where the store cannot.
  virtual absl::StatusOr<std::unique_ptr<StoreReader>> Read(
      const std::vector<std::string>& except) {
    return absl::UnimplementedError("this store cannot be read as one version");
  }
};

// Forwards everything to a target; override what a test should break.
class StorageWrapper : public Storage {
 public:
  explicit StorageWrapper(Storage* target) : target_(target) {}
  void Submit(Batch batch, DoneFn done) override {
    target_->Submit(std::move(batch), std::move(done));
  }
  void SubmitDeferred(Batch batch, DoneFn done) override {
    target_->SubmitDeferred(std::move(batch), std::move(done));
  }
  void Drive() override { target_->Drive(); }
  void SetGroupHook(GroupHook hook) override { target_->SetGroupHook(std::move(hook)); }
  absl::StatusOr<std::optional<std::string>> Get(const std::string& db,
                                                 const std::string& key) override {
    return target_->Get(db, key);
  }
  absl::Status Scan(const std::string& db, const std::string& prefix,
                    const std::function<bool(std::string_view, std::string_view)>& fn) override {
    return target_->Scan(db, prefix, fn);
  }
  StorageStats Stats() const override { return target_->Stats(); }
  std::vector<std::string> Dbs() const override { return target_->Dbs(); }
  absl::StatusOr<std::unique_ptr<StoreReader>> Read(
      const std::vector<std::string>& except) override {
    return target_->Read(except);
  }

 protected:
  Storage* target() { return target_; }

 private:
  Storage* target_;
};

struct LmdbOptions {
  std::string dir;  // created if missing, mode 0700; files 0600
  // false: the data file must exist. A missing one is refused instead of
  // starting an empty node in its place (committed messages would vanish).
  bool create = true;
  std::vector<std::string> dbs;            // named sub-databases, created if missing
  uint64_t map_size_mb = 65536;            // --lmdb_map_size_mb: LMDB's map (virtual) size
  uint32_t batches_per_commit_max = 4096;  // --group_commit_batches_max
  uint32_t lazy_delay_ms = 20;  // --lazy_write_delay_ms: how long an unsynced batch may wait
};

// Opens (creating if needed) the environment and starts the writer thread.
// FAILED_PRECONDITION with a clear message when the directory cannot be
// created or used, or is locked by another process; DATA_LOSS when the data
// file is empty or shorter than LMDB's own record of its size (checked
// before anything is read through the map, which would crash the process).
absl::StatusOr<std::unique_ptr<Storage>> OpenLmdbStorage(const LmdbOptions& options);

// Whether `dir` holds an LMDB data file (of any size).
bool LmdbDataExists(const std::string& dir);

}  // namespace atomq
