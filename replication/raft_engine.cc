#include "replication/raft_engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "replication/raft_c.h"

namespace atomq::replication {
namespace {

std::vector<aq_entry> ToC(const std::vector<LogEntry>& entries) {
  std::vector<aq_entry> out;
  out.reserve(entries.size());
  for (const LogEntry& e : entries) {
    out.push_back(aq_entry{e.term, static_cast<int>(e.type), e.data.data(), e.data.size()});
  }
  return out;
}

LogEntry FromC(const aq_entry& e) {
  return LogEntry{e.term, static_cast<EntryType>(e.type),
                  std::string(static_cast<const char*>(e.data), e.len)};
}

}  // namespace

std::string EncodeConfiguration(const std::vector<Member>& members) {
  std::vector<uint64_t> ids;
  std::vector<const char*> addresses;
  std::vector<int> roles;
  for (const Member& m : members) {
    ids.push_back(m.id);
    addresses.push_back(m.address.c_str());
    roles.push_back(static_cast<int>(m.role));
  }
  void* out = nullptr;
  size_t len = 0;
  if (aq_conf_encode(ids.data(), addresses.data(), roles.data(),
                     static_cast<unsigned>(members.size()), &out, &len) != 0) {
    return "";  // a duplicate id or address, or no memory: decodes as invalid
  }
  std::string bytes(static_cast<const char*>(out), len);
  aq_free(out);
  return bytes;
}

absl::StatusOr<std::vector<Member>> DecodeConfiguration(const std::string& bytes) {
  constexpr unsigned kMax = 64;
  uint64_t ids[kMax];
  int roles[kMax];
  std::string names(bytes.size() + 1, '\0');
  int n = aq_conf_decode(bytes.data(), bytes.size(), ids, roles, names.data(), names.size(), kMax);
  if (n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a group configuration: ", aq_raft_strerror(-n)));
  }
  std::vector<Member> out;
  const char* name = names.c_str();
  for (int i = 0; i < n; ++i) {
    out.push_back(Member{ids[i], name, static_cast<MemberRole>(roles[i])});
    name += out.back().address.size() + 1;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<RaftEngine>> RaftEngine::Create(const Options& o) {
  if (o.id == 0) return absl::InvalidArgumentError("a member id must be above 0");
  aq_raft* r =
      aq_raft_new(o.id, o.address.c_str(), o.seed, o.election_timeout, o.heartbeat_timeout);
  if (r == nullptr) return absl::ResourceExhaustedError("cannot make a consensus engine");
  return std::unique_ptr<RaftEngine>(new RaftEngine(r, o.id));
}

RaftEngine::~RaftEngine() { aq_raft_free(raft_); }

DurableState RaftEngine::Bootstrap(const std::vector<Member>& members) {
  DurableState d;
  d.term = 1;
  d.entries.push_back(LogEntry{1, EntryType::kChange, EncodeConfiguration(members)});
  return d;
}

absl::Status RaftEngine::Failed(int rv, const char* what) const {
  std::string message =
      absl::StrCat(what, ": ", aq_raft_strerror(rv), " (", aq_raft_errmsg(raft_), ")");
  switch (aq_raft_error_kind(rv)) {
    case AQ_ERR_NOT_NOW:
      return absl::FailedPreconditionError(message);
    case AQ_ERR_MALFORMED:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::StatusOr<RaftUpdate> RaftEngine::Translate(int rv, const char* what, const void* raw) {
  if (rv != 0) return Failed(rv, what);
  const aq_update& u = *static_cast<const aq_update*>(raw);
  RaftUpdate out;
  if (u.flags & (AQ_UPDATE_TERM | AQ_UPDATE_VOTE)) {
    out.term_or_vote = true;
    out.term = aq_raft_term(raft_);
    out.vote = aq_raft_voted_for(raft_);
  }
  if (u.flags & AQ_UPDATE_ENTRIES) {
    out.entries_index = u.entries_index;
    for (unsigned i = 0; i < u.n_entries; ++i) out.entries.push_back(FromC(u.entries[i]));
    // The log as asked: a conflicting suffix goes first, and writes still
    // under way store nothing valid from there.
    const uint64_t from = u.entries_index;
    if (from < first_index_ + log_.size()) {
      log_.resize(from >= first_index_ ? from - first_index_ : 0);
    }
    if (log_.empty()) first_index_ = from;
    for (const LogEntry& e : out.entries) log_.push_back(e);
    for (PendingWrite& w : writes_) w.last = std::min(w.last, from - 1);
    stored_ = std::min(stored_, from - 1);
    out.write = next_write_++;
    writes_.push_back(PendingWrite{out.write, from + u.n_entries - 1});
  }
  if (u.flags & AQ_UPDATE_SNAPSHOT) {
    SnapshotPoint p{u.snapshot_index, u.snapshot_term,
                    std::string(static_cast<const char*>(u.conf), u.conf_len), u.conf_index};
    // The log before and at the snapshot is gone: a new log begins after it,
    // and writes still under way are of the old one.
    log_.clear();
    first_index_ = p.index + 1;
    for (PendingWrite& w : writes_) w.last = 0;
    stored_ = p.index;
    snapshot_ = p;
    out.install = std::move(p);
  }
  for (unsigned i = 0; i < u.n_messages; ++i) {
    const aq_message& m = u.messages[i];
    RaftMessage o;
    o.type = static_cast<MessageType>(m.type);
    o.peer = m.peer;
    o.peer_address = m.peer_address != nullptr ? m.peer_address : "";
    o.version = m.version;
    o.term = m.term;
    o.candidate_id = m.candidate_id;
    o.last_log_index = m.last_log_index;
    o.last_log_term = m.last_log_term;
    o.disrupt_leader = m.disrupt_leader;
    o.pre_vote = m.pre_vote;
    o.vote_granted = m.vote_granted;
    o.prev_log_index = m.prev_log_index;
    o.prev_log_term = m.prev_log_term;
    o.leader_commit = m.leader_commit;
    o.rejected = m.rejected;
    o.features = m.features;
    o.capacity = m.capacity;
    o.snapshot_index = m.snapshot_index;
    o.snapshot_term = m.snapshot_term;
    o.conf_index = m.conf_index;
    // The engine keeps no log: what it sends comes from ours.
    for (unsigned k = 0; k < m.n_entries; ++k) {
      const LogEntry* e = entry(m.prev_log_index + 1 + k);
      if (e == nullptr) {
        return absl::InternalError(
            absl::StrCat("entry ", m.prev_log_index + 1 + k, " to send is not in the log"));
      }
      o.entries.push_back(*e);
    }
    if (o.type == MessageType::kInstallSnapshot) {
      if (!snapshot_.has_value()) return absl::InternalError("a snapshot to send but none taken");
      o.conf = snapshot_->conf;
    }
    out.messages.push_back(std::move(o));
  }
  out.state_changed = (u.flags & AQ_UPDATE_STATE) != 0;
  out.commit_changed = (u.flags & AQ_UPDATE_COMMIT_INDEX) != 0;
  out.commit_index = aq_raft_commit_index(raft_);
  out.next_timeout = aq_raft_next_timeout(raft_);
  return out;
}

// What the engine assumes of a disk and does not check (it corrupts its
// log otherwise): the log runs on from a snapshot, or from the start.
absl::Status CheckDurable(const DurableState& d) {
  const uint64_t last = d.first_index + d.entries.size() - 1;
  if (d.term == 0 && (d.vote != 0 || !d.entries.empty() || d.snapshot.has_value())) {
    return absl::InvalidArgumentError("a disk without a term holds a vote, entries or a snapshot");
  }
  if (d.snapshot.has_value()) {
    const SnapshotPoint& s = *d.snapshot;
    if (s.index == 0 || s.term == 0) return absl::InvalidArgumentError("a snapshot at index 0");
    if (d.first_index > s.index + 1 || (d.entries.empty() && d.first_index != s.index + 1) ||
        (!d.entries.empty() && last < s.index)) {
      return absl::InvalidArgumentError(
          absl::StrCat("the log from ", d.first_index, " (", d.entries.size(),
                       " entries) does not run on from the snapshot at ", s.index));
    }
  } else if (!d.entries.empty() &&
             (d.first_index != 1 || d.entries[0].type != EntryType::kChange)) {
    return absl::InvalidArgumentError("a log without a snapshot must begin with a configuration");
  }
  return absl::OkStatus();
}

absl::StatusOr<RaftUpdate> RaftEngine::Start(uint64_t now, const DurableState& d) {
  if (absl::Status st = CheckDurable(d); !st.ok()) return st;
  std::vector<aq_entry> entries = ToC(d.entries);
  const SnapshotPoint none;
  const SnapshotPoint& s = d.snapshot.has_value() ? *d.snapshot : none;
  log_.assign(d.entries.begin(), d.entries.end());
  first_index_ = d.first_index;
  snapshot_ = d.snapshot;
  writes_.clear();
  stored_ = d.entries.empty() ? s.index : d.first_index + d.entries.size() - 1;
  aq_update u;
  int rv = aq_raft_start(raft_, now, d.term, d.vote, s.index, s.term, s.conf.data(), s.conf.size(),
                         s.conf_index, d.first_index, entries.data(),
                         static_cast<unsigned>(entries.size()), &u);
  return Translate(rv, "start", &u);
}

absl::StatusOr<RaftUpdate> RaftEngine::Receive(uint64_t now, const RaftMessage& in) {
  // A leader may send from before this replica's log start when this
  // replica compacted entries the leader does not know it holds. The engine
  // cannot match such an entry and would refuse it forever. Everything up
  // to the snapshot is committed, so it matches the leader's: the message
  // is read as running on from the snapshot.
  const RaftMessage* message = &in;
  RaftMessage moved;
  if (in.type == MessageType::kAppendEntries && snapshot_.has_value() &&
      in.prev_log_index < snapshot_->index) {
    moved = in;
    const uint64_t skip =
        std::min<uint64_t>(snapshot_->index - in.prev_log_index, in.entries.size());
    moved.entries.erase(moved.entries.begin(), moved.entries.begin() + skip);
    moved.prev_log_index = snapshot_->index;
    moved.prev_log_term = snapshot_->term;
    message = &moved;
  }
  const RaftMessage& m = *message;
  std::vector<aq_entry> entries = ToC(m.entries);
  aq_message c{};
  c.type = static_cast<int>(m.type);
  c.peer = m.peer;
  c.peer_address = m.peer_address.c_str();
  c.version = static_cast<unsigned char>(m.version);
  c.term = m.term;
  c.candidate_id = m.candidate_id;
  c.last_log_index = m.last_log_index;
  c.last_log_term = m.last_log_term;
  c.disrupt_leader = m.disrupt_leader;
  c.pre_vote = m.pre_vote;
  c.vote_granted = m.vote_granted;
  c.prev_log_index = m.prev_log_index;
  c.prev_log_term = m.prev_log_term;
  c.leader_commit = m.leader_commit;
  c.entries = entries.data();
  c.n_entries = static_cast<unsigned>(entries.size());
  c.rejected = m.rejected;
  c.features = static_cast<unsigned short>(m.features);
  c.capacity = static_cast<unsigned short>(m.capacity);
  c.snapshot_index = m.snapshot_index;
  c.snapshot_term = m.snapshot_term;
  c.conf_index = m.conf_index;
  c.conf = m.conf.data();
  c.conf_len = m.conf.size();
  aq_update u;
  int rv = aq_raft_receive(raft_, now, &c, &u);
  return Translate(rv, "receive", &u);
}

absl::StatusOr<RaftUpdate> RaftEngine::PersistedEntries(uint64_t now, uint64_t write) {
  uint64_t last = 0;
  bool found = false;
  while (!writes_.empty() && writes_.front().write <= write) {
    found = found || writes_.front().write == write;
    last = std::max(last, writes_.front().last);
    writes_.pop_front();
  }
  if (!found) return absl::InvalidArgumentError(absl::StrCat("no write ", write, " under way"));
  if (last <= stored_) return Idle();
  stored_ = last;
  aq_update u;
  return Translate(aq_raft_persisted_entries(raft_, now, last, &u), "persisted entries", &u);
}

RaftUpdate RaftEngine::Idle() const {
  RaftUpdate out;
  out.commit_index = aq_raft_commit_index(raft_);
  out.next_timeout = aq_raft_next_timeout(raft_);
  return out;
}

absl::StatusOr<RaftUpdate> RaftEngine::PersistedSnapshot(uint64_t now) {
  aq_update u;
  return Translate(aq_raft_persisted_snapshot(raft_, now, &u), "persisted snapshot", &u);
}

absl::StatusOr<RaftUpdate> RaftEngine::Configuration(uint64_t now, uint64_t index) {
  const LogEntry* e = entry(index);
  if (e == nullptr || e->type != EntryType::kChange) {
    return absl::InvalidArgumentError(absl::StrCat("no configuration entry at ", index));
  }
  aq_update u;
  int rv = aq_raft_configuration(raft_, now, index, e->data.data(), e->data.size(), &u);
  return Translate(rv, "configuration", &u);
}

absl::StatusOr<RaftUpdate> RaftEngine::Snapshot(uint64_t now, uint64_t index,
                                                const std::string& conf, uint64_t conf_index,
                                                uint32_t trailing) {
  const LogEntry* e = entry(index);
  if (e == nullptr) return absl::InvalidArgumentError(absl::StrCat("no entry at ", index));
  // A snapshot past the stored log would drop entries a write under way
  // still has to report, which the engine cannot count.
  if (index > stored_) {
    return absl::InvalidArgumentError(
        absl::StrCat("a snapshot at ", index, " is past the stored log (", stored_, ")"));
  }
  // The engine aborts on a second snapshot at one index.
  if (snapshot_.has_value() && snapshot_->index >= index) {
    return absl::InvalidArgumentError(
        absl::StrCat("a snapshot at ", snapshot_->index, " is not before ", index));
  }
  SnapshotPoint p{index, e->term, conf, conf_index};
  aq_update u;
  int rv = aq_raft_snapshot(raft_, now, index, p.term, conf.data(), conf.size(), conf_index,
                            trailing, &u);
  absl::StatusOr<RaftUpdate> out = Translate(rv, "snapshot", &u);
  if (!out.ok()) return out;
  snapshot_ = std::move(p);
  // Keep at least what the engine keeps: from `trailing` entries before
  // the snapshot's end.
  uint64_t keep_from = index > trailing ? index - trailing : 1;
  while (!log_.empty() && first_index_ < keep_from) {
    log_.pop_front();
    ++first_index_;
  }
  return out;
}

absl::StatusOr<RaftUpdate> RaftEngine::Timeout(uint64_t now) {
  aq_update u;
  return Translate(aq_raft_timeout(raft_, now, &u), "timeout", &u);
}

absl::StatusOr<RaftUpdate> RaftEngine::Submit(uint64_t now, const std::vector<LogEntry>& entries) {
  if (entries.empty()) return absl::InvalidArgumentError("nothing to submit");
  std::vector<aq_entry> c = ToC(entries);
  for (aq_entry& e : c) e.term = aq_raft_term(raft_);
  aq_update u;
  int rv = aq_raft_submit(raft_, now, c.data(), static_cast<unsigned>(c.size()), &u);
  return Translate(rv, "submit", &u);
}

absl::StatusOr<RaftUpdate> RaftEngine::Transfer(uint64_t now, uint64_t id) {
  aq_update u;
  return Translate(aq_raft_transfer(raft_, now, id, &u), "transfer", &u);
}

absl::StatusOr<RaftUpdate> RaftEngine::ChangeMembers(uint64_t now,
                                                     const std::vector<Member>& members) {
  std::string conf = EncodeConfiguration(members);
  if (conf.empty()) return absl::InvalidArgumentError("members with a duplicate id or address");
  return Submit(now, {LogEntry{0, EntryType::kChange, std::move(conf)}});
}

absl::StatusOr<RaftUpdate> RaftEngine::CatchUp(uint64_t now, uint64_t id) {
  aq_update u;
  return Translate(aq_raft_catch_up(raft_, now, id, &u), "catch up", &u);
}

RaftEngine::CatchUpState RaftEngine::catch_up(uint64_t id) const {
  switch (aq_raft_catch_up_status(raft_, id)) {
    case AQ_CATCH_UP_RUNNING:
      return CatchUpState::kRunning;
    case AQ_CATCH_UP_ABORTED:
      return CatchUpState::kAborted;
    case AQ_CATCH_UP_FINISHED:
      return CatchUpState::kFinished;
    default:
      return CatchUpState::kNone;
  }
}

uint64_t RaftEngine::match_index(uint64_t id) const { return aq_raft_match_index(raft_, id); }

std::vector<Member> RaftEngine::members() const {
  void* bytes = nullptr;
  size_t len = 0;
  uint64_t index = 0;
  if (aq_raft_members(raft_, &bytes, &len, &index) != 0 || bytes == nullptr) return {};
  absl::StatusOr<std::vector<Member>> m =
      DecodeConfiguration(std::string(static_cast<const char*>(bytes), len));
  aq_free(bytes);
  return m.ok() ? *std::move(m) : std::vector<Member>{};
}

bool RaftEngine::changing() const { return aq_raft_changing(raft_); }

uint64_t RaftEngine::term() const { return aq_raft_term(raft_); }
uint64_t RaftEngine::commit_index() const { return aq_raft_commit_index(raft_); }
uint64_t RaftEngine::applicable_index() const { return std::min(commit_index(), stored_); }
uint64_t RaftEngine::last_index() const { return aq_raft_last_index(raft_); }
uint64_t RaftEngine::next_timeout() const { return aq_raft_next_timeout(raft_); }
RaftState RaftEngine::state() const { return static_cast<RaftState>(aq_raft_state(raft_)); }

uint64_t RaftEngine::leader_id() const {
  uint64_t id = 0;
  const char* address = nullptr;
  aq_raft_leader(raft_, &id, &address);
  return id;
}

std::string RaftEngine::leader_address() const {
  uint64_t id = 0;
  const char* address = nullptr;
  aq_raft_leader(raft_, &id, &address);
  return address != nullptr ? address : "";
}

const LogEntry* RaftEngine::entry(uint64_t index) const {
  if (index < first_index_ || index >= first_index_ + log_.size()) return nullptr;
  return &log_[index - first_index_];
}

}  // namespace atomq::replication
