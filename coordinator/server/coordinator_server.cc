#include "coordinator/server/coordinator_server.h"

#include <deque>

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
    return FindRecord<v1::CoordinatorTxnRecord>(storage_, kTxnDb, txn_id);
  }

 private:
  Storage* storage_;
};

namespace {

// Whether a batch writes a transaction record in one of `states` (for the
// crash points).
bool WritesState(const Batch& batch, std::initializer_list<v1::TxnState> states) {
  for (const Write& w : batch.writes) {
    if (w.db != kTxnDb || w.erase) continue;
    v1::CoordinatorTxnRecord rec;
    if (DecodeRecord(w.value, &rec).ok() &&
        std::find(states.begin(), states.end(), rec.state()) != states.end()) {
      return true;
    }
  }
  return false;
}

// `st`, or when it is OK the body `get()` reads from the item's result.
template <typename Resp, typename Get>
absl::StatusOr<Resp> BodyOr(const absl::Status& st, Get get) {
  if (!st.ok()) return st;
  return get();
}

// The crash points a batch reaches once durable, if any is armed.
std::function<void()> CrashPointsOf(const Batch& batch) {
  const bool decision = CrashArmed("after-decision-logged") &&
                        WritesState(batch, {v1::STATE_COMMITTED, v1::STATE_ABORTED});
  const bool staged = CrashArmed("after-staged-logged") && WritesState(batch, {v1::PREPARING});
  if (!decision && !staged) return nullptr;
  return [decision, staged] {
    if (decision) CrashPoint("after-decision-logged");
    if (staged) CrashPoint("after-staged-logged");
  };
}

}  // namespace

