#include "participant/server/participant_server.h"

#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "common/crash.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/status.h"
#include "common/validate.h"

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
  absl::StatusOr<std::vector<uint64_t>> ScanMessages(uint64_t queue_id, uint64_t from, uint64_t to,
                                                     uint32_t limit) const override {
    std::vector<uint64_t> seqs;
    for (uint64_t block = from >> 8; seqs.size() < limit && from < to; ++block) {
      const std::string prefix = MessageKey(queue_id, block << 8).substr(0, 15);
      bool past = false;
      ATOMQ_RETURN_IF_ERROR(
          storage_->Scan(kMessagesDb, prefix, [&](std::string_view key, std::string_view) {
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
std::function<void(const Reply&)> ReplyTo(UnaryReactor* reactor, Resp* resp) {
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

// `deliver`, after an audit line of the admin action (common/access.h) and
// its result.
std::function<void(const Reply&)> Audited(std::function<void(const Reply&)> deliver,
                                          std::string who, std::string action, AuditFields fields) {
  return [deliver = std::move(deliver), who = std::move(who), action = std::move(action),
          fields = std::move(fields)](const Reply& r) mutable {
    fields.emplace_back("result", r.status.ok() ? "OK" : r.status.ToString());
    Audit(who, action, fields);
    deliver(r);
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

// The crash points a batch reaches once durable, if any is armed.
std::function<void()> CrashPointsOf(const Batch& batch) {
  const bool prepared =
      CrashArmed("after-prepare-logged") && WritesRecord(batch, kPreparedDb, v1::PREPARED);
  const bool committed = CrashArmed("after-commit-applied-before-ack") &&
                         WritesRecord(batch, kOutcomesDb, v1::STATE_COMMITTED);
  if (!prepared && !committed) return nullptr;
  return [prepared, committed] {
    if (prepared) CrashPoint("after-prepare-logged");
    if (committed) CrashPoint("after-commit-applied-before-ack");
  };
}

// Answered by the adapter, not the core: an empty item is refused, and an
// END notice (forget) is best effort with an empty result.
bool AnsweredHere(const v1::BatchItem& item) {
  const v1::BatchItem::KindCase k = item.kind_case();
  return k == v1::BatchItem::KIND_NOT_SET || k == v1::BatchItem::kForget;
}

// Fills `result` with the core's reply to one Batch item, then calls `done`.
std::function<void(const Reply&)> FillBatchResult(v1::BatchResult* result,
                                                  std::function<void()> done) {
  return [result, done = std::move(done)](const Reply& r) {
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
  };
}

// The items of a Batch call, in order, to the core (`rids[i]` item i's id;
// 0 for an item answered by the adapter, which only a forget still reaches).
void HandToCore(ParticipantCore& c, const v1::BatchRequest& req, const std::vector<RequestId>& rids,
                int64_t now) {
  for (int i = 0; i < req.items_size(); ++i) {
    const v1::BatchItem& item = req.items(i);
    if (rids[i] == 0 && item.kind_case() != v1::BatchItem::kForget) continue;
    switch (item.kind_case()) {
      case v1::BatchItem::kPrepare:
        c.Prepare(rids[i], item.prepare(), now);
        break;
      case v1::BatchItem::kPreCommit:
        c.PreCommit(rids[i], item.pre_commit().txn_id(), now);
        break;
      case v1::BatchItem::kCommit:
        c.Commit(rids[i], item.commit().txn_id(), now);
        break;
      case v1::BatchItem::kAbort:
        c.Abort(rids[i], item.abort().txn_id(), now);
        break;
      case v1::BatchItem::kForget:
        c.Forget(item.forget().txn_id(), now);
        break;
      case v1::BatchItem::KIND_NOT_SET:
        break;
    }
  }
}

}  // namespace

class ParticipantNode::TxnService final : public LoopService<v1::ParticipantTxn> {
 public:
  TxnService(ParticipantNode* node, RpcLoop* loop) : node_(node) {
    ServeMember(loop, this, "Prepare", this, &TxnService::Prepare);
    ServeMember(loop, this, "PreCommit", this, &TxnService::PreCommit);
    ServeMember(loop, this, "Commit", this, &TxnService::Commit);
    ServeMember(loop, this, "Abort", this, &TxnService::Abort);
    ServeMember(loop, this, "QueryState", this, &TxnService::QueryState);
    ServeMember(loop, this, "ListTransactions", this, &TxnService::ListTransactions);
    ServeMember(loop, this, "Promise", this, &TxnService::Promise);
    ServeMember(loop, this, "Accept", this, &TxnService::Accept);
    ServeMember(loop, this, "Stage", this, &TxnService::Stage);
    ServeMember(loop, this, "Batch", this, &TxnService::Batch);
    ServeMember(loop, this, "Resolve", this, &TxnService::Resolve);
    Check();
  }

  // Answers and returns true unless the caller holds `role` (common/access.h).
  bool Refuse(grpc::ServerContext* ctx, UnaryReactor* reactor, const char* method, Role role) {
    return Refused(reactor, node_->options_.access->Check(*ctx, method, {role}));
  }

  void Prepare(grpc::ServerContext* ctx, const v1::PrepareRequest* req, v1::PrepareResponse* resp,
               UnaryReactor* reactor) {
    if (Refuse(ctx, reactor, "ParticipantTxn.Prepare", Role::kPeer)) return;
    if (absl::Status st = node_->CheckCoordinator(*req); !st.ok()) {
      reactor->Finish(ToGrpc(st));
      return;
    }
    auto deliver = ReplyTo(reactor, resp);
    RequestId rid = node_->replies_.Expect([deliver](const Reply& r) {
      const auto* vote = std::get_if<v1::PrepareResponse>(&r.body);
      if (r.status.ok() && vote != nullptr && vote->vote() == v1::YES) {
        CrashPoint("before-vote-sent");
      }
      deliver(r);
    });
    node_->WithCore([&](ParticipantCore& c) { c.Prepare(rid, *req, node_->clock_.NowMs()); });
  }
  void PreCommit(grpc::ServerContext* ctx, const v1::TxnRef* req, v1::PreCommitResponse* resp,
                 UnaryReactor* reactor) {
    if (Refuse(ctx, reactor, "ParticipantTxn.PreCommit", Role::kPeer)) return;
    RequestId rid = node_->replies_.Expect(ReplyTo(reactor, resp));
    node_->WithCore(
        [&](ParticipantCore& c) { c.PreCommit(rid, req->txn_id(), node_->clock_.NowMs()); });
  }
  void Commit(grpc::ServerContext* ctx, const v1::TxnRef* req, v1::CommitResponse* resp,
              UnaryReactor* reactor) {
    if (Refuse(ctx, reactor, "ParticipantTxn.Commit", Role::kPeer)) return;
    RequestId rid = node_->replies_.Expect(ReplyTo(reactor, resp));
    node_->WithCore(
        [&](ParticipantCore& c) { c.Commit(rid, req->txn_id(), node_->clock_.NowMs()); });
  }
  void Abort(grpc::ServerContext* ctx, const v1::TxnRef* req, v1::AbortResponse* resp,
             UnaryReactor* reactor) {
    if (Refuse(ctx, reactor, "ParticipantTxn.Abort", Role::kPeer)) return;
    RequestId rid = node_->replies_.Expect(ReplyTo(reactor, resp));
    node_->WithCore(
        [&](ParticipantCore& c) { c.Abort(rid, req->txn_id(), node_->clock_.NowMs()); });
  }
  void QueryState(grpc::ServerContext* ctx, const v1::TxnRef* req, v1::QueryStateResponse* resp,
                  UnaryReactor* reactor) {
    if (Refuse(ctx, reactor, "ParticipantTxn.QueryState", Role::kPeer)) return;
    RequestId rid = node_->replies_.Expect(ReplyTo(reactor, resp));
    // Its answer decides outcomes, so it must not come from a group leader
    // deposed without knowing it: an empty batch, written after the
    // question came, proves this node still led then (docs/design.md 10.2).
    // On one disk it costs an empty write.
    ParticipantNode* node = node_;
    node_->core_.SubmitOrdered(atomq::Batch{}, [node, rid, txn = req->txn_id()](absl::Status st) {
      if (!st.ok()) {
        std::optional<ReplyFn> reply = node->replies_.Take(rid);
        if (reply.has_value()) (*reply)(Reply{rid, st, {}});
        return;
      }
      node->WithCore([&](ParticipantCore& c) { c.QueryState(rid, txn, node->clock_.NowMs()); });
    });
  }
  void Promise(grpc::ServerContext* ctx, const v1::PromiseRequest* req, v1::PromiseResponse* resp,
               UnaryReactor* reactor) {
    if (Refuse(ctx, reactor, "ParticipantTxn.Promise", Role::kPeer)) return;
    RequestId rid = node_->replies_.Expect(ReplyTo(reactor, resp));
    node_->WithCore([&](ParticipantCore& c) {
      c.Promise(rid, req->txn_id(), req->ballot(), node_->clock_.NowMs());
    });
  }
  void Accept(grpc::ServerContext* ctx, const v1::AcceptRequest* req, v1::AcceptResponse* resp,
              UnaryReactor* reactor) {
    if (Refuse(ctx, reactor, "ParticipantTxn.Accept", Role::kPeer)) return;
    RequestId rid = node_->replies_.Expect(ReplyTo(reactor, resp));
    node_->WithCore([&](ParticipantCore& c) {
      c.Accept(rid, req->txn_id(), req->ballot(), req->value(), node_->clock_.NowMs());
    });
  }
  void Batch(grpc::ServerContext* ctx, const v1::BatchRequest* req, v1::BatchResponse* resp,
             UnaryReactor* reactor) {
    if (Refuse(ctx, reactor, "ParticipantTxn.Batch", Role::kPeer)) return;
    const int n = req->items_size();
    if (n > static_cast<int>(node_->options_.batch_items_max)) {
      reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   absl::StrCat("batch of ", n, " items; at most ",
                                                node_->options_.batch_items_max, " allowed")));
      return;
    }
    if (n == 0) {
      reactor->Finish(grpc::Status::OK);
      return;
    }
    for (int i = 0; i < n; ++i) resp->add_results();
    // Items are answered on whatever thread releases them; each writes only
    // its own result, and the last one finishes the call.
    auto remaining = std::make_shared<std::atomic<int>>(n);
    std::function<void()> done = [reactor, remaining] {
      if (remaining->fetch_sub(1) == 1) reactor->Finish(grpc::Status::OK);
    };
    std::vector<RequestId> rids(n, 0);
    std::vector<absl::Status> refused(n);
    for (int i = 0; i < n; ++i) {
      const v1::BatchItem& item = req->items(i);
      if (item.kind_case() == v1::BatchItem::KIND_NOT_SET) {
        refused[i] = absl::InvalidArgumentError(absl::StrCat("batch item ", i, " is empty"));
      } else if (item.kind_case() == v1::BatchItem::kPrepare) {
        refused[i] = node_->CheckCoordinator(item.prepare());
      }
      if (AnsweredHere(item) || !refused[i].ok()) continue;
      rids[i] = node_->replies_.Expect(FillBatchResult(resp->mutable_results(i), done));
    }
    node_->WithCore([&](ParticipantCore& c) { HandToCore(c, *req, rids, node_->clock_.NowMs()); });
    for (int i = 0; i < n; ++i) {
      if (rids[i] != 0) continue;
      resp->mutable_results(i)->set_code(static_cast<int>(refused[i].code()));
      resp->mutable_results(i)->set_message(std::string(refused[i].message()));
      done();
    }
  }

  // Staged work is memory only, so the core answers at once.
  void Stage(grpc::ServerContext* ctx, const v1::StageRequest* req, v1::StageResponse* resp,
             UnaryReactor* reactor) {
    absl::StatusOr<std::string> who =
        node_->options_.access->CheckOps(*ctx, "ParticipantTxn.Stage", req->ops());
    if (Refused(reactor, who)) return;
    absl::StatusOr<v1::StageResponse> r;
    node_->WithCore([&](ParticipantCore& c) { r = c.Stage(*req, node_->clock_.NowMs(), *who); });
    if (r.ok()) *resp = std::move(*r);
    reactor->Finish(ToGrpc(r.status()));
  }

  void ListTransactions(grpc::ServerContext* ctx, const v1::ListParticipantTxnsRequest* req,
                        v1::ListParticipantTxnsResponse* resp, UnaryReactor* reactor) {
    if (Refuse(ctx, reactor, "ParticipantTxn.ListTransactions", Role::kOperator)) return;
    const ServerOptions& o = node_->options_;
    absl::StatusOr<v1::ListParticipantTxnsResponse> page =
        node_->core_.Inspect([&](const ParticipantCore& c) {
          return c.ListTransactions(*req, o.list_limit_max, o.list_reply_bytes_max);
        });
    if (page.ok()) *resp = std::move(*page);
    reactor->Finish(ToGrpc(page.status()));
  }

  // Operator resolution (heuristic): answered once the outcome is durable.
  void Resolve(grpc::ServerContext* ctx, const v1::ResolveRequest* req, v1::ResolveResponse* resp,
               UnaryReactor* reactor) {
    absl::StatusOr<std::string> who =
        node_->options_.access->Check(*ctx, "ParticipantTxn.Resolve", {Role::kOperator});
    if (Refused(reactor, who)) return;
    RequestId rid = node_->replies_.Expect(Audited(ReplyTo(reactor, resp), *who, "resolve",
                                                   {{"txn", req->txn_id()},
                                                    {"outcome", v1::Outcome_Name(req->outcome())},
                                                    {"note", req->operator_note()}}));
    node_->WithCore([&](ParticipantCore& c) { c.Resolve(rid, *req, node_->clock_.NowMs(), *who); });
  }

 private:
  ParticipantNode* node_;
};

class ParticipantNode::QueueService final : public LoopService<v1::Queue> {
 public:
  QueueService(ParticipantNode* node, RpcLoop* loop) : node_(node) {
    ServeMember(loop, this, "CreateQueue", this, &QueueService::CreateQueue);
    ServeMember(loop, this, "DeleteQueue", this, &QueueService::DeleteQueue);
    ServeMember(loop, this, "ListQueues", this, &QueueService::ListQueues);
    ServeMember(loop, this, "PurgeQueue", this, &QueueService::PurgeQueue);
    // A long-poll learns that its client is gone.
    ServeMember(loop, this, "Receive", node, &ParticipantNode::StartReceive,
                /*watch_cancel=*/true);
    ServeMember(loop, this, "Ack", this, &QueueService::Ack);
    ServeMember(loop, this, "Nack", this, &QueueService::Nack);
    ServeMember(loop, this, "Send", this, &QueueService::Send);
    ServeBidi<v1::SubscribeRequest, v1::SubscribeResponse>(
        loop, this, "Subscribe",
        [node](grpc::ServerContext* ctx) { return node->StartSubscribe(ctx); });
    Check();
  }

  // Answers and returns true unless the caller holds `role` on `queue`.
  bool Refuse(grpc::ServerContext* ctx, UnaryReactor* reactor, const char* method, Role role,
              const std::string& queue) {
    return Refused(reactor, node_->options_.access->Check(*ctx, method, {role}, queue));
  }

  void CreateQueue(grpc::ServerContext* ctx, const v1::CreateQueueRequest* req,
                   v1::CreateQueueResponse* resp, UnaryReactor* reactor) {
    absl::StatusOr<std::string> who =
        node_->options_.access->Check(*ctx, "Queue.CreateQueue", {Role::kOperator});
    if (Refused(reactor, who)) return;
    RequestId rid = node_->replies_.Expect(
        Audited(ReplyTo(reactor, resp), *who, "create-queue",
                {{"queue", req->name()}, {"dead_letter_queue", req->dead_letter_queue()}}));
    node_->WithCore([&](ParticipantCore& c) { c.CreateQueue(rid, *req, node_->clock_.NowMs()); });
  }
  void DeleteQueue(grpc::ServerContext* ctx, const v1::DeleteQueueRequest* req,
                   v1::DeleteQueueResponse* resp, UnaryReactor* reactor) {
    absl::StatusOr<std::string> who =
        node_->options_.access->Check(*ctx, "Queue.DeleteQueue", {Role::kOperator});
    if (Refused(reactor, who)) return;
    RequestId rid = node_->replies_.Expect(
        Audited(ReplyTo(reactor, resp), *who, "delete-queue", {{"queue", req->name()}}));
    node_->WithCore(
        [&](ParticipantCore& c) { c.DeleteQueue(rid, req->name(), node_->clock_.NowMs()); });
  }
  void PurgeQueue(grpc::ServerContext* ctx, const v1::PurgeQueueRequest* req,
                  v1::PurgeQueueResponse* resp, UnaryReactor* reactor) {
    RequestId rid = node_->replies_.Expect(ReplyTo(reactor, resp));
    node_->WithCore([&](ParticipantCore& c) { c.PurgeQueue(rid, req->name()); });
  }
  void ListQueues(grpc::ServerContext* ctx, const v1::ListQueuesRequest* req,
                  v1::ListQueuesResponse* resp, UnaryReactor* reactor) {
    if (Refused(reactor, node_->options_.access->Identify(*ctx, "Queue.ListQueues"))) return;
    std::vector<v1::QueueInfo> list =
        node_->core_.Inspect([](const ParticipantCore& c) { return c.ListQueues(); });
    for (v1::QueueInfo& q : list) *resp->add_queues() = std::move(q);
    reactor->Finish(grpc::Status::OK);
  }
  void Nack(grpc::ServerContext* ctx, const v1::NackRequest* req, v1::NackResponse* resp,
            UnaryReactor* reactor) {
    if (Refuse(ctx, reactor, "Queue.Nack", Role::kConsumer, req->queue())) return;
    RequestId rid = node_->replies_.Expect(ReplyTo(reactor, resp));
    node_->WithCore([&](ParticipantCore& c) { c.Nack(rid, *req, node_->clock_.NowMs()); });
  }
  void Send(grpc::ServerContext* ctx, const v1::SendRequest* req, v1::SendResponse* resp,
            UnaryReactor* reactor) {
    if (Refuse(ctx, reactor, "Queue.Send", Role::kProducer, req->queue())) return;
    RequestId rid = node_->replies_.Expect(ReplyTo(reactor, resp));
    node_->WithCore([&](ParticipantCore& c) { c.Send(rid, *req, node_->clock_.NowMs()); });
  }
  void Ack(grpc::ServerContext* ctx, const v1::AckRequest* req, v1::AckResponse* resp,
           UnaryReactor* reactor) {
    if (Refuse(ctx, reactor, "Queue.Ack", Role::kConsumer, req->queue())) return;
    RequestId rid = node_->replies_.Expect(ReplyTo(reactor, resp));
    node_->WithCore([&](ParticipantCore& c) {
      c.Ack(rid, req->queue(), req->sequence(), req->lease_token(), node_->clock_.NowMs());
    });
  }

 private:
  ParticipantNode* node_;
};

ParticipantNode::ParticipantNode(Config config, ServerOptions options, Storage* storage,
                                 RpcLoop* loop)
    : options_(options),
      storage_(storage),
      loop_(loop),
      view_(std::make_unique<View>(storage)),
      txn_service_(std::make_unique<TxnService>(this, loop)),
      queue_service_(std::make_unique<QueueService>(this, loop)),
      channels_(options.channels_max),
      core_(
          std::make_unique<ParticipantCore>(std::move(config), view_.get()), storage, &clock_,
          &timers_, &stopped_, [this](Output out) { Dispatch(std::move(out)); }, CrashPointsOf),
      gc_(&timers_, &clock_, &stopped_, options.gc_interval_ms, options.gc_batch_max,
          [this] { return OfferForgettable(); }),
      // Never full: every pass returns all that expired.
      lease_sweep_(&timers_, &clock_, &stopped_, options.lease_sweep_ms, /*batch_max=*/0, [this] {
        WithCore([&](ParticipantCore& c) { c.ExpireLeases(clock_.NowMs()); });
        return size_t{0};
      }) {
  waiter_shares_ = std::make_unique<IdentityShares>(options.waiters_per_identity_max);
  subscription_shares_ = std::make_unique<IdentityShares>(options.subscriptions_per_identity_max);
}

ParticipantNode::~ParticipantNode() { Stop(); }

void ParticipantNode::Stop() {
  stopped_ = true;
  timers_.Stop();
}

std::string ParticipantNode::RenderMetrics() {
  std::string out;
  AppendStorageMetrics(&out, storage_->Stats());
  const uint64_t erased =
      core_.Inspect([](const ParticipantCore& c) { return c.outcomes_erased(); });
  AppendMetric(&out, "atomq_outcomes_erased_total", "counter",
               "Outcomes of ended transactions erased after --retention_ms.", double(erased));
  AppendMetric(&out, "atomq_channels_created_total", "counter",
               "Outbound channels made (to configured coordinators and peers only).",
               double(channels_.created()));
  AppendMetric(&out, "atomq_dials_skipped_total", "counter",
               "Queries and termination messages not sent: their target is not configured.",
               double(dials_skipped_.load()));
  AppendQueueMetrics(&out);
  AppendServerMetrics(&out, "participant", options_.data_dir);
  return out;
}

// Per queue (as many as --queues_max), and the prepared transactions.
void ParticipantNode::AppendQueueMetrics(std::string* out) {
  // One look at the core: the gauges and counters of one moment.
  const auto [queues, prepared, counts] = core_.Inspect([](const ParticipantCore& c) {
    return std::make_tuple(c.ListQueues(), c.prepared_gauges(), c.queue_counts());
  });
  struct Gauge {
    const char* name;
    const char* help;
    uint64_t (v1::QueueInfo::*value)() const;
  };
  static const Gauge kGauges[] = {
      {"atomq_queue_ready_messages", "Messages deliverable now.", &v1::QueueInfo::ready},
      {"atomq_queue_leased_messages", "Messages delivered and not acked.", &v1::QueueInfo::leased},
      {"atomq_queue_pending_in_txn_messages",
       "Enqueues and acks of the queue held by prepared transactions.",
       &v1::QueueInfo::pending_in_txn},
      {"atomq_queue_version", "The queue's next sequence: raised by every committed enqueue.",
       &v1::QueueInfo::version},
  };
  for (const Gauge& g : kGauges) {
    absl::StrAppend(out, "# HELP ", g.name, " ", g.help, "\n# TYPE ", g.name, " gauge\n");
    for (const v1::QueueInfo& q : queues) {
      absl::StrAppend(out, g.name, "{queue=\"", q.name(), "\"} ", (q.*g.value)(), "\n");
    }
  }
  struct Counter {
    const char* name;
    const char* help;
    uint64_t ParticipantCore::QueueCounts::*value;
  };
  static const Counter kCounters[] = {
      {"atomq_queue_enqueued_messages_total",
       "Messages made visible: committed, sent, or moved in as dead letters.",
       &ParticipantCore::QueueCounts::enqueued},
      {"atomq_queue_delivered_messages_total", "Deliveries under a lease.",
       &ParticipantCore::QueueCounts::delivered},
      {"atomq_queue_redelivered_messages_total", "Deliveries of a message delivered before.",
       &ParticipantCore::QueueCounts::redelivered},
      {"atomq_queue_acked_messages_total", "Messages acked, alone or in a committed transaction.",
       &ParticipantCore::QueueCounts::acked},
      {"atomq_queue_dead_lettered_messages_total", "Messages moved to the dead-letter queue.",
       &ParticipantCore::QueueCounts::dead_lettered},
  };
  for (const Counter& k : kCounters) {
    absl::StrAppend(out, "# HELP ", k.name, " ", k.help, " Since the process started.\n# TYPE ",
                    k.name, " counter\n");
    for (const auto& [queue, c] : counts) {
      absl::StrAppend(out, k.name, "{queue=\"", queue, "\"} ", c.*k.value, "\n");
    }
  }
  absl::StrAppend(out,
                  "# HELP atomq_transactions_prepared Transactions prepared here, by state.\n"
                  "# TYPE atomq_transactions_prepared gauge\n"
                  "atomq_transactions_prepared{state=\"prepared\"} ",
                  prepared.prepared, "\natomq_transactions_prepared{state=\"precommitted\"} ",
                  prepared.precommitted, "\n");
  AppendMetric(out, "atomq_transactions_in_doubt", "gauge",
               "Prepared transactions asking the coordinator and peers for their outcome.",
               double(prepared.in_doubt));
  const int64_t now = clock_.NowMs();
  AppendMetric(out, "atomq_transactions_in_doubt_oldest_seconds", "gauge",
               "Age of the oldest transaction in doubt here; 0 when none is.",
               prepared.oldest_in_doubt_ms == 0 || prepared.oldest_in_doubt_ms > now
                   ? 0
                   : double(now - prepared.oldest_in_doubt_ms) / 1000);
}

size_t ParticipantNode::OfferForgettable() {
  const int64_t now = clock_.NowMs();
  const int64_t cutoff = now - static_cast<int64_t>(retention_ms_);
  const std::vector<std::string> keys =
      ScanTimeIndex(storage_, kForgettableDb, cutoff, options_.gc_batch_max, "outcome collection");
  if (!keys.empty()) WithCore([&](ParticipantCore& c) { c.CollectOutcomes(keys, now); });
  return keys.size();
}

grpc::Service* ParticipantNode::txn_service() { return txn_service_.get(); }
grpc::Service* ParticipantNode::queue_service() { return queue_service_.get(); }

absl::StatusOr<std::unique_ptr<ParticipantNode>> ParticipantNode::Create(Config config,
                                                                         ServerOptions options,
                                                                         Storage* storage,
                                                                         RpcLoop* loop) {
  if (options.access == nullptr) options.access = Access::Open();
  const uint32_t receive_max = config.receive_max;
  const uint64_t retention_ms = config.retention_ms;
  const std::string participant_id = config.participant_id;
  std::unique_ptr<ParticipantNode> node(
      new ParticipantNode(std::move(config), options, storage, loop));
  node->core_receive_max_ = receive_max;
  node->retention_ms_ = retention_ms;
  node->participant_id_ = participant_id;
  absl::StatusOr<RecoveredState> loaded = schema::LoadRecoveredState(
      [&](const char* db, const schema::RecordFn& fn) { return storage->Scan(db, "", fn); });
  ATOMQ_RETURN_IF_ERROR(loaded.status());
  RecoveredState state = *std::move(loaded);
  uint64_t stored = 0;
  for (const auto& [queue_id, backlog] : state.messages) stored += backlog.count;
  std::string summary =
      absl::StrCat("recovered ", state.queues.size(), " queues, ", stored, " messages, ",
                   state.prepared.size(), " prepared transactions");
  node->WithCore([&](ParticipantCore& c) { c.Recover(std::move(state), node->clock_.NowMs()); });
  LogLine(summary);
  node->SweepLeases();
  ParticipantNode* raw = node.get();
  raw->timers_.At(raw->clock_.NowMs() + options.gc_interval_ms, [raw] { raw->CollectGarbage(); });
  return node;
}

void ParticipantNode::Dispatch(Output out) {
  for (const std::string& line : out.log) LogLine(line);
  if (!out.ready_queues.empty()) WakeQueues(out.ready_queues);
  for (OutQuery& q : out.queries) SendQuery(std::move(q));
  for (OutPeerMsg& m : out.peer_msgs) SendPeerMsg(std::move(m));
  core_.ArmTimers(out.timers);
  for (const Reply& r : out.replies) {
    std::optional<ReplyFn> fn = replies_.Take(r.request);
    if (fn.has_value()) (*fn)(r);
  }
}

// 3PC termination messages of a round this node leads (to itself too).
void ParticipantNode::SendPeerMsg(OutPeerMsg m) {
  if (stopped_) return;
  // Not sent: the round goes without its answer, as with a lost message.
  std::optional<std::string> members = AddressOf(m.target, /*coordinator=*/false);
  if (!members.has_value()) return;
  const std::string address = leaders_.Current(*members);
  std::shared_ptr<v1::ParticipantTxn::Stub> stub =
      v1::ParticipantTxn::NewStub(channels_.Get(address));
  const std::string txn = m.txn_id, target = m.target;
  const uint64_t ballot = m.ballot;
  // A peer that is a group: the next message goes to the leader its
  // members point at.
  auto learn = [this, members = *members, address](const absl::Status& st) {
    leaders_.Learn(members, address, st);
  };
  switch (m.type) {
    case PeerMsgType::kPromise:
      return CallPromise(
          loop_, stub, txn, ballot, options_.rpc_timeout_ms,
          [this, txn, target, ballot, learn](const absl::StatusOr<v1::PromiseResponse>& r) {
            learn(r.status());
            WithCore([&](ParticipantCore& c) {
              c.OnPromiseReply(txn, target, ballot, r, clock_.NowMs());
            });
          });
    case PeerMsgType::kAccept:
      return CallAccept(
          loop_, stub, txn, ballot, m.value, options_.rpc_timeout_ms,
          [this, txn, target, ballot, learn](const absl::StatusOr<v1::AcceptResponse>& r) {
            learn(r.status());
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
        CallOnLoop<v1::CommitResponse>(
            loop_, std::move(ref), options_.rpc_timeout_ms, /*wait_for_ready=*/false,
            [stub](auto* ctx, const auto& r, auto* cq) {
              return stub->PrepareAsyncCommit(ctx, r, cq);
            },
            [stub, learn](const grpc::Status& st, const v1::CommitResponse&) {
              learn(FromGrpc(st));
            });
      } else {
        CallOnLoop<v1::AbortResponse>(
            loop_, std::move(ref), options_.rpc_timeout_ms, /*wait_for_ready=*/false,
            [stub](auto* ctx, const auto& r, auto* cq) {
              return stub->PrepareAsyncAbort(ctx, r, cq);
            },
            [stub, learn](const grpc::Status& st, const v1::AbortResponse&) {
              learn(FromGrpc(st));
            });
      }
      return;
    }
  }
}

void ParticipantNode::SendQuery(OutQuery q) {
  if (stopped_) return;
  const std::string txn = q.txn_id, target = q.target;
  // Not sent: the core asks again on its timer, as after a lost answer.
  std::optional<std::string> members = AddressOf(q.target, q.to_coordinator);
  if (!members.has_value()) return;
  const std::string address = leaders_.Current(*members);
  auto report = [this, txn, target, members = *members,
                 address](const absl::StatusOr<v1::QueryStateResponse>& r) {
    leaders_.Learn(members, address, r.status());
    WithCore([&](ParticipantCore& c) { c.OnQueryReply(txn, target, r, clock_.NowMs()); });
  };
  if (!q.to_coordinator) {
    return CallQueryState(loop_, v1::ParticipantTxn::NewStub(channels_.Get(address)), txn,
                          options_.rpc_timeout_ms, std::move(report));
  }
  std::shared_ptr<v1::Coordinator::Stub> stub = v1::Coordinator::NewStub(channels_.Get(address));
  v1::TxnRef ref;
  ref.set_txn_id(txn);
  CallOnLoop<v1::QueryStateResponse>(
      loop_, std::move(ref), options_.rpc_timeout_ms, /*wait_for_ready=*/false,
      [stub](auto* ctx, const auto& r, auto* cq) {
        return stub->PrepareAsyncQueryState(ctx, r, cq);
      },
      [stub, report = std::move(report)](const grpc::Status& s,
                                         const v1::QueryStateResponse& resp) {
        report(s.ok() ? absl::StatusOr<v1::QueryStateResponse>(resp) : FromGrpc(s));
      });
}

absl::Status ParticipantNode::CheckCoordinator(const v1::PrepareRequest& req) const {
  if (options_.coordinators.count(req.coordinator_id()) > 0) return absl::OkStatus();
  if (absl::Status s = ValidateNodeId(req.coordinator_id()); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("coordinator_id: ", s.message()));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("coordinator \"", Clip(req.coordinator_id()),
                   "\" is not one of this participant's --coordinators; it prepares only for "
                   "coordinators it can ask about the outcome"));
}

std::optional<std::string> ParticipantNode::AddressOf(const std::string& target, bool coordinator) {
  const std::map<std::string, std::string>& known =
      coordinator ? options_.coordinators : options_.peers;
  auto it = known.find(target);
  if (it != known.end()) return it->second;
  if (!coordinator && target == participant_id_) return options_.self_address;
  ++dials_skipped_;
  // One line per interval, however many are skipped: a forged Prepare may
  // name thousands of peers.
  const int64_t now = clock_.NowMs();
  absl::MutexLock lock(&skip_log_mu_);
  ++skips_unlogged_;
  if (skip_logged_ms_ >= 0 && now - skip_logged_ms_ < kSkipLogIntervalMs) return std::nullopt;
  LogLine(absl::StrCat("not asking ", coordinator ? "coordinator " : "peer ", "\"", Clip(target),
                       "\": not in --", coordinator ? "coordinators" : "peers", " (",
                       skips_unlogged_, " such skipped since the last line)"));
  skip_logged_ms_ = now;
  skips_unlogged_ = 0;
  return std::nullopt;
}

}  // namespace atomq::participant
