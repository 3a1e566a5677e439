// Interactive transactions: txn begin (coordinator), stage (participant),
// commit and rollback (coordinator).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"

namespace atomq::ctl {
namespace {

struct BeginArgs {
  std::string protocol;
  std::string id;
  uint32_t timeout_ms = 0;
};

struct StageArgs {
  std::string id;
  std::vector<std::string> enqueues;
  std::vector<std::string> acks;
  int64_t expires_unix_ms = 0;
  uint32_t batch = 0;
};

// Of txn commit and txn rollback.
struct EndArgs {
  std::string id;
  std::vector<std::string> staged;  // PARTICIPANT[:OPS]
};

int TxnBegin(const Globals& g, const BeginArgs& a) {
  if (g.coordinator.empty()) return Error("txn begin needs --coordinator=ADDR");
  v1::BeginTxnRequest req;
  req.set_txn_id(a.id);
  req.set_timeout_ms(a.timeout_ms);
  req.set_protocol(ProtocolOf(a.protocol));
  auto stub = v1::Coordinator::NewStub(Connect(g.coordinator));
  CallContext ctx(g);
  v1::BeginTxnResponse resp;
  grpc::Status s = stub->Begin(&ctx, req, &resp);
  return ShowReply(g, "Begin", s, resp, [&] {
    std::printf("%s expires_unix_ms=%lld\n", resp.txn_id().c_str(),
                static_cast<long long>(resp.expires_unix_ms()));
  });
}

int TxnStage(const Globals& g, const StageArgs& a) {
  if (g.participant.empty()) return Error("txn stage needs --participant=ADDR");
  v1::StageRequest req;
  req.set_txn_id(a.id);
  req.set_expires_unix_ms(a.expires_unix_ms);
  req.set_batch(a.batch);
  std::string err =
      AddOps("txn stage", a.enqueues, a.acks, /*named_participant=*/false, req.mutable_ops());
  if (!err.empty()) return Error(err);
  auto stub = v1::ParticipantTxn::NewStub(Connect(g.participant));
  CallContext ctx(g);
  v1::StageResponse resp;
  grpc::Status s = stub->Stage(&ctx, req, &resp);
  return ShowReply(g, "Stage", s, resp, [&] {
    std::printf("%s: %u ops staged here, kept until %lld\n", a.id.c_str(), resp.ops_staged(),
                static_cast<long long>(resp.expires_unix_ms()));
  });
}

// "p1" or "p1:3" (3 ops staged there) -> one participant of `req`.
template <typename Request>
bool AddStaged(const std::vector<std::string>& staged, Request* req, std::string* err) {
  for (const std::string& spec : staged) {
    std::vector<std::string> parts = absl::StrSplit(spec, absl::MaxSplits(':', 1));
    uint32_t n = 0;
    if (parts[0].empty() || (parts.size() == 2 && !absl::SimpleAtoi(parts[1], &n))) {
      *err = absl::StrCat("--staged \"", spec, "\": want PARTICIPANT or PARTICIPANT:OPS");
      return false;
    }
    v1::TxnParticipant* p = req->add_participants();
    p->set_participant(parts[0]);
    p->set_staged_ops(n);
  }
  return true;
}

void PrintCommitResult(const v1::ExecuteResponse& resp) {
  PrintOutcomeLine(resp);
  if (resp.outcome() != v1::COMMITTED) return;
  for (const v1::StagedResult& r : resp.staged()) {
    std::printf("  %s sequences [%s]\n", r.participant().c_str(),
                JoinSequences(r.sequences()).c_str());
  }
}

int TxnCommit(const Globals& g, const EndArgs& a) {
  if (g.coordinator.empty()) return Error("txn commit needs --coordinator=ADDR");
  v1::CommitTxnRequest req;
  req.set_txn_id(a.id);
  std::string err;
  if (!AddStaged(a.staged, &req, &err)) return Error(err);
  if (req.participants_size() == 0) return Error("txn commit needs --staged=PARTICIPANT[:OPS]");
  auto stub = v1::Coordinator::NewStub(Connect(g.coordinator));
  CallContext ctx(g);
  v1::ExecuteResponse resp;
  grpc::Status s = stub->Commit(&ctx, req, &resp);
  if (int rc = ShowReply(g, "Commit", s, resp, [&] { PrintCommitResult(resp); }); rc != 0) {
    return rc;
  }
  return resp.outcome() == v1::COMMITTED ? 0 : kAborted;
}

int TxnRollback(const Globals& g, const EndArgs& a) {
  if (g.coordinator.empty()) return Error("txn rollback needs --coordinator=ADDR");
  v1::RollbackTxnRequest req;
  req.set_txn_id(a.id);
  std::string err;
  if (!AddStaged(a.staged, &req, &err)) return Error(err);
  auto stub = v1::Coordinator::NewStub(Connect(g.coordinator));
  CallContext ctx(g);
  v1::RollbackTxnResponse resp;
  grpc::Status s = stub->Rollback(&ctx, req, &resp);
  return ShowReply(g, "Rollback", s, resp, [&] { std::printf("%s rolled back\n", a.id.c_str()); });
}

void AddBegin(CLI::App* txn, const Globals& g, int* rc) {
  CLI::App* begin = txn->add_subcommand("begin", "open an interactive transaction (coordinator)");
  auto a = std::make_shared<BeginArgs>();
  begin->add_option("--protocol", a->protocol, "2pc or 3pc (default: the coordinator's)")
      ->check(CLI::IsMember({"2pc", "3pc"}));
  begin->add_option("--id", a->id, "transaction id (default: minted by the coordinator)");
  begin->add_option("--timeout_ms", a->timeout_ms,
                    "how long it stays open (default: the coordinator's --txn_timeout_ms)");
  begin->callback([&g, rc, a] { *rc = TxnBegin(g, *a); });
}

void AddStage(CLI::App* txn, const Globals& g, int* rc) {
  CLI::App* stage =
      txn->add_subcommand("stage", "stage ops under an open transaction (participant)");
  auto a = std::make_shared<StageArgs>();
  stage->add_option("ID", a->id, "transaction id from txn begin")->required();
  stage->add_option("--enqueue", a->enqueues, "QUEUE=PAYLOAD (repeatable)");
  stage->add_option("--ack", a->acks, "QUEUE:SEQUENCE:LEASE_TOKEN (repeatable)");
  stage->add_option("--expires_unix_ms", a->expires_unix_ms,
                    "from txn begin (default: the participant's --stage_timeout_ms_max)");
  stage->add_option("--batch", a->batch,
                    "1-based number of this stage call, so a retry applies once (0: none)");
  stage->callback([&g, rc, a] { *rc = TxnStage(g, *a); });
}

void AddCommitAndRollback(CLI::App* txn, const Globals& g, int* rc) {
  CLI::App* commit =
      txn->add_subcommand("commit", "commit an interactive transaction (coordinator)");
  auto c = std::make_shared<EndArgs>();
  commit->add_option("ID", c->id, "transaction id")->required();
  commit->add_option("--staged", c->staged,
                     "PARTICIPANT[:OPS] that staged work, with its op count (repeatable)");
  commit->callback([&g, rc, c] { *rc = TxnCommit(g, *c); });

  CLI::App* rollback =
      txn->add_subcommand("rollback", "roll back an interactive transaction (coordinator)");
  auto r = std::make_shared<EndArgs>();
  rollback->add_option("ID", r->id, "transaction id")->required();
  rollback->add_option("--staged", r->staged, "PARTICIPANT that may hold staged work (repeatable)");
  rollback->callback([&g, rc, r] { *rc = TxnRollback(g, *r); });
}

}  // namespace

void AddInteractiveTxnCommands(CLI::App* txn, const Globals& g, int* rc) {
  AddBegin(txn, g, rc);
  AddStage(txn, g, rc);
  AddCommitAndRollback(txn, g, rc);
}

}  // namespace atomq::ctl