// One ExecuteStream call. Outlives its gRPC reactor role while replies are
// owed (Pending entries hold it); after OnDone it drops them.
class CoordinatorServer::ExecuteStreamCall final
    : public BidiReactor<v1::ExecuteStreamRequest, v1::ExecuteStreamResponse>,
      public std::enable_shared_from_this<ExecuteStreamCall> {
 public:
  ExecuteStreamCall(CoordinatorServer* server, grpc::ServerContext* ctx)
      : server_(server), ctx_(ctx) {}

  // Reads the client's requests, or when `who` is a refusal, ends with it.
  void Start(absl::StatusOr<std::string> who) {
    self_ = shared_from_this();
    server_->streams_open_++;
    absl::MutexLock lock(&mu_);
    if (!who.ok()) {
      finishing_ = true;
      Finish(grpc::Status(static_cast<grpc::StatusCode>(who.status().code()),
                          std::string(who.status().message())));
      return;
    }
    identity_ = *std::move(who);
    StartRead(&in_);
  }

  // Results for items of this call; written as one message when no write is
  // under way, else with the next one.
  void Deliver(std::vector<v1::StreamedResult> results) {
    absl::MutexLock lock(&mu_);
    unanswered_ -= std::min<uint64_t>(unanswered_, results.size());
    if (done_ || finish_wanted_) return;
    for (v1::StreamedResult& r : results) *out_.add_results() = std::move(r);
    WriteNextLocked();
    ResumeOrStallLocked();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      absl::MutexLock lock(&mu_);
      reads_done_ = true;
      WriteNextLocked();
      return;
    }
    const int n = in_.items_size();
    std::string refused;
    if (static_cast<uint32_t>(n) > server_->options_.stream_items_max) {
      refused = absl::StrCat("ExecuteStreamRequest has ", n, " items; --stream_items_max is ",
                             server_->options_.stream_items_max);
    } else if (server_->stopped_) {
      refused = "coordinator is shutting down";
    }
    if (!refused.empty()) {
      Refuse(refused);
    } else if (n > 0) {
      Execute();
    }
    absl::MutexLock lock(&mu_);
    if (done_ || finish_wanted_) return;
    if (MayReadLocked()) {
      StartRead(&in_);
    } else {
      read_paused_ = true;
      server_->stream_read_pauses_++;
      ResumeOrStallLocked();
    }
  }

  void OnReadMalformed(grpc::Status status) override {
    absl::MutexLock lock(&mu_);
    reads_done_ = true;
    if (finish_wanted_) return;
    finish_wanted_ = true;
    finish_status_ = std::move(status);
    WriteNextLocked();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      finish_wanted_ = true;
      finish_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
    }
    WriteNextLocked();
    ResumeOrStallLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    if (finish_wanted_) return;
    finish_wanted_ = true;
    finish_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    WriteNextLocked();
  }

  void OnDone() override {
    std::shared_ptr<ExecuteStreamCall> self;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      self.swap(self_);
    }
    server_->streams_open_--;
    // `self` may be the last reference: it goes when this returns.
  }

 private:
  // Answers every item of in_ with an error, `why` its message.
  void Refuse(const std::string& why) {
    const int n = in_.items_size();
    std::vector<v1::StreamedResult> results(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      results[static_cast<size_t>(i)].set_tag(in_.items(i).tag());
      results[static_cast<size_t>(i)].set_code(static_cast<int32_t>(
          server_->stopped_ ? absl::StatusCode::kUnavailable : absl::StatusCode::kInvalidArgument));
      results[static_cast<size_t>(i)].set_message(why);
    }
    server_->replies_failed_ += static_cast<uint64_t>(n);
    {
      absl::MutexLock lock(&mu_);
      unanswered_ += static_cast<uint64_t>(n);
    }
    Deliver(std::move(results));
  }

  // Hands every item of in_ the caller may run to the core in one call; the
  // others are answered PERMISSION_DENIED.
  void Execute() {
    const int n = in_.items_size();
    {
      absl::MutexLock lock(&mu_);
      unanswered_ += static_cast<uint64_t>(n);
    }
    std::vector<RequestId> rids(static_cast<size_t>(n), 0);
    std::vector<v1::StreamedResult> refused;
    for (int i = 0; i < n; ++i) {
      const v1::StreamedExecute& item = in_.items(i);
      absl::Status allowed = server_->options_.access->AllowOps(
          identity_, "Coordinator.ExecuteStream", item.request().ops());
      if (!allowed.ok()) {
        v1::StreamedResult& r = refused.emplace_back();
        r.set_tag(item.tag());
        r.set_code(static_cast<int32_t>(allowed.code()));
        r.set_message(std::string(allowed.message()));
        continue;
      }
      rids[static_cast<size_t>(i)] =
          server_->replies_.Expect(Pending{nullptr, nullptr, nullptr, self_, item.tag()});
    }
    server_->WithCore([&](CoordinatorCore& c) {
      const int64_t now = server_->clock_.NowMs();
      for (int i = 0; i < n; ++i) {
        if (rids[static_cast<size_t>(i)] == 0) continue;
        c.Execute(rids[static_cast<size_t>(i)], in_.items(i).request(), now);
      }
    });
    if (!refused.empty()) {
      server_->replies_failed_ += refused.size();
      Deliver(std::move(refused));
    }
  }

  // Results made but not yet taken by gRPC (a client that does not read
  // leaves them here).
  uint64_t BufferedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return static_cast<uint64_t>(out_.results_size()) +
           (writing_ ? static_cast<uint64_t>(writing_msg_.results_size()) : 0);
  }

  // Another request is read only while both bounds have room: the
  // transactions under way and the results waiting for the client.
  bool MayReadLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return unanswered_ < server_->options_.stream_in_flight_max &&
           BufferedLocked() < server_->options_.stream_replies_buffered_max;
  }

  // Reads again once there is room; while the results fill their bound, the
  // call ends after --stream_stalled_ms_max unless the client reads on.
  void ResumeOrStallLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (done_ || finish_wanted_) return;
    const bool full = BufferedLocked() >= server_->options_.stream_replies_buffered_max;
    if (!full) {
      if (stalled_) ++stall_round_;  // the client read: a pending stall timer is void
      stalled_ = false;
    } else if (!stalled_) {
      stalled_ = true;
      const uint64_t round = ++stall_round_;
      std::weak_ptr<ExecuteStreamCall> weak = self_;
      server_->timers_.At(server_->clock_.NowMs() + server_->options_.stream_stalled_ms_max,
                          [weak, round] {
                            if (auto call = weak.lock()) call->OnStalled(round);
                          });
    }
    if (read_paused_ && MayReadLocked()) {
      read_paused_ = false;
      StartRead(&in_);
    }
  }

  // The client has read none of its results for --stream_stalled_ms_max:
  // they are dropped and the call ends RESOURCE_EXHAUSTED. The status waits
  // behind the results gRPC holds, for a client that reads again; one that
  // still reads nothing after another such time has the call cancelled.
  void OnStalled(uint64_t round) {
    absl::MutexLock lock(&mu_);
    if (done_ || finish_wanted_ || finishing_ || !stalled_ || round != stall_round_) return;
    std::weak_ptr<ExecuteStreamCall> weak = self_;
    server_->timers_.At(server_->clock_.NowMs() + server_->options_.stream_stalled_ms_max, [weak] {
      auto call = weak.lock();
      if (call == nullptr) return;
      absl::MutexLock l(&call->mu_);
      if (!call->done_) call->ctx_->TryCancel();
    });
    const uint64_t buffered = BufferedLocked();
    server_->streams_ended_stalled_++;
    out_.Clear();
    finish_wanted_ = true;
    finishing_ = true;
    LogLine(absl::StrCat(
        "ExecuteStream ended: its client read none of ", buffered,
        " results for --stream_stalled_ms_max=", server_->options_.stream_stalled_ms_max, " ms"));
    Finish(grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("ExecuteStream cancelled: ", buffered,
                     " results waited for the client to read them (--stream_replies_buffered_max=",
                     server_->options_.stream_replies_buffered_max, ") for more than ",
                     server_->options_.stream_stalled_ms_max,
                     " ms (--stream_stalled_ms_max); results not received are lost, retry "
                     "those ids")));
  }

  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (done_ || writing_ || finishing_) return;
    if (out_.results_size() > 0 && !finish_wanted_) {
      writing_ = true;
      writing_msg_.Swap(&out_);
      out_.Clear();
      StartWrite(&writing_msg_);
      return;
    }
    // The client closed its side and everything it asked was answered.
    if (!finish_wanted_ && reads_done_ && unanswered_ == 0) finish_wanted_ = true;
    if (finish_wanted_) {
      finishing_ = true;
      Finish(finish_status_);
    }
  }

  CoordinatorServer* const server_;
  grpc::ServerContext* const ctx_;
  std::shared_ptr<ExecuteStreamCall> self_;  // until OnDone
  std::string identity_;                     // the caller, from Start
  v1::ExecuteStreamRequest in_;
  absl::Mutex mu_;
  v1::ExecuteStreamResponse out_ ABSL_GUARDED_BY(mu_);
  v1::ExecuteStreamResponse writing_msg_ ABSL_GUARDED_BY(mu_);
  uint64_t unanswered_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_wanted_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool stalled_ ABSL_GUARDED_BY(mu_) = false;      // results at their bound
  uint64_t stall_round_ ABSL_GUARDED_BY(mu_) = 0;  // which stall a timer belongs to
  grpc::Status finish_status_ ABSL_GUARDED_BY(mu_);
};

