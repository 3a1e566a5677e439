#include "common/identity.h"

#include <filesystem>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "common/status.h"

namespace atomq {
namespace {

absl::Status CheckIdentity(const v1::MetaRecord& meta, const IdentityOptions& o) {
  if (meta.node_id() != o.node_id) {
    return absl::FailedPreconditionError(absl::StrCat("data dir ", o.data_dir,
                                                      " belongs to node \"", meta.node_id(),
                                                      "\", not \"", o.node_id, "\""));
  }
  if (!meta.cluster_id().empty() && meta.cluster_id() != o.cluster_id) {
    return absl::FailedPreconditionError(absl::StrCat("data dir ", o.data_dir,
                                                      " belongs to cluster \"", meta.cluster_id(),
                                                      "\", not \"", o.cluster_id, "\""));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::MetaRecord> StartFromIdentity(Storage* storage, const std::string& meta_db,
                                                 const IdentityOptions& o) {
  v1::MetaRecord meta;
  ATOMQ_ASSIGN_OR_RETURN(std::optional<std::string> old, storage->Get(meta_db, "meta"));
  if (old.has_value()) {
    absl::Status st = DecodeRecord(*old, &meta);
    if (!st.ok()) {
      return absl::DataLossError(
          absl::StrCat("data dir ", o.data_dir, ": identity record: ", st.message()));
    }
    ATOMQ_RETURN_IF_ERROR(CheckIdentity(meta, o));
  } else if (!o.fresh) {
    return absl::FailedPreconditionError(
        absl::StrCat("data dir ", o.data_dir,
                     " holds a data file but no identity record: not a node's "
                     "directory, or damaged; restore it from a backup or move it away"));
  } else {
    meta.set_node_id(o.node_id);
    meta.set_created_unix_ms(o.now_unix_ms);
  }
  if (meta.cluster_id().empty()) meta.set_cluster_id(o.cluster_id);
  meta.set_boot_count(meta.boot_count() + 1);
  Batch b;
  b.writes.push_back({meta_db, "meta", EncodeRecord(meta), false});
  absl::Status st = storage->Write(std::move(b));
  if (!st.ok()) {
    return absl::Status(st.code(),
                        absl::StrCat("cannot write to ", o.data_dir, ": ", st.message()));
  }
  return meta;
}

absl::StatusOr<bool> MayCreateDataFile(const std::string& dir, bool init) {
  if (LmdbDataExists(dir)) {
    if (!init) return false;
    return absl::FailedPreconditionError(
        absl::StrCat("--init: data dir ", dir, " is initialised already (it has a data file)"));
  }
  std::error_code ec;
  if (init || !std::filesystem::exists(dir, ec) || std::filesystem::is_empty(dir, ec)) return true;
  return absl::FailedPreconditionError(
      absl::StrCat("data dir ", dir,
                   " is not empty but has no data file: if this node's data was lost, "
                   "replace the node; to make a new node here, start once with --init"));
}

}  // namespace atomq
