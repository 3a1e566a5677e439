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
    std::printf("%s %s", resp.txn_id().c_str(), committed ? "COMMITTED" : "ABORTED");
    if (!resp.reason().empty()) std::printf(": %s", resp.reason().c_str());
    std::printf("\n");
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
  std::printf("%-40s %-5s %-13s %-9s %s\n", "TXN", "PROTO", "STATE", "AGE", "WAITING FOR");
  for (const auto& t : resp.transactions()) {
    std::string waiting;
    for (const auto& p : t.participants()) {
      if (!p.acknowledged()) absl::StrAppend(&waiting, waiting.empty() ? "" : ",", p.participant());
    }
    std::printf("%-40s %-5s %-13s %-9s %s\n", t.txn_id().c_str(),
                ProtocolName(t.protocol()).c_str(), StateName(t.state()).c_str(),
                Age(t.created_unix_ms()).c_str(), waiting.c_str());
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
  std::printf("txn %s\n  protocol  %s\n  state     %s\n  age       %s\n", t.txn_id().c_str(),
              ProtocolName(t.protocol()).c_str(), StateName(t.state()).c_str(),
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

int QueueCmd(const Globals& g, const std::string& cmd, const std::string& name, uint32_t max,
             uint32_t lease_ms, bool no_ack) {
  if (g.participant.empty()) return Error(absl::StrCat("queue ", cmd, " needs --participant=ADDR"));
  auto stub = v1::Queue::NewStub(Connect(g.participant));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, g);
  if (cmd == "create") {
    v1::CreateQueueRequest req;
    req.set_name(name);
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
  if (cmd == "list") {
    v1::ListQueuesResponse resp;
    grpc::Status s = stub->ListQueues(&ctx, v1::ListQueuesRequest(), &resp);
    if (!s.ok()) return RpcError("ListQueues", s);
    if (g.json) {
      PrintJson(resp);
      return 0;
    }
    std::printf("%-30s %10s %8s %8s %8s\n", "QUEUE", "VERSION", "READY", "LEASED", "IN-TXN");
    for (const auto& q : resp.queues()) {
      std::printf("%-30s %10llu %8llu %8llu %8llu\n", q.name().c_str(),
                  static_cast<unsigned long long>(q.version()),
                  static_cast<unsigned long long>(q.ready()),
                  static_cast<unsigned long long>(q.leased()),
                  static_cast<unsigned long long>(q.pending_in_txn()));
    }
    return 0;
  }
  // receive
  v1::ReceiveRequest req;
  req.set_queue(name);
  req.set_max_messages(max);
  req.set_lease_ms(lease_ms);
  req.set_consumer("atomqctl");
  v1::ReceiveResponse resp;
  grpc::Status s = stub->Receive(&ctx, req, &resp);
  if (!s.ok()) return RpcError("Receive", s);
  for (const v1::Delivery& d : resp.deliveries()) {
    if (!no_ack) {
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
      std::printf("%s #%llu (delivery %u%s): %s\n", d.queue().c_str(),
                  static_cast<unsigned long long>(d.sequence()), d.delivery_count(),
                  no_ack ? absl::StrCat(", lease ", d.lease_token()).c_str() : ", acked",
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
                   "in-doubt (default), preparing, precommitted, committed, aborted, ended");
  list->callback([&] { rc = TxnList(g, state); });

  CLI::App* show = txn->add_subcommand("show", "one transaction with each participant's state");
  std::string show_id;
  show->add_option("ID", show_id, "transaction id")->required();
  show->callback([&] { rc = TxnShow(g, show_id); });

  CLI::App* queue = app.add_subcommand("queue", "queues on a participant");
  queue->require_subcommand(1);
  std::string qname;
  uint32_t max = 1, lease_ms = 0;
  bool no_ack = false;
  for (const char* c : {"create", "delete"}) {
    CLI::App* sub = queue->add_subcommand(c, std::string(c) + " a queue");
    sub->add_option("NAME", qname, "queue name")->required();
    std::string cmd = c;
    sub->callback([&, cmd] { rc = QueueCmd(g, cmd, qname, 0, 0, false); });
  }
  queue->add_subcommand("list", "queues with version and counts")->callback([&] {
    rc = QueueCmd(g, "list", "", 0, 0, false);
  });
  CLI::App* recv = queue->add_subcommand("receive", "receive messages and ack them");
  recv->add_option("NAME", qname, "queue name")->required();
  recv->add_option("--max", max, "messages at most")->capture_default_str();
  recv->add_option("--lease_ms", lease_ms, "lease (default: the participant's)");
  recv->add_flag("--no-ack", no_ack, "leave them leased (prints the lease tokens)");
  recv->callback([&] { rc = QueueCmd(g, "receive", qname, max, lease_ms, no_ack); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  return rc;
}
