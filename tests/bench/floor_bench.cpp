// SPDX-License-Identifier: MIT
// The floors of BM_with_cancel and BM_done_live: the standard library alone.
//
// They live in their own translation unit, which includes no ctx header, so
// that their code is compiled as a program without ctx would compile it:
// in ctx_bench.cpp, the compiler's inlining of std::stop_source's inline
// functions changed with every change to ctx's headers (which use
// std::stop_source too), and the floor moved by up to 1.8x with it.
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdint>
#include <stop_token>

namespace {

/// The floor for done(): one acquire load of a flag reached through a pointer.
void BM_floor_atomic_load(benchmark::State& state) {
  auto* flag = new std::atomic<std::uint32_t>{0};
  benchmark::DoNotOptimize(flag);
  for (auto _ : state) benchmark::DoNotOptimize(flag->load(std::memory_order_acquire) & 1);
  delete flag;
}
BENCHMARK(BM_floor_atomic_load);

/// The floor for BM_with_cancel: a stop source linked to a parent token by a
/// stop callback, then a stop request; all destroyed at the end.
void BM_floor_stop_source(benchmark::State& state) {
  std::stop_source root;
  const std::stop_token root_token = root.get_token();
  for (auto _ : state) {
    std::stop_source child;
    std::stop_callback link(root_token, [&child]() noexcept { child.request_stop(); });
    child.request_stop();
    benchmark::DoNotOptimize(child);
  }
}
BENCHMARK(BM_floor_stop_source);

}  // namespace
