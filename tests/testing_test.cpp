// SPDX-License-Identifier: MIT
#include <ctx/testing.hpp>

#include <chrono>
#include <stdexcept>
#include <thread>
#include <type_traits>

#include "support/catch.hpp"

using namespace std::chrono_literals;
using manual = ctx::testing::manual_clock;

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
