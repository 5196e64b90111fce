// SPDX-License-Identifier: MIT
// <ctx/process.hpp> on real child processes: exit statuses, cancel and
// deadlines while waiting, the signal / grace period / SIGKILL sequence, and
// that every child is reaped.
#include <ctx/ctx.hpp>
#include <ctx/io.hpp>
#include <ctx/process.hpp>
#include <ctx/testing.hpp>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"
#include "support/posix_helpers.hpp"

extern char** environ;

using namespace std::chrono_literals;

namespace {

/// Starts argv[0] with `stdout_fd` (if >= 0) as its standard output.
pid_t spawn(std::initializer_list<const char*> args, int stdout_fd = -1) {
  std::vector<char*> argv;
  for (const char* a : args) argv.push_back(const_cast<char*>(a));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (stdout_fd >= 0) posix_spawn_file_actions_adddup2(&actions, stdout_fd, STDOUT_FILENO);
  pid_t pid = -1;
  const int e = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (e != 0) throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(e));
  return pid;
}

/// True if `pid` is no longer our child: it was reaped (no zombie left).
bool reaped(pid_t pid) {
  siginfo_t info{};
  return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == -1 && errno == ECHILD;
}

/// Starts a shell that ignores SIGTERM, and returns once the trap is set.
pid_t spawn_term_ignoring_sleeper() {
  auto p = test::make_pipe();
  const pid_t pid = spawn({"/bin/sh", "-c", "trap '' TERM; echo ready; exec sleep 30"}, p.b.get());
  p.b.reset();
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 60s);
  std::byte buf[16];
  const auto r = ctx::io::read(c, p.a.get(), buf);
  if (r.error() || r.bytes() == 0) throw std::runtime_error("child did not start");
  return pid;
}

}  // namespace

TEST_CASE("wait returns the exit status of a child that ends on its own", "[process]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  const pid_t ok = spawn({"/bin/true"});
  auto r = ctx::process::wait(c, ok);
  CHECK(r.error() == std::error_code{});
  CHECK(r.reaped());
  CHECK(r.exited());
  CHECK(r.exit_code() == 0);
  CHECK_FALSE(r.signaled());
  CHECK(r.signal() == 0);
  CHECK(reaped(ok));

  const pid_t three = spawn({"/bin/sh", "-c", "exit 3"});
  r = ctx::process::wait(ctx::background(), three);
  CHECK(r.error() == std::error_code{});
  CHECK(r.exit_code() == 3);
  CHECK(reaped(three));
}

TEST_CASE("wait reports the signal that ended a child", "[process]") {
  const pid_t pid = spawn({"/bin/sleep", "30"});
  REQUIRE(::kill(pid, SIGUSR2) == 0);
  const auto r = ctx::process::wait(ctx::background(), pid);
  CHECK(r.error() == std::error_code{});
  CHECK(r.signaled());
  CHECK(r.signal() == SIGUSR2);
  CHECK_FALSE(r.exited());
  CHECK(r.exit_code() == -1);
}

TEST_CASE("cancel while waiting terminates the child with SIGTERM and reaps it", "[process][cancel]") {
  const pid_t pid = spawn({"/bin/sleep", "30"});
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::atomic<int> tid{0};
  std::optional<ctx::process::result> out;
  std::thread t([&, c = c] {
    tid = test::this_tid();
    out = ctx::process::wait(c, pid, {SIGTERM, 30s});
  });
  while (tid.load() == 0) std::this_thread::yield();
  REQUIRE(test::wait_until_blocked(tid.load()));
  const auto start = std::chrono::steady_clock::now();
  cancel();
  t.join();
  CHECK(std::chrono::steady_clock::now() - start < 20s);  // not the grace period
  CHECK(out->error() == canceled);
  CHECK(out->signaled());
  CHECK(out->signal() == SIGTERM);
  CHECK(reaped(pid));
}

TEST_CASE("a child that ignores the signal is killed after the grace period", "[process][cancel]") {
  const pid_t pid = spawn_term_ignoring_sleeper();
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  const auto start = std::chrono::steady_clock::now();
  const auto r = ctx::process::wait(c, pid, {SIGTERM, 200ms});
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(r.error() == canceled);
  CHECK(r.signal() == SIGKILL);
  CHECK(took >= 200ms);
  CHECK(took < 20s);
  CHECK(reaped(pid));
}

