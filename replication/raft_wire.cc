#include "replication/raft_wire.h"

#include "absl/strings/str_cat.h"

namespace atomq::replication {

v1::RaftMessageProto ToWire(const RaftMessage& m) {
  v1::RaftMessageProto p;
  p.set_type(static_cast<uint32_t>(m.type));
  p.set_version(m.version);
  p.set_term(m.term);
  p.set_candidate_id(m.candidate_id);
  p.set_last_log_index(m.last_log_index);
  p.set_last_log_term(m.last_log_term);
  p.set_disrupt_leader(m.disrupt_leader);
  p.set_pre_vote(m.pre_vote);
  p.set_vote_granted(m.vote_granted);
  p.set_prev_log_index(m.prev_log_index);
  p.set_prev_log_term(m.prev_log_term);
  p.set_leader_commit(m.leader_commit);
  for (const LogEntry& e : m.entries) {
    v1::RaftEntryRecord* r = p.add_entries();
    r->set_term(e.term);
    r->set_type(static_cast<uint32_t>(e.type));
    r->set_data(e.data);
  }
  p.set_rejected(m.rejected);
  p.set_features(m.features);
  p.set_capacity(m.capacity);
  p.set_snapshot_index(m.snapshot_index);
  p.set_snapshot_term(m.snapshot_term);
  p.set_configuration_index(m.conf_index);
  p.set_configuration(m.conf);
  return p;
}

absl::StatusOr<RaftMessage> FromWire(const v1::RaftMessageProto& p, uint64_t peer,
                                     const std::string& peer_address) {
  if (p.type() < static_cast<uint32_t>(MessageType::kAppendEntries) ||
      p.type() > static_cast<uint32_t>(MessageType::kTimeoutNow)) {
    return absl::InvalidArgumentError(absl::StrCat("no engine message of type ", p.type()));
  }
  if (p.version() > 255 || p.features() > 0xffff || p.capacity() > 0xffff) {
    return absl::InvalidArgumentError("an engine message field out of range");
  }
  RaftMessage m;
  m.type = static_cast<MessageType>(p.type());
  m.peer = peer;
  m.peer_address = peer_address;
  m.version = p.version();
  m.term = p.term();
  m.candidate_id = p.candidate_id();
  m.last_log_index = p.last_log_index();
  m.last_log_term = p.last_log_term();
  m.disrupt_leader = p.disrupt_leader();
  m.pre_vote = p.pre_vote();
  m.vote_granted = p.vote_granted();
  m.prev_log_index = p.prev_log_index();
  m.prev_log_term = p.prev_log_term();
  m.leader_commit = p.leader_commit();
  for (const v1::RaftEntryRecord& r : p.entries()) {
    if (r.type() < 1 || r.type() > 3) {
      return absl::InvalidArgumentError(absl::StrCat("no log entry of type ", r.type()));
    }
    m.entries.push_back(LogEntry{r.term(), static_cast<EntryType>(r.type()), r.data()});
  }
  m.rejected = p.rejected();
  m.features = p.features();
  m.capacity = p.capacity();
  m.snapshot_index = p.snapshot_index();
  m.snapshot_term = p.snapshot_term();
  m.conf_index = p.configuration_index();
  m.conf = p.configuration();
  return m;
}

}  // namespace atomq::replication
