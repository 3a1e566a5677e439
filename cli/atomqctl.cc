// atomqctl: run transactions, inspect in-doubt ones, and work with queues.
// Exit status: 0 success (a transaction committed), 1 a transaction aborted,
// 2 a usage error or a failed call (the gRPC status is printed).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "atomq/v1/coordinator.grpc.pb.h"
#include "atomq/v1/participant.grpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"

namespace {

using namespace atomq;  // NOLINT: a command-line tool, one namespace in view

struct Globals {
  std::string coordinator;
  std::string participant;
  uint32_t rpc_timeout_ms = 10000;
  bool json = false;
};

int Error(const std::string& msg) {
  std::fprintf(stderr, "atomqctl: %s\n", msg.c_str());
  return 2;
}

int RpcError(const char* what, const grpc::Status& s) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  int code = s.error_code();
  const char* name = code >= 0 && code <= 16 ? kNames[code] : "?";
  return Error(absl::StrCat(what, " failed: ", name, ": ", s.error_message()));
}

std::shared_ptr<grpc::Channel> Connect(const std::string& addr) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  return grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
}

void SetDeadline(grpc::ClientContext* ctx, const Globals& g) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(g.rpc_timeout_ms));
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
    case v1::COMMITTED: return "committed";
    case v1::ABORTED: return "aborted";
    case v1::PENDING: return "pending";
    default: return "-";
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

// "p1:orders=hello" -> op. The payload is everything after the first '='.
bool ParseEnqueue(const std::string& spec, v1::Op* op, std::string* err) {
  size_t colon = spec.find(':');
  size_t eq = spec.find('=');
  if (colon == std::string::npos || eq == std::string::npos || eq < colon) {
    *err = absl::StrCat("--enqueue \"", spec, "\": want PARTICIPANT:QUEUE=PAYLOAD");
    return false;
  }
  op->set_participant(spec.substr(0, colon));
  op->mutable_enqueue()->set_queue(spec.substr(colon + 1, eq - colon - 1));
  op->mutable_enqueue()->set_payload(spec.substr(eq + 1));
  return true;
}

// "p1:orders:SEQ:TOKEN" -> ack op.
bool ParseAck(const std::string& spec, v1::Op* op, std::string* err) {
  std::vector<std::string> parts = absl::StrSplit(spec, absl::MaxSplits(':', 3));
  uint64_t seq = 0;
  if (parts.size() != 4 || !absl::SimpleAtoi(parts[2], &seq)) {
    *err = absl::StrCat("--ack \"", spec, "\": want PARTICIPANT:QUEUE:SEQUENCE:LEASE_TOKEN");
    return false;
  }
  op->set_participant(parts[0]);
  op->mutable_ack()->set_queue(parts[1]);
  op->mutable_ack()->set_sequence(seq);
  op->mutable_ack()->set_lease_token(parts[3]);
  return true;
}

// "ID COMMITTED" or "ID ABORTED: reason".
void PrintOutcomeLine(const v1::ExecuteResponse& resp) {
  std::printf("%s %s", resp.txn_id().c_str(),
              resp.outcome() == v1::COMMITTED ? "COMMITTED" : "ABORTED");
  if (!resp.reason().empty()) std::printf(": %s", resp.reason().c_str());
  std::printf("\n");
}

int TxnExec(const Globals& g, const std::string& protocol, const std::string& id,
            uint32_t timeout_ms, const std::vector<std::string>& enqueues,
            const std::vector<std::string>& acks) {
  if (g.coordinator.empty()) return Error("txn exec needs --coordinator=ADDR");
  v1::ExecuteRequest req;
  req.set_txn_id(id);
  req.set_timeout_ms(timeout_ms);
  if (protocol == "3pc")
    req.set_protocol(v1::THREE_PC);
  else if (protocol == "2pc")
    req.set_protocol(v1::TWO_PC);
  std::string err;
  for (const std::string& e : enqueues) {
    if (!ParseEnqueue(e, req.add_ops(), &err)) return Error(err);
  }
  for (const std::string& a : acks) {
    if (!ParseAck(a, req.add_ops(), &err)) return Error(err);
  }
  if (req.ops_size() == 0) return Error("txn exec needs at least one --enqueue or --ack");
  auto stub = v1::Coordinator::NewStub(Connect(g.coordinator));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, g);
  v1::ExecuteResponse resp;
  grpc::Status s = stub->Execute(&ctx, req, &resp);
  if (!s.ok()) return RpcError("Execute", s);
  bool committed = resp.outcome() == v1::COMMITTED;
  if (g.json) {
    PrintJson(resp);
  } else {
    PrintOutcomeLine(resp);
    for (int i = 0; i < req.ops_size() && i < resp.results_size(); ++i) {
      const v1::Op& op = req.ops(i);
      if (op.has_enqueue() && committed) {
        std::printf("  %s:%s sequence %llu\n", op.participant().c_str(),
                    op.enqueue().queue().c_str(),
                    static_cast<unsigned long long>(resp.results(i).sequence()));
      }
    }
  }
  return committed ? 0 : 1;
}