CoordinatorServer::CoordinatorServer(Config config, ServerOptions options, Storage* storage,
                                     RpcLoop* loop)
    : options_(options),
      storage_(storage),
      loop_(loop),
      view_(std::make_unique<View>(storage)),
      channels_(options.channels_max),
      core_(
          std::make_unique<CoordinatorCore>(std::move(config), view_.get()), storage, &clock_,
          &timers_, &stopped_, [this](Output out) { Dispatch(std::move(out)); }, CrashPointsOf),
      gc_(&timers_, &clock_, &stopped_, options.gc_interval_ms, options.gc_batch_max,
          [this] { return CollectGarbage(); }) {
  ServeMethods();
}

CoordinatorServer::~CoordinatorServer() { Stop(); }

void CoordinatorServer::ServeMethods() {
  ServeMember(loop_, this, "Execute", this, &CoordinatorServer::Execute);
  ServeBidi<v1::ExecuteStreamRequest, v1::ExecuteStreamResponse>(
      loop_, this, "ExecuteStream",
      [this](grpc::ServerContext* ctx) { return ExecuteStream(ctx); });
  ServeMember(loop_, this, "GetTransaction", this, &CoordinatorServer::GetTransaction);
  ServeMember(loop_, this, "ListTransactions", this, &CoordinatorServer::ListTransactions);
  ServeMember(loop_, this, "QueryState", this, &CoordinatorServer::QueryState);
  ServeMember(loop_, this, "Begin", this, &CoordinatorServer::Begin);
  ServeMember(loop_, this, "Commit", this, &CoordinatorServer::Commit);
  ServeMember(loop_, this, "Rollback", this, &CoordinatorServer::Rollback);
  Check();
}

