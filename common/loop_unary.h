// Unary calls on the RpcLoop (common/rpc_loop.h): the server's side, where a
// handler answers through a UnaryReactor, and calls to other servers.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/rpc_loop.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/support/async_stream.h"
#include "grpcpp/support/async_unary_call.h"

namespace atomq {

// A generated service (`Generated` is the outer class, e.g.
// v1::ParticipantTxn) whose every method is served raw on the loop. Each
// method needs a handler (ServeUnary, ServeBidi); Check() says which lack one.
template <typename Generated>
class LoopService : public Generated::Service {
 public:
  LoopService() {
    for (int i = 0; i < descriptor()->method_count(); ++i) this->MarkMethodRaw(i);
    served_.assign(static_cast<size_t>(descriptor()->method_count()), false);
  }
  static const google::protobuf::ServiceDescriptor* descriptor() {
    return google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
        Generated::service_full_name());
  }
  // The index of `method`, which must exist and take `Req` and give `Resp`:
  // a mismatch is a programming error and stops the process at start.
  template <typename Req, typename Resp>
  int IndexOf(const std::string& method) {
    const google::protobuf::MethodDescriptor* m = descriptor()->FindMethodByName(method);
    if (m == nullptr || m->input_type() != Req::descriptor() ||
        m->output_type() != Resp::descriptor()) {
      std::fprintf(stderr, "no method %s of %s with these types\n", method.c_str(),
                   Generated::service_full_name());
      std::abort();
    }
    served_[static_cast<size_t>(m->index())] = true;
    return m->index();
  }
  // Stops the process if a method has no handler: its calls would wait forever.
  void Check() const {
    for (size_t i = 0; i < served_.size(); ++i) {
      if (served_[i]) continue;
      std::fprintf(stderr, "method %s has no handler\n",
                   descriptor()->method(static_cast<int>(i))->full_name().c_str());
      std::abort();
    }
  }
  void RequestUnary(int index, grpc::ServerContext* ctx, grpc::ByteBuffer* request,
                    grpc::ServerAsyncResponseWriter<grpc::ByteBuffer>* writer,
                    grpc::ServerCompletionQueue* cq, void* tag) {
    this->RequestAsyncUnary(index, ctx, request, writer, cq, cq, tag);
  }
  void RequestBidi(int index, grpc::ServerContext* ctx,
                   grpc::ServerAsyncReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream,
                   grpc::ServerCompletionQueue* cq, void* tag) {
    this->RequestAsyncBidiStreaming(index, ctx, stream, cq, cq, tag);
  }

 private:
  std::vector<bool> served_;
};

// The answer of one unary call: Finish exactly once, from any thread (the
// response object the handler was given must be filled before).
class UnaryReactor {
 public:
  virtual ~UnaryReactor() = default;
  virtual void Finish(const grpc::Status& status) = 0;
  // True once the client cancelled or its deadline passed (only for methods
  // served with `watch_cancel`; else false).
  virtual bool cancelled() const = 0;
};

// The INVALID_ARGUMENT answer to a request the method cannot parse.
grpc::Status MalformedRequest(const std::string& method);

template <typename Req, typename Resp>
using UnaryHandler = std::function<void(grpc::ServerContext*, const Req*, Resp*, UnaryReactor*)>;

namespace loop_internal {

template <typename Service, typename Req, typename Resp>
class UnaryMethod;

// One call: waits, then runs its handler, answers, and frees itself once
// the answer is sent, the handler has returned and (with a watch) the call
// is done.
template <typename Service, typename Req, typename Resp>
class UnaryCall final : public LoopTag, public UnaryReactor {
 public:
  explicit UnaryCall(UnaryMethod<Service, Req, Resp>* method)
      : method_(method), writer_(&ctx_), done_(this) {}

  void Wait(grpc::ServerCompletionQueue* cq) {
    if (method_->watch_cancel()) {
      refs_.fetch_add(1);
      ctx_.AsyncNotifyWhenDone(&done_);
    }
    method_->service()->RequestUnary(method_->index(), &ctx_, &request_, &writer_, cq, this);
  }

  void Proceed(bool ok) override {
    if (!arrived_) {
      arrived_ = true;
      if (!ok) {
        // The server is shutting down and the call never came: no done
        // notice will either.
        if (method_->watch_cancel()) refs_.fetch_sub(1);
        return Release();
      }
      method_->RequestNext();
      Run();
      return;
    }
    Release();  // the answer went out (or could not)
  }

  void Finish(const grpc::Status& status) override {
    grpc::ByteBuffer out;
    bool own = false;
    if (status.ok() && !grpc::SerializationTraits<Resp>::Serialize(response_, &out, &own).ok()) {
      return Finish(grpc::Status(grpc::StatusCode::INTERNAL, "response could not be encoded"));
    }
    bool begun = method_->loop()->Begin([&](grpc::ServerCompletionQueue*) {
      if (status.ok()) {
        writer_.Finish(out, status, this);
      } else {
        writer_.FinishWithError(status, this);
      }
    });
    if (!begun) Release();
  }