// Heuristic outcomes (txn resolve) at a participant.
const char kHeuristicWarning[] =
    "WARNING: this is a heuristic decision: it overrides the commit protocol. If the\n"
    "coordinator or another participant decided otherwise, the transaction ends up\n"
    "committed at some participants and aborted at others. Use it only when the\n"
    "coordinator's log is lost for good, and resolve every participant the same way.\n";

void PrintHeuristic(const v1::HeuristicOutcome& h) {
  std::printf("txn %s\n  outcome       %s (HEURISTIC: decided by an operator)\n", h.txn_id().c_str(),
              StateName(h.state()).c_str());
  std::printf("  resolved      %s ago, was %s\n", Age(h.resolved_unix_ms()).c_str(),
              StateName(h.resolved_from()).c_str());
  std::printf("  note          %s\n", h.operator_note().empty() ? "-" : h.operator_note().c_str());
  std::printf("  coordinator   %s\n  participants ", h.coordinator_id().c_str());
  for (const auto& p : h.participants()) std::printf(" %s", p.participant().c_str());
  std::printf("\n");
  if (h.conflicting_state() != v1::TXN_STATE_UNSPECIFIED) {
    std::printf("  MIXED         %s says %s (%s ago): repair by hand\n", h.conflict_by().c_str(),
                StateName(h.conflicting_state()).c_str(), Age(h.conflict_unix_ms()).c_str());
  }
}

void PrintHeuristicTable(const v1::ListParticipantTxnsResponse& resp) {
  std::printf("%-40s %-9s %-9s %-28s %s\n", "HEURISTIC TXN", "OUTCOME", "AGE", "MIXED", "NOTE");
  for (const auto& h : resp.heuristic()) {
    std::string mixed = "no";
    if (h.conflicting_state() != v1::TXN_STATE_UNSPECIFIED) {
      mixed = absl::StrCat("YES: ", StateName(h.conflicting_state()), " elsewhere");
    }
    std::printf("%-40s %-9s %-9s %-28s %s\n", h.txn_id().c_str(), StateName(h.state()).c_str(),
                Age(h.resolved_unix_ms()).c_str(), mixed.c_str(), h.operator_note().c_str());
  }
}

bool ParseStateFilter(const std::string& s, std::vector<v1::TxnState>* out) {
  if (s.empty() || s == "in-doubt" || s == "unfinished") return true;  // server default
  static const std::pair<const char*, v1::TxnState> kStates[] = {{"preparing", v1::PREPARING},
                                                                 {"precommitted", v1::PRECOMMITTED},
                                                                 {"committed", v1::STATE_COMMITTED},
                                                                 {"aborted", v1::STATE_ABORTED},
                                                                 {"ended", v1::ENDED}};
  for (const auto& [name, st] : kStates) {
    if (s == name) {
      out->push_back(st);
      return true;
    }
  }
  return false;
}

int TxnList(const Globals& g, const std::string& state) {
  if (!g.participant.empty()) {
    auto stub = v1::ParticipantTxn::NewStub(Connect(g.participant));
    grpc::ClientContext ctx;
    SetDeadline(&ctx, g);
    v1::ListParticipantTxnsResponse resp;
    grpc::Status s = stub->ListTransactions(&ctx, v1::ListParticipantTxnsRequest(), &resp);
    if (!s.ok()) return RpcError("ListTransactions", s);
    if (state == "in-doubt") {
      v1::ListParticipantTxnsResponse only;
      for (const auto& t : resp.transactions()) {
        if (t.in_doubt()) *only.add_transactions() = t;
      }
      resp = only;
    }
    if (state == "heuristic") resp.clear_transactions();
    if (state == "heuristic" && !g.json) {
      PrintHeuristicTable(resp);
      return 0;
    }
    if (g.json) {
      PrintJson(resp);
      return 0;
    }
    std::printf("%-40s %-5s %-13s %-8s %-9s %s\n", "TXN", "PROTO", "STATE", "IN-DOUBT", "AGE",
                "COORDINATOR");
    for (const auto& t : resp.transactions()) {
      std::printf("%-40s %-5s %-13s %-8s %-9s %s (%s)\n", t.txn_id().c_str(),
                  ProtocolName(t.protocol()).c_str(), StateName(t.state()).c_str(),
                  t.in_doubt() ? "yes" : "no", Age(t.prepared_unix_ms()).c_str(),
                  t.coordinator_id().c_str(), t.coordinator_address().c_str());
    }
    if (resp.heuristic_size() > 0) {
      std::printf("\n");
      PrintHeuristicTable(resp);
    }
    return 0;
  }
  if (g.coordinator.empty())
    return Error("txn list needs --coordinator=ADDR or --participant=ADDR");
  v1::ListTransactionsRequest req;
  std::vector<v1::TxnState> states;
  if (!ParseStateFilter(state, &states)) {
    return Error(absl::StrCat("--state \"", state,
                              "\": want in-doubt, preparing, precommitted, committed, aborted "
                              "or ended"));
  }
  for (v1::TxnState s : states) req.add_states(s);
  auto stub = v1::Coordinator::NewStub(Connect(g.coordinator));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, g);
  v1::ListTransactionsResponse resp;
  grpc::Status s = stub->ListTransactions(&ctx, req, &resp);
  if (!s.ok()) return RpcError("ListTransactions", s);
  if (g.json) {
    PrintJson(resp);
    return 0;
  }
  std::printf("%-40s %-5s %-13s %-10s %-9s %s\n", "TXN", "PROTO", "STATE", "OUTCOME", "AGE",
              "WAITING FOR");
  for (const auto& t : resp.transactions()) {
    std::string waiting;
    for (const auto& p : t.participants()) {
      if (!p.acknowledged()) absl::StrAppend(&waiting, waiting.empty() ? "" : ",", p.participant());
    }
    std::printf("%-40s %-5s %-13s %-10s %-9s %s\n", t.txn_id().c_str(),
                ProtocolName(t.protocol()).c_str(), StateName(t.state()).c_str(),
                OutcomeName(t.outcome()).c_str(), Age(t.created_unix_ms()).c_str(),
                waiting.c_str());
  }
  return 0;
}

