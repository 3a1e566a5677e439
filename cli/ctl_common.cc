#include "cli/ctl_common.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/bearer.h"
#include "common/leader_book.h"
#include "common/server_util.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace atomq::ctl {

int Error(const std::string& msg) {
  std::fprintf(stderr, "atomqctl: %s\n", msg.c_str());
  return 2;
}

std::string DescribeError(const grpc::Status& s) {
  // gRPC's codes are absl's; "?" for a number outside them.
  std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code()));
  return absl::StrCat(name.empty() ? "?" : name, ": ", s.error_message());
}

int RpcError(const char* what, const grpc::Status& s) {
  return Error(absl::StrCat(what, " failed: ", DescribeError(s)));
}

std::shared_ptr<grpc::Channel> Connect(const std::string& addr) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  return DialChannel(addr, args);
}

std::string ServingMember(const Globals& g, const std::string& members) {
  std::vector<std::string> all = SplitMembers(members);
  if (all.size() < 2) return members;
  // An election may be under way: ask again until one serves.
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(g.rpc_timeout_ms);
  do {
    for (const std::string& m : all) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(std::min<uint32_t>(g.rpc_timeout_ms, 1000)));
      grpc::health::v1::HealthCheckResponse resp;
      grpc::Status s = grpc::health::v1::Health::NewStub(Connect(m))
                           ->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp);
      if (s.ok() && resp.status() == grpc::health::v1::HealthCheckResponse::SERVING) return m;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (std::chrono::steady_clock::now() < end);
  return all.front();
}

void SetDeadline(grpc::ClientContext* ctx, const Globals& g) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(g.rpc_timeout_ms));
}

grpc::Status FindParticipantTxn(const Globals& g, v1::ParticipantTxn::Stub& stub,
                                const std::string& id, bool payloads,
                                v1::ListParticipantTxnsResponse* found) {
  v1::ListParticipantTxnsRequest req;
  req.set_payloads(payloads);
  for (;;) {
    CallContext ctx(g);
    v1::ListParticipantTxnsResponse page;
    grpc::Status s = stub.ListTransactions(&ctx, req, &page);
    if (!s.ok()) return s;
    for (const auto& t : page.transactions()) {
      if (t.txn_id() == id) *found->add_transactions() = t;
    }
    for (const auto& h : page.heuristic()) {
      if (h.txn_id() == id) *found->add_heuristic() = h;
    }
    // Pages are in id order: past `id`, it cannot come later.
    const std::string& next = page.next_page_token();
    if (next.empty() || next >= id) return grpc::Status::OK;
    req.set_page_token(next);
  }
}

void PrintJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  std::cout << out;
  if (out.empty() || out.back() != '\n') std::cout << "\n";
}

std::string StateName(v1::TxnState s) {
  switch (s) {
    case v1::PREPARING:
      return "preparing";
    case v1::PREPARED:
      return "prepared";
    case v1::PRECOMMITTED:
      return "precommitted";
    case v1::STATE_COMMITTED:
      return "committed";
    case v1::STATE_ABORTED:
      return "aborted";
    case v1::ENDED:
      return "ended";
    case v1::UNKNOWN:
      return "unknown";
    default:
      return "unspecified";
  }
}

std::string OutcomeName(v1::Outcome o) {
  switch (o) {
    case v1::COMMITTED:
      return "committed";
    case v1::ABORTED:
      return "aborted";
    case v1::PENDING:
      return "pending";
    default:
      return "-";
  }
}

std::string ProtocolName(v1::Protocol p) {
  return p == v1::THREE_PC ? "3pc" : p == v1::TWO_PC ? "2pc" : "-";
}

std::string Age(int64_t since_unix_ms) {
  if (since_unix_ms <= 0) return "-";
  int64_t ms = absl::ToUnixMillis(absl::Now()) - since_unix_ms;
  if (ms < 0) ms = 0;
  if (ms < 10000) return absl::StrFormat("%.1fs", ms / 1000.0);
  if (ms < 3600000) return absl::StrFormat("%dm%02ds", ms / 60000, (ms / 1000) % 60);
  return absl::StrFormat("%dh%02dm", ms / 3600000, (ms / 60000) % 60);
}

std::string JoinSequences(const google::protobuf::RepeatedField<uint64_t>& seqs) {
  std::string out;
  for (uint64_t q : seqs) absl::StrAppend(&out, out.empty() ? "" : " ", q);
  return out;
}

void PrintOutcomeLine(const v1::ExecuteResponse& resp) {
  std::printf("%s %s", resp.txn_id().c_str(),
              resp.outcome() == v1::COMMITTED ? "COMMITTED" : "ABORTED");
  if (!resp.reason().empty()) std::printf(": %s", resp.reason().c_str());
  std::printf("\n");
}

