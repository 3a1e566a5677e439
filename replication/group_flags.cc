#include "replication/group_flags.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/tls.h"

namespace atomq::replication {

void AddGroupFlags(CLI::App& app, GroupFlags* f, const char* what) {
  f->role = what;
  app.add_option(
      "--group", f->group,
      absl::StrCat("id=client_host:port/peer_host:port,... of every replica of this ", what,
                   " (3 or 5; default: none, one disk). The leader serves on its "
                   "client address; the others refuse calls with the leader's "
                   "address. Once a replica holds the log, its members are the "
                   "log's (atomqctl cluster replace changes them)"));
  app.add_option("--member_id", f->member_id, "this replica's id in --group");
  app.add_option("--peer_listen", f->peer_listen,
                 "address to take the group's replication traffic on (default: this member's "
                 "peer address in --group)");
  app.add_flag("--join", f->join,
               "on an empty disk, wait to be added to the running group (atomqctl cluster add or "
               "replace) instead of starting a new one; a disk that holds the log ignores it");
  AddCheckedFlag(app, "--election_timeout_ms", f->tuning.election_timeout_ms,
                 "how long followers wait without hearing from a leader before electing another",
                 CLI::Range(10u, 600000u));
  AddCheckedFlag(app, "--heartbeat_ms", f->tuning.heartbeat_ms,
                 "how often a leader reminds followers it is there", CLI::Range(1u, 60000u));
  AddCheckedFlag(app, "--snapshot_entries", f->tuning.snapshot_entries,
                 "compact the log to a snapshot every this many applied entries (0: never); a "
                 "member behind the compacted part copies another member's whole state",
                 CLI::Range(uint64_t(0), uint64_t(1) << 40));
  AddCheckedFlag(app, "--snapshot_trailing", f->tuning.snapshot_trailing,
                 "entries kept before a snapshot point, so that a member a little behind is "
                 "sent entries rather than the whole state",
                 CLI::Range(0u, 1u << 30));
  AddCheckedFlag(app, "--state_transfer_mb_max", f->tuning.state_transfer_mb_max,
                 "the most of another member's state (MiB of keys and values) a copy may "
                 "hold: it is held in memory, then written in one transaction",
                 CLI::Range(1u, 1u << 20));
  AddCheckedFlag(app, "--state_transfers_max", f->tuning.state_transfers_max,
                 "copies of this replica's state other members may read at once",
                 CLI::Range(1u, 64u));
}

std::string CallerAddresses(const GroupFlags& f, const std::string& listen) {
  return f.enabled() ? ClientAddresses(f.members) : listen;
}

absl::Status CheckGroupFlags(GroupFlags* f) {
  if (!f->enabled()) {
    if (f->member_id != 0 || !f->peer_listen.empty() || f->join) {
      return absl::InvalidArgumentError("--member_id, --peer_listen and --join need --group");
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::map<uint64_t, MemberAddresses>> members = ParseGroup(f->group);
  if (!members.ok())
    return absl::InvalidArgumentError(absl::StrCat("--group: ", members.status().message()));
  if (members->count(f->member_id) == 0) {
    return absl::InvalidArgumentError("--member_id: must name one of the members of --group");
  }
  if (f->tuning.heartbeat_ms * 2 > f->tuning.election_timeout_ms) {
    return absl::InvalidArgumentError(
        "--heartbeat_ms must be at most half of --election_timeout_ms");
  }
  f->members = *std::move(members);
  return absl::OkStatus();
}

absl::Status ServeInGroup(const GroupFlags& f, const ServerFlags& server,
                          std::vector<std::string> service_names,
                          std::shared_ptr<const Access> access, Storage* local,
                          GroupMember::StartLeading start) {
  GroupMember::Options o;
  o.group = server.id;
  o.member_id = f.member_id;
  o.members = f.members;
  o.listen = server.listen;
  o.peer_listen = f.peer_listen;
  o.join = f.join;
  o.service_names = std::move(service_names);
  o.credentials = ServerCredentials(server.tls);
  o.access = std::move(access);
  o.message_bytes_max = server.message_bytes_max;
  o.tuning = f.tuning;
  o.role = f.role;
  o.data_dir = server.data_dir;
  absl::StatusOr<std::unique_ptr<GroupMember>> member =
      GroupMember::Start(std::move(o), local, std::move(start));
  if (!member.ok()) return member.status();
  GroupMember* target = member->get();
  auto metrics = StartMetrics(server, [target] { return target->RenderMetrics(); });
  if (!metrics.ok()) return metrics.status();
  AwaitShutdownSignal();
  metrics->reset();
  (*member)->Stop();
  return absl::OkStatus();
}

}  // namespace atomq::replication
