// SPDX-License-Identifier: MIT
// What inspection costs: derivations with it off and on (one thread, and
// several deriving from one shared root), and live()/zombies()/report() over
// a million tracked contexts, with the memory they take.
//
// The off rows are the same loops as ctx_bench's BM_with_cancel,
// BM_with_timeout and BM_with_value; compare them in one run.
#include <ctx/ctx.hpp>
#include <ctx/inspect.hpp>

#include <benchmark/benchmark.h>
#include <malloc.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr ctx::key<int> value_key{"bench"};

struct inspection {
  explicit inspection(bool on) { ctx::inspect::enable(on); }
  ~inspection() { ctx::inspect::enable(false); }
  inspection(const inspection&) = delete;
  inspection& operator=(const inspection&) = delete;
};

/// Bytes glibc hands out: small chunks plus mmap'd large blocks (a big vector).
std::int64_t heap_in_use() {
  const struct mallinfo2 m = mallinfo2();
  return static_cast<std::int64_t>(m.uordblks + m.hblkhd);
}

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

/// The shared parents: one made with inspection off, one tracked (every
/// context derived from a tracked one is tracked, whatever the switch says).
const ctx::context& shared_parent(bool tracked) {
  static const auto untracked = ctx::with_cancel(ctx::background());
  static const auto made_tracked = [] {
    ctx::inspect::enable();
    auto d = ctx::with_cancel(ctx::background());
    ctx::inspect::enable(false);
    return d;
  }();
  return tracked ? made_tracked.context : untracked.context;
}

// Arg 0: inspection off, 1: on. Every thread derives from the same parent:
// the contended case (its reference count; when on, its record's count of children).
void BM_with_cancel_inspect(benchmark::State& state) {
  const ctx::context parent = shared_parent(state.range(0) != 0);
  for (auto _ : state) {
    auto [c, cancel] = ctx::with_cancel(parent);
    cancel();
    benchmark::DoNotOptimize(c);
  }
}
BENCHMARK(BM_with_cancel_inspect)->Arg(0)->Arg(1)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();

void BM_with_timeout_inspect(benchmark::State& state) {
  const inspection on(state.range(0) != 0);
  auto [root, stop] = ctx::with_cancel(ctx::background());
  for (auto _ : state) {
    auto [c, cancel] = ctx::with_timeout(root, 1h);
    cancel();
    benchmark::DoNotOptimize(c);
  }
}
BENCHMARK(BM_with_timeout_inspect)->Arg(0)->Arg(1);

void BM_with_value_inspect(benchmark::State& state) {
  const inspection on(state.range(0) != 0);
  const ctx::context root = ctx::background();
  int i = 0;
  for (auto _ : state) {
    auto c = ctx::with_value(root, value_key, i++);
    benchmark::DoNotOptimize(c);
  }
}
BENCHMARK(BM_with_value_inspect)->Arg(0)->Arg(1);

void BM_done_inspect(benchmark::State& state) {
  const inspection on(state.range(0) != 0);
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  for (auto _ : state) benchmark::DoNotOptimize(c.done());
}
BENCHMARK(BM_done_inspect)->Arg(0)->Arg(1);

/// A million tracked contexts (a with_timeout(1h) and a with_value under it
/// per request, half of them cancelled, so that 250 000 are zombies), then
/// the snapshot. Counters: bytes the registry takes per tracked context,
/// bytes of the snapshot per context, peak RSS.
void BM_live_1m(benchmark::State& state) {
  constexpr int requests = 500'000;  // two contexts each
  const inspection on(true);
  const std::int64_t heap0 = heap_in_use();
  auto [root, stop] = ctx::with_cancel(ctx::background());
  std::vector<ctx::derived<std::chrono::steady_clock>> timeouts;
  std::vector<ctx::context> values;
  timeouts.reserve(requests);
  values.reserve(requests);
  const std::int64_t heap1 = heap_in_use();
  for (int i = 0; i < requests; ++i) {
    timeouts.push_back(ctx::with_timeout(root, 1h));
    values.push_back(ctx::with_value(timeouts.back().context, value_key, i));
    if (i % 2) timeouts.back().cancel();
  }
  const double tracked_bytes = static_cast<double>(heap_in_use() - heap1) / (2.0 * requests);
  double snapshot_bytes = 0;
  std::size_t n = 0;
  for (auto _ : state) {
    const std::int64_t h = heap_in_use();
    auto all = ctx::inspect::live();
    snapshot_bytes = static_cast<double>(heap_in_use() - h) / static_cast<double>(all.size());
    n = all.size();
    benchmark::DoNotOptimize(all);
  }
  state.counters["contexts"] = static_cast<double>(n);
  state.counters["heap_B_per_tracked_ctx"] = tracked_bytes;  // node + record + table slot + timer slot
  state.counters["snapshot_B_per_ctx"] = snapshot_bytes;
  state.counters["peak_rss_MiB"] = peak_rss_mib();
  state.counters["sizeof_record"] = sizeof(ctx::detail::insp::record);
  state.counters["sizeof_context_info"] = sizeof(ctx::inspect::context_info);
  (void)heap0;
}
BENCHMARK(BM_live_1m)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_zombies_1m(benchmark::State& state) {
  constexpr int requests = 500'000;
  const inspection on(true);
  auto [root, stop] = ctx::with_cancel(ctx::background());
  std::vector<ctx::derived<std::chrono::steady_clock>> timeouts;
  std::vector<ctx::context> values;
  timeouts.reserve(requests);
  values.reserve(requests);
  for (int i = 0; i < requests; ++i) {
    timeouts.push_back(ctx::with_timeout(root, 1h));
    values.push_back(ctx::with_value(timeouts.back().context, value_key, i));
    if (i % 2) timeouts.back().cancel();
  }
  std::size_t z = 0, text = 0;
  for (auto _ : state) {
    z = ctx::inspect::zombies(0ns).size();
    text = ctx::inspect::report(0ns).size();
  }
  state.counters["zombies"] = static_cast<double>(z);
  state.counters["report_bytes"] = static_cast<double>(text);
}
BENCHMARK(BM_zombies_1m)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