int TxnShow(const Globals& g, const std::string& id) {
  if (!g.participant.empty()) {
    auto stub = v1::ParticipantTxn::NewStub(Connect(g.participant));
    grpc::ClientContext ctx;
    SetDeadline(&ctx, g);
    v1::ListParticipantTxnsResponse resp;
    grpc::Status s = stub->ListTransactions(&ctx, v1::ListParticipantTxnsRequest(), &resp);
    if (!s.ok()) return RpcError("ListTransactions", s);
    for (const auto& t : resp.transactions()) {
      if (t.txn_id() != id) continue;
      if (g.json) {
        PrintJson(t);
        return 0;
      }
      std::printf(
          "txn %s\n  protocol     %s\n  state        %s%s\n  prepared     %s ago\n"
          "  coordinator  %s (%s)\n  participants",
          t.txn_id().c_str(), ProtocolName(t.protocol()).c_str(), StateName(t.state()).c_str(),
          t.in_doubt() ? " (in doubt)" : "", Age(t.prepared_unix_ms()).c_str(),
          t.coordinator_id().c_str(), t.coordinator_address().c_str());
      for (const auto& p : t.participants()) std::printf(" %s", p.participant().c_str());
      std::printf("\n  ops          %d\n", t.ops_size());
      return 0;
    }
    for (const auto& h : resp.heuristic()) {
      if (h.txn_id() != id) continue;
      if (g.json) {
        PrintJson(h);
      } else {
        PrintHeuristic(h);
      }
      return 0;
    }
    return Error(absl::StrCat("txn ", id, " is not prepared on this participant"));
  }
  if (g.coordinator.empty())
    return Error("txn show needs --coordinator=ADDR or --participant=ADDR");
  auto stub = v1::Coordinator::NewStub(Connect(g.coordinator));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, g);
  v1::GetTransactionRequest req;
  req.set_txn_id(id);
  v1::TransactionInfo t;
  grpc::Status s = stub->GetTransaction(&ctx, req, &t);
  if (!s.ok()) return RpcError("GetTransaction", s);
  if (g.json) {
    PrintJson(t);
    return 0;
  }
  std::printf("txn %s\n  protocol  %s\n  state     %s\n  outcome   %s\n  age       %s\n",
              t.txn_id().c_str(), ProtocolName(t.protocol()).c_str(),
              StateName(t.state()).c_str(), OutcomeName(t.outcome()).c_str(),
              Age(t.created_unix_ms()).c_str());
  if (!t.reason().empty()) std::printf("  reason    %s\n", t.reason().c_str());
  std::printf("  participants:\n");
  for (const auto& p : t.participants()) {
    std::printf("    %-20s %-13s %s\n", p.participant().c_str(), StateName(p.state()).c_str(),
                p.acknowledged() ? "acknowledged" : "not acknowledged");
  }
  for (int i = 0; i < t.ops_size(); ++i) {
    const v1::Op& op = t.ops(i);
    uint64_t seq = i < t.results_size() ? t.results(i).sequence() : 0;
    if (op.has_enqueue()) {
      std::printf("  op %d: enqueue %s:%s (%zu bytes)", i, op.participant().c_str(),
                  op.enqueue().queue().c_str(), op.enqueue().payload().size());
    } else {
      std::printf("  op %d: ack %s:%s #%llu", i, op.participant().c_str(), op.ack().queue().c_str(),
                  static_cast<unsigned long long>(op.ack().sequence()));
    }
    if (seq != 0) std::printf(" -> sequence %llu", static_cast<unsigned long long>(seq));
    std::printf("\n");
  }
  return 0;
}

// --- operator resolution of in-doubt transactions (heuristic outcomes) ---

