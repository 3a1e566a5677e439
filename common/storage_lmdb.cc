#include <fcntl.h>
#include <lmdb.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <string_view>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/check.h"
#include "common/data_file.h"
#include "common/histogram.h"
#include "common/log.h"
#include "common/status.h"
#include "common/storage.h"

namespace atomq {

absl::Status Storage::Write(Batch batch) {
  absl::Notification done;
  absl::Status result;
  Submit(std::move(batch), [&](absl::Status s) {
    result = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

namespace {

// Maps an LMDB (or errno) code to the code that tells the caller what to do:
// a full map or disk will not heal by retrying, a bad key is the caller's bug.
absl::Status LmdbError(int rc, const std::string& what) {
  std::string msg = absl::StrCat(what, ": ", mdb_strerror(rc));
  switch (rc) {
    case MDB_MAP_FULL:
      return absl::ResourceExhaustedError(
          absl::StrCat(msg, " (the LMDB map is full: raise --lmdb_map_size_mb)"));
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(absl::StrCat(msg, " (the disk is full)"));
    case MDB_TXN_FULL:
    case MDB_READERS_FULL:
    case ENOMEM:
      return absl::ResourceExhaustedError(msg);
    case MDB_BAD_VALSIZE:
      return absl::InvalidArgumentError(msg);
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
      return absl::DataLossError(msg);
    default:
      return absl::InternalError(msg);
  }
}

struct Pending {
  Batch batch;
  DoneFn done;
};

// A read transaction walked with one cursor, sub-database by sub-database.
class LmdbReader : public StoreReader {
 public:
  LmdbReader(MDB_txn* txn, std::vector<std::pair<std::string, MDB_dbi>> dbs)
      : txn_(txn), dbs_(std::move(dbs)) {}
  ~LmdbReader() override {
    if (cursor_ != nullptr) mdb_cursor_close(cursor_);
    mdb_txn_abort(txn_);
  }

  absl::StatusOr<bool> Next(size_t bytes, std::vector<Write>* out) override {
    size_t taken = 0;
    while (next_db_ < dbs_.size()) {
      MDB_cursor_op op = MDB_NEXT;
      if (cursor_ == nullptr) {
        int rc = mdb_cursor_open(txn_, dbs_[next_db_].second, &cursor_);
        if (rc != 0) return LmdbError(rc, "open cursor on " + dbs_[next_db_].first);
        op = MDB_FIRST;
      }
      MDB_val k, v;
      int rc = mdb_cursor_get(cursor_, &k, &v, op);
      if (rc == MDB_NOTFOUND) {
        mdb_cursor_close(cursor_);
        cursor_ = nullptr;
        ++next_db_;
        continue;
      }
      if (rc != 0) return LmdbError(rc, "read " + dbs_[next_db_].first);
      out->push_back(Write{dbs_[next_db_].first,
                           std::string(static_cast<const char*>(k.mv_data), k.mv_size),
                           std::string(static_cast<const char*>(v.mv_data), v.mv_size), false});
      taken += k.mv_size + v.mv_size;
      if (taken >= bytes) return true;
    }
    return false;
  }

 private:
  MDB_txn* const txn_;
  const std::vector<std::pair<std::string, MDB_dbi>> dbs_;
  size_t next_db_ = 0;
  MDB_cursor* cursor_ = nullptr;  // on dbs_[next_db_], once opened
};

class LmdbStorage : public Storage {
 public:
  LmdbStorage(LmdbOptions options, int lock_fd, MDB_env* env,
              std::map<std::string, MDB_dbi, std::less<>> dbis)
      : options_(std::move(options)),
        lock_fd_(lock_fd),
        env_(env),
        dbis_(std::move(dbis)),
        key_bytes_max_(static_cast<size_t>(mdb_env_get_maxkeysize(env))) {
    writer_ = std::thread([this] { WriterLoop(); });
  }

  ~LmdbStorage() override {
    {
      absl::MutexLock l(&mu_);
      stop_ = true;
    }
    // The writer exits only once the queue is empty, so every accepted batch
    // is either durable or reported failed before the env closes.
    writer_.join();
    mdb_env_close(env_);
    close(lock_fd_);  // releases the flock
  }

  void Submit(Batch batch, DoneFn done) override {
    Enqueue(std::move(batch), std::move(done), /*handoff=*/true);
  }

  void SubmitDeferred(Batch batch, DoneFn done) override {
    Enqueue(std::move(batch), std::move(done), /*handoff=*/false);
  }

  void SetGroupHook(GroupHook hook) override {
    auto h = hook ? std::make_shared<const GroupHook>(std::move(hook)) : nullptr;
    absl::MutexLock l(&mu_);
    group_hook_ = std::move(h);
  }

  void Drive() override {
    std::vector<Pending> group;
    {
      absl::MutexLock l(&mu_);
      if (writing_ || queue_.empty()) return;
      if (sync_pending_ == 0) {
        // Only lazy batches: the writer thread waits for a synced one.
        handoff_ = true;
        return;
      }
      writing_ = true;
      TakeGroupLocked(&group);
    }
    ApplyGroup(group);
    absl::MutexLock l(&mu_);
    writing_ = false;
    // One group per call, so a caller (an RPC thread) is held for one fsync
    // at most; the rest is the writer thread's.
    if (!queue_.empty()) handoff_ = true;
  }

  absl::StatusOr<std::optional<std::string>> Get(const std::string& db,
                                                 const std::string& key) override {
    ATOMQ_ASSIGN_OR_RETURN(MDB_dbi dbi, Dbi(db));
    MDB_txn* txn = nullptr;
    int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn);
    if (rc != 0) return LmdbError(rc, "begin read txn in " + options_.dir);
    MDB_val k{key.size(), const_cast<char*>(key.data())};
    MDB_val v;
    rc = mdb_get(txn, dbi, &k, &v);
    std::optional<std::string> out;
    if (rc == 0) out.emplace(static_cast<const char*>(v.mv_data), v.mv_size);
    mdb_txn_abort(txn);
    if (rc == 0 || rc == MDB_NOTFOUND) return out;
    return LmdbError(rc, absl::StrCat("get from ", db));
  }

  absl::Status Scan(const std::string& db, const std::string& prefix,
                    const std::function<bool(std::string_view, std::string_view)>& fn) override {
    ATOMQ_ASSIGN_OR_RETURN(MDB_dbi dbi, Dbi(db));
    MDB_txn* txn = nullptr;
    int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn);
    if (rc != 0) return LmdbError(rc, "begin read txn in " + options_.dir);
    MDB_cursor* cur = nullptr;
    rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0) {
      mdb_txn_abort(txn);
      return LmdbError(rc, absl::StrCat("open cursor on ", db));
    }
    MDB_val k{prefix.size(), const_cast<char*>(prefix.data())};
    MDB_val v;
    // LMDB rejects an empty key for MDB_SET_RANGE; the empty prefix is "all".
    rc = mdb_cursor_get(cur, &k, &v, prefix.empty() ? MDB_FIRST : MDB_SET_RANGE);
    while (rc == 0) {
      std::string_view key(static_cast<const char*>(k.mv_data), k.mv_size);
      if (key.substr(0, prefix.size()) != prefix) break;
      if (!fn(key, std::string_view(static_cast<const char*>(v.mv_data), v.mv_size))) {
        break;
      }
      rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    if (rc == 0 || rc == MDB_NOTFOUND) return absl::OkStatus();
    return LmdbError(rc, absl::StrCat("scan ", db));
  }

  std::vector<std::string> Dbs() const override { return options_.dbs; }

  absl::StatusOr<std::unique_ptr<StoreReader>> Read(
      const std::vector<std::string>& except) override {
    std::vector<std::pair<std::string, MDB_dbi>> dbs;
    for (const auto& [name, dbi] : dbis_) {
      if (std::find(except.begin(), except.end(), name) == except.end())
        dbs.emplace_back(name, dbi);
    }
    MDB_txn* txn = nullptr;
    int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn);
    if (rc != 0) return LmdbError(rc, "begin read txn in " + options_.dir);
    return std::make_unique<LmdbReader>(txn, std::move(dbs));
  }

  StorageStats Stats() const override {
    StorageStats s;
    s.batches = batches_.load();
    s.commits = commits_.load();
    s.failures = failures_.load();
    s.commit_seconds = &commit_seconds_;
    return s;
  }

 private:
  absl::StatusOr<MDB_dbi> Dbi(std::string_view db) const {
    auto it = dbis_.find(db);
    if (it == dbis_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown sub-database \"", std::string(db), "\""));
    }
    return it->second;
  }

