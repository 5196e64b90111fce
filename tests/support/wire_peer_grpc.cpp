// SPDX-License-Identifier: MIT
// Process B of the gRPC two-process tests (and a client, for the test of a
// client that dies mid-call).
//
//   wire_peer_grpc <parent pid> server [limit_ms]   the Query service on 127.0.0.1:0; prints
//                                                   "port N", then a log line per call that is not
//                                                   "fast"; exits on SIGTERM
//   wire_peer_grpc <parent pid> client <port> <kind> calls Query.Run(kind) with no deadline; prints
//                                                   "port 0", then "calling", then how the call ended
#include <ctx/ctx.hpp>
#include <ctx/grpc.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "peer_main.hpp"
#include "query_service.hpp"
#include "slow_query.hpp"

int main(int argc, char** argv) {
  test::peer_init(argc, argv);
  const std::string mode = argc > 2 ? argv[2] : "";
  if (mode == "server") {
    std::optional<std::chrono::nanoseconds> limit;
    if (argc > 3) limit = std::chrono::milliseconds(std::atol(argv[3]));
    auto [root, stop] = ctx::with_cancel(ctx::background());
    {
      // Fast calls are not logged: A reads B's log only around slow ones, and
      // a full pipe would block B's writes (and B) for good.
      auto log = [](const test::query_event& e) {
        if (e.kind != "fast") test::log_event(e);
      };
      test::query_service service(root, limit, log, log, test::slow_query);
      test::grpc_server server(service);
      std::printf("port %d\n", server.port());
      std::fflush(stdout);
      test::wait_for_sigterm();
      stop();  // every call's context; then the server shuts down and the workers are joined
    }
    return 0;
  }
  if (mode == "client" && argc > 4) {
    auto stub = test::query_stub(std::string("127.0.0.1:") + argv[3]);
    std::printf("port 0\ncalling\n");
    std::fflush(stdout);
    ctx::grpc::client_context cc(ctx::background());
    ctx_test::QueryRequest req;
    req.set_kind(argv[4]);
    ctx_test::QueryReply rep;
    const grpc::Status s = stub->Run(cc.get(), req, &rep);
    std::printf("called %d %s\n", static_cast<int>(s.error_code()), s.error_message().c_str());
    return 0;
  }
  std::fprintf(stderr, "usage: %s <parent pid> server [limit_ms] | client <port> <kind>\n", argv[0]);
  return 2;
}
