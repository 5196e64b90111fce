// SPDX-License-Identifier: MIT
// The one waiting mechanism of the fd adapters: poll() on an fd plus a
// per-thread eventfd that a std::stop_callback signals (Linux).
//
// Thread safety: each thread owns one eventfd (thread_local, created on first
// use, closed when the thread exits; a fork()ed child makes its own), so at
// most one operation at a time arms it. The stop callback may run on any
// thread (the canceller, the timer thread); it sets `fired` (release) and
// then writes to the eventfd, and touches nothing after the write. When an
// operation ends, the arming thread drains the eventfd if `fired` is set, so
// the next operation starts with a counter of zero: a stale wake-up cannot
// cancel it. If the drain found the write, the callback has nothing left to
// do but return, so its std::stop_callback is left in place and destroyed by
// the thread's next operation (or at its exit): destroying it at once could
// sleep until the cancelling thread leaves the callback, a futex round trip
// that would double the cancel-to-return latency. Otherwise the callback is
// destroyed at once (which waits for one that is running, after which none
// can start) and the eventfd drained again if it fired meanwhile.
#pragma once

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <new>
#include <optional>
#include <stop_token>
#include <system_error>

namespace ctx::detail {

/// The stop callback of a wake_guard: records that it ran, then signals the eventfd.
struct wake_on_stop {
  int fd;
  std::atomic<bool>* fired;
  void operator()() const noexcept {
    fired->store(true, std::memory_order_release);  // before the write: see ~wake_guard
    const std::uint64_t one = 1;
    while (::write(fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }
};

struct wake_fd_holder;

/// The calling thread's holder while it exists (constant-initialised: reading
/// it makes nothing), so that the fork handler touches only a holder that does.
inline thread_local constinit wake_fd_holder* this_thread_wake_fd_holder_made = nullptr;

/// Owns one thread's wake-up eventfd and the stop callback that signals it.
struct wake_fd_holder {
  int fd = -1;
  std::atomic<bool> fired{false};
  // The armed callback, or one that fired and wrote during the last
  // operation and may still be returning on the cancelling thread.
  std::optional<std::stop_callback<wake_on_stop>> cb;
  wake_fd_holder() = default;
  wake_fd_holder(const wake_fd_holder&) = delete;
  wake_fd_holder& operator=(const wake_fd_holder&) = delete;
  ~wake_fd_holder() {
    cb.reset();  // waits for a callback still returning on another thread
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

/// True once the calling thread's holder is destroyed (the thread is
/// exiting). Trivially destructible, so the destructors of other
/// thread_local objects, which may run after the holder's, can read it.
[[nodiscard]] inline bool& this_thread_wake_fd_gone() noexcept {
  thread_local bool gone = false;
  return gone;
}

/// The holder of the calling thread, which records its own destruction.
struct thread_wake_fd_holder : wake_fd_holder {
  thread_wake_fd_holder() = default;
  thread_wake_fd_holder(const thread_wake_fd_holder&) = delete;
  thread_wake_fd_holder& operator=(const thread_wake_fd_holder&) = delete;
  ~thread_wake_fd_holder() {
    this_thread_wake_fd_holder_made = nullptr;  // the fork handler no longer touches it
    this_thread_wake_fd_gone() = true;
  }
};

[[nodiscard]] inline wake_fd_holder& this_thread_wake_fd_holder() noexcept {
  thread_local thread_wake_fd_holder h;
  this_thread_wake_fd_holder_made = &h;
  return h;
}

/// pthread_atfork child handler: a forked child must not share its parent's
/// eventfd (a wake-up in one process would be seen, and drained, by the
/// other). The child has only the thread that called fork(), whose holder
/// this is; it makes a fresh eventfd on first use.
///
/// A stop callback left in place by the last operation is abandoned, not
/// destroyed: the thread that ran it in the parent does not exist here, and
/// destroying it could wait for that thread forever. Its stop state (a few
/// dozen bytes) is leaked in the child.
inline void forget_wake_fd_after_fork() noexcept {
  wake_fd_holder* made = this_thread_wake_fd_holder_made;
  if (!made) return;  // this thread never waited on an fd: nothing to forget
  wake_fd_holder& h = *made;
  if (h.fd >= 0) ::close(h.fd);
  h.fd = -1;
  ::new (static_cast<void*>(&h.cb)) std::optional<std::stop_callback<wake_on_stop>>();
}

/// Registers forget_wake_fd_after_fork before main(): registering it on the
/// first wait instead, in a function-local static, could leave its guard held
/// by another thread at a fork(), and the child would wait for it for ever.
inline const bool wake_fd_fork_handler_registered =
    ::pthread_atfork(nullptr, nullptr, &forget_wake_fd_after_fork) == 0;

/// The calling thread's wake-up eventfd, or -1 (errno set) if it could not be made.
///
/// Created once per thread, non-blocking and close-on-exec, and closed when
/// the thread exits; later calls cost no system call. A failed creation is
/// retried by the next call. A child made by fork() gets its own eventfd.
[[nodiscard]] inline int thread_wake_fd() noexcept {
  wake_fd_holder& h = this_thread_wake_fd_holder();
  if (h.fd < 0) [[unlikely]] {
    h.fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  }
  return h.fd;
}

/// EBADF when `fd` cannot be the caller's: negative, or the calling thread's
/// own wake-up eventfd, whose number the caller can only hold after closing
/// an fd of that number (the eventfd, made on first use, takes the lowest
/// free number). `{}` otherwise. Costs no system call.
[[nodiscard]] inline std::error_code bad_caller_fd(int fd) noexcept {
  if (fd < 0 || fd == this_thread_wake_fd_holder().fd) return {EBADF, std::system_category()};
  return {};
}

/// Arms the calling thread's wake fd on a stop token for one operation.
///
/// While a wake_guard lives, a stop request on the token makes fd() readable.
/// When the token can never be stopped, no eventfd is used and fd() is -1.
/// Not copyable or movable; at most one per thread at a time.
///
/// During thread exit, after the thread's holder is destroyed (a call from
/// the destructor of a thread_local object constructed before it), the guard
/// makes an eventfd of its own, closed when the guard goes: the thread's was
/// closed, and its number may belong to a file opened since, which the stop
/// callback would write to.
class wake_guard {
 public:
  explicit wake_guard(const std::stop_token& token) noexcept {
    if (!token.stop_possible()) return;
    if (this_thread_wake_fd_gone()) [[unlikely]] {
      own_.emplace();
      own_->fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      fd_ = own_->fd;
    } else {
      fd_ = thread_wake_fd();
    }
    if (fd_ < 0) {
      error_ = std::error_code(errno, std::system_category());
      return;
    }
    h_ = own_ ? &*own_ : &this_thread_wake_fd_holder();
    h_->cb.reset();  // the last operation's, which returned long ago: no wait
    h_->fired.store(false, std::memory_order_relaxed);
    // Runs inline here when stop was already requested.
    h_->cb.emplace(token, wake_on_stop{fd_, &h_->fired});
  }
  wake_guard(const wake_guard&) = delete;
  wake_guard& operator=(const wake_guard&) = delete;

  ~wake_guard() {
    if (!h_) return;
    // The write happened and was drained: the callback has nothing left to
    // do but return. Leave it to the next operation (see the file comment).
    if (h_->fired.load(std::memory_order_acquire) && drain()) return;
    h_->cb.reset();  // waits for a callback running on another thread; none starts afterwards
    if (h_->fired.load(std::memory_order_acquire)) drain();
  }

  /// The eventfd to poll for POLLIN, or -1 when the token can never be stopped.
  [[nodiscard]] int fd() const noexcept { return fd_; }

  /// Why the eventfd could not be made (EMFILE, ...); `{}` normally.
  [[nodiscard]] std::error_code error() const noexcept { return error_; }

 private:
  /// Reads the eventfd's count; false if it was empty (the write is still to come).
  bool drain() const noexcept {
    std::uint64_t value;
    ssize_t r;
    while ((r = ::read(fd_, &value, sizeof value)) < 0 && errno == EINTR) {
    }
    return r == static_cast<ssize_t>(sizeof value);
  }

  int fd_ = -1;
  std::error_code error_;
  wake_fd_holder* h_ = nullptr;        // null when nothing was armed
  std::optional<wake_fd_holder> own_;  // during thread exit only; destroyed after ~wake_guard's body
};

/// How a wait on an fd ended.
enum class poll_outcome { ready, stopped, failed };

/// Blocks in poll() until `fd` has one of `events` (or POLLERR/POLLHUP), or
/// the wake fd `wake` (-1: none) is readable. EINTR is retried. No timeout.
/// `stopped()` is asked after every wake-up and wins over readiness, so a
/// done context never transfers data. On `failed`, `ec` holds the error
/// (EBADF for a closed fd, POLLNVAL); on `ready`, `revents` the fd's events.
template <class Stopped>
[[nodiscard]] poll_outcome poll_fd(int fd, short events, int wake, Stopped&& stopped, std::error_code& ec,
                                   short* revents = nullptr) noexcept {
  // poll() ignores negative fds: it would wait for the wake fd alone.
  if (fd < 0 || fd == wake) {
    ec = std::error_code(EBADF, std::system_category());
    return poll_outcome::failed;
  }
  for (;;) {
    pollfd p[2] = {{fd, events, 0}, {wake, POLLIN, 0}};
    const int r = ::poll(p, wake >= 0 ? 2 : 1, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      ec = std::error_code(errno, std::system_category());
      return poll_outcome::failed;
    }
    if (stopped()) return poll_outcome::stopped;
    if (p[0].revents & POLLNVAL) {
      ec = std::error_code(EBADF, std::system_category());
      return poll_outcome::failed;
    }
    if (p[0].revents) {
      if (revents) *revents = p[0].revents;
      return poll_outcome::ready;
    }
    // The wake fd without a stop: a stale wake-up, which cannot happen (the
    // eventfd is drained after every operation whose callback fired). Should
    // one appear anyway, drain it rather than spin, and look at the context
    // again: a real stop request writes only after the context is done, so a
    // wake-up drained here is never lost.
    std::uint64_t stale;
    while (::read(wake, &stale, sizeof stale) < 0 && errno == EINTR) {
    }
    if (stopped()) return poll_outcome::stopped;
  }
}

/// The wake guard of one call, armed only when the call has to wait (a call
/// that completes at once costs no stop callback).
///
/// wait() rejects, with EBADF, a caller's fd that equals the thread's wake-up
/// eventfd, also when arming it just made the eventfd: the eventfd takes the
/// lowest free number, which may be the caller's just-closed fd, and a poll()
/// on it would wait for ctx's own wake-up (forever without a deadline).
class lazy_wake {
 public:
  lazy_wake() noexcept = default;
  lazy_wake(const lazy_wake&) = delete;
  lazy_wake& operator=(const lazy_wake&) = delete;

  /// Waits until `fd` has one of `events` (or POLLERR/POLLHUP) or `c` is
  /// done. `{}` when ready; `c.err()` when `c` is done (which wins over
  /// readiness); EBADF for a closed fd; else poll()'s or eventfd()'s error.
  template <class Context>
  [[nodiscard]] std::error_code wait(const Context& c, int fd, short events) {
    if (!guard_) guard_.emplace(c.stop_token());
    if (guard_->error()) return guard_->error();
    if (const std::error_code e = bad_caller_fd(fd)) return e;
    std::error_code ec;
    switch (poll_fd(
        fd, events, guard_->fd(), [&c]() noexcept { return c.done(); }, ec)) {
      case poll_outcome::ready:
        return {};
      case poll_outcome::stopped:
        return c.err();
      case poll_outcome::failed:
        break;
    }
    return ec;
  }

 private:
  std::optional<wake_guard> guard_;
};

/// The error of the calling thread's last failed system call.
[[nodiscard]] inline std::error_code last_error() noexcept { return {errno, std::system_category()}; }

}  // namespace ctx::detail
