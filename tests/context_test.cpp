// SPDX-License-Identifier: MIT
// Single-threaded semantics of <ctx/context.hpp>: derivations, Go's Err/Cause
// truth table, deadlines on the manual clock, values, after_func, bad input.
#include <ctx/ctx.hpp>
#include <ctx/testing.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"

using namespace std::chrono_literals;
using mcontext = ctx::basic_context<manual>;

namespace {

inline constexpr ctx::key<std::string> trace_id{"trace_id"};
inline constexpr ctx::key<int> user{"user"};
inline constexpr ctx::key<int> absent{"absent"};

const std::error_code P = std::make_error_code(std::errc::broken_pipe);
const std::error_code C = std::make_error_code(std::errc::connection_reset);
const std::error_code T = std::make_error_code(std::errc::timed_out);
const std::error_code F = std::make_error_code(std::errc::io_error);
constexpr auto forever = std::chrono::seconds(1'000'000);

}  // namespace

// --- the contract's shape ------------------------------------------------------

TEST_CASE("a context is one pointer wide, copyable and movable", "[context]") {
  STATIC_REQUIRE(sizeof(ctx::context) == sizeof(void*));
  STATIC_REQUIRE(std::is_nothrow_copy_constructible_v<ctx::context>);
  STATIC_REQUIRE(std::is_nothrow_move_constructible_v<ctx::context>);
  STATIC_REQUIRE(std::is_same_v<ctx::context::clock, std::chrono::steady_clock>);
  STATIC_REQUIRE(std::is_same_v<mcontext::duration, manual::duration>);
  STATIC_REQUIRE(std::is_same_v<mcontext::time_point, manual::time_point>);
}

TEST_CASE("every derivation returns the same move-only cancel handle type", "[context]") {
  auto [a, ca] = ctx::with_cancel(ctx::background());
  auto [b, cb] = ctx::with_timeout(ctx::background<manual>(), 1s);
  auto [c, cc] = ctx::with_stop_token(ctx::background(), std::stop_token{});
  STATIC_REQUIRE(std::is_same_v<decltype(ca), ctx::cancel_handle>);
  STATIC_REQUIRE(std::is_same_v<decltype(cb), ctx::cancel_handle>);
  STATIC_REQUIRE(std::is_same_v<decltype(cc), ctx::cancel_handle>);
  STATIC_REQUIRE_FALSE(std::is_copy_constructible_v<ctx::cancel_handle>);
  STATIC_REQUIRE(std::is_nothrow_move_constructible_v<ctx::cancel_handle>);
}

TEST_CASE("derived defaults to the steady clock as basic_context does", "[context]") {
  STATIC_REQUIRE(std::is_same_v<ctx::derived<>, ctx::derived<std::chrono::steady_clock>>);
  STATIC_REQUIRE(std::is_same_v<ctx::derived<>, decltype(ctx::with_cancel(ctx::context{}))>);
  ctx::derived<> d = ctx::with_cancel(ctx::background());
  d.cancel();
  CHECK(d.context.err() == canceled);
}

TEST_CASE("background and todo are never done and have no deadline", "[context]") {
  for (const ctx::context& c : {ctx::background(), ctx::todo(), ctx::context{}}) {
    CHECK_FALSE(c.done());
    CHECK(c.err() == std::error_code{});
    CHECK(c.cause() == std::error_code{});
    CHECK_FALSE(c.deadline().has_value());
    CHECK(c.remaining() == ctx::context::duration::max());
    CHECK_FALSE(c.stop_token().stop_possible());
    CHECK(c.value(absent) == nullptr);
    CHECK_NOTHROW(c.throw_if_done());
  }
}

// --- cancellation ----------------------------------------------------------------

TEST_CASE("cancel makes a context done with canceled", "[cancel]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  CHECK_FALSE(c.done());
  CHECK(c.err() == std::error_code{});
  cancel();
  CHECK(c.done());
  CHECK(c.err() == canceled);
  CHECK(c.cause() == canceled);
}

TEST_CASE("cancel reaches every descendant before it returns", "[cancel]") {
  auto [root, cancel] = ctx::with_cancel(ctx::background());
  auto [a, ca] = ctx::with_cancel(root);
  auto v = ctx::with_value(a, user, 7);
  auto [b, cb] = ctx::with_timeout(v, 1h);
  auto d = ctx::without_cancel(b);
  auto [e, ce] = ctx::with_cancel(d);
  cancel(P);
  for (const ctx::context* c : {&root, &a, &v, &b}) {
    CHECK(c->done());
    CHECK(c->err() == canceled);
    CHECK(c->cause() == P);
  }
  CHECK_FALSE(d.done());
  CHECK_FALSE(e.done());
  CHECK(*e.value(user) == 7);
}

TEST_CASE("destroying the handle cancels", "[cancel]") {
  ctx::context c;
  {
    auto [child, cancel] = ctx::with_cancel(ctx::background());
    c = child;
  }
  CHECK(c.done());
  CHECK(c.err() == canceled);
}

