// SPDX-License-Identifier: MIT
// Wake-up latency of a blocked call: a waiter thread runs `round.block()`;
// once `round.ready()` says the call is where it should be (e.g. the server
// has its request) and the thread is blocked in poll(), the main thread
// stamps t0 and calls `round.wake()`;
// the waiter stamps t1 when block() returns. Counters p50_ns and p99_ns; the
// reported time is the mean. `round.reset()` runs before each round, untimed.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <thread>
#include <vector>

#include "support/posix_helpers.hpp"

namespace bench {

inline double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

template <class Round>
class waiter {
 public:
  explicit waiter(Round& r) : round_(r), t_([this] { run(); }) {
    while (tid_.load() == 0) std::this_thread::yield();
  }
  ~waiter() {
    go_.store(-1);
    go_.notify_all();
    t_.join();
  }
  /// Starts round `i` (>= 1); returns once the waiter is blocked in poll().
  void arm(int i) {
    go_.store(i);
    go_.notify_all();
    for (int r; (r = started_.load()) != i;) started_.wait(r);
    if (!test::wait_until_blocked(tid_.load())) std::abort();
  }
  /// Returns once the waiter is blocked in poll() (again).
  void wait_blocked() const {
    if (!test::wait_until_blocked(tid_.load())) std::abort();
  }
  /// Waits until round `i` returned; its return time.
  std::chrono::steady_clock::time_point returned(int i) {
    while (done_.load(std::memory_order_acquire) != i) std::this_thread::yield();
    return stamp_;
  }

 private:
  void run() {
    tid_ = test::this_tid();
    int seen = 0;
    for (;;) {
      int g;
      while ((g = go_.load(std::memory_order_acquire)) == seen) go_.wait(g);
      if (g < 0) return;
      seen = g;
      started_.store(g);
      started_.notify_all();
      round_.block();
      stamp_ = std::chrono::steady_clock::now();
      done_.store(g, std::memory_order_release);
    }
  }
  Round& round_;
  std::atomic<int> tid_{0}, go_{0}, started_{0}, done_{0};
  std::chrono::steady_clock::time_point stamp_;
  std::thread t_;
};

template <class Round>
void measure_wake(benchmark::State& state, Round& round) {
  waiter<Round> w(round);
  std::vector<double> lat;
  int i = 0;
  for (auto _ : state) {
    ++i;
    round.reset();
    w.arm(i);
    round.ready();
    w.wait_blocked();
    const auto t0 = std::chrono::steady_clock::now();
    round.wake();
    const auto t1 = w.returned(i);
    const double ns = std::chrono::duration<double, std::nano>(t1 - t0).count();
    lat.push_back(ns);
    state.SetIterationTime(ns * 1e-9);
  }
  round.reset();
  state.counters["p50_ns"] = percentile(lat, 0.50);
  state.counters["p99_ns"] = percentile(lat, 0.99);
}

/// The overhead of `ours` over `plain`, two calls that do the same work,
/// measured in pairs (the order alternating) so that the load of a shared
/// machine hits both alike. Counters: plain_p50_ns, ctx_p50_ns and
/// overhead_pct = ctx_p50 / plain_p50 - 1 in percent; the reported time is
/// the mean of a pair.
template <class Plain, class Ours>
void measure_paired(benchmark::State& state, Plain plain, Ours ours) {
  std::vector<double> p, o;
  bool plain_first = true;
  for (auto _ : state) {
    for (int k = 0; k < 2; ++k) {
      const bool run_plain = (k == 0) == plain_first;
      const auto t0 = std::chrono::steady_clock::now();
      if (run_plain)
        plain();
      else
        ours();
      const double ns =
          std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
      (run_plain ? p : o).push_back(ns);
    }
    plain_first = !plain_first;
  }
  const double pm = percentile(p, 0.5), om = percentile(o, 0.5);
  state.counters["plain_p50_ns"] = pm;
  state.counters["ctx_p50_ns"] = om;
  state.counters["overhead_pct"] = pm > 0 ? (om / pm - 1) * 100 : 0;
}

}  // namespace bench