int TxnResolve(const Globals& g, const std::string& id, bool commit, bool abort,
               const std::string& note, bool yes) {
  if (g.participant.empty()) return Error("txn resolve needs --participant=ADDR");
  if (commit == abort) return Error("txn resolve needs exactly one of --commit and --abort");
  auto stub = v1::ParticipantTxn::NewStub(Connect(g.participant));
  if (!yes) {
    std::printf("would resolve txn %s at %s: %s it here (heuristic)\n", id.c_str(),
                g.participant.c_str(), commit ? "COMMIT" : "ABORT");
    grpc::ClientContext ctx;
    SetDeadline(&ctx, g);
    v1::ListParticipantTxnsResponse resp;
    grpc::Status s = stub->ListTransactions(&ctx, v1::ListParticipantTxnsRequest(), &resp);
    bool found = false;
    if (!s.ok()) resp.Clear();
    for (const auto& t : resp.transactions()) {
      if (t.txn_id() != id) continue;
      found = true;
      std::printf("  state        %s%s, prepared %s ago\n  coordinator  %s (%s)\n"
                  "  participants",
                  StateName(t.state()).c_str(), t.in_doubt() ? " (in doubt)" : " (NOT in doubt)",
                  Age(t.prepared_unix_ms()).c_str(), t.coordinator_id().c_str(),
                  t.coordinator_address().c_str());
      for (const auto& p : t.participants()) std::printf(" %s", p.participant().c_str());
      std::printf("\n  ops          %d\n", t.ops_size());
      if (t.state() == v1::PRECOMMITTED && abort) {
        std::printf("  note: it is PRECOMMITTED (3PC): every participant voted YES and a\n"
                    "  commit was under way; aborting it likely contradicts the others.\n");
      }
    }
    if (!s.ok()) {
      std::printf("  (its state could not be read: %s)\n", s.error_message().c_str());
    } else if (!found) {
      std::printf("  it is not prepared on this participant: the call would be refused\n");
    }
    std::printf("%s", kHeuristicWarning);
    std::fflush(stdout);
    return Error("refusing without --yes");
  }
  v1::ResolveRequest req;
  req.set_txn_id(id);
  req.set_outcome(commit ? v1::COMMITTED : v1::ABORTED);
  req.set_operator_note(note);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, g);
  v1::ResolveResponse resp;
  grpc::Status s = stub->Resolve(&ctx, req, &resp);
  if (!s.ok()) return RpcError("Resolve", s);
  if (g.json) {
    PrintJson(resp);
    return 0;
  }
  std::printf("%s %s here (%s)\n", id.c_str(),
              resp.state() == v1::STATE_COMMITTED ? "COMMITTED" : "ABORTED",
              resp.heuristic() ? "heuristic, durable" : "already, by the protocol: not heuristic");
  if (resp.state() == v1::STATE_COMMITTED) {
    std::string seqs;
    for (uint64_t q : resp.sequences()) absl::StrAppend(&seqs, seqs.empty() ? "" : " ", q);
    std::printf("  sequences [%s]\n", seqs.c_str());
  }
  std::printf("  resolve every other participant of %s the same way\n", id.c_str());
  return 0;
}

// --- interactive transactions: begin / stage / commit / rollback ---

int TxnBegin(const Globals& g, const std::string& protocol, const std::string& id,
             uint32_t timeout_ms) {
  if (g.coordinator.empty()) return Error("txn begin needs --coordinator=ADDR");
  v1::BeginTxnRequest req;
  req.set_txn_id(id);
  req.set_timeout_ms(timeout_ms);
  if (protocol == "3pc") req.set_protocol(v1::THREE_PC);
  if (protocol == "2pc") req.set_protocol(v1::TWO_PC);
  auto stub = v1::Coordinator::NewStub(Connect(g.coordinator));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, g);
  v1::BeginTxnResponse resp;
  grpc::Status s = stub->Begin(&ctx, req, &resp);
  if (!s.ok()) return RpcError("Begin", s);
  if (g.json) {
    PrintJson(resp);
  } else {
    std::printf("%s expires_unix_ms=%lld\n", resp.txn_id().c_str(),
                static_cast<long long>(resp.expires_unix_ms()));
  }
  return 0;
}

// "p1" or "p1:3" (3 ops staged there).
bool ParseStagedAt(const std::string& spec, v1::TxnParticipant* p, std::string* err) {
  std::vector<std::string> parts = absl::StrSplit(spec, absl::MaxSplits(':', 1));
  uint32_t n = 0;
  if (parts[0].empty() || (parts.size() == 2 && !absl::SimpleAtoi(parts[1], &n))) {
    *err = absl::StrCat("--staged \"", spec, "\": want PARTICIPANT or PARTICIPANT:OPS");
    return false;
  }
  p->set_participant(parts[0]);
  p->set_staged_ops(n);
  return true;
}

int TxnCommit(const Globals& g, const std::string& id, const std::vector<std::string>& staged) {
  if (g.coordinator.empty()) return Error("txn commit needs --coordinator=ADDR");
  v1::CommitTxnRequest req;
  req.set_txn_id(id);
  std::string err;
  for (const std::string& sp : staged) {
    if (!ParseStagedAt(sp, req.add_participants(), &err)) return Error(err);
  }
  if (req.participants_size() == 0) return Error("txn commit needs --staged=PARTICIPANT[:OPS]");
  auto stub = v1::Coordinator::NewStub(Connect(g.coordinator));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, g);
  v1::ExecuteResponse resp;
  grpc::Status s = stub->Commit(&ctx, req, &resp);
  if (!s.ok()) return RpcError("Commit", s);
  bool committed = resp.outcome() == v1::COMMITTED;
  if (g.json) {
    PrintJson(resp);
  } else {
    PrintOutcomeLine(resp);
    for (const v1::StagedResult& r : resp.staged()) {
      if (!committed) continue;
      std::string seqs;
      for (uint64_t q : r.sequences()) absl::StrAppend(&seqs, seqs.empty() ? "" : " ", q);
      std::printf("  %s sequences [%s]\n", r.participant().c_str(), seqs.c_str());
    }
  }
  return committed ? 0 : 1;
}

