#include "replication/group_member.h"

#include <sys/random.h>

#include <cstdlib>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/codec.h"
#include "common/leader_book.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/validate.h"

namespace atomq::replication {
namespace {

// A peer connection a partition silenced is dropped after about twice this
// (a ping unanswered), then dialled anew: without it, TCP keeps a dead
// connection for many minutes and the group cannot heal sooner.
constexpr int kPeerKeepaliveMs = 1000;

[[noreturn]] void Fatal(const std::string& what) {
  LogLine(absl::StrCat("group member: ", what, "; stopping"));
  std::abort();
}

// The replica store as the served node sees it: its writes go in the
// serving term it was built in, or not at all.
class TermStorage final : public StorageWrapper {
 public:
  TermStorage(ReplicatedStorage* replica, uint64_t term)
      : StorageWrapper(replica), replica_(replica), term_(term) {}
  void Submit(Batch batch, DoneFn done) override {
    replica_->SubmitIn(term_, std::move(batch), std::move(done));
  }
  void SubmitDeferred(Batch batch, DoneFn done) override {
    Submit(std::move(batch), std::move(done));
  }

 private:
  ReplicatedStorage* const replica_;
  const uint64_t term_;
};

// The group's next leadership epoch, committed in serving term `term`
// before the node is built (replicated: ReplicatedStorage::kAppliedDb,
// key "epoch"). UNAVAILABLE when the term ended meanwhile.
absl::StatusOr<uint64_t> ClaimEpoch(Storage* term_storage) {
  absl::StatusOr<std::optional<std::string>> last =
      term_storage->Get(ReplicatedStorage::kAppliedDb, "epoch");
  if (!last.ok()) return last.status();
  uint64_t epoch = 1;
  if (last->has_value()) {
    if ((*last)->size() != 8) return absl::DataLossError("the leadership epoch does not decode");
    epoch = DecodeU64(**last) + 1;
  }
  absl::Status st = term_storage->Write(
      Batch{0, {atomq::Write{ReplicatedStorage::kAppliedDb, "epoch", EncodeU64(epoch), false}}});
  if (!st.ok()) return st;
  return epoch;
}

}  // namespace

absl::StatusOr<std::map<uint64_t, MemberAddresses>> ParseGroup(const std::string& flag) {
  std::map<uint64_t, MemberAddresses> out;
  for (absl::string_view part : absl::StrSplit(flag, ',', absl::SkipEmpty())) {
    std::vector<std::string> kv = absl::StrSplit(part, absl::MaxSplits('=', 1));
    std::vector<std::string> addrs;
    if (kv.size() == 2) addrs = absl::StrSplit(kv[1], '/');
    uint64_t id = 0;
    if (kv.size() != 2 || !absl::SimpleAtoi(kv[0], &id) || id == 0 || addrs.size() != 2 ||
        addrs[0].empty() || addrs[1].empty() || addrs[0] == addrs[1]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad member \"", Clip(part), "\": want id=client_host:port/peer_host:port, id > 0"));
    }
    if (!out.emplace(id, MemberAddresses{addrs[0], addrs[1]}).second) {
      return absl::InvalidArgumentError(absl::StrCat("member ", id, " listed twice"));
    }
  }
  return out;
}

std::string ClientAddresses(const std::map<uint64_t, MemberAddresses>& members) {
  std::vector<std::string> out;
  for (const auto& [id, a] : members) out.push_back(a.client);
  return absl::StrJoin(out, "|");
}

GroupMember::GroupMember(Options options, StartLeading start)
    : options_(std::move(options)), start_(std::move(start)), channels_(64, kPeerKeepaliveMs) {}

