#include "participant/core/producers.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/codec.h"
#include "participant/core/batches.h"
#include "participant/core/schema.h"

namespace atomq::participant {

void Producers::Touch(const std::string& key, Producer& p) {
  if (p.used != 0) lru.erase(p.used);
  p.used = next_used++;
  lru[p.used] = key;
}

absl::Status Producers::MakeRoom(std::vector<Write>* writes) {
  while (by_key.size() >= config.producers_max) {
    auto victim = lru.begin();
    while (victim != lru.end() && by_key.at(victim->second).token != 0) ++victim;
    if (victim == lru.end()) {
      return absl::ResourceExhaustedError(absl::StrCat("--producers_max=", config.producers_max,
                                                       " producers, each with a Send in flight"));
    }
    writes->push_back(Erase(kDedupDb, victim->second));
    by_key.erase(victim->second);
    lru.erase(victim);
  }
  return absl::OkStatus();
}

void Producers::EraseAll(uint64_t queue_id, std::vector<Write>* writes) const {
  const std::string prefix = schema::ProducerKeyPrefix(queue_id);
  for (auto it = by_key.lower_bound(prefix);
       it != by_key.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
    writes->push_back(Erase(kDedupDb, it->first));
  }
}

void Producers::Forget(uint64_t queue_id) {
  const std::string prefix = schema::ProducerKeyPrefix(queue_id);
  auto it = by_key.lower_bound(prefix);
  while (it != by_key.end() && it->first.compare(0, prefix.size(), prefix) == 0) {
    lru.erase(it->second.used);
    it = by_key.erase(it);
  }
}

void Producers::Drop(std::map<std::string, Producer>::iterator it) {
  lru.erase(it->second.used);
  by_key.erase(it);
}

void Producers::Recover(std::vector<v1::DedupRecord> recs,
                        const std::function<bool(uint64_t queue_id)>& queue_exists) {
  std::sort(recs.begin(), recs.end(),
            [](const v1::DedupRecord& a, const v1::DedupRecord& b) { return a.used() < b.used(); });
  for (const v1::DedupRecord& rec : recs) {
    if (!queue_exists(rec.queue_id())) continue;  // erased with its queue
    const std::string key = schema::ProducerKey(rec.queue_id(), rec.producer_id());
    Producer& p = by_key[key];
    p.last = p.durable_last = rec.producer_sequence();
    p.msg_sequence = p.durable_msg_sequence = rec.sequence();
    p.durable = true;
    Touch(key, p);
  }
}

}  // namespace atomq::participant
