// atomqctl cluster add, promote, remove and replace: a group's members,
// changed one at a time on its leader (atomq.v1.Replica.ChangeMembers;
// docs/design.md 10.2).
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/cluster.h"
#include "cli/commands.h"
#include "common/leader_book.h"

namespace atomq::ctl {
namespace {

struct MemberFlags {
  std::string members;  // --members: peer addresses to find the leader among
  uint64_t id = 0;      // --id
  std::string client;   // --client
  std::string peer;     // --peer
  uint64_t old_id = 0;  // --old (replace)
  uint32_t wait_ms = 60000;
};

// The leader among `peers`, asked again while none is known, for up to
// `wait_ms`; null (after saying why) when none answers as leader.
bool FindLeader(const Globals& g, const std::vector<std::string>& peers, uint32_t wait_ms,
                v1::ReplicaStatus* out) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  do {
    v1::GroupStatusReport report = AskMembers(g, peers);
    if (const v1::ReplicaStatus* l = LeaderIn(report); l != nullptr && l->serving()) {
      *out = *l;
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (std::chrono::steady_clock::now() < end);
  Error("no member of the group leads now (atomqctl cluster status shows each one)");
  return false;
}

// One change, sent to the leader; retried while leadership moves (a
// refusal that names no change of the members' own).
grpc::Status Change(const Globals& g, const MemberFlags& f, std::vector<std::string>* peers,
                    const v1::ChangeMembersRequest& req, v1::ReplicaStatus* after) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(f.wait_ms);
  for (;;) {
    v1::ReplicaStatus leader;
    if (!FindLeader(g, *peers, f.wait_ms, &leader)) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "no leader");
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(f.wait_ms));
    grpc::Status s =
        v1::Replica::NewStub(Connect(leader.peer_address()))->ChangeMembers(&ctx, req, after);
    const bool moved = s.error_code() == grpc::StatusCode::FAILED_PRECONDITION &&
                       s.error_message().find("does not serve as leader") != std::string::npos;
    if (!moved || std::chrono::steady_clock::now() >= end) return s;
  }
}

const v1::GroupMemberInfo* MemberIn(const v1::ReplicaStatus& s, uint64_t id) {
  for (const v1::GroupMemberInfo& m : s.members()) {
    if (m.member() == id) return &m;
  }
  return nullptr;
}

void PrintMembers(const v1::ReplicaStatus& s) {
  std::printf("members now:");
  for (const v1::GroupMemberInfo& m : s.members()) {
    std::printf(" %llu (%s)", static_cast<unsigned long long>(m.member()), m.role().c_str());
  }
  std::printf("\n");
}

v1::ChangeMembersRequest Request(v1::ChangeMembersRequest::Change change, uint64_t id,
                                 const MemberFlags& f) {
  v1::ChangeMembersRequest req;
  req.set_change(change);
  req.set_member(id);
  if (change == v1::ChangeMembersRequest::ADD) {
    req.set_client_address(f.client);
    req.set_peer_address(f.peer);
  }
  return req;
}

// One step of a change, said before it starts (a promotion can take a
// while) and after it ends.
int Step(const Globals& g, const MemberFlags& f, std::vector<std::string>* peers,
         v1::ChangeMembersRequest::Change change, uint64_t id, const char* doing,
         v1::ReplicaStatus* after) {
  std::printf("%s member %llu ...\n", doing, static_cast<unsigned long long>(id));
  std::fflush(stdout);
  grpc::Status s = Change(g, f, peers, Request(change, id, f), after);
  if (!s.ok()) return RpcError("ChangeMembers", s);
  if (change == v1::ChangeMembersRequest::ADD) peers->push_back(f.peer);
  PrintMembers(*after);
  return 0;
}