  // Checks what LMDB would reject anyway, so the message names the key.
  absl::Status Validate(const Batch& batch) const {
    for (const atomq::Write& w : batch.writes) {
      ATOMQ_RETURN_IF_ERROR(Dbi(w.db).status());
      if (w.clear) continue;
      if (w.key.empty() || w.key.size() > key_bytes_max_) {
        return absl::InvalidArgumentError(absl::StrCat("key of ", w.key.size(), " bytes in \"",
                                                       w.db, "\"; must be 1..", key_bytes_max_));
      }
    }
    return absl::OkStatus();
  }

  struct Applied {
    absl::Status status;
    int lmdb_rc = 0;            // the LMDB code behind `status`, if any
    bool merge_failed = false;  // the parent may be half-updated
  };

  // Applies one batch in a child of `parent`, so that a failure removes all
  // of this batch and nothing of the others.
  Applied ApplyBatch(MDB_txn* parent, const Batch& batch) {
    Applied out;
    out.status = Validate(batch);
    if (!out.status.ok()) return out;
    MDB_txn* child = nullptr;
    int rc = mdb_txn_begin(env_, parent, 0, &child);
    if (rc != 0) {
      out.lmdb_rc = rc;
      out.status = LmdbError(rc, "begin nested write txn in " + options_.dir);
      return out;
    }
    for (const atomq::Write& w : batch.writes) {
      MDB_dbi dbi = dbis_.find(w.db)->second;
      MDB_val k{w.key.size(), const_cast<char*>(w.key.data())};
      if (w.clear) {
        rc = mdb_drop(child, dbi, 0);  // empties it; the sub-database stays
      } else if (w.erase) {
        rc = mdb_del(child, dbi, &k, nullptr);
        if (rc == MDB_NOTFOUND) rc = 0;
      } else {
        MDB_val v{w.value.size(), const_cast<char*>(w.value.data())};
        rc = mdb_put(child, dbi, &k, &v, 0);
      }
      if (rc != 0) {
        mdb_txn_abort(child);
        out.lmdb_rc = rc;
        out.status = LmdbError(rc, absl::StrCat("write to \"", w.db, "\" in ", options_.dir));
        return out;
      }
    }
    rc = mdb_txn_commit(child);  // merges into the parent; no I/O
    if (rc != 0) {
      out.lmdb_rc = rc;
      out.merge_failed = true;
      out.status = LmdbError(rc, "merge nested txn in " + options_.dir);
    }
    return out;
  }

