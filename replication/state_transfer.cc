#include "replication/state_transfer.h"

#include "absl/strings/str_cat.h"
#include "common/codec.h"

namespace atomq::replication {

void StateSource::Expire(int64_t now_ms) {
  for (auto it = transfers_.begin(); it != transfers_.end();) {
    if (now_ms - it->second.touched_ms > options_.idle_ms) {
      it = transfers_.erase(it);
    } else {
      ++it;
    }
  }
}

absl::StatusOr<StateSource::Piece> StateSource::Next(uint64_t transfer, uint64_t seq,
                                                     int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  Expire(now_ms);
  if (transfer == 0) {
    if (seq != 0) return absl::InvalidArgumentError("a new transfer begins at piece 0");
    if (transfers_.size() >= options_.transfers_max) {
      return absl::ResourceExhaustedError(
          absl::StrCat(transfers_.size(),
                       " copies of this replica's state are being read already "
                       "(--state_transfers_max); try again later"));
    }
    absl::StatusOr<std::unique_ptr<StoreReader>> reader = local_->Read(except_);
    if (!reader.ok()) return reader.status();
    transfer = next_id_++;
    transfers_[transfer] = Transfer{*std::move(reader), 0, now_ms};
  }
  auto it = transfers_.find(transfer);
  if (it == transfers_.end()) {
    return absl::NotFoundError(absl::StrCat("transfer ", transfer, " ended or expired"));
  }
  if (it->second.seq != seq) {
    return absl::FailedPreconditionError(
        absl::StrCat("transfer ", transfer, " is at piece ", it->second.seq, ", not ", seq));
  }
  Piece piece;
  piece.transfer = transfer;
  absl::StatusOr<bool> more = it->second.reader->Next(options_.piece_bytes, &piece.records);
  if (!more.ok()) {
    transfers_.erase(it);
    return more.status();
  }
  piece.last = !*more;
  if (piece.last) {
    transfers_.erase(it);
  } else {
    ++it->second.seq;
    it->second.touched_ms = now_ms;
  }
  return piece;
}

absl::StatusOr<std::vector<Write>> ReadWholeState(StateSource* source, uint64_t bytes_max,
                                                  int64_t now_ms) {
  std::vector<Write> out;
  uint64_t transfer = 0, bytes = 0;
  for (uint64_t seq = 0;; ++seq) {
    absl::StatusOr<StateSource::Piece> p = source->Next(transfer, seq, now_ms);
    if (!p.ok()) return p.status();
    transfer = p->transfer;
    for (Write& w : p->records) {
      bytes += w.key.size() + w.value.size();
      out.push_back(std::move(w));
    }
    if (bytes > bytes_max) return absl::ResourceExhaustedError("the state is over bytes_max");
    if (p->last) return out;
  }
}

uint32_t PieceCrc(const std::vector<Write>& records) {
  uint32_t crc = 0;
  for (const Write& w : records) {
    for (const std::string* field : {&w.db, &w.key, &w.value}) {
      crc = Crc32c(EncodeU64(field->size()), crc);
      crc = Crc32c(*field, crc);
    }
  }
  return crc;
}

}  // namespace atomq::replication
