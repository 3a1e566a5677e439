#include "participant/server/participant_server.h"

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "common/crash.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/status.h"

namespace atomq::participant {

class ParticipantNode::View : public DurableView {
 public:
  explicit View(Storage* storage) : storage_(storage) {}
  std::optional<v1::MessageRecord> FindMessage(uint64_t queue_id,
                                               uint64_t sequence) const override {
    return FindRecord<v1::MessageRecord>(storage_, kMessagesDb, MessageKey(queue_id, sequence));
  }
  std::optional<v1::OutcomeRecord> FindOutcome(const std::string& txn_id) const override {
    return FindRecord<v1::OutcomeRecord>(storage_, kOutcomesDb, txn_id);
  }
  // Storage::Scan starts at a prefix: walk blocks of 256 sequences (the key
  // without its last byte), so that a call skips fewer than 256 keys below
  // `from`. The backlog on disk is dense, so few blocks come back empty.
  absl::StatusOr<std::vector<uint64_t>> ScanMessages(uint64_t queue_id, uint64_t from,
                                                     uint64_t to,
                                                     uint32_t limit) const override {
    std::vector<uint64_t> seqs;
    for (uint64_t block = from >> 8; seqs.size() < limit && from < to; ++block) {
      const std::string prefix = MessageKey(queue_id, block << 8).substr(0, 15);
      bool past = false;
      ATOMQ_RETURN_IF_ERROR(storage_->Scan(kMessagesDb, prefix,
                                           [&](std::string_view key, std::string_view) {
                                             if (key.size() != 16) return true;
                                             const uint64_t seq = DecodeU64(key.substr(8));
                                             if (seq < from) return true;
                                             if (seq >= to) past = true;
                                             if (past || seqs.size() >= limit) return false;
                                             seqs.push_back(seq);
                                             return true;
                                           }));
      const uint64_t next = (block + 1) << 8;
      if (past || next == 0) break;  // `to` reached, or the last block
      from = next;
    }
    return seqs;
  }

 private:
  Storage* storage_;
};

namespace {

// Delivers a core Reply into a unary reactor's response.
template <typename Resp>
std::function<void(const Reply&)> ReplyTo(grpc::ServerUnaryReactor* reactor, Resp* resp) {
  return [reactor, resp](const Reply& r) {
    if (!r.status.ok()) {
      reactor->Finish(ToGrpc(r.status));
      return;
    }
    const Resp* body = std::get_if<Resp>(&r.body);
    if (body == nullptr) {
      reactor->Finish(grpc::Status(grpc::StatusCode::INTERNAL, "reply of the wrong type"));
      return;
    }
    *resp = *body;
    reactor->Finish(grpc::Status::OK);
  };
}

bool WritesRecord(const Batch& batch, const char* db, v1::TxnState state) {
  for (const Write& w : batch.writes) {
    if (w.db != db || w.erase) continue;
    if (std::string(db) == kPreparedDb) {
      v1::PreparedRecord rec;
      if (DecodeRecord(w.value, &rec).ok() && rec.state() == state) return true;
    } else {
      v1::OutcomeRecord rec;
      if (DecodeRecord(w.value, &rec).ok() && rec.state() == state) return true;
    }
  }
  return false;
}

}  // namespace

class ParticipantNode::TxnService final : public v1::ParticipantTxn::CallbackService {
 public:
  explicit TxnService(ParticipantNode* node) : node_(node) {}

