// Consumers that wait: long-poll Receive calls and Subscribe streams with a
// credit window. The core says which queues gained ready messages
// (Output::ready_queues); waiting consumers are parked per queue and woken on
// the timer thread, never inline, so no reactor re-enters the core from its
// own Dispatch and no gRPC thread blocks or sleeps.
#include <algorithm>
#include <chrono>
#include <deque>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "common/log.h"
#include "common/status.h"
#include "common/validate.h"
#include "participant/server/participant_server.h"

namespace atomq::participant {

class ParticipantNode::Waiting {
 public:
  Waiting(uint64_t id, std::string identity) : id_(id), identity_(std::move(identity)) {}
  virtual ~Waiting() = default;
  // On the timer thread, without node locks held.
  virtual void Wake() = 0;
  // Shutdown: answer now.
  virtual void Stop() = 0;
  uint64_t id() const { return id_; }
  // The caller it waits for (common/access.h): whose share it takes.
  const std::string& identity() const { return identity_; }

 private:
  const uint64_t id_;
  const std::string identity_;
};

namespace {

// Adds payload and headers from storage. False when the record cannot be
// read: the message stays leased and is delivered again after its lease (a
// peeked one, with no lease, may just have been acked since).
bool ReadDelivery(Storage* storage, const Lease& l, v1::Delivery* d) {
  absl::StatusOr<std::optional<std::string>> v =
      storage->Get(kMessagesDb, MessageKey(l.queue_id, l.sequence));
  v1::MessageRecord rec;
  if (!v.ok() || !v->has_value() || !DecodeRecord(**v, &rec).ok()) {
    if (!l.lease_token.empty()) {
      LogLine(absl::StrCat("queue ", l.queue, " message ", l.sequence,
                           " could not be read; left leased"));
    }
    return false;
  }
  d->set_queue(l.queue);
  d->set_sequence(l.sequence);
  d->set_payload(std::move(*rec.mutable_payload()));
  *d->mutable_headers() = std::move(*rec.mutable_headers());
  d->set_delivery_count(l.delivery_count);
  d->set_lease_token(l.lease_token);
  d->set_lease_expires_unix_ms(l.expires_ms);
  return true;
}

int64_t ToUnixMs(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

// Acks `deliveries` (auto-ack) and calls `done` with those whose deletion is
// durable, lease tokens cleared, once every ack is answered.
void AutoAck(ReplyTable<std::function<void(const Reply&)>>* replies,
             CoreDriver<ParticipantCore>* core, const Clock& clock,
             std::vector<v1::Delivery> deliveries,
             std::function<void(std::vector<v1::Delivery>)> done) {
  if (deliveries.empty()) return done({});
  struct Gather {
    std::mutex mu;
    std::vector<v1::Delivery> deliveries;
    std::vector<bool> acked;
    size_t remaining;
    std::function<void(std::vector<v1::Delivery>)> done;
  };
  auto g = std::make_shared<Gather>();
  g->deliveries = std::move(deliveries);
  g->acked.assign(g->deliveries.size(), false);
  g->remaining = g->deliveries.size();
  g->done = std::move(done);
  std::vector<RequestId> rids;
  for (size_t i = 0; i < g->deliveries.size(); ++i) {
    rids.push_back(replies->Expect([g, i](const Reply& r) {
      std::vector<v1::Delivery> out;
      {
        std::lock_guard<std::mutex> lock(g->mu);
        g->acked[i] = r.status.ok();
        if (--g->remaining > 0) return;
        for (size_t j = 0; j < g->deliveries.size(); ++j) {
          if (!g->acked[j]) continue;
          g->deliveries[j].clear_lease_token();
          out.push_back(std::move(g->deliveries[j]));
        }
      }
      g->done(std::move(out));
    }));
  }
  // Copies: a reply may complete the gather (and free the deliveries) inline.
  std::vector<std::pair<std::string, std::pair<uint64_t, std::string>>> acks;
  for (const v1::Delivery& d : g->deliveries) {
    acks.push_back({d.queue(), {d.sequence(), d.lease_token()}});
  }
  core->Run([&](ParticipantCore& c) {
    const int64_t now = clock.NowMs();
    for (size_t i = 0; i < acks.size(); ++i) {
      c.Ack(rids[i], acks[i].first, acks[i].second.first, acks[i].second.second, now);
    }
  });
}

}  // namespace

// --- long-poll Receive ---

class ParticipantNode::LongPoll final : public Waiting,
                                        public std::enable_shared_from_this<LongPoll> {
 public:
  LongPoll(ParticipantNode* node, UnaryReactor* reactor, const v1::ReceiveRequest& req,
           v1::ReceiveResponse* resp, int64_t deadline_ms, std::string identity)
      : Waiting(node->next_waiter_++, std::move(identity)),
        node_(node),
        reactor_(reactor),
        req_(req),
        resp_(resp),
        deadline_ms_(deadline_ms) {}

  void Start() {
    if (!Claim()) return;
    Run(/*first=*/true);
  }
  void Wake() override {
    if (!Claim()) return;
    Run(false);
  }
  void Expire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      final_ = true;
    }
    node_->Unpark(req_.queue(), id());
    Wake();
  }
  void Stop() override { Expire(); }

