#include "coordinator/server/coordinator_server.h"

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "common/crash.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/status.h"

namespace atomq::coordinator {

class CoordinatorServer::View : public DurableView {
 public:
  explicit View(Storage* storage) : storage_(storage) {}
  std::optional<v1::CoordinatorTxnRecord> FindTxn(const std::string& txn_id) const override {
    absl::StatusOr<std::optional<std::string>> v = storage_->Get(kTxnDb, txn_id);
    if (!v.ok() || !v->has_value()) return std::nullopt;
    v1::CoordinatorTxnRecord rec;
    if (!DecodeRecord(**v, &rec).ok()) {
      LogLine(absl::StrCat("txn record ", txn_id, " is corrupt; treating as unknown"));
      return std::nullopt;
    }
    return rec;
  }

 private:
  Storage* storage_;
};

namespace {

// Whether a batch carries a COMMIT or ABORT decision (for the crash point).
bool HasDecision(const Batch& batch) {
  for (const Write& w : batch.writes) {
    if (w.db != kTxnDb || w.erase) continue;
    v1::CoordinatorTxnRecord rec;
    if (DecodeRecord(w.value, &rec).ok() &&
        (rec.state() == v1::STATE_COMMITTED || rec.state() == v1::STATE_ABORTED)) {
      return true;
    }
  }
  return false;
}

}  // namespace

CoordinatorServer::CoordinatorServer(Config config, ServerOptions options, Storage* storage)
    : options_(options), storage_(storage), view_(std::make_unique<View>(storage)) {
  core_ = std::make_unique<CoordinatorCore>(std::move(config), view_.get());
}

CoordinatorServer::~CoordinatorServer() { Stop(); }

std::string CoordinatorServer::RenderMetrics() {
  std::string out;
  StorageStats st = storage_->Stats();
  AppendMetric(&out, "atomq_storage_fsyncs_total", "counter",
               "LMDB write transactions committed (one fsync each).", st.commits);
  AppendMetric(&out, "atomq_storage_batches_total", "counter", "Batches written.", st.batches);
  AppendMetric(&out, "atomq_storage_write_failures_total", "counter", "Failed batches.",
               st.failures);
  out +=
      "# HELP atomq_execute_replies_total Execute replies by outcome.\n"
      "# TYPE atomq_execute_replies_total counter\n";
  absl::StrAppend(&out, "atomq_execute_replies_total{outcome=\"committed\"} ",
                  replies_committed_.load(), "\n");
  absl::StrAppend(&out, "atomq_execute_replies_total{outcome=\"aborted\"} ",
                  replies_aborted_.load(), "\n");
  absl::StrAppend(&out, "atomq_execute_replies_total{outcome=\"error\"} ", replies_failed_.load(),
                  "\n");
  size_t in_flight;
  {
    absl::MutexLock lock(&mu_);
    in_flight = core_->in_flight();
  }
  AppendMetric(&out, "atomq_transactions_in_flight", "gauge", "Undecided or unanswered.",
               double(in_flight));
  out += ProcessMetrics();
  return out;
}

void CoordinatorServer::Stop() {
  stopped_ = true;
  timers_.Stop();
}

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Create(Config config,
                                                                             ServerOptions options,
                                                                             Storage* storage) {
  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer(std::move(config), options, storage));
  std::vector<v1::CoordinatorTxnRecord> records;
  absl::Status bad;
  ATOMQ_RETURN_IF_ERROR(
      storage->Scan(kTxnDb, "", [&](std::string_view key, std::string_view value) {
        v1::CoordinatorTxnRecord rec;
        absl::Status st = DecodeRecord(value, &rec);
        if (!st.ok()) {
          bad = absl::DataLossError(
              absl::StrCat("txn record \"", std::string(key), "\": ", st.message()));
          return false;
        }
        records.push_back(std::move(rec));
        return true;
      }));
  ATOMQ_RETURN_IF_ERROR(bad);
  size_t n = records.size();
  s->WithCore([&](CoordinatorCore& c) { c.Recover(std::move(records), s->clock_.NowMs()); });
  LogLine(absl::StrCat("recovered ", n, " transaction records"));
  return s;
}

