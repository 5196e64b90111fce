// SPDX-License-Identifier: MIT
// <ctx/sleep.hpp>: full sleeps, early ends on cancel and deadline, manual-clock exactness.
#include <ctx/sleep.hpp>
#include <ctx/testing.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <latch>
#include <system_error>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"

using namespace std::chrono_literals;

namespace {

/// Busy-waits for about `n` short steps (a few nanoseconds each).
void spin_for(int n) {
  std::atomic<int> sink{0};
  for (int i = 0; i < n; ++i) sink.fetch_add(1, std::memory_order_relaxed);
}

template <class Clock>
std::size_t pending() {
  return ctx::detail::timer_service<Clock>::instance().pending();
}

/// Spins (yielding) until `Clock`'s timer service holds `n` timers: how a test
/// knows that sleepers on other threads have started their sleeps.
template <class Clock>
void await_pending(std::size_t n) {
  while (pending<Clock>() < n) std::this_thread::yield();
}

}  // namespace

TEST_CASE("sleep_for on a manual clock returns exactly when the clock reaches its end", "[sleep]") {
  const auto start = manual::now();
  const std::size_t base = pending<manual>();
  std::error_code result = canceled;
  manual::time_point returned_at{};
  std::thread sleeper([&] {
    result = ctx::sleep_for(ctx::background<manual>(), 5s);
    returned_at = manual::now();
  });
  await_pending<manual>(base + 1);
  manual::advance(4s);
  CHECK(pending<manual>() == base + 1);  // not due yet: still sleeping
  manual::advance(999ms);
  CHECK(pending<manual>() == base + 1);
  manual::advance(1ms);
  sleeper.join();
  CHECK(result == std::error_code{});
  CHECK(returned_at == start + 5s);
}

TEST_CASE("sleep_until on a manual clock returns when the clock is set past the end", "[sleep]") {
  const auto end = manual::now() + 10s;
  const std::size_t base = pending<manual>();
  std::error_code result = canceled;
  std::thread sleeper([&] { result = ctx::sleep_until(ctx::background<manual>(), end); });
  await_pending<manual>(base + 1);
  manual::set(end + 1s);
  sleeper.join();
  CHECK(result == std::error_code{});
  CHECK(pending<manual>() == base);
}

TEST_CASE("a sleep ends at the context's earlier deadline with deadline_exceeded", "[sleep]") {
  const auto start = manual::now();
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 2s);
  const std::size_t base = pending<manual>();
  std::error_code result;
  manual::time_point returned_at{};
  std::latch started(1);
  std::thread sleeper([&, c = c] {
    started.count_down();
    result = ctx::sleep_for(c, 5s);
    returned_at = manual::now();
  });
  started.wait();
  manual::advance(2s);  // the sleeper waits on c's deadline (no timer of its own), or finds c done
  sleeper.join();
  CHECK(result == deadline_exceeded);
  CHECK(returned_at == start + 2s);
  CHECK(pending<manual>() == base - 1);
}

TEST_CASE("cancel while asleep returns canceled promptly", "[sleep]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  const std::size_t base = pending<std::chrono::steady_clock>();
  std::error_code result;
  std::thread sleeper([&, c = c] { result = ctx::sleep_for(c, 1h); });
  await_pending<std::chrono::steady_clock>(base + 1);
  cancel();
  sleeper.join();
  CHECK(result == canceled);
  CHECK(pending<std::chrono::steady_clock>() == base);  // the sleep's timer is gone at once
}

TEST_CASE("a real-clock sleep sleeps at least its duration", "[sleep]") {
  const auto before = std::chrono::steady_clock::now();
  CHECK(ctx::sleep_for(ctx::background(), 20ms) == std::error_code{});
  CHECK(std::chrono::steady_clock::now() - before >= 20ms);
  CHECK(ctx::sleep_until(ctx::background(), std::chrono::steady_clock::now() + 1ms) == std::error_code{});
}

TEST_CASE("a done context returns its err at once without making a timer", "[sleep]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background<manual>());
  cancel(std::make_error_code(std::errc::io_error));
  const std::size_t base = pending<manual>();
  CHECK(ctx::sleep_for(c, 1h) == canceled);
  CHECK(ctx::sleep_until(c, manual::now() + 1h) == canceled);
  CHECK(ctx::sleep_for(c, 0s) == canceled);
  CHECK(pending<manual>() == base);

  auto [t, cancel_t] = ctx::with_timeout(ctx::background<manual>(), 0s);
  CHECK(ctx::sleep_for(t, 1s) == deadline_exceeded);
}

TEST_CASE("a zero, negative or past sleep on a live context returns at once", "[sleep]") {
  const auto c = ctx::background<manual>();
  const std::size_t base = pending<manual>();
  CHECK(ctx::sleep_for(c, 0s) == std::error_code{});
  CHECK(ctx::sleep_for(c, -5s) == std::error_code{});
  CHECK(ctx::sleep_until(c, manual::now()) == std::error_code{});
  CHECK(ctx::sleep_until(c, manual::time_point::min()) == std::error_code{});
  CHECK(pending<manual>() == base);
}