 private:
  // The single runner: true if this thread runs; else the runner loops again.
  bool Claim() {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return false;
    if (busy_) {
      again_ = true;
      return false;
    }
    busy_ = true;
    return true;
  }

  void Run(bool first) {
    for (;;) {
      bool final;
      {
        std::lock_guard<std::mutex> lock(mu_);
        again_ = false;
        final = final_ || node_->clock_.NowMs() >= deadline_ms_ || node_->consumers_stopped_;
      }
      // Nobody to deliver to: lease nothing.
      if (reactor_->cancelled()) return Finish(grpc::Status::CANCELLED);
      absl::StatusOr<std::vector<Lease>> leases;
      absl::Status parked = absl::CancelledError("not parked");
      node_->WithCore([&](ParticipantCore& c) {
        leases =
            c.Receive(req_.queue(), req_.max_messages(), req_.lease_ms(), node_->clock_.NowMs());
        if (leases.ok() && leases->empty() && !final) {
          node_->core_.mu().AssertHeld();
          parked = node_->Park(req_.queue(), shared_from_this(), true);
        }
      });
      if (!leases.ok()) return Finish(ToGrpc(leases.status()));
      if (leases->empty()) {
        if (final) return Finish(grpc::Status::OK);
        if (!parked.ok()) return Finish(first ? ToGrpc(parked) : grpc::Status::OK);
        if (first) {
          first = false;
          std::weak_ptr<LongPoll> self = shared_from_this();
          node_->timers_.At(deadline_ms_, [self] {
            if (auto lp = self.lock()) lp->Expire();
          });
        }
        std::lock_guard<std::mutex> lock(mu_);
        if (again_) continue;
        busy_ = false;
        return;
      }
      return Deliver(*std::move(leases));
    }
  }

  void Deliver(std::vector<Lease> leases) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    node_->Unpark(req_.queue(), id());
    std::vector<v1::Delivery> ds;
    for (const Lease& l : leases) {
      v1::Delivery d;
      if (ReadDelivery(node_->storage_, l, &d)) ds.push_back(std::move(d));
    }
    if (!req_.auto_ack()) {
      for (v1::Delivery& d : ds) *resp_->add_deliveries() = std::move(d);
      reactor_->Finish(grpc::Status::OK);
      return;
    }
    ParticipantNode* node = node_;
    UnaryReactor* reactor = reactor_;
    v1::ReceiveResponse* resp = resp_;
    AutoAck(&node->replies_, &node->core_, node->clock_, std::move(ds),
            [reactor, resp](std::vector<v1::Delivery> acked) {
              for (v1::Delivery& d : acked) *resp->add_deliveries() = std::move(d);
              reactor->Finish(grpc::Status::OK);
            });
  }

  void Finish(grpc::Status status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    node_->Unpark(req_.queue(), id());
    reactor_->Finish(status);
  }

  ParticipantNode* const node_;
  UnaryReactor* const reactor_;
  const v1::ReceiveRequest req_;
  v1::ReceiveResponse* const resp_;
  const int64_t deadline_ms_;
  std::mutex mu_;
  bool busy_ = false;
  bool again_ = false;
  bool final_ = false;
  bool done_ = false;
};