TEST_CASE("the first cancel wins and later ones change nothing", "[cancel]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel(P);
  cancel(C);
  cancel();
  CHECK(c.err() == canceled);
  CHECK(c.cause() == P);
}

TEST_CASE("a handle can cancel after every copy of the context is gone", "[cancel]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto [child, child_cancel] = ctx::with_cancel(c);
  c = ctx::context{};
  cancel(P);
  CHECK(child.done());
  CHECK(child.cause() == P);
}

TEST_CASE("moved-from and default handles do nothing", "[cancel]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  ctx::cancel_handle moved = std::move(cancel);
  CHECK_FALSE(static_cast<bool>(cancel));  // NOLINT(bugprone-use-after-move): defined behaviour
  CHECK(static_cast<bool>(moved));
  cancel();
  cancel(P);
  CHECK_FALSE(c.done());
  ctx::cancel_handle none;
  none();
  moved = std::move(none);  // the handle that was there cancels
  CHECK(c.done());
}

TEST_CASE("a moved-from context is background", "[context]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  ctx::context d = std::move(c);
  cancel();
  CHECK(d.done());
  CHECK_FALSE(c.done());  // NOLINT(bugprone-use-after-move): defined behaviour
  CHECK(c.err() == std::error_code{});
}

TEST_CASE("a cancelled child leaves its parent, and so does a destroyed one", "[cancel]") {
  auto [parent, cancel] = ctx::with_cancel(ctx::background());
  for (int i = 0; i < 1000; ++i) {
    auto [c, cc] = ctx::with_cancel(parent);
    if (i % 2) cc();
  }
  // Only white-box access can see the list; it must be empty.
  const auto* node = static_cast<const ctx::detail::cancel_node*>(ctx::detail::access::of(parent));
  CHECK(node->first_child == nullptr);
}

TEST_CASE("throw_if_done throws ctx::error with err and cause", "[cancel]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  CHECK_NOTHROW(c.throw_if_done());
  cancel(P);
  try {
    c.throw_if_done();
    FAIL("did not throw");
  } catch (const ctx::error& e) {
    CHECK(e.code() == canceled);
    CHECK(e.cause() == P);
  }
}

TEST_CASE("wait returns once the context is done", "[cancel]") {
  auto c_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
  auto& c = c_cancel.context;
  auto& cancel = c_cancel.cancel;
  std::thread t([&cancel] { cancel(); });
  c.wait();
  CHECK(c.done());
  t.join();
  c.wait();  // done already: returns at once
}

// --- Go's TestCause, row for row ------------------------------------------

TEST_CASE("truth table: background and todo", "[truth]") {
  CHECK(ctx::background().err() == std::error_code{});
  CHECK(ctx::background().cause() == std::error_code{});
  CHECK(ctx::todo().err() == std::error_code{});
  CHECK(ctx::todo().cause() == std::error_code{});
}

TEST_CASE("truth table: with_cancel rows", "[truth]") {
  SECTION("cancel()") {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    cancel();
    CHECK(c.err() == canceled);
    CHECK(c.cause() == canceled);
  }
  SECTION("cancel(P)") {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    cancel(P);
    CHECK(c.err() == canceled);
    CHECK(c.cause() == P);
  }
  SECTION("cancel({})") {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    cancel(std::error_code{});
    CHECK(c.err() == canceled);
    CHECK(c.cause() == canceled);
  }
}

TEST_CASE("truth table: parent and child with_cancel", "[truth]") {
  auto [p, pc] = ctx::with_cancel(ctx::background());
  auto [c, cc] = ctx::with_cancel(p);
  SECTION("parent(P) then child(C)") {
    pc(P);
    cc(C);
    CHECK(c.err() == canceled);
    CHECK(c.cause() == P);
  }
  SECTION("child(C) then parent(P)") {
    cc(C);
    pc(P);
    CHECK(c.err() == canceled);
    CHECK(c.cause() == C);
  }
  SECTION("parent(P) then child()") {
    pc(P);
    cc();
    CHECK(c.err() == canceled);
    CHECK(c.cause() == P);
  }
  SECTION("child() then parent(P)") {
    cc();
    pc(P);
    CHECK(c.err() == canceled);
    CHECK(c.cause() == canceled);
  }
  SECTION("parent() then child(C)") {
    pc();
    cc(C);
    CHECK(c.err() == canceled);
    CHECK(c.cause() == canceled);
  }
  SECTION("child(C) then parent()") {
    cc(C);
    pc();
    CHECK(c.err() == canceled);
    CHECK(c.cause() == C);
  }
}