template <typename Fn>
void CoordinatorServer::WithCore(Fn fn) {
  Output out;
  {
    absl::MutexLock lock(&mu_);
    fn(*core_);
    out = core_->TakeOutput();
    // Under the lock: batches must reach the writer in the order the core
    // made them (a later batch may rewrite a key an earlier one wrote).
    Persist(std::move(out.persist));
    out.persist.clear();
  }
  if (!out.empty()) Dispatch(std::move(out));
}

void CoordinatorServer::Persist(std::vector<Batch> batches) {
  for (Batch& batch : batches) {
    uint64_t token = batch.token;
    bool decision = CrashArmed("after-decision-logged") && HasDecision(batch);
    storage_->Submit(std::move(batch), [this, token, decision](absl::Status st) {
      if (decision && st.ok()) CrashPoint("after-decision-logged");
      WithCore([&](CoordinatorCore& c) { c.OnPersisted(token, st, clock_.NowMs()); });
    });
  }
}

void CoordinatorServer::Dispatch(Output out) {
  for (const std::string& line : out.log) LogLine(line);
  int commits = 0;
  for (const OutMessage& m : out.send) commits += m.type == MsgType::kCommit;
  bool crash_mid_fanout = commits >= 2 && CrashArmed("mid-commit-fanout");
  for (OutMessage& m : out.send) {
    if (crash_mid_fanout && m.type == MsgType::kCommit) {
      // Make sure exactly one Commit reached its participant, then die.
      auto stub = v1::ParticipantTxn::NewStub(channels_.Get(m.address));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(options_.rpc_timeout_ms));
      v1::TxnRef ref;
      ref.set_txn_id(m.txn_id);
      v1::CommitResponse resp;
      stub->Commit(&ctx, ref, &resp);
      CrashPoint("mid-commit-fanout");
      continue;
    }
    Send(std::move(m));
  }
  for (const TimerRequest& t : out.timers) {
    uint64_t id = t.timer_id;
    timers_.At(t.at_ms, [this, id] {
      if (stopped_) return;
      WithCore([&](CoordinatorCore& c) { c.OnTimer(id, clock_.NowMs()); });
    });
  }
  for (ExecuteReply& r : out.replies) {
    Pending p;
    {
      absl::MutexLock lock(&pending_mu_);
      auto it = pending_.find(r.request);
      if (it == pending_.end()) continue;
      p = it->second;
      pending_.erase(it);
    }
    if (!r.status.ok()) {
      ++replies_failed_;
    } else if (r.response.outcome() == v1::COMMITTED) {
      ++replies_committed_;
    } else {
      ++replies_aborted_;
    }
    if (r.status.ok()) *p.execute = std::move(r.response);
    p.reactor->Finish(ToGrpc(r.status));
  }
  for (const StateReply& r : out.state_replies) {
    Pending p;
    {
      absl::MutexLock lock(&pending_mu_);
      auto it = pending_.find(r.request);
      if (it == pending_.end()) continue;
      p = it->second;
      pending_.erase(it);
    }
    p.state->set_state(r.state);
    p.reactor->Finish(grpc::Status::OK);
  }
}