  grpc::ServerUnaryReactor* Prepare(grpc::CallbackServerContext* ctx, const v1::PrepareRequest* req,
                                    v1::PrepareResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    auto deliver = ReplyTo(reactor, resp);
    RequestId rid = node_->Expect([deliver](const Reply& r) {
      const auto* vote = std::get_if<v1::PrepareResponse>(&r.body);
      if (r.status.ok() && vote != nullptr && vote->vote() == v1::YES) {
        CrashPoint("before-vote-sent");
      }
      deliver(r);
    });
    node_->WithCore([&](ParticipantCore& c) { c.Prepare(rid, *req, node_->clock_.NowMs()); });
    return reactor;
  }
  grpc::ServerUnaryReactor* PreCommit(grpc::CallbackServerContext* ctx, const v1::TxnRef* req,
                                      v1::PreCommitResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    RequestId rid = node_->Expect(ReplyTo(reactor, resp));
    node_->WithCore(
        [&](ParticipantCore& c) { c.PreCommit(rid, req->txn_id(), node_->clock_.NowMs()); });
    return reactor;
  }
  grpc::ServerUnaryReactor* Commit(grpc::CallbackServerContext* ctx, const v1::TxnRef* req,
                                   v1::CommitResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    RequestId rid = node_->Expect(ReplyTo(reactor, resp));
    node_->WithCore(
        [&](ParticipantCore& c) { c.Commit(rid, req->txn_id(), node_->clock_.NowMs()); });
    return reactor;
  }
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* ctx, const v1::TxnRef* req,
                                  v1::AbortResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    RequestId rid = node_->Expect(ReplyTo(reactor, resp));
    node_->WithCore(
        [&](ParticipantCore& c) { c.Abort(rid, req->txn_id(), node_->clock_.NowMs()); });
    return reactor;
  }
  grpc::ServerUnaryReactor* QueryState(grpc::CallbackServerContext* ctx, const v1::TxnRef* req,
                                       v1::QueryStateResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    RequestId rid = node_->Expect(ReplyTo(reactor, resp));
    node_->WithCore(
        [&](ParticipantCore& c) { c.QueryState(rid, req->txn_id(), node_->clock_.NowMs()); });
    return reactor;
  }
  grpc::ServerUnaryReactor* Promise(grpc::CallbackServerContext* ctx,
                                    const v1::PromiseRequest* req,
                                    v1::PromiseResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    RequestId rid = node_->Expect(ReplyTo(reactor, resp));
    node_->WithCore([&](ParticipantCore& c) {
      c.Promise(rid, req->txn_id(), req->ballot(), node_->clock_.NowMs());
    });
    return reactor;
  }
  grpc::ServerUnaryReactor* Accept(grpc::CallbackServerContext* ctx, const v1::AcceptRequest* req,
                                   v1::AcceptResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    RequestId rid = node_->Expect(ReplyTo(reactor, resp));
    node_->WithCore([&](ParticipantCore& c) {
      c.Accept(rid, req->txn_id(), req->ballot(), req->value(), node_->clock_.NowMs());
    });
    return reactor;
  }
  grpc::ServerUnaryReactor* Batch(grpc::CallbackServerContext* ctx, const v1::BatchRequest* req,
                                  v1::BatchResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    const int n = req->items_size();
    if (n > static_cast<int>(node_->options_.batch_items_max)) {
      reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   absl::StrCat("batch of ", n, " items; at most ",
                                                node_->options_.batch_items_max, " allowed")));
      return reactor;
    }
    if (n == 0) {
      reactor->Finish(grpc::Status::OK);
      return reactor;
    }
    for (int i = 0; i < n; ++i) resp->add_results();
    // Items are answered on whatever thread releases them; each writes only
    // its own result, and the last one finishes the call.
    auto remaining = std::make_shared<std::atomic<int>>(n);
    auto done = [reactor, remaining] {
      if (remaining->fetch_sub(1) == 1) reactor->Finish(grpc::Status::OK);
    };
    // Answered here, not by the core: an empty item is refused, and an END
    // notice (forget) is best effort with an empty result.
    auto answered_here = [req](int i) {
      const v1::BatchItem::KindCase k = req->items(i).kind_case();
      return k == v1::BatchItem::KIND_NOT_SET || k == v1::BatchItem::kForget;
    };
    std::vector<RequestId> rids(n, 0);
    for (int i = 0; i < n; ++i) {
      if (answered_here(i)) continue;
      v1::BatchResult* result = resp->mutable_results(i);
      rids[i] = node_->Expect([result, done](const Reply& r) {
        result->set_code(static_cast<int>(r.status.code()));
        result->set_message(std::string(r.status.message()));
        if (r.status.ok()) {
          if (const auto* b = std::get_if<v1::PrepareResponse>(&r.body)) {
            if (b->vote() == v1::YES) CrashPoint("before-vote-sent");
            *result->mutable_prepare() = *b;
          } else if (const auto* b = std::get_if<v1::PreCommitResponse>(&r.body)) {
            *result->mutable_pre_commit() = *b;
          } else if (const auto* b = std::get_if<v1::CommitResponse>(&r.body)) {
            *result->mutable_commit() = *b;
          } else if (const auto* b = std::get_if<v1::AbortResponse>(&r.body)) {
            *result->mutable_abort() = *b;
          }
        }
        done();
      });
    }
    node_->WithCore([&](ParticipantCore& c) {
      int64_t now = node_->clock_.NowMs();
      for (int i = 0; i < n; ++i) {
        const v1::BatchItem& item = req->items(i);
        switch (item.kind_case()) {
          case v1::BatchItem::kPrepare: c.Prepare(rids[i], item.prepare(), now); break;
          case v1::BatchItem::kPreCommit: c.PreCommit(rids[i], item.pre_commit().txn_id(), now); break;
          case v1::BatchItem::kCommit: c.Commit(rids[i], item.commit().txn_id(), now); break;
          case v1::BatchItem::kAbort: c.Abort(rids[i], item.abort().txn_id(), now); break;
          case v1::BatchItem::kForget: c.Forget(item.forget().txn_id(), now); break;
          case v1::BatchItem::KIND_NOT_SET: break;
        }
      }
    });
    for (int i = 0; i < n; ++i) {
      if (!answered_here(i)) continue;
      if (req->items(i).kind_case() == v1::BatchItem::KIND_NOT_SET) {
        resp->mutable_results(i)->set_code(static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
        resp->mutable_results(i)->set_message(absl::StrCat("batch item ", i, " is empty"));
      }
      done();
    }
    return reactor;
  }

  // Staged work is memory only, so the core answers at once.
  grpc::ServerUnaryReactor* Stage(grpc::CallbackServerContext* ctx, const v1::StageRequest* req,
                                  v1::StageResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    absl::StatusOr<v1::StageResponse> r;
    node_->WithCore([&](ParticipantCore& c) { r = c.Stage(*req, node_->clock_.NowMs()); });
    if (r.ok()) *resp = std::move(*r);
    reactor->Finish(ToGrpc(r.status()));
    return reactor;
  }

  grpc::ServerUnaryReactor* ListTransactions(grpc::CallbackServerContext* ctx,
                                             const v1::ListParticipantTxnsRequest* req,
                                             v1::ListParticipantTxnsResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    std::vector<v1::ParticipantTxnInfo> list;
    std::vector<v1::HeuristicOutcome> heuristic;
    {
      absl::MutexLock lock(&node_->mu_);
      list = node_->core_->ListTransactions();
      heuristic = node_->core_->HeuristicOutcomes();
    }
    for (v1::ParticipantTxnInfo& t : list) *resp->add_transactions() = std::move(t);
    for (v1::HeuristicOutcome& h : heuristic) *resp->add_heuristic() = std::move(h);
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  // Operator resolution (heuristic): answered once the outcome is durable.
  grpc::ServerUnaryReactor* Resolve(grpc::CallbackServerContext* ctx,
                                    const v1::ResolveRequest* req,
                                    v1::ResolveResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    RequestId rid = node_->Expect(ReplyTo(reactor, resp));
    node_->WithCore([&](ParticipantCore& c) { c.Resolve(rid, *req, node_->clock_.NowMs()); });
    return reactor;
  }

 private:
  ParticipantNode* node_;
};