void ParticipantNode::StartReceive(grpc::ServerContext* ctx, const v1::ReceiveRequest* req,
                                   v1::ReceiveResponse* resp, UnaryReactor* reactor) {
  absl::StatusOr<std::string> who =
      options_.access->Check(*ctx, "Queue.Receive", {Role::kConsumer}, req->queue());
  if (Refused(reactor, who)) return;
  if (req->peek()) {
    // A look under the lock, payloads read outside it; nothing to wait for.
    absl::StatusOr<std::vector<Lease>> looks =
        core_.Inspect([&](const ParticipantCore& c) { return c.Peek(*req); });
    for (const Lease& l : looks.ok() ? *looks : std::vector<Lease>()) {
      if (!ReadDelivery(storage_, l, resp->add_deliveries()))
        resp->mutable_deliveries()->RemoveLast();
    }
    reactor->Finish(ToGrpc(looks.status()));
    return;
  }
  const int64_t now = clock_.NowMs();
  int64_t deadline = now + std::min(req->wait_ms(), options_.receive_wait_ms_max);
  // Answer before the client gives up, or the leased messages would wait out
  // their leases with nobody holding them.
  const auto client = ctx->deadline();
  if (client < std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) {
    deadline = std::min(deadline, ToUnixMs(client) - 100);
  }
  auto lp = std::make_shared<LongPoll>(this, reactor, *req, resp, deadline, *std::move(who));
  lp->Start();
}

// --- Subscribe streams ---

class ParticipantNode::SubscribeReactor final
    : public BidiReactor<v1::SubscribeRequest, v1::SubscribeResponse> {
 public:
  explicit SubscribeReactor(std::shared_ptr<Subscription> sub);
  void OnReadDone(bool ok) override;
  void OnReadMalformed(grpc::Status status) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  v1::SubscribeRequest in_;

 private:
  std::shared_ptr<Subscription> sub_;
};

