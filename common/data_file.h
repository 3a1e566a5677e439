// A node's LMDB data file read without its server (atomqctl verify, backup,
// restore): opened read-only, also beside a running server (LMDB's own lock
// lets readers in; the server's atomq.lock is left alone), with one read
// transaction for the object's life, so every read sees one committed
// version.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

typedef struct MDB_env MDB_env;
typedef struct MDB_txn MDB_txn;

namespace atomq {

class DataFile {
 public:
  // `path`: a data directory (its data.mdb) or a backup (one data.mdb
  // image). FAILED_PRECONDITION when it is neither; DATA_LOSS when the file
  // is empty or shorter than LMDB's own record of its size.
  static absl::StatusOr<std::unique_ptr<DataFile>> Open(const std::string& path);
  ~DataFile();
  DataFile(const DataFile&) = delete;
  DataFile& operator=(const DataFile&) = delete;

  // The named sub-databases, in name order.
  absl::StatusOr<std::vector<std::string>> Dbs();
  // Every record of `db` in key order until `fn` returns false.
  absl::Status Scan(const std::string& db,
                    const std::function<bool(std::string_view key, std::string_view value)>& fn);
  absl::StatusOr<std::optional<std::string>> Get(const std::string& db, const std::string& key);
  // A compacted copy of the current version (LMDB's own, free pages left
  // out) written to `to` whole or not at all: to a temporary file beside
  // it, fsync'd, then renamed. `to` must not exist.
  absl::Status CopyTo(const std::string& to);
  const std::string& file() const { return file_; }

 private:
  DataFile(std::string file, MDB_env* env, MDB_txn* txn)
      : file_(std::move(file)), env_(env), txn_(txn) {}
  const std::string file_;
  MDB_env* const env_;
  MDB_txn* const txn_;
};

// A data file shorter than the pages LMDB's meta page records would crash
// the process (SIGBUS) at the first read of a missing page. `env` is open
// on `file`; mdb_env_open reads the meta pages with read(2), not the map.
absl::Status CheckLmdbFileSize(MDB_env* env, const std::string& file);

// Makes `path` hold what `write` writes to its fd, whole or not at all: a
// temporary file beside it, fsync'd, renamed, the directory fsync'd.
// ALREADY_EXISTS when `path` exists (nothing is overwritten).
absl::Status WriteFileAtomically(const std::string& path,
                                 const std::function<absl::Status(int fd)>& write);

// Renames `from` (a synced file) to `to` on the same file system and syncs
// `to`'s directory. ALREADY_EXISTS when `to` exists.
absl::Status MoveIntoPlace(const std::string& from, const std::string& to);

}  // namespace atomq