TEST_CASE("truth table: with_timeout rows", "[truth]") {
  SECTION("timeout 0 then cancel()") {
    auto [c, cancel] = ctx::with_timeout(ctx::background(), 0s);
    cancel();
    CHECK(c.err() == deadline_exceeded);
    CHECK(c.cause() == deadline_exceeded);
  }
  SECTION("timeout forever then cancel()") {
    auto [c, cancel] = ctx::with_timeout(ctx::background(), forever);
    cancel();
    CHECK(c.err() == canceled);
    CHECK(c.cause() == canceled);
  }
  SECTION("timeout 0 with cause T then cancel()") {
    auto [c, cancel] = ctx::with_timeout(ctx::background(), 0s, T);
    cancel();
    CHECK(c.err() == deadline_exceeded);
    CHECK(c.cause() == T);
  }
  SECTION("timeout forever with cause T then cancel()") {
    auto [c, cancel] = ctx::with_timeout(ctx::background(), forever, T);
    cancel();
    CHECK(c.err() == canceled);
    CHECK(c.cause() == canceled);
  }
  SECTION("parent with_cancel; child timeout 0 with T; parent(F)") {
    auto [p, pc] = ctx::with_cancel(ctx::background());
    auto [c, cc] = ctx::with_timeout(p, 0s, T);
    pc(F);
    CHECK(c.err() == deadline_exceeded);
    CHECK(c.cause() == T);
  }
  SECTION("parent with_cancel; child timeout forever with T; parent(F)") {
    auto [p, pc] = ctx::with_cancel(ctx::background());
    auto [c, cc] = ctx::with_timeout(p, forever, T);
    pc(F);
    CHECK(c.err() == canceled);
    CHECK(c.cause() == F);
  }
}

TEST_CASE("truth table: without_cancel rows", "[truth]") {
  SECTION("without_cancel(background)") {
    auto c = ctx::without_cancel(ctx::background());
    CHECK(c.err() == std::error_code{});
    CHECK(c.cause() == std::error_code{});
  }
  SECTION("without_cancel(p), parent(F)") {
    auto [p, pc] = ctx::with_cancel(ctx::background());
    auto c = ctx::without_cancel(p);
    pc(F);
    CHECK(c.err() == std::error_code{});
    CHECK(c.cause() == std::error_code{});
  }
  SECTION("without_cancel(with_timeout(bg, 0, T)), cancel()") {
    auto [p, pc] = ctx::with_timeout(ctx::background(), 0s, T);
    auto c = ctx::without_cancel(p);
    pc();
    CHECK(c.err() == std::error_code{});
    CHECK(c.cause() == std::error_code{});
  }
}

// --- born done -------------------------------------------------------------------

TEST_CASE("a child of a done parent is born done with the parent's err and cause", "[cancel]") {
  auto [p, pc] = ctx::with_timeout(ctx::background(), 0s, T);
  auto [a, ca] = ctx::with_cancel(p);
  auto [b, cb] = ctx::with_timeout(p, 1h, C);
  auto [d, cd] = ctx::with_stop_token(p, std::stop_token{});
  auto v = ctx::with_value(p, user, 1);
  for (const ctx::context* c : {&a, &b, &d, &v}) {
    CHECK(c->done());
    CHECK(c->err() == deadline_exceeded);
    CHECK(c->cause() == T);
  }
}

TEST_CASE("a child takes its parent's err: a with_cancel child of a timed-out parent", "[deadline]") {
  auto [p, pc] = ctx::with_timeout(ctx::background<manual>(), 1s, T);
  auto [c, cc] = ctx::with_cancel(p);
  manual::advance(1s);
  CHECK(c.err() == deadline_exceeded);
  CHECK(c.cause() == T);
}

// --- deadlines on the manual clock -----------------------------------------------

TEST_CASE("a deadline fires exactly when the manual clock reaches it", "[deadline]") {
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 5s);
  const auto end = manual::now() + 5s;
  CHECK(c.deadline() == end);
  CHECK(c.remaining() == 5s);
  manual::advance(5s - 1ns);
  CHECK_FALSE(c.done());
  CHECK(c.remaining() == 1ns);
  manual::advance(1ns);
  CHECK(c.done());
  CHECK(c.err() == deadline_exceeded);
  CHECK(c.cause() == deadline_exceeded);
  CHECK(c.remaining() == manual::duration::zero());
  CHECK(c.deadline() == end);
}

TEST_CASE("the deadline's cause is recorded only when its timer fires", "[deadline]") {
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 1s, T);
  CHECK(c.cause() == std::error_code{});
  manual::advance(1s);
  CHECK(c.cause() == T);
  cancel(P);
  CHECK(c.cause() == T);
}

