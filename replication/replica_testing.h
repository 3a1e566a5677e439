// For tests of replicas: write through one and wait, wait for a version,
// find the serving leader, and the store each replica opens.
#pragma once

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "common/storage.h"
#include "replication/replicated_storage.h"

namespace atomq::replication {

inline constexpr char kTestDataDb[] = "data";

// A replica's own store: the log's sub-databases, the applied index, data.
inline std::unique_ptr<Storage> OpenReplicaStore(const std::string& dir) {
  LmdbOptions o;
  o.dir = dir;
  o.dbs = ReplicatedStorage::ReplicaDbs();
  o.dbs.push_back(kTestDataDb);
  o.map_size_mb = 64;
  return std::move(OpenLmdbStorage(o)).value();
}

// Writes `w` through `r` and waits for its DoneFn.
inline absl::Status WriteThrough(ReplicatedStorage* r, Write w, int wait_ms = 5000) {
  auto done = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> f = done->get_future();
  r->Submit(Batch{0, {std::move(w)}}, [done](absl::Status st) { done->set_value(st); });
  if (f.wait_for(std::chrono::milliseconds(wait_ms)) != std::future_status::ready) {
    return absl::DeadlineExceededError("no answer");
  }
  return f.get();
}

// Writes data/key=value through `r` and waits for its DoneFn.
inline absl::Status PutThrough(ReplicatedStorage* r, const std::string& key,
                               const std::string& value, int wait_ms = 5000) {
  return WriteThrough(r, Write{kTestDataDb, key, value, false}, wait_ms);
}

// Waits up to 10 s for `r` to have applied `index`.
inline bool WaitApplied(ReplicatedStorage* r, uint64_t index) {
  for (int i = 0; i < 1000; ++i) {
    if (r->Status().applied_index >= index) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// The serving leader among members 1..n (`at` gives each, or null when
// down), waiting up to 10 s; 0 if none.
inline uint64_t ServingLeader(uint64_t n, const std::function<ReplicatedStorage*(uint64_t)>& at) {
  for (int i = 0; i < 1000; ++i) {
    for (uint64_t id = 1; id <= n; ++id) {
      if (at(id) != nullptr && at(id)->Status().serving) return id;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return 0;
}

}  // namespace atomq::replication
