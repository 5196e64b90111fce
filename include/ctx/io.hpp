// SPDX-License-Identifier: MIT
// ctx::io: reads, writes, connects and accepts on file descriptors that return
// promptly when a context is done (Linux).
//
// Every call waits in poll() on its fd plus the calling thread's wake-up
// eventfd, which a std::stop_callback on `c.stop_token()` signals; a deadline
// reaches it the same way (the timer thread, or manual_clock::advance,
// requests stop). The eventfd is made once per thread and reused, so a call
// costs no system calls to set up. Works on sockets, pipes, FIFOs and any
// pollable fd, blocking or not, and never changes an fd's flags, except
// connect() for the time it runs (see there).
//
// A closed fd is EBADF, also when the thread's eventfd, made on its first
// wait, took the closed fd's number. As with any POSIX call, an fd closed by
// another thread while a call waits on it is not noticed (Linux's poll()
// keeps waiting on the file: cancel the context, or shutdown() a socket), and
// a closed number that another thread's open() reused is that new file.
//
// Thread safety: the functions may be called from any number of threads at
// once, also on one fd (with the usual meaning of concurrent reads or writes
// on one fd) and on one context. Cancellation may come from any thread: the
// stop request happens-before the blocked call returns the context's error.
// Not async-signal-safe: do not call them from a signal handler.
#pragma once

#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstddef>
#include <ctime>
#include <span>
#include <system_error>

#include "context.hpp"
#include "detail/wake_fd.hpp"

namespace ctx::io {

/// What a byte-moving call did: how many bytes it moved and why it stopped.
///
/// `bytes()` is what was transferred, also when `error()` is set: a write
/// cancelled half-way reports the half it wrote, so no data is lost or sent twice.
class result {
 public:
  result() noexcept = default;
  result(std::size_t bytes, std::error_code error) noexcept : bytes_(bytes), error_(error) {}

  /// Bytes transferred (also on error).
  [[nodiscard]] constexpr std::size_t bytes() const noexcept { return bytes_; }
  /// `{}` on success; the context's err() when it ended the call; else the system's error.
  [[nodiscard]] std::error_code error() const noexcept { return error_; }

 private:
  std::size_t bytes_ = 0;
  std::error_code error_;
};

/// What accept() returns: the connected socket, or -1 and why not.
class accept_result {
 public:
  accept_result() noexcept = default;
  accept_result(int fd, std::error_code error) noexcept : fd_(fd), error_(error) {}

  /// The new socket (owned by the caller), or -1 on error.
  [[nodiscard]] constexpr int fd() const noexcept { return fd_; }
  /// `{}` on success; the context's err() when it ended the call; else the system's error.
  [[nodiscard]] std::error_code error() const noexcept { return error_; }