int TxnRollback(const Globals& g, const std::string& id, const std::vector<std::string>& staged) {
  if (g.coordinator.empty()) return Error("txn rollback needs --coordinator=ADDR");
  v1::RollbackTxnRequest req;
  req.set_txn_id(id);
  std::string err;
  for (const std::string& sp : staged) {
    if (!ParseStagedAt(sp, req.add_participants(), &err)) return Error(err);
  }
  auto stub = v1::Coordinator::NewStub(Connect(g.coordinator));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, g);
  v1::RollbackTxnResponse resp;
  grpc::Status s = stub->Rollback(&ctx, req, &resp);
  if (!s.ok()) return RpcError("Rollback", s);
  if (g.json) {
    PrintJson(resp);
  } else {
    std::printf("%s rolled back\n", id.c_str());
  }
  return 0;
}

int TxnStage(const Globals& g, const std::string& id, const std::vector<std::string>& enqueues,
             const std::vector<std::string>& acks, int64_t expires_unix_ms, uint32_t batch) {
  if (g.participant.empty()) return Error("txn stage needs --participant=ADDR");
  v1::StageRequest req;
  req.set_txn_id(id);
  req.set_expires_unix_ms(expires_unix_ms);
  req.set_batch(batch);
  for (const std::string& e : enqueues) {
    size_t eq = e.find('=');
    if (eq == std::string::npos) {
      return Error(absl::StrCat("--enqueue \"", e, "\": want QUEUE=PAYLOAD"));
    }
    v1::Op* op = req.add_ops();  // participant left empty: the node fills in its own id
    op->mutable_enqueue()->set_queue(e.substr(0, eq));
    op->mutable_enqueue()->set_payload(e.substr(eq + 1));
  }
  for (const std::string& a : acks) {
    std::vector<std::string> parts = absl::StrSplit(a, absl::MaxSplits(':', 2));
    uint64_t seq = 0;
    if (parts.size() != 3 || !absl::SimpleAtoi(parts[1], &seq)) {
      return Error(absl::StrCat("--ack \"", a, "\": want QUEUE:SEQUENCE:LEASE_TOKEN"));
    }
    v1::Op* op = req.add_ops();
    op->mutable_ack()->set_queue(parts[0]);
    op->mutable_ack()->set_sequence(seq);
    op->mutable_ack()->set_lease_token(parts[2]);
  }
  if (req.ops_size() == 0) return Error("txn stage needs at least one --enqueue or --ack");
  auto stub = v1::ParticipantTxn::NewStub(Connect(g.participant));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, g);
  v1::StageResponse resp;
  grpc::Status s = stub->Stage(&ctx, req, &resp);
  if (!s.ok()) return RpcError("Stage", s);
  if (g.json) {
    PrintJson(resp);
  } else {
    std::printf("%s: %u ops staged here, kept until %lld\n", id.c_str(), resp.ops_staged(),
                static_cast<long long>(resp.expires_unix_ms()));
  }
  return 0;
}

// Arguments of every `queue` subcommand.
struct QueueArgs {
  std::string name;
  uint32_t max = 1;
  uint32_t lease_ms = 0;
  std::string wait;  // a duration: "500ms", "5s", "1m"; a bare number is ms
  bool no_ack = false;
  bool auto_ack = false;
  uint32_t max_deliveries = 0;
  std::string dead_letter_queue;
  std::string payload;
  std::vector<std::string> headers;  // KEY=VALUE
  std::string producer_id;
  uint64_t producer_sequence = 0;
  uint64_t sequence = 0;
  std::string token;
  bool dead_letter = false;
  std::string reason;
};

bool ParseWait(const std::string& s, uint32_t* ms) {
  if (s.empty()) {
    *ms = 0;
    return true;
  }
  if (absl::SimpleAtoi(s, ms)) return true;
  absl::Duration d;
  if (!absl::ParseDuration(s, &d) || d < absl::ZeroDuration() || d > absl::Hours(1)) return false;
  *ms = static_cast<uint32_t>(absl::ToInt64Milliseconds(d));
  return true;
}

void PrintQueues(const v1::ListQueuesResponse& resp) {
  std::printf("%-30s %10s %8s %8s %8s %8s %s\n", "QUEUE", "VERSION", "READY", "LEASED", "IN-TXN",
              "MAX-DEL", "DEAD-LETTER");
  for (const auto& q : resp.queues()) {
    std::printf("%-30s %10llu %8llu %8llu %8llu %8s %s\n", q.name().c_str(),
                static_cast<unsigned long long>(q.version()),
                static_cast<unsigned long long>(q.ready()),
                static_cast<unsigned long long>(q.leased()),
                static_cast<unsigned long long>(q.pending_in_txn()),
                q.max_deliveries() == 0 ? "-" : absl::StrCat(q.max_deliveries()).c_str(),
                q.dead_letter_queue().empty() ? "-" : q.dead_letter_queue().c_str());
  }
}

