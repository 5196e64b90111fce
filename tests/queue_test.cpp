// SPDX-License-Identifier: MIT
// <ctx/queue.hpp>: bounded_queue order, blocking push and pop under cancel, deadline and
// close, and the no-data-lost rules.
#include <ctx/queue.hpp>
#include <ctx/testing.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"
#include "support/posix_helpers.hpp"

using namespace std::chrono_literals;

namespace {

const std::error_code closed = ctx::queue_errc::closed;
constexpr int round_item = 42;

}  // namespace

TEST_CASE("queue errors have their own category and portable conditions", "[queue]") {
  CHECK(closed == std::errc::broken_pipe);
  CHECK(std::error_code(ctx::queue_errc::full) == std::errc::resource_unavailable_try_again);
  CHECK(std::error_code(ctx::queue_errc::empty) == std::errc::operation_would_block);
  CHECK(closed.message() == "queue closed");
  CHECK(std::string(closed.category().name()) == "ctx.queue");
  CHECK(closed != canceled);
}

TEST_CASE("a queue keeps order and its capacity", "[queue]") {
  ctx::bounded_queue<std::string> q(3);
  CHECK(q.capacity() == 3);
  CHECK_THROWS_AS(ctx::bounded_queue<int>(0), std::invalid_argument);
  const auto c = ctx::background();
  CHECK_FALSE(q.push(c, std::string("a")));
  const std::string b = "b";
  CHECK_FALSE(q.push(c, b));  // copies
  CHECK(b == "b");
  CHECK_FALSE(q.try_push(std::string("c")));
  CHECK(q.size() == 3);
  std::string d = "d";
  CHECK(q.try_push(std::move(d)) == ctx::queue_errc::full);
  CHECK(d == "d");  // not moved from
  std::error_code ec;
  CHECK(q.pop(c, ec) == "a");
  CHECK_FALSE(ec);
  CHECK(q.try_pop(ec) == "b");
  CHECK(q.pop(c, ec) == "c");
  CHECK_FALSE(q.try_pop(ec).has_value());
  CHECK(ec == ctx::queue_errc::empty);
}

TEST_CASE("a cancelled push leaves the item with the caller and the queue unchanged", "[queue]") {
  ctx::bounded_queue<std::unique_ptr<int>> q(1);
  REQUIRE_FALSE(q.try_push(std::make_unique<int>(1)));
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto item = std::make_unique<int>(2);
  std::error_code result;
  std::latch started(1);
  std::thread producer([&, c = c] {
    started.count_down();
    result = q.push(c, std::move(item));
  });
  started.wait();
  cancel();
  producer.join();
  CHECK(result == canceled);
  REQUIRE(item != nullptr);
  CHECK(*item == 2);
  REQUIRE(q.size() == 1);
  std::error_code ec;
  CHECK(**q.try_pop(ec) == 1);
  CHECK_FALSE(q.push(ctx::background(), std::move(item)));  // the queue is usable
  CHECK(item == nullptr);
}

TEST_CASE("a cancelled pop takes nothing and the queue stays usable", "[queue]") {
  ctx::bounded_queue<int> q(2);
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::error_code ec;
  std::optional<int> got;
  std::latch started(1);
  std::thread consumer([&, c = c] {
    started.count_down();
    got = q.pop(c, ec);
  });
  started.wait();
  cancel();
  consumer.join();
  CHECK_FALSE(got.has_value());
  CHECK(ec == canceled);
  CHECK_FALSE(q.push(ctx::background(), 5));
  CHECK(q.pop(ctx::background(), ec) == 5);
}

TEST_CASE("a done context fails at once without touching the queue", "[queue]") {
  ctx::bounded_queue<std::unique_ptr<int>> q(4);
  REQUIRE_FALSE(q.try_push(std::make_unique<int>(1)));
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  auto item = std::make_unique<int>(2);
  CHECK(q.push(c, std::move(item)) == canceled);  // there is room, but the context is done
  CHECK(item != nullptr);
  std::error_code ec;
  CHECK_FALSE(q.pop(c, ec).has_value());  // there is an item, but the context is done
  CHECK(ec == canceled);
  CHECK(q.size() == 1);
}

TEST_CASE("a manual-clock deadline ends a blocked pop and a blocked push", "[queue]") {
  ctx::bounded_queue<int> empty(1);
  ctx::bounded_queue<int> full(1);
  REQUIRE_FALSE(full.try_push(0));
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 5s);
  std::error_code pop_ec, push_ec;
  std::latch started(2);
  std::thread consumer([&, c = c] {
    started.count_down();
    (void)empty.pop(c, pop_ec);
  });
  std::thread producer([&, c = c] {
    started.count_down();
    push_ec = full.push(c, 1);
  });
  started.wait();
  manual::advance(5s);
  consumer.join();
  producer.join();
  CHECK(pop_ec == deadline_exceeded);
  CHECK(push_ec == deadline_exceeded);
  CHECK(full.size() == 1);
}

TEST_CASE("close lets pops drain the queue, then reports closed", "[queue]") {
  ctx::bounded_queue<int> q(4);
  const auto c = ctx::background();
  REQUIRE_FALSE(q.push(c, 1));
  REQUIRE_FALSE(q.push(c, 2));
  q.close();
  q.close();  // again: nothing changes
  CHECK(q.closed());
  int x = 3;
  CHECK(q.push(c, std::move(x)) == closed);
  CHECK(q.try_push(4) == closed);
  std::error_code ec;
  CHECK(q.pop(c, ec) == 1);
  CHECK(q.try_pop(ec) == 2);
  CHECK_FALSE(q.pop(c, ec).has_value());
  CHECK(ec == closed);
  CHECK_FALSE(q.try_pop(ec).has_value());
  CHECK(ec == closed);
}