// A stream's state; outlives its reactor (timers and core replies hold it).
class ParticipantNode::Subscription final : public Waiting,
                                            public std::enable_shared_from_this<Subscription> {
 public:
  Subscription(ParticipantNode* node, uint64_t id, std::string identity)
      : Waiting(id, std::move(identity)), node_(node) {}

  void Attach(SubscribeReactor* r) { reactor_ = r; }

  // --- from the reactor ---
  void OnMessage(const v1::SubscribeRequest& m) {
    switch (m.kind_case()) {
      case v1::SubscribeRequest::kOpen:
        return Open(m.open());
      case v1::SubscribeRequest::kAck:
      case v1::SubscribeRequest::kNack:
        return Settle(m);
      case v1::SubscribeRequest::kCredit: {
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (!opened_) return FinishLocked(Invalid("the first message must be `open`"));
          credit_ = std::min<int64_t>(credit_ + m.credit(), node_->core_receive_max_);
        }
        return Pump();
      }
      case v1::SubscribeRequest::KIND_NOT_SET: {
        std::lock_guard<std::mutex> lock(mu_);
        return FinishLocked(Invalid("empty SubscribeRequest"));
      }
    }
  }
  // A message that is not a SubscribeRequest ends the stream with `status`.
  void OnMalformed(grpc::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    FinishLocked(std::move(status));
  }
  // The client is done sending (or gone): end once pending writes are out.
  void OnReadsDone() {
    std::lock_guard<std::mutex> lock(mu_);
    reads_done_ = true;
    // Answers to acks in flight still go out first.
    if (settling_ == 0) FinishLocked(grpc::Status::OK);
  }
  void ReadNext(v1::SubscribeRequest* in) {
    std::lock_guard<std::mutex> lock(mu_);
    if (reactor_ != nullptr && !finishing_) reactor_->StartRead(in);
  }
  void OnWriteDone(bool ok) {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {
      finish_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
      finish_wanted_ = true;
    }
    WriteNextLocked();
  }
  void OnCancel() {
    std::lock_guard<std::mutex> lock(mu_);
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }
  // The reactor is gone: release what this stream still holds.
  void OnDone() {
    std::map<uint64_t, std::string> held;
    std::string queue;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      reactor_ = nullptr;
      held.swap(outstanding_);
      queue = queue_;
      if (counted_) {
        node_->open_subscriptions_--;
        node_->subscription_shares_->Give(identity());
      }
    }
    node_->Unpark(queue, id());
    {
      absl::MutexLock lock(&node_->waiters_mu_);
      node_->subscriptions_.erase(id());
    }
    if (held.empty() || node_->stopped_) return;
    // Unacked messages go back at once (a requeue nack, answered to nobody).
    std::vector<RequestId> rids;
    for (size_t i = 0; i < held.size(); ++i)
      rids.push_back(node_->replies_.Expect([](const Reply&) {}));
    node_->WithCore([&](ParticipantCore& c) {
      const int64_t now = node_->clock_.NowMs();
      size_t i = 0;
      for (const auto& [seq, token] : held) {
        v1::NackRequest n;
        n.set_queue(queue);
        n.set_sequence(seq);
        n.set_lease_token(token);
        c.Nack(rids[i++], n, now);
      }
    });
  }

  void Wake() override { Pump(); }
  // The caller may not subscribe (common/access.h): the stream ends at once.
  void Refuse(grpc::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    FinishLocked(std::move(status));
  }
  void Stop() override {
    std::lock_guard<std::mutex> lock(mu_);
    FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the participant is shutting down"));
  }

 private:
  static grpc::Status Invalid(const std::string& msg) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, msg);
  }

  void Open(const v1::SubscribeOpen& o) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (opened_) return FinishLocked(Invalid("`open` sent twice"));
      uint32_t prefetch = o.prefetch() == 0 ? 1 : o.prefetch();
      if (prefetch > node_->core_receive_max_) {
        return FinishLocked(Invalid(absl::StrCat(
            "prefetch is ", prefetch, "; at most --receive_max=", node_->core_receive_max_)));
      }
      absl::Status allowed = node_->options_.access->Allow(identity(), "Queue.Subscribe",
                                                           {Role::kConsumer}, o.queue());
      if (!allowed.ok()) return FinishLocked(ToGrpc(allowed));
      if (node_->open_subscriptions_.fetch_add(1) >= node_->options_.subscriptions_max) {
        node_->open_subscriptions_--;
        return FinishLocked(
            grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                         absl::StrCat("--subscriptions_max=", node_->options_.subscriptions_max,
                                      " streams are open already")));
      }
      if (!node_->subscription_shares_->Take(identity())) {
        node_->open_subscriptions_--;
        return FinishLocked(grpc::Status(
            grpc::StatusCode::RESOURCE_EXHAUSTED,
            absl::StrCat("--subscriptions_per_identity_max=", node_->subscription_shares_->max(),
                         " streams of ", Clip(identity()), " are open already")));
      }
      counted_ = true;
      opened_ = true;
      queue_ = o.queue();
      lease_ms_ = o.lease_ms();
      auto_ack_ = o.auto_ack();
      credit_ = prefetch;
    }
    Pump();
  }

  void Settle(const v1::SubscribeRequest& m) {
    const bool nack = m.has_nack();
    const uint64_t seq = nack ? m.nack().sequence() : m.ack().sequence();
    const std::string token = nack ? m.nack().lease_token() : m.ack().lease_token();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!opened_) return FinishLocked(Invalid("the first message must be `open`"));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      settling_++;
    }
    std::weak_ptr<Subscription> self = shared_from_this();
    RequestId rid = node_->replies_.Expect([self, seq, token, nack](const Reply& r) {
      if (auto s = self.lock()) s->Settled(seq, token, nack, r.status);
    });
    node_->WithCore([&](ParticipantCore& c) {
      if (nack) {
        v1::NackRequest n = m.nack();
        n.set_queue(queue_);
        c.Nack(rid, n, node_->clock_.NowMs());
      } else {
        c.Ack(rid, queue_, seq, token, node_->clock_.NowMs());
      }
    });
  }

  void Settled(uint64_t seq, const std::string& token, bool nack, const absl::Status& st) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      v1::SubscribeResponse out;
      v1::SettleResult* s = out.mutable_settled();
      s->set_sequence(seq);
      s->set_nack(nack);
      s->set_code(static_cast<int>(st.code()));
      s->set_message(std::string(st.message()));
      QueueWriteLocked(std::move(out));
      auto it = outstanding_.find(seq);
      if (st.ok() && it != outstanding_.end() && it->second == token) {
        outstanding_.erase(it);
        if (!auto_ack_) credit_++;
      }
      if (--settling_ == 0 && reads_done_) FinishLocked(grpc::Status::OK);
    }
    Pump();
  }

  // A lease of this stream ran out: the core returns the message to the
  // queue; the window gets its slot back.
  void LeaseExpired(uint64_t seq, const std::string& token) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = outstanding_.find(seq);
      if (it == outstanding_.end() || it->second != token) return;
      outstanding_.erase(it);
      if (!auto_ack_) credit_++;
    }
    Pump();
  }

  // Leases what the window allows and sends it; parks when nothing is ready.
  // One runner at a time; a Pump during a run makes the runner go again.
  void Pump() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (pumping_) {
        pump_again_ = true;
        return;
      }
      pumping_ = true;
    }
    for (;;) {
      uint32_t want;
      {
        std::lock_guard<std::mutex> lock(mu_);
        pump_again_ = false;
        want = finishing_ || !opened_ || credit_ <= 0
                   ? 0
                   : static_cast<uint32_t>(std::min<int64_t>(credit_, node_->core_receive_max_));
        if (want == 0) {
          pumping_ = false;
          return;
        }
      }
      absl::StatusOr<std::vector<Lease>> leases;
      node_->WithCore([&](ParticipantCore& c) {
        leases = c.Receive(queue_, want, lease_ms_, node_->clock_.NowMs());
        if (leases.ok() && leases->empty()) {
          node_->core_.mu().AssertHeld();
          node_->Park(queue_, shared_from_this(), false).IgnoreError();  // streams always park
        }
      });
      if (!leases.ok()) {
        std::lock_guard<std::mutex> lock(mu_);
        pumping_ = false;
        return FinishLocked(ToGrpc(leases.status()));
      }
      if (leases->empty()) {
        std::lock_guard<std::mutex> lock(mu_);
        if (pump_again_) continue;
        pumping_ = false;
        return;
      }
      std::vector<v1::Delivery> ds;
      for (const Lease& l : *leases) {
        v1::Delivery d;
        if (ReadDelivery(node_->storage_, l, &d)) ds.push_back(std::move(d));
      }
      if (auto_ack_) {
        SendAutoAcked(std::move(ds));
      } else {
        SendLeased(std::move(ds));
      }
    }
  }

  // Sends the deliveries whose ack (a delete) is durable; the credit of
  // those that failed returns.
  void SendAutoAcked(std::vector<v1::Delivery> ds) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      credit_ -= static_cast<int64_t>(ds.size());
    }
    std::weak_ptr<Subscription> self = shared_from_this();
    const size_t sent = ds.size();
    ParticipantNode* node = node_;
    AutoAck(&node->replies_, &node->core_, node_->clock_, std::move(ds),
            [self, sent](std::vector<v1::Delivery> acked) {
              auto s = self.lock();
              if (!s) return;
              {
                std::lock_guard<std::mutex> lock(s->mu_);
                // Unacked ones (a failed delete) were not sent: their credit returns.
                s->credit_ += static_cast<int64_t>(sent - acked.size());
                for (v1::Delivery& d : acked) {
                  v1::SubscribeResponse out;
                  *out.mutable_delivery() = std::move(d);
                  s->QueueWriteLocked(std::move(out));
                }
              }
              if (sent != acked.size()) s->Pump();
            });
  }

  // Sends leased deliveries; each holds a slot of the window until it is
  // settled or its lease runs out.
  void SendLeased(std::vector<v1::Delivery> ds) {
    std::lock_guard<std::mutex> lock(mu_);
    for (v1::Delivery& d : ds) {
      credit_--;
      outstanding_[d.sequence()] = d.lease_token();
      std::weak_ptr<Subscription> self = shared_from_this();
      const uint64_t seq = d.sequence();
      const std::string token = d.lease_token();
      node_->timers_.At(d.lease_expires_unix_ms(), [self, seq, token] {
        if (auto s = self.lock()) s->LeaseExpired(seq, token);
      });
      v1::SubscribeResponse out;
      *out.mutable_delivery() = std::move(d);
      QueueWriteLocked(std::move(out));
    }
  }

  void QueueWriteLocked(v1::SubscribeResponse m) {
    if (finishing_ || done_) return;
    writes_.push_back(std::move(m));
    WriteNextLocked();
  }

  // Writes are started and the stream finished under mu_: gRPC runs the
  // reactions (OnWriteDone, OnDone) on its own threads, never inline here.
  void WriteNextLocked() {
    if (reactor_ == nullptr || writing_ || finishing_) return;
    if (!writes_.empty() && !finish_wanted_) {
      writing_ = true;
      current_ = std::move(writes_.front());
      writes_.pop_front();
      reactor_->StartWrite(&current_);
      return;
    }
    if (finish_wanted_) {
      finishing_ = true;
      reactor_->Finish(finish_status_);
    }
  }

  void FinishLocked(grpc::Status status) {
    if (finish_wanted_) return;
    finish_wanted_ = true;
    finish_status_ = std::move(status);
    if (!finish_status_.ok()) writes_.clear();
    WriteNextLocked();
  }

  ParticipantNode* const node_;
  std::mutex mu_;
  SubscribeReactor* reactor_ = nullptr;
  bool opened_ = false;
  bool counted_ = false;
  bool reads_done_ = false;
  uint32_t settling_ = 0;  // acks/nacks sent to the core, not yet answered
  std::string queue_;
  uint32_t lease_ms_ = 0;
  bool auto_ack_ = false;
  int64_t credit_ = 0;
  std::map<uint64_t, std::string> outstanding_;  // sequence -> lease token
  std::deque<v1::SubscribeResponse> writes_;
  v1::SubscribeResponse current_;
  bool writing_ = false;
  bool pumping_ = false;
  bool pump_again_ = false;
  bool finish_wanted_ = false;
  bool finishing_ = false;
  bool done_ = false;
  grpc::Status finish_status_;
};

