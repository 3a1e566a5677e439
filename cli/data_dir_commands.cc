// verify, backup and restore: a node's data directory (or a backup of one)
// read without its server (common/data_file.h).
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "atomq/v1/participant.pb.h"
#include "atomq/v1/records.pb.h"
#include "atomq/v1/replica.pb.h"
#include "cli/commands.h"
#include "cli/data_dir.h"
#include "common/codec.h"
#include "common/data_file.h"
#include "common/storage.h"
#include "replication/group_member.h"
#include "replication/new_group.h"

namespace atomq::ctl {
namespace {

using Check = std::function<absl::Status(std::string_view key, std::string_view value)>;

template <typename Record>
Check RecordOf() {
  return [](std::string_view, std::string_view value) {
    Record r;
    return DecodeRecord(value, &r);
  };
}

absl::Status Shape(bool ok, const char* want) {
  return ok ? absl::OkStatus() : absl::DataLossError(absl::StrCat("not ", want));
}

std::string Printable(std::string_view key);
const std::map<std::string, Check>& Schema();

// A log entry: a command's data is one batch of writes
// (replication/replicated_storage.cc), each checked as a record of the
// sub-database it goes to. The group's registry and its leadership epoch
// (raft_disks, raft_applied) are replicated; a replica's own log and state
// (raft_log, raft_meta) never are.
absl::Status CheckLogEntry(std::string_view, std::string_view value) {
  v1::RaftEntryRecord e;
  if (absl::Status st = DecodeRecord(value, &e); !st.ok()) return st;
  if (e.type() != 1) return absl::OkStatus();  // a barrier or a configuration
  v1::ReplicatedBatch batch;
  if (!batch.ParseFromString(e.data())) {
    return absl::DataLossError("a command entry that is not a batch of writes");
  }
  for (const v1::ReplicatedWrite& w : batch.writes()) {
    auto check = Schema().find(w.db());
    if (check == Schema().end() || w.db() == "raft_log" || w.db() == "raft_meta") {
      return absl::DataLossError(
          absl::StrCat("a command entry writes to sub-database \"", Printable(w.db()), "\""));
    }
    if (w.erase()) continue;
    if (absl::Status st = check->second(w.key(), w.value()); !st.ok()) {
      return absl::DataLossError(absl::StrCat("its write to ", w.db(), " key \"",
                                              Printable(w.key()), "\": ", st.message()));
    }
  }
  return absl::OkStatus();
}

// What each sub-database holds (participant/core/schema.h,
// coordinator/core/coordinator_core.h, replication/: cli/data_dir_test.cc
// checks these names against theirs).
const std::map<std::string, Check>& Schema() {
  static const auto* schema = new std::map<std::string, Check>{
      {"queues", RecordOf<v1::QueueRecord>()},
      {"messages", RecordOf<v1::MessageRecord>()},
      {"prepared", RecordOf<v1::PreparedRecord>()},
      {"outcomes", RecordOf<v1::OutcomeRecord>()},
      {"dedup", RecordOf<v1::DedupRecord>()},
      {"heuristic", RecordOf<v1::HeuristicOutcome>()},
      {"meta", RecordOf<v1::MetaRecord>()},
      {"txn", RecordOf<v1::CoordinatorTxnRecord>()},
      // Time indexes: the key is all.
      {"forgettable", [](auto, auto v) { return Shape(v.empty(), "an empty index value"); }},
      {"ended", [](auto, auto v) { return Shape(v.empty(), "an empty index value"); }},
      {"raft_log", CheckLogEntry},
      {"raft_meta",
       [](std::string_view key, std::string_view value) {
         if (key != "state") return Shape(!value.empty(), "a disk id");  // disk, heard/<member>
         v1::RaftStateRecord r;
         return DecodeRecord(value, &r);
       }},
      {"raft_applied", [](auto, auto v) { return Shape(v.size() == 8, "an 8-byte index"); }},
      {"raft_disks", [](auto, auto v) { return Shape(!v.empty(), "a disk id"); }},
  };
  return *schema;
}

std::string Printable(std::string_view key) {
  std::string out;
  for (unsigned char c : key) {
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&out, "\\x%02x", c);
    }
  }
  return out;
}

