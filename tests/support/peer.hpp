// SPDX-License-Identifier: MIT
// Process B of the two-process tests, seen from process A: a helper
// executable started with posix_spawn, its standard output a pipe that A
// reads (the first line is "port N", the loopback port the OS gave B's
// server; then B's log), stopped and reaped when A is done with it, also
// when a test fails (SIGTERM, then SIGKILL after 5 s). B also asks the
// kernel to kill it if A dies first (PR_SET_PDEATHSIG; see peer_main.hpp),
// so no test leaves a process behind.
#pragma once

#include <ctx/ctx.hpp>
#include <ctx/io.hpp>
#include <ctx/process.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "peer_work.hpp"
#include "posix_helpers.hpp"

extern char** environ;

namespace test {

/// How late after A's deadline (or cancel) B's query may stop in the
/// two-process tests: 250 ms (typically under 1 ms: see docs/grpc.md; 124 ms
/// seen with ctest -j2 on a 2-core machine at load 8, B's query and the
/// other tests' competing for the cores); 1 s in sanitizer builds
/// (ThreadSanitizer delayed gRPC's OnCancel in B by up to 0.5 s); or
/// CTX_WIRE_MARGIN_MS if set (the leak check sets 2 s for valgrind).
inline std::int64_t wire_margin_ns() {
  if (const char* v = std::getenv("CTX_WIRE_MARGIN_MS"); v && *v) return std::atoll(v) * 1'000'000;
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  return 1'000'000'000;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
  return 1'000'000'000;
#else
  return 250'000'000;
#endif
#else
  return 250'000'000;
#endif
}

class peer {
 public:
  /// Starts `exe` with arguments: A's pid, then `args`. Waits up to 30 s for
  /// its "port N" line. Throws std::runtime_error if it does not come.
  peer(const std::string& exe, const std::vector<std::string>& args) {
    test::fd_pair out = test::make_pipe(O_CLOEXEC);
    std::vector<std::string> all{exe, std::to_string(::getpid())};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out.b.get(), STDOUT_FILENO);  // dup2 clears O_CLOEXEC
    const int e = ::posix_spawn(&pid_, exe.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (e != 0) throw std::runtime_error("posix_spawn " + exe + ": " + std::strerror(e));
    out_ = std::move(out.a);
    const std::string first = next_line(std::chrono::seconds(30));
    if (first.rfind("port ", 0) != 0)
      throw std::runtime_error("peer: expected \"port N\", got \"" + first + "\"");
    port_ = std::atoi(first.c_str() + 5);
  }
  peer(const peer&) = delete;
  peer& operator=(const peer&) = delete;
  ~peer() { stop(); }

  [[nodiscard]] int port() const noexcept { return port_; }
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }

  /// The next line of B's output, waiting at most `within`. Throws
  /// std::runtime_error at end of file or when the time is up.
  std::string next_line(std::chrono::nanoseconds within) {
    auto [c, cancel] = ctx::with_timeout(ctx::background(), within);
    for (;;) {
      if (const std::size_t nl = buf_.find('\n'); nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      std::byte chunk[4096];
      const ctx::io::result r = ctx::io::read(c, out_.get(), std::span<std::byte>(chunk));
      if (r.error()) throw std::runtime_error("peer: no line from B: " + r.error().message());
      if (r.bytes() == 0) throw std::runtime_error("peer: B closed its output");
      buf_.append(reinterpret_cast<const char*>(chunk), r.bytes());
    }
  }

  /// B's next log event `what` ("start" or "end") of a call of `kind`
  /// ("slow", ...), skipping other lines and events.
  query_event next_event(std::string_view what, std::string_view kind = "slow",
                         std::chrono::nanoseconds within = std::chrono::seconds(30)) {
    const auto give_up = std::chrono::steady_clock::now() + within;
    for (;;) {
      const auto left = give_up - std::chrono::steady_clock::now();
      if (left <= left.zero())
        throw std::runtime_error("peer: no \"" + std::string(what) + "\" event in time");
      if (const auto e = parse_event(next_line(left)); e && e->what == what && e->kind == kind) return *e;
    }
  }

  /// SIGKILL now, and reap.
  void kill() { end({SIGKILL, std::chrono::seconds(0)}); }

  /// SIGTERM (B shuts down cleanly), SIGKILL after 5 s, and reap.
  void stop() { end({SIGTERM, std::chrono::seconds(5)}); }

 private:
  void end(const ctx::process::kill_policy& policy) {
    if (pid_ <= 0) return;
    // ENOSYS without pidfd_open (valgrind does not know it): SIGKILL and a plain wait.
    if (ctx::process::wait(done_context(), pid_, policy).error() == std::errc::function_not_supported) {
      ::kill(pid_, SIGKILL);
      while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
    pid_ = -1;
  }

  static ctx::context done_context() {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    cancel();
    return c;
  }

  pid_t pid_ = -1;
  test::fd out_;
  std::string buf_;
  int port_ = 0;
};

}  // namespace test
