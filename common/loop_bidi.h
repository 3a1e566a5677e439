// Bidirectional stream calls on the RpcLoop (common/rpc_loop.h), in the
// shape of gRPC's callback reactor: StartRead, StartWrite and Finish from any
// thread, reactions (OnReadDone, OnWriteDone, OnCancel, OnDone) on a loop
// thread, never inline in the call that started the operation.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "common/loop_unary.h"
#include "common/rpc_loop.h"
#include "grpcpp/grpcpp.h"

namespace atomq {

namespace loop_internal {
class BidiCall;
// The call a reactor being made belongs to (set around the factory).
inline thread_local BidiCall* t_making = nullptr;
}  // namespace loop_internal

// At most one read and one write under way at a time; Finish once, with no
// write under way. OnDone comes last, once every reaction has run; the
// reactor may free itself there.
template <typename Req, typename Resp>
class BidiReactor {
 public:
  BidiReactor() : call_(loop_internal::t_making) {}
  virtual ~BidiReactor() = default;

  void StartRead(Req* msg) {
    read_into_ = msg;
    StartReadBytes();
  }
  void StartWrite(const Resp* msg) {
    grpc::ByteBuffer bytes;
    bool own = false;
    if (!grpc::SerializationTraits<Resp>::Serialize(*msg, &bytes, &own).ok()) {
      return Finish(
          grpc::Status(grpc::StatusCode::INTERNAL, "stream message could not be encoded"));
    }
    StartWriteBytes(std::move(bytes));
  }
  void Finish(grpc::Status status) { FinishCall(std::move(status)); }

  virtual void OnReadDone(bool ok) = 0;
  // A message that is not a `Req`: the reactor ends the call with `status`
  // (INVALID_ARGUMENT naming the method) once it may.
  virtual void OnReadMalformed(grpc::Status status) = 0;
  virtual void OnWriteDone(bool ok) = 0;
  virtual void OnCancel() {}
  virtual void OnDone() = 0;

  // For BidiCall: the bytes read, parsed into the message StartRead named.
  bool ParseRead(grpc::ByteBuffer* bytes) {
    return grpc::SerializationTraits<Req>::Deserialize(bytes, read_into_).ok();
  }

 private:
  void StartReadBytes();
  void StartWriteBytes(grpc::ByteBuffer bytes);
  void FinishCall(grpc::Status status);

  loop_internal::BidiCall* const call_;
  Req* read_into_ = nullptr;
};

namespace loop_internal {

// What BidiCall needs of a reactor, whatever its message types.
class BidiHooks {
 public:
  virtual ~BidiHooks() = default;
  virtual bool Parse(grpc::ByteBuffer* bytes) = 0;
  virtual void ReadDone(bool ok) = 0;
  virtual void ReadMalformed() = 0;
  virtual void WriteDone(bool ok) = 0;
  virtual void Cancelled() = 0;
  virtual void Done() = 0;
};

// One stream call's operations on the loop; frees itself after OnDone.
class BidiCall {
 public:
  BidiCall(RpcLoop* loop, std::string method) : loop_(loop), method_(std::move(method)) {}
  grpc::ServerContext* context() { return &ctx_; }
  grpc::ServerAsyncReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream() { return &stream_; }
  const std::string& method() const { return method_; }
  // Makes the reactor (`make` returns its hooks); operations it starts at
  // once report only after it is made.
  void Make(const std::function<std::unique_ptr<BidiHooks>()>& make);

  // Before the call is requested.
  void WatchDone();
  void Read();
  void Write(grpc::ByteBuffer bytes);
  void Finish(grpc::Status status);
  // The arrival failed (shutdown): frees the call.
  void Abandon();

 private:
  class Op final : public LoopTag {
   public:
    Op(BidiCall* call, void (BidiCall::*fn)(bool)) : call_(call), fn_(fn) {}
    void Proceed(bool ok) override { (call_->*fn_)(ok); }

   private:
    BidiCall* const call_;
    void (BidiCall::*const fn_)(bool);
  };

  void ReadDone(bool ok);
  void WriteDone(bool ok);
  void FinishDone(bool ok);
  void CallDone(bool ok);
  // Marks the operation `under_way` ended and runs `reaction`; OnDone once
  // the call is finished and done and no operation or reaction is left.
  void React(bool* under_way, const std::function<void()>& reaction);