class ParticipantNode::QueueService final : public v1::Queue::CallbackService {
 public:
  explicit QueueService(ParticipantNode* node) : node_(node) {}

  grpc::ServerUnaryReactor* CreateQueue(grpc::CallbackServerContext* ctx,
                                        const v1::CreateQueueRequest* req,
                                        v1::CreateQueueResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    RequestId rid = node_->Expect(ReplyTo(reactor, resp));
    node_->WithCore([&](ParticipantCore& c) { c.CreateQueue(rid, *req, node_->clock_.NowMs()); });
    return reactor;
  }
  grpc::ServerUnaryReactor* DeleteQueue(grpc::CallbackServerContext* ctx,
                                        const v1::DeleteQueueRequest* req,
                                        v1::DeleteQueueResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    RequestId rid = node_->Expect(ReplyTo(reactor, resp));
    node_->WithCore(
        [&](ParticipantCore& c) { c.DeleteQueue(rid, req->name(), node_->clock_.NowMs()); });
    return reactor;
  }
  grpc::ServerUnaryReactor* ListQueues(grpc::CallbackServerContext* ctx,
                                       const v1::ListQueuesRequest* req,
                                       v1::ListQueuesResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    std::vector<v1::QueueInfo> list;
    {
      absl::MutexLock lock(&node_->mu_);
      list = node_->core_->ListQueues();
    }
    for (v1::QueueInfo& q : list) *resp->add_queues() = std::move(q);
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  // Long-poll, auto-ack and payload reads: queue_consumers.cc.
  grpc::ServerUnaryReactor* Receive(grpc::CallbackServerContext* ctx, const v1::ReceiveRequest* req,
                                    v1::ReceiveResponse* resp) override {
    return node_->StartReceive(ctx, req, resp);
  }
  grpc::ServerBidiReactor<v1::SubscribeRequest, v1::SubscribeResponse>* Subscribe(
      grpc::CallbackServerContext* ctx) override {
    return node_->StartSubscribe(ctx);
  }
  grpc::ServerUnaryReactor* Nack(grpc::CallbackServerContext* ctx, const v1::NackRequest* req,
                                 v1::NackResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    RequestId rid = node_->Expect(ReplyTo(reactor, resp));
    node_->WithCore([&](ParticipantCore& c) { c.Nack(rid, *req, node_->clock_.NowMs()); });
    return reactor;
  }
  grpc::ServerUnaryReactor* Send(grpc::CallbackServerContext* ctx, const v1::SendRequest* req,
                                 v1::SendResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    RequestId rid = node_->Expect(ReplyTo(reactor, resp));
    node_->WithCore([&](ParticipantCore& c) { c.Send(rid, *req, node_->clock_.NowMs()); });
    return reactor;
  }
  grpc::ServerUnaryReactor* Ack(grpc::CallbackServerContext* ctx, const v1::AckRequest* req,
                                v1::AckResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    RequestId rid = node_->Expect(ReplyTo(reactor, resp));
    node_->WithCore([&](ParticipantCore& c) {
      c.Ack(rid, req->queue(), req->sequence(), req->lease_token(), node_->clock_.NowMs());
    });
    return reactor;
  }

 private:
  ParticipantNode* node_;
};

ParticipantNode::ParticipantNode(Config config, ServerOptions options, Storage* storage)
    : options_(options),
      storage_(storage),
      view_(std::make_unique<View>(storage)),
      txn_service_(std::make_unique<TxnService>(this)),
      queue_service_(std::make_unique<QueueService>(this)) {
  core_ = std::make_unique<ParticipantCore>(std::move(config), view_.get());
  reports_.Install(storage_, [this](std::vector<GroupedReports::Report>& reports) {
    WithCore([&](ParticipantCore& c) {
      const int64_t now = clock_.NowMs();
      for (const auto& [token, st] : reports) c.OnPersisted(token, st, now);
    });
  });
}

ParticipantNode::~ParticipantNode() { Stop(); }

void ParticipantNode::Stop() {
  stopped_ = true;
  timers_.Stop();
}

std::string ParticipantNode::RenderMetrics() {
  std::string out;
  StorageStats st = storage_->Stats();
  AppendMetric(&out, "atomq_storage_fsyncs_total", "counter",
               "LMDB write transactions committed (one fsync each).", st.commits);
  AppendMetric(&out, "atomq_storage_batches_total", "counter", "Batches written.", st.batches);
  AppendMetric(&out, "atomq_storage_write_failures_total", "counter", "Failed batches.",
               st.failures);
  uint64_t erased;
  {
    absl::MutexLock lock(&mu_);
    erased = core_->outcomes_erased();
  }
  AppendMetric(&out, "atomq_outcomes_erased_total", "counter",
               "Outcomes of ended transactions erased after --retention_ms.", double(erased));
  out += ProcessMetrics();
  return out;
}

void ParticipantNode::CollectGarbage() {
  if (stopped_) return;
  const int64_t now = clock_.NowMs();
  const int64_t cutoff = now - static_cast<int64_t>(retention_ms_);
  std::vector<std::string> keys;
  absl::Status st = storage_->Scan(kForgettableDb, "", [&](std::string_view key, std::string_view) {
    if (key.size() > 8 && static_cast<int64_t>(DecodeU64(key)) >= cutoff) return false;
    keys.emplace_back(key);
    return keys.size() < options_.gc_batch_max;
  });
  if (!st.ok()) LogLine(absl::StrCat("outcome collection failed: ", st.ToString()));
  if (!keys.empty()) WithCore([&](ParticipantCore& c) { c.CollectOutcomes(keys, now); });
  // A full scan means more is due: look again soon.
  const int64_t next = keys.size() >= options_.gc_batch_max ? 10 : options_.gc_interval_ms;
  timers_.At(clock_.NowMs() + next, [this] { CollectGarbage(); });
}

grpc::Service* ParticipantNode::txn_service() { return txn_service_.get(); }
grpc::Service* ParticipantNode::queue_service() { return queue_service_.get(); }

absl::StatusOr<std::unique_ptr<ParticipantNode>> ParticipantNode::Create(Config config,
                                                                         ServerOptions options,
                                                                         Storage* storage) {
  const uint32_t receive_max = config.receive_max;
  const uint64_t retention_ms = config.retention_ms;
  std::unique_ptr<ParticipantNode> node(new ParticipantNode(std::move(config), options, storage));
  node->core_receive_max_ = receive_max;
  node->retention_ms_ = retention_ms;
  absl::StatusOr<RecoveredState> loaded =
      schema::LoadRecoveredState([&](const char* db, const schema::RecordFn& fn) {
        return storage->Scan(db, "", fn);
      });
  ATOMQ_RETURN_IF_ERROR(loaded.status());
  RecoveredState state = *std::move(loaded);
  uint64_t stored = 0;
  for (const auto& [queue_id, backlog] : state.messages) stored += backlog.count;
  std::string summary =
      absl::StrCat("recovered ", state.queues.size(), " queues, ", stored, " messages, ", state.prepared.size(), " prepared transactions");
  node->WithCore([&](ParticipantCore& c) { c.Recover(std::move(state), node->clock_.NowMs()); });
  LogLine(summary);
  node->SweepLeases();
  ParticipantNode* raw = node.get();
  raw->timers_.At(raw->clock_.NowMs() + options.gc_interval_ms, [raw] { raw->CollectGarbage(); });
  return node;
}

template <typename Fn>
void ParticipantNode::WithCore(Fn fn) {
  Output out;
  bool persisted;
  {
    absl::MutexLock lock(&mu_);
    fn(*core_);
    out = core_->TakeOutput();
    persisted = !out.persist.empty();
    // Under the lock: batches must reach the writer in the order the core
    // made them (a later batch may rewrite a key an earlier one wrote).
    Persist(std::move(out.persist));
    out.persist.clear();
  }
  if (!out.empty()) Dispatch(std::move(out));
  // After the messages left: an idle writer's fsync runs here, on this
  // thread, saving two thread hand-offs. Every submitter drives its own.
  if (persisted) storage_->Drive();
}

void ParticipantNode::RunCore(const std::function<void(ParticipantCore&)>& fn) {
  WithCore([&](ParticipantCore& c) { fn(c); });
}

RequestId ParticipantNode::Expect(ReplyFn fn) {
  RequestId rid = next_request_++;
  absl::MutexLock lock(&pending_mu_);
  pending_[rid] = std::move(fn);
  return rid;
}

void ParticipantNode::Persist(std::vector<Batch> batches) {
  for (Batch& batch : batches) {
    uint64_t token = batch.token;
    bool prepared =
        CrashArmed("after-prepare-logged") && WritesRecord(batch, kPreparedDb, v1::PREPARED);
    bool committed = CrashArmed("after-commit-applied-before-ack") &&
                     WritesRecord(batch, kOutcomesDb, v1::STATE_COMMITTED);
    storage_->SubmitDeferred(std::move(batch), [this, token, prepared, committed](absl::Status st) {
      if (st.ok() && prepared) CrashPoint("after-prepare-logged");
      if (st.ok() && committed) CrashPoint("after-commit-applied-before-ack");
      if (reports_.Collect(token, st)) return;
      WithCore([&](ParticipantCore& c) { c.OnPersisted(token, st, clock_.NowMs()); });
    });
  }
}

void ParticipantNode::FireTimers(const std::vector<uint64_t>& ids) {
  if (stopped_) return;
  WithCore([&](ParticipantCore& c) {
    int64_t now = clock_.NowMs();
    for (uint64_t id : ids) c.OnTimer(id, now);
  });
}

void ParticipantNode::Dispatch(Output out) {
  for (const std::string& line : out.log) LogLine(line);
  if (!out.ready_queues.empty()) WakeQueues(out.ready_queues);
  for (OutQuery& q : out.queries) SendQuery(std::move(q));
  for (OutPeerMsg& m : out.peer_msgs) SendPeerMsg(std::move(m));
  for (const TimerRequest& t : out.timers) core_timers_.Add(t.timer_id, t.at_ms);
  for (const Reply& r : out.replies) {
    ReplyFn fn;
    {
      absl::MutexLock lock(&pending_mu_);
      auto it = pending_.find(r.request);
      if (it == pending_.end()) continue;
      fn = std::move(it->second);
      pending_.erase(it);
    }
    fn(r);
  }
}

// 3PC termination messages of a round this node leads (to itself too).
void ParticipantNode::SendPeerMsg(OutPeerMsg m) {
  if (stopped_) return;
  std::shared_ptr<v1::ParticipantTxn::Stub> stub =
      v1::ParticipantTxn::NewStub(channels_.Get(m.address));
  const std::string txn = m.txn_id, target = m.target;
  const uint64_t ballot = m.ballot;
  switch (m.type) {
    case PeerMsgType::kPromise:
      return CallPromise(stub, txn, ballot, options_.rpc_timeout_ms,
                         [this, txn, target, ballot](const absl::StatusOr<v1::PromiseResponse>& r) {
                           WithCore([&](ParticipantCore& c) {
                             c.OnPromiseReply(txn, target, ballot, r, clock_.NowMs());
                           });
                         });
    case PeerMsgType::kAccept:
      return CallAccept(stub, txn, ballot, m.value, options_.rpc_timeout_ms,
                        [this, txn, target, ballot](const absl::StatusOr<v1::AcceptResponse>& r) {
                          WithCore([&](ParticipantCore& c) {
                            c.OnAcceptReply(txn, target, ballot, r, clock_.NowMs());
                          });
                        });
    case PeerMsgType::kCommit:
    case PeerMsgType::kAbort: {
      // The decision: peers that miss it run a round of their own.
      v1::TxnRef ref;
      ref.set_txn_id(txn);
      if (m.type == PeerMsgType::kCommit) {
        AsyncUnary<v1::CommitResponse>(
            std::move(ref), options_.rpc_timeout_ms,
            [stub](auto* ctx, auto* r, auto* resp, auto cb) {
              stub->async()->Commit(ctx, r, resp, std::move(cb));
            },
            [](const grpc::Status&, const v1::CommitResponse&) {});
      } else {
        AsyncUnary<v1::AbortResponse>(
            std::move(ref), options_.rpc_timeout_ms,
            [stub](auto* ctx, auto* r, auto* resp, auto cb) {
              stub->async()->Abort(ctx, r, resp, std::move(cb));
            },
            [](const grpc::Status&, const v1::AbortResponse&) {});
      }
      return;
    }
  }
}

void ParticipantNode::SendQuery(OutQuery q) {
  if (stopped_) return;
  const std::string txn = q.txn_id, target = q.target;
  auto report = [this, txn, target](const absl::StatusOr<v1::QueryStateResponse>& r) {
    WithCore([&](ParticipantCore& c) { c.OnQueryReply(txn, target, r, clock_.NowMs()); });
  };
  if (!q.to_coordinator) {
    return CallQueryState(v1::ParticipantTxn::NewStub(channels_.Get(q.address)), txn,
                          options_.rpc_timeout_ms, std::move(report));
  }
  std::shared_ptr<v1::Coordinator::Stub> stub = v1::Coordinator::NewStub(channels_.Get(q.address));
  v1::TxnRef ref;
  ref.set_txn_id(txn);
  AsyncUnary<v1::QueryStateResponse>(
      std::move(ref), options_.rpc_timeout_ms,
      [stub](auto* ctx, auto* req, auto* resp, auto cb) {
        stub->async()->QueryState(ctx, req, resp, std::move(cb));
      },
      [report = std::move(report)](const grpc::Status& s, const v1::QueryStateResponse& resp) {
        report(s.ok() ? absl::StatusOr<v1::QueryStateResponse>(resp) : FromGrpc(s));
      });
}

}  // namespace atomq::participant