std::string CoordinatorServer::RenderMetrics() {
  std::string out;
  AppendStorageMetrics(&out, storage_->Stats());
  out +=
      "# HELP atomq_execute_replies_total Execute replies by outcome.\n"
      "# TYPE atomq_execute_replies_total counter\n";
  absl::StrAppend(&out, "atomq_execute_replies_total{outcome=\"committed\"} ",
                  replies_committed_.load(), "\n");
  absl::StrAppend(&out, "atomq_execute_replies_total{outcome=\"aborted\"} ",
                  replies_aborted_.load(), "\n");
  absl::StrAppend(&out, "atomq_execute_replies_total{outcome=\"error\"} ", replies_failed_.load(),
                  "\n");
  const auto [in_flight, erased] = core_.Inspect(
      [](const CoordinatorCore& c) { return std::make_pair(c.in_flight(), c.records_erased()); });
  AppendMetric(&out, "atomq_finished_records_erased_total", "counter",
               "Finished transaction records erased after --retention_ms.", erased);
  AppendMetric(&out, "atomq_participant_batch_calls_total", "counter",
               "Batch calls made to participants.", batch_calls_);
  AppendMetric(&out, "atomq_participant_batch_items_total", "counter",
               "Protocol messages those Batch calls carried.", batch_items_);
  AppendMetric(&out, "atomq_transactions_in_flight", "gauge", "Undecided or unanswered.",
               double(in_flight));
  execute_seconds_.Render(&out, "atomq_execute_seconds",
                          "From an Execute (or a stream's item, or Commit) arriving to its reply.");
  batch_prepare_seconds_.Render(
      &out, "atomq_participant_prepare_seconds",
      "A Batch call carrying Prepares, from sent to the participant's answer (its votes).");
  batch_decision_seconds_.Render(
      &out, "atomq_participant_decision_seconds",
      "A Batch call carrying Commits or Aborts (and no Prepare), from sent to answered.");
  batch_items_per_call_.Render(&out, "atomq_participant_batch_messages",
                               "Protocol messages one Batch call to a participant carried.");
  AppendMetric(&out, "atomq_execute_streams_open", "gauge", "ExecuteStream calls open.",
               double(streams_open_.load()));
  AppendMetric(&out, "atomq_execute_stream_read_pauses_total", "counter",
               "Times an ExecuteStream stopped reading its client: --stream_in_flight_max or "
               "--stream_replies_buffered_max reached (back-pressure).",
               double(stream_read_pauses_.load()));
  AppendMetric(&out, "atomq_execute_streams_ended_stalled_total", "counter",
               "ExecuteStream calls ended RESOURCE_EXHAUSTED: their client read nothing for "
               "--stream_stalled_ms_max.",
               double(streams_ended_stalled_.load()));
  AppendServerMetrics(&out, "coordinator", options_.data_dir);
  return out;
}

void CoordinatorServer::Stop() {
  stopped_ = true;
  timers_.Stop();
}

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Create(Config config,
                                                                             ServerOptions options,
                                                                             Storage* storage,
                                                                             RpcLoop* loop) {
  if (options.access == nullptr) options.access = Access::Open();
  std::unique_ptr<CoordinatorServer> s(
      new CoordinatorServer(std::move(config), options, storage, loop));
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
  s->gc_.Start();
  return s;
}

void CoordinatorServer::Dispatch(Output out) {
  for (const std::string& line : out.log) LogLine(line);
  SendOrCrash(std::move(out.send));
  core_.ArmTimers(out.timers);
  ReleaseReplies(std::move(out.replies));
  ReleaseStateReplies(out.state_replies);
}

void CoordinatorServer::SendOrCrash(std::vector<OutMessage> msgs) {
  int commits = 0;
  for (const OutMessage& m : msgs) commits += m.type == MsgType::kCommit;
  bool crash_mid_fanout = commits >= 2 && CrashArmed("mid-commit-fanout");
  std::vector<OutMessage> to_send;
  for (OutMessage& m : msgs) {
    if (crash_mid_fanout && m.type == MsgType::kCommit) {
      // Make sure exactly one Commit reached its participant, then die.
      auto stub = v1::ParticipantTxn::NewStub(channels_.Get(leaders_.Current(m.address)));
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
    to_send.push_back(std::move(m));
  }
  if (!to_send.empty()) Send(std::move(to_send));
}

void CoordinatorServer::ReleaseReplies(std::vector<ExecuteReply> replies) {
  // Results of one stream leave together.
  std::map<std::shared_ptr<ExecuteStreamCall>, std::vector<v1::StreamedResult>> streamed;
  for (ExecuteReply& r : replies) {
    std::optional<Pending> p = replies_.Take(r.request);
    if (!p.has_value()) continue;
    if (p->execute != nullptr || p->stream != nullptr) {
      execute_seconds_.Observe(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - p->since).count());
    }
    if (!r.status.ok()) {
      ++replies_failed_;
    } else if (r.response.outcome() == v1::COMMITTED) {
      ++replies_committed_;
    } else {
      ++replies_aborted_;
    }
    if (p->stream != nullptr) {
      v1::StreamedResult& res = streamed[p->stream].emplace_back();
      res.set_tag(p->tag);
      res.set_code(static_cast<int32_t>(r.status.code()));
      res.set_message(std::string(r.status.message()));
      if (r.status.ok()) *res.mutable_response() = std::move(r.response);
      continue;
    }
    // Rollback has no body to fill (execute == nullptr).
    if (r.status.ok() && p->execute != nullptr) *p->execute = std::move(r.response);
    p->reactor->Finish(ToGrpc(r.status));
  }
  for (auto& [call, results] : streamed) call->Deliver(std::move(results));
}

