// SPDX-License-Identifier: MIT
// <ctx/task_group.hpp>: first error wins and cancels, exceptions, limits, and waiting on destruction.
#include <ctx/task_group.hpp>
#include <ctx/testing.hpp>

#include <atomic>
#include <chrono>
#include <latch>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"

using namespace std::chrono_literals;

namespace {
const std::error_code boom = std::make_error_code(std::errc::connection_refused);

/// A task that runs until its context is done and returns the context's error.
std::error_code until_done(const ctx::context& c) {
  c.wait();
  return c.err();
}
}  // namespace

TEST_CASE("a group whose tasks all succeed returns no error and is cancelled after wait", "[task_group]") {
  ctx::task_group g(ctx::background());
  std::atomic<int> ran{0};
  for (int i = 0; i < 8; ++i)
    g.spawn([&](const ctx::context&) {
      ran.fetch_add(1);
      return std::error_code{};
    });
  g.spawn([&](const ctx::context&) { ran.fetch_add(1); });  // a task may return nothing
  CHECK_FALSE(g.context().done());
  CHECK(g.wait() == std::error_code{});
  CHECK(ran.load() == 9);
  CHECK(g.context().err() == canceled);
  CHECK(g.wait() == std::error_code{});  // again: same result
}

TEST_CASE("the first error is returned and cancels the group with it as the cause", "[task_group]") {
  auto [parent, cancel_parent] = ctx::with_cancel(ctx::background());
  ctx::task_group g(parent);
  std::latch waiting(3);
  std::atomic<int> saw_cause{0};
  for (int i = 0; i < 3; ++i)
    g.spawn([&](const ctx::context& c) {
      waiting.count_down();
      c.wait();
      if (c.cause() == boom) saw_cause.fetch_add(1);
      return c.err();  // a later error: dropped
    });
  g.spawn([&](const ctx::context&) {
    waiting.wait();
    return boom;
  });
  CHECK(g.wait() == boom);
  CHECK(saw_cause.load() == 3);
  CHECK(g.context().err() == canceled);
  CHECK(g.context().cause() == boom);
  CHECK_FALSE(parent.done());  // the group's failure does not reach the parent
}

TEST_CASE("an exception from a task cancels the group and is rethrown by wait", "[task_group]") {
  ctx::task_group g(ctx::background());
  std::latch waiting(1);
  std::atomic<bool> other_cancelled{false};
  g.spawn([&](const ctx::context& c) {
    waiting.count_down();
    c.wait();
    other_cancelled = true;
    return c.err();
  });
  g.spawn([&](const ctx::context&) -> std::error_code {
    waiting.wait();
    throw std::runtime_error("task failed");
  });
  CHECK_THROWS_AS(g.wait(), std::runtime_error);
  CHECK(other_cancelled.load());
  CHECK(g.context().err() == canceled);
  CHECK_THROWS_AS(g.wait(), std::runtime_error);  // the same exception on every call
}

TEST_CASE("an error that comes first wins over a later exception", "[task_group]") {
  ctx::task_group g(ctx::background());
  g.spawn([&](const ctx::context&) { return boom; });
  CHECK(g.wait() == boom);
  g.spawn([&](const ctx::context&) -> std::error_code { throw std::runtime_error("late"); });
  CHECK(g.wait() == boom);
}

TEST_CASE("cancelling the parent cancels the tasks", "[task_group]") {
  auto [parent, cancel_parent] = ctx::with_cancel(ctx::background());
  ctx::task_group g(parent);
  std::latch started(4);
  for (int i = 0; i < 4; ++i)
    g.spawn([&](const ctx::context& c) {
      started.count_down();
      return until_done(c);
    });
  started.wait();
  cancel_parent();
  CHECK(g.wait() == canceled);
}

TEST_CASE("a manual-clock deadline on the parent ends the tasks", "[task_group]") {
  auto [parent, cancel] = ctx::with_timeout(ctx::background<manual>(), 10s);
  ctx::basic_task_group<manual> g(parent);
  std::latch started(2);
  for (int i = 0; i < 2; ++i)
    g.spawn([&](const ctx::basic_context<manual>& c) {
      started.count_down();
      c.wait();
      return c.err();
    });
  started.wait();
  manual::advance(10s);
  CHECK(g.wait() == deadline_exceeded);
}

TEST_CASE("set_limit bounds the running tasks and try_spawn reports a full group", "[task_group]") {
  ctx::task_group g(ctx::background());
  g.set_limit(2);
  CHECK_THROWS_AS(g.set_limit(0), std::invalid_argument);
  std::latch release(1);
  std::latch both_running(2);
  auto blocked = [&](const ctx::context&) {
    both_running.count_down();
    release.wait();
  };
  g.spawn(blocked);
  CHECK(g.try_spawn(blocked));
  both_running.wait();
  bool ran_third = false;
  CHECK_FALSE(g.try_spawn([&](const ctx::context&) { ran_third = true; }));
  std::atomic<bool> spawned{false};
  std::thread spawner([&] {
    g.spawn([](const ctx::context&) {});  // blocks until a slot frees
    spawned = true;
  });
  CHECK_FALSE(spawned.load());  // cannot have a slot: both tasks are held by `release`
  release.count_down();
  spawner.join();
  CHECK(spawned.load());
  CHECK(g.wait() == std::error_code{});
  CHECK_FALSE(ran_third);
}

TEST_CASE("with a limit, no more than the limit of tasks ever run at once", "[task_group]") {
  ctx::task_group g(ctx::background());
  g.set_limit(3);
  std::atomic<int> running{0};
  std::atomic<int> peak{0};
  for (int i = 0; i < 40; ++i)
    g.spawn([&](const ctx::context&) {
      const int now = running.fetch_add(1) + 1;
      int seen = peak.load();
      while (now > seen && !peak.compare_exchange_weak(seen, now)) {
      }
      std::this_thread::yield();
      running.fetch_sub(1);
    });
  CHECK(g.wait() == std::error_code{});
  CHECK(peak.load() <= 3);
  CHECK(peak.load() >= 1);
}

TEST_CASE("tasks may spawn tasks into their own group", "[task_group]") {
  ctx::task_group g(ctx::background());
  std::atomic<int> leaves{0};
  for (int i = 0; i < 3; ++i)
    g.spawn([&](const ctx::context&) {
      for (int j = 0; j < 3; ++j) g.spawn([&](const ctx::context&) { leaves.fetch_add(1); });
    });
  CHECK(g.wait() == std::error_code{});
  CHECK(leaves.load() == 9);
}

TEST_CASE("destroying a group cancels its context and waits for its tasks", "[task_group]") {
  std::atomic<int> finished{0};
  std::error_code seen;
  {
    ctx::task_group g(ctx::background());
    std::latch started(3);
    for (int i = 0; i < 3; ++i)
      g.spawn([&](const ctx::context& c) {
        started.count_down();
        c.wait();
        finished.fetch_add(1);
      });
    started.wait();
    seen = g.context().err();
  }  // no wait(): the destructor cancels and joins
  CHECK_FALSE(seen);
  CHECK(finished.load() == 3);
}

TEST_CASE("a group of a done parent runs its tasks with a done context", "[task_group]") {
  auto [parent, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  ctx::task_group g(parent);
  CHECK(g.context().done());
  g.spawn([](const ctx::context& c) { return c.err(); });
  CHECK(g.wait() == canceled);
}
