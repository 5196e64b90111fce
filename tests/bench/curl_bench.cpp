// SPDX-License-Identifier: MIT
// <ctx/curl.hpp> against plain libcurl, in one run, on a local HTTP server
// (tests/support/http_server.hpp):
// - cancel -> perform() returns, on a transfer stalled before the headers,
//   against the raw curl_multi_wakeup round (a thread in curl_multi_poll on
//   the same kind of stalled transfer, woken by curl_multi_wakeup), and that
//   round plus curl_multi_remove_handle (ending the transfer, as perform must);
// - a fast local GET through perform() against curl_easy_perform().
#include <ctx/ctx.hpp>
#include <ctx/curl.hpp>

#include <benchmark/benchmark.h>
#include <curl/curl.h>

#include <atomic>
#include <climits>
#include <cstdlib>
#include <string>

#include "support/http_server.hpp"
#include "wake_harness.hpp"

namespace {

struct curl_global {
  curl_global() { curl_global_init(CURL_GLOBAL_DEFAULT); }
  ~curl_global() { curl_global_cleanup(); }
} const global_init;

test::http_server& server() {
  static test::http_server s;
  return s;
}

std::size_t discard(char*, std::size_t size, std::size_t n, void*) { return size * n; }

CURL* make_easy(const std::string& url) {
  CURL* h = curl_easy_init();
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &discard);
  return h;
}

// --- cancel -> return ------------------------------------------------------------------

/// ctx: perform() of a transfer stalled before the headers, ended by a cancel.
struct ctx_perform_round {
  CURL* h = make_easy(server().url("/stall-headers"));
  std::size_t requests = server().requests("/stall-headers");
  ctx::context c;
  ctx::cancel_handle cancel;
  ~ctx_perform_round() { curl_easy_cleanup(h); }
  void reset() {
    auto [nc, nh] = ctx::with_cancel(ctx::background());
    c = std::move(nc);
    cancel = std::move(nh);
  }
  void block() {
    if (ctx::curl::perform(c, h) != ctx::errc::canceled) std::abort();
  }
  void ready() {
    if (!server().wait_requests("/stall-headers", ++requests)) std::abort();
  }
  void wake() { cancel(); }
};

/// The floors: a thread drives its own multi handle with one transfer
/// stalled before the headers, in curl_multi_poll(), and is woken by
/// curl_multi_wakeup(). `Abort`: it also removes the transfer (what ending a
/// stalled transfer costs in curl: mostly closing its connection) before it
/// counts as returned, as perform() must; the next round starts a new one.
template <bool Abort>
struct raw_wakeup_round {
  CURLM* m = curl_multi_init();
  CURL* h = make_easy(server().url("/stall-headers"));
  std::size_t requests = server().requests("/stall-headers");
  bool added = false;
  std::atomic<bool> woken{false};
  ~raw_wakeup_round() {
    if (added) curl_multi_remove_handle(m, h);
    curl_easy_cleanup(h);
    curl_multi_cleanup(m);
  }
  void reset() {
    woken.store(false);
    if (!added) {
      curl_multi_add_handle(m, h);
      added = true;
      ++requests;
    }
  }
  void block() {
    while (!woken.load(std::memory_order_acquire)) {
      int running = 0;
      curl_multi_perform(m, &running);
      curl_multi_poll(m, nullptr, 0, INT_MAX, nullptr);
    }
    if (Abort) {
      curl_multi_remove_handle(m, h);
      added = false;
    }
  }
  void ready() {
    if (!server().wait_requests("/stall-headers", requests)) std::abort();
  }
  void wake() {
    woken.store(true, std::memory_order_release);
    curl_multi_wakeup(m);
  }
};

void BM_curl_cancel_perform(benchmark::State& state) {
  ctx_perform_round r;
  bench::measure_wake(state, r);
}
BENCHMARK(BM_curl_cancel_perform)->UseManualTime()->Iterations(500);

void BM_curl_floor_multi_wakeup(benchmark::State& state) {
  raw_wakeup_round<false> r;
  bench::measure_wake(state, r);
}
BENCHMARK(BM_curl_floor_multi_wakeup)->UseManualTime()->Iterations(500);

void BM_curl_floor_multi_wakeup_remove(benchmark::State& state) {
  raw_wakeup_round<true> r;
  bench::measure_wake(state, r);
}
BENCHMARK(BM_curl_floor_multi_wakeup_remove)->UseManualTime()->Iterations(500);

// --- overhead of a fast local GET --------------------------------------------------------

void BM_curl_get_easy_perform(benchmark::State& state) {
  CURL* h = make_easy(server().url("/fast"));
  for (auto _ : state)
    if (curl_easy_perform(h) != CURLE_OK) std::abort();
  curl_easy_cleanup(h);
}
BENCHMARK(BM_curl_get_easy_perform)->Unit(benchmark::kMicrosecond);

/// perform() under a cancellable context: the stop callback is registered per call.
void BM_curl_get_ctx_perform(benchmark::State& state) {
  CURL* h = make_easy(server().url("/fast"));
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  for (auto _ : state)
    if (ctx::curl::perform(c, h)) std::abort();
  curl_easy_cleanup(h);
  ctx::curl::thread_cleanup();
}
BENCHMARK(BM_curl_get_ctx_perform)->Unit(benchmark::kMicrosecond);

/// Both, in alternating pairs (see bench::measure_paired): the overhead row.
/// Each has its own handle: perform() would drop the cache curl_easy_perform keeps in its handle.
void BM_curl_get_paired(benchmark::State& state) {
  CURL* plain = make_easy(server().url("/fast"));
  CURL* ours = make_easy(server().url("/fast"));
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  bench::measure_paired(
      state,
      [&] {
        if (curl_easy_perform(plain) != CURLE_OK) std::abort();
      },
      [&, &c = c] {
        if (ctx::curl::perform(c, ours)) std::abort();
      });
  curl_easy_cleanup(plain);
  curl_easy_cleanup(ours);
  ctx::curl::thread_cleanup();
}
BENCHMARK(BM_curl_get_paired)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
