// SPDX-License-Identifier: MIT
// <ctx/inspect.hpp>: sites, kinds, references from outside the tree, the
// zombie report, and the registry under concurrent derive, cancel and destroy.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <ctx/ctx.hpp>
#include <ctx/detach.hpp>
#include <ctx/inspect.hpp>
#include <ctx/sleep.hpp>
#include <ctx/task_group.hpp>
#include <ctx/testing.hpp>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <latch>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"
#include "support/temp_dir.hpp"

using namespace std::chrono_literals;
namespace inspect = ctx::inspect;

namespace {

inline constexpr ctx::key<std::string> token{"token"};
inline constexpr ctx::key<long> user{"user"};

/// Inspection on for one test, and off again after it.
struct inspection_on {
  inspection_on() { inspect::enable(); }
  ~inspection_on() { inspect::enable(false); }
  inspection_on(const inspection_on&) = delete;
  inspection_on& operator=(const inspection_on&) = delete;
};

/// The tracked context made at `line` of this file, if exactly one is alive.
std::optional<inspect::context_info> made_at(std::uint_least32_t line) {
  std::optional<inspect::context_info> found;
  int n = 0;
  for (auto& i : inspect::live())
    if (i.site.line() == line && std::string_view(i.site.file_name()).ends_with("inspect_test.cpp")) {
      found = i;
      ++n;
    }
  if (n != 1) return std::nullopt;
  return found;
}

bool is_zombie_at(std::uint_least32_t line) {
  for (auto& z : inspect::zombies(0ns))
    if (z.site.line() == line && std::string_view(z.site.file_name()).ends_with("inspect_test.cpp"))
      return true;
  return false;
}

}  // namespace

TEST_CASE("every derivation records its caller's line and its kind", "[inspect]") {
  inspection_on on;
  const ctx::context bg;
  std::stop_source src;
  // clang-format off
  auto [c1, h1] = ctx::with_cancel(bg); const auto l1 = __LINE__;
  auto [c2, h2] = ctx::with_timeout(c1, 1h); const auto l2 = __LINE__;
  auto [c3, h3] = ctx::with_deadline(c2, std::chrono::steady_clock::now() + 2h); const auto l3 = __LINE__;
  auto [c4, h4] = ctx::with_stop_token(c3, src.get_token()); const auto l4 = __LINE__;
  auto c5 = ctx::with_value(c4, user, 7L); const auto l5 = __LINE__;
  auto c6 = ctx::without_cancel(c5); const auto l6 = __LINE__;
  // clang-format on
  const std::pair<std::uint_least32_t, inspect::kind> expected[] = {
      {l1, inspect::kind::with_cancel},   {l2, inspect::kind::with_timeout},
      {l3, inspect::kind::with_deadline}, {l4, inspect::kind::with_stop_token},
      {l5, inspect::kind::with_value},    {l6, inspect::kind::without_cancel}};
  std::uint64_t parent = 0;
  for (const auto& [line, k] : expected) {
    const auto i = made_at(line);
    REQUIRE(i);
    CHECK(i->kind == k);
    CHECK(std::string_view(i->site.function_name()).find("C_A_T_C_H") != std::string_view::npos);
    CHECK(i->parent == parent);  // the first one's parent is background(): not tracked
    CHECK_FALSE(i->done);
    parent = i->id;
  }
  CHECK(made_at(l2)->remaining > 59min);
  CHECK(made_at(l3)->remaining > 59min);  // the parent's deadline is earlier
  CHECK_FALSE(made_at(l1)->remaining);
  CHECK_FALSE(made_at(l6)->remaining);  // without_cancel drops the deadline
  CHECK(made_at(l6)->keys == std::vector<std::string_view>{"user"});
}

