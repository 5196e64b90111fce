// SPDX-License-Identifier: MIT
// <ctx/condition_variable.hpp>: predicate waits that end on notify, cancel and deadline,
// for std::condition_variable_any and std::condition_variable, without lost wake-ups.
#include <ctx/condition_variable.hpp>
#include <ctx/testing.hpp>

#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <latch>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"

using namespace std::chrono_literals;

namespace {

/// Shared state of one waiter and its notifier, for either kind of condition variable.
template <class CV>
struct board {
  std::mutex m;
  CV cv;
  bool ready = false;
};

/// How many times ctx::wait evaluates the predicate, with the mutex held
/// throughout, before it blocks: once for std::condition_variable_any (the
/// standard stop_token wait); twice for std::condition_variable (on entry,
/// then again after registering the wake-up, which drops the lock).
template <class CV>
inline constexpr int evaluations_before_blocking = std::is_same_v<CV, std::condition_variable> ? 2 : 1;

/// Catch2 assertions are not thread-safe: waiters record a lock that was not
/// held on return here, and the test thread checks it.
std::atomic<int> lock_not_held{0};

/// Runs ctx::wait, counting the waiter into `entered` at the last predicate
/// evaluation before it blocks: from then on it holds the mutex until the
/// condition variable releases it.
template <class Clock, class CV>
bool wait_on(const ctx::basic_context<Clock>& c, board<CV>& b, std::atomic<int>* entered = nullptr) {
  std::unique_lock lock(b.m);
  int calls = 0;
  const bool r = ctx::wait(c, b.cv, lock, [&] {
    if (++calls == evaluations_before_blocking<CV> && entered) entered->fetch_add(1);
    return b.ready;
  });
  if (!lock.owns_lock()) lock_not_held.fetch_add(1);
  return r;
}

/// Returns once `n` waiters are blocked in the condition variable: each was
/// counted in while holding the mutex, which only the wait releases.
template <class CV>
void await_blocked(board<CV>& b, const std::atomic<int>& entered, int n) {
  while (entered.load() < n) std::this_thread::yield();
  std::lock_guard g(b.m);
}

}  // namespace

TEMPLATE_TEST_CASE("a notify with the predicate true ends the wait with true", "[condition_variable]",
                   std::condition_variable, std::condition_variable_any) {
  board<TestType> b;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  bool result = false;
  std::thread waiter([&, c = c] { result = wait_on(c, b); });
  {
    std::lock_guard g(b.m);
    b.ready = true;
  }
  b.cv.notify_all();
  waiter.join();
  CHECK(result);
  CHECK_FALSE(c.done());
}

TEMPLATE_TEST_CASE("cancel while blocked ends the wait with false and leaves the lock usable",
                   "[condition_variable]", std::condition_variable, std::condition_variable_any) {
  board<TestType> b;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::atomic<int> entered{0};
  bool result = true;
  std::thread waiter([&, c = c] { result = wait_on(c, b, &entered); });
  await_blocked(b, entered, 1);
  cancel();
  waiter.join();
  CHECK_FALSE(result);
  CHECK(c.err() == canceled);

  // The mutex and the condition variable still work for a plain wait.
  std::thread notifier([&] {
    {
      std::lock_guard g(b.m);
      b.ready = true;
    }
    b.cv.notify_all();
  });
  {
    std::unique_lock lock(b.m);
    b.cv.wait(lock, [&] { return b.ready; });
  }
  notifier.join();
}

TEMPLATE_TEST_CASE("a manual-clock deadline while blocked ends the wait with deadline_exceeded",
                   "[condition_variable]", std::condition_variable, std::condition_variable_any) {
  board<TestType> b;
  const auto start = manual::now();
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 3s);
  std::atomic<int> entered{0};
  bool result = true;
  manual::time_point returned_at{};
  std::thread waiter([&, c = c] {
    result = wait_on(c, b, &entered);
    returned_at = manual::now();
  });
  await_blocked(b, entered, 1);
  manual::advance(3s);
  waiter.join();
  CHECK_FALSE(result);
  CHECK(c.err() == deadline_exceeded);
  CHECK(returned_at == start + 3s);
}

TEMPLATE_TEST_CASE("a done context returns pred() at once", "[condition_variable]", std::condition_variable,
                   std::condition_variable_any) {
  board<TestType> b;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  std::unique_lock lock(b.m);
  int calls = 0;
  CHECK_FALSE(ctx::wait(c, b.cv, lock, [&] { return ++calls, false; }));
  CHECK(ctx::wait(c, b.cv, lock, [&] { return ++calls, true; }));
  CHECK(calls == 2);  // one evaluation each: no wait, no registration
  CHECK(lock.owns_lock());
}

TEST_CASE("a true predicate on entry returns without registering a callback", "[condition_variable]") {
  board<std::condition_variable> b;
  b.ready = true;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::unique_lock lock(b.m);
  CHECK(ctx::wait(c, b.cv, lock, [&] { return b.ready; }));
  // Cancelling while holding the mutex is safe here because nothing was registered.
  cancel();
  CHECK(lock.owns_lock());
}