TEST_CASE("the effective deadline is the earliest on the chain", "[deadline]") {
  auto root = ctx::background<manual>();
  auto [outer, co] = ctx::with_timeout(root, 2s, P);
  auto [later, cl] = ctx::with_timeout(outer, 10s, T);
  auto [earlier, ce] = ctx::with_timeout(outer, 1s, C);
  auto [equal, cq] = ctx::with_deadline(outer, *outer.deadline(), T);
  CHECK(later.deadline() == outer.deadline());
  CHECK(equal.deadline() == outer.deadline());
  CHECK(earlier.deadline() == manual::now() + 1s);
  auto v = ctx::with_value(earlier, user, 3);
  CHECK(v.deadline() == earlier.deadline());

  manual::advance(1s);
  CHECK(earlier.done());
  CHECK(earlier.cause() == C);
  CHECK(v.done());
  CHECK_FALSE(outer.done());
  manual::advance(1s);
  CHECK(outer.done());
  CHECK(later.err() == deadline_exceeded);
  CHECK(later.cause() == P);  // its own deadline never fired: it inherited the parent's
  CHECK(equal.cause() == P);
}

TEST_CASE("timeouts saturate: zero and negative are expired, max never overflows", "[deadline]") {
  auto root = ctx::background<manual>();
  SECTION("zero") {
    auto [c, cancel] = ctx::with_timeout(root, 0s);
    CHECK(c.err() == deadline_exceeded);
    CHECK(c.deadline() == manual::now());
  }
  SECTION("negative") {
    auto [c, cancel] = ctx::with_timeout(root, -5min, T);
    CHECK(c.err() == deadline_exceeded);
    CHECK(c.cause() == T);
  }
  SECTION("duration::max of the clock") {
    auto [c, cancel] = ctx::with_timeout(root, manual::duration::max());
    CHECK_FALSE(c.done());
    CHECK(c.deadline() == manual::time_point::max());
    CHECK(c.remaining() > 100'000h);
  }
  SECTION("hours::max and a floating-point duration overflowing nanoseconds") {
    auto [a, ca] = ctx::with_timeout(root, std::chrono::hours::max());
    auto [b, cb] = ctx::with_timeout(root, std::chrono::duration<double>(1e300));
    CHECK(a.deadline() == manual::time_point::max());
    CHECK(b.deadline() == manual::time_point::max());
    CHECK_FALSE(a.done());
    CHECK_FALSE(b.done());
  }
  SECTION("at the boundary: the most whole hours that fit are exact, one more saturates") {
    const auto headroom = manual::time_point::max() - manual::now();
    const auto h = std::chrono::floor<std::chrono::hours>(headroom);
    REQUIRE(std::chrono::duration_cast<manual::duration>(h) < headroom);
    auto [a, ca] = ctx::with_timeout(root, h);
    auto [b, cb] = ctx::with_timeout(root, h + 1h);
    CHECK(a.deadline() == manual::now() + std::chrono::duration_cast<manual::duration>(h));
    CHECK(b.deadline() == manual::time_point::max());
  }
  SECTION("sub-tick timeouts round up, never fire early") {
    auto [c, cancel] = ctx::with_timeout(root, std::chrono::duration<long long, std::pico>(1500));
    CHECK(c.deadline() == manual::now() + 2ns);
  }
}

TEST_CASE("deadlines at the extremes of time_point", "[deadline]") {
  auto root = ctx::background<manual>();
  SECTION("time_point::max never fires") {
    auto [c, cancel] = ctx::with_deadline(root, manual::time_point::max());
    manual::advance(1000h);
    CHECK_FALSE(c.done());
  }
  SECTION("a deadline in the past is born done") {
    manual::advance(1s);
    auto [c, cancel] = ctx::with_deadline(root, manual::now() - 1ns, T);
    CHECK(c.err() == deadline_exceeded);
    CHECK(c.cause() == T);
    auto [d, cd] = ctx::with_deadline(root, manual::time_point::min());
    CHECK(d.err() == deadline_exceeded);
  }
  SECTION("a coarser time_point type converts, saturating") {
    using hours_tp = std::chrono::time_point<manual, std::chrono::hours>;
    auto [c, cancel] = ctx::with_deadline(root, hours_tp::max());
    CHECK(c.deadline() == manual::time_point::max());
  }
}

TEST_CASE("cancel before the deadline removes the timer and records canceled", "[deadline]") {
  auto& timers = ctx::detail::timer_service<manual>::instance();
  const auto before = timers.pending();
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 1h, T);
  CHECK(timers.pending() == before + 1);
  cancel();
  CHECK(timers.pending() == before);
  manual::advance(2h);
  CHECK(c.err() == canceled);
  CHECK(c.cause() == canceled);
}

TEST_CASE("a parent's cancel removes its descendants' timers", "[deadline]") {
  auto& timers = ctx::detail::timer_service<manual>::instance();
  const auto before = timers.pending();
  auto [p, pc] = ctx::with_cancel(ctx::background<manual>());
  std::vector<mcontext> kids;
  std::vector<ctx::cancel_handle> handles;
  for (int i = 0; i < 100; ++i) {
    auto [c, h] = ctx::with_timeout(p, std::chrono::seconds(100 + i));
    kids.push_back(c);
    handles.push_back(std::move(h));
  }
  CHECK(timers.pending() == before + 100);
  pc();
  CHECK(timers.pending() == before);
}