 private:
  int fd_ = -1;
  std::error_code error_;
};

/// Blocks until `fd` is readable (a read would not block: data, end of file,
/// a pending error or a hang-up), or `c` is done.
///
/// Returns `{}` when readable, `c.err()` when `c` is done (also when both
/// happen: a done context wins), `EBADF` for a negative or closed fd, or
/// poll()'s error. A done context returns at once without touching the fd.
/// Signals (EINTR) are retried. Consumes nothing.
template <class Clock>
[[nodiscard]] std::error_code wait_readable(const basic_context<Clock>& c, int fd);

/// Blocks until `fd` is writable (or has an error or hang-up), or `c` is done.
/// Otherwise as wait_readable().
template <class Clock>
[[nodiscard]] std::error_code wait_writable(const basic_context<Clock>& c, int fd);

/// Reads once from `fd` into `buf`, as read(2): waits until `fd` is readable
/// or `c` is done, then reads what is there (possibly fewer bytes than asked).
///
/// Returns `{n, {}}` after a read of n > 0 bytes, `{0, {}}` at end of file
/// (and for an empty `buf`, without waiting), `{0, c.err()}` when `c` is done
/// first (nothing was read: the data stays in the fd), `{0, e}` for a system
/// error e (EBADF, ECONNRESET, EISDIR, ...). A done context returns at once
/// without touching the fd. EINTR and EAGAIN (a non-blocking fd losing a race
/// with another reader) are retried.
///
/// Works on any pollable fd. On a *blocking* fd shared with other readers,
/// the data poll() announced may be taken by another thread first and the
/// read(2) then blocks uncancellably: share only non-blocking fds, or use
/// recv() on sockets, which never blocks.
template <class Clock>
[[nodiscard]] result read(const basic_context<Clock>& c, int fd, std::span<std::byte> buf);

/// Writes all of `buf` to `fd`, or reports exactly how much it wrote.
///
/// Returns `{buf.size(), {}}` on success; otherwise `{n, e}` where n bytes
/// (the first n of `buf`) were written before the error e: `c.err()` when `c`
/// ended the write, `EPIPE` when the reader is gone, EBADF, ENOSPC, ... A
/// done context returns `{0, c.err()}` at once without touching the fd; `c`
/// is also checked between chunks, so a long write stops when `c` is done.
///
/// Never blocks uncancellably and never changes the fd's flags:
/// - sockets: send(2) with MSG_DONTWAIT | MSG_NOSIGNAL, then poll() for
///   POLLOUT when the socket buffer is full;
/// - non-blocking other fds: write(2), then poll() on EAGAIN;
/// - blocking other fds (pipes, FIFOs, ttys, files): poll() for POLLOUT, then
///   at most PIPE_BUF bytes per write(2). For a pipe or FIFO, POLLOUT means a
///   free page-sized buffer slot, and a write of at most PIPE_BUF bytes fits
///   in it whole, so it cannot block, unless another thread writes to the same
///   pipe between the poll and the write. Make the fd non-blocking if several
///   threads write to it, and for devices whose POLLOUT promises less.
/// A closed reader is reported as EPIPE, never as a SIGPIPE that kills the
/// process: sockets use MSG_NOSIGNAL; for other fds SIGPIPE is blocked for
/// the calling thread during the call and a SIGPIPE the write raised is
/// consumed (sigtimedwait) before the thread's signal mask is restored.
template <class Clock>
[[nodiscard]] result write(const basic_context<Clock>& c, int fd, std::span<const std::byte> buf);

/// Receives once from socket `fd`, as recv(2) with `flags` (MSG_PEEK, ...).
///
/// Like read(), but the recv(2) uses MSG_DONTWAIT, so it never blocks even
/// on a blocking socket shared with other readers, and a socket with data
/// waiting costs one system call. ENOTSOCK for a non-socket.
template <class Clock>
[[nodiscard]] result recv(const basic_context<Clock>& c, int fd, std::span<std::byte> buf, int flags = 0);

/// Sends all of `buf` on socket `fd`, as send(2) with `flags`, or reports
/// exactly how much it sent. Like write() on a socket (MSG_DONTWAIT |
/// MSG_NOSIGNAL are added); ENOTSOCK for a non-socket.
template <class Clock>
[[nodiscard]] result send(const basic_context<Clock>& c, int fd, std::span<const std::byte> buf,
                          int flags = 0);

/// Connects socket `fd` to `addr`, waiting for the handshake until it
/// completes or `c` is done.
///
/// Returns `{}` when connected, `c.err()` when `c` is done first, or the
/// connection's error (ECONNREFUSED, ETIMEDOUT, ENETUNREACH, EAGAIN for a
/// full Unix-domain backlog, ...). A done context returns at once without
/// touching the fd.
///
/// The fd's flags: a blocking socket is switched to O_NONBLOCK for the time
/// of the call (the only way to make connect(2) cancellable) and switched
/// back before it returns; do not use the fd from another thread meanwhile.
/// After a cancel the pending attempt is aborted (connect(2) to AF_UNSPEC),
/// so the socket is unconnected again and may be connected anew; portable
/// code closes it instead.
template <class Clock>
[[nodiscard]] std::error_code connect(const basic_context<Clock>& c, int fd, const sockaddr* addr,
                                      socklen_t addr_len);

/// Accepts a connection on listening socket `fd`, as accept4(2) with `flags`
/// (SOCK_CLOEXEC and/or SOCK_NONBLOCK for the new socket).
///
/// Returns the new socket, or -1 and `c.err()` when `c` is done first (the
/// pending connections stay queued), or the system's error (EBADF, EINVAL
/// for a socket that is not listening, EMFILE, ...). `addr`/`addr_len` as in
/// accept(2), may be null. ECONNABORTED and EAGAIN are retried. A done
/// context returns at once without touching the fd. On a *blocking*
/// listener shared by several accepting threads, the thread that loses the
/// race for a connection blocks in accept4(2) uncancellably: make shared
/// listeners non-blocking.
template <class Clock>
[[nodiscard]] accept_result accept(const basic_context<Clock>& c, int fd, sockaddr* addr = nullptr,
                                   socklen_t* addr_len = nullptr, int flags = SOCK_CLOEXEC);

// ---------------------------------------------------------------------------
// Implementation.

namespace detail {

using ctx::detail::bad_caller_fd;
using ctx::detail::last_error;
using ctx::detail::lazy_wake;

inline bool would_block(int e) noexcept { return e == EAGAIN || e == EWOULDBLOCK; }

/// Blocks SIGPIPE for the calling thread while a write to a non-socket runs,
/// and consumes the SIGPIPE that a write failing with EPIPE raised, unless
/// one was already pending before (then it belongs to someone else). The
/// scheme of libpq (pq_block_sigpipe / pq_reset_sigpipe), except that a
/// caller who blocked SIGPIPE already keeps it entirely (nothing consumed),
/// and the SIGPIPE is taken with a zero-timeout sigtimedwait, which cannot hang.
class sigpipe_guard {
 public:
  sigpipe_guard() noexcept {
    sigemptyset(&block_);
    sigaddset(&block_, SIGPIPE);
    sigemptyset(&old_);
    if (pthread_sigmask(SIG_BLOCK, &block_, &old_) != 0) return;
    active_ = !sigismember(&old_, SIGPIPE);  // already blocked by the caller: leave it all alone
    if (!active_) return;
    sigset_t pending;
    sigemptyset(&pending);
    pending_before_ = sigpending(&pending) != 0 || sigismember(&pending, SIGPIPE) == 1;
  }
  sigpipe_guard(const sigpipe_guard&) = delete;
  sigpipe_guard& operator=(const sigpipe_guard&) = delete;

