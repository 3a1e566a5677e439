#include "replication/raft_log.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "atomq/v1/replica.pb.h"
#include "common/codec.h"

namespace atomq::replication {
namespace {

constexpr char kLogDb[] = "raft_log";
constexpr char kMetaDb[] = "raft_meta";
constexpr char kStateKey[] = "state";

std::string EncodeEntry(const LogEntry& e) {
  v1::RaftEntryRecord r;
  r.set_term(e.term);
  r.set_type(static_cast<uint32_t>(e.type));
  r.set_data(e.data);
  return EncodeRecord(r);
}

v1::RaftSnapshotRecord ToRecord(const SnapshotPoint& p) {
  v1::RaftSnapshotRecord r;
  r.set_index(p.index);
  r.set_term(p.term);
  r.set_configuration(p.conf);
  r.set_configuration_index(p.conf_index);
  return r;
}

}  // namespace

const std::vector<std::string>& RaftLog::Dbs() {
  static const std::vector<std::string> dbs = {kLogDb, kMetaDb};
  return dbs;
}

absl::StatusOr<DurableState> RaftLog::Load(Storage* storage) {
  DurableState d;
  absl::StatusOr<std::optional<std::string>> state = storage->Get(kMetaDb, kStateKey);
  if (!state.ok()) return state.status();
  if (state->has_value()) {
    v1::RaftStateRecord r;
    if (absl::Status st = DecodeRecord(**state, &r); !st.ok()) return st;
    d.term = r.term();
    d.vote = r.vote();
    if (r.has_snapshot()) {
      const v1::RaftSnapshotRecord& s = r.snapshot();
      d.snapshot = SnapshotPoint{s.index(), s.term(), s.configuration(), s.configuration_index()};
      d.first_index = s.index() + 1;
    }
  }
  absl::Status bad;
  bool first = true;
  absl::Status st = storage->Scan(kLogDb, "", [&](std::string_view key, std::string_view value) {
    const uint64_t index = key.size() == 8 ? DecodeU64(key) : 0;
    if (first) d.first_index = index;
    if (index == 0 || index != d.first_index + d.entries.size()) {
      bad = absl::DataLossError(absl::StrCat("the log has a gap before entry ", index));
      return false;
    }
    first = false;
    v1::RaftEntryRecord r;
    if (absl::Status dst = DecodeRecord(value, &r); !dst.ok()) {
      bad = absl::DataLossError(absl::StrCat("log entry ", index, ": ", dst.message()));
      return false;
    }
    if (r.type() < 1 || r.type() > 3) {
      bad = absl::DataLossError(absl::StrCat("log entry ", index, " has type ", r.type()));
      return false;
    }
    d.entries.push_back(LogEntry{r.term(), static_cast<EntryType>(r.type()), r.data()});
    return true;
  });
  if (!st.ok()) return st;
  if (!bad.ok()) return bad;
  return d;
}

RaftLog::RaftLog(const DurableState& d)
    : first_(d.first_index),
      last_(d.first_index + d.entries.size() - 1),
      term_(d.term),
      vote_(d.vote),
      snapshot_(d.snapshot) {}

Batch RaftLog::Initialize(const DurableState& d) {
  *this = RaftLog(d);
  Batch b;
  b.writes.push_back(StateWrite());
  for (size_t i = 0; i < d.entries.size(); ++i) {
    b.writes.push_back(
        Write{kLogDb, EncodeU64(d.first_index + i), EncodeEntry(d.entries[i]), false});
  }
  return b;
}

Write RaftLog::StateWrite() const {
  v1::RaftStateRecord r;
  r.set_term(term_);
  r.set_vote(vote_);
  if (snapshot_.has_value()) *r.mutable_snapshot() = ToRecord(*snapshot_);
  return Write{kMetaDb, kStateKey, EncodeRecord(r), false};
}

void RaftLog::Erase(uint64_t from, uint64_t to, Batch* batch) const {
  for (uint64_t i = from; i <= to; ++i)
    batch->writes.push_back(Write{kLogDb, EncodeU64(i), "", true});
}

Batch RaftLog::Persist(const RaftUpdate& u) {
  Batch b;
  if (u.term_or_vote) {
    term_ = u.term;
    vote_ = u.vote;
    b.writes.push_back(StateWrite());
  }
  if (u.entries_index.has_value()) {
    const uint64_t from = *u.entries_index;
    const uint64_t end = from + u.entries.size() - 1;
    if (last_ > end) Erase(std::max(from, end + 1), last_, &b);
    for (size_t i = 0; i < u.entries.size(); ++i) {
      b.writes.push_back(Write{kLogDb, EncodeU64(from + i), EncodeEntry(u.entries[i]), false});
    }
    first_ = last_ < first_ ? from : std::min(first_, from);
    last_ = end;
  }
  return b;
}

Batch RaftLog::Compact(const SnapshotPoint& point, uint64_t keep_from) {
  Batch b;
  snapshot_ = point;
  b.writes.push_back(StateWrite());
  if (keep_from > last_ + 1) keep_from = last_ + 1;
  if (keep_from > first_) {
    Erase(first_, keep_from - 1, &b);
    first_ = keep_from;
  }
  if (first_ > last_) {  // nothing left: the log starts after the snapshot
    first_ = point.index + 1;
    last_ = point.index;
  }
  return b;
}

Batch RaftLog::Install(const SnapshotPoint& point) {
  Batch b;
  snapshot_ = point;
  b.writes.push_back(StateWrite());
  if (last_ >= first_) Erase(first_, last_, &b);
  first_ = point.index + 1;
  last_ = point.index;
  return b;
}

}  // namespace atomq::replication