  // Applies `group` (in order) in as few LMDB transactions as possible,
  // normally one, and reports each batch once its transaction is durable.
  void ApplyGroup(std::vector<Pending>& group) {
    std::vector<absl::Status> results(group.size());
    size_t next = 0;
    while (next < group.size()) {
      MDB_txn* txn = nullptr;
      int rc = mdb_txn_begin(env_, nullptr, 0, &txn);
      if (rc != 0) {
        absl::Status err = LmdbError(rc, "begin write txn in " + options_.dir);
        for (; next < group.size(); ++next) results[next] = err;
        break;
      }
      const size_t first = next;
      size_t applied = 0;
      std::optional<absl::Status> txn_error;  // fails every batch of this txn
      for (; next < group.size(); ++next) {
        Applied a = ApplyBatch(txn, group[next].batch);
        // Too many dirty pages for one txn: commit what we have and retry
        // this batch in a fresh one, rather than fail it.
        if (a.lmdb_rc == MDB_TXN_FULL && applied > 0) break;
        results[next] = a.status;
        if (a.merge_failed) {
          txn_error = a.status;
          ++next;
          break;
        }
        if (a.status.ok()) ++applied;
      }
      if (txn_error.has_value() || applied == 0) {
        mdb_txn_abort(txn);  // nothing (sound) to make durable: skip the fsync
      } else {
        const auto started = std::chrono::steady_clock::now();
        rc = mdb_txn_commit(txn);  // writes and fsyncs: the group commit
        commit_seconds_.Observe(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
        if (rc == 0) {
          commits_.fetch_add(1);
        } else {
          txn_error = LmdbError(rc, "commit write txn in " + options_.dir);
        }
      }
      if (txn_error.has_value()) {
        LogWriteFailure(*txn_error);
        for (size_t i = first; i < next; ++i) {
          if (results[i].ok()) results[i] = *txn_error;
        }
      }
    }
    auto run = [&] {
      for (size_t i = 0; i < group.size(); ++i) {
        if (results[i].ok()) {
          batches_.fetch_add(1);
        } else {
          failures_.fetch_add(1);
        }
        group[i].done(std::move(results[i]));
      }
    };
    std::shared_ptr<const GroupHook> hook;
    {
      absl::MutexLock l(&mu_);
      hook = group_hook_;
    }
    if (hook != nullptr) {
      (*hook)(run);
    } else {
      run();
    }
  }

  // One line a second at most: a full disk fails every write until it heals.
  void LogWriteFailure(const absl::Status& error) {
    const int64_t now = absl::ToUnixMillis(absl::Now());
    ++write_failures_unlogged_;
    if (now - write_failure_logged_ms_ < 1000) return;
    LogLine(absl::StrCat("storage: a write to ", options_.dir, " failed and was not applied (",
                         write_failures_unlogged_,
                         " since the last such line): ", error.ToString()));
    write_failure_logged_ms_ = now;
    write_failures_unlogged_ = 0;
  }

  void Enqueue(Batch batch, DoneFn done, bool handoff) {
    {
      absl::MutexLock l(&mu_);
      if (!stop_) {
        if (batch.sync) ++sync_pending_;
        queue_.push_back(Pending{std::move(batch), std::move(done)});
        if (handoff) handoff_ = true;
        return;
      }
    }
    done(absl::FailedPreconditionError("storage is closing"));
  }

  void TakeGroupLocked(std::vector<Pending>* group) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    size_t n =
        std::min<size_t>(queue_.size(), std::max<uint32_t>(1, options_.batches_per_commit_max));
    group->reserve(n);
    for (size_t i = 0; i < n; ++i) {
      if (queue_.front().batch.sync) --sync_pending_;
      group->push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
  }

  void WriterLoop() {
    for (;;) {
      std::vector<Pending> group;
      {
        absl::MutexLock l(&mu_);
        // Deferred batches wait for their submitter's Drive() unless one
        // handed them over; on stop, everything left is written.
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return !writing_ && (stop_ || (handoff_ && !queue_.empty()));
        };
        mu_.Await(absl::Condition(&ready));
        if (queue_.empty()) return;  // stop_ and drained
        writing_ = true;             // from here, Drive() leaves the queue to this thread
        // Only lazy batches: give a synced one a moment to come and share
        // the fsync.
        auto urgent = [this]()
                          ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || sync_pending_ > 0; };
        if (!urgent()) {
          mu_.AwaitWithTimeout(absl::Condition(&urgent),
                               absl::Milliseconds(options_.lazy_delay_ms));
        }
        TakeGroupLocked(&group);
      }
      ApplyGroup(group);
      absl::MutexLock l(&mu_);
      writing_ = false;
      if (queue_.empty()) handoff_ = false;
    }
  }

  const LmdbOptions options_;
  Histogram commit_seconds_;
  const int lock_fd_;
  MDB_env* const env_;
  const std::map<std::string, MDB_dbi, std::less<>> dbis_;
  const size_t key_bytes_max_;

  absl::Mutex mu_;
  std::deque<Pending> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  size_t sync_pending_ ABSL_GUARDED_BY(mu_) = 0;  // queued batches with sync
  std::shared_ptr<const GroupHook> group_hook_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;  // a group is being applied
  // The writer thread owns the queue (else deferred batches wait for Drive).
  bool handoff_ ABSL_GUARDED_BY(mu_) = false;

  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> commits_{0};
  std::atomic<uint64_t> failures_{0};
  // LogWriteFailure's state: only the thread writing a group touches it.
  int64_t write_failure_logged_ms_ = 0;
  uint64_t write_failures_unlogged_ = 0;

  std::thread writer_;  // last: starts after every other member exists
};