  /// A write on this thread failed with EPIPE (and so raised SIGPIPE).
  void raised() noexcept { raised_ = true; }

  ~sigpipe_guard() {
    if (!active_) return;
    const int saved = errno;
    if (raised_ && !pending_before_) {
      const timespec zero{};
      while (sigtimedwait(&block_, nullptr, &zero) < 0 && errno == EINTR) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
    errno = saved;
  }

 private:
  sigset_t block_;
  sigset_t old_;
  bool active_ = false;
  bool pending_before_ = true;
  bool raised_ = false;
};

/// Sends the rest of `buf` after a first send(2) returned `n`, and `err` (its errno) if n < 0.
template <class Clock>
result send_rest(const basic_context<Clock>& c, int fd, std::span<const std::byte> buf, int flags, ssize_t n,
                 int err) {
  std::size_t sent = 0;
  lazy_wake wake;
  for (;;) {
    if (n >= 0) {
      sent += static_cast<std::size_t>(n);
      if (sent == buf.size()) return {sent, {}};
    } else if (would_block(err)) {
      if (const std::error_code e = wake.wait(c, fd, POLLOUT)) return {sent, e};
    } else if (err != EINTR) {
      return {sent, std::error_code(err, std::system_category())};
    }
    if (c.done()) return {sent, c.err()};
    n = ::send(fd, buf.data() + sent, buf.size() - sent, flags | MSG_DONTWAIT | MSG_NOSIGNAL);
    err = n < 0 ? errno : 0;
  }
}

/// write() for fds that are not sockets.
template <class Clock>
result write_other(const basic_context<Clock>& c, int fd, std::span<const std::byte> buf) {
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0) return {0, last_error()};
  const bool nonblocking = (fl & O_NONBLOCK) != 0;
  sigpipe_guard sigpipe;
  lazy_wake wake;
  std::size_t written = 0;
  bool must_poll = !nonblocking;
  while (written < buf.size()) {
    if (c.done()) return {written, c.err()};
    if (must_poll) {
      if (const std::error_code e = wake.wait(c, fd, POLLOUT)) return {written, e};
    }
    const std::size_t rest = buf.size() - written;
    const std::size_t chunk = nonblocking ? rest : std::min<std::size_t>(rest, PIPE_BUF);
    const ssize_t n = ::write(fd, buf.data() + written, chunk);
    if (n >= 0) {
      written += static_cast<std::size_t>(n);
      must_poll = !nonblocking;
    } else if (would_block(errno)) {
      must_poll = true;
    } else if (errno == EINTR) {
      must_poll = !nonblocking;  // nothing was written; ask poll() again before a blocking write
    } else {
      const std::error_code e = last_error();
      if (e.value() == EPIPE) sigpipe.raised();
      return {written, e};
    }
  }
  return {written, {}};
}

}  // namespace detail

template <class Clock>
std::error_code wait_readable(const basic_context<Clock>& c, int fd) {
  if (c.done()) return c.err();
  return detail::lazy_wake().wait(c, fd, POLLIN);
}

template <class Clock>
std::error_code wait_writable(const basic_context<Clock>& c, int fd) {
  if (c.done()) return c.err();
  return detail::lazy_wake().wait(c, fd, POLLOUT);
}

template <class Clock>
result read(const basic_context<Clock>& c, int fd, std::span<std::byte> buf) {
  if (c.done()) return {0, c.err()};
  if (buf.empty()) return {0, {}};
  detail::lazy_wake wake;
  for (;;) {
    if (const std::error_code e = wake.wait(c, fd, POLLIN)) return {0, e};
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n >= 0) return {static_cast<std::size_t>(n), {}};
    if (errno != EINTR && !detail::would_block(errno)) return {0, detail::last_error()};
  }
}

