// Collection of finished records: ENDED records older than the retention
// window are erased with their kEndedDb key, in batches the adapter asks for.

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "coordinator/core/core_impl.h"

namespace atomq::coordinator {

size_t CoordinatorCore::Impl::CollectRecords(const std::vector<std::string>& keys, int64_t now_ms) {
  const int64_t cutoff = now_ms - static_cast<int64_t>(config.retention_ms);
  Batch b;
  b.sync = false;  // forgetting is never urgent
  std::vector<std::string> taken;
  size_t records = 0;
  for (const std::string& key : keys) {
    if (key.size() > 8 && static_cast<int64_t>(DecodeU64(key)) >= cutoff) break;
    if (!collecting.insert(key).second) continue;  // its batch is in flight
    taken.push_back(key);
    b.writes.push_back(Write{kEndedDb, key, "", true});
    if (key.size() <= 8) continue;  // not a key this coordinator writes: drop it
    const std::string id = key.substr(8);
    if (!RecordCollectable(id, static_cast<int64_t>(DecodeU64(key)))) continue;
    b.writes.push_back(Write{kTxnDb, id, "", true});
    ++records;
  }
  if (taken.empty()) return 0;
  b.token = next_token++;
  collect_batches[b.token] = {taken, records};
  out.persist.push_back(std::move(b));
  return taken.size();
}

// Whether the record of `id` may go with an ENDED key made at `ended_ms`.
bool CoordinatorCore::Impl::RecordCollectable(const std::string& id, int64_t ended_ms) const {
  auto it = txns.find(id);
  // Running again under the same id: its record is not the ended one.
  if (it != txns.end() && !it->second.finished) return false;
  if (view == nullptr) return true;
  std::optional<v1::CoordinatorTxnRecord> r = view->FindTxn(id);
  return r && r->state() == v1::ENDED && r->decided_unix_ms() <= ended_ms;
}

bool CoordinatorCore::Impl::OnCollected(uint64_t token, const absl::Status& status) {
  auto it = collect_batches.find(token);
  if (it == collect_batches.end()) return false;
  for (const std::string& k : it->second.first) collecting.erase(k);
  // On failure the keys stay and the next collection tries again.
  if (status.ok()) {
    records_erased += it->second.second;
  } else {
    Log(absl::StrCat("erasing finished records failed: ", status.ToString()));
  }
  collect_batches.erase(it);
  return true;
}

}  // namespace atomq::coordinator
