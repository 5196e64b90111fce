// SPDX-License-Identifier: MIT
// <ctx/future.hpp>: waits on std::future and std::shared_future that end on readiness,
// cancel and deadline, within the documented poll bound.
#include <ctx/future.hpp>
#include <ctx/testing.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <latch>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"

using namespace std::chrono_literals;

TEST_CASE("a ready future returns at once", "[future]") {
  std::promise<int> p;
  std::future<int> f = p.get_future();
  p.set_value(7);
  CHECK(ctx::wait(ctx::background(), f) == std::error_code{});
  CHECK(ctx::get(ctx::background(), f) == 7);
}

TEST_CASE("a value set later ends the wait with success", "[future]") {
  std::promise<std::string> p;
  std::future<std::string> f = p.get_future();
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::thread producer([&] { p.set_value("done"); });
  CHECK(ctx::get(c, f) == "done");
  producer.join();
  CHECK_FALSE(f.valid());
}

TEST_CASE("cancel while waiting returns canceled and leaves the future usable", "[future]") {
  std::promise<int> p;
  std::future<int> f = p.get_future();
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::latch started(1);
  std::error_code result;
  std::thread waiter([&, c = c] {
    started.count_down();
    result = ctx::wait(c, f);
  });
  started.wait();
  cancel();
  waiter.join();
  CHECK(result == canceled);
  REQUIRE(f.valid());
  p.set_value(3);
  CHECK(f.get() == 3);
}

TEST_CASE("a manual-clock deadline ends a future wait with deadline_exceeded", "[future]") {
  std::promise<void> p;
  std::future<void> f = p.get_future();
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 1s);
  std::latch started(1);
  std::error_code result;
  std::thread waiter([&, c = c] {
    started.count_down();
    result = ctx::wait(c, f);
  });
  started.wait();
  manual::advance(1s);
  waiter.join();
  CHECK(result == deadline_exceeded);
}

TEST_CASE("a done context returns its err at once, even for a ready future", "[future]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  std::promise<int> p;
  std::future<int> f = p.get_future();
  CHECK(ctx::wait(c, f) == canceled);
  p.set_value(1);
  CHECK(ctx::wait(c, f) == canceled);
  CHECK(f.valid());
  std::future<int> invalid;
  CHECK(ctx::wait(c, invalid) == canceled);  // not even the future's validity is looked at
}

TEST_CASE("get throws ctx::error with the context's err and cause", "[future]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  const std::error_code why = std::make_error_code(std::errc::connection_aborted);
  cancel(why);
  std::promise<int> p;
  std::future<int> f = p.get_future();
  try {
    (void)ctx::get(c, f);
    FAIL("get did not throw");
  } catch (const ctx::error& e) {
    CHECK(e.code() == canceled);
    CHECK(e.cause() == why);
  }
  CHECK(f.valid());
}

TEST_CASE("get rethrows the producer's exception", "[future]") {
  std::promise<int> p;
  std::future<int> f = p.get_future();
  p.set_exception(std::make_exception_ptr(std::runtime_error("producer failed")));
  CHECK_THROWS_AS(ctx::get(ctx::background(), f), std::runtime_error);
}

TEST_CASE("an invalid future throws future_error", "[future]") {
  std::future<int> f;
  CHECK_THROWS_AS((void)ctx::wait(ctx::background(), f), std::future_error);
}

TEST_CASE("a deferred future runs on the waiting thread", "[future]") {
  std::future<int> f = std::async(std::launch::deferred, [] { return 42; });
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  CHECK(ctx::get(c, f) == 42);
}

TEST_CASE("many threads wait on one shared_future under one context", "[future]") {
  constexpr int n = 50;
  std::promise<int> p;
  std::shared_future<int> f = p.get_future().share();
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::latch started(n);
  std::atomic<int> woke_canceled{0};
  std::vector<std::thread> waiters;
  for (int i = 0; i < n; ++i)
    waiters.emplace_back([&, c = c, f = f] {
      started.count_down();
      if (ctx::wait(c, f) == canceled) woke_canceled.fetch_add(1);
    });
  started.wait();
  cancel();
  for (auto& t : waiters) t.join();
  CHECK(woke_canceled.load() == n);
  p.set_value(5);
  CHECK(ctx::get(ctx::background(), f) == 5);
}

TEST_CASE("a cancelled future wait returns within the documented poll bound", "[future]") {
  // The bound is future_poll_interval (1 ms) plus scheduling delay. Scheduling
  // on a loaded machine (or under a sanitizer) adds noise, so the median of
  // several rounds is compared with a generous allowance for that delay.
  STATIC_REQUIRE(ctx::future_poll_interval == 1ms);
  constexpr int rounds = 21;
  std::vector<std::chrono::steady_clock::duration> lateness;
  for (int i = 0; i < rounds; ++i) {
    std::promise<int> p;
    std::future<int> f = p.get_future();
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    std::latch started(1);
    std::chrono::steady_clock::time_point returned;
    std::error_code result;
    std::thread waiter([&, c = c] {
      started.count_down();
      result = ctx::wait(c, f);
      returned = std::chrono::steady_clock::now();
    });
    started.wait();
    std::this_thread::sleep_for(2ms);  // let the waiter get into a slice (the test, not the adapter, sleeps)
    const auto cancelled = std::chrono::steady_clock::now();
    cancel();
    waiter.join();
    CHECK(result == canceled);
    lateness.push_back(returned - cancelled);
  }
  std::nth_element(lateness.begin(), lateness.begin() + rounds / 2, lateness.end());
  CHECK(lateness[rounds / 2] <= ctx::future_poll_interval + 25ms);
  CHECK(*std::max_element(lateness.begin(), lateness.end()) <= 1s);
}