void CoordinatorServer::ReleaseStateReplies(const std::vector<StateReply>& replies) {
  for (const StateReply& r : replies) {
    std::optional<Pending> p = replies_.Take(r.request);
    if (!p.has_value()) continue;
    if (p->execute != nullptr || p->stream != nullptr) {
      execute_seconds_.Observe(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - p->since).count());
    }
    p->state->set_state(r.state);
    p->reactor->Finish(grpc::Status::OK);
  }
}

// Carries protocol messages to one participant, many per Batch call: while
// calls are in flight, new messages wait and leave together in the next one,
// so the number of RPCs falls as load rises.
class CoordinatorServer::Link {
 public:
  // `members`: the participant's address, or its group's ("a|b|c").
  Link(CoordinatorServer* server, std::string members)
      : server_(server),
        members_(std::move(members)),
        members_count_(std::max<size_t>(1, SplitMembers(members_).size())) {}

  // Messages made together leave in one call when none is under way.
  void Send(std::vector<OutMessage> msgs) {
    std::vector<OutMessage> batch;
    {
      absl::MutexLock lock(&mu_);
      for (OutMessage& m : msgs) queued_.push_back(std::move(m));
      if (in_flight_ >= server_->options_.participant_calls_in_flight_max) return;
      batch = TakeLocked();
    }
    Start(std::move(batch));
  }

 private:
  std::vector<OutMessage> TakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<OutMessage> out;
    size_t n = std::min<size_t>(queued_.size(), server_->options_.batch_items_max);
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      out.push_back(std::move(queued_.front()));
      queued_.pop_front();
    }
    ++in_flight_;
    return out;
  }

  void Start(std::vector<OutMessage> msgs) {
    v1::BatchRequest req;
    auto sent = std::make_shared<std::vector<Sent>>();
    sent->reserve(msgs.size());
    for (OutMessage& m : msgs) {
      v1::BatchItem* item = req.add_items();
      switch (m.type) {
        case MsgType::kPrepare:
          *item->mutable_prepare() = std::move(m.prepare);
          break;
        case MsgType::kPreCommit:
          item->mutable_pre_commit()->set_txn_id(m.txn_id);
          break;
        case MsgType::kCommit:
          item->mutable_commit()->set_txn_id(m.txn_id);
          break;
        case MsgType::kAbort:
          item->mutable_abort()->set_txn_id(m.txn_id);
          break;
        case MsgType::kForget:
          item->mutable_forget()->set_txn_id(m.txn_id);
          break;
        case MsgType::kQuery:    // never batched: SendTermination
        case MsgType::kPromise:  // never batched: SendTermination
        case MsgType::kAccept:
          break;
      }
      sent->push_back(Sent{m.type, std::move(m.txn_id), std::move(m.participant)});
    }
    server_->batch_calls_++;
    server_->batch_items_ += msgs.size();
    server_->batch_items_per_call_.Observe(static_cast<double>(msgs.size()));
    Call(std::move(req), std::move(sent), members_count_ - 1);
  }

  // One Batch call to the member guessed to lead. A refusal that moves the
  // guess (a redirect, or a member that is down) is sent on at once, to
  // each member at most once; what still fails goes to the core, which
  // repeats it on its timers.
  void Call(v1::BatchRequest req, std::shared_ptr<std::vector<Sent>> sent, size_t tries_left) {
    const std::string address = server_->leaders_.Current(members_);
    std::shared_ptr<v1::ParticipantTxn::Stub> stub = StubFor(address);
    std::shared_ptr<v1::BatchRequest> again;
    if (tries_left > 0) again = std::make_shared<v1::BatchRequest>(req);
    const auto since = std::chrono::steady_clock::now();
    // One participant waits for ready: restarted, it is reached as soon as
    // it listens (within the deadline), not refused while the channel waits
    // out its reconnect backoff. A group fails fast and tries the next.
    CallOnLoop<v1::BatchResponse>(
        server_->loop_, std::move(req), server_->options_.rpc_timeout_ms,
        /*wait_for_ready=*/members_count_ == 1,
        [stub](auto* ctx, const auto& r, auto* cq) { return stub->PrepareAsyncBatch(ctx, r, cq); },
        [this, sent, address, again, tries_left, since](const grpc::Status& status,
                                                        const v1::BatchResponse& resp) {
          server_->ObserveBatch(*sent, std::chrono::steady_clock::now() - since);
          if (Learn(address, status, resp) && !status.ok() && again != nullptr &&
              status.error_code() == grpc::StatusCode::UNAVAILABLE && !server_->stopped_) {
            return Call(std::move(*again), sent, tries_left - 1);
          }
          server_->OnBatchReply(*sent, status, resp);
          std::vector<OutMessage> next;
          {
            absl::MutexLock lock(&mu_);
            --in_flight_;
            if (!queued_.empty() && !server_->stopped_) next = TakeLocked();
          }
          if (!next.empty()) Start(std::move(next));
        });
  }

  // One stub, for the member called last.
  std::shared_ptr<v1::ParticipantTxn::Stub> StubFor(const std::string& address) {
    absl::MutexLock lock(&mu_);
    if (stub_ == nullptr || stub_address_ != address) {
      stub_ = v1::ParticipantTxn::NewStub(server_->channels_.Get(address));
      stub_address_ = address;
    }
    return stub_;
  }

  // A member that refused the call, or whose node refused its items because
  // it no longer leads, moves the next call elsewhere; the core repeats what
  // failed.
  // True when the guess moved.
  bool Learn(const std::string& address, const grpc::Status& status,
             const v1::BatchResponse& resp) {
    if (!status.ok()) return server_->leaders_.Learn(members_, address, status);
    for (const v1::BatchResult& r : resp.results()) {
      if (r.code() != grpc::StatusCode::UNAVAILABLE) continue;
      return server_->leaders_.Learn(members_, address,
                                     grpc::Status(grpc::StatusCode::UNAVAILABLE, r.message()));
    }
    return false;
  }

  CoordinatorServer* const server_;
  const std::string members_;
  const size_t members_count_;
  absl::Mutex mu_;
  std::shared_ptr<v1::ParticipantTxn::Stub> stub_ ABSL_GUARDED_BY(mu_);
  std::string stub_address_ ABSL_GUARDED_BY(mu_);
  std::deque<OutMessage> queued_ ABSL_GUARDED_BY(mu_);
  uint32_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
};