TEST_CASE("a zero grace period or SIGKILL as the signal kills at once", "[process][cancel]") {
  for (const ctx::process::kill_policy policy :
       {ctx::process::kill_policy{SIGKILL, 30s}, ctx::process::kill_policy{SIGTERM, 0s},
        ctx::process::kill_policy{0, 30s}}) {
    const pid_t pid = spawn_term_ignoring_sleeper();
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    cancel();
    const auto start = std::chrono::steady_clock::now();
    const auto r = ctx::process::wait(c, pid, policy);
    CHECK(std::chrono::steady_clock::now() - start < 20s);
    CHECK(r.error() == canceled);
    CHECK(r.signal() == SIGKILL);
    CHECK(reaped(pid));
  }
}

// Regression (issue 9, bug 8): `now + grace` overflowed for a grace of
// duration::max(). It worked on x86 only because the wrap-around cancelled
// out in `until - now`; UBSan (the asan preset) stops the test there.
TEST_CASE("a grace period of duration max waits for the child without overflowing", "[process][cancel]") {
  const pid_t pid = spawn({"/bin/sleep", "30"});
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  const auto r = ctx::process::wait(c, pid, {SIGTERM, std::chrono::steady_clock::duration::max()});
  CHECK(r.error() == canceled);
  CHECK(r.signal() == SIGTERM);  // ended by the polite signal: it was given its grace
  CHECK(reaped(pid));
}

TEST_CASE("a manual-clock deadline stops the wait when the clock is advanced", "[process][deadline]") {
  const pid_t pid = spawn({"/bin/sleep", "30"});
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 5s);
  std::atomic<int> tid{0};
  std::atomic<bool> returned{false};
  std::optional<ctx::process::result> out;
  std::thread t([&, c = c] {
    tid = test::this_tid();
    out = ctx::process::wait(c, pid);
    returned = true;
  });
  while (tid.load() == 0) std::this_thread::yield();
  REQUIRE(test::wait_until_blocked(tid.load()));
  manual::advance(4s);
  CHECK_FALSE(returned.load());
  manual::advance(1s);
  t.join();
  CHECK(out->error() == deadline_exceeded);
  CHECK(out->signal() == SIGTERM);
  CHECK(reaped(pid));
}

TEST_CASE("a child that already exited is reaped even when the context is done", "[process]") {
  const pid_t pid = spawn({"/bin/sh", "-c", "exit 7"});
  siginfo_t info{};
  REQUIRE(::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) == 0);  // now a zombie
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  const auto r = ctx::process::wait(c, pid);
  CHECK(r.error() == canceled);
  CHECK(r.exit_code() == 7);
  CHECK(reaped(pid));
}

TEST_CASE("a pid that is not an unreaped child is refused before any signal", "[process][errors]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();  // would signal it, if it were accepted
  auto r = ctx::process::wait(c, ::getppid());
  CHECK(r.error() == std::error_code(ECHILD, std::system_category()));
  CHECK_FALSE(r.reaped());

  const pid_t pid = spawn({"/bin/true"});
  REQUIRE(ctx::process::wait(ctx::background(), pid).exit_code() == 0);
  r = ctx::process::wait(ctx::background(), pid);  // reaped already
  CHECK(r.error() == std::error_code(ECHILD, std::system_category()));

  CHECK(ctx::process::wait(ctx::background(), 0).error() == std::error_code(EINVAL, std::system_category()));
  CHECK(ctx::process::wait(ctx::background(), -1).error() == std::error_code(EINVAL, std::system_category()));
}

TEST_CASE("many children are waited for at once, and one cancel stops them all", "[process][cancel]") {
  constexpr int n = 20;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::vector<pid_t> pids;
  std::vector<std::atomic<int>> tids(n);
  std::vector<std::optional<ctx::process::result>> out(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) pids.push_back(spawn({"/bin/sleep", "30"}));
  for (std::size_t i = 0; i < n; ++i)
    threads.emplace_back([&, i, c = c] {
      tids[i] = test::this_tid();
      out[i] = ctx::process::wait(c, pids[i], {SIGTERM, 30s});
    });
  for (auto& tid : tids) {
    while (tid.load() == 0) std::this_thread::yield();
    REQUIRE(test::wait_until_blocked(tid.load()));
  }
  cancel();
  for (auto& t : threads) t.join();
  for (std::size_t i = 0; i < n; ++i) {
    CHECK(out[i]->error() == canceled);
    CHECK(out[i]->signal() == SIGTERM);
    CHECK(reaped(pids[i]));
  }
}
