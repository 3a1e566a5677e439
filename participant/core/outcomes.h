// The outcome store: outcomes decided here, cached in memory (bounded by
// Config::outcome_cache_max, oldest durable ones first) in front of storage
// (DurableView::FindOutcome), and the state of their collection (Forget,
// CollectOutcomes; see outcomes.cc for why forgetting is safe).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "atomq/v1/records.pb.h"
#include "participant/core/participant_core.h"

namespace atomq::participant {

struct CachedOutcome {
  v1::OutcomeRecord rec;
  uint64_t token = 0;  // nonzero: the record is not durable yet
};

struct OutcomeStore {
  OutcomeStore(const Config& config, const DurableView* view) : config(config), view(view) {}

  // Durable or in flight (token != 0), from memory, else from storage.
  std::optional<CachedOutcome> Find(const std::string& id) const;
  void Remember(v1::OutcomeRecord rec, uint64_t token);
  // Only durable outcomes go: storage (the DurableView) still has them.
  void Evict();
  // Collection takes ids out of the cache anywhere in its FIFO: drop those
  // now and then, so that the FIFO stays within a multiple of the cache.
  void CompactOrder();

  const Config& config;
  const DurableView* view;
  std::map<std::string, CachedOutcome> cache;
  std::deque<std::string> order;     // FIFO eviction
  uint64_t forget_token = 0;         // the latest ForgettableBatch (Forget appends while unsent)
  std::set<std::string> collecting;  // kForgettableDb keys a CollectBatch erases
  std::set<std::string> collecting_ids;  // outcomes a CollectBatch erases
  uint64_t erased = 0;                   // outcomes erased by durable CollectBatches
};

}  // namespace atomq::participant
