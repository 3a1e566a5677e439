// atomqctl cluster: what every replica of a group reports (docs/design.md
// 10.2), asked on the members' peer addresses (atomq.v1.Replica.Status), or
// on their client addresses for every group --coordinator and
// --participants name.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "atomq/v1/replica.grpc.pb.h"
#include "cli/cluster.h"
#include "cli/commands.h"
#include "common/leader_book.h"
#include "common/server_util.h"

namespace atomq::ctl {

v1::GroupStatusReport AskMembers(const Globals& g, const std::vector<std::string>& addresses,
                                 bool client) {
  v1::GroupStatusReport report;
  uint64_t commit = 0;
  for (const std::string& address : addresses) {
    CallContext ctx(g);
    v1::ReplicaStatus* r = report.add_replicas();
    grpc::Status s =
        v1::Replica::NewStub(Connect(address))->Status(&ctx, v1::ReplicaStatusRequest(), r);
    if (!s.ok()) {
      r->Clear();
      r->set_role("unreachable");
      r->set_error(s.error_code() == grpc::StatusCode::UNIMPLEMENTED
                       ? "not a group's member (started without --group)"
                       : absl::StrCat(s.error_code(), ": ", s.error_message()));
    }
    if (client) {
      r->set_client_address(address);
    } else {
      r->set_peer_address(address);
    }
    commit = std::max(commit, r->commit_index());
  }
  for (v1::ReplicaStatus& r : *report.mutable_replicas()) {
    if (r.error().empty()) r.set_lag(commit - std::min(commit, r.applied_index()));
  }
  return report;
}

const v1::ReplicaStatus* LeaderIn(const v1::GroupStatusReport& report) {
  const v1::ReplicaStatus* leader = nullptr;
  for (const v1::ReplicaStatus& r : report.replicas()) {
    if (r.role() == "leader" && (leader == nullptr || r.term() > leader->term())) leader = &r;
  }
  return leader;
}

namespace {

void PrintTable(const v1::GroupStatusReport& report) {
  std::printf("%-7s %-12s %-6s %-7s %-10s %-10s %-6s %-22s %s\n", "MEMBER", "ROLE", "TERM",
              "LEADER", "COMMIT", "VERSION", "LAG", "CLIENT", "PEER");
  for (const v1::ReplicaStatus& r : report.replicas()) {
    if (!r.error().empty()) {
      std::printf("%-7s %-12s %s  (%s)\n", "?", "unreachable",
                  (r.peer_address().empty() ? r.client_address() : r.peer_address()).c_str(),
                  r.error().c_str());
      continue;
    }
    std::printf("%-7llu %-12s %-6llu %-7llu %-10llu %-10llu %-6llu %-22s %s\n",
                static_cast<unsigned long long>(r.member()),
                (r.role() + (r.serving() ? "*" : "")).c_str(),
                static_cast<unsigned long long>(r.term()),
                static_cast<unsigned long long>(r.leader_member()),
                static_cast<unsigned long long>(r.commit_index()),
                static_cast<unsigned long long>(r.applied_index()),
                static_cast<unsigned long long>(r.lag()), r.client_address().c_str(),
                r.peer_address().c_str());
  }
  std::printf("(* serving; VERSION: the last entry applied; LAG: behind the highest commit)\n");
  const v1::ReplicaStatus* leader = LeaderIn(report);
  if (leader != nullptr) {
    std::printf("members, as the leader (member %llu) has them:\n",
                static_cast<unsigned long long>(leader->member()));
    for (const v1::GroupMemberInfo& m : leader->members()) {
      std::printf("  %-5llu %-8s stored up to %-10llu %s/%s\n",
                  static_cast<unsigned long long>(m.member()), m.role().c_str(),
                  static_cast<unsigned long long>(m.match_index()), m.client_address().c_str(),
                  m.peer_address().c_str());
    }
  }
  for (const v1::ReplicaStatus& r : report.replicas()) {
    if (!r.fault().empty()) {
      std::printf("member %llu takes no part: %s\n", static_cast<unsigned long long>(r.member()),
                  r.fault().c_str());
    }
    if (r.installing()) {
      std::printf("member %llu is copying another member's state (its log lacks what it missed)\n",
                  static_cast<unsigned long long>(r.member()));
    }
  }
}

// Asks the leader among `peers` to hand leadership to member `to`, then
// waits (up to --rpc_timeout_ms) until `to` serves.
int Transfer(const Globals& g, const std::vector<std::string>& peers, uint64_t to) {
  v1::GroupStatusReport before = AskMembers(g, peers);
  const v1::ReplicaStatus* leader = LeaderIn(before);
  if (leader == nullptr) return Error("no member of the group leads now; retry shortly");
  if (leader->member() == to) {
    std::printf("member %llu leads already (term %llu)\n", static_cast<unsigned long long>(to),
                static_cast<unsigned long long>(leader->term()));
    return 0;
  }
  CallContext ctx(g);
  v1::TransferLeadershipRequest req;
  req.set_to(to);
  v1::TransferLeadershipResponse resp;
  grpc::Status s =
      v1::Replica::NewStub(Connect(leader->peer_address()))->TransferLeadership(&ctx, req, &resp);
  if (!s.ok()) return RpcError("TransferLeadership", s);
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(g.rpc_timeout_ms);
  while (std::chrono::steady_clock::now() < end) {
    const v1::GroupStatusReport now = AskMembers(g, peers);
    for (const v1::ReplicaStatus& r : now.replicas()) {
      if (r.member() == to && r.role() == "leader" && r.serving()) {
        std::printf("member %llu leads and serves (term %llu)\n",
                    static_cast<unsigned long long>(to), static_cast<unsigned long long>(r.term()));
        return 0;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return Error(absl::StrCat("member ", to, " did not take over within --rpc_timeout_ms"));
}

// A subcommand of `cluster` that takes the group's --members.
CLI::App* AddGroupCommand(CLI::App* cluster, const char* name, const char* what,
                          std::string* members) {
  CLI::App* sub = cluster->add_subcommand(name, what);
  sub->add_option("--members", *members,
                  "the group's peer addresses (its --group's peer parts), host:port|host:port|...");
  return sub;
}

// The groups --coordinator, and --participants (else --participant), name
// by their members' client addresses: (id or role, "a|b|c").
std::vector<std::pair<std::string, std::string>> GivenGroups(const Globals& g) {
  std::vector<std::pair<std::string, std::string>> out;
  if (!g.coordinator_given.empty()) out.emplace_back("coordinator", g.coordinator_given);
  // atomqctl's start checked --participants (ParseParticipants).
  absl::StatusOr<std::map<std::string, std::string>> participants = ParsePeerList(g.participants);
  if (participants.ok()) {
    for (auto& entry : *participants) out.push_back(std::move(entry));
  }
  if (g.participants.empty() && !g.participant_given.empty()) {
    out.emplace_back("participant", g.participant_given);
  }
  return out;
}

// cluster status without --members: every group named, each asked at its
// members' client addresses. 2 when a group has no member that answers.
int StatusOfGivenGroups(const Globals& g) {
  const std::vector<std::pair<std::string, std::string>> groups = GivenGroups(g);
  if (groups.empty()) {
    return Error(
        "cluster status needs --members=PEER|PEER|..., or the groups to ask: --coordinator, "
        "--participants or --participant (a group's client addresses a|b|c)");
  }
  v1::GroupStatusReport all;
  int rc = 0;
  for (const auto& [name, members] : groups) {
    v1::GroupStatusReport report = AskMembers(g, SplitMembers(members), /*client=*/true);
    bool any = false;
    for (v1::ReplicaStatus& r : *report.mutable_replicas()) {
      any |= r.error().empty();
      if (r.group().empty()) r.set_group(name);
    }
    if (!any) rc = 2;
    if (!g.json) {
      if (&name != &groups.front().first) std::printf("\n");
      std::printf("%s (%s)\n", name.c_str(), members.c_str());
      PrintTable(report);
    }
    for (v1::ReplicaStatus& r : *report.mutable_replicas()) *all.add_replicas() = std::move(r);
  }
  if (g.json) PrintJson(all);
  return rc;
}

}  // namespace

void AddClusterCommands(CLI::App* cluster, const Globals& g, int* rc) {
  AddMemberCommands(cluster, g, rc);
  auto members = std::make_shared<std::string>();
  auto to = std::make_shared<uint64_t>(0);
  CLI::App* transfer =
      AddGroupCommand(cluster, "transfer",
                      "hand a group's leadership to another member (maintenance)", members.get());
  transfer->add_option("--to", *to, "the member id to lead")->required();
  transfer->callback([&g, rc, members, to] {
    std::vector<std::string> peers = SplitMembers(*members);
    *rc = peers.empty() ? Error("cluster transfer needs --members=host:port|...")
                        : Transfer(g, peers, *to);
  });
  CLI::App* status = AddGroupCommand(
      cluster, "status", "every replica of a group: role, term, leader, commit index, version, lag",
      members.get());
  status->callback([&g, rc, members] {
    std::vector<std::string> peers = SplitMembers(*members);
    if (peers.empty()) {
      *rc = StatusOfGivenGroups(g);
      return;
    }
    v1::GroupStatusReport report = AskMembers(g, peers);
    if (g.json) {
      PrintJson(report);
    } else {
      PrintTable(report);
    }
    bool any = false;
    for (const v1::ReplicaStatus& r : report.replicas()) any |= r.error().empty();
    *rc = any ? 0 : 2;
  });
}

}  // namespace atomq::ctl
