// SPDX-License-Identifier: MIT
// The Query service (tests/proto/query.proto) on the callback API, each call
// under a ctx::grpc::unary_reactor context, and an in-process server for it
// on an OS-chosen loopback port. Used by grpc_test in process and by the
// gRPC peer (process B) of the two-process tests.
#pragma once

#include <grpcpp/grpcpp.h>
#include <ctx/ctx.hpp>
#include <ctx/grpc.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "peer_work.hpp"
#include "query.grpc.pb.h"
#include "thread_set.hpp"

namespace test {

/// Query.Run: "fast" answers at once; "wait" waits until its context is
/// done; "slow" runs `slow` (B's slow_query(); by default the same wait as
/// "wait"). Every call's context is a child of
/// `parent` with the server's `limit`, if any. `on_start` and `on_end`
/// (called from gRPC's and the workers' threads) see each call's events.
class query_service final : public ctx_test::Query::CallbackService {
 public:
  using observer = std::function<void(const query_event&)>;
  using work = std::function<std::error_code(const ctx::context&)>;

  query_service(ctx::context parent, std::optional<std::chrono::nanoseconds> limit, observer on_start = {},
                observer on_end = {}, work slow = {})
      : parent_(std::move(parent)),
        limit_(limit),
        slow_(std::move(slow)),
        on_start_(std::move(on_start)),
        on_end_(std::move(on_end)) {}
  query_service(const query_service&) = delete;
  query_service& operator=(const query_service&) = delete;
  ~query_service() override { join(); }

  /// Joins every worker. Cancel the parent (or shut the server down) first.
  void join() { workers_.join(); }

  grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* sc, const ctx_test::QueryRequest* req,
                                ctx_test::QueryReply* rep) override {
    auto* call = limit_ ? new ctx::grpc::unary_reactor(sc, parent_, *limit_)
                        : new ctx::grpc::unary_reactor(sc, parent_);
    query_event e = begin_event(call->context(), req->kind());
    rep->set_trace_id(e.trace == "-" ? "" : e.trace);
    rep->set_deadline_left_ns(e.deadline_left_ns);
    if (req->kind() == "fast") {
      end(e, call->context(), {}, rep);
      call->finish({});
      return call;
    }
    if (on_start_) on_start_(e);
    workers_.spawn([this, call, e, rep, kind = req->kind()]() mutable {
      const ctx::context c = call->context();
      std::error_code ec;
      if (kind == "slow" && slow_) {
        ec = slow_(c);
      } else {
        c.wait();
        ec = c.err();
      }
      end(e, c, ec, rep);
      call->finish(ec);  // the last use of call: it may be deleted from here on
    });
    return call;
  }

 private:
  void end(query_event& e, const ctx::context& c, std::error_code ec, ctx_test::QueryReply* rep) {
    end_event(e, c, ec);
    rep->set_err(ec ? ec.message() : "");
    if (on_end_) on_end_(e);
  }

  ctx::context parent_;
  std::optional<std::chrono::nanoseconds> limit_;
  work slow_;
  observer on_start_, on_end_;
  thread_set workers_;
};

/// A gRPC server for one service on 127.0.0.1 and a port the OS chose.
class grpc_server {
 public:
  explicit grpc_server(grpc::Service& service) {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(&service);
    server_ = b.BuildAndStart();
    if (!server_ || port_ == 0) throw std::runtime_error("the gRPC server did not start");
  }
  grpc_server(const grpc_server&) = delete;
  grpc_server& operator=(const grpc_server&) = delete;
  /// Shuts down at once: calls still running are cancelled (their reactors see OnCancel).
  ~grpc_server() { server_->Shutdown(std::chrono::system_clock::now()); }

  [[nodiscard]] int port() const noexcept { return port_; }
  [[nodiscard]] std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

/// A stub on a new channel to `address`, without TLS.
inline std::unique_ptr<ctx_test::Query::Stub> query_stub(const std::string& address) {
  return ctx_test::Query::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

}  // namespace test
