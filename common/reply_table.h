// Where the reply to each request goes: an adapter registers an entry
// before it hands the request to its core, and takes it back when the core
// releases the reply. Knows no RPC system; safe from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace atomq {

template <typename Entry>
class ReplyTable {
 public:
  // Registers `entry`; returns the request id to give the core (1, 2, ...:
  // never 0, never reused).
  uint64_t Expect(Entry entry) ABSL_LOCKS_EXCLUDED(mu_) {
    const uint64_t id = next_++;
    absl::MutexLock lock(&mu_);
    entries_[id] = std::move(entry);
    return id;
  }

  // The entry of `id`, removed; nullopt when there is none (answered
  // already, or never registered).
  std::optional<Entry> Take(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return std::nullopt;
    std::optional<Entry> entry(std::move(it->second));
    entries_.erase(it);
    return entry;
  }

  // Requests registered and not yet taken.
  size_t size() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return entries_.size();
  }

 private:
  std::atomic<uint64_t> next_{1};
  mutable absl::Mutex mu_;
  std::map<uint64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace atomq