TEST_CASE("the pinned call forms compile and mean what they meant", "[inspect]") {
  for (const bool on : {false, true}) {
    inspect::enable(on);
    const ctx::context bg;
    const std::error_code cause = std::make_error_code(std::errc::timed_out);
    auto [a, ha] = ctx::with_timeout(bg, 0s);
    auto [b, hb] = ctx::with_timeout(bg, 0s, cause);
    auto [c, hc] = ctx::with_deadline(bg, std::chrono::steady_clock::now() - 1s);
    auto [d, hd] = ctx::with_deadline(bg, std::chrono::steady_clock::now() - 1s, cause);
    auto [e, he] = ctx::with_timeout(bg, std::chrono::duration<double>(3600.0));
    CHECK(a.err() == deadline_exceeded);
    CHECK(b.cause() == cause);
    CHECK(c.cause() == ctx::errc::deadline_exceeded);
    CHECK(d.cause() == cause);
    CHECK_FALSE(e.done());
    // with_value converts as it did: a const char* into a std::string, an int into a long.
    const auto v1 = ctx::with_value(bg, token, "secret");
    const auto v2 = ctx::with_value(bg, user, 42);
    std::string s = "moved";
    const auto v3 = ctx::with_value(bg, token, std::move(s));
    CHECK(*v1.value(token) == "secret");
    CHECK(*v2.value(user) == 42L);
    CHECK(*v3.value(token) == "moved");
    auto [f, hf] = ctx::with_stop_token(bg, std::stop_token{});
    CHECK_FALSE(f.done());
    CHECK_FALSE(ctx::without_cancel(f).done());
  }
  inspect::enable(false);
}

TEST_CASE("contexts made while inspection is off are not tracked", "[inspect]") {
  inspect::enable(false);
  auto [c, h] = ctx::with_cancel(ctx::background());
  const auto l = __LINE__ - 1;
  CHECK_FALSE(made_at(l));
  h();
  CHECK_FALSE(is_zombie_at(l));
}

TEST_CASE("a done context still held by a copy is a zombie", "[inspect]") {
  inspection_on on;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  const auto l = __LINE__ - 1;
  CHECK_FALSE(is_zombie_at(l));  // live
  cancel();
  REQUIRE(is_zombie_at(l));  // done, and `c` still holds it
  const auto z = made_at(l);
  CHECK(z->done);
  CHECK(z->err == canceled);
  CHECK(z->outside_refs == 1);
  CHECK(z->handle_held);
  CHECK(inspect::zombies(1h).empty());  // done for less than an hour
  c = {};
  CHECK_FALSE(is_zombie_at(l));  // only its handle holds it now
  CHECK(made_at(l));
}

TEST_CASE("a parent held only by its children is not a zombie", "[inspect]") {
  inspection_on on;
  auto [p, cancel] = ctx::with_cancel(ctx::background());
  const auto lp = __LINE__ - 1;
  auto v = ctx::with_value(p, user, 1L);
  const auto lv = __LINE__ - 1;
  auto [t, ht] = ctx::with_timeout(v, 1h);
  const auto lt = __LINE__ - 1;
  p = {};
  cancel();
  CHECK_FALSE(is_zombie_at(lp));
  CHECK(made_at(lp)->children == 1);
  CHECK(made_at(lp)->outside_refs == 0);
  CHECK(is_zombie_at(lv));  // held by `v` (and by its child, which does not count)
  CHECK(is_zombie_at(lt));
  v = {};
  CHECK_FALSE(is_zombie_at(lv));
  CHECK(is_zombie_at(lt));
  t = {};
  CHECK(inspect::zombies(0ns).empty());
}

TEST_CASE("children made after inspection was turned off still count as the tree", "[inspect]") {
  inspect::enable();
  auto [p, cancel] = ctx::with_cancel(ctx::background());
  const auto lp = __LINE__ - 1;
  inspect::enable(false);
  auto c = ctx::with_value(p, user, 1L);  // tracked: its parent is
  const auto lc = __LINE__ - 1;
  auto [unrelated, hu] = ctx::with_cancel(ctx::background());
  const auto lu = __LINE__ - 1;
  CHECK(made_at(lc));
  CHECK_FALSE(made_at(lu));
  p = {};
  cancel();
  CHECK_FALSE(is_zombie_at(lp));
  CHECK(is_zombie_at(lc));
  c = {};
  CHECK(inspect::zombies(0ns).empty());
}

