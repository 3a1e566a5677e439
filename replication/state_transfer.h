// State transfer (docs/design.md 10.2): a member behind the start of a
// compacted log is sent a snapshot point, then copies the whole state of a
// member that holds it, one version of that member's store read a piece at
// a time, and writes it with the snapshot point in one transaction.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/storage.h"

namespace atomq::replication {

// Serves copies of this replica's state (every sub-database but the log's
// own): each transfer is one read transaction, read in order by one member,
// and dropped once read to the end or left unread for `idle_ms`.
class StateSource {
 public:
  struct Options {
    uint32_t transfers_max = 2;  // --state_transfers_max: read at once
    int64_t idle_ms = 30000;     // how long an unread transfer is kept
    size_t piece_bytes = 1 << 20;
  };
  struct Piece {
    uint64_t transfer = 0;
    std::vector<Write> records;
    bool last = false;
  };

  // `local` must outlive it; `except`: the sub-databases not copied.
  StateSource(Storage* local, std::vector<std::string> except, Options options)
      : local_(local), except_(std::move(except)), options_(options) {}

  // Piece `seq` of `transfer` (transfer 0, seq 0: a new one begins).
  // RESOURCE_EXHAUSTED when transfers_max are being read; NOT_FOUND for a
  // transfer that ended or expired, FAILED_PRECONDITION for a piece out of
  // order: the caller starts over.
  absl::StatusOr<Piece> Next(uint64_t transfer, uint64_t seq, int64_t now_ms)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Transfer {
    std::unique_ptr<StoreReader> reader;
    uint64_t seq = 0;  // the next piece
    int64_t touched_ms = 0;
  };
  void Expire(int64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Storage* const local_;
  const std::vector<std::string> except_;
  const Options options_;
  absl::Mutex mu_;
  std::map<uint64_t, Transfer> transfers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

// Reads a new transfer of `source` to its end, in this process (tests and
// the simulator; replicas apart use Replica.FetchState): RESOURCE_EXHAUSTED
// past `bytes_max` of keys and values.
absl::StatusOr<std::vector<Write>> ReadWholeState(StateSource* source, uint64_t bytes_max,
                                                  int64_t now_ms);

// The CRC32C of a piece's records (db, key and value, each with its
// length), sent with the piece and checked where it arrives.
uint32_t PieceCrc(const std::vector<Write>& records);

}  // namespace atomq::replication
