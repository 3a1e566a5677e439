// Interactive transactions: staged work (StageRequest), memory only, kept
// under a txn id until a Prepare with use_staged takes it, an Abort or an
// outcome query drops it, or it expires.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "atomq/v1/participant.pb.h"
#include "google/protobuf/repeated_ptr_field.h"

namespace atomq::participant {

struct StagedTxn {
  google::protobuf::RepeatedPtrField<v1::Op> ops;
  std::vector<uint64_t> batches;  // OpsDigest of each applied Stage call
  int64_t expires_ms = 0;
  uint64_t timer_id = 0;
  uint64_t bytes = 0;
  std::string identity;  // who staged it (its first Stage call)
};

struct StagedWork {
  std::map<std::string, StagedTxn> txns;
  std::map<uint64_t, std::string> timers;             // expiry timer -> txn id
  uint64_t bytes = 0;                                 // payload and header bytes, all txns
  std::map<std::string, uint64_t> bytes_by_identity;  // the same, per identity (none at 0)
};

}  // namespace atomq::participant