ParticipantNode::SubscribeReactor::SubscribeReactor(std::shared_ptr<Subscription> sub)
    : sub_(std::move(sub)) {
  sub_->Attach(this);
  StartRead(&in_);
}

void ParticipantNode::SubscribeReactor::OnReadDone(bool ok) {
  if (!ok) return sub_->OnReadsDone();
  // One message at a time, in order: the next read starts once this one is
  // handled (so an `open` is handled before the client's half-close).
  sub_->OnMessage(in_);
  in_.Clear();
  sub_->ReadNext(&in_);
}
void ParticipantNode::SubscribeReactor::OnReadMalformed(grpc::Status status) {
  sub_->OnMalformed(std::move(status));
}
void ParticipantNode::SubscribeReactor::OnWriteDone(bool ok) { sub_->OnWriteDone(ok); }
void ParticipantNode::SubscribeReactor::OnCancel() { sub_->OnCancel(); }
void ParticipantNode::SubscribeReactor::OnDone() {
  sub_->OnDone();
  delete this;
}

BidiReactor<v1::SubscribeRequest, v1::SubscribeResponse>* ParticipantNode::StartSubscribe(
    grpc::ServerContext* ctx) {
  // The queue is checked at `open`; the caller and its role now.
  absl::StatusOr<std::string> who =
      options_.access->Check(*ctx, "Queue.Subscribe", {Role::kConsumer});
  auto sub = std::make_shared<Subscription>(this, next_waiter_++, who.ok() ? *who : "");
  {
    absl::MutexLock lock(&waiters_mu_);
    subscriptions_[sub->id()] = sub;
  }
  auto* reactor = new SubscribeReactor(sub);
  if (!who.ok()) {
    sub->Refuse(ToGrpc(who.status()));
  } else if (consumers_stopped_) {
    sub->Stop();
  }
  return reactor;
}

