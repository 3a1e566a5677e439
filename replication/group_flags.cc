#include "replication/group_flags.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/tls.h"

namespace atomq::replication {

void AddGroupFlags(CLI::App& app, GroupFlags* f, const char* what) {
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
  AddCheckedFlag(app, "--election_timeout_ms", f->election_timeout_ms,
                 "how long followers wait without hearing from a leader before electing another",
                 CLI::Range(10u, 600000u));
  AddCheckedFlag(app, "--heartbeat_ms", f->heartbeat_ms,
                 "how often a leader reminds followers it is there", CLI::Range(1u, 60000u));
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
  if (f->heartbeat_ms * 2 > f->election_timeout_ms) {
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
  o.election_timeout_ms = f.election_timeout_ms;
  o.heartbeat_ms = f.heartbeat_ms;
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
