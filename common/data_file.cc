#include "common/data_file.h"

#include <fcntl.h>
#include <lmdb.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace atomq {
namespace {

absl::Status LmdbError(const std::string& file, const std::string& what, int rc) {
  return absl::FailedPreconditionError(absl::StrCat(file, ": ", what, ": ", mdb_strerror(rc)));
}

absl::Status Errno(const std::string& what, int err) {
  return absl::FailedPreconditionError(absl::StrCat(what, ": ", strerror(err)));
}

// A rename lasts a crash once its directory is synced.
void SyncParent(const std::string& path) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  const int dfd = open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
}

}  // namespace

absl::Status CheckLmdbFileSize(MDB_env* env, const std::string& file) {
  MDB_envinfo info;
  MDB_stat stat;
  int rc = mdb_env_info(env, &info);
  if (rc == 0) rc = mdb_env_stat(env, &stat);
  if (rc != 0) return LmdbError(file, "mdb_env_info", rc);
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(file, ec);
  if (ec)
    return absl::FailedPreconditionError(absl::StrCat("data file ", file, ": ", ec.message()));
  const uintmax_t needed = (static_cast<uintmax_t>(info.me_last_pgno) + 1) * stat.ms_psize;
  if (size < needed) {
    return absl::DataLossError(absl::StrCat("data file ", file, " is truncated: ", size,
                                            " bytes, but LMDB records ", needed,
                                            "; restore the directory from a backup"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DataFile>> DataFile::Open(const std::string& path) {
  std::error_code ec;
  const bool dir = std::filesystem::is_directory(path, ec);
  const std::string file = dir ? path + "/data.mdb" : path;
  if (!std::filesystem::is_regular_file(file, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is neither a data directory (with data.mdb) nor a backup file"));
  }
  if (std::filesystem::file_size(file, ec) == 0) {
    return absl::DataLossError(absl::StrCat("data file ", file, " is empty (0 bytes)"));
  }
  MDB_env* env = nullptr;
  int rc = mdb_env_create(&env);
  if (rc != 0) return LmdbError(file, "mdb_env_create", rc);
  auto fail = [&](absl::Status st) {
    mdb_env_close(env);
    return st;
  };
  rc = mdb_env_set_maxdbs(env, 64);
  if (rc != 0) return fail(LmdbError(file, "mdb_env_set_maxdbs", rc));
  // A directory may be in use by its server: share LMDB's lock with it. A
  // backup file has no writer, and no lock file beside it.
  const unsigned flags = MDB_RDONLY | MDB_NOTLS | (dir ? 0 : MDB_NOSUBDIR | MDB_NOLOCK);
  rc = mdb_env_open(env, path.c_str(), flags, 0600);
  if (rc != 0) return fail(LmdbError(file, "open read-only", rc));
  if (absl::Status st = CheckLmdbFileSize(env, file); !st.ok()) return fail(st);
  MDB_txn* txn = nullptr;
  rc = mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn);
  if (rc != 0) return fail(LmdbError(file, "begin read", rc));
  return std::unique_ptr<DataFile>(new DataFile(file, env, txn));
}

DataFile::~DataFile() {
  mdb_txn_abort(txn_);
  mdb_env_close(env_);
}

absl::StatusOr<std::vector<std::string>> DataFile::Dbs() {
  std::vector<std::string> names;
  // The main database's keys name the sub-databases.
  absl::Status st = Scan("", [&](std::string_view key, std::string_view) {
    names.emplace_back(key);
    return true;
  });
  if (!st.ok()) return st;
  return names;
}

absl::Status DataFile::Scan(
    const std::string& db,
    const std::function<bool(std::string_view key, std::string_view value)>& fn) {
  MDB_dbi dbi;
  int rc = mdb_dbi_open(txn_, db.empty() ? nullptr : db.c_str(), 0, &dbi);
  if (rc != 0) return LmdbError(file_, "open sub-database \"" + db + "\"", rc);
  MDB_cursor* cursor = nullptr;
  rc = mdb_cursor_open(txn_, dbi, &cursor);
  if (rc != 0) return LmdbError(file_, "cursor on \"" + db + "\"", rc);
  MDB_val k, v;
  for (rc = mdb_cursor_get(cursor, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) {
    if (!fn(std::string_view(static_cast<const char*>(k.mv_data), k.mv_size),
            std::string_view(static_cast<const char*>(v.mv_data), v.mv_size))) {
      rc = MDB_NOTFOUND;
      break;
    }
  }
  mdb_cursor_close(cursor);
  if (rc != MDB_NOTFOUND) return LmdbError(file_, "read \"" + db + "\"", rc);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> DataFile::Get(const std::string& db,
                                                         const std::string& key) {
  MDB_dbi dbi;
  int rc = mdb_dbi_open(txn_, db.c_str(), 0, &dbi);
  if (rc == MDB_NOTFOUND) return std::optional<std::string>();
  if (rc != 0) return LmdbError(file_, "open sub-database \"" + db + "\"", rc);
  MDB_val k{key.size(), const_cast<char*>(key.data())}, v;
  rc = mdb_get(txn_, dbi, &k, &v);
  if (rc == MDB_NOTFOUND) return std::optional<std::string>();
  if (rc != 0) return LmdbError(file_, "read \"" + db + "\"", rc);
  return std::optional<std::string>(std::string(static_cast<const char*>(v.mv_data), v.mv_size));
}

absl::Status DataFile::CopyTo(const std::string& to) {
  return WriteFileAtomically(to, [this](int fd) {
    const int rc = mdb_env_copyfd2(env_, fd, MDB_CP_COMPACT);
    return rc == 0 ? absl::OkStatus() : LmdbError(file_, "compacted copy", rc);
  });
}

absl::Status WriteFileAtomically(const std::string& path,
                                 const std::function<absl::Status(int fd)>& write) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) {
    return absl::AlreadyExistsError(absl::StrCat(path, " exists; nothing was written"));
  }
  const std::string tmp = path + ".partial";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("create " + tmp, errno);
  absl::Status st = write(fd);
  if (st.ok() && fsync(fd) != 0) st = Errno("fsync " + tmp, errno);
  close(fd);
  if (st.ok() && rename(tmp.c_str(), path.c_str()) != 0) st = Errno("rename to " + path, errno);
  if (!st.ok()) {
    unlink(tmp.c_str());
    return st;
  }
  SyncParent(path);
  return absl::OkStatus();
}

absl::Status MoveIntoPlace(const std::string& from, const std::string& to) {
  std::error_code ec;
  if (std::filesystem::exists(to, ec)) {
    return absl::AlreadyExistsError(absl::StrCat(to, " exists; nothing was moved"));
  }
  if (rename(from.c_str(), to.c_str()) != 0) return Errno("rename to " + to, errno);
  SyncParent(to);
  return absl::OkStatus();
}

}  // namespace atomq