void CoordinatorServer::Send(std::vector<OutMessage> msgs) {
  if (stopped_) return;
  std::map<Link*, std::vector<OutMessage>> by_link;
  std::vector<OutMessage> termination;
  {
    absl::MutexLock lock(&links_mu_);
    for (OutMessage& m : msgs) {
      if (m.type == MsgType::kPromise || m.type == MsgType::kAccept || m.type == MsgType::kQuery) {
        termination.push_back(std::move(m));
        continue;
      }
      std::unique_ptr<Link>& l = links_[m.address];
      if (l == nullptr) l = std::make_unique<Link>(this, m.address);
      by_link[l.get()].push_back(std::move(m));
    }
  }
  for (OutMessage& m : termination) SendTermination(std::move(m));
  for (auto& [link, batch] : by_link) link->Send(std::move(batch));
}

// 3PC termination rounds the coordinator leads, and recovery's questions
// about PREPARING records: one RPC per message.
void CoordinatorServer::SendTermination(OutMessage m) {
  const std::string address = leaders_.Current(m.address);
  std::shared_ptr<v1::ParticipantTxn::Stub> stub =
      v1::ParticipantTxn::NewStub(channels_.Get(address));
  const std::string txn = m.txn_id, p = m.participant;
  const uint64_t ballot = m.ballot;
  auto learn = [this, members = m.address, address](const absl::Status& st) {
    leaders_.Learn(members, address, st);
  };
  if (m.type == MsgType::kQuery) {
    CallQueryState(
        loop_, stub, txn, options_.rpc_timeout_ms,
        [this, txn, p, learn](const absl::StatusOr<v1::QueryStateResponse>& r) {
          learn(r.status());
          WithCore([&](CoordinatorCore& c) { c.OnQueryReply(txn, p, r, clock_.NowMs()); });
        });
    return;
  }
  if (m.type == MsgType::kPromise) {
    CallPromise(loop_, stub, txn, ballot, options_.rpc_timeout_ms,
                [this, txn, p, ballot, learn](const absl::StatusOr<v1::PromiseResponse>& r) {
                  learn(r.status());
                  WithCore([&](CoordinatorCore& c) {
                    c.OnPromiseReply(txn, p, ballot, r, clock_.NowMs());
                  });
                });
    return;
  }
  CallAccept(
      loop_, stub, txn, ballot, m.value, options_.rpc_timeout_ms,
      [this, txn, p, ballot, learn](const absl::StatusOr<v1::AcceptResponse>& r) {
        learn(r.status());
        WithCore([&](CoordinatorCore& c) { c.OnAcceptReply(txn, p, ballot, r, clock_.NowMs()); });
      });
}