// --- parking and waking ---

absl::Status ParticipantNode::Park(const std::string& queue, const std::shared_ptr<Waiting>& w,
                                   bool long_poll) {
  absl::MutexLock lock(&waiters_mu_);
  if (consumers_stopped_) return absl::UnavailableError("the participant is shutting down");
  auto& parked = waiters_[queue];
  if (parked.count(w->id()) > 0) return absl::OkStatus();
  if (long_poll) {
    if (parked_long_polls_ >= options_.waiters_max) {
      if (parked.empty()) waiters_.erase(queue);
      return absl::ResourceExhaustedError(absl::StrCat("--waiters_max=", options_.waiters_max,
                                                       " consumers are waiting already; retry"));
    }
    if (!waiter_shares_->Take(w->identity())) {
      if (parked.empty()) waiters_.erase(queue);
      return absl::ResourceExhaustedError(
          absl::StrCat("--waiters_per_identity_max=", waiter_shares_->max(), " Receives of ",
                       Clip(w->identity()), " are waiting already; retry"));
    }
    parked_long_polls_++;
    long_poll_ids_[w->id()] = w->identity();
  }
  parked[w->id()] = w;
  return absl::OkStatus();
}

void ParticipantNode::ForgetLongPollLocked(uint64_t id) {
  auto it = long_poll_ids_.find(id);
  if (it == long_poll_ids_.end()) return;
  waiter_shares_->Give(it->second);
  long_poll_ids_.erase(it);
  parked_long_polls_--;
}