absl::Status Unusable(const std::string& dir, const std::string& what, int rc) {
  return absl::FailedPreconditionError(
      absl::StrCat("data dir ", dir, " is unusable: ", what, ": ", mdb_strerror(rc)));
}

std::string DataFilePath(const std::string& dir) { return dir + "/data.mdb"; }

// A new directory is the owner's alone: messages and payloads are in it.
absl::Status MakeDataDir(const std::string& dir) {
  std::error_code ec;
  const bool existed = std::filesystem::exists(dir, ec);
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("data dir ", dir, " cannot be created: ", ec.message()));
  }
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(absl::StrCat("data dir ", dir, " is not a directory"));
  }
  if (!existed) {
    std::filesystem::permissions(dir, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::replace, ec);
    if (ec) {
      return absl::FailedPreconditionError(
          absl::StrCat("data dir ", dir, ": cannot set mode 0700: ", ec.message()));
    }
  }
  return absl::OkStatus();
}

// LMDB takes an empty or missing data file for a new environment: for a
// node that had data, that is silent loss, so only `create` allows it.
absl::Status CheckDataFileBeforeOpen(const std::string& dir, bool create) {
  std::error_code ec;
  const std::string file = DataFilePath(dir);
  if (!std::filesystem::exists(file, ec)) {
    if (create) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("data dir ", dir, " has no data file (", file,
                     "): refusing to start an empty node in place of one that had data"));
  }
  const uintmax_t size = std::filesystem::file_size(file, ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat("data file ", file, ": ", ec.message()));
  }
  if (size == 0) {
    return absl::DataLossError(
        absl::StrCat("data file ", file,
                     " is empty (0 bytes): refusing to start it as a new node; "
                     "restore the directory from a backup"));
  }
  return absl::OkStatus();
}

}  // namespace

