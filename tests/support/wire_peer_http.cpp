// SPDX-License-Identifier: MIT
// Process B of the HTTP two-process tests.
//
//   wire_peer_http <parent pid> [limit_ms]   an HTTP server on 127.0.0.1:0 (tests/support/http.hpp);
//                                            prints "port N", then a log line per slow request; exits on
//                                            SIGTERM
//
// GET /fast answers at once; GET /slow runs test::slow_query() under the
// request's context (the headers' deadline and trace, capped at limit_ms).
#include <ctx/ctx.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>

#include "http.hpp"
#include "peer_main.hpp"
#include "peer_work.hpp"
#include "slow_query.hpp"

int main(int argc, char** argv) {
  test::peer_init(argc, argv);
  std::optional<std::chrono::nanoseconds> limit;
  if (argc > 2) limit = std::chrono::milliseconds(std::atol(argv[2]));
  auto [root, stop] = ctx::with_cancel(ctx::background());
  {
    test::http::server server(root, limit, [](const ctx::context& c, const test::http::request& req) {
      const bool slow = req.target == "/slow";
      test::query_event e = test::begin_event(c, slow ? "slow" : "fast");
      if (slow) test::log_event(e);
      const std::error_code ec = slow ? test::slow_query(c) : std::error_code();
      test::end_event(e, c, ec);
      if (slow) test::log_event(e);  // not fast ones: a pipe that A does not read would block B
      return test::http::response{test::http::status_for(ec), e.trace + " " + e.err};
    });
    std::printf("port %d\n", server.port());
    std::fflush(stdout);
    test::wait_for_sigterm();
    stop();
  }
  return 0;
}