void ParticipantNode::Unpark(const std::string& queue, uint64_t waiter_id) {
  absl::MutexLock lock(&waiters_mu_);
  auto it = waiters_.find(queue);
  if (it == waiters_.end()) return;
  if (it->second.erase(waiter_id) > 0) ForgetLongPollLocked(waiter_id);
  if (it->second.empty()) waiters_.erase(it);
}

void ParticipantNode::WakeQueues(const std::vector<std::string>& queues) {
  std::vector<std::shared_ptr<Waiting>> woken;
  {
    absl::MutexLock lock(&waiters_mu_);
    for (const std::string& q : queues) {
      auto it = waiters_.find(q);
      if (it == waiters_.end()) continue;
      for (auto& [id, w] : it->second) {
        ForgetLongPollLocked(id);
        woken.push_back(std::move(w));
      }
      waiters_.erase(it);
    }
  }
  if (woken.empty()) return;
  timers_.At(0, [woken = std::move(woken)] {
    for (const auto& w : woken) w->Wake();
  });
}

void ParticipantNode::StopConsumers() {
  consumers_stopped_ = true;
  std::vector<std::shared_ptr<Waiting>> all;
  {
    absl::MutexLock lock(&waiters_mu_);
    for (auto& [q, parked] : waiters_) {
      for (auto& [id, w] : parked) all.push_back(w);
    }
    waiters_.clear();
    while (!long_poll_ids_.empty()) ForgetLongPollLocked(long_poll_ids_.begin()->first);
    for (auto& [id, weak] : subscriptions_) {
      if (auto s = weak.lock()) all.push_back(s);
    }
  }
  for (const auto& w : all) w->Stop();
}

}  // namespace atomq::participant