TEST_CASE("condition_variable_any: a context may be cancelled while holding the waiter's mutex",
          "[condition_variable]") {
  board<std::condition_variable_any> b;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::atomic<int> entered{0};
  bool result = true;
  std::thread waiter([&, c = c] { result = wait_on(c, b, &entered); });
  await_blocked(b, entered, 1);
  {
    std::lock_guard g(b.m);
    cancel();  // allowed for condition_variable_any
  }
  waiter.join();
  CHECK_FALSE(result);
}

TEST_CASE("condition_variable_any works with any lockable, such as a shared_mutex", "[condition_variable]") {
  std::shared_mutex m;
  std::condition_variable_any cv;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::atomic<bool> entered{false};
  bool result = true;
  std::thread waiter([&, c = c] {
    std::unique_lock lock(m);
    result = ctx::wait(c, cv, lock, [&] { return entered = true, false; });
  });
  while (!entered.load()) std::this_thread::yield();
  cancel();
  waiter.join();
  CHECK_FALSE(result);
}

TEST_CASE("condition_variable: a cancel on another thread waits while the waiter's mutex is held",
          "[condition_variable]") {
  // The documented rule, seen from outside: the wake-up locks the waiter's
  // mutex, so a cancel cannot finish while someone holds it (and a thread
  // that cancels while holding it would deadlock itself).
  board<std::condition_variable> b;
  auto d = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
  auto& c = d.context;
  auto& cancel = d.cancel;
  std::atomic<int> entered{0};
  bool result = true;
  std::thread waiter([&, c = c] { result = wait_on(c, b, &entered); });
  await_blocked(b, entered, 1);
  std::atomic<bool> cancel_returned{false};
  std::unique_lock held(b.m);  // the waiter is inside cv.wait, so the mutex is free to take
  std::latch cancelling(1);
  std::thread canceller([&] {
    cancelling.count_down();
    cancel();
    cancel_returned = true;
  });
  cancelling.wait();
  // A negative check can only be bounded: give the canceller time to (wrongly) return.
  std::this_thread::sleep_for(50ms);
  CHECK_FALSE(cancel_returned.load());
  CHECK(c.done());  // marked done at once; only the wake-up waits for the mutex
  held.unlock();
  canceller.join();
  waiter.join();
  CHECK(cancel_returned.load());
  CHECK_FALSE(result);
}

TEMPLATE_TEST_CASE("a cancel racing with the start of a wait is never lost", "[condition_variable]",
                   std::condition_variable, std::condition_variable_any) {
  constexpr int rounds = 300;
  for (int i = 0; i < rounds; ++i) {
    board<TestType> b;
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    std::barrier<> go(2);
    bool result = true;
    std::thread waiter([&, c = c] {
      go.arrive_and_wait();
      result = wait_on(c, b);
    });
    go.arrive_and_wait();
    cancel();
    waiter.join();  // a lost wake-up hangs here (and the test times out)
    REQUIRE_FALSE(result);
  }
  CHECK(lock_not_held.load() == 0);
}

TEST_CASE("condition_variable: a notify racing with a cancel returns pred() consistently",
          "[condition_variable]") {
  constexpr int rounds = 300;
  for (int i = 0; i < rounds; ++i) {
    board<std::condition_variable> b;
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    std::barrier<> go(3);
    bool result = false;
    bool ready_seen = false;
    std::thread waiter([&, c = c] {
      go.arrive_and_wait();
      std::unique_lock lock(b.m);
      result = ctx::wait(c, b.cv, lock, [&] { return b.ready; });
      ready_seen = b.ready;
    });
    std::thread notifier([&] {
      go.arrive_and_wait();
      {
        std::lock_guard g(b.m);
        b.ready = true;
      }
      b.cv.notify_all();
    });
    go.arrive_and_wait();
    cancel();
    waiter.join();
    notifier.join();
    REQUIRE(result == ready_seen);  // the result is pred() under the lock it returns with
  }
}

TEST_CASE("condition_variable: a throwing predicate leaves the lock held and the callback gone",
          "[condition_variable]") {
  board<std::condition_variable> b;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::atomic<int> calls{0};
  bool threw = false;
  bool held = false;
  std::thread waiter([&, c = c] {
    std::unique_lock lock(b.m);
    try {
      (void)ctx::wait(c, b.cv, lock, [&] {
        if (calls.fetch_add(1) > 0 && c.done()) throw std::runtime_error("boom");
        return false;
      });
    } catch (const std::runtime_error&) {
      threw = true;
    }
    held = lock.owns_lock();
  });
  while (calls.load() < 2) std::this_thread::yield();  // registered and waiting
  cancel();
  waiter.join();
  CHECK(threw);
  CHECK(held);
}

TEMPLATE_TEST_CASE("one cancel wakes 1000 threads waiting on one condition variable", "[condition_variable]",
                   std::condition_variable, std::condition_variable_any) {
  constexpr int n = 1000;
  board<TestType> b;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::atomic<int> entered{0};
  std::atomic<int> woke_false{0};
  std::vector<std::thread> waiters;
  waiters.reserve(n);
  for (int i = 0; i < n; ++i)
    waiters.emplace_back([&, c = c] {
      if (!wait_on(c, b, &entered)) woke_false.fetch_add(1);
    });
  await_blocked(b, entered, n);
  cancel();
  for (auto& t : waiters) t.join();
  CHECK(woke_false.load() == n);
  CHECK(lock_not_held.load() == 0);
}
