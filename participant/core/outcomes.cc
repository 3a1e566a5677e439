#include <algorithm>
#include <deque>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "common/validate.h"
#include "participant/core/node.h"

namespace atomq::participant {

using v1::TxnState;

// --- outcomes ---

// Durable or in flight (token != 0), from memory, else from storage.
std::optional<CachedOutcome> OutcomeStore::Find(const std::string& id) const {
  auto it = cache.find(id);
  if (it != cache.end()) return it->second;
  if (view == nullptr) return std::nullopt;
  std::optional<v1::OutcomeRecord> rec = view->FindOutcome(id);
  if (!rec) return std::nullopt;
  return CachedOutcome{*std::move(rec), 0};
}

void OutcomeStore::Remember(v1::OutcomeRecord rec, uint64_t token) {
  const std::string id = rec.txn_id();
  auto [it, inserted] = cache.insert_or_assign(id, CachedOutcome{std::move(rec), token});
  if (inserted) order.push_back(id);
  Evict();
}

// Only durable outcomes go: storage (the DurableView) still has them.
void OutcomeStore::Evict() {
  while (cache.size() > config.outcome_cache_max && !order.empty()) {
    auto it = cache.find(order.front());
    if (it != cache.end() && it->second.token != 0) break;
    if (it != cache.end()) cache.erase(it);
    order.pop_front();
  }
}

// --- outcome collection ---
// A forgotten id is answered exactly as one never heard of. That is safe
// because an outcome goes only after the coordinator's ENDED is durable
// (every participant acknowledged the outcome, so none is in doubt and the
// coordinator decided) and retention_ms after that, longer than a message
// to this node stays in flight:
// - QueryState, Promise and Accept come from a participant in doubt or a
//   termination round, which ENDED rules out. Were one to come, presumed
//   abort would record ABORTED for an id that may have committed: that is
//   why nothing goes before the END notice.
// - Commit comes only until this node acknowledged it; a late copy is
//   answered OK with no sequences (CommitTxn), which the coordinator ignores
//   once acknowledged, so it never fails the coordinator. Abort comes only
//   for aborted ids; a late copy records ABORTED again and is answered OK.
// - Prepare after the window is a stale copy or a client's retry of
//   Execute with an id the coordinator forgot too: a new transaction, so a
//   retry is idempotent only within --retention_ms (README).

void Node::Forget(const std::string& id, int64_t now_ms) {
  if (!ValidateTxnId(id).ok() || txns_.count(id) > 0 || heuristics_.count(id) > 0) return;
  std::optional<CachedOutcome> o = outcomes_.Find(id);
  if (!o || o->token != 0 || o->rec.has_heuristic()) return;
  Write w{kForgettableDb, schema::ForgettableKey(now_ms, id), "", false};
  // Notices that arrive together (one Batch call) share one batch.
  for (auto it = out_.persist.rbegin(); it != out_.persist.rend(); ++it) {
    if (it->token == outcomes_.forget_token) {
      it->writes.push_back(std::move(w));
      return;
    }
  }
  outcomes_.forget_token = Submit({std::move(w)}, ForgettableBatch{id});
  out_.persist.back().sync = false;  // forgetting is never urgent
}

// Whether the outcome of `id` may go with a forgettable entry made at `at_ms`.
bool Node::Collectable(const std::string& id, int64_t at_ms) const {
  if (txns_.count(id) > 0 || heuristics_.count(id) > 0 || outcomes_.collecting_ids.count(id) > 0) {
    return false;
  }
  std::optional<CachedOutcome> o = outcomes_.Find(id);
  // A later outcome (the id ran again after an earlier collection) keeps
  // its own: only its own END notice lets it go.
  return o && o->token == 0 && !o->rec.has_heuristic() && o->rec.decided_unix_ms() <= at_ms;
}

size_t Node::CollectOutcomes(const std::vector<std::string>& keys, int64_t now_ms) {
  const int64_t cutoff = now_ms - static_cast<int64_t>(config_.retention_ms);
  std::vector<Write> writes;
  std::vector<std::string> taken, ids;
  for (const std::string& key : keys) {
    const std::optional<schema::Forgettable> entry = schema::ParseForgettableKey(key);
    if (entry && entry->at_ms >= cutoff) break;
    if (!outcomes_.collecting.insert(key).second) continue;  // its batch is in flight
    taken.push_back(key);
    writes.push_back(Erase(kForgettableDb, key));
    if (!entry) continue;  // not a key Forget writes: drop it
    const std::string& id = entry->txn_id;
    if (!Collectable(id, entry->at_ms)) continue;
    writes.push_back(Erase(kOutcomesDb, id));
    outcomes_.collecting_ids.insert(id);
    ids.push_back(id);
    // Until the erase is durable, a question reads the outcome from disk.
    outcomes_.cache.erase(id);
  }
  if (writes.empty()) return 0;
  SubmitCollect(std::move(writes), taken, ids);
  outcomes_.CompactOrder();
  return taken.size();
}

// Collection takes ids out of the cache anywhere in its FIFO: drop those
// now and then, so that the FIFO stays within a multiple of the cache.
void OutcomeStore::CompactOrder() {
  if (order.size() <= 2 * cache.size() + 1024) return;
  std::set<std::string> seen;
  std::deque<std::string> kept;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    if (cache.count(*it) > 0 && seen.insert(*it).second) kept.push_front(*it);
  }
  order.swap(kept);
}

void Node::SubmitCollect(std::vector<Write> writes, std::vector<std::string> keys,
                         std::vector<std::string> ids) {
  Submit(std::move(writes), CollectBatch{std::move(keys), std::move(ids)});
  out_.persist.back().sync = false;
}

void Node::CollectDone(const CollectBatch& b, const absl::Status& status) {
  for (const std::string& k : b.keys) outcomes_.collecting.erase(k);
  for (const std::string& id : b.txn_ids) outcomes_.collecting_ids.erase(id);
  // On failure the entries stay and the next collection tries again.
  if (status.ok()) {
    outcomes_.erased += b.txn_ids.size();
  } else {
    Log(absl::StrCat("erasing ", Plural(b.txn_ids.size(), "outcome"),
                     " failed: ", status.ToString()));
  }
}

uint64_t Node::outcomes_erased() const { return outcomes_.erased; }

// TEST ONLY ("forget-before-end"): the bug the simulator's checker must
// catch, forgetting a commit with nobody's leave.
void Node::PlantForget(const std::string& id) {
  if (config_.plant != Plant::kForgetBeforeEnd) return;
  outcomes_.cache.erase(id);
  outcomes_.collecting_ids.insert(id);
  SubmitCollect({Erase(kOutcomesDb, id)}, {}, {id});
}

}  // namespace atomq::participant