// A line on stderr, rewritten in place, while a long scan runs (a terminal only).
void Progress(const std::string& db, uint64_t n) {
  static const bool tty = isatty(STDERR_FILENO) != 0;
  if (tty && n % 100000 == 0)
    fprintf(stderr, "\rverifying %s: %llu records", db.c_str(), static_cast<unsigned long long>(n));
}

// While a backup is written: a line on stderr, rewritten in place (a
// terminal only), of the bytes written so far against the data file's size
// (the compacted copy is at most that).
class CopyProgress {
 public:
  CopyProgress(const std::string& data_dir, const std::string& to) {
    if (isatty(STDERR_FILENO) == 0) return;
    std::error_code ec;
    const uint64_t total = std::filesystem::file_size(data_dir + "/data.mdb", ec);
    thread_ = std::thread([this, partial = to + ".partial", total] {
      for (;;) {
        std::error_code e;
        const uint64_t written = std::filesystem::file_size(partial, e);
        fprintf(stderr, "\rbacking up: %.1f MiB written (the data file is %.1f MiB)",
                (e ? 0 : written) / 1048576.0, total / 1048576.0);
        absl::MutexLock lock(&mu_);
        auto done = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return done_; };
        if (mu_.AwaitWithTimeout(absl::Condition(&done), absl::Milliseconds(200))) break;
      }
      fprintf(stderr, "\r\033[K");
    });
  }
  ~CopyProgress() {
    if (!thread_.joinable()) return;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
    }
    thread_.join();
  }

 private:
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace

absl::StatusOr<VerifyReport> Verify(DataFile& file) {
  VerifyReport report;
  absl::StatusOr<std::vector<std::string>> dbs = file.Dbs();
  if (!dbs.ok()) return dbs.status();
  for (const std::string& name : *dbs) {
    DbReport& d = report.dbs.emplace_back();
    d.name = name;
    auto schema = Schema().find(name);
    if (schema == Schema().end()) {
      report.problems.push_back(
          absl::StrCat("sub-database \"", Printable(name), "\" is not one atomq writes"));
      continue;
    }
    absl::Status st = file.Scan(name, [&](std::string_view key, std::string_view value) {
      Progress(name, ++d.records);
      absl::Status bad = schema->second(key, value);
      if (!bad.ok() && ++d.damaged <= 5) {
        report.problems.push_back(
            absl::StrCat(name, " key \"", Printable(key), "\": ", bad.message()));
      }
      return true;
    });
    if (!st.ok()) report.problems.push_back(std::string(st.message()));
  }
  if (isatty(STDERR_FILENO)) fprintf(stderr, "\r\033[K");
  absl::StatusOr<std::optional<std::string>> meta = file.Get("meta", "meta");
  if (meta.ok() && meta->has_value() && DecodeRecord(**meta, &report.meta).ok()) {
    report.has_meta = true;
  } else {
    report.problems.push_back("no readable identity (meta): not an atomq data file");
  }
  auto has = [&](const char* db) {
    for (const DbReport& d : report.dbs) {
      if (d.name == db) return true;
    }
    return false;
  };
  report.kind = has("txn") ? "coordinator" : has("queues") ? "participant" : "unknown node";
  if (has("raft_log")) report.kind += " replica (a group member)";
  return report;
}