void CoordinatorServer::Send(OutMessage m) {
  if (stopped_) return;
  std::shared_ptr<v1::ParticipantTxn::Stub> stub =
      v1::ParticipantTxn::NewStub(channels_.Get(m.address));
  std::string txn = m.txn_id;
  std::string p = m.participant;
  uint32_t timeout = options_.rpc_timeout_ms;
  v1::TxnRef ref;
  ref.set_txn_id(txn);
  switch (m.type) {
    case MsgType::kPrepare:
      AsyncUnary<v1::PrepareResponse>(
          std::move(m.prepare), timeout,
          [stub](auto* ctx, auto* req, auto* resp, auto cb) {
            stub->async()->Prepare(ctx, req, resp, std::move(cb));
          },
          [this, txn, p](const grpc::Status& s, const v1::PrepareResponse& resp) {
            if (!first_vote_seen_.exchange(true)) CrashPoint("after-prepare-sent");
            absl::StatusOr<v1::PrepareResponse> r =
                s.ok() ? absl::StatusOr<v1::PrepareResponse>(resp) : FromGrpc(s);
            WithCore([&](CoordinatorCore& c) { c.OnPrepareReply(txn, p, r, clock_.NowMs()); });
          });
      break;
    case MsgType::kPreCommit:
      AsyncUnary<v1::PreCommitResponse>(
          ref, timeout,
          [stub](auto* ctx, auto* req, auto* resp, auto cb) {
            stub->async()->PreCommit(ctx, req, resp, std::move(cb));
          },
          [this, txn, p](const grpc::Status& s, const v1::PreCommitResponse&) {
            WithCore([&](CoordinatorCore& c) {
              c.OnPreCommitReply(txn, p, FromGrpc(s), clock_.NowMs());
            });
          });
      break;
    case MsgType::kCommit:
      AsyncUnary<v1::CommitResponse>(
          ref, timeout,
          [stub](auto* ctx, auto* req, auto* resp, auto cb) {
            stub->async()->Commit(ctx, req, resp, std::move(cb));
          },
          [this, txn, p](const grpc::Status& s, const v1::CommitResponse& resp) {
            absl::StatusOr<v1::CommitResponse> r =
                s.ok() ? absl::StatusOr<v1::CommitResponse>(resp) : FromGrpc(s);
            WithCore([&](CoordinatorCore& c) { c.OnCommitReply(txn, p, r, clock_.NowMs()); });
          });
      break;
    case MsgType::kAbort:
      AsyncUnary<v1::AbortResponse>(
          ref, timeout,
          [stub](auto* ctx, auto* req, auto* resp, auto cb) {
            stub->async()->Abort(ctx, req, resp, std::move(cb));
          },
          [this, txn, p](const grpc::Status& s, const v1::AbortResponse&) {
            WithCore(
                [&](CoordinatorCore& c) { c.OnAbortReply(txn, p, FromGrpc(s), clock_.NowMs()); });
          });
      break;
  }
}

grpc::ServerUnaryReactor* CoordinatorServer::Execute(grpc::CallbackServerContext* ctx,
                                                     const v1::ExecuteRequest* req,
                                                     v1::ExecuteResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (stopped_) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "coordinator is shutting down"));
    return reactor;
  }
  RequestId rid = next_request_++;
  {
    absl::MutexLock lock(&pending_mu_);
    pending_[rid] = Pending{reactor, resp, nullptr};
  }
  WithCore([&](CoordinatorCore& c) { c.Execute(rid, *req, clock_.NowMs()); });
  return reactor;
}

grpc::ServerUnaryReactor* CoordinatorServer::QueryState(grpc::CallbackServerContext* ctx,
                                                        const v1::TxnRef* req,
                                                        v1::QueryStateResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  RequestId rid = next_request_++;
  {
    absl::MutexLock lock(&pending_mu_);
    pending_[rid] = Pending{reactor, nullptr, resp};
  }
  WithCore([&](CoordinatorCore& c) { c.QueryState(rid, req->txn_id(), clock_.NowMs()); });
  return reactor;
}

grpc::ServerUnaryReactor* CoordinatorServer::GetTransaction(grpc::CallbackServerContext* ctx,
                                                            const v1::GetTransactionRequest* req,
                                                            v1::TransactionInfo* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<v1::TransactionInfo> info;
  {
    absl::MutexLock lock(&mu_);
    info = core_->GetTransaction(req->txn_id());
  }
  if (info.ok()) *resp = std::move(*info);
  reactor->Finish(ToGrpc(info.status()));
  return reactor;
}

grpc::ServerUnaryReactor* CoordinatorServer::ListTransactions(
    grpc::CallbackServerContext* ctx, const v1::ListTransactionsRequest* req,
    v1::ListTransactionsResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  std::vector<v1::TxnState> states;
  for (int s : req->states()) states.push_back(static_cast<v1::TxnState>(s));
  size_t limit = req->limit() == 0 ? 1000 : req->limit();
  std::vector<v1::TransactionInfo> list;
  {
    absl::MutexLock lock(&mu_);
    list = core_->ListTransactions(states, limit);
  }
  for (v1::TransactionInfo& t : list) *resp->add_transactions() = std::move(t);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace atomq::coordinator