void CoordinatorServer::ObserveBatch(const std::vector<Sent>& sent,
                                     std::chrono::steady_clock::duration took) {
  bool prepare = false, decision = false;
  for (const Sent& s : sent) {
    prepare |= s.type == MsgType::kPrepare;
    decision |= s.type == MsgType::kCommit || s.type == MsgType::kAbort;
  }
  const double seconds = std::chrono::duration<double>(took).count();
  if (prepare) {
    batch_prepare_seconds_.Observe(seconds);
  } else if (decision) {
    batch_decision_seconds_.Observe(seconds);
  }
}

void CoordinatorServer::OnBatchReply(const std::vector<Sent>& sent, const grpc::Status& status,
                                     const v1::BatchResponse& resp) {
  bool any_prepare = false;
  for (const Sent& s : sent) any_prepare |= s.type == MsgType::kPrepare;
  if (any_prepare && !first_vote_seen_.exchange(true)) CrashPoint("after-prepare-sent");
  if (status.ok() && CrashArmed("after-precommit-sent")) {
    // The first PreCommit a participant acknowledged, before it is counted.
    for (size_t i = 0; i < sent.size() && i < static_cast<size_t>(resp.results_size()); ++i) {
      if (sent[i].type == MsgType::kPreCommit && resp.results(i).code() == 0) {
        CrashPoint("after-precommit-sent");
      }
    }
  }
  int64_t now = clock_.NowMs();
  WithCore([&](CoordinatorCore& c) {
    for (size_t i = 0; i < sent.size(); ++i) {
      absl::Status st = FromGrpc(status);
      const v1::BatchResult* r = nullptr;
      if (status.ok()) {
        if (i < static_cast<size_t>(resp.results_size())) {
          r = &resp.results(i);
          st = absl::Status(static_cast<absl::StatusCode>(r->code()), r->message());
        } else {
          st = absl::InternalError("participant answered fewer batch items than sent");
        }
      }
      ReportBatchItem(c, sent[i], st, r, now);
    }
  });
}

void CoordinatorServer::ReportBatchItem(CoordinatorCore& c, const Sent& s, const absl::Status& st,
                                        const v1::BatchResult* r, int64_t now) {
  switch (s.type) {
    case MsgType::kPrepare:
      c.OnPrepareReply(s.txn_id, s.participant,
                       BodyOr<v1::PrepareResponse>(st, [r] { return r->prepare(); }), now);
      break;
    case MsgType::kPreCommit:
      c.OnPreCommitReply(s.txn_id, s.participant, st, now);
      break;
    case MsgType::kCommit:
      c.OnCommitReply(s.txn_id, s.participant,
                      BodyOr<v1::CommitResponse>(st, [r] { return r->commit(); }), now);
      break;
    case MsgType::kAbort:
      c.OnAbortReply(s.txn_id, s.participant, st, now);
      break;
    case MsgType::kForget:  // best effort: nothing to learn from the answer
    case MsgType::kPromise:
    case MsgType::kAccept:
    case MsgType::kQuery:
      break;  // not batched
  }
}

size_t CoordinatorServer::CollectGarbage() {
  const int64_t now = clock_.NowMs();
  const int64_t cutoff = now - static_cast<int64_t>(options_.retention_ms);
  const std::vector<std::string> keys = ScanTimeIndex(
      storage_, kEndedDb, cutoff, options_.gc_batch_max, "finished-record collection");
  // The core decides what may go; its erase batch is ordered after the
  // ENDED batches it follows, like every write.
  if (!keys.empty()) WithCore([&](CoordinatorCore& c) { c.CollectRecords(keys, now); });
  return keys.size();
}

bool CoordinatorServer::RejectIfStopped(UnaryReactor* reactor) {
  if (!stopped_) return false;
  reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "coordinator is shutting down"));
  return true;
}

