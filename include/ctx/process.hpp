// SPDX-License-Identifier: MIT
// ctx::process: wait for a child process under a context; on cancel, stop it
// (a signal, a grace period, then SIGKILL) and reap it (Linux 5.3+, pidfd).
//
// The wait is a poll() on a pidfd (pidfd_open) plus the calling thread's
// wake-up eventfd, which a std::stop_callback on `c.stop_token()` signals,
// as in <ctx/io.hpp>: a deadline reaches it as a stop request. The signals
// and the grace period are sent and waited out by the waiting thread, never
// by the thread that cancels.
//
// Thread safety: wait() may be called from any number of threads at once for
// different children, on one context or many. Each child must be waited for
// by one thread, and nothing else in the process may reap it (no waitpid(-1),
// no SIGCHLD set to SIG_IGN) while wait() runs, since its pid is only safe to
// signal until it is reaped. Not async-signal-safe.
#pragma once

#include <poll.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <system_error>

#include "context.hpp"
#include "detail/time_arith.hpp"
#include "detail/wake_fd.hpp"

namespace ctx::process {

/// How wait() stops a child when the context is done before the child is.
///
/// `signal` is sent first (default SIGTERM); if the child has not ended after
/// `grace`, it gets SIGKILL. `signal` 0 or SIGKILL, or a zero `grace`, sends
/// SIGKILL at once. The grace period is measured on std::chrono::steady_clock
/// (real time, whatever the context's clock), by the waiting thread.
struct kill_policy {
  int signal = SIGTERM;
  std::chrono::steady_clock::duration grace = std::chrono::seconds(5);
};

/// How a child ended, and why wait() returned.
class result {
 public:
  result() noexcept = default;
  /// A result from waitid()'s si_code and si_status (code 0: not reaped).
  result(int code, int status, std::error_code error) noexcept
      : code_(code), status_(status), error_(error) {}

  /// True if the child was reaped: then exactly one of exited() and signaled() is true.
  [[nodiscard]] constexpr bool reaped() const noexcept { return code_ != 0; }
  /// True if the child ended by exit(): exit_code() holds its status.
  [[nodiscard]] constexpr bool exited() const noexcept { return code_ == CLD_EXITED; }
  /// The child's exit status (0-255) if exited(), else -1.
  [[nodiscard]] constexpr int exit_code() const noexcept { return exited() ? status_ : -1; }
  /// True if a signal ended the child: signal() says which.
  [[nodiscard]] constexpr bool signaled() const noexcept {
    return code_ == CLD_KILLED || code_ == CLD_DUMPED;
  }
  /// The signal that ended the child if signaled(), else 0.
  [[nodiscard]] constexpr int signal() const noexcept { return signaled() ? status_ : 0; }
  /// `{}` when the child ended on its own; `c.err()` when the context was done
  /// first (the child was then stopped by kill_policy and reaped: the status
  /// above says how it ended); otherwise the system's error (ECHILD for a pid
  /// that is not an unreaped child of this process, EINVAL for pid <= 0, ...).
  [[nodiscard]] std::error_code error() const noexcept { return error_; }

 private:
  int code_ = 0;  // si_code of the reaped child; 0 if not reaped
  int status_ = 0;
  std::error_code error_;
};

/// Waits until child `pid` ends or `c` is done, and reaps the child.
///
/// When the child ends first: returns its status and `{}`. When `c` is done
/// first (also if it is done on entry): sends `policy.signal`, waits up to
/// `policy.grace` for the child to end, then sends SIGKILL, and returns the
/// status and `c.err()`. Either way the child is reaped before wait()
/// returns: it never leaves a zombie and its pid is no longer valid. The
/// pid of something that is not an unreaped child of this process is refused
/// with ECHILD before any signal is sent.
///
/// Blocks the calling thread; a cancel makes it return after at most
/// `policy.grace` plus the time the child takes to die from SIGKILL.
/// Errors: ENOSYS on kernels without pidfd_open (before 5.3), EMFILE, ...
/// (then the child is left as it was: not signalled and not reaped).
template <class Clock>
[[nodiscard]] result wait(const basic_context<Clock>& c, pid_t pid, const kill_policy& policy = {});

// ---------------------------------------------------------------------------
// Implementation.

namespace detail {

#ifdef SYS_pidfd_open
inline constexpr long sys_pidfd_open = SYS_pidfd_open;
#else
inline constexpr long sys_pidfd_open = 434;  // the same on every Linux architecture but alpha
#endif

/// An owned fd, closed on destruction.
struct unique_fd {
  explicit unique_fd(int f) noexcept : fd(f) {}
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() {
    if (fd >= 0) ::close(fd);
  }
  int fd;
};

/// Blocks in poll() on `fd` for up to `timeout`, retrying EINTR. True when `fd` is readable.
inline bool poll_in_for(int fd, std::chrono::steady_clock::duration timeout) noexcept {
  using namespace std::chrono;
  const auto until =
      ctx::detail::deadline_after(steady_clock::now(), timeout);  // saturating: grace may be max()
  for (;;) {
    const auto left = ctx::detail::time_until(until, steady_clock::now());
    const int ms = left <= left.zero()
                       ? 0
                       : static_cast<int>(std::min<long long>(ceil<milliseconds>(left).count(), 1 << 30));
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, ms);
    if (r > 0) return true;
    if (r == 0 && ms == 0) return false;
    if (r < 0 && errno != EINTR) return false;
  }
}

/// Sends policy.signal, waits up to policy.grace for the child to end, then SIGKILL.
inline void terminate(pid_t pid, int pidfd, const kill_policy& policy) noexcept {
  const bool polite = policy.signal != 0 && policy.signal != SIGKILL && policy.grace > policy.grace.zero();
  if (polite && ::kill(pid, policy.signal) == 0 && poll_in_for(pidfd, policy.grace)) return;
  (void)::kill(pid, SIGKILL);
}

}  // namespace detail

template <class Clock>
result wait(const basic_context<Clock>& c, pid_t pid, const kill_policy& policy) {
  if (pid <= 0) return {0, 0, std::error_code(EINVAL, std::system_category())};
  // Refuse anything that is not our unreaped child before touching it.
  siginfo_t info{};
  while (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) < 0)
    if (errno != EINTR) return {0, 0, ctx::detail::last_error()};
  bool stop = c.done();
  if (info.si_pid != pid) {  // still running
    const detail::unique_fd pidfd(static_cast<int>(::syscall(detail::sys_pidfd_open, pid, 0)));
    if (pidfd.fd < 0) return {0, 0, ctx::detail::last_error()};
    if (!stop) {
      if (const std::error_code e = ctx::detail::lazy_wake().wait(c, pidfd.fd, POLLIN)) {
        if (!c.done()) return {0, 0, e};  // the wait failed: the child is left as it was
        stop = true;
      }
    }
    if (stop) detail::terminate(pid, pidfd.fd, policy);
  }
  // The child has ended, or has SIGKILL pending: reap it.
  siginfo_t si{};
  while (::waitid(P_PID, static_cast<id_t>(pid), &si, WEXITED) < 0)
    if (errno != EINTR) return {0, 0, ctx::detail::last_error()};
  return {si.si_code, si.si_status, stop ? c.err() : std::error_code{}};
}

}  // namespace ctx::process
