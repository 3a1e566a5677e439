// ListTransactions: pages of the transactions prepared here and of the
// heuristic outcomes, in txn id order, without payloads unless asked.
#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/validate.h"
#include "participant/core/node.h"

namespace atomq::participant {
namespace {

// Payload and header bytes of an enqueue; 0 for an ack.
uint64_t OpBytes(const v1::Op& op) {
  if (!op.has_enqueue()) return 0;
  uint64_t n = op.enqueue().payload().size();
  for (const auto& [k, v] : op.enqueue().headers()) n += k.size() + v.size();
  return n;
}

}  // namespace

v1::ParticipantTxnInfo Node::InfoOf(const std::string& id, const Txn& t, bool payloads) const {
  v1::ParticipantTxnInfo info;
  info.set_txn_id(id);
  info.set_protocol(t.rec.protocol());
  info.set_state(t.rec.state());
  info.set_coordinator_id(t.rec.coordinator_id());
  info.set_coordinator_address(t.rec.coordinator_address());
  info.set_prepared_unix_ms(t.rec.prepared_unix_ms());
  *info.mutable_participants() = t.rec.participants();
  for (const v1::Op& op : t.rec.ops()) {
    info.add_op_bytes(OpBytes(op));
    v1::Op* out = info.add_ops();
    if (payloads || !op.has_enqueue()) {
      *out = op;
      continue;
    }
    out->set_participant(op.participant());
    out->mutable_enqueue()->set_queue(op.enqueue().queue());
  }
  info.set_payloads_included(payloads);
  info.set_in_doubt(t.in_doubt);
  return info;
}

absl::StatusOr<v1::ListParticipantTxnsResponse> Node::ListTransactions(
    const v1::ListParticipantTxnsRequest& req, uint32_t limit_max, uint64_t bytes_max) const {
  const std::string& after = req.page_token();
  absl::StatusOr<uint32_t> limit = PageLimit(req.limit(), limit_max, after);
  if (!limit.ok()) return limit.status();
  v1::ListParticipantTxnsResponse resp;
  // Two ordered walks merged by id; a row is one id (a transaction, its
  // heuristic outcome, or both).
  auto t = after.empty() ? txns_.begin() : txns_.upper_bound(after);
  auto h = after.empty() ? heuristics_.begin() : heuristics_.upper_bound(after);
  auto skip_staged = [&] {
    while (t != txns_.end() && !t->second.durable) ++t;
  };
  skip_staged();
  uint32_t rows = 0;
  uint64_t bytes = 0;
  std::string last;
  while (t != txns_.end() || h != heuristics_.end()) {
    const std::string& id =
        h == heuristics_.end() || (t != txns_.end() && t->first < h->first) ? t->first : h->first;
    std::optional<v1::ParticipantTxnInfo> info;
    if (t != txns_.end() && t->first == id) info = InfoOf(id, t->second, req.payloads());
    const v1::HeuristicOutcome* ho =
        h != heuristics_.end() && h->first == id ? &h->second : nullptr;
    const uint64_t row = (info ? info->ByteSizeLong() : 0) + (ho ? ho->ByteSizeLong() : 0);
    if (rows == *limit || (rows > 0 && bytes + row > bytes_max)) {
      resp.set_next_page_token(last);
      break;
    }
    if (info) {
      *resp.add_transactions() = *std::move(info);
      ++t;
      skip_staged();
    }
    if (ho != nullptr) {
      *resp.add_heuristic() = *ho;
      ++h;
    }
    rows++;
    bytes += row;
    last = id;
  }
  return resp;
}

ParticipantCore::PreparedGauges Node::prepared_gauges() const {
  ParticipantCore::PreparedGauges g;
  for (const auto& [id, t] : txns_) {
    if (!t.durable || t.one_phase) continue;
    if (t.rec.state() == v1::PRECOMMITTED) {
      ++g.precommitted;
    } else {
      ++g.prepared;
    }
    if (!t.in_doubt) continue;
    ++g.in_doubt;
    if (g.oldest_in_doubt_ms == 0 || t.rec.prepared_unix_ms() < g.oldest_in_doubt_ms) {
      g.oldest_in_doubt_ms = t.rec.prepared_unix_ms();
    }
  }
  return g;
}

std::vector<std::pair<std::string, ParticipantCore::QueueCounts>> Node::queue_counts() const {
  std::vector<std::pair<std::string, ParticipantCore::QueueCounts>> out;
  for (const auto& [name, q] : queues_.by_name) out.emplace_back(name, q.counts);
  return out;
}

}  // namespace atomq::participant