void CoordinatorServer::Execute(grpc::ServerContext* ctx, const v1::ExecuteRequest* req,
                                v1::ExecuteResponse* resp, UnaryReactor* reactor) {
  if (Refused(reactor, options_.access->CheckOps(*ctx, "Coordinator.Execute", req->ops()))) return;
  if (RejectIfStopped(reactor)) return;
  RequestId rid = replies_.Expect(Pending{reactor, resp, nullptr, nullptr, 0});
  WithCore([&](CoordinatorCore& c) { c.Execute(rid, *req, clock_.NowMs()); });
}

BidiReactor<v1::ExecuteStreamRequest, v1::ExecuteStreamResponse>* CoordinatorServer::ExecuteStream(
    grpc::ServerContext* ctx) {
  auto call = std::make_shared<ExecuteStreamCall>(this, ctx);
  call->Start(options_.access->Check(*ctx, "Coordinator.ExecuteStream", {Role::kProducer}));
  return call.get();
}

void CoordinatorServer::Begin(grpc::ServerContext* ctx, const v1::BeginTxnRequest* req,
                              v1::BeginTxnResponse* resp, UnaryReactor* reactor) {
  if (Refused(reactor, options_.access->Check(*ctx, "Coordinator.Begin", {Role::kProducer})))
    return;
  if (RejectIfStopped(reactor)) return;
  absl::StatusOr<v1::BeginTxnResponse> r;
  WithCore([&](CoordinatorCore& c) { r = c.Begin(*req, clock_.NowMs()); });
  if (r.ok()) *resp = std::move(*r);
  reactor->Finish(ToGrpc(r.status()));
}

void CoordinatorServer::Commit(grpc::ServerContext* ctx, const v1::CommitTxnRequest* req,
                               v1::ExecuteResponse* resp, UnaryReactor* reactor) {
  if (Refused(reactor, options_.access->Check(*ctx, "Coordinator.Commit", {Role::kProducer})))
    return;
  if (RejectIfStopped(reactor)) return;
  RequestId rid = replies_.Expect(Pending{reactor, resp, nullptr, nullptr, 0});
  WithCore([&](CoordinatorCore& c) { c.Commit(rid, *req, clock_.NowMs()); });
}

void CoordinatorServer::Rollback(grpc::ServerContext* ctx, const v1::RollbackTxnRequest* req,
                                 v1::RollbackTxnResponse* resp, UnaryReactor* reactor) {
  if (Refused(reactor, options_.access->Check(*ctx, "Coordinator.Rollback", {Role::kProducer})))
    return;
  if (RejectIfStopped(reactor)) return;
  RequestId rid = replies_.Expect(Pending{reactor, nullptr, nullptr, nullptr, 0});
  WithCore([&](CoordinatorCore& c) { c.Rollback(rid, *req, clock_.NowMs()); });
}

void CoordinatorServer::QueryState(grpc::ServerContext* ctx, const v1::TxnRef* req,
                                   v1::QueryStateResponse* resp, UnaryReactor* reactor) {
  if (Refused(reactor, options_.access->Check(*ctx, "Coordinator.QueryState", {Role::kPeer})))
    return;
  RequestId rid = replies_.Expect(Pending{reactor, nullptr, resp, nullptr, 0});
  WithCore([&](CoordinatorCore& c) { c.QueryState(rid, req->txn_id(), clock_.NowMs()); });
}

void CoordinatorServer::GetTransaction(grpc::ServerContext* ctx,
                                       const v1::GetTransactionRequest* req,
                                       v1::TransactionInfo* resp, UnaryReactor* reactor) {
  if (Refused(reactor, options_.access->Check(*ctx, "Coordinator.GetTransaction",
                                              {Role::kProducer, Role::kOperator}))) {
    return;
  }
  absl::StatusOr<v1::TransactionInfo> info =
      core_.Inspect([&](const CoordinatorCore& c) { return c.GetTransaction(req->txn_id()); });
  if (info.ok()) *resp = std::move(*info);
  reactor->Finish(ToGrpc(info.status()));
}

void CoordinatorServer::ListTransactions(grpc::ServerContext* ctx,
                                         const v1::ListTransactionsRequest* req,
                                         v1::ListTransactionsResponse* resp,
                                         UnaryReactor* reactor) {
  if (Refused(reactor,
              options_.access->Check(*ctx, "Coordinator.ListTransactions", {Role::kOperator}))) {
    return;
  }
  absl::StatusOr<v1::ListTransactionsResponse> page = core_.Inspect(
      [&](const CoordinatorCore& c) { return c.ListTransactions(*req, options_.list_limit_max); });
  if (page.ok()) *resp = std::move(*page);
  reactor->Finish(ToGrpc(page.status()));
}

}  // namespace atomq::coordinator