TEST_CASE("a registration's reference counts as from outside", "[inspect]") {
  inspection_on on;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  const auto l = __LINE__ - 1;
  auto v = ctx::with_value(c, user, 1L);
  std::atomic<int> ran{0};
  auto reg = ctx::after_func(v, [&ran] { ++ran; });  // holds `c`, v's cancelable ancestor
  c = {};
  v = {};
  cancel();
  CHECK(ran == 1);
  REQUIRE(is_zombie_at(l));
  CHECK(made_at(l)->outside_refs == 1);
  reg = {};
  CHECK_FALSE(is_zombie_at(l));
}

TEST_CASE("the cancel handle's reference is not from outside", "[inspect]") {
  inspection_on on;
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 1h);
  const auto l = __LINE__ - 1;
  ctx::cancel_handle moved = std::move(cancel);  // still the handle's reference
  c = {};
  moved();
  CHECK_FALSE(is_zombie_at(l));
  const auto i = made_at(l);
  REQUIRE(i);
  CHECK(i->handle_held);
  CHECK(i->outside_refs == 0);
  CHECK(i->done);
}

TEST_CASE("a copy that outlives the handle is a zombie", "[inspect]") {
  inspection_on on;
  ctx::context kept;
  {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    kept = c;
  }  // the handle cancels
  const auto l = __LINE__ - 3;
  const auto i = made_at(l);
  REQUIRE(i);
  CHECK_FALSE(i->handle_held);
  CHECK(i->outside_refs == 1);  // `kept`
  CHECK(is_zombie_at(l));
  kept = ctx::background();
  CHECK_FALSE(made_at(l));
}

TEST_CASE("a child born done is done since it was made", "[inspect]") {
  inspection_on on;
  auto [p, cancel] = ctx::with_cancel(ctx::background());
  cancel(std::make_error_code(std::errc::broken_pipe));
  auto [c, hc] = ctx::with_timeout(p, 1h);
  const auto l = __LINE__ - 1;
  const auto i = made_at(l);
  REQUIRE(i);
  CHECK(i->done);
  CHECK(i->cause == std::errc::broken_pipe);
  CHECK(i->done_for == i->age);
}

TEST_CASE("a deadline reads in the context's own clock", "[inspect]") {
  inspection_on on;
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 10s);
  const auto l = __LINE__ - 1;
  CHECK(made_at(l)->remaining == 10s);
  manual::advance(4s);
  CHECK(made_at(l)->remaining == 6s);
  manual::advance(6s);
  CHECK(c.done());
  const auto i = made_at(l);
  CHECK(i->remaining == 0s);
  CHECK(i->err == ctx::errc::deadline_exceeded);
  CHECK(is_zombie_at(l));
}

TEST_CASE("the report names keys but never values", "[inspect]") {
  inspection_on on;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::vector<ctx::context> held;
  for (int i = 0; i < 3; ++i) held.push_back(ctx::with_value(c, token, "hunter2-secret"));
  const auto l = __LINE__ - 1;
  cancel();
  const std::string text = inspect::report(0ns);
  CHECK(text.find("hunter2") == std::string::npos);
  CHECK(text.find("inspect_test.cpp:" + std::to_string(l) + "  with_value  x3") != std::string::npos);
  CHECK(text.find("keys token") != std::string::npos);
  const std::string json = inspect::report(0ns, inspect::format::json);
  CHECK(json.find("hunter2") == std::string::npos);
  CHECK(json.find("\"line\":" + std::to_string(l) + ",") != std::string::npos);
  CHECK(json.find("\"count\":3") != std::string::npos);
  CHECK(json.find("\"keys\":[\"token\"]") != std::string::npos);
  CHECK(json.front() == '{');
}

TEST_CASE("detach and task_group record their caller's site", "[inspect]") {
  inspection_on on;
  // Shared with the detached thread, which may still be leaving the latch's
  // wait() when this test case has returned.
  auto started = std::make_shared<std::latch>(1);
  auto release = std::make_shared<std::latch>(1);
  ctx::detach(ctx::background(), 1h, [started, release](const ctx::context&) {
    started->count_down();
    release->wait();
  });
  const auto ld = __LINE__ - 4;
  started->wait();
  int at_line = 0;
  for (auto& i : inspect::live())
    if (i.site.line() == ld && std::string_view(i.site.file_name()).ends_with("inspect_test.cpp")) ++at_line;
  CHECK(at_line == 2);  // without_cancel and with_timeout
  release->count_down();
  {
    ctx::task_group g(ctx::background());
    const auto lg = __LINE__ - 1;
    const auto i = made_at(lg);
    REQUIRE(i);
    CHECK(i->kind == inspect::kind::with_cancel);
  }
}