absl::StatusOr<std::unique_ptr<GroupMember>> GroupMember::Start(Options options, Storage* local,
                                                                StartLeading start) {
  auto self_entry = options.members.find(options.member_id);
  if (self_entry == options.members.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("member ", options.member_id, " is not one of the group's members"));
  }
  if (options.peer_listen.empty()) options.peer_listen = self_entry->second.peer;
  std::unique_ptr<GroupMember> m(new GroupMember(std::move(options), std::move(start)));
  const Options& o = m->options_;
  m->transport_ = std::make_unique<GrpcTransport>(&m->peer_loop_, &m->channels_,
                                                  GrpcTransport::Options{o.group, o.member_id});
  ReplicatedStorage::Options ro;
  ro.engine.id = o.member_id;
  ro.engine.address = ConfigAddress(o.members.at(o.member_id));
  ro.join = o.join;
  // Randomized election timeouts must differ between members.
  uint32_t seed = 0;
  if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed)) seed = uint32_t(o.member_id);
  ro.engine.seed = seed;
  const ReplicaTuning& t = o.tuning;
  ro.engine.election_timeout = t.election_timeout_ms;
  ro.engine.heartbeat_timeout = t.heartbeat_ms;
  ro.snapshot_entries = t.snapshot_entries;
  ro.snapshot_trailing = t.snapshot_trailing;
  ro.state_bytes_max = uint64_t(t.state_transfer_mb_max) << 20;
  ro.source.transfers_max = t.state_transfers_max;
  if (!o.join) {
    for (const auto& [id, a] : o.members) ro.bootstrap.push_back(Member{id, ConfigAddress(a)});
  }
  absl::StatusOr<std::unique_ptr<ReplicatedStorage>> replica =
      ReplicatedStorage::Open(ro, local, m->transport_.get(), &m->timers_);
  if (!replica.ok()) return replica.status();
  m->replica_ = std::move(*replica);
  ReplicatedStorage* replica_raw = m->replica_.get();
  m->transport_->SetDisk(replica_raw->disk(), [replica_raw](uint64_t peer, const std::string& why) {
    replica_raw->Refused(peer, why);
  });
  m->replica_service_ = std::make_unique<ReplicaService>(&m->peer_loop_, o.access, o.group,
                                                         o.members, m->replica_.get());
  m->client_status_ =
      std::make_unique<ClientStatusService>(o.access, o.group, o.members, m->replica_.get());
  AllowKeepalivePings(m->peer_loop_.builder(), kPeerKeepaliveMs / 2);
  absl::StatusOr<std::unique_ptr<grpc::Server>> peer_server =
      StartServer(o.peer_listen, {m->replica_service_->service()}, o.message_bytes_max,
                  o.credentials, &m->peer_loop_);
  if (!peer_server.ok()) return peer_server.status();
  m->peer_server_ = std::move(*peer_server);
  GroupMember* raw = m.get();
  if (absl::Status st = m->StartStandIn(); !st.ok()) return st;
  m->roles_ = std::thread([raw] { raw->RunRoles(); });
  m->replica_->SetServingHook(
      [raw](bool serving, uint64_t term) { raw->OnServing(serving, term); });
  LogLine(absl::StrCat("member ", o.member_id, " of ", o.group, ": peers on ", o.peer_listen,
                       ", clients on ", o.listen));
  return m;
}

GroupMember::~GroupMember() { Stop(); }

void GroupMember::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (roles_.joinable()) roles_.join();
  StopLeading(/*replica_too=*/true);
  stand_in_.reset();
  peer_server_->Shutdown(std::chrono::system_clock::now());
  peer_loop_.Shutdown();
  timers_.Stop();
}

grpc::Status GroupMember::NotLeader() {
  const GroupStatus s = replica_->Status();
  v1::NotLeader where;
  where.set_group(options_.group);
  where.set_term(s.term);
  MemberAddresses leader;
  if (s.leader_id != options_.member_id &&
      FindMember(s.members, options_.members, s.leader_id, &leader) && !leader.client.empty()) {
    where.set_leader_member(s.leader_id);
    where.set_leader_address(leader.client);
  }
  return NotLeaderStatus(where);
}

void GroupMember::OnServing(bool serving, uint64_t term) {
  absl::MutexLock lock(&mu_);
  want_ = serving ? term : 0;
}

void GroupMember::RunRoles() {
  for (;;) {
    uint64_t want, served;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](GroupMember* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return self->stopping_ || self->want_ != self->served_;
          },
          this));
      if (stopping_) return;
      want = want_;
      served = served_;
    }
    if (served != 0) BecomeFollower();
    if (want != 0) BecomeLeader(want);
  }
}