TEST_CASE("timers fire in deadline order", "[deadline]") {
  std::vector<int> order;
  std::vector<ctx::registration> regs;
  std::vector<ctx::cancel_handle> handles;
  auto root = ctx::background<manual>();
  for (int i : {3, 1, 4, 2, 5}) {
    auto [c, h] = ctx::with_timeout(root, std::chrono::seconds(i));
    regs.push_back(ctx::after_func(c, [&order, i] { order.push_back(i); }));
    handles.push_back(std::move(h));
  }
  manual::advance(10s);
  CHECK(order == std::vector<int>{1, 2, 3, 4, 5});
}

TEST_CASE("manual_clock rejects time going backwards", "[deadline]") {
  CHECK_THROWS_AS(manual::advance(-1ns), std::invalid_argument);
  CHECK_THROWS_AS(manual::set(manual::now() - 1ns), std::invalid_argument);
  CHECK_NOTHROW(manual::set(manual::now()));
}

// --- the real timer service ---------------------------------------------------

TEST_CASE("a real deadline fires on time, within a generous bound", "[deadline][real]") {
  const auto start = std::chrono::steady_clock::now();
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 50ms);
  c.wait();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(c.err() == deadline_exceeded);
  CHECK(elapsed >= 50ms);
  CHECK(elapsed < 5s);
}

TEST_CASE("an earlier deadline added later wakes the timer thread", "[deadline][real]") {
  // The timer thread must be asleep on the later deadline when the earlier
  // one arrives (else it finds the earlier one when it next looks anyway, and
  // a thread woken only when idle would pass): wait until it went to sleep
  // on it, after it was added.
  auto& timers = ctx::detail::timer_service<std::chrono::steady_clock>::instance();
  const auto before = timers.last_sleep().count;
  auto late_d = ctx::with_timeout(ctx::background(), 1h);  // clang 14 cannot capture structured bindings
  const auto late_deadline = *late_d.context.deadline();
  const auto asleep_on_late = [&] {
    const auto s = timers.last_sleep();
    return s.count > before && s.until == late_deadline;
  };
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  while (!asleep_on_late() && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
  REQUIRE(asleep_on_late());
  const auto start = std::chrono::steady_clock::now();
  auto [soon, cs] = ctx::with_timeout(ctx::background(), 20ms);
  // Bounded: a timer thread left asleep would make this wait an hour.
  std::promise<void> fired;
  auto reg = ctx::after_func(soon, [&fired] { fired.set_value(); });
  CHECK(fired.get_future().wait_for(10s) == std::future_status::ready);
  CHECK(std::chrono::steady_clock::now() - start < 10s);
  CHECK_FALSE(late_d.context.done());
}

TEST_CASE("deadline firing requests stop on the context's stop token", "[deadline][real]") {
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 10ms);
  std::stop_token tok = c.stop_token();
  std::atomic<bool> stopped{false};
  std::stop_callback cb(tok, [&] {
    stopped = true;
    stopped.notify_all();
  });
  stopped.wait(false);
  CHECK(c.done());
}

// --- values ----------------------------------------------------------------------

TEST_CASE("values are found up the chain, the nearest wins", "[value]") {
  auto a = ctx::with_value(ctx::background(), trace_id, std::string("abc"));
  auto [b, cb] = ctx::with_cancel(a);
  auto c = ctx::with_value(b, user, 42);
  auto d = ctx::with_value(c, user, 43);
  REQUIRE(d.value(trace_id) != nullptr);
  CHECK(*d.value(trace_id) == "abc");
  CHECK(*d.value(user) == 43);
  CHECK(*c.value(user) == 42);
  CHECK(a.value(user) == nullptr);
  CHECK(d.value(absent) == nullptr);
  cb();
  CHECK(*d.value(user) == 43);  // values survive cancellation
}

TEST_CASE("a value lives as long as a context that carries it", "[value]") {
  const std::string* p = nullptr;
  ctx::context keep;
  {
    auto v = ctx::with_value(ctx::background(), trace_id, std::string(100, 'x'));
    keep = ctx::without_cancel(v);
    p = keep.value(trace_id);
  }
  REQUIRE(p != nullptr);
  CHECK(*p == std::string(100, 'x'));
}

TEST_CASE("with_value accepts anything T is constructible from, and move-only T", "[value]") {
  static constexpr ctx::key<std::unique_ptr<int>> owned{"owned"};
  auto c = ctx::with_value(ctx::background(), owned, std::make_unique<int>(5));
  REQUIRE(c.value(owned) != nullptr);
  CHECK(**c.value(owned) == 5);
  auto s = ctx::with_value(ctx::background(), trace_id, "literal");
  CHECK(*s.value(trace_id) == "literal");
}