TEST_CASE("sleep_for accepts any duration type and saturates", "[sleep]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background<manual>());
  const std::size_t base = pending<manual>();
  std::error_code a, b;
  std::thread t1([&, c = c] { a = ctx::sleep_for(c, std::chrono::duration<double>(1.5)); });
  std::thread t2([&, c = c] { b = ctx::sleep_for(c, std::chrono::hours::max()); });
  await_pending<manual>(base + 1);  // the saturated sleep needs no timer
  manual::advance(1500ms);
  t1.join();
  CHECK(a == std::error_code{});
  cancel();
  t2.join();
  CHECK(b == canceled);
}

TEST_CASE("one cancel wakes 1000 threads asleep on one context", "[sleep]") {
  constexpr std::size_t n = 1000;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  const std::size_t base = pending<std::chrono::steady_clock>();
  std::atomic<std::size_t> woke_canceled{0};
  std::vector<std::thread> sleepers;
  sleepers.reserve(n);
  for (std::size_t i = 0; i < n; ++i)
    sleepers.emplace_back([&, c = c] {
      if (ctx::sleep_for(c, 1h) == canceled) woke_canceled.fetch_add(1, std::memory_order_relaxed);
    });
  await_pending<std::chrono::steady_clock>(base + n);  // every thread is in its sleep
  cancel();
  for (auto& t : sleepers) t.join();
  CHECK(woke_canceled.load() == n);
  CHECK(pending<std::chrono::steady_clock>() == base);
}

TEST_CASE("one manual-clock deadline wakes 1000 threads asleep on one context", "[sleep]") {
  constexpr std::size_t n = 1000;
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 1s);
  std::latch started(n);
  std::atomic<std::size_t> woke{0};
  std::vector<std::thread> sleepers;
  sleepers.reserve(n);
  for (std::size_t i = 0; i < n; ++i)
    sleepers.emplace_back([&, c = c] {
      started.count_down();
      if (ctx::sleep_for(c, 1h) == deadline_exceeded) woke.fetch_add(1, std::memory_order_relaxed);
    });
  started.wait();
  manual::advance(1s);
  for (auto& t : sleepers) t.join();
  CHECK(woke.load() == n);
}

// A sleep of d ends when the clock has moved by d, not one tick earlier.
TEST_CASE("a manual-clock sleep is still asleep one tick before its end", "[sleep]") {
  const std::size_t base = pending<manual>();
  for (const bool until : {false, true}) {
    const auto start = manual::now();
    std::error_code result = canceled;
    manual::time_point returned_at{};
    std::thread sleeper([&] {
      result = until ? ctx::sleep_until(ctx::background<manual>(), start + 250ms)
                     : ctx::sleep_for(ctx::background<manual>(), 250ms);
      returned_at = manual::now();
    });
    await_pending<manual>(base + 1);
    manual::advance(250ms - 1ns);
    CHECK(pending<manual>() == base + 1);  // a timer that fired would have left the heap inside advance()
    manual::advance(1ns);
    sleeper.join();
    CHECK(result == std::error_code{});
    CHECK(returned_at == start + 250ms);
  }
}

// Regression (issue 9, bug 6): sleep_until(T) hung although now() >= T when
// another thread moved the clock past T while the sleep was being set up.
TEST_CASE("sleep_until returns once now reaches its end even when the clock moves during the call",
          "[sleep][race]") {
  // A sleeper that stays alive and spins between rounds, so that its sleep
  // and the move of the clock start together.
  std::atomic<int> go{0};
  std::atomic<int> woke{0};
  std::atomic<manual::time_point> end{};
  std::atomic<bool> stop{false};
  std::thread sleeper([&] {
    for (int round = 1;; ++round) {
      for (int spin = 0; go.load() < round; ++spin)
        if (stop.load())
          return;
        else if (spin > 10'000)
          std::this_thread::yield();  // one core: let the other thread run
      (void)ctx::sleep_until(ctx::background<manual>(), end.load());
      woke.store(round);
    }
  });
  int hung = 0;
  for (int round = 1; round <= 5'000; ++round) {
    end = manual::now() + 1ns;
    go.store(round);
    spin_for(round % 128);  // sweep the move across the start of the sleep
    manual::advance(1ns);   // now() == end
    // The sleep must end without another move of the clock. If it has not
    // within a generous bound, count it and release it.
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    for (int spin = 0; woke.load() < round && std::chrono::steady_clock::now() < give_up; ++spin)
      if (spin > 10'000) std::this_thread::yield();
    if (woke.load() < round) {
      ++hung;
      manual::advance(1ns);
      while (woke.load() < round) std::this_thread::yield();
    }
  }
  stop = true;
  sleeper.join();
  INFO(hung << " of 5000 sleeps did not end");
  CHECK(hung == 0);
}
