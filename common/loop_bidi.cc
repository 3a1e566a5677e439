#include "common/loop_bidi.h"

namespace atomq::loop_internal {

void BidiCall::Make(const std::function<std::unique_ptr<BidiHooks>()>& make) {
  absl::MutexLock lock(&making_mu_);
  hooks_ = make();
}

void BidiCall::WatchDone() { ctx_.AsyncNotifyWhenDone(&done_op_); }

void BidiCall::Read() {
  absl::MutexLock lock(&mu_);
  reading_ = loop_->Begin([&](grpc::ServerCompletionQueue*) { stream_.Read(&in_, &read_op_); });
}

void BidiCall::Write(grpc::ByteBuffer bytes) {
  absl::MutexLock lock(&mu_);
  out_ = std::move(bytes);
  writing_ = loop_->Begin([&](grpc::ServerCompletionQueue*) { stream_.Write(out_, &write_op_); });
}

void BidiCall::Finish(grpc::Status status) {
  absl::MutexLock lock(&mu_);
  if (finishing_) return;
  finishing_ =
      loop_->Begin([&](grpc::ServerCompletionQueue*) { stream_.Finish(status, &finish_op_); });
}

void BidiCall::Abandon() { delete this; }

void BidiCall::ReadDone(bool ok) {
  React(&reading_, [&] {
    if (ok && !hooks_->Parse(&in_)) return hooks_->ReadMalformed();
    hooks_->ReadDone(ok);
  });
}

void BidiCall::WriteDone(bool ok) {
  React(&writing_, [&] { hooks_->WriteDone(ok); });
}

void BidiCall::FinishDone(bool) {
  {
    absl::MutexLock lock(&mu_);
    finished_ = true;
  }
  React(nullptr, [] {});
}

void BidiCall::CallDone(bool) {
  React(nullptr, [&] {
    if (ctx_.IsCancelled()) hooks_->Cancelled();
  });
  {
    absl::MutexLock lock(&mu_);
    call_done_ = true;
  }
  React(nullptr, [] {});
}

void BidiCall::React(bool* under_way, const std::function<void()>& reaction) {
  { absl::MutexLock wait_until_made(&making_mu_); }
  {
    absl::MutexLock lock(&mu_);
    if (under_way != nullptr) *under_way = false;
    ++reacting_;
  }
  reaction();
  bool done;
  {
    absl::MutexLock lock(&mu_);
    --reacting_;
    done = finished_ && call_done_ && !reading_ && !writing_ && reacting_ == 0 && !done_reported_;
    if (done) done_reported_ = true;
  }
  if (!done) return;
  hooks_->Done();
  delete this;
}

}  // namespace atomq::loop_internal