TEST_CASE("snapshots are safe while other threads derive cancel and destroy", "[inspect]") {
  // Deadlines on the manual clock, fired by a thread that moves it: when the
  // threads are joined, no timer thread can still hold a reference.
  inspection_on on;
  constexpr int workers = 4;
  constexpr int rounds = 4000;
  auto top =
      ctx::with_cancel(ctx::background<manual>());  // no structured binding: lambdas capture it (clang 14)
  auto& root = top.context;
  std::atomic<bool> stop{false};
  std::latch go{workers + 2};
  const auto first = __LINE__;
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      go.arrive_and_wait();
      for (int i = 0; i < rounds; ++i) {
        auto [c, cancel] = ctx::with_timeout(root, (i % 3) * 1us);
        auto v = ctx::with_value(c, user, static_cast<long>(i));
        auto reg = ctx::after_func(v, [] {});
        if (i % 2) cancel();
        auto [g, hg] = ctx::with_cancel(v);
        if (w == 0 && i % 100 == 0) inspect::enable(i % 200 == 0);  // the switch flips meanwhile
        (void)g.done();
      }
    });
  const auto last = __LINE__;
  std::size_t bad_ids = 0;
  std::thread reader([&] {
    go.arrive_and_wait();
    while (!stop.load()) {
      for (const auto& i : inspect::live())
        if (i.id == 0) ++bad_ids;
      (void)inspect::report(0ns, inspect::format::json);
    }
  });
  std::thread clock_mover([&] {
    go.arrive_and_wait();
    while (!stop.load()) manual::advance(1us);
  });
  for (auto& t : threads) t.join();
  stop = true;
  reader.join();
  clock_mover.join();
  CHECK(bad_ids == 0);
  inspect::enable();
  top.cancel();
  root = {};
  CHECK(inspect::zombies(0ns).empty());
  int left = 0;
  for (auto& i : inspect::live())
    if (i.site.line() > first && i.site.line() < last) ++left;
  CHECK(left == 0);
}

TEST_CASE("a signal makes a thread of ctx write the report", "[inspect]") {
  // The report goes to a FIFO: opening it for reading waits for the dump
  // thread to open it for writing, and reading to the end waits for the
  // whole report (the thread closes it), so no polling is needed.
  test::temp_dir dir("ctx-inspect");
  const std::string fifo = dir.file("report");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  REQUIRE(inspect::dump_on_signal(SIGUSR2, 0ns, fifo));
  CHECK_FALSE(inspect::dump_on_signal(SIGUSR2, 0ns, fifo));  // once per process
  CHECK(inspect::enabled());
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  const auto l = __LINE__ - 1;
  cancel();
  REQUIRE(::raise(SIGUSR2) == 0);
  const int fd = ::open(fifo.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  CHECK(text.find("ctx zombie report: 1 context done") != std::string::npos);
  CHECK(text.find("inspect_test.cpp:" + std::to_string(l) + "  with_cancel  x1") != std::string::npos);
  inspect::enable(false);
}

TEST_CASE("a sleep's context records the line that sleeps", "[inspect]") {
  inspection_on on;
  auto d = ctx::with_cancel(ctx::background<manual>());  // no structured binding: captured (clang 14)
  const auto& c = d.context;
  std::latch asleep{1};
  std::thread sleeper([&c, &asleep] {
    asleep.count_down();
    (void)ctx::sleep_for(c, 1h);
  });
  const auto l = __LINE__ - 2;
  asleep.wait();
  // The sleep's context exists from just after the latch until the cancel below.
  std::optional<inspect::context_info> found;
  while (!(found = made_at(l))) std::this_thread::yield();
  CHECK(found->kind == inspect::kind::with_timeout);
  d.cancel();
  sleeper.join();
}
