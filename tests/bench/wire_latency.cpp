// SPDX-License-Identifier: MIT
// End-to-end latency across two processes: from A's deadline (or A's cancel)
// to the moment B's query, running under the propagated context, stops; over
// gRPC (<ctx/grpc.hpp>) and over HTTP/1.1 (<ctx/propagation.hpp> headers).
// This program is A; B is the two-process tests' peer (wire_peer_grpc,
// wire_peer_http), which logs when each query stopped on CLOCK_MONOTONIC,
// the clock A reads too. Each call is made on a connected channel or a
// fresh connection, as the tests do; calls run one at a time.
//
//   wire_latency [CALLS] [DEADLINE_MS]    default 300 calls, 20 ms
//
// Prints, per transport and per way of ending the call, the percentiles of
// (B's query stopped) - (A's deadline or cancel), and of A's own return.
// Not a test: nothing is asserted. Build it in the release preset:
//   cmake --preset release && cmake --build --preset release -j2 --target wire_latency
//   build/release/tests/wire_latency 300 20
#include <ctx/ctx.hpp>
#include <ctx/propagation.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support/http.hpp"
#include "support/peer.hpp"

#if CTX_WIRE_HAVE_GRPC
#include <ctx/grpc.hpp>

#include "support/query_service.hpp"
#endif

using namespace std::chrono_literals;
using ctx::propagation::traceparent;

namespace {

std::int64_t ns_of(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

struct samples {
  std::vector<std::int64_t> stop;      // B's query stopped - A's deadline (or cancel)
  std::vector<std::int64_t> returned;  // A's call returned - A's deadline (or cancel)
  int errors = 0;                      // calls that did not end as expected
};

double pct(std::vector<std::int64_t> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(std::max(0.0, p * static_cast<double>(v.size()) - 1e-9));
  return static_cast<double>(v[std::min(i, v.size() - 1)]) / 1000.0;  // microseconds
}

void print(const char* transport, const char* how, const samples& s) {
  std::printf("| %-5s | %-9s | %4zu | %8.0f | %8.0f | %8.0f | %8.0f | %8.0f | %8.0f | %d |\n", transport, how,
              s.stop.size(), pct(s.stop, 0.5), pct(s.stop, 0.99), pct(s.stop, 1.0), pct(s.returned, 0.5),
              pct(s.returned, 0.99), pct(s.returned, 1.0), s.errors);
  std::fflush(stdout);
}

/// Runs `calls` calls of `call(c)` through peer `b`, ended by a deadline or by a cancel.
template <class Call>
void measure(const char* transport, test::peer& b, int calls, std::chrono::milliseconds deadline,
             Call&& call) {
  samples by_deadline, by_cancel;
  for (int i = 0; i < calls; ++i) {
    const ctx::context traced =
        ctx::with_value(ctx::background(), ctx::propagation::trace_key, traceparent::generate());
    auto [c, cancel] = ctx::with_timeout(traced, deadline);
    const std::int64_t at = ns_of(*c.deadline());
    const std::error_code ec = call(c);
    by_deadline.returned.push_back(test::steady_ns() - at);
    const test::query_event e = b.next_event("end");
    by_deadline.stop.push_back(e.ended_ns - at);
    if (ec != ctx::errc::deadline_exceeded || e.err == "ok") ++by_deadline.errors;
  }
  print(transport, "deadline", by_deadline);
  for (int i = 0; i < calls; ++i) {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    std::error_code ec;
    std::int64_t returned = 0;
    std::thread a([&, &c = c] {
      ec = call(c);
      returned = test::steady_ns();
    });
    (void)b.next_event("start");
    const std::int64_t at = test::steady_ns();
    cancel();
    a.join();
    by_cancel.returned.push_back(returned - at);
    const test::query_event e = b.next_event("end");
    by_cancel.stop.push_back(e.ended_ns - at);
    if (ec != ctx::errc::canceled || e.err == "ok") ++by_cancel.errors;
  }
  print(transport, "cancel", by_cancel);
}

#if CTX_WIRE_HAVE_GRPC
/// The cost of client_context over a plain grpc::ClientContext given the
/// same deadline and metadata by hand, for a fast call: blocks of 100 calls
/// of each, interleaved, so that a shared machine's load hits both alike.
void overhead(ctx_test::Query::Stub& stub) {
  ctx_test::QueryRequest fast;
  fast.set_kind("fast");
  const ctx::context traced =
      ctx::with_value(ctx::background(), ctx::propagation::trace_key, traceparent::generate());
  std::vector<std::int64_t> plain, with_ctx;  // ns per call, one sample per block
  for (int block = 0; block < 40; ++block) {
    for (int kind = 0; kind < 2; ++kind) {
      const std::int64_t t0 = test::steady_ns();
      for (int i = 0; i < 100; ++i) {
        auto [c, cancel] = ctx::with_timeout(traced, 5s);
        ctx_test::QueryReply reply;
        if (kind == 0) {
          grpc::ClientContext cc;
          cc.set_deadline(std::chrono::system_clock::now() + std::chrono::nanoseconds(c.remaining()));
          cc.AddMetadata("traceparent", c.value(ctx::propagation::trace_key)->to_string());
          (void)stub.Run(&cc, fast, &reply);
        } else {
          ctx::grpc::client_context cc(c);
          (void)stub.Run(cc.get(), fast, &reply);
        }
      }
      (kind == 0 ? plain : with_ctx).push_back((test::steady_ns() - t0) / 100);
    }
  }
  const double p = pct(plain, 0.5), w = pct(with_ctx, 0.5);
  std::printf(
      "\nfast unary call over loopback, median of 40 blocks of 100: plain ClientContext %.1f us, "
      "ctx::grpc::client_context %.1f us (%+.1f%%)\n",
      p, w, 100.0 * (w - p) / p);
}
#endif

}  // namespace

int main(int argc, char** argv) {
  const int calls = argc > 1 ? std::atoi(argv[1]) : 300;
  const std::chrono::milliseconds deadline(argc > 2 ? std::atoi(argv[2]) : 20);
  std::printf("%d calls per row, deadline %lld ms; microseconds from A's deadline (or cancel) to:\n\n", calls,
              static_cast<long long>(deadline.count()));
  std::printf("| wire  | ended by  | n    | B stop p50 | p99 | max | A return p50 | p99 | max | errors |\n");
  std::printf("| ----- | --------- | ---- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
#if CTX_WIRE_HAVE_GRPC
  {
    test::peer b(CTX_WIRE_PEER_GRPC, {"server"});
    auto stub = test::query_stub("127.0.0.1:" + std::to_string(b.port()));
    ctx_test::QueryRequest slow;
    slow.set_kind("slow");
    {
      ctx::grpc::client_context cc(ctx::background());  // connect first
      ctx_test::QueryRequest fast;
      fast.set_kind("fast");
      ctx_test::QueryReply reply;
      (void)stub->Run(cc.get(), fast, &reply);
    }
    measure("gRPC", b, calls, deadline, [&](const ctx::context& c) {
      ctx::grpc::client_context cc(c);
      ctx_test::QueryReply reply;
      return cc.error(stub->Run(cc.get(), slow, &reply));
    });
    overhead(*stub);
  }
#endif
  {
    test::peer b(CTX_WIRE_PEER_HTTP, {});
    measure("HTTP", b, calls, deadline,
            [&](const ctx::context& c) { return test::http::get(c, b.port(), "/slow").second; });
  }
  return 0;
}