int QueueCmd(const Globals& g, const std::string& cmd, const QueueArgs& a) {
  if (g.participant.empty()) return Error(absl::StrCat("queue ", cmd, " needs --participant=ADDR"));
  auto stub = v1::Queue::NewStub(Connect(g.participant));
  grpc::ClientContext ctx;
  if (cmd != "receive") SetDeadline(&ctx, g);
  const std::string& name = a.name;
  if (cmd == "create") {
    v1::CreateQueueRequest req;
    req.set_name(name);
    req.set_max_deliveries(a.max_deliveries);
    req.set_dead_letter_queue(a.dead_letter_queue);
    v1::CreateQueueResponse resp;
    grpc::Status s = stub->CreateQueue(&ctx, req, &resp);
    if (!s.ok()) return RpcError("CreateQueue", s);
    if (g.json)
      PrintJson(resp);
    else
      std::printf("queue %s created\n", name.c_str());
    return 0;
  }
  if (cmd == "delete") {
    v1::DeleteQueueRequest req;
    req.set_name(name);
    v1::DeleteQueueResponse resp;
    grpc::Status s = stub->DeleteQueue(&ctx, req, &resp);
    if (!s.ok()) return RpcError("DeleteQueue", s);
    if (!g.json)
      std::printf("queue %s deleted\n", name.c_str());
    else
      PrintJson(resp);
    return 0;
  }
  if (cmd == "list" || cmd == "info") {
    v1::ListQueuesResponse resp;
    grpc::Status s = stub->ListQueues(&ctx, v1::ListQueuesRequest(), &resp);
    if (!s.ok()) return RpcError("ListQueues", s);
    if (cmd == "info") {
      v1::ListQueuesResponse only;
      for (const auto& q : resp.queues()) {
        if (q.name() == name) *only.add_queues() = q;
      }
      if (only.queues_size() == 0) {
        return Error(absl::StrCat("queue ", name, " does not exist on ", g.participant));
      }
      if (g.json) {
        PrintJson(only.queues(0));
        return 0;
      }
      const v1::QueueInfo& q = only.queues(0);
      std::printf(
          "queue %s\n  version          %llu\n  ready            %llu\n  leased           %llu\n"
          "  pending in txn   %llu\n  max deliveries   %s\n  dead-letter      %s\n"
          "  created          %s ago\n",
          q.name().c_str(), static_cast<unsigned long long>(q.version()),
          static_cast<unsigned long long>(q.ready()), static_cast<unsigned long long>(q.leased()),
          static_cast<unsigned long long>(q.pending_in_txn()),
          q.max_deliveries() == 0 ? "unlimited" : absl::StrCat(q.max_deliveries()).c_str(),
          q.dead_letter_queue().empty() ? "-" : q.dead_letter_queue().c_str(),
          Age(q.created_unix_ms()).c_str());
      return 0;
    }
    if (g.json) {
      PrintJson(resp);
      return 0;
    }
    PrintQueues(resp);
    return 0;
  }
  if (cmd == "send") {
    v1::SendRequest req;
    req.set_queue(name);
    req.set_payload(a.payload);
    for (const std::string& h : a.headers) {
      size_t eq = h.find('=');
      if (eq == std::string::npos) return Error(absl::StrCat("--header \"", h, "\": want KEY=VALUE"));
      (*req.mutable_headers())[h.substr(0, eq)] = h.substr(eq + 1);
    }
    req.set_producer_id(a.producer_id);
    req.set_producer_sequence(a.producer_sequence);
    v1::SendResponse resp;
    grpc::Status s = stub->Send(&ctx, req, &resp);
    if (!s.ok()) return RpcError("Send", s);
    if (g.json) {
      PrintJson(resp);
    } else if (resp.duplicate()) {
      std::printf("%s: duplicate (already sent as sequence %llu); nothing enqueued\n", name.c_str(),
                  static_cast<unsigned long long>(resp.sequence()));
    } else {
      std::printf("%s sequence %llu\n", name.c_str(),
                  static_cast<unsigned long long>(resp.sequence()));
    }
    return 0;
  }
  if (cmd == "ack") {
    v1::AckRequest req;
    req.set_queue(name);
    req.set_sequence(a.sequence);
    req.set_lease_token(a.token);
    v1::AckResponse resp;
    grpc::Status s = stub->Ack(&ctx, req, &resp);
    if (!s.ok()) return RpcError("Ack", s);
    if (g.json)
      PrintJson(resp);
    else
      std::printf("%s #%llu acked\n", name.c_str(), static_cast<unsigned long long>(a.sequence));
    return 0;
  }
  if (cmd == "nack") {
    v1::NackRequest req;
    req.set_queue(name);
    req.set_sequence(a.sequence);
    req.set_lease_token(a.token);
    req.set_dead_letter(a.dead_letter);
    req.set_reason(a.reason);
    v1::NackResponse resp;
    grpc::Status s = stub->Nack(&ctx, req, &resp);
    if (!s.ok()) return RpcError("Nack", s);
    if (g.json) {
      PrintJson(resp);
    } else if (resp.dead_lettered()) {
      std::printf("%s #%llu dead-lettered (sequence %llu there)\n", name.c_str(),
                  static_cast<unsigned long long>(a.sequence),
                  static_cast<unsigned long long>(resp.dead_letter_sequence()));
    } else {
      std::printf("%s #%llu returned to the queue\n", name.c_str(),
                  static_cast<unsigned long long>(a.sequence));
    }
    return 0;
  }
  // receive
  uint32_t wait_ms = 0;
  if (!ParseWait(a.wait, &wait_ms)) {
    return Error(absl::StrCat("--wait \"", a.wait, "\": want a duration such as 500ms, 5s, 1m"));
  }
  if (a.auto_ack && a.no_ack) return Error("--auto-ack and --no-ack exclude each other");
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(uint64_t{g.rpc_timeout_ms} + wait_ms));
  v1::ReceiveRequest req;
  req.set_queue(name);
  req.set_max_messages(a.max);
  req.set_lease_ms(a.lease_ms);
  req.set_wait_ms(wait_ms);
  req.set_auto_ack(a.auto_ack);
  req.set_consumer("atomqctl");
  v1::ReceiveResponse resp;
  grpc::Status s = stub->Receive(&ctx, req, &resp);
  if (!s.ok()) return RpcError("Receive", s);
  const bool client_ack = !a.auto_ack && !a.no_ack;
  for (const v1::Delivery& d : resp.deliveries()) {
    if (client_ack) {
      grpc::ClientContext actx;
      SetDeadline(&actx, g);
      v1::AckRequest ack;
      ack.set_queue(d.queue());
      ack.set_sequence(d.sequence());
      ack.set_lease_token(d.lease_token());
      v1::AckResponse aresp;
      grpc::Status as = stub->Ack(&actx, ack, &aresp);
      if (!as.ok()) return RpcError("Ack", as);
    }
    if (!g.json) {
      std::string how = a.no_ack ? absl::StrCat(", lease ", d.lease_token()) : ", acked";
      std::printf("%s #%llu (delivery %u%s): %s\n", d.queue().c_str(),
                  static_cast<unsigned long long>(d.sequence()), d.delivery_count(), how.c_str(),
                  d.payload().c_str());
    }
  }
  if (g.json)
    PrintJson(resp);
  else if (resp.deliveries_size() == 0)
    std::printf("no messages ready in %s\n", name.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"atomqctl: run and inspect atomq transactions and queues"};
  app.require_subcommand(1);
  Globals g;
  app.add_option("--coordinator", g.coordinator, "coordinator address host:port");
  app.add_option("--participant", g.participant, "participant address host:port");
  app.add_option("--rpc_timeout_ms", g.rpc_timeout_ms, "deadline of each call")
      ->capture_default_str();
  app.add_flag("--json", g.json, "print JSON instead of a table");

  int rc = 0;
  CLI::App* txn = app.add_subcommand("txn", "transactions");
  txn->require_subcommand(1);
  CLI::App* exec = txn->add_subcommand("exec", "run one atomic transaction (coordinator)");
  std::string protocol, txn_id;
  uint32_t timeout_ms = 0;
  std::vector<std::string> enqueues, acks;
  exec->add_option("--protocol", protocol, "2pc or 3pc (default: the coordinator's)")
      ->check(CLI::IsMember({"2pc", "3pc"}));
  exec->add_option("--id", txn_id, "transaction id (a retry with the same id is idempotent)");
  exec->add_option("--timeout_ms", timeout_ms, "vote deadline (default: the coordinator's)");
  exec->add_option("--enqueue", enqueues, "PARTICIPANT:QUEUE=PAYLOAD (repeatable)");
  exec->add_option("--ack", acks, "PARTICIPANT:QUEUE:SEQUENCE:LEASE_TOKEN (repeatable)");
  exec->callback([&] { rc = TxnExec(g, protocol, txn_id, timeout_ms, enqueues, acks); });

  CLI::App* list = txn->add_subcommand("list", "transactions not finished, with state and age");
  std::string state;
  list->add_option("--state", state,
                   "in-doubt (default), preparing, precommitted, committed, aborted, ended; "
                   "heuristic (participant: outcomes decided by an operator)");
  list->callback([&] { rc = TxnList(g, state); });

  CLI::App* show = txn->add_subcommand("show", "one transaction with each participant's state");
  std::string show_id;
  show->add_option("ID", show_id, "transaction id")->required();
  show->callback([&] { rc = TxnShow(g, show_id); });

  CLI::App* resolve = txn->add_subcommand(
      "resolve", "last resort: commit or abort an in-doubt transaction here (heuristic)");
  std::string resolve_id, resolve_note;
  bool resolve_commit = false, resolve_abort = false, resolve_yes = false;
  resolve->add_option("ID", resolve_id, "transaction id (from txn list --state=in-doubt)")
      ->required();
  resolve->add_flag("--commit", resolve_commit, "commit it here");
  resolve->add_flag("--abort", resolve_abort, "abort it here");
  resolve->add_option("--note", resolve_note, "why and who, kept with the outcome");
  resolve->add_flag("--yes", resolve_yes,
                    "really do it (without: print what would be done and refuse)");
  resolve->callback([&] {
    rc = TxnResolve(g, resolve_id, resolve_commit, resolve_abort, resolve_note, resolve_yes);
  });

  // Interactive transactions: begin (coordinator), stage (participant),
  // commit / rollback (coordinator).
  CLI::App* begin = txn->add_subcommand("begin", "open an interactive transaction (coordinator)");
  std::string begin_protocol, begin_id;
  uint32_t begin_timeout_ms = 0;
  begin->add_option("--protocol", begin_protocol, "2pc or 3pc (default: the coordinator's)")
      ->check(CLI::IsMember({"2pc", "3pc"}));
  begin->add_option("--id", begin_id, "transaction id (default: minted by the coordinator)");
  begin->add_option("--timeout_ms", begin_timeout_ms,
                    "how long it stays open (default: the coordinator's --txn_timeout_ms)");
  begin->callback([&] { rc = TxnBegin(g, begin_protocol, begin_id, begin_timeout_ms); });

  CLI::App* stage =
      txn->add_subcommand("stage", "stage ops under an open transaction (participant)");
  std::string stage_id;
  std::vector<std::string> stage_enqueues, stage_acks;
  int64_t stage_expires = 0;
  uint32_t stage_batch = 0;
  stage->add_option("ID", stage_id, "transaction id from txn begin")->required();
  stage->add_option("--enqueue", stage_enqueues, "QUEUE=PAYLOAD (repeatable)");
  stage->add_option("--ack", stage_acks, "QUEUE:SEQUENCE:LEASE_TOKEN (repeatable)");
  stage->add_option("--expires_unix_ms", stage_expires,
                    "from txn begin (default: the participant's --stage_timeout_ms_max)");
  stage->add_option("--batch", stage_batch,
                    "1-based number of this stage call, so a retry applies once (0: none)");
  stage->callback(
      [&] { rc = TxnStage(g, stage_id, stage_enqueues, stage_acks, stage_expires, stage_batch); });

  std::string end_id;
  std::vector<std::string> end_staged;
  CLI::App* commit =
      txn->add_subcommand("commit", "commit an interactive transaction (coordinator)");
  commit->add_option("ID", end_id, "transaction id")->required();
  commit->add_option("--staged", end_staged,
                     "PARTICIPANT[:OPS] that staged work, with its op count (repeatable)");
  commit->callback([&] { rc = TxnCommit(g, end_id, end_staged); });
  CLI::App* rollback =
      txn->add_subcommand("rollback", "roll back an interactive transaction (coordinator)");
  rollback->add_option("ID", end_id, "transaction id")->required();
  rollback->add_option("--staged", end_staged,
                       "PARTICIPANT that may hold staged work (repeatable)");
  rollback->callback([&] { rc = TxnRollback(g, end_id, end_staged); });

  CLI::App* queue = app.add_subcommand("queue", "queues on a participant");
  queue->require_subcommand(1);
  QueueArgs qa;
  auto queue_sub = [&](const char* cmd, const char* what) {
    CLI::App* sub = queue->add_subcommand(cmd, what);
    std::string c = cmd;
    sub->callback([&, c] { rc = QueueCmd(g, c, qa); });
    return sub;
  };
  CLI::App* create = queue_sub("create", "create a queue");
  create->add_option("NAME", qa.name, "queue name")->required();
  create->add_option("--max_deliveries", qa.max_deliveries,
                     "deliveries before a message is dead-lettered (0 = unlimited)");
  create->add_option("--dead_letter_queue", qa.dead_letter_queue,
                     "an existing queue that takes dead-lettered messages");
  queue_sub("delete", "delete a queue and its messages")
      ->add_option("NAME", qa.name, "queue name")
      ->required();
  queue_sub("list", "queues with version and counts");
  queue_sub("info", "one queue: version, counts, options")
      ->add_option("NAME", qa.name, "queue name")
      ->required();
  CLI::App* send = queue_sub("send", "enqueue one message outside a transaction (durable)");
  send->add_option("NAME", qa.name, "queue name")->required();
  send->add_option("PAYLOAD", qa.payload, "message payload")->required();
  send->add_option("--header", qa.headers, "KEY=VALUE (repeatable)");
  send->add_option("--producer_id", qa.producer_id, "producer id, for deduplication of retries");
  send->add_option("--producer_sequence", qa.producer_sequence,
                   "this message's number from that producer (not above the last: duplicate)");
  CLI::App* recv = queue_sub("receive", "receive messages (acked after printing by default)");
  recv->add_option("NAME", qa.name, "queue name")->required();
  recv->add_option("--max", qa.max, "messages at most")->capture_default_str();
  recv->add_option("--wait", qa.wait, "wait this long for a message (e.g. 500ms, 5s)");
  recv->add_option("--lease_ms", qa.lease_ms, "lease (default: the participant's)");
  recv->add_flag("--no-ack", qa.no_ack, "leave them leased (prints the lease tokens)");
  recv->add_flag("--auto-ack", qa.auto_ack,
                 "the participant deletes them (durably) before answering");
  for (const char* c : {"ack", "nack"}) {
    CLI::App* sub = queue_sub(c, std::string(c) == "ack" ? "ack (delete) a leased message"
                                                          : "return a leased message, or "
                                                            "dead-letter it");
    sub->add_option("NAME", qa.name, "queue name")->required();
    sub->add_option("SEQUENCE", qa.sequence, "message sequence")->required();
    sub->add_option("LEASE_TOKEN", qa.token, "lease token from receive --no-ack")->required();
    if (std::string(c) == "nack") {
      sub->add_flag("--dead-letter", qa.dead_letter, "to the queue's dead-letter queue");
      sub->add_option("--reason", qa.reason, "recorded with a dead-lettered message");
    }
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  return rc;
}