namespace {

void PrintReport(const DataFile& file, const VerifyReport& r) {
  printf("%s: %s %s (cluster \"%s\", boot %llu)\n", file.file().c_str(), r.kind.c_str(),
         r.meta.node_id().c_str(), r.meta.cluster_id().c_str(),
         static_cast<unsigned long long>(r.meta.boot_count()));
  printf("%-16s %12s %8s\n", "SUB-DATABASE", "RECORDS", "DAMAGED");
  uint64_t records = 0;
  for (const DbReport& d : r.dbs) {
    printf("%-16s %12llu %8llu\n", d.name.c_str(), static_cast<unsigned long long>(d.records),
           static_cast<unsigned long long>(d.damaged));
    records += d.records;
  }
  for (const std::string& p : r.problems) printf("problem: %s\n", p.c_str());
  printf("%s: %llu records, %s\n", r.ok() ? "verified" : "DAMAGED",
         static_cast<unsigned long long>(records),
         r.ok() ? "every checksum and record shape is right" : "see the problems above");
}

int RunVerify(const std::string& path) {
  absl::StatusOr<std::unique_ptr<DataFile>> file = DataFile::Open(path);
  if (!file.ok()) return Error(std::string(file.status().message()));
  absl::StatusOr<VerifyReport> r = Verify(**file);
  if (!r.ok()) return Error(std::string(r.status().message()));
  PrintReport(**file, *r);
  return r->ok() ? 0 : 2;
}

int RunBackup(const std::string& data_dir, const std::string& to) {
  absl::StatusOr<std::unique_ptr<DataFile>> file = DataFile::Open(data_dir);
  if (!file.ok()) return Error(std::string(file.status().message()));
  absl::Status copied;
  {
    CopyProgress progress(data_dir, to);
    copied = (*file)->CopyTo(to);
  }
  if (!copied.ok()) return Error(std::string(copied.message()));
  absl::StatusOr<std::unique_ptr<DataFile>> copy = DataFile::Open(to);
  absl::StatusOr<VerifyReport> r =
      copy.ok() ? Verify(**copy) : absl::StatusOr<VerifyReport>(copy.status());
  if (!r.ok() || !r->ok()) {
    std::filesystem::remove(to);
    if (r.ok()) PrintReport(**copy, *r);
    return Error(absl::StrCat("the copy did not verify; removed ", to));
  }
  PrintReport(**copy, *r);
  printf("backup of %s %s written to %s (%llu bytes)\n", r->kind.c_str(), r->meta.node_id().c_str(),
         to.c_str(), static_cast<unsigned long long>(std::filesystem::file_size(to)));
  return 0;
}

// Makes the restored data file `file` the seed of a new group whose only
// member is `self` ("ID=CLIENT/PEER"), in one synced LMDB transaction.
absl::Status BeginNewGroup(const std::string& dir, const VerifyReport& r, const std::string& self) {
  namespace rep = atomq::replication;
  absl::StatusOr<std::map<uint64_t, rep::MemberAddresses>> parsed = rep::ParseGroup(self);
  if (!parsed.ok()) return parsed.status();
  if (parsed->size() != 1) {
    return absl::InvalidArgumentError("--new_group names this one member: ID=CLIENT/PEER");
  }
  LmdbOptions o;
  o.dir = dir;
  o.create = false;
  for (const DbReport& d : r.dbs) o.dbs.push_back(d.name);
  absl::StatusOr<std::unique_ptr<Storage>> store = OpenLmdbStorage(o);
  if (!store.ok()) return store.status();
  const auto& [id, addresses] = *parsed->begin();
  absl::StatusOr<Batch> writes =
      rep::NewGroupWrites(store->get(), rep::Member{id, rep::ConfigAddress(addresses)});
  if (!writes.ok()) return writes.status();
  return (*store)->Write(*std::move(writes));
}

int RunRestore(const std::string& from, const std::string& data_dir, const std::string& id,
               const std::string& cluster_id, const std::string& new_group) {
  absl::StatusOr<std::unique_ptr<DataFile>> file = DataFile::Open(from);
  if (!file.ok()) return Error(std::string(file.status().message()));
  absl::StatusOr<VerifyReport> r = Verify(**file);
  if (!r.ok()) return Error(std::string(r.status().message()));
  if (!r->ok()) {
    PrintReport(**file, *r);
    return Error(absl::StrCat(from, " is damaged; nothing restored"));
  }
  if (absl::Status st = CheckRestorable(*r, id, cluster_id, !new_group.empty()); !st.ok()) {
    return Error(std::string(st.message()));
  }
  std::error_code ec;
  if (std::filesystem::exists(data_dir + "/data.mdb", ec)) {
    return Error(absl::StrCat(data_dir,
                              " holds a data file already; a node's data is never "
                              "overwritten (move it away first)"));
  }
  std::filesystem::create_directories(data_dir, ec);
  std::filesystem::permissions(data_dir, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::replace, ec);
  if (ec) return Error(absl::StrCat("data dir ", data_dir, ": ", ec.message()));
  if (new_group.empty()) {
    // LMDB's own copy of the verified backup: whole or nothing, fsync'd.
    absl::Status st = (*file)->CopyTo(data_dir + "/data.mdb");
    if (!st.ok()) return Error(std::string(st.message()));
  } else {
    // Made a new group's in a directory of its own, then moved in whole: a
    // half-made one would start as the old group's member with an old log.
    const std::string staging = data_dir + "/new-group.tmp";
    std::filesystem::remove_all(staging, ec);
    std::filesystem::create_directory(staging, ec);
    absl::Status st =
        ec ? absl::FailedPreconditionError(ec.message()) : (*file)->CopyTo(staging + "/data.mdb");
    if (st.ok()) st = BeginNewGroup(staging, *r, new_group);
    if (st.ok()) st = MoveIntoPlace(staging + "/data.mdb", data_dir + "/data.mdb");
    std::filesystem::remove_all(staging, ec);
    if (!st.ok()) return Error(absl::StrCat("nothing restored: ", st.message()));
  }
  printf("restored %s %s (boot %llu) into %s%s; start it with --data_dir=%s\n", r->kind.c_str(),
         id.c_str(), static_cast<unsigned long long>(r->meta.boot_count()), data_dir.c_str(),
         new_group.empty() ? ""
                           : absl::StrCat(" as the only member (", new_group,
                                          ") of a new group; add the others under new ids with "
                                          "atomqctl cluster add and promote")
                                 .c_str(),
         data_dir.c_str());
  return 0;
}

}  // namespace

