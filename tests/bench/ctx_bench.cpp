// SPDX-License-Identifier: MIT
// ctx benchmarks: the operations of docs/design.md's performance budget, plus the
// raw wake-ups they are judged against (the std::stop_source and atomic-load
// floors are in floor_bench.cpp).
// tests/bench/go/ has the same operations against Go's context package;
// tests/bench/compare runs both and prints one table.
//
// Heap use is measured with a replaced global operator new/delete (bytes the
// program asks for) and with mallinfo2 (bytes glibc hands out, chunk headers
// included); both count only while a benchmark switches counting on.
#include <ctx/condition_variable.hpp>
#include <ctx/ctx.hpp>
#include <ctx/io.hpp>
#include <ctx/queue.hpp>

#include <benchmark/benchmark.h>
#include <malloc.h>
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <new>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

// ---------------------------------------------------------------------------
// Heap accounting: a replaced global operator new/delete.

namespace {

std::atomic<bool> g_counting{false};
std::atomic<std::int64_t> g_new_bytes{0};  // live bytes requested while counting (freed ones subtracted)

void* counted_alloc(std::size_t n, std::size_t align) {
  if (n == 0) n = 1;
  void* p = nullptr;
  if (align <= alignof(std::max_align_t))
    p = std::malloc(n);
  else if (posix_memalign(&p, align, n) != 0)
    p = nullptr;
  if (!p) throw std::bad_alloc();
  if (g_counting.load(std::memory_order_relaxed))
    g_new_bytes.fetch_add(static_cast<std::int64_t>(malloc_usable_size(p)), std::memory_order_relaxed);
  return p;
}

void counted_free(void* p) noexcept {
  if (!p) return;
  if (g_counting.load(std::memory_order_relaxed))
    g_new_bytes.fetch_sub(static_cast<std::int64_t>(malloc_usable_size(p)), std::memory_order_relaxed);
  std::free(p);
}

}  // namespace