void PrintPreparedTail(const v1::ParticipantTxnInfo& t) {
  std::printf("  coordinator  %s (%s)\n  participants", t.coordinator_id().c_str(),
              t.coordinator_address().c_str());
  for (const auto& p : t.participants()) std::printf(" %s", p.participant().c_str());
  std::printf("\n  ops          %d\n", t.ops_size());
}

namespace {

// "[PARTICIPANT:]QUEUE=PAYLOAD" -> op.
bool ParseEnqueue(const std::string& spec, bool named_participant, v1::Op* op, std::string* err) {
  size_t colon = named_participant ? spec.find(':') : 0;
  size_t eq = spec.find('=');
  if (colon == std::string::npos || eq == std::string::npos || eq < colon) {
    *err = absl::StrCat("--enqueue \"", spec, "\": want ", named_participant ? "PARTICIPANT:" : "",
                        "QUEUE=PAYLOAD");
    return false;
  }
  size_t queue_start = 0;
  if (named_participant) {
    op->set_participant(spec.substr(0, colon));
    queue_start = colon + 1;
  }
  op->mutable_enqueue()->set_queue(spec.substr(queue_start, eq - queue_start));
  op->mutable_enqueue()->set_payload(spec.substr(eq + 1));
  return true;
}

// "[PARTICIPANT:]QUEUE:SEQUENCE:LEASE_TOKEN" -> ack op.
bool ParseAck(const std::string& spec, bool named_participant, v1::Op* op, std::string* err) {
  const size_t first = named_participant ? 1 : 0;  // where QUEUE is
  std::vector<std::string> parts = absl::StrSplit(spec, absl::MaxSplits(':', int(first) + 2));
  uint64_t seq = 0;
  if (parts.size() != first + 3 || !absl::SimpleAtoi(parts[first + 1], &seq)) {
    *err = absl::StrCat("--ack \"", spec, "\": want ", named_participant ? "PARTICIPANT:" : "",
                        "QUEUE:SEQUENCE:LEASE_TOKEN");
    return false;
  }
  if (named_participant) op->set_participant(parts[0]);
  op->mutable_ack()->set_queue(parts[first]);
  op->mutable_ack()->set_sequence(seq);
  op->mutable_ack()->set_lease_token(parts[first + 2]);
  return true;
}

}  // namespace

std::string AddOps(const char* cmd, const std::vector<std::string>& enqueues,
                   const std::vector<std::string>& acks, bool named_participant,
                   google::protobuf::RepeatedPtrField<v1::Op>* ops) {
  std::string err;
  for (const std::string& e : enqueues) {
    if (!ParseEnqueue(e, named_participant, ops->Add(), &err)) return err;
  }
  for (const std::string& a : acks) {
    if (!ParseAck(a, named_participant, ops->Add(), &err)) return err;
  }
  if (ops->empty()) return absl::StrCat(cmd, " needs at least one --enqueue or --ack");
  return "";
}

void PrintNextPage(const std::string& cmd, const std::string& next_page_token) {
  if (next_page_token.empty()) return;
  std::printf("\nmore exist: run `atomqctl %s --cursor=%s` for the next page\n", cmd.c_str(),
              next_page_token.c_str());
}

v1::Protocol ProtocolOf(const std::string& name) {
  if (name == "3pc") return v1::THREE_PC;
  if (name == "2pc") return v1::TWO_PC;
  return v1::PROTOCOL_UNSPECIFIED;
}

std::string DefaultConfigFile() {
  if (const char* env = std::getenv("ATOMQ_CONFIG"); env != nullptr && *env != '\0') return env;
  const char* home = std::getenv("HOME");
  if (home == nullptr) return "";
  const std::string path = std::string(home) + "/.config/atomq/atomqctl.conf";
  std::error_code ec;
  return std::filesystem::exists(path, ec) ? path : "";
}

absl::Status ParseParticipants(Globals* g) {
  g->every_participant.clear();
  absl::StatusOr<std::map<std::string, std::string>> given =
      ParsePeerList(g->participants, "participant");
  if (!given.ok()) return given.status();
  for (const auto& [id, members] : *given) {
    g->every_participant.emplace_back(id, ServingMember(*g, members));
  }
  return absl::OkStatus();
}

int AtEveryParticipant(const Globals& g, const std::function<int(const Globals&)>& one) {
  int worst = 0;
  bool first = true;
  for (const auto& [id, address] : g.every_participant) {
    if (!first) std::printf("\n");
    first = false;
    std::printf("%s (%s)\n", id.c_str(), address.c_str());
    std::fflush(stdout);
    Globals at = g;
    at.participant = address;
    worst = std::max(worst, one(at));
  }
  return worst;
}

}  // namespace atomq::ctl