  RpcLoop* const loop_;
  const std::string method_;
  grpc::ServerContext ctx_;
  grpc::ServerAsyncReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer> stream_{&ctx_};
  std::unique_ptr<BidiHooks> hooks_;
  grpc::ByteBuffer in_;
  grpc::ByteBuffer out_;
  Op read_op_{this, &BidiCall::ReadDone};
  Op write_op_{this, &BidiCall::WriteDone};
  Op finish_op_{this, &BidiCall::FinishDone};
  Op done_op_{this, &BidiCall::CallDone};
  absl::Mutex making_mu_;  // held while the reactor is made
  absl::Mutex mu_;
  int reacting_ ABSL_GUARDED_BY(mu_) = 0;
  bool done_reported_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;   // Finish's completion came
  bool call_done_ ABSL_GUARDED_BY(mu_) = false;  // the done notice came
};

template <typename Req, typename Resp>
class Hooks final : public BidiHooks {
 public:
  explicit Hooks(BidiReactor<Req, Resp>* r, std::string method)
      : r_(r), method_(std::move(method)) {}
  bool Parse(grpc::ByteBuffer* bytes) override { return r_->ParseRead(bytes); }
  void ReadDone(bool ok) override { r_->OnReadDone(ok); }
  void ReadMalformed() override { r_->OnReadMalformed(MalformedRequest(method_)); }
  void WriteDone(bool ok) override { r_->OnWriteDone(ok); }
  void Cancelled() override { r_->OnCancel(); }
  void Done() override { r_->OnDone(); }

 private:
  BidiReactor<Req, Resp>* const r_;
  const std::string method_;
};

// Makes a reactor for each arriving call of one stream method.
template <typename Service, typename Req, typename Resp>
class BidiMethod final : public MethodServer {
 public:
  using Factory = std::function<BidiReactor<Req, Resp>*(grpc::ServerContext*)>;
  BidiMethod(RpcLoop* loop, Service* service, int index, Factory factory)
      : loop_(loop),
        service_(service),
        index_(index),
        name_(Service::descriptor()->method(index)->full_name()),
        factory_(std::move(factory)) {}

  void RequestNext() override {
    auto* w = new Arrival(this);
    if (!loop_->Begin([w](grpc::ServerCompletionQueue* cq) { w->Wait(cq); })) {
      w->call->Abandon();
      delete w;
    }
  }
  const std::string& name() const override { return name_; }

 private:
  struct Arrival final : LoopTag {
    explicit Arrival(BidiMethod* m) : method(m), call(new BidiCall(m->loop_, m->name_)) {}
    void Wait(grpc::ServerCompletionQueue* cq) {
      call->WatchDone();
      method->service_->RequestBidi(method->index_, call->context(), call->stream(), cq, this);
    }
    void Proceed(bool ok) override {
      if (!ok) {
        call->Abandon();
      } else {
        method->RequestNext();
        call->Make([this]() -> std::unique_ptr<BidiHooks> {
          loop_internal::t_making = call;
          BidiReactor<Req, Resp>* r = method->factory_(call->context());
          loop_internal::t_making = nullptr;
          return std::make_unique<Hooks<Req, Resp>>(r, method->name_);
        });
      }
      delete this;
    }
    BidiMethod* const method;
    BidiCall* const call;
  };

  RpcLoop* const loop_;
  Service* const service_;
  const int index_;
  const std::string name_;
  const Factory factory_;
};

}  // namespace loop_internal

template <typename Req, typename Resp>
void BidiReactor<Req, Resp>::StartReadBytes() {
  call_->Read();
}
template <typename Req, typename Resp>
void BidiReactor<Req, Resp>::StartWriteBytes(grpc::ByteBuffer bytes) {
  call_->Write(std::move(bytes));
}
template <typename Req, typename Resp>
void BidiReactor<Req, Resp>::FinishCall(grpc::Status status) {
  call_->Finish(std::move(status));
}

// Serves stream `method` of `service` on `loop`: `factory(ctx)` makes the
// reactor of each call (it may start reading, writing or finishing at once).
template <typename Req, typename Resp, typename Service>
void ServeBidi(RpcLoop* loop, Service* service, const std::string& method,
               std::function<BidiReactor<Req, Resp>*(grpc::ServerContext*)> factory) {
  const int index = service->template IndexOf<Req, Resp>(method);
  loop->Add(std::make_unique<loop_internal::BidiMethod<Service, Req, Resp>>(loop, service, index,
                                                                            std::move(factory)));
}

}  // namespace atomq