TEST_CASE("a value miss through many layers, colliding key bits included", "[value]") {
  static const ctx::key<int> keys[80] = {
#define CTX_K ctx::key<int>{"k"}
      CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K,
      CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K,
      CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K,
      CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K,
      CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K,
      CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K, CTX_K,
#undef CTX_K
  };
  ctx::context c;
  for (int i = 0; i < 40; ++i) c = ctx::with_value(c, keys[i], i);
  for (int i = 0; i < 40; ++i) CHECK(*c.value(keys[i]) == i);
  for (int i = 40; i < 80; ++i) CHECK(c.value(keys[i]) == nullptr);
}

// --- without_cancel ------------------------------------------------------------

TEST_CASE("without_cancel keeps values and drops cancel and deadline", "[detach]") {
  auto [p, pc] = ctx::with_timeout(ctx::background<manual>(), 1s);
  auto v = ctx::with_value(p, user, 9);
  auto d = ctx::without_cancel(v);
  CHECK_FALSE(d.deadline().has_value());
  CHECK_FALSE(d.stop_token().stop_possible());
  manual::advance(1s);
  CHECK(v.done());
  CHECK_FALSE(d.done());
  CHECK(*d.value(user) == 9);
  auto [own, oc] = ctx::with_timeout(d, 5s);  // detached work gets its own timeout
  CHECK(own.deadline() == manual::now() + 5s);
  manual::advance(5s);
  CHECK(own.err() == deadline_exceeded);
}

// --- stop tokens -------------------------------------------------------------------

TEST_CASE("stop_token is requested on cancel, and born requested when done", "[stop_token]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::stop_token tok = c.stop_token();
  CHECK(tok.stop_possible());
  CHECK_FALSE(tok.stop_requested());
  bool called = false;
  std::stop_callback cb(tok, [&] { called = true; });
  cancel();
  CHECK(tok.stop_requested());
  CHECK(called);
  CHECK(c.stop_token().stop_requested());

  auto [d, dc] = ctx::with_cancel(ctx::background());
  dc();
  CHECK(d.stop_token().stop_requested());  // first asked for after the cancel
}

TEST_CASE("value contexts share their cancelable ancestor's stop token", "[stop_token]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto v = ctx::with_value(c, user, 1);
  std::stop_token tok = v.stop_token();
  cancel();
  CHECK(tok.stop_requested());
}

TEST_CASE("with_stop_token is done when the token or the parent is", "[stop_token]") {
  SECTION("the token") {
    std::stop_source src;
    auto [p, pc] = ctx::with_cancel(ctx::background());
    auto [c, cancel] = ctx::with_stop_token(p, src.get_token());
    CHECK_FALSE(c.done());
    src.request_stop();
    CHECK(c.done());
    CHECK(c.err() == canceled);
    CHECK_FALSE(p.done());
  }
  SECTION("the parent") {
    std::stop_source src;
    auto [p, pc] = ctx::with_cancel(ctx::background());
    auto [c, cancel] = ctx::with_stop_token(p, src.get_token());
    pc(P);
    CHECK(c.cause() == P);
  }
  SECTION("a token already stopped") {
    std::stop_source src;
    src.request_stop();
    auto [c, cancel] = ctx::with_stop_token(ctx::background(), src.get_token());
    CHECK(c.err() == canceled);
  }
  SECTION("a token that can never stop") {
    auto [c, cancel] = ctx::with_stop_token(ctx::background(), std::stop_token{});
    CHECK_FALSE(c.done());
    cancel();
    CHECK(c.done());
  }
  SECTION("the source outlives the context") {
    std::stop_source src;
    { auto [c, cancel] = ctx::with_stop_token(ctx::background(), src.get_token()); }
    src.request_stop();  // the context and its callback are gone: nothing happens
  }
}

TEST_CASE("contexts plug into std::jthread", "[stop_token]") {
  std::atomic<bool> saw_stop{false};
  {
    std::jthread worker([&](std::stop_token st) {
      auto [c, cancel] = ctx::with_stop_token(ctx::background(), st);
      c.wait();
      saw_stop = c.err() == ctx::errc::canceled;
    });
  }  // jthread requests stop and joins
  CHECK(saw_stop);
}

// --- after_func ------------------------------------------------------------------

TEST_CASE("after_func runs once when the context is done", "[after_func]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  int runs = 0;
  auto reg = ctx::after_func(c, [&] { ++runs; });
  CHECK(runs == 0);
  cancel();
  CHECK(runs == 1);
  cancel();
  CHECK(runs == 1);
  CHECK_FALSE(reg.stop());
}

TEST_CASE("after_func on a done context runs at once on this thread", "[after_func]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  std::thread::id ran_on;
  auto reg = ctx::after_func(c, [&] { ran_on = std::this_thread::get_id(); });
  CHECK(ran_on == std::this_thread::get_id());
  CHECK_FALSE(reg.stop());
}