// Moves leadership off `from` to another voter, and waits until it serves.
int LeadElsewhere(const Globals& g, const MemberFlags& f, const std::vector<std::string>& peers,
                  const v1::ReplicaStatus& leader, uint64_t from) {
  for (const v1::GroupMemberInfo& m : leader.members()) {
    if (m.member() == from || m.role() != "voter") continue;
    std::printf("handing leadership from member %llu to member %llu ...\n",
                static_cast<unsigned long long>(from), static_cast<unsigned long long>(m.member()));
    CallContext ctx(g);
    v1::TransferLeadershipRequest req;
    req.set_to(m.member());
    v1::TransferLeadershipResponse resp;
    grpc::Status s =
        v1::Replica::NewStub(Connect(leader.peer_address()))->TransferLeadership(&ctx, req, &resp);
    if (!s.ok()) return RpcError("TransferLeadership", s);
    v1::ReplicaStatus now;
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(f.wait_ms);
    while (std::chrono::steady_clock::now() < end) {
      if (FindLeader(g, peers, f.wait_ms, &now) && now.member() != from) return 0;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return Error("leadership did not move within --wait_ms");
  }
  return Error(absl::StrCat("no other voter to hand leadership to from member ", from));
}

// Replaces member --old with --id at --client/--peer. A new member at the
// old one's addresses (its disk was lost, the host is the same) can only
// join once the old one has left: it is removed first, and the group runs
// on the others meanwhile. So is an old member that is gone (it does not
// answer, or takes no part): added first, a promotion that a leader
// appended just before it crashed would leave the group needing the vote
// of the new member, which does not know yet that it votes (the engine
// counts no vote of a member not a voter in its own configuration), and
// the group would wait for the old one (atomq-sim --membership found it).
// Otherwise the new one is added and made a voter first, so the group
// never has fewer voters than it started with.
int Replace(const Globals& g, const MemberFlags& f, std::vector<std::string>* peers) {
  v1::ReplicaStatus leader;
  if (!FindLeader(g, *peers, f.wait_ms, &leader)) return 2;
  const v1::GroupMemberInfo* old_member = MemberIn(leader, f.old_id);
  const v1::GroupMemberInfo* new_member = MemberIn(leader, f.id);
  if (old_member == nullptr && new_member != nullptr && new_member->role() == "voter") {
    std::printf("member %llu already replaced member %llu\n", static_cast<unsigned long long>(f.id),
                static_cast<unsigned long long>(f.old_id));
    return 0;
  }
  if (old_member == nullptr) {
    return Error(absl::StrCat("member ", f.old_id, " is not of the group"));
  }
  const bool same_place =
      old_member->client_address() == f.client || old_member->peer_address() == f.peer;
  const v1::GroupStatusReport old_status = AskMembers(g, {old_member->peer_address()});
  const bool old_gone =
      !old_status.replicas(0).error().empty() || !old_status.replicas(0).fault().empty();
  const bool remove_first = same_place || old_gone;
  if (leader.member() == f.old_id) {
    if (int rc = LeadElsewhere(g, f, *peers, leader, f.old_id); rc != 0) return rc;
  }
  v1::ReplicaStatus after;
  using C = v1::ChangeMembersRequest;
  if (remove_first) {
    if (int rc = Step(g, f, peers, C::REMOVE, f.old_id, "removing", &after); rc != 0) return rc;
  }
  if (new_member == nullptr) {
    if (int rc = Step(g, f, peers, C::ADD, f.id, "adding (as a standby)", &after); rc != 0) {
      return rc;
    }
  }
  if (new_member == nullptr || new_member->role() != "voter") {
    if (int rc = Step(g, f, peers, C::PROMOTE, f.id, "catching up, then promoting", &after);
        rc != 0) {
      return rc;
    }
  }
  if (!remove_first) {
    if (int rc = Step(g, f, peers, C::REMOVE, f.old_id, "removing", &after); rc != 0) return rc;
  }
  std::printf("member %llu replaced member %llu\n", static_cast<unsigned long long>(f.id),
              static_cast<unsigned long long>(f.old_id));
  return 0;
}

CLI::App* AddCommand(CLI::App* cluster, const char* name, const char* what, MemberFlags* f) {
  CLI::App* sub = cluster->add_subcommand(name, what);
  sub->add_option("--members", f->members,
                  "the group's peer addresses (its --group's peer parts), host:port|host:port|...")
      ->required();
  sub->add_option("--wait_ms", f->wait_ms,
                  "how long to wait for a leader and for each change (a promotion catches the "
                  "member up first)");
  return sub;
}

void AddAddresses(CLI::App* sub, MemberFlags* f) {
  sub->add_option("--client", f->client, "the new member's client address (its --listen)")
      ->required();
  sub->add_option("--peer", f->peer, "the new member's peer address (its --peer_listen)")
      ->required();
}

}  // namespace

void AddMemberCommands(CLI::App* cluster, const Globals& g, int* rc) {
  auto f = std::make_shared<MemberFlags>();
  using C = v1::ChangeMembersRequest;
  struct Simple {
    const char* name;
    const char* what;
    C::Change change;
    const char* doing;
  };
  for (const Simple& s : {
           Simple{"add",
                  "add a member (started with --join) as a standby: it is sent the log but "
                  "does not vote",
                  C::ADD, "adding (as a standby)"},
           Simple{"promote", "catch a standby up, then make it a voter", C::PROMOTE,
                  "catching up, then promoting"},
           Simple{"remove", "remove a member (not the leader: cluster transfer first)", C::REMOVE,
                  "removing"},
       }) {
    CLI::App* sub = AddCommand(cluster, s.name, s.what, f.get());
    sub->add_option("--id", f->id, "the member id")->required();
    if (s.change == C::ADD) AddAddresses(sub, f.get());
    sub->callback([&g, rc, f, s] {
      std::vector<std::string> peers = SplitMembers(f->members);
      v1::ReplicaStatus after;
      *rc = Step(g, *f, &peers, s.change, f->id, s.doing, &after);
    });
  }
  CLI::App* replace = AddCommand(
      cluster, "replace",
      "replace member --old (its disk lost, or moving) with a new member --id started with "
      "--join: add, catch up, promote, remove, one change at a time",
      f.get());
  replace->add_option("--old", f->old_id, "the member to replace")->required();
  replace->add_option("--id", f->id, "the new member's id (never one used before)")->required();
  AddAddresses(replace, f.get());
  replace->callback([&g, rc, f] {
    std::vector<std::string> peers = SplitMembers(f->members);
    *rc = peers.empty() ? Error("cluster replace needs --members=host:port|...")
                        : Replace(g, *f, &peers);
  });
}

}  // namespace atomq::ctl
