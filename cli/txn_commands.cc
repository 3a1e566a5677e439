// txn exec, list, show and resolve.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "atomq/v1/console.pb.h"
#include "atomq/v1/records.pb.h"
#include "cli/commands.h"
#include "cli/data_dir.h"
#include "common/codec.h"
#include "common/data_file.h"
#include "coordinator/core/txn.h"

namespace atomq::ctl {
namespace {

// --- txn exec ---

struct ExecArgs {
  std::string protocol;
  std::string id;
  uint32_t timeout_ms = 0;
  std::vector<std::string> enqueues;
  std::vector<std::string> acks;
};

// The outcome line, and where each committed enqueue landed.
void PrintExecResult(const v1::ExecuteRequest& req, const v1::ExecuteResponse& resp) {
  PrintOutcomeLine(resp);
  if (resp.outcome() != v1::COMMITTED) return;
  for (int i = 0; i < req.ops_size() && i < resp.results_size(); ++i) {
    const v1::Op& op = req.ops(i);
    if (op.has_enqueue()) {
      std::printf("  %s:%s sequence %llu\n", op.participant().c_str(), op.enqueue().queue().c_str(),
                  static_cast<unsigned long long>(resp.results(i).sequence()));
    }
  }
}

int TxnExec(const Globals& g, const ExecArgs& a) {
  if (g.coordinator.empty()) return Error("txn exec needs --coordinator=ADDR");
  v1::ExecuteRequest req;
  req.set_txn_id(a.id);
  req.set_timeout_ms(a.timeout_ms);
  req.set_protocol(ProtocolOf(a.protocol));
  std::string err =
      AddOps("txn exec", a.enqueues, a.acks, /*named_participant=*/true, req.mutable_ops());
  if (!err.empty()) return Error(err);
  auto stub = v1::Coordinator::NewStub(Connect(g.coordinator));
  CallContext ctx(g);
  v1::ExecuteResponse resp;
  grpc::Status s = stub->Execute(&ctx, req, &resp);
  if (int rc = ShowReply(g, "Execute", s, resp, [&] { PrintExecResult(req, resp); }); rc != 0) {
    return rc;
  }
  return resp.outcome() == v1::COMMITTED ? 0 : kAborted;
}

// --- heuristic outcomes (txn resolve) at a participant ---

const char kHeuristicWarning[] =
    "WARNING: this is a heuristic decision: it overrides the commit protocol. If the\n"
    "coordinator or another participant decided otherwise, the transaction ends up\n"
    "committed at some participants and aborted at others. Use it only when the\n"
    "coordinator's log is lost for good, and resolve every participant the same way.\n";

void PrintHeuristic(const v1::HeuristicOutcome& h) {
  std::printf("txn %s\n  outcome       %s (HEURISTIC: decided by an operator)\n",
              h.txn_id().c_str(), StateName(h.state()).c_str());
  std::printf("  resolved      %s ago by %s, was %s\n", Age(h.resolved_unix_ms()).c_str(),
              h.resolved_by().empty() ? "?" : h.resolved_by().c_str(),
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

// With `node`, a NODE column first (txn list --participants).
void PrintHeuristicHeader(bool node) {
  if (node) std::printf("%-10s ", "NODE");
  std::printf("%-40s %-9s %-9s %-12s %-28s %s\n", "HEURISTIC TXN", "OUTCOME", "AGE", "BY", "MIXED",
              "NOTE");
}

void PrintHeuristicRows(const google::protobuf::RepeatedPtrField<v1::HeuristicOutcome>& rows,
                        const std::string* node) {
  for (const auto& h : rows) {
    std::string mixed = "no";
    if (h.conflicting_state() != v1::TXN_STATE_UNSPECIFIED) {
      mixed = absl::StrCat("YES: ", StateName(h.conflicting_state()), " elsewhere");
    }
    if (node != nullptr) std::printf("%-10s ", node->c_str());
    std::printf("%-40s %-9s %-9s %-12s %-28s %s\n", h.txn_id().c_str(),
                StateName(h.state()).c_str(), Age(h.resolved_unix_ms()).c_str(),
                h.resolved_by().empty() ? "?" : h.resolved_by().c_str(), mixed.c_str(),
                h.operator_note().c_str());
  }
}

void PrintHeuristicTable(const v1::ListParticipantTxnsResponse& resp) {
  PrintHeuristicHeader(false);
  PrintHeuristicRows(resp.heuristic(), nullptr);
}

// --- txn list and show ---

// Arguments of txn list and txn show.
struct QueryArgs {
  std::string state;
  uint32_t limit = 0;  // 0: the server's --list_limit_max
  std::string cursor;
  bool payloads = false;
  std::string id;
};

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

// "txn list" with the flags that chose this page, for the next one.
std::string ListCommand(const Globals& g, const QueryArgs& a) {
  std::string cmd = g.participant.empty() ? absl::StrCat("--coordinator=", g.coordinator)
                                          : absl::StrCat("--participant=", g.participant);
  absl::StrAppend(&cmd, " txn list");
  if (!a.state.empty()) absl::StrAppend(&cmd, " --state=", a.state);
  if (a.limit != 0) absl::StrAppend(&cmd, " --limit=", a.limit);
  if (a.payloads) absl::StrAppend(&cmd, " --payloads");
  return cmd;
}

void PrintPreparedHeader(bool node) {
  if (node) std::printf("%-10s ", "NODE");
  std::printf("%-40s %-5s %-13s %-8s %-9s %s\n", "TXN", "PROTO", "STATE", "IN-DOUBT", "AGE",
              "COORDINATOR");
}

void PrintPreparedRows(const google::protobuf::RepeatedPtrField<v1::ParticipantTxnInfo>& rows,
                       const std::string* node) {
  for (const auto& t : rows) {
    if (node != nullptr) std::printf("%-10s ", node->c_str());
    std::printf("%-40s %-5s %-13s %-8s %-9s %s (%s)\n", t.txn_id().c_str(),
                ProtocolName(t.protocol()).c_str(), StateName(t.state()).c_str(),
                t.in_doubt() ? "yes" : "no", Age(t.prepared_unix_ms()).c_str(),
                t.coordinator_id().c_str(), t.coordinator_address().c_str());
  }
}

// One page at the participant `address`, as --state asks: in-doubt keeps
// only the transactions in doubt, heuristic only the heuristic outcomes.
grpc::Status FetchAtParticipant(const Globals& g, const std::string& address, const QueryArgs& a,
                                v1::ListParticipantTxnsResponse* resp) {
  auto stub = v1::ParticipantTxn::NewStub(Connect(address));
  v1::ListParticipantTxnsRequest req;
  req.set_limit(a.limit);
  req.set_page_token(a.cursor);
  req.set_payloads(a.payloads);
  CallContext ctx(g);
  grpc::Status s = stub->ListTransactions(&ctx, req, resp);
  if (!s.ok()) return s;
  if (a.state == "in-doubt") {
    auto* rows = resp->mutable_transactions();
    rows->erase(std::remove_if(rows->begin(), rows->end(),
                               [](const v1::ParticipantTxnInfo& t) { return !t.in_doubt(); }),
                rows->end());
    resp->clear_heuristic();
  }
  if (a.state == "heuristic") resp->clear_transactions();
  return s;
}

int ListAtParticipant(const Globals& g, const QueryArgs& a) {
  v1::ListParticipantTxnsResponse resp;
  grpc::Status s = FetchAtParticipant(g, g.participant, a, &resp);
  if (!s.ok()) return RpcError("ListTransactions", s);
  if (g.json) {
    PrintJson(resp);
    return 0;
  }
  if (a.state != "heuristic") {
    PrintPreparedHeader(false);
    PrintPreparedRows(resp.transactions(), nullptr);
  }
  if (a.state == "heuristic" || resp.heuristic_size() > 0) {
    if (a.state != "heuristic") std::printf("\n");
    PrintHeuristicTable(resp);
  }
  PrintNextPage(ListCommand(g, a), resp.next_page_token());
  return 0;
}

// txn list --participants: one table of prepared transactions and one of
// heuristic outcomes, the node first on every row; a node that cannot be
// asked is a row with its error, and the exit is 1. --json:
// atomq.v1.ConsoleTransactions, as the web console's /api/transactions.
int ListEverywhere(const Globals& g, const QueryArgs& a) {
  v1::ConsoleTransactions all;
  int rc = 0;
  bool heuristic = a.state == "heuristic";
  for (const auto& [id, address] : g.every_participant) {
    v1::ConsoleParticipantTxns* p = all.add_participants();
    p->set_participant(id);
    v1::ListParticipantTxnsResponse resp;
    grpc::Status s = FetchAtParticipant(g, address, a, &resp);
    if (!s.ok()) {
      p->set_error(DescribeError(s));
      rc = 1;
      continue;
    }
    heuristic |= resp.heuristic_size() > 0;
    *p->mutable_transactions() = std::move(*resp.mutable_transactions());
    *p->mutable_heuristic() = std::move(*resp.mutable_heuristic());
    p->set_more(!resp.next_page_token().empty());
  }
  if (g.json) {
    PrintJson(all);
    return rc;
  }
  for (const auto& p : all.participants()) {
    if (!p.error().empty()) std::printf("%-10s (%s)\n", p.participant().c_str(), p.error().c_str());
  }
  if (a.state != "heuristic") {
    PrintPreparedHeader(true);
    for (const auto& p : all.participants()) PrintPreparedRows(p.transactions(), &p.participant());
  }
  if (heuristic) {
    if (a.state != "heuristic") std::printf("\n");
    PrintHeuristicHeader(true);
    for (const auto& p : all.participants()) PrintHeuristicRows(p.heuristic(), &p.participant());
  }
  for (const auto& p : all.participants()) {
    if (p.more()) {
      std::printf("\n%s has more: page it with atomqctl --participant=ADDR txn list --cursor\n",
                  p.participant().c_str());
    }
  }
  return rc;
}

void PrintCoordinatorTable(const v1::ListTransactionsResponse& resp) {
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
}

int ListAtCoordinator(const Globals& g, const QueryArgs& a) {
  const std::string& state = a.state;
  v1::ListTransactionsRequest req;
  req.set_limit(a.limit);
  req.set_page_token(a.cursor);
  std::vector<v1::TxnState> states;
  if (!ParseStateFilter(state, &states)) {
    return Error(absl::StrCat("--state \"", state,
                              "\": want in-doubt, preparing, precommitted, committed, aborted "
                              "or ended"));
  }
  for (v1::TxnState s : states) req.add_states(s);
  auto stub = v1::Coordinator::NewStub(Connect(g.coordinator));
  CallContext ctx(g);
  v1::ListTransactionsResponse resp;
  grpc::Status s = stub->ListTransactions(&ctx, req, &resp);
  return ShowReply(g, "ListTransactions", s, resp, [&] {
    PrintCoordinatorTable(resp);
    PrintNextPage(ListCommand(g, a), resp.next_page_token());
  });
}

// --- txn list --data_dir: read from a data dir, without its server ---

// Stripped of payloads and headers unless asked, as the server lists them.
v1::ParticipantTxnInfo InfoOfPrepared(const v1::PreparedRecord& r, bool payloads) {
  v1::ParticipantTxnInfo t;
  t.set_txn_id(r.txn_id());
  t.set_protocol(r.protocol());
  t.set_state(r.state());
  t.set_coordinator_id(r.coordinator_id());
  t.set_coordinator_address(r.coordinator_address());
  t.set_prepared_unix_ms(r.prepared_unix_ms());
  *t.mutable_participants() = r.participants();
  t.set_in_doubt(true);  // prepared and, as read here, waiting for its outcome
  t.set_payloads_included(payloads);
  for (v1::Op op : r.ops()) {
    uint64_t bytes = 0;
    if (op.has_enqueue()) {
      bytes = op.enqueue().payload().size();
      for (const auto& [k, v] : op.enqueue().headers()) bytes += k.size() + v.size();
      if (!payloads) {
        op.mutable_enqueue()->clear_payload();
        op.mutable_enqueue()->clear_headers();
      }
    }
    t.add_op_bytes(bytes);
    *t.add_ops() = std::move(op);
  }
  return t;
}

int ListInDataDir(const Globals& g, const QueryArgs& a) {
  absl::StatusOr<std::unique_ptr<DataFile>> f = DataFile::Open(g.data_dir);
  if (!f.ok()) return Error(std::string(f.status().message()));
  absl::StatusOr<std::vector<std::string>> dbs = (*f)->Dbs();
  if (!dbs.ok()) return Error(std::string(dbs.status().message()));
  const bool coordinator = std::find(dbs->begin(), dbs->end(), "txn") != dbs->end();
  absl::Status st;
  if (coordinator) {
    std::vector<v1::TxnState> states;
    if (!ParseStateFilter(a.state, &states))
      return Error(absl::StrCat("--state \"", a.state, "\""));
    v1::ListTransactionsResponse resp;
    st = ScanRecords<v1::CoordinatorTxnRecord>(**f, "txn", [&](const v1::CoordinatorTxnRecord& r) {
      const bool wanted = states.empty()
                              ? r.state() != v1::ENDED
                              : std::find(states.begin(), states.end(), r.state()) != states.end();
      if (wanted) *resp.add_transactions() = coordinator::TransactionInfoOf(r);
    });
    if (!st.ok()) return Error(std::string(st.message()));
    return ShowReply(g, "read", grpc::Status::OK, resp, [&] { PrintCoordinatorTable(resp); });
  }
  v1::ListParticipantTxnsResponse resp;
  if (a.state != "heuristic") {
    st = ScanRecords<v1::PreparedRecord>(**f, "prepared", [&](const v1::PreparedRecord& r) {
      *resp.add_transactions() = InfoOfPrepared(r, a.payloads);
    });
  }
  if (st.ok()) {
    st = ScanRecords<v1::HeuristicOutcome>(
        **f, "heuristic", [&](const v1::HeuristicOutcome& h) { *resp.add_heuristic() = h; });
  }
  if (!st.ok()) return Error(std::string(st.message()));
  if (g.json) {
    PrintJson(resp);
    return 0;
  }
  if (a.state != "heuristic") {
    PrintPreparedHeader(false);
    PrintPreparedRows(resp.transactions(), nullptr);
  }
  if (resp.heuristic_size() > 0) {
    if (a.state != "heuristic") std::printf("\n");
    PrintHeuristicTable(resp);
  }
  return 0;
}

// --- txn show ---

int ShowAtParticipant(const Globals& g, const QueryArgs& a) {
  const std::string& id = a.id;
  auto stub = v1::ParticipantTxn::NewStub(Connect(g.participant));
  v1::ListParticipantTxnsResponse resp;
  grpc::Status s = FindParticipantTxn(g, *stub, id, a.payloads, &resp);
  if (!s.ok()) return RpcError("ListTransactions", s);
  for (const auto& t : resp.transactions()) {
    if (t.txn_id() != id) continue;
    if (g.json) {
      PrintJson(t);
      return 0;
    }
    std::printf("txn %s\n  protocol     %s\n  state        %s%s\n  prepared     %s ago\n",
                t.txn_id().c_str(), ProtocolName(t.protocol()).c_str(),
                StateName(t.state()).c_str(), t.in_doubt() ? " (in doubt)" : "",
                Age(t.prepared_unix_ms()).c_str());
    PrintPreparedTail(t);
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

void PrintOps(const v1::TransactionInfo& t) {
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
}

void PrintCoordinatorTxn(const v1::TransactionInfo& t) {
  std::printf("txn %s\n  protocol  %s\n  state     %s\n  outcome   %s\n  age       %s\n",
              t.txn_id().c_str(), ProtocolName(t.protocol()).c_str(), StateName(t.state()).c_str(),
              OutcomeName(t.outcome()).c_str(), Age(t.created_unix_ms()).c_str());
  if (!t.reason().empty()) std::printf("  reason    %s\n", t.reason().c_str());
  std::printf("  participants:\n");
  for (const auto& p : t.participants()) {
    std::printf("    %-20s %-13s %s\n", p.participant().c_str(), StateName(p.state()).c_str(),
                p.acknowledged() ? "acknowledged" : "not acknowledged");
  }
  PrintOps(t);
}

int ShowAtCoordinator(const Globals& g, const QueryArgs& a) {
  auto stub = v1::Coordinator::NewStub(Connect(g.coordinator));
  CallContext ctx(g);
  v1::GetTransactionRequest req;
  req.set_txn_id(a.id);
  v1::TransactionInfo t;
  grpc::Status s = stub->GetTransaction(&ctx, req, &t);
  return ShowReply(g, "GetTransaction", s, t, [&] { PrintCoordinatorTxn(t); });
}

// --- txn show --data_dir: one record, read without its server ---

void PrintParticipantBallots(const v1::PreparedRecord& r) {
  if (r.protocol() != v1::THREE_PC) return;
  std::printf("  ballots      promised %llu, accepted %s at %llu, proposed %llu\n",
              static_cast<unsigned long long>(r.promised_ballot()),
              r.accepted_value() == v1::TXN_STATE_UNSPECIFIED
                  ? "nothing"
                  : StateName(r.accepted_value()).c_str(),
              static_cast<unsigned long long>(r.accepted_ballot()),
              static_cast<unsigned long long>(r.proposed_ballot()));
}

int ShowCoordinatorRecord(const Globals& g, DataFile& f, const std::string& id) {
  absl::StatusOr<std::optional<std::string>> raw = f.Get("txn", id);
  if (!raw.ok()) return Error(std::string(raw.status().message()));
  if (!raw->has_value()) {
    return Error(absl::StrCat("txn ", id,
                              " is not in this log (never logged here, or erased "
                              "--retention_ms after it ended)"));
  }
  v1::CoordinatorTxnRecord r;
  if (absl::Status st = DecodeRecord(**raw, &r); !st.ok()) return Error(std::string(st.message()));
  if (g.json) {
    PrintJson(r);
    return 0;
  }
  PrintCoordinatorTxn(coordinator::TransactionInfoOf(r));
  if (r.protocol() == v1::THREE_PC) {
    std::printf("  ballot    %llu (the highest it proposed in a termination round)\n",
                static_cast<unsigned long long>(r.ballot()));
  }
  return 0;
}

int ShowParticipantRecord(const Globals& g, DataFile& f, const QueryArgs& a) {
  absl::StatusOr<std::optional<std::string>> raw = f.Get("prepared", a.id);
  if (!raw.ok()) return Error(std::string(raw.status().message()));
  if (raw->has_value()) {
    v1::PreparedRecord r;
    if (absl::Status st = DecodeRecord(**raw, &r); !st.ok()) {
      return Error(std::string(st.message()));
    }
    const v1::ParticipantTxnInfo t = InfoOfPrepared(r, a.payloads);
    if (g.json) {
      PrintJson(r);
      return 0;
    }
    std::printf(
        "txn %s\n  protocol     %s\n  state        %s (in doubt as read here)\n"
        "  prepared     %s ago\n",
        t.txn_id().c_str(), ProtocolName(t.protocol()).c_str(), StateName(t.state()).c_str(),
        Age(t.prepared_unix_ms()).c_str());
    PrintParticipantBallots(r);
    PrintPreparedTail(t);
    return 0;
  }
  raw = f.Get("outcomes", a.id);
  if (!raw.ok()) return Error(std::string(raw.status().message()));
  if (!raw->has_value()) {
    return Error(absl::StrCat("txn ", a.id,
                              " is neither prepared nor decided here (or its "
                              "outcome was erased --retention_ms after its END notice)"));
  }
  v1::OutcomeRecord o;
  if (absl::Status st = DecodeRecord(**raw, &o); !st.ok()) return Error(std::string(st.message()));
  if (g.json) {
    PrintJson(o);
    return 0;
  }
  if (o.has_heuristic()) {
    PrintHeuristic(o.heuristic());
    return 0;
  }
  std::printf("txn %s\n  outcome      %s%s, %s ago\n", o.txn_id().c_str(),
              StateName(o.state()).c_str(), o.one_phase() ? " (one phase)" : "",
              Age(o.decided_unix_ms()).c_str());
  if (o.state() == v1::STATE_COMMITTED) {
    std::printf("  sequences    [%s]\n", JoinSequences(o.sequences()).c_str());
  }
  return 0;
}

int ShowInDataDir(const Globals& g, const QueryArgs& a) {
  absl::StatusOr<std::unique_ptr<DataFile>> f = DataFile::Open(g.data_dir);
  if (!f.ok()) return Error(std::string(f.status().message()));
  absl::StatusOr<std::vector<std::string>> dbs = (*f)->Dbs();
  if (!dbs.ok()) return Error(std::string(dbs.status().message()));
  if (std::find(dbs->begin(), dbs->end(), "txn") != dbs->end()) {
    return ShowCoordinatorRecord(g, **f, a.id);
  }
  return ShowParticipantRecord(g, **f, a);
}

// --- txn resolve: operator resolution of in-doubt transactions ---

struct ResolveArgs {
  std::string id;
  std::string note;
  bool commit = false;
  bool abort = false;
  bool yes = false;
  bool all_in_doubt = false;   // --all-in-doubt: every one in doubt here
  std::string of_coordinator;  // --of_coordinator: only those of this coordinator
};

// Without --yes: says what would be done to what, warns, and refuses.
int PreviewResolve(const Globals& g, v1::ParticipantTxn::Stub& stub, const ResolveArgs& a) {
  std::printf("would resolve txn %s at %s: %s it here (heuristic)\n", a.id.c_str(),
              g.participant.c_str(), a.commit ? "COMMIT" : "ABORT");
  v1::ListParticipantTxnsResponse resp;
  grpc::Status s = FindParticipantTxn(g, stub, a.id, /*payloads=*/false, &resp);
  bool found = false;
  if (!s.ok()) resp.Clear();
  for (const auto& t : resp.transactions()) {
    if (t.txn_id() != a.id) continue;
    found = true;
    std::printf("  state        %s%s, prepared %s ago\n", StateName(t.state()).c_str(),
                t.in_doubt() ? " (in doubt)" : " (NOT in doubt)",
                Age(t.prepared_unix_ms()).c_str());
    PrintPreparedTail(t);
    if (t.state() == v1::PRECOMMITTED && a.abort) {
      std::printf(
          "  note: it is PRECOMMITTED (3PC): every participant voted YES and a\n"
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

void PrintResolved(const std::string& id, const v1::ResolveResponse& resp) {
  std::printf("%s %s here (%s)\n", id.c_str(),
              resp.state() == v1::STATE_COMMITTED ? "COMMITTED" : "ABORTED",
              resp.heuristic() ? "heuristic, durable" : "already, by the protocol: not heuristic");
  if (resp.state() == v1::STATE_COMMITTED) {
    std::printf("  sequences [%s]\n", JoinSequences(resp.sequences()).c_str());
  }
  std::printf("  resolve every other participant of %s the same way\n", id.c_str());
}

// The ids in doubt at the participant (of --of_coordinator only), every page.
absl::StatusOr<std::vector<std::string>> InDoubtIds(const Globals& g, const ResolveArgs& a) {
  std::vector<std::string> ids;
  QueryArgs q;
  q.state = "in-doubt";
  do {
    v1::ListParticipantTxnsResponse resp;
    grpc::Status s = FetchAtParticipant(g, g.participant, q, &resp);
    if (!s.ok()) {
      return absl::UnavailableError(absl::StrCat("ListTransactions failed: ", DescribeError(s)));
    }
    for (const auto& t : resp.transactions()) {
      if (a.of_coordinator.empty() || t.coordinator_id() == a.of_coordinator) {
        ids.push_back(t.txn_id());
      }
    }
    q.cursor = resp.next_page_token();
  } while (!q.cursor.empty());
  return ids;
}

// --all-in-doubt: one Resolve per transaction in doubt here, the same
// outcome for each, with a progress line on a terminal; a refused one is
// named and the others go on.
int ResolveAll(const Globals& g, v1::ParticipantTxn::Stub& stub, const ResolveArgs& a) {
  absl::StatusOr<std::vector<std::string>> ids = InDoubtIds(g, a);
  if (!ids.ok()) return Error(std::string(ids.status().message()));
  const char* word = a.commit ? "COMMIT" : "ABORT";
  if (!a.yes) {
    std::printf("would resolve %zu transactions in doubt at %s%s: %s each here (heuristic)\n",
                ids->size(), g.participant.c_str(),
                a.of_coordinator.empty() ? "" : (" of coordinator " + a.of_coordinator).c_str(),
                word);
    for (size_t i = 0; i < ids->size() && i < 20; ++i) std::printf("  %s\n", (*ids)[i].c_str());
    if (ids->size() > 20) std::printf("  ... and %zu more\n", ids->size() - 20);
    std::printf("%s", kHeuristicWarning);
    std::fflush(stdout);
    return Error("refusing without --yes");
  }
  const bool tty = isatty(STDERR_FILENO) != 0;
  size_t done = 0, failed = 0;
  for (const std::string& id : *ids) {
    v1::ResolveRequest req;
    req.set_txn_id(id);
    req.set_outcome(a.commit ? v1::COMMITTED : v1::ABORTED);
    req.set_operator_note(a.note);
    CallContext ctx(g);
    v1::ResolveResponse resp;
    grpc::Status s = stub.Resolve(&ctx, req, &resp);
    if (s.ok()) {
      ++done;
    } else {
      ++failed;
      std::fprintf(stderr, "%s%s: %s\n", tty ? "\r\033[K" : "", id.c_str(),
                   DescribeError(s).c_str());
    }
    if (tty) {
      std::fprintf(stderr, "\rresolving: %zu of %zu (%zu refused)", done + failed, ids->size(),
                   failed);
    }
  }
  if (tty) std::fprintf(stderr, "\r\033[K");
  std::printf("%zu of %zu in doubt at %s resolved: %s (%zu refused)\n", done, ids->size(),
              g.participant.c_str(), a.commit ? "COMMITTED" : "ABORTED", failed);
  return failed == 0 ? 0 : 1;
}

int TxnResolve(const Globals& g, const ResolveArgs& a) {
  if (g.participant.empty()) return Error("txn resolve needs --participant=ADDR");
  if (a.commit == a.abort) return Error("txn resolve needs exactly one of --commit and --abort");
  if (a.all_in_doubt == !a.id.empty()) return Error("txn resolve needs an ID or --all-in-doubt");
  if (!a.of_coordinator.empty() && !a.all_in_doubt) {
    return Error("--of_coordinator goes with --all-in-doubt");
  }
  auto stub = v1::ParticipantTxn::NewStub(Connect(g.participant));
  if (a.all_in_doubt) return ResolveAll(g, *stub, a);
  if (!a.yes) return PreviewResolve(g, *stub, a);
  v1::ResolveRequest req;
  req.set_txn_id(a.id);
  req.set_outcome(a.commit ? v1::COMMITTED : v1::ABORTED);
  req.set_operator_note(a.note);
  CallContext ctx(g);
  v1::ResolveResponse resp;
  grpc::Status s = stub->Resolve(&ctx, req, &resp);
  return ShowReply(g, "Resolve", s, resp, [&] { PrintResolved(a.id, resp); });
}

// --- registration ---

void AddExec(CLI::App* txn, const Globals& g, int* rc) {
  CLI::App* exec = txn->add_subcommand("exec", "run one atomic transaction (coordinator)");
  auto a = std::make_shared<ExecArgs>();
  exec->add_option("--protocol", a->protocol, "2pc or 3pc (default: the coordinator's)")
      ->check(CLI::IsMember({"2pc", "3pc"}));
  exec->add_option("--id", a->id, "transaction id (a retry with the same id is idempotent)");
  exec->add_option("--timeout_ms", a->timeout_ms, "vote deadline (default: the coordinator's)");
  exec->add_option("--enqueue", a->enqueues, "PARTICIPANT:QUEUE=PAYLOAD (repeatable)");
  exec->add_option("--ack", a->acks, "PARTICIPANT:QUEUE:SEQUENCE:LEASE_TOKEN (repeatable)");
  exec->callback([&g, rc, a] { *rc = TxnExec(g, *a); });
}

void AddListAndShow(CLI::App* txn, const Globals& g, int* rc) {
  CLI::App* list = txn->add_subcommand(
      "list", "transactions not finished, with state and age, one page at a time");
  auto a = std::make_shared<QueryArgs>();
  list->add_option("--state", a->state,
                   "in-doubt (default), preparing, precommitted, committed, aborted, ended; "
                   "heuristic (participant: outcomes decided by an operator)");
  list->add_option("--limit", a->limit,
                   "transactions in this page (default and most: the server's --list_limit_max)");
  list->add_option("--cursor", a->cursor, "where the page starts: printed after the page before");
  list->add_flag("--payloads", a->payloads,
                 "participant: enqueue ops with payloads and headers (else sizes only)");
  list->callback([&g, rc, a] {
    if (!g.data_dir.empty()) {
      *rc = ListInDataDir(g, *a);
      return;
    }
    if (g.participant.empty() && !g.every_participant.empty()) {
      *rc = ListEverywhere(g, *a);
      return;
    }
    *rc = AtParticipantOrCoordinator(g, "txn list", ListAtParticipant, ListAtCoordinator, *a);
  });

  CLI::App* show = txn->add_subcommand("show", "one transaction with each participant's state");
  auto s = std::make_shared<QueryArgs>();
  show->add_option("ID", s->id, "transaction id")->required();
  show->add_flag("--payloads", s->payloads,
                 "participant: with --json, enqueue ops with payloads and headers");
  show->callback([&g, rc, s] {
    if (!g.data_dir.empty()) {
      *rc = ShowInDataDir(g, *s);
      return;
    }
    *rc = AtParticipantOrCoordinator(g, "txn show", ShowAtParticipant, ShowAtCoordinator, *s);
  });
}

void AddResolve(CLI::App* txn, const Globals& g, int* rc) {
  CLI::App* resolve = txn->add_subcommand(
      "resolve", "last resort: commit or abort an in-doubt transaction here (heuristic)");
  auto a = std::make_shared<ResolveArgs>();
  resolve->add_option("ID", a->id, "transaction id (from txn list --state=in-doubt)");
  resolve->add_flag(
      "--all-in-doubt", a->all_in_doubt,
      "every transaction in doubt here, the same way (a progress line on a terminal)");
  resolve->add_option("--of_coordinator", a->of_coordinator,
                      "with --all-in-doubt: only those of this coordinator id");
  resolve->add_flag("--commit", a->commit, "commit it here");
  resolve->add_flag("--abort", a->abort, "abort it here");
  resolve->add_option("--note", a->note, "why and who, kept with the outcome");
  resolve->add_flag("--yes", a->yes, "really do it (without: print what would be done and refuse)");
  resolve->callback([&g, rc, a] { *rc = TxnResolve(g, *a); });
}

}  // namespace

void AddTxnCommands(CLI::App* txn, const Globals& g, int* rc) {
  AddExec(txn, g, rc);
  AddListAndShow(txn, g, rc);
  AddResolve(txn, g, rc);
}

}  // namespace atomq::ctl
