// SPDX-License-Identifier: MIT
#include <ctx/sleep.hpp>
#include <ctx/testing.hpp>

#include <atomic>
#include <chrono>
#include <latch>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"
#include "support/posix_helpers.hpp"

using namespace std::chrono_literals;

namespace {

/// Busy-waits for about `n` short steps (a few nanoseconds each).
void spin_for(int n) {
  std::atomic<int> sink{0};
  for (int i = 0; i < n; ++i) sink.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

TEST_CASE("manual_clock is a steady trivial clock", "[testing]") {
  STATIC_REQUIRE(manual::is_steady);
  STATIC_REQUIRE(std::chrono::is_clock_v<manual>);
  STATIC_REQUIRE(std::is_same_v<manual::duration, std::chrono::nanoseconds>);
  STATIC_REQUIRE(noexcept(manual::now()));
}

TEST_CASE("manual_clock moves only when told to", "[testing]") {
  const auto t0 = manual::now();
  std::this_thread::sleep_for(2ms);
  CHECK(manual::now() == t0);
  manual::advance(3s);
  CHECK(manual::now() == t0 + 3s);
  manual::set(t0 + 10s);
  CHECK(manual::now() == t0 + 10s);
  manual::advance(0s);
  CHECK(manual::now() == t0 + 10s);
}

TEST_CASE("manual_clock refuses to go backwards", "[testing]") {
  const auto t0 = manual::now();
  CHECK_THROWS_AS(manual::advance(-1s), std::invalid_argument);
  CHECK_THROWS_AS(manual::set(t0 - 1ns), std::invalid_argument);
  CHECK(manual::now() == t0);
}

TEST_CASE("set fires the timers it passes, on the calling thread", "[testing]") {
  auto [c, cancel] = ctx::with_deadline(ctx::background<manual>(), manual::now() + 1min);
  std::thread::id fired_on;
  auto reg = ctx::after_func(c, [&] { fired_on = std::this_thread::get_id(); });
  manual::set(manual::now() + 59s);
  CHECK_FALSE(c.done());
  manual::set(manual::now() + 1s);
  CHECK(c.done());
  CHECK(fired_on == std::this_thread::get_id());
}

TEST_CASE("manual-clock contexts never start a timer thread", "[testing]") {
  // White-box: the manual service has no thread; timers wait for advance().
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 1ms);
  std::this_thread::sleep_for(20ms);
  CHECK_FALSE(c.done());
  manual::advance(1ms);
  CHECK(c.done());
}

namespace {

/// A user's own hand-moved clock that opts in to the same timer behaviour as
/// manual_clock through the clock trait, without ctx knowing its type.
struct user_moved_clock {
  using rep = std::int64_t;
  using period = std::nano;
  using duration = std::chrono::duration<rep, period>;
  using time_point = std::chrono::time_point<user_moved_clock>;
  [[maybe_unused]] static constexpr bool is_steady = true;
  static constexpr bool timers_fire_on_move = true;

