// Example 14: a deadline and a trace cross two hops over gRPC, A -> B -> C. A gives
// the request 300 ms; B forwards it with what is left; C's slow work (10 s, standing in
// for a database query) stops at A's deadline. B and C run here, on loopback ports.
#include <grpcpp/grpcpp.h>
#include <ctx/ctx.hpp>
#include <ctx/grpc.hpp>
#include <ctx/sleep.hpp>

#include <cstdio>
#include <thread>

#include "hop.grpc.pb.h"

using namespace std::chrono_literals;

std::unique_ptr<example::Hop::Stub> stub(int port) {
  return example::Hop::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
}

// A hop forwards each call to the next hop, or, the last one, does the slow work.
struct hop final : example::Hop::CallbackService {
  hop(const char* n, int next_port) : name(n), next(next_port ? stub(next_port) : nullptr) {}
  const char* name;
  std::unique_ptr<example::Hop::Stub> next;
  int port = 0;
  std::unique_ptr<grpc::Server> server =
      grpc::ServerBuilder()
          .AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port)
          .RegisterService(this)
          .BuildAndStart();

  grpc::ServerUnaryReactor* Call(grpc::CallbackServerContext* sc, const example::Request* req,
                                 example::Reply* rep) override {
    auto* call = new ctx::grpc::unary_reactor(sc, ctx::background(), 5s);  // 5 s: this server's own limit
    std::thread([this, call, req, rep] {  // a real server hands the work to a pool
      const ctx::context c = call->context();
      std::printf(
          "%s: trace %s, %lld ms left\n", name, c.value(ctx::propagation::trace_key)->trace_id_hex().c_str(),
          static_cast<long long>(std::chrono::ceil<std::chrono::milliseconds>(c.remaining()).count()));
      std::error_code ec;
      if (next) {
        ctx::grpc::client_context cc(c);  // the deadline and the trace go on
        ec = cc.error(next->Call(cc.get(), *req, rep));
      } else {
        ec = ctx::sleep_for(c, 10s);
      }
      std::printf("%s: %s (cause: %s)\n", name, ec.message().c_str(), c.cause().message().c_str());
      call->finish(ec);
    })
        .detach();
    return call;
  }
};

int main() {
  hop c_hop("C", 0), b_hop("B", c_hop.port);
  const ctx::context request = ctx::with_value(ctx::background(), ctx::propagation::trace_key,
                                               ctx::propagation::traceparent::generate(1));
  auto [c, cancel] = ctx::with_timeout(request, 300ms);  // A's deadline, for the whole chain
  ctx::grpc::client_context cc(c);
  example::Reply reply;
  const std::error_code ec = cc.error(stub(b_hop.port)->Call(cc.get(), example::Request(), &reply));
  std::printf("A: %s\n", ec.message().c_str());
  return ec == ctx::errc::deadline_exceeded ? 0 : 1;
}