bool LmdbDataExists(const std::string& dir) {
  std::error_code ec;
  return std::filesystem::exists(DataFilePath(dir), ec);
}

absl::StatusOr<std::unique_ptr<Storage>> OpenLmdbStorage(const LmdbOptions& options) {
  const std::string& dir = options.dir;
  if (dir.empty()) return absl::InvalidArgumentError("data dir is empty");
  if (options.map_size_mb == 0) return absl::InvalidArgumentError("map_size_mb is 0");

  ATOMQ_RETURN_IF_ERROR(MakeDataDir(dir));
  ATOMQ_RETURN_IF_ERROR(CheckDataFileBeforeOpen(dir, options.create));

  // LMDB's own lock only coordinates readers and writers; two processes
  // each running a writer thread on one env would break group commit's
  // assumptions, so one process owns the dir.
  std::string lock_path = dir + "/atomq.lock";
  int lock_fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) return Unusable(dir, "open " + lock_path, errno);
  if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    close(lock_fd);
    if (err == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("data dir ", dir, " is in use by another process"));
    }
    return Unusable(dir, "flock " + lock_path, err);
  }

  MDB_env* env = nullptr;
  auto fail = [&](const std::string& what, int rc) {
    if (env != nullptr) mdb_env_close(env);
    close(lock_fd);
    return Unusable(dir, what, rc);
  };
  int rc = mdb_env_create(&env);
  if (rc != 0) {
    env = nullptr;
    return fail("mdb_env_create", rc);
  }
  rc = mdb_env_set_maxdbs(env, static_cast<MDB_dbi>(options.dbs.size() + 1));
  if (rc != 0) return fail("mdb_env_set_maxdbs", rc);
  rc = mdb_env_set_mapsize(env, static_cast<size_t>(options.map_size_mb) << 20);
  if (rc != 0) return fail("mdb_env_set_mapsize", rc);
  // MDB_NOTLS: read txns are not tied to a thread. No NOSYNC/NOMETASYNC/
  // MAPASYNC: a commit returns only after fsync, which is what "durable" means.
  rc = mdb_env_open(env, dir.c_str(), MDB_NOTLS, 0600);
  if (rc != 0) return fail("mdb_env_open", rc);
  if (absl::Status st = CheckLmdbFileSize(env, DataFilePath(dir)); !st.ok()) {
    mdb_env_close(env);
    close(lock_fd);
    return st;
  }
  int dead = 0;
  mdb_reader_check(env, &dead);  // slots of crashed earlier processes

  std::map<std::string, MDB_dbi, std::less<>> dbis;
  MDB_txn* txn = nullptr;
  rc = mdb_txn_begin(env, nullptr, 0, &txn);
  if (rc != 0) return fail("begin txn", rc);
  for (const std::string& name : options.dbs) {
    MDB_dbi dbi;
    rc = mdb_dbi_open(txn, name.c_str(), MDB_CREATE, &dbi);
    if (rc != 0) {
      mdb_txn_abort(txn);
      return fail("open sub-database " + name, rc);
    }
    dbis.emplace(name, dbi);
  }
  rc = mdb_txn_commit(txn);
  if (rc != 0) return fail("commit sub-database creation", rc);

  return std::unique_ptr<Storage>(new LmdbStorage(options, lock_fd, env, std::move(dbis)));
}

}  // namespace atomq