void GroupMember::BecomeLeader(uint64_t term) {
  TermStorage* storage = new TermStorage(replica_.get(), term);
  absl::StatusOr<uint64_t> epoch = ClaimEpoch(storage);
  if (!epoch.ok()) {
    // Leadership ended before it could be claimed: nothing is served in
    // this term, and the next change of role tears down nothing.
    LogLine(absl::StrCat("member ", options_.member_id, " of ", options_.group,
                         " lost leadership before serving: ", epoch.status().message()));
    delete storage;
    absl::MutexLock lock(&mu_);
    served_ = term;
    return;
  }
  absl::StatusOr<std::unique_ptr<Leading>> leading = start_(
      storage, *epoch, [this] { stand_in_.reset(); }, client_status_.get());
  if (!leading.ok()) Fatal(absl::StrCat("cannot serve as leader: ", leading.status().ToString()));
  LogLine(absl::StrCat("member ", options_.member_id, " of ", options_.group,
                       " leads and serves on ", options_.listen));
  absl::MutexLock lock(&mu_);
  term_storage_.reset(storage);
  leading_ = std::move(*leading);
  served_ = term;
  ++leaderships_;
}

void GroupMember::StopLeading(bool replica_too) {
  std::unique_ptr<Leading> leading;
  {
    absl::MutexLock lock(&mu_);
    leading = std::move(leading_);
  }
  if (leading != nullptr) leading->Stop();
  if (replica_too) replica_->Stop();
  // What the store hands back may still call into the node.
  replica_->Settle();
  leading.reset();
  absl::MutexLock lock(&mu_);
  term_storage_.reset();
  served_ = 0;
}

absl::Status GroupMember::StartStandIn() {
  absl::StatusOr<std::unique_ptr<StandInServer>> stand_in =
      StandInServer::Start(options_.listen, options_.service_names, options_.credentials,
                           [this] { return NotLeader(); }, {client_status_.get()});
  if (!stand_in.ok()) return stand_in.status();
  stand_in_ = std::move(*stand_in);
  return absl::OkStatus();
}

void GroupMember::BecomeFollower() {
  StopLeading(/*replica_too=*/false);
  LogLine(absl::StrCat("member ", options_.member_id, " of ", options_.group,
                       " no longer leads; refusing calls with the leader's address"));
  // A leadership lost before it served left the stand-in in place.
  if (stand_in_ != nullptr) return;
  if (absl::Status st = StartStandIn(); !st.ok()) Fatal(std::string(st.message()));
}

std::string GroupMember::RenderMetrics() {
  const GroupStatus s = replica_->Status();
  std::string out;
  const std::string labels =
      absl::StrCat("group=\"", options_.group, "\",member=\"", options_.member_id, "\",role=\"",
                   RoleName(s.state), "\"");
  AppendMetric(&out, "atomq_replica_role", "gauge",
               "1, labelled with this replica's role in its group", 1, labels);
  AppendMetric(&out, "atomq_replica_term", "gauge", "the group's term as this replica knows it",
               double(s.term));
  AppendMetric(&out, "atomq_replica_leader", "gauge", "member id of the leader (0: none known)",
               double(s.leader_id));
  AppendMetric(&out, "atomq_replica_commit_index", "gauge", "last log index known committed",
               double(s.commit_index));
  AppendMetric(&out, "atomq_replica_applied_index", "gauge",
               "this replica's version: the last entry applied to its store",
               double(s.applied_index));
  AppendMetric(&out, "atomq_replica_snapshot_index", "gauge",
               "the log's snapshot point: it holds the entries after it", double(s.snapshot_index));
  AppendMetric(&out, "atomq_replica_state_copies_total", "counter",
               "times this replica installed a copy of another member's state", double(s.copies));
  AppendMetric(&out, "atomq_replica_copying", "gauge",
               "1 while this replica copies another member's state", s.installing ? 1 : 0);
  absl::MutexLock lock(&mu_);
  AppendMetric(&out, "atomq_replica_leaderships_total", "counter",
               "times this replica began serving as leader", double(leaderships_));
  // The leading node renders its store's (this replica's) and the
  // process's own.
  if (leading_ != nullptr) {
    out += leading_->RenderMetrics();
  } else {
    AppendStorageMetrics(&out, replica_->Stats());
    AppendServerMetrics(&out, options_.role, options_.data_dir);
  }
  return out;
}

}  // namespace atomq::replication