  static time_point now() noexcept { return time_point(duration(ticks().load(std::memory_order_acquire))); }
  static void advance(duration d) {
    ctx::detail::timer_service<user_moved_clock>::instance().advance([d] {
      const rep t = ticks().load(std::memory_order_relaxed) + d.count();
      ticks().store(t, std::memory_order_release);
      return time_point(duration(t));
    });
  }
  static std::atomic<rep>& ticks() noexcept {
    static constinit std::atomic<rep> t{0};
    return t;
  }
};

/// A clock that declares the trait false: it gets the timer thread.
struct declines_moved_timers : std::chrono::steady_clock {
  static constexpr bool timers_fire_on_move = false;
};

}  // namespace

TEST_CASE("the timers_fire_on_move clock trait selects timers that fire on the moving thread", "[testing]") {
  STATIC_REQUIRE(ctx::detail::manual_timers<manual>);
  STATIC_REQUIRE(ctx::detail::manual_timers<user_moved_clock>);
  STATIC_REQUIRE_FALSE(ctx::detail::manual_timers<std::chrono::steady_clock>);
  STATIC_REQUIRE_FALSE(ctx::detail::manual_timers<std::chrono::system_clock>);
  STATIC_REQUIRE_FALSE(ctx::detail::manual_timers<declines_moved_timers>);
}

TEST_CASE("a user clock that declares timers_fire_on_move fires its deadlines when it is moved",
          "[testing]") {
  auto [c, cancel] = ctx::with_timeout(ctx::background<user_moved_clock>(), 10ms);
  std::this_thread::sleep_for(20ms);  // no timer thread: nothing fires while the clock stands still
  CHECK_FALSE(c.done());
  user_moved_clock::advance(9ms);
  CHECK_FALSE(c.done());
  user_moved_clock::advance(1ms);
  CHECK(c.done());
  CHECK(c.err() == deadline_exceeded);
  CHECK(ctx::detail::timer_service<user_moved_clock>::instance().last_sleep().count == 0);
}

// Regression (issue 9, bug 6): a deadline derived while another thread moves
// the clock past it was left pending (remaining() == 0 but not done) until
// some later advance(): the move found no timer, the timer was inserted
// after it, and an overdue manual timer was never fired at insertion.
//
// Made certain: with_timeout reads now() first, then links the new context
// to its parent under the parent's lock, then inserts its timer. This test
// holds that lock, so the deriving thread stops in between; the clock moves
// past the deadline meanwhile.
TEST_CASE("a deadline derived while another thread advances past it is never left pending", "[testing]") {
  auto parent = ctx::with_cancel(ctx::background<manual>());
  ctx::detail::tiny_mutex& parent_lock = ctx::detail::access::of(parent.context)->nearest_cancelable->mtx;
  for (const bool sleep : {false, true}) {
    std::atomic<int> tid{0};
    std::optional<ctx::derived<manual>> d;
    std::error_code slept = ctx::errc::canceled;
    parent_lock.lock();
    std::thread deriver([&] {
      tid = test::this_tid();
      if (sleep)
        slept = ctx::sleep_for(parent.context, 1ns);
      else
        d.emplace(ctx::with_timeout(parent.context, 1ns));
    });
    while (tid.load() == 0) std::this_thread::yield();
    REQUIRE(test::wait_until_blocked(tid.load(), test::blocked_in_futex));  // stopped at the parent's lock
    manual::advance(1ns);  // past its deadline; its timer is not inserted yet
    parent_lock.unlock();
    deriver.join();  // a sleep must end without another move of the clock
    if (sleep) {
      CHECK(slept == std::error_code{});
    } else {
      CHECK(d->context.remaining() == 0ns);
      CHECK(d->context.err() == ctx::errc::deadline_exceeded);
    }
  }
}

TEST_CASE("deadlines derived while another thread advances are never left pending", "[testing][race]") {
  // The same as a plain race, in lock-step with a thread that stays alive and
  // spins, so that the derivation and the move start together.
  const auto root = ctx::background<manual>();
  std::atomic<int> go{0};
  std::atomic<int> moved{0};
  std::atomic<bool> stop{false};
  std::thread mover([&] {
    for (int round = 1;; ++round) {
      for (int spin = 0; go.load() < round; ++spin)
        if (stop.load())
          return;
        else if (spin > 10'000)
          std::this_thread::yield();  // one core: let the other thread run
      manual::advance(1ns);
      moved.store(round);
    }
  });
  int late = 0;
  for (int round = 1; round <= 20'000; ++round) {
    go.store(round);
    spin_for(round % 128);  // sweep the start of the derivation across the move
    auto d = ctx::with_timeout(root, 1ns);
    for (int spin = 0; moved.load() < round; ++spin)
      if (spin > 10'000) std::this_thread::yield();
    // The move of this round has returned: a deadline at or before now() has fired.
    if (d.context.remaining() == 0ns && !d.context.done()) ++late;
  }
  stop = true;
  mover.join();
  INFO(late << " of 20000 deadlines were left pending");
  CHECK(late == 0);
}

TEST_CASE("advance from a callback that an advance fired moves the clock further and fires what is due",
          "[testing]") {
  const auto t0 = manual::now();
  const auto root = ctx::background<manual>();
  auto [a, ca] = ctx::with_timeout(root, 1s);
  auto [b, cb] = ctx::with_timeout(root, 3s);
  auto [c, cc] = ctx::with_timeout(root, 10s);
  std::vector<int> order;
  auto ra = ctx::after_func(a, [&order] {
    order.push_back(1);
    manual::advance(4s);  // nested: fires b, at t0 + 5s
    order.push_back(3);
  });
  auto rb = ctx::after_func(b, [&order] {
    order.push_back(2);
    manual::set(manual::now());  // set() nests too
  });
  manual::advance(1s);
  CHECK(order == std::vector<int>{1, 2, 3});
  CHECK(manual::now() == t0 + 5s);
  CHECK(b.err() == ctx::errc::deadline_exceeded);
  CHECK_FALSE(c.done());
}