template <class Clock>
result write(const basic_context<Clock>& c, int fd, std::span<const std::byte> buf) {
  if (c.done()) return {0, c.err()};
  if (buf.empty()) return {0, {}};
  if (const std::error_code e = detail::bad_caller_fd(fd)) return {0, e};
  // Try it as a socket first: for sockets that is the whole cost of a write
  // that fits in the socket buffer; anything else fails at once with ENOTSOCK.
  const ssize_t n = ::send(fd, buf.data(), buf.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  const int err = n < 0 ? errno : 0;
  if (err == ENOTSOCK) return detail::write_other(c, fd, buf);
  return detail::send_rest(c, fd, buf, 0, n, err);
}

template <class Clock>
result recv(const basic_context<Clock>& c, int fd, std::span<std::byte> buf, int flags) {
  if (c.done()) return {0, c.err()};
  if (buf.empty()) return {0, {}};
  if (const std::error_code e = detail::bad_caller_fd(fd)) return {0, e};
  detail::lazy_wake wake;
  for (;;) {
    const ssize_t n = ::recv(fd, buf.data(), buf.size(), flags | MSG_DONTWAIT);
    if (n >= 0) return {static_cast<std::size_t>(n), {}};
    if (detail::would_block(errno)) {
      if (const std::error_code e = wake.wait(c, fd, POLLIN)) return {0, e};
    } else if (errno != EINTR) {
      return {0, detail::last_error()};
    }
  }
}

template <class Clock>
result send(const basic_context<Clock>& c, int fd, std::span<const std::byte> buf, int flags) {
  if (c.done()) return {0, c.err()};
  if (buf.empty()) return {0, {}};
  if (const std::error_code e = detail::bad_caller_fd(fd)) return {0, e};
  const ssize_t n = ::send(fd, buf.data(), buf.size(), flags | MSG_DONTWAIT | MSG_NOSIGNAL);
  return detail::send_rest(c, fd, buf, flags, n, n < 0 ? errno : 0);
}

template <class Clock>
std::error_code connect(const basic_context<Clock>& c, int fd, const sockaddr* addr, socklen_t addr_len) {
  if (c.done()) return c.err();
  if (const std::error_code e = detail::bad_caller_fd(fd)) return e;
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0) return detail::last_error();
  const bool was_blocking = !(fl & O_NONBLOCK);
  if (was_blocking && ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return detail::last_error();
  struct restore_flags {
    int fd, fl;
    bool on;
    ~restore_flags() {
      if (!on) return;
      const int saved = errno;
      ::fcntl(fd, F_SETFL, fl);
      errno = saved;
    }
  } restore{fd, fl, was_blocking};

  if (::connect(fd, addr, addr_len) == 0) return {};
  // EINTR: the attempt goes on in the background, as after EINPROGRESS.
  if (errno != EINPROGRESS && errno != EINTR) return detail::last_error();
  const std::error_code e = detail::lazy_wake().wait(c, fd, POLLOUT);
  if (e) {
    if (c.done()) {  // abort the handshake: the socket is unconnected again
      sockaddr unspec{};
      unspec.sa_family = AF_UNSPEC;
      (void)::connect(fd, &unspec, sizeof unspec);
    }
    return e;
  }
  int so_error = 0;
  socklen_t len = sizeof so_error;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len) < 0) return detail::last_error();
  return so_error ? std::error_code(so_error, std::system_category()) : std::error_code{};
}

template <class Clock>
accept_result accept(const basic_context<Clock>& c, int fd, sockaddr* addr, socklen_t* addr_len, int flags) {
  if (c.done()) return {-1, c.err()};
  detail::lazy_wake wake;
  for (;;) {
    if (const std::error_code e = wake.wait(c, fd, POLLIN)) return {-1, e};
    const int s = ::accept4(fd, addr, addr_len, flags);
    if (s >= 0) return {s, {}};
    if (errno != EINTR && errno != ECONNABORTED && !detail::would_block(errno))
      return {-1, detail::last_error()};
  }
}

}  // namespace ctx::io