TEST_CASE("stop prevents the callback, once", "[after_func]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  int runs = 0;
  auto reg = ctx::after_func(c, [&] { ++runs; });
  CHECK(reg.stop());
  CHECK_FALSE(reg.stop());
  cancel();
  CHECK(runs == 0);
}

TEST_CASE("destroying the registration deregisters the callback", "[after_func]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  int runs = 0;
  {
    auto reg = ctx::after_func(c, [&] { ++runs; });
  }
  cancel();
  CHECK(runs == 0);
}

TEST_CASE("after_func on a never-done context never runs and stop is true once", "[after_func]") {
  int runs = 0;
  auto reg = ctx::after_func(ctx::background(), [&] { ++runs; });
  auto reg2 = ctx::after_func(ctx::without_cancel(ctx::background()), [&] { ++runs; });
  CHECK(reg.stop());
  CHECK_FALSE(reg.stop());
  CHECK(runs == 0);
  ctx::registration empty;
  CHECK_FALSE(empty.stop());
}

TEST_CASE("after_func fires for deadlines on the thread that moves the clock", "[after_func]") {
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 1s);
  std::thread::id ran_on;
  auto reg = ctx::after_func(c, [&] { ran_on = std::this_thread::get_id(); });
  manual::advance(1s);
  CHECK(ran_on == std::this_thread::get_id());
}

TEST_CASE("a callback may cancel and derive contexts", "[after_func]") {
  auto a_ca = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
  auto& a = a_ca.context;
  auto& ca = a_ca.cancel;
  auto b_cb = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
  auto& b = b_cb.context;
  auto& cb = b_cb.cancel;
  ctx::context born;
  auto reg = ctx::after_func(a, [&] {
    cb(P);
    auto [child, cc] = ctx::with_cancel(a);
    born = child;
    ca(C);  // the context being cancelled: no effect, no deadlock
  });
  ca();
  CHECK(b.cause() == P);
  CHECK(born.done());
  CHECK(a.cause() == canceled);
}

TEST_CASE("a callback may destroy its own registration", "[after_func]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto reg = std::make_unique<ctx::registration>();
  int runs = 0;
  *reg = ctx::after_func(c, [&] {
    ++runs;
    reg.reset();
  });
  cancel();
  CHECK(runs == 1);
  CHECK(reg == nullptr);
}

TEST_CASE("a callback may drop the last reference to its context", "[after_func]") {
  auto holder = std::make_unique<ctx::context>();
  ctx::cancel_handle cancel;
  {
    auto d = ctx::with_cancel(ctx::background());
    *holder = d.context;
    cancel = std::move(d.cancel);
  }
  bool ran = false;
  auto reg = ctx::after_func(*holder, [&] {
    holder.reset();
    ran = true;
  });
  cancel();
  CHECK(ran);
}

namespace {

/// A context made and registered inside a callback, on the memory a node
/// freed too early would be reused from (the per-thread node cache): a
/// cancel still touching the freed node would run this callback.
struct bystander {
  ctx::context c;
  ctx::cancel_handle cancel;
  ctx::registration reg;
  int runs = 0;
  void make() {
    auto d = ctx::with_cancel(ctx::background());
    reg = ctx::after_func(d.context, [this] { ++runs; });
    c = std::move(d.context);
    cancel = std::move(d.cancel);
  }
};

}  // namespace

// Regression (issue 9, bug 1): the handle and the registration held the last
// two references, the callback destroyed both, and the cancel kept using the
// freed node (under ASan a heap-use-after-free; without it, the next node from
// the cache had its callback run by a cancel nobody made).
TEST_CASE("a callback may destroy the handle whose call is running it and its own registration",
          "[after_func]") {
  struct owner {
    ctx::cancel_handle cancel;
    ctx::registration reg;
  };
  for (const bool with_cause : {false, true}) {
    auto o = std::make_unique<owner>();
    bystander other;
    int runs = 0;
    {
      auto d = ctx::with_cancel(ctx::background());
      o->cancel = std::move(d.cancel);
      o->reg = ctx::after_func(d.context, [&o, &other, &runs] {
        auto& next = other;  // the closure dies with o->reg: take what is needed first
        auto& count = runs;
        ++count;
        o.reset();  // the last two references: the handle being called and this registration
        next.make();
      });
    }  // the context itself is gone
    if (with_cause)
      o->cancel(P);
    else
      o->cancel();
    CHECK(runs == 1);
    CHECK(o == nullptr);
    CHECK(other.runs == 0);
    CHECK_FALSE(other.c.done());
  }
}