TEST_CASE("close wakes blocked pushes and pops", "[queue]") {
  ctx::bounded_queue<int> empty(1);
  ctx::bounded_queue<int> full(1);
  REQUIRE_FALSE(full.try_push(0));
  std::error_code pop_ec, push_ec;
  std::latch started(2);
  std::thread consumer([&] {
    started.count_down();
    (void)empty.pop(ctx::background(), pop_ec);
  });
  std::thread producer([&] {
    started.count_down();
    push_ec = full.push(ctx::background(), 1);
  });
  started.wait();
  empty.close();
  full.close();
  consumer.join();
  producer.join();
  CHECK(pop_ec == closed);
  CHECK(push_ec == closed);
  CHECK(full.size() == 1);
}

TEST_CASE("a blocked push completes when a pop makes room", "[queue]") {
  ctx::bounded_queue<int> q(1);
  REQUIRE_FALSE(q.try_push(1));
  std::error_code push_ec = canceled;
  std::thread producer([&] { push_ec = q.push(ctx::background(), 2); });
  std::error_code ec;
  CHECK(q.pop(ctx::background(), ec) == 1);
  CHECK(q.pop(ctx::background(), ec) == 2);
  producer.join();
  CHECK_FALSE(push_ec);
}

TEST_CASE("producers and consumers under cancellation lose and duplicate nothing", "[queue]") {
  constexpr int producers = 4;
  constexpr int per_producer = 2000;
  constexpr int consumers = 4;
  ctx::bounded_queue<int> q(8);
  auto [pc, cancel_producers] = ctx::with_cancel(ctx::background());
  auto [cc, cancel_consumers] = ctx::with_cancel(ctx::background());
  std::vector<int> seen(producers * per_producer, 0);  // consumed or kept, per item
  std::mutex seen_m;
  std::latch halfway(producers);
  std::atomic<int> bad_ends{0};  // consumers that stopped for a reason other than close or cancel
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p)
    threads.emplace_back([&, p, pc = pc] {
      for (int i = 0; i < per_producer; ++i) {
        if (i == per_producer / 2) halfway.count_down();
        int item = p * per_producer + i;
        if (q.push(pc, std::move(item))) {  // failed: the item is still ours
          std::lock_guard g(seen_m);
          ++seen[static_cast<std::size_t>(item)];
        }
      }
    });
  for (int k = 0; k < consumers; ++k)
    threads.emplace_back([&, k, cc = cc] {
      std::error_code ec;
      // Half the consumers stop when cancelled; the rest run until close.
      const ctx::context use = k % 2 ? cc : ctx::background();
      while (auto item = q.pop(use, ec)) {
        std::lock_guard g(seen_m);
        ++seen[static_cast<std::size_t>(*item)];
      }
      if (ec != closed && ec != canceled) bad_ends.fetch_add(1);
    });
  halfway.wait();
  cancel_consumers();
  cancel_producers();
  for (int p = 0; p < producers; ++p) threads[static_cast<std::size_t>(p)].join();
  q.close();
  for (std::size_t t = producers; t < threads.size(); ++t) threads[t].join();
  CHECK(q.size() == 0);
  CHECK(bad_ends.load() == 0);
  int wrong = 0;
  for (int count : seen) wrong += count != 1;
  CHECK(wrong == 0);
}

// An item and a cancel that reach a blocked pop together: the pop either
// returns the item or leaves it in the queue, never takes and drops it. Made
// deterministic: the consumer is blocked inside the wait; a stop callback
// registered after the wait's own (so run before it: libstdc++ runs the
// latest first) pushes the item, so the consumer wakes with the item there
// and the context done.
TEST_CASE("an item and a cancel that arrive together are never lost", "[queue][cancel]") {
  int lost = 0;
  int taken = 0;
  for (int round = 0; round < 50; ++round) {
    ctx::bounded_queue<int> q(4);
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    std::atomic<int> tid{0};
    std::error_code ec;
    std::optional<int> got;
    std::thread consumer([&, c = c] {
      tid = test::this_tid();
      got = q.pop(c, ec);
    });
    while (tid.load() == 0) std::this_thread::yield();
    REQUIRE(test::wait_until_blocked(tid.load(), test::blocked_in_futex));
    {
      std::stop_callback push_first(c.stop_token(), [&q] { (void)q.try_push(round_item); });
      cancel();
    }
    consumer.join();
    if (got) {
      ++taken;
      if (*got != round_item || ec) ++lost;
    } else {
      if (ec != canceled) ++lost;
      std::error_code e2;
      if (q.try_pop(e2) != round_item) ++lost;  // left in the queue
    }
  }
  CHECK(lost == 0);
  CHECK(taken > 0);  // the scene was set: the consumer did wake with the item there
}

TEST_CASE("one cancel wakes 1000 threads blocked in pop on one context", "[queue]") {
  constexpr int n = 1000;
  ctx::bounded_queue<int> q(1);
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::latch started(n);
  std::atomic<int> woke_canceled{0};
  std::vector<std::thread> consumers;
  consumers.reserve(n);
  for (int i = 0; i < n; ++i)
    consumers.emplace_back([&, c = c] {
      started.count_down();
      std::error_code ec;
      if (!q.pop(c, ec) && ec == canceled) woke_canceled.fetch_add(1);
    });
  started.wait();
  cancel();
  for (auto& t : consumers) t.join();
  CHECK(woke_canceled.load() == n);
  CHECK_FALSE(q.try_push(1));  // still usable
  CHECK(q.size() == 1);
}