absl::Status CheckRestorable(const VerifyReport& r, const std::string& id,
                             const std::string& cluster_id, bool new_group) {
  if (r.meta.node_id() != id) {
    return absl::FailedPreconditionError(absl::StrCat("the backup is of node \"", r.meta.node_id(),
                                                      "\", not \"", id, "\"; nothing restored"));
  }
  if (!cluster_id.empty() && r.meta.cluster_id() != cluster_id) {
    return absl::FailedPreconditionError(absl::StrCat("the backup is of cluster \"",
                                                      r.meta.cluster_id(), "\", not \"", cluster_id,
                                                      "\"; nothing restored"));
  }
  bool member = false;
  for (const DbReport& d : r.dbs) member |= d.name == "raft_log";
  if (member && !new_group) {
    return absl::FailedPreconditionError(
        "the backup is of a group member: a member restored to an older log would forget "
        "what it acknowledged; replace a lost member instead (atomqctl cluster replace), or, "
        "when every member of the group is lost, begin a new group from it (--new_group)");
  }
  if (!member && new_group) {
    return absl::FailedPreconditionError(
        "--new_group takes a group member's backup; this one is of a node alone");
  }
  return absl::OkStatus();
}

void AddDataDirCommands(CLI::App& app, int* rc) {
  auto path = std::make_shared<std::string>();
  CLI::App* verify = app.add_subcommand(
      "verify", "check every record's checksum and shape in a data dir or a backup (offline)");
  verify->add_option("--data_dir", *path, "a data directory, or a backup file")->required();
  verify->callback([path, rc] { *rc = RunVerify(*path); });

  auto to = std::make_shared<std::string>();
  auto dir = std::make_shared<std::string>();
  CLI::App* backup =
      app.add_subcommand("backup",
                         "a consistent, compacted copy of a data dir into one file, also while its "
                         "server runs; the copy is verified");
  backup->add_option("--data_dir", *dir, "the node's data directory")->required();
  backup->add_option("--to", *to, "the backup file (must not exist)")->required();
  backup->callback([dir, to, rc] { *rc = RunBackup(*dir, *to); });

  auto from = std::make_shared<std::string>();
  auto id = std::make_shared<std::string>();
  auto cluster_id = std::make_shared<std::string>();
  auto into = std::make_shared<std::string>();
  CLI::App* restore = app.add_subcommand(
      "restore", "put a verified backup in place as a node's data dir (never over one)");
  restore->add_option("--from", *from, "the backup file")->required();
  restore->add_option("--data_dir", *into, "the data directory to create")->required();
  restore->add_option("--id", *id, "the node the backup must be of")->required();
  restore->add_option("--cluster_id", *cluster_id, "the cluster it must be of, if given");
  auto new_group = std::make_shared<std::string>();
  restore->add_option("--new_group", *new_group,
                      "ID=CLIENT/PEER: a group member's backup, after the group lost every "
                      "member, as the only member of a new group going on from its version");
  restore->callback([from, into, id, cluster_id, new_group, rc] {
    *rc = RunRestore(*from, *into, *id, *cluster_id, *new_group);
  });
}

}  // namespace atomq::ctl