TEST_CASE("a stop callback may destroy the handle whose call is running it and the last context",
          "[stop_token]") {
  struct owner;
  struct on_stop {
    std::unique_ptr<owner>* self;
    bystander* other;
    void operator()() const noexcept {
      auto* next = other;
      self->reset();  // destroys this stop callback, the last context and the handle being called
      next->make();
    }
  };
  struct owner {
    ctx::context c;
    ctx::cancel_handle cancel;
    std::optional<std::stop_callback<on_stop>> cb;
  };
  auto o = std::make_unique<owner>();
  bystander other;
  {
    auto d = ctx::with_cancel(ctx::background());
    o->c = std::move(d.context);
    o->cancel = std::move(d.cancel);
  }
  o->cb.emplace(o->c.stop_token(), on_stop{&o, &other});
  o->cancel();
  CHECK(o == nullptr);
  CHECK(other.runs == 0);
  CHECK_FALSE(other.c.done());
}

TEST_CASE("the callable is destroyed with the registration", "[after_func]") {
  auto token = std::make_shared<int>(1);
  std::weak_ptr<int> watch = token;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  {
    auto reg = ctx::after_func(c, [t = std::move(token)] {});
    CHECK_FALSE(watch.expired());
  }
  CHECK(watch.expired());
}

TEST_CASE("a registration can be moved and the moved-to one owns the callback", "[after_func]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  int runs = 0;
  ctx::registration outer;
  {
    auto reg = ctx::after_func(c, [&] { ++runs; });
    outer = std::move(reg);
  }
  cancel();
  CHECK(runs == 1);
}

// --- robustness by construction -------------------------------------------------

TEST_CASE("cancelling and destroying a million-deep chain uses bounded stack", "[deep]") {
  constexpr int depth = 1'000'000;
  auto [root, cancel] = ctx::with_cancel(ctx::background());
  std::vector<ctx::cancel_handle> handles;
  handles.reserve(depth);
  ctx::context leaf = root;
  for (int i = 0; i < depth; ++i) {
    auto [c, h] = ctx::with_cancel(leaf);
    leaf = std::move(c);
    handles.push_back(std::move(h));
  }
  cancel(P);
  CHECK(leaf.done());
  CHECK(leaf.cause() == P);
  handles.clear();
  leaf = ctx::context{};  // destroys a million nodes, iteratively
}

TEST_CASE("dropping a million-deep chain of values and detached nodes uses bounded stack", "[deep]") {
  ctx::context leaf;
  for (int i = 0; i < 1'000'000; ++i)
    leaf = (i % 2) ? ctx::with_value(leaf, user, i) : ctx::without_cancel(leaf);
  CHECK(*leaf.value(user) == 999'999);
  leaf = ctx::context{};
}

TEST_CASE("contexts work on any clock, system_clock included", "[deadline][real]") {
  auto [c, cancel] = ctx::with_timeout(ctx::background<std::chrono::system_clock>(), 10ms);
  STATIC_REQUIRE(std::is_same_v<decltype(c)::time_point, std::chrono::system_clock::time_point>);
  c.wait();
  CHECK(c.err() == deadline_exceeded);
}

namespace {

/// steady_clock's time, with a now() that derives and cancels a deadline on
/// this clock when called on the timer thread: user code that takes the
/// timer service's mutex.
struct reentrant_clock {
  using duration = std::chrono::steady_clock::duration;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<reentrant_clock>;
  [[maybe_unused]] static constexpr bool is_steady = true;
  static inline std::atomic<std::thread::id> timer_thread{};
  static time_point now() {
    thread_local bool inside = false;
    if (!inside && std::this_thread::get_id() == timer_thread.load()) {
      inside = true;
      auto [c, cancel] = ctx::with_timeout(ctx::background<reentrant_clock>(), 1h);  // schedule, then remove
      inside = false;
    }
    return time_point(std::chrono::steady_clock::now().time_since_epoch());
  }
};

}  // namespace

// The timer thread read a user clock's now() while holding the service's
// mutex: a now() that derives a deadline on its own clock deadlocked it (and
// a fork() would have waited for any now() that blocks).
TEST_CASE("the timer thread calls a user clock's now without holding its lock", "[deadline][real]") {
  std::promise<std::thread::id> fired_on;
  auto [first, c1] = ctx::with_timeout(ctx::background<reentrant_clock>(), 1ms);
  auto r1 = ctx::after_func(first, [&fired_on] { fired_on.set_value(std::this_thread::get_id()); });
  auto on = fired_on.get_future();
  REQUIRE(on.wait_for(10s) == std::future_status::ready);
  reentrant_clock::timer_thread = on.get();  // from now on, its now() reenters the service
  std::promise<void> fired;
  auto [second, c2] = ctx::with_timeout(ctx::background<reentrant_clock>(), 20ms);
  auto r2 = ctx::after_func(second, [&fired] { fired.set_value(); });
  CHECK(fired.get_future().wait_for(10s) == std::future_status::ready);
  reentrant_clock::timer_thread = std::thread::id{};
}

TEST_CASE("ctx::error can be made from an error alone", "[cancel]") {
  const ctx::error e(ctx::errc::canceled);
  CHECK(e.code() == canceled);
  CHECK(e.cause() == canceled);
}