void* operator new(std::size_t n) { return counted_alloc(n, 0); }
void* operator new[](std::size_t n) { return counted_alloc(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) {
  return counted_alloc(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return counted_alloc(n, static_cast<std::size_t>(a));
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { counted_free(p); }
void operator delete[](void* p) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { counted_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }

namespace {

/// Bytes glibc has handed out (arena chunks in use, chunk headers included, plus mmapped blocks).
std::int64_t heap_in_use() {
  const struct mallinfo2 mi = mallinfo2();
  return static_cast<std::int64_t>(mi.uordblks + mi.hblkhd);
}

/// Threads of this process (from /proc/self/status).
int thread_count() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  return -1;
}

/// Peak resident set size of this process so far, in MiB.
double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

// ---------------------------------------------------------------------------
// Observers on a live context.

void BM_done_live(benchmark::State& state) {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  for (auto _ : state) benchmark::DoNotOptimize(c.done());
}
BENCHMARK(BM_done_live);

void BM_err_live(benchmark::State& state) {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  for (auto _ : state) benchmark::DoNotOptimize(c.err());
}
BENCHMARK(BM_err_live);

// ---------------------------------------------------------------------------
// Derivations. Each iteration derives, cancels, and destroys (RAII: the
// destruction is part of what a caller pays, as GC is part of Go's figure).

void BM_with_cancel(benchmark::State& state) {
  auto [root, stop] = ctx::with_cancel(ctx::background());
  for (auto _ : state) {
    auto [c, cancel] = ctx::with_cancel(root);
    cancel();
    benchmark::DoNotOptimize(c);
  }
}
BENCHMARK(BM_with_cancel);

void BM_with_timeout(benchmark::State& state) {
  auto [root, stop] = ctx::with_cancel(ctx::background());
  for (auto _ : state) {
    auto [c, cancel] = ctx::with_timeout(root, 1h);
    cancel();
    benchmark::DoNotOptimize(c);
  }
}
BENCHMARK(BM_with_timeout);

constexpr ctx::key<int> value_key{"bench"};

void BM_with_value(benchmark::State& state) {
  const ctx::context root = ctx::background();
  int i = 0;
  for (auto _ : state) {
    auto c = ctx::with_value(root, value_key, i++);
    benchmark::DoNotOptimize(c);
  }
}
BENCHMARK(BM_with_value);

// 64 distinct keys: ten for the chain, the rest to look up.
struct key_pool {
  static constexpr int size = 64;
  const ctx::key<int> k[size] = {
#define CTX_BENCH_K8                                                                                  \
  ctx::key<int>{"k"}, ctx::key<int>{"k"}, ctx::key<int>{"k"}, ctx::key<int>{"k"}, ctx::key<int>{"k"}, \
      ctx::key<int>{"k"}, ctx::key<int>{"k"}, ctx::key<int> {                                         \
    "k"                                                                                               \
  }
      CTX_BENCH_K8, CTX_BENCH_K8, CTX_BENCH_K8, CTX_BENCH_K8,
      CTX_BENCH_K8, CTX_BENCH_K8, CTX_BENCH_K8, CTX_BENCH_K8,
#undef CTX_BENCH_K8
  };
};
const key_pool keys;

ctx::context chain_of_ten() {
  ctx::context c;
  for (int i = 0; i < 10; ++i) c = ctx::with_value(c, keys.k[i], i);
  return c;
}

/// True if looking `k` up in `c` walks the chain (its bloom bit is set).
bool walks(const ctx::context& c, const ctx::key<int>& k) {
  return (ctx::detail::access::of(c)->key_bloom & ctx::detail::key_bit(&k)) != 0;
}

/// A miss through ten value layers: the mean over the 54 absent keys of the
/// pool, looked up in turn. Most are answered by the key filter; the ones
/// whose filter bit collides with the chain's walk all ten nodes. Counter
/// walks_chain: the fraction that walk.
void BM_value_miss_depth10(benchmark::State& state) {
  const ctx::context c = chain_of_ten();
  int i = 10, walking = 0;
  for (int j = 10; j < key_pool::size; ++j) walking += walks(c, keys.k[j]) ? 1 : 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(c.value(keys.k[i]));
    if (++i == key_pool::size) i = 10;
  }
  state.counters["walks_chain"] = walking / double(key_pool::size - 10);
}
BENCHMARK(BM_value_miss_depth10);

/// The same miss for a key whose filter bit collides with the chain's, so
/// the lookup walks all ten nodes: the worst case of a miss.
void BM_value_miss_depth10_walk(benchmark::State& state) {
  const ctx::context c = chain_of_ten();
  const ctx::key<int>* miss = nullptr;
  for (int i = 10; i < key_pool::size && !miss; ++i)
    if (walks(c, keys.k[i])) miss = &keys.k[i];
  if (!miss) {
    state.SkipWithError("no colliding key in the pool");
    return;
  }
  for (auto _ : state) benchmark::DoNotOptimize(c.value(*miss));
  state.counters["walks_chain"] = 1;
}
BENCHMARK(BM_value_miss_depth10_walk);

// ---------------------------------------------------------------------------
// Many children of one parent.

void BM_fanout_100k(benchmark::State& state) {
  constexpr int n = 100'000;
  std::vector<ctx::derived<std::chrono::steady_clock>> children;
  children.reserve(n);
  for (auto _ : state) {
    auto [root, cancel] = ctx::with_cancel(ctx::background());
    for (int i = 0; i < n; ++i) children.push_back(ctx::with_cancel(root));
    cancel();
    children.clear();
  }
  state.counters["children"] = n;
}
BENCHMARK(BM_fanout_100k)->Unit(benchmark::kMillisecond);

/// 1M pending one-hour timeouts under one parent, then cancel the parent.
/// Counters: heap bytes per context at the peak (all the library allocates:
/// node, timer slot, heap growth), process threads besides main, peak RSS.
void BM_pending_timeouts_1m(benchmark::State& state) {
  constexpr int n = 1'000'000;
  std::vector<ctx::derived<std::chrono::steady_clock>> children;
  children.reserve(n);  // the benchmark's own storage: not counted
  double new_bytes = 0, heap_bytes = 0, threads = 0;
  for (auto _ : state) {
    auto [root, cancel] = ctx::with_cancel(ctx::background());
    state.PauseTiming();
    const std::int64_t heap0 = heap_in_use();
    g_new_bytes.store(0, std::memory_order_relaxed);
    g_counting.store(true, std::memory_order_relaxed);
    state.ResumeTiming();
    for (int i = 0; i < n; ++i) children.push_back(ctx::with_timeout(root, 1h));
    state.PauseTiming();
    g_counting.store(false, std::memory_order_relaxed);
    new_bytes = static_cast<double>(g_new_bytes.load(std::memory_order_relaxed)) / n;
    heap_bytes = static_cast<double>(heap_in_use() - heap0) / n;
    threads = thread_count() - 1;
    state.ResumeTiming();
    cancel();
    children.clear();
  }
  state.counters["new_B_per_ctx"] = new_bytes;
  state.counters["heap_B_per_ctx"] = heap_bytes;
  state.counters["threads_besides_main"] = threads;
  state.counters["pending_after"] =
      static_cast<double>(ctx::detail::timer_service<std::chrono::steady_clock>::instance().pending());
  state.counters["peak_rss_MiB"] = peak_rss_mib();
}
BENCHMARK(BM_pending_timeouts_1m)->Unit(benchmark::kMillisecond)->Iterations(3);

// ---------------------------------------------------------------------------
// Wake-up latency: a thread blocked in wait(); time from the cancel call to
// the moment the waiter runs again. Counters p50_ns, p99_ns; the reported
// time is the mean. The waiter is given 200 us to block in the kernel first.

/// A waiter thread that, per round, runs `block()` and stamps its wake-up.
template <class Round>
class waker {
 public:
  explicit waker(Round& r) : round_(r), t_([this] { run(); }) {}
  ~waker() {
    go_.store(-1);
    go_.notify_all();
    t_.join();
  }
  /// Starts round `i` (>= 1) and returns once the waiter is about to block.
  void arm(int i) {
    ready_.store(0);
    go_.store(i);
    go_.notify_all();
    for (int r; (r = ready_.load()) != i;) ready_.wait(r);
  }
  /// Waits until round `i` woke; returns its wake-up time.
  std::chrono::steady_clock::time_point woke(int i) {
    while (done_.load(std::memory_order_acquire) != i) std::this_thread::yield();
    return stamp_;
  }

 private:
  void run() {
    int seen = 0;
    for (;;) {
      int g;
      while ((g = go_.load(std::memory_order_acquire)) == seen) go_.wait(g);
      if (g < 0) return;
      seen = g;
      ready_.store(g);
      ready_.notify_all();
      round_.block();
      stamp_ = std::chrono::steady_clock::now();
      done_.store(g, std::memory_order_release);
    }
  }
  Round& round_;
  std::atomic<int> go_{0}, ready_{0}, done_{0};
  std::chrono::steady_clock::time_point stamp_;
  std::jthread t_;
};

template <class Round>
void measure_wake(benchmark::State& state, Round& round) {
  waker<Round> w(round);
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(state.max_iterations));
  int i = 0;
  for (auto _ : state) {
    ++i;
    round.reset();
    w.arm(i);
    std::this_thread::sleep_for(200us);  // let the waiter reach the futex
    const auto t0 = std::chrono::steady_clock::now();
    round.wake();
    const auto t1 = w.woke(i);
    const double ns = std::chrono::duration<double, std::nano>(t1 - t0).count();
    lat.push_back(ns);
    state.SetIterationTime(ns * 1e-9);
  }
  state.counters["p50_ns"] = percentile(lat, 0.50);
  state.counters["p99_ns"] = percentile(lat, 0.99);
}

struct ctx_round {
  ctx::context c;
  ctx::cancel_handle cancel;
  void reset() {
    auto [nc, h] = ctx::with_cancel(ctx::background());
    c = std::move(nc);
    cancel = std::move(h);
  }
  void block() const { c.wait(); }
  void wake() { cancel(); }
};

void BM_cancel_wake(benchmark::State& state) {
  ctx_round r;
  measure_wake(state, r);
}
BENCHMARK(BM_cancel_wake)->UseManualTime()->Iterations(2000);

/// The floor for BM_cancel_wake: the primitive wait() sleeps on
/// (std::atomic<uint32_t>::wait, a futex), woken by a store and notify_all.
struct raw_round {
  std::atomic<std::uint32_t> flag{0};
  void reset() { flag.store(0, std::memory_order_relaxed); }
  void block() {
    while (flag.load(std::memory_order_acquire) == 0) flag.wait(0, std::memory_order_acquire);
  }
  void wake() {
    flag.store(1);  // seq_cst: a full barrier on x86, as ctx's fetch_or in settle()
    flag.notify_all();
  }
};

void BM_floor_wake(benchmark::State& state) {
  raw_round r;
  measure_wake(state, r);
}
BENCHMARK(BM_floor_wake)->UseManualTime()->Iterations(2000);

/// Deadline lateness: 500 probe timeouts (0.1 ms .. 50 ms apart) fire among
/// 100k pending one-hour timeouts; lateness is the time from a probe's
/// deadline to its after_func running on the timer thread. Counters p50_ns,
/// p99_ns (docs/design.md: p99 <= 2 ms).
void BM_deadline_lateness_100k(benchmark::State& state) {
  constexpr int pending = 100'000;
  constexpr int probes = 500;
  using clock = std::chrono::steady_clock;
  std::vector<double> late;
  for (auto _ : state) {
    auto [root, cancel] = ctx::with_cancel(ctx::background());
    std::vector<ctx::derived<clock>> idle;
    idle.reserve(pending);
    for (int i = 0; i < pending; ++i) idle.push_back(ctx::with_timeout(root, 1h));
    std::vector<clock::time_point> due(probes), fired(probes);
    std::atomic<int> count{0};
    std::vector<ctx::derived<clock>> probe;
    std::vector<ctx::registration> regs;
    probe.reserve(probes);
    regs.reserve(probes);
    for (int j = 0; j < probes; ++j) {
      probe.push_back(ctx::with_timeout(root, std::chrono::microseconds(100 * (j + 1))));
      due[static_cast<std::size_t>(j)] = *probe.back().context.deadline();
      regs.push_back(ctx::after_func(probe.back().context, [&fired, &count, j] {
        fired[static_cast<std::size_t>(j)] = clock::now();
        count.fetch_add(1, std::memory_order_release);
        count.notify_one();
      }));
    }
    for (int c; (c = count.load(std::memory_order_acquire)) != probes;) count.wait(c);
    for (std::size_t j = 0; j < probes; ++j)
      late.push_back(std::chrono::duration<double, std::nano>(fired[j] - due[j]).count());
    cancel();
  }
  state.counters["p50_ns"] = percentile(late, 0.50);
  state.counters["p99_ns"] = percentile(late, 0.99);
}
BENCHMARK(BM_deadline_lateness_100k)->Iterations(3)->Unit(benchmark::kMillisecond);

// --- adapters: cancel -> a blocked adapter returns, against the same wait
// woken without ctx (docs/design.md: p50 <= 2x the raw wake-up, p99 <= 500 us).

/// ctx::wait on a std::condition_variable_any, woken by a cancel.
struct ctx_cv_round : ctx_round {
  std::mutex m;
  std::condition_variable_any cv;
  void block() {
    std::unique_lock lock(m);
    (void)ctx::wait(c, cv, lock, [] { return false; });
  }
};
/// The same primitive woken by a plain notify: set the flag under the mutex, notify.
template <class ConditionVariable>
struct raw_cv_round {
  std::mutex m;
  ConditionVariable cv;
  bool flag = false;
  void reset() { flag = false; }
  void block() {
    std::unique_lock lock(m);
    cv.wait(lock, [this] { return flag; });
  }
  void wake() {
    {
      std::lock_guard lock(m);
      flag = true;
    }
    cv.notify_all();
  }
};

/// ctx::io::wait_readable on an empty pipe, woken by a cancel.
struct pipe_fds {
  int fd[2] = {-1, -1};
  pipe_fds() {
    if (::pipe(fd) != 0) std::abort();
  }
  ~pipe_fds() {
    ::close(fd[0]);
    ::close(fd[1]);
  }
};
struct ctx_fd_round : ctx_round {
  pipe_fds p;
  void block() { (void)ctx::io::wait_readable(c, p.fd[0]); }
};
/// The same wait woken by writing a byte to the pipe.
struct raw_fd_round {
  pipe_fds p;
  void reset() {
    char b;
    pollfd pfd{p.fd[0], POLLIN, 0};
    while (::poll(&pfd, 1, 0) == 1 && ::read(p.fd[0], &b, 1) == 1) {
    }
  }
  void block() {
    pollfd pfd{p.fd[0], POLLIN, 0};
    while (::poll(&pfd, 1, -1) != 1) {
    }
  }
  void wake() {
    const char b = 1;
    if (::write(p.fd[1], &b, 1) != 1) std::abort();
  }
};

/// bounded_queue::pop on an empty queue, woken by a cancel.
struct ctx_queue_round : ctx_round {
  ctx::bounded_queue<int> q{1};
  void block() {
    std::error_code ec;
    (void)q.pop(c, ec);
  }
};
/// The same pop woken by a push.
struct raw_queue_round {
  ctx::bounded_queue<int> q{1};
  void reset() {}
  void block() {
    std::error_code ec;
    (void)q.pop(ctx::background(), ec);
  }
  void wake() { (void)q.try_push(1); }
};

template <class Round>
void BM_adapter_wake(benchmark::State& state) {
  Round r;
  measure_wake(state, r);
}
/// ctx::wait on a plain std::condition_variable (after_func locks the
/// waiter's mutex and notifies), woken by a cancel.
struct ctx_plain_cv_round : ctx_round {
  std::mutex m;
  std::condition_variable cv;
  void block() {
    std::unique_lock lock(m);
    (void)ctx::wait(c, cv, lock, [] { return false; });
  }
};

BENCHMARK(BM_adapter_wake<ctx_plain_cv_round>)
    ->Name("BM_cancel_wake_plain_cv")
    ->UseManualTime()
    ->Iterations(1000);
BENCHMARK(BM_adapter_wake<raw_cv_round<std::condition_variable>>)
    ->Name("BM_floor_wake_plain_cv")
    ->UseManualTime()
    ->Iterations(1000);
BENCHMARK(BM_adapter_wake<ctx_cv_round>)->Name("BM_cancel_wake_cv")->UseManualTime()->Iterations(1000);
BENCHMARK(BM_adapter_wake<raw_cv_round<std::condition_variable_any>>)
    ->Name("BM_floor_wake_cv")
    ->UseManualTime()
    ->Iterations(1000);
BENCHMARK(BM_adapter_wake<ctx_fd_round>)->Name("BM_cancel_wake_fd")->UseManualTime()->Iterations(1000);
BENCHMARK(BM_adapter_wake<raw_fd_round>)->Name("BM_floor_wake_fd")->UseManualTime()->Iterations(1000);
BENCHMARK(BM_adapter_wake<ctx_queue_round>)->Name("BM_cancel_wake_queue")->UseManualTime()->Iterations(1000);
BENCHMARK(BM_adapter_wake<raw_queue_round>)->Name("BM_floor_wake_queue")->UseManualTime()->Iterations(1000);

}  // namespace

BENCHMARK_MAIN();
