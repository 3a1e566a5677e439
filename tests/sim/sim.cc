#include "tests/sim/sim.h"

#include "tests/sim/sim_internal.h"

namespace atomq::sim {
namespace internal {

void Sim::RunUntil(int64_t until) {
  while (!events_.empty() && events_.begin()->first.first <= until) {
    auto it = events_.begin();
    now_ = it->first.first;
    std::function<void()> fn = std::move(it->second);
    hash_ = (hash_ ^ static_cast<uint64_t>(now_)) * 1099511628211ull;
    hash_ = (hash_ ^ it->first.second) * 1099511628211ull;
    events_.erase(it);
    fn();
    ++steps_;
    checker_.AfterStep();
  }
  now_ = std::max(now_, until);
}

void Sim::Deliver(const std::string& from, const std::string& to, std::function<void()> arrive) {
  if (Cut(from, to)) return;
  if (faults_ && rng_.Chance(drop_)) return;
  const int copies = faults_ && rng_.Chance(duplicate_) ? 2 : 1;
  auto shared = std::make_shared<std::function<void()>>(std::move(arrive));
  for (int i = 0; i < copies; ++i) {
    int64_t delay = rng_.Chance(slow_net_) ? rng_.Range(20, 200) : rng_.Range(0, 6);
    At(now_ + delay, [this, from, to, shared] {
      if (Cut(from, to)) return;  // partitioned while in flight
      (*shared)();
    });
  }
}

void Sim::Rpc(const std::string& from, const std::string& to, Request req, int64_t timeout_ms,
              Callback done) {
  const uint64_t id = next_call_++;
  calls_[id] = Call{from, Incarnation(from), std::move(done)};
  Trace(absl::StrCat(from, " -> ", to, " ", KindName(req.kind), " ", req.txn_id,
                     req.ballot ? absl::StrCat(" ballot ", req.ballot) : "",
                     req.value != v1::TXN_STATE_UNSPECIFIED
                         ? absl::StrCat(" ", v1::TxnState_Name(req.value))
                         : ""));
  auto shared = std::make_shared<Request>(std::move(req));
  Deliver(from, to, [this, to, id, shared] { Handle(to, id, *shared); });
  At(now_ + timeout_ms, [this, id] {
    Complete(id, Answer{absl::DeadlineExceededError("rpc deadline"), {}, {}, {}});
  });
}

void Sim::Complete(uint64_t id, const Answer& a) {
  auto it = calls_.find(id);
  if (it == calls_.end()) return;
  Call c = std::move(it->second);
  calls_.erase(it);
  if (!Up(c.from) || Incarnation(c.from) != c.from_incarnation) return;
  c.done(a);
}

void Sim::Handle(const std::string& to, uint64_t call, const Request& req) {
  if (to == kClient) return;
  Node& n = node(to);
  if (!n.up) return;
  if (req.kind == Kind::kForget) {
    n.participant->Forget(req.txn_id, now_);
    return Drain(n);
  }
  const uint64_t rid = n.next_request++;
  n.routes[rid] = Route{call, req.kind, req.txn_id, req.ballot};
  if (n.is_coordinator) {
    if (req.kind == Kind::kExecute) n.coordinator->Execute(rid, req.execute, now_);
    if (req.kind == Kind::kQuery) n.coordinator->QueryState(rid, req.txn_id, now_);
  } else {
    ParticipantCore& c = *n.participant;
    switch (req.kind) {
      case Kind::kPrepare:
        c.Prepare(rid, req.prepare, now_);
        break;
      case Kind::kPreCommit:
        c.PreCommit(rid, req.txn_id, now_);
        break;
      case Kind::kCommit:
        c.Commit(rid, req.txn_id, now_);
        break;
      case Kind::kAbort:
        c.Abort(rid, req.txn_id, now_);
        break;
      case Kind::kQuery:
        c.QueryState(rid, req.txn_id, now_);
        break;
      case Kind::kPromise:
        c.Promise(rid, req.txn_id, req.ballot, now_);
        break;
      case Kind::kAccept:
        c.Accept(rid, req.txn_id, req.ballot, req.value, now_);
        break;
      case Kind::kExecute:
      case Kind::kForget:
        break;
    }
  }
  Drain(n);
}

void Sim::Reply(Node& n, uint64_t request, Answer a) {
  auto r = n.routes.find(request);
  if (r == n.routes.end()) return;  // answered early (a plant), or from before a crash
  const uint64_t call = r->second.call;
  n.routes.erase(r);
  auto c = calls_.find(call);
  if (c == calls_.end()) return;  // the caller gave up
  const std::string to = c->second.from;
  auto shared = std::make_shared<Answer>(std::move(a));
  Deliver(n.id, to, [this, call, shared] { Complete(call, *shared); });
}

void Sim::Boot(Node& n) {
  n.up = true;
  if (n.is_coordinator) {
    coordinator::Config c;
    c.coordinator_id = n.id;
    c.coordinator_address = n.id;
    for (const char* p : kParticipants) {
      c.participants[p] = p;
      if (options_.replicas > 1) c.participant_groups.insert(p);
    }
    c.boot_count = n.incarnation;
    c.txn_timeout_ms = 300;
    c.resend_initial_ms = 10;
    c.resend_max_ms = options_.replicas > 1 ? 600 : 200;  // as for a participant, below
    c.termination_after_ms = termination_after_ms_;
    if (options_.plant == Plant::kCommitWithoutVotes || options_.plant == Plant::kOnePhaseMulti ||
        options_.plant == Plant::kOnePhasePresumedAbort ||
        options_.plant == Plant::kPreparingPresumedAbort) {
      c.plant = options_.plant;
    }
    // Parallel commit in every other seed (always for the plant that breaks it).
    c.parallel_commit = options_.seed % 2 == 0 || options_.plant == Plant::kPreparingPresumedAbort;
    n.coordinator_view = std::make_unique<CoordinatorView>(&CoreDisk(n));
    n.coordinator = std::make_unique<CoordinatorCore>(std::move(c), n.coordinator_view.get());
    std::vector<v1::CoordinatorTxnRecord> records;
    for (const auto& [key, value] : CoreDisk(n)[coordinator::kTxnDb]) {
      v1::CoordinatorTxnRecord rec;
      ATOMQ_CHECK(DecodeRecord(value, &rec).ok(), "simulated disks hold valid records");
      records.push_back(std::move(rec));
    }
    n.coordinator->Recover(std::move(records), now_);
  } else {
    participant::Config c;
    c.participant_id = n.id;
    c.boot_count = n.incarnation;
    c.in_doubt_after_ms = in_doubt_after_ms_;
    c.resend_initial_ms = 10;
    // A termination round waits this long before another preempts it: on a
    // group, longer than a durable step (RpcTimeoutMs), or rounds duel.
    c.resend_max_ms = options_.replicas > 1 ? 600 : 200;
    c.queue_memory_window = queue_memory_window_;
    c.retention_ms = retention_ms_;
    c.random_bytes = SeededBytes(options_.seed, n.id, n.incarnation);
    if (options_.plant == Plant::kLeaderIgnoresAccepted ||
        options_.plant == Plant::kForgetBeforeEnd) {
      c.plant = options_.plant;
    }
    n.participant_view = std::make_unique<ParticipantView>(&CoreDisk(n));
    n.participant = std::make_unique<ParticipantCore>(std::move(c), n.participant_view.get());
    // As the adapter does: every record of every database.
    absl::StatusOr<participant::RecoveredState> state = participant::schema::LoadRecoveredState(
        [&](const char* db, const participant::schema::RecordFn& fn) {
          for (const auto& [key, value] : CoreDisk(n)[db]) {
            if (!fn(key, value)) break;
          }
          return absl::OkStatus();
        });
    ATOMQ_CHECK(state.ok(), "simulated disks hold valid records");
    n.participant->Recover(*std::move(state), now_);
  }
  Trace(absl::StrCat(n.id, " up (incarnation ", n.incarnation, ")"));
  Drain(n);
}

void Sim::Crash(Node& n) {
  if (!n.up) return;
  Trace(absl::StrCat(n.id, " CRASH (", n.unsynced.size(), " unsynced batches lost)"));
  n.up = false;
  ++n.incarnation;
  n.unsynced.clear();
  n.syncing = 0;
  n.routes.clear();
  n.coordinator.reset();
  n.participant.reset();
  if (options_.plant == Plant::kForgetPrepared && !n.is_coordinator) {
    // TEST ONLY: a disk that loses PREPARED records (never really synced).
    auto& prepared = n.disk[participant::kPreparedDb];
    for (auto it = prepared.begin(); it != prepared.end();) {
      v1::PreparedRecord rec;
      if (DecodeRecord(it->second, &rec).ok() && rec.state() == v1::PREPARED) {
        it = prepared.erase(it);
      } else {
        ++it;
      }
    }
  }
}

void Sim::MaybeSync(Node& n) {
  if (n.syncing > 0 || n.unsynced.empty()) return;
  n.syncing = n.unsynced.size();
  const int64_t d = rng_.Chance(slow_fsync_) ? rng_.Range(40, 400) : rng_.Range(1, 8);
  At(now_ + d, [this, id = n.id, inc = n.incarnation] { SyncDone(id, inc); });
}

void Sim::Durable(Node& n, const Write& w) {
  if (w.erase) {
    checker_.OnErase(n.id, w.db, w.key);
    const size_t gone = n.disk[w.db].erase(w.key);
    if (w.db == participant::kOutcomesDb) outcomes_collected_ += gone;
  } else {
    checker_.OnPut(n.id, w.db, w.key, w.value);
    n.disk[w.db][w.key] = w.value;
  }
}

void Sim::SyncDone(const std::string& id, uint64_t incarnation) {
  Node& n = node(id);
  if (!n.up || n.incarnation != incarnation) return;
  const size_t k = n.syncing;
  n.syncing = 0;
  std::vector<uint64_t> tokens;
  for (size_t i = 0; i < k && !n.unsynced.empty(); ++i) {
    Batch b = std::move(n.unsynced.front());
    n.unsynced.pop_front();
    for (const Write& w : b.writes) Durable(n, w);
    tokens.push_back(b.token);
  }
  for (uint64_t token : tokens) {
    if (n.is_coordinator) {
      n.coordinator->OnPersisted(token, absl::OkStatus(), now_);
    } else {
      n.participant->OnPersisted(token, absl::OkStatus(), now_);
    }
    Drain(n);
  }
  MaybeSync(n);
}

void Sim::Drain(Node& n) {
  if (!n.up) return;
  if (n.is_coordinator) {
    DrainCoordinator(n);
  } else {
    DrainParticipant(n);
  }
}

// TEST ONLY ("reply-before-durable"): answers COMMITTED as soon as the
// COMMIT record is handed to the disk, the bug the checker must catch.
void Sim::PlantEarlyReply(Node& n, const Batch& b) {
  for (const Write& w : b.writes) {
    v1::CoordinatorTxnRecord rec;
    if (w.erase || w.db != coordinator::kTxnDb || !DecodeRecord(w.value, &rec).ok() ||
        rec.state() != v1::STATE_COMMITTED) {
      continue;
    }
    std::vector<uint64_t> requests;
    for (const auto& [rid, route] : n.routes) {
      if (route.kind == Kind::kExecute && route.txn_id == rec.txn_id()) requests.push_back(rid);
    }
    for (uint64_t rid : requests) {
      Answer a;
      a.execute.set_txn_id(rec.txn_id());
      a.execute.set_outcome(v1::COMMITTED);
      Reply(n, rid, std::move(a));
    }
  }
}

void Sim::DrainCoordinator(Node& n) {
  coordinator::Output out = n.coordinator->TakeOutput();
  for (const std::string& line : out.log) Trace(absl::StrCat(n.id, ": ", line));
  for (Batch& b : out.persist) {
    if (options_.plant == Plant::kReplyBeforeDurable) PlantEarlyReply(n, b);
    if (n.group != nullptr) {
      SubmitToGroup(n, std::move(b));
    } else {
      n.unsynced.push_back(std::move(b));
    }
  }
  MaybeSync(n);
  for (coordinator::OutMessage& m : out.send) {
    Request req;
    req.txn_id = m.txn_id;
    req.ballot = m.ballot;
    req.value = m.value;
    switch (m.type) {
      case coordinator::MsgType::kPrepare:
        req.kind = Kind::kPrepare;
        req.prepare = std::move(m.prepare);
        break;
      case coordinator::MsgType::kPreCommit:
        req.kind = Kind::kPreCommit;
        break;
      case coordinator::MsgType::kCommit:
        req.kind = Kind::kCommit;
        break;
      case coordinator::MsgType::kAbort:
        req.kind = Kind::kAbort;
        break;
      case coordinator::MsgType::kPromise:
        req.kind = Kind::kPromise;
        break;
      case coordinator::MsgType::kAccept:
        req.kind = Kind::kAccept;
        break;
      case coordinator::MsgType::kForget:
        req.kind = Kind::kForget;
        break;
      case coordinator::MsgType::kQuery:
        req.kind = Kind::kQuery;
        break;
    }
    const Kind kind = req.kind;
    const std::string txn = m.txn_id, p = m.participant;
    const uint64_t ballot = m.ballot;
    Rpc(n.id, m.address, std::move(req), RpcTimeoutMs(),
        [this, kind, txn, p, ballot](const Answer& a) {
          Node& c = node(kCoordinator);
          CoordinatorCore& core = *c.coordinator;
          switch (kind) {
            case Kind::kPrepare:
              core.OnPrepareReply(txn, p,
                                  a.status.ok() ? absl::StatusOr<v1::PrepareResponse>(
                                                      std::get<v1::PrepareResponse>(a.body))
                                                : a.status,
                                  now_);
              break;
            case Kind::kPreCommit:
              core.OnPreCommitReply(txn, p, a.status, now_);
              break;
            case Kind::kCommit:
              core.OnCommitReply(txn, p,
                                 a.status.ok() ? absl::StatusOr<v1::CommitResponse>(
                                                     std::get<v1::CommitResponse>(a.body))
                                               : a.status,
                                 now_);
              break;
            case Kind::kAbort:
              core.OnAbortReply(txn, p, a.status, now_);
              break;
            case Kind::kQuery:
              core.OnQueryReply(txn, p,
                                a.status.ok() ? absl::StatusOr<v1::QueryStateResponse>(
                                                    std::get<v1::QueryStateResponse>(a.body))
                                              : absl::StatusOr<v1::QueryStateResponse>(a.status),
                                now_);
              break;
            case Kind::kPromise:
              core.OnPromiseReply(txn, p, ballot,
                                  a.status.ok() ? absl::StatusOr<v1::PromiseResponse>(
                                                      std::get<v1::PromiseResponse>(a.body))
                                                : a.status,
                                  now_);
              break;
            case Kind::kAccept:
              core.OnAcceptReply(txn, p, ballot,
                                 a.status.ok() ? absl::StatusOr<v1::AcceptResponse>(
                                                     std::get<v1::AcceptResponse>(a.body))
                                               : a.status,
                                 now_);
              break;
            default:
              break;
          }
          Drain(c);
        });
  }
  for (const coordinator::TimerRequest& t : out.timers) {
    At(t.at_ms, [this, inc = n.incarnation, id = t.timer_id] {
      Node& c = node(kCoordinator);
      if (!c.up || c.incarnation != inc) return;
      c.coordinator->OnTimer(id, now_);
      Drain(c);
    });
  }
  for (coordinator::ExecuteReply& r : out.replies) {
    Answer a;
    a.status = r.status;
    a.execute = std::move(r.response);
    Reply(n, r.request, std::move(a));
  }
  for (const coordinator::StateReply& r : out.state_replies) {
    Answer a;
    a.state = r.state;
    Reply(n, r.request, std::move(a));
  }
}

void Sim::DrainParticipant(Node& n) {
  participant::Output out = n.participant->TakeOutput();
  for (const std::string& line : out.log) Trace(absl::StrCat(n.id, ": ", line));
  for (Batch& b : out.persist) {
    if (n.group != nullptr) {
      SubmitToGroup(n, std::move(b));
    } else {
      n.unsynced.push_back(std::move(b));
    }
  }
  MaybeSync(n);
  const std::string self = n.id;
  for (participant::OutQuery& q : out.queries) {
    Request req;
    req.kind = Kind::kQuery;
    req.txn_id = q.txn_id;
    const bool to_coordinator = q.to_coordinator;
    const std::string txn = q.txn_id, target = q.target;
    Rpc(self, q.target, std::move(req), RpcTimeoutMs(),
        [this, self, txn, target, to_coordinator](const Answer& a) {
          Node& me = node(self);
          v1::QueryStateResponse resp;
          if (a.status.ok()) {
            if (to_coordinator) {
              resp.set_state(a.state);
            } else {
              resp = std::get<v1::QueryStateResponse>(a.body);
            }
          }
          absl::StatusOr<v1::QueryStateResponse> r =
              a.status.ok() ? absl::StatusOr<v1::QueryStateResponse>(resp) : a.status;
          me.participant->OnQueryReply(txn, target, r, now_);
          Drain(me);
        });
  }
  for (participant::OutPeerMsg& m : out.peer_msgs) {
    Request req;
    req.txn_id = m.txn_id;
    req.ballot = m.ballot;
    req.value = m.value;
    switch (m.type) {
      case participant::PeerMsgType::kPromise:
        req.kind = Kind::kPromise;
        break;
      case participant::PeerMsgType::kAccept:
        req.kind = Kind::kAccept;
        break;
      case participant::PeerMsgType::kCommit:
        req.kind = Kind::kCommit;
        break;
      case participant::PeerMsgType::kAbort:
        req.kind = Kind::kAbort;
        break;
    }
    const Kind kind = req.kind;
    const std::string txn = m.txn_id, target = m.target;
    const uint64_t ballot = m.ballot;
    Rpc(self, m.target, std::move(req), RpcTimeoutMs(),
        [this, self, kind, txn, target, ballot](const Answer& a) {
          Node& me = node(self);
          if (kind == Kind::kPromise) {
            me.participant->OnPromiseReply(
                txn, target, ballot,
                a.status.ok()
                    ? absl::StatusOr<v1::PromiseResponse>(std::get<v1::PromiseResponse>(a.body))
                    : a.status,
                now_);
          } else if (kind == Kind::kAccept) {
            me.participant->OnAcceptReply(txn, target, ballot,
                                          a.status.ok() ? absl::StatusOr<v1::AcceptResponse>(
                                                              std::get<v1::AcceptResponse>(a.body))
                                                        : a.status,
                                          now_);
          }
          Drain(me);
        });
  }
  for (const participant::TimerRequest& t : out.timers) {
    At(t.at_ms, [this, self, inc = n.incarnation, id = t.timer_id] {
      Node& me = node(self);
      if (!me.up || me.incarnation != inc) return;
      me.participant->OnTimer(id, now_);
      Drain(me);
    });
  }
  for (participant::Reply& r : out.replies) {
    auto route = n.routes.find(r.request);
    if (route != n.routes.end() && r.status.ok()) {
      const Route& rt = route->second;
      if (const auto* v = std::get_if<v1::PrepareResponse>(&r.body); v && v->vote() == v1::YES) {
        checker_.OnVoteYes(self, rt.txn_id);
      }
      if (rt.kind == Kind::kPreCommit) checker_.OnPreCommitAck(self, rt.txn_id);
      if (rt.kind == Kind::kCommit) checker_.OnCommitAck(self, rt.txn_id);
      if (const auto* v = std::get_if<v1::PromiseResponse>(&r.body); v && v->promised()) {
        checker_.OnPromised(self, rt.txn_id, rt.ballot, v->state());
      }
      if (const auto* v = std::get_if<v1::AcceptResponse>(&r.body); v && v->accepted()) {
        checker_.OnAccepted(self, rt.txn_id, rt.ballot, v->state());
      }
    }
    Answer a;
    a.status = r.status;
    a.body = std::move(r.body);
    Reply(n, r.request, std::move(a));
  }
}

void Sim::SendExecute(const std::string& txn_id) {
  ClientTxn& c = client_.at(txn_id);
  if (c.answered || c.in_flight) return;
  c.in_flight = true;
  Request req;
  req.kind = Kind::kExecute;
  req.txn_id = txn_id;
  req.execute = c.request;
  Rpc(kClient, kCoordinator, std::move(req), kExecuteTimeoutMs, [this, txn_id](const Answer& a) {
    ClientTxn& c = client_.at(txn_id);
    c.in_flight = false;
    if (a.status.ok() && !c.answered &&
        (a.execute.outcome() == v1::COMMITTED || a.execute.outcome() == v1::ABORTED)) {
      c.answered = true;
      Trace(absl::StrCat("client: ", txn_id, " ", v1::Outcome_Name(a.execute.outcome()), " ",
                         a.execute.reason()));
      checker_.OnClientOutcome(txn_id, a.execute.outcome());
      return;
    }
    if (a.status.ok()) return;
    // Retry with the same id (idempotent) after a pause.
    At(now_ + rng_.Range(50, 400), [this, txn_id] { SendExecute(txn_id); });
  });
}

void Sim::IssueTxn(int index) {
  const std::string id = absl::StrCat("t", index);
  v1::Protocol protocol = options_.mode == ProtocolMode::k2pc   ? v1::TWO_PC
                          : options_.mode == ProtocolMode::k3pc ? v1::THREE_PC
                          : rng_.Chance(0.5)                    ? v1::TWO_PC
                                                                : v1::THREE_PC;
  // One, two or three of the participants, in a random order. One
  // participant commits in one phase (its own COMMITTED outcome decides).
  std::vector<std::string> parties(kParticipants, kParticipants + kParticipantCount);
  for (int i = kParticipantCount - 1; i > 0; --i) {
    std::swap(parties[i], parties[rng_.Range(0, i)]);
  }
  const int64_t shape = rng_.Range(0, 99);
  parties.resize(shape < 25 ? 1 : shape < 70 ? 3 : 2);
  // Sometimes one part cannot be applied (a missing queue): a NO vote.
  const int no_voter = rng_.Chance(0.15) ? static_cast<int>(rng_.Range(0, parties.size() - 1)) : -1;
  ClientTxn c;
  c.request.set_txn_id(id);
  c.request.set_protocol(protocol);
  c.request.set_timeout_ms(static_cast<uint32_t>(rng_.Range(100, 1000)));
  // Half the transactions are answered at the decision, before they are
  // applied (chosen by id, not by the random stream, so seeds stay the same).
  c.request.set_reply_at_decision(id.back() % 2 == 0);
  for (size_t i = 0; i < parties.size(); ++i) {
    v1::Op* op = c.request.add_ops();
    op->set_participant(parties[i]);
    op->mutable_enqueue()->set_queue(static_cast<int>(i) == no_voter ? "missing" : "q");
    op->mutable_enqueue()->set_payload(absl::StrCat(id, "/", parties[i]));
  }
  std::vector<std::string> sorted = parties;
  std::sort(sorted.begin(), sorted.end());
  checker_.AddTxn(id, protocol, sorted);
  client_.emplace(id, std::move(c));
  Trace(absl::StrCat("client: issue ", id, " ", v1::Protocol_Name(protocol)));
  SendExecute(id);
}

void Sim::Fault() {
  if (!faults_) return;
  std::vector<std::string> all = {kCoordinator, "p1", "p2", "p3"};
  const int64_t what = rng_.Range(0, 9);
  if (what < 4) {
    Node& n = node(rng_.Pick(all));
    if (n.group != nullptr) {
      GroupFault(n);
    } else if (n.up) {
      Crash(n);
      At(now_ + rng_.Range(5, 700), [this, id = n.id, inc = n.incarnation] {
        Node& x = node(id);
        if (!x.up && x.incarnation == inc && keep_down_.count(id) == 0) Boot(x);
      });
    }
  } else if (what < 7) {
    all.push_back(kClient);
    std::string a = rng_.Pick(all), b = rng_.Pick(all);
    if (a != b) {
      auto cut = std::make_pair(std::min(a, b), std::max(a, b));
      cuts_.insert(cut);
      Trace(absl::StrCat("partition ", a, " | ", b));
      At(now_ + rng_.Range(10, 900), [this, cut] {
        cuts_.erase(cut);
        Trace(absl::StrCat("heal ", cut.first, " | ", cut.second));
      });
    }
  }
  At(now_ + rng_.Range(30, 400), [this] { Fault(); });
}

void Sim::Consume() {
  if (!faults_) return;
  Node& n = node(kParticipants[rng_.Range(0, kParticipantCount - 1)]);
  if (n.up) {
    const uint32_t max = static_cast<uint32_t>(rng_.Range(1, 3));
    const uint32_t lease_ms = static_cast<uint32_t>(rng_.Range(20, 300));
    absl::StatusOr<std::vector<participant::Lease>> got =
        n.participant->Receive("q", max, lease_ms, now_);
    ATOMQ_CHECK(got.ok(), "a simulated participant's queue can be received from");
    for (const participant::Lease& l : *got) {
      Trace(absl::StrCat(n.id, ": delivered q/", l.sequence, " (delivery ", l.delivery_count, ")"));
      checker_.OnDelivered(n.id, n.incarnation, l.sequence, l.delivery_count);
    }
    Drain(n);
  }
  At(now_ + rng_.Range(20, 300), [this] { Consume(); });
}

// Every lease has expired by now: all of "q" is ready again.
void Sim::DrainQueues() {
  for (const char* p : kParticipants) {
    Node& n = node(p);
    if (!n.up) continue;
    uint64_t counted = 0;
    for (const v1::QueueInfo& q : n.participant->ListQueues()) {
      if (q.name() == "q") counted = q.ready() + q.leased();
    }
    std::vector<uint64_t> drained;
    for (;;) {
      absl::StatusOr<std::vector<participant::Lease>> got =
          n.participant->Receive("q", 1000, 60000, now_);
      ATOMQ_CHECK(got.ok(), "a simulated participant's queue can be received from");
      if (got->empty()) break;
      for (const participant::Lease& l : *got) drained.push_back(l.sequence);
    }
    Drain(n);
    checker_.CheckDrained(n.id, 1, drained, counted);
  }
}

void Sim::CollectOutcomes(const std::string& id) {
  Node& n = node(id);
  if (n.up) {
    const int64_t cutoff = now_ - static_cast<int64_t>(retention_ms_);
    std::vector<std::string> keys;
    for (const auto& [key, value] : CoreDisk(n)[participant::kForgettableDb]) {
      if (keys.size() >= gc_batch_max_ ||
          (key.size() > 8 && static_cast<int64_t>(DecodeU64(key)) >= cutoff)) {
        break;
      }
      keys.push_back(key);
    }
    if (!keys.empty()) {
      n.participant->CollectOutcomes(keys, now_);
      Drain(n);
    }
  }
  At(now_ + gc_interval_ms_, [this, id] { CollectOutcomes(id); });
}

Result Sim::Run() {
  // Per-seed knobs, so that seeds differ in kind, not only in order.
  drop_ = std::vector<double>{0, 0.01, 0.03, 0.1}[rng_.Range(0, 3)];
  duplicate_ = std::vector<double>{0, 0.02, 0.1}[rng_.Range(0, 2)];
  slow_net_ = std::vector<double>{0, 0.05, 0.2}[rng_.Range(0, 2)];
  slow_fsync_ = std::vector<double>{0, 0.05, 0.3}[rng_.Range(0, 2)];
  in_doubt_after_ms_ = static_cast<uint32_t>(rng_.Range(20, 400));
  termination_after_ms_ = static_cast<uint32_t>(rng_.Range(30, 400));
  queue_memory_window_ = static_cast<uint32_t>(rng_.Range(1, 3));
  retention_ms_ = static_cast<uint32_t>(rng_.Range(250, 1500));
  gc_interval_ms_ = static_cast<uint32_t>(rng_.Range(20, 300));
  gc_batch_max_ = static_cast<uint32_t>(rng_.Range(1, 4));

  Node& c = nodes_[kCoordinator];
  c.id = kCoordinator;
  c.is_coordinator = true;
  if (options_.replicas > 1) MakeGroup(c);
  for (const char* p : kParticipants) {
    Node& n = nodes_[p];
    n.id = p;
    SeedParticipant(p, &n.disk);
    if (options_.replicas > 1) MakeGroup(n);
  }
  for (auto& [id, n] : nodes_) {
    if (n.group != nullptr) {
      StartGroup(n);
    } else {
      Boot(n);
    }
  }

  const int txns = static_cast<int>(rng_.Range(3, 8));
  for (int i = 1; i <= txns; ++i) At(rng_.Range(0, kIssueMs), [this, i] { IssueTxn(i); });
  At(rng_.Range(0, 100), [this] { Fault(); });
  for (const char* p : kParticipants) At(rng_.Range(0, 300), [this, p] { CollectOutcomes(p); });
  At(rng_.Range(0, 300), [this] { Consume(); });
  RunUntil(kChaosMs);

  // Liveness. Faults stop; the network heals.
  faults_ = false;
  cuts_.clear();
  bool any_3pc = false;
  for (const auto& [id, t] : client_) any_3pc |= t.request.protocol() == v1::THREE_PC;
  if (any_3pc) {
    // 3PC: the coordinator stays down, and so does one participant; every
    // transaction with a majority of its participants up must decide.
    const std::string down = kParticipants[rng_.Range(0, kParticipantCount - 1)];
    keep_down_ = {kCoordinator, down};
    Down(node(kCoordinator));
    Down(node(down));
    std::set<std::string> up;
    for (const char* p : kParticipants) {
      if (down == p) continue;
      up.insert(p);
      Restart(node(p));
    }
    RunUntil(now_ + kMajorityPhaseMs);
    checker_.CheckMajorityProgress(up);
    keep_down_.clear();
  }
  for (auto& [id, n] : nodes_) {
    if (n.group != nullptr) {
      StartGroup(n);
    } else if (!n.up) {
      Boot(n);
    }
  }
  // The client retries whatever it was not told.
  for (auto& [id, t] : client_) {
    if (!t.answered) At(now_ + rng_.Range(0, 50), [this, id = id] { SendExecute(id); });
  }
  const int64_t end = now_ + kHealedPhaseMs;
  for (int64_t t = now_ + 1000; t < end; t += 1000) {
    At(t, [this] {
      for (auto& [id, x] : client_) {
        if (!x.answered && !x.in_flight) SendExecute(id);
      }
    });
  }
  RunUntil(end);
  checker_.CheckAllDecided();
  DrainQueues();

  Result r;
  r.seed = options_.seed;
  r.txns = client_.size();
  for (const auto& [id, t] : client_) {
    std::optional<v1::Outcome> o = checker_.told(id);
    r.commits += o == v1::COMMITTED;
    r.aborts += o == v1::ABORTED;
    r.one_phase_commits += o == v1::COMMITTED && t.request.ops_size() == 1;
  }
  r.steps = steps_;
  r.outcomes_collected = outcomes_collected_;
  r.state_copies = state_copies_;
  r.leaderships = leaderships_;
  r.trace_hash = hash_;
  r.violations = checker_.violations();
  r.blocked = checker_.blocked();
  return r;
}

}  // namespace internal

using internal::Sim;

Result RunSeed(const Options& options) {
  Sim sim(options);
  return sim.Run();
}

const std::vector<std::string>& Plants() { return PlantNames(); }

const char* ModeName(ProtocolMode mode) {
  switch (mode) {
    case ProtocolMode::k2pc:
      return "2pc";
    case ProtocolMode::k3pc:
      return "3pc";
    case ProtocolMode::kMixed:
      return "mixed";
  }
  return "?";
}

std::string ReplayCommand(const Options& options) {
  return absl::StrCat(
      "build/bin/atomq-sim --seed=", options.seed, " --protocol=", ModeName(options.mode),
      options.replicas > 1 ? absl::StrCat(" --replicas=", options.replicas) : "",
      options.wipes ? " --wipes" : "", options.membership ? " --membership" : "",
      options.plant == Plant::kNone ? "" : absl::StrCat(" --plant=", PlantName(options.plant)),
      " --verbose");
}

}  // namespace atomq::sim
