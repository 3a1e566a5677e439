#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/validate.h"
#include "participant/core/node.h"

namespace atomq::participant {

namespace {

// Coordinator answers of PREPARING in a row before peers are asked too.
constexpr uint32_t kPreparingBeforePeers = 3;

}  // namespace

void Node::ArmTimer(Txn& t, int64_t at_ms) {
  timers_.erase(t.timer_id);
  t.timer_id = NewTimerId();
  timers_[t.timer_id] = t.rec.txn_id();
  out_.timers.push_back(TimerRequest{t.timer_id, at_ms});
}

void Node::QueryCoordinator(Txn& t) {
  // By id: the adapter dials the address its own configuration gives it.
  if (t.rec.coordinator_id().empty()) {
    // Nobody to ask but the peers.
    if (!t.ask_peers) {
      t.ask_peers = true;
      QueryPeers(t);
    }
    return;
  }
  out_.queries.push_back(OutQuery{t.rec.txn_id(), t.rec.coordinator_id(), true});
}

void Node::QueryPeers(const Txn& t) {
  for (const v1::PeerAddress& p : t.rec.participants()) {
    if (p.participant() == t.rec.participant() || p.participant().empty()) continue;
    out_.queries.push_back(OutQuery{t.rec.txn_id(), p.participant(), false});
  }
}

void Node::OnTimer(uint64_t timer_id, int64_t now_ms) {
  auto it = timers_.find(timer_id);
  if (it == timers_.end()) return;
  const std::string id = it->second;
  timers_.erase(it);
  auto t = txns_.find(id);
  if (t == txns_.end() || t->second.timer_id != timer_id) return;
  Txn& txn = t->second;
  ATOMQ_CHECK(txn.durable, "in doubt only after the YES record is durable");
  txn.timer_id = 0;
  txn.in_doubt = true;
  // A batch in flight (commit, abort) will settle it; only keep watch.
  if (txn.batch == 0) {
    bool peers_already = txn.ask_peers;
    QueryCoordinator(txn);
    if (peers_already) QueryPeers(txn);
    // 3PC does not wait for the coordinator: a new round every time.
    if (txn.rec.protocol() == v1::THREE_PC) StartRound(txn, now_ms);
  }
  ArmTimer(txn, now_ms + txn.backoff_ms);
  txn.backoff_ms =
      std::min<uint32_t>(std::max(txn.backoff_ms, txn.backoff_ms * 2),
                         std::max<uint32_t>(config_.resend_max_ms, config_.resend_initial_ms));
}

void Node::OnQueryReply(const std::string& id, const std::string& target,
                        const absl::StatusOr<v1::QueryStateResponse>& reply, int64_t now_ms) {
  auto it = txns_.find(id);
  if (it == txns_.end())
    return HeuristicQueryReply(id, target, reply, now_ms);  // settled meanwhile
  Txn& t = it->second;
  bool from_peer = false;
  for (const v1::PeerAddress& p : t.rec.participants()) {
    if (p.participant() == target && target != t.rec.participant()) from_peer = true;
  }
  const bool from_coordinator = !from_peer && target == t.rec.coordinator_id();
  if (!from_peer && !from_coordinator) return;
  const std::string by = absl::StrCat(from_peer ? "peer " : "coordinator ", target);
  if (reply.ok() && reply->state() == v1::STATE_COMMITTED) {
    return CommitTxn(std::nullopt, id, now_ms, by);
  }
  if (reply.ok() && reply->state() == v1::STATE_ABORTED) {
    return AbortTxn(std::nullopt, id, now_ms, by);
  }
  if (!from_coordinator) return;  // an uncertain peer: keep asking
  // UNKNOWN and ENDED count as uncertain: presumed abort has the
  // coordinator answer STATE_ABORTED for what it forgot.
  bool ask_peers = !reply.ok();
  if (reply.ok() && reply->state() == v1::PREPARING) {
    ask_peers = ++t.preparing_streak >= kPreparingBeforePeers;
  } else {
    t.preparing_streak = 0;
  }
  if (ask_peers && !t.ask_peers) {
    t.ask_peers = true;
    QueryPeers(t);
  }
}

}  // namespace atomq::participant