  bool cancelled() const override { return cancelled_.load(); }

 private:
  // Fires when the call is done: answered, cancelled or past its deadline.
  class Done final : public LoopTag {
   public:
    explicit Done(UnaryCall* call) : call_(call) {}
    void Proceed(bool) override {
      if (call_->ctx_.IsCancelled()) call_->cancelled_ = true;
      call_->Release();
    }

   private:
    UnaryCall* const call_;
  };

  void Run() {
    // Held while the handler runs: an answer it gives at once may complete
    // on another thread before it returns.
    refs_.fetch_add(1);
    if (!grpc::SerializationTraits<Req>::Deserialize(&request_, &req_).ok()) {
      Finish(MalformedRequest(method_->name()));
    } else {
      method_->handler()(&ctx_, &req_, &response_, this);
    }
    Release();
  }

  void Release() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  UnaryMethod<Service, Req, Resp>* const method_;
  grpc::ServerContext ctx_;
  grpc::ByteBuffer request_;
  grpc::ServerAsyncResponseWriter<grpc::ByteBuffer> writer_;
  Req req_;
  Resp response_;
  Done done_;
  bool arrived_ = false;
  std::atomic<int> refs_{1};  // the answer's completion (or the wait's)
  std::atomic<bool> cancelled_{false};
};

template <typename Service, typename Req, typename Resp>
class UnaryMethod final : public MethodServer {
 public:
  UnaryMethod(RpcLoop* loop, Service* service, int index, bool watch_cancel,
              UnaryHandler<Req, Resp> handler)
      : loop_(loop),
        service_(service),
        index_(index),
        watch_cancel_(watch_cancel),
        name_(Service::descriptor()->method(index)->full_name()),
        handler_(std::move(handler)) {}

  void RequestNext() override {
    auto* call = new UnaryCall<Service, Req, Resp>(this);
    if (!loop_->Begin([call](grpc::ServerCompletionQueue* cq) { call->Wait(cq); })) delete call;
  }
  const std::string& name() const override { return name_; }
  RpcLoop* loop() const { return loop_; }
  Service* service() const { return service_; }
  int index() const { return index_; }
  bool watch_cancel() const { return watch_cancel_; }
  const UnaryHandler<Req, Resp>& handler() const { return handler_; }

 private:
  RpcLoop* const loop_;
  Service* const service_;
  const int index_;
  const bool watch_cancel_;
  const std::string name_;
  const UnaryHandler<Req, Resp> handler_;
};

}  // namespace loop_internal

// Serves `method` of `service` on `loop` with `handler`. With
// `watch_cancel`, the reactor's cancelled() tells a handler that waits
// (long-poll) that its client is gone.
template <typename Req, typename Resp, typename Service>
void ServeUnary(RpcLoop* loop, Service* service, const std::string& method,
                UnaryHandler<Req, Resp> handler, bool watch_cancel = false) {
  const int index = service->template IndexOf<Req, Resp>(method);
  loop->Add(std::make_unique<loop_internal::UnaryMethod<Service, Req, Resp>>(
      loop, service, index, watch_cancel, std::move(handler)));
}

// ServeUnary with a member function of `obj` as the handler.
template <typename Service, typename Obj, typename Req, typename Resp>
void ServeMember(RpcLoop* loop, Service* service, const std::string& method, Obj* obj,
                 void (Obj::*fn)(grpc::ServerContext*, const Req*, Resp*, UnaryReactor*),
                 bool watch_cancel = false) {
  ServeUnary<Req, Resp>(loop, service, method,
                        UnaryHandler<Req, Resp>([obj, fn](grpc::ServerContext* ctx, const Req* req,
                                                          Resp* resp, UnaryReactor* reactor) {
                          (obj->*fn)(ctx, req, resp, reactor);
                        }),
                        watch_cancel);
}

// Starts one unary call to another server on `loop` and calls
// `done(status, resp)` on a loop thread when it ends. `prepare(ctx, req, cq)`
// makes it (stub->PrepareAsyncMethod(ctx, req, cq)). Nothing blocks. Once the
// loop is shut down, nothing starts and `done` is not called.
template <typename Resp, typename Req, typename PrepareFn, typename DoneFn>
void CallOnLoop(RpcLoop* loop, Req req, uint32_t timeout_ms, bool wait_for_ready, PrepareFn prepare,
                DoneFn done) {
  struct Call final : LoopTag {
    grpc::ClientContext ctx;
    Req req;
    Resp resp;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<Resp>> reader;
    DoneFn done;
    explicit Call(DoneFn d) : done(std::move(d)) {}
    void Proceed(bool) override {
      done(status, resp);
      delete this;
    }
  };
  auto* c = new Call(std::move(done));
  c->req = std::move(req);
  c->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  c->ctx.set_wait_for_ready(wait_for_ready);
  bool begun = loop->Begin([&](grpc::ServerCompletionQueue* cq) {
    c->reader = prepare(&c->ctx, c->req, cq);
    c->reader->StartCall();
    c->reader->Finish(&c->resp, &c->status, c);
  });
  if (!begun) delete c;
}

}  // namespace atomq
