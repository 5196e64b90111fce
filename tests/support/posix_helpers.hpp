// SPDX-License-Identifier: MIT
// Test helpers for the fd and process adapters: owned fds, pipes, socket
// pairs, loopback TCP, and "is this thread blocked in poll() yet?".
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace test {

/// An owned fd.
class fd {
 public:
  fd() noexcept = default;
  explicit fd(int f) noexcept : f_(f) {}
  fd(fd&& o) noexcept : f_(std::exchange(o.f_, -1)) {}
  fd& operator=(fd&& o) noexcept {
    if (this != &o) {
      reset();
      f_ = std::exchange(o.f_, -1);
    }
    return *this;
  }
  ~fd() { reset(); }
  [[nodiscard]] int get() const noexcept { return f_; }
  void reset() noexcept {
    if (f_ >= 0) ::close(std::exchange(f_, -1));
  }

 private:
  int f_ = -1;
};

struct fd_pair {
  fd a, b;  // for a pipe: a reads, b writes
};

/// A pipe; `size` > 0 sets its capacity (F_SETPIPE_SZ, rounded up to a page).
inline fd_pair make_pipe(int flags = O_CLOEXEC, int size = 0) {
  int p[2];
  if (::pipe2(p, flags) != 0) throw std::runtime_error("pipe2");
  if (size > 0) ::fcntl(p[1], F_SETPIPE_SZ, size);
  return {fd(p[0]), fd(p[1])};
}

inline fd_pair make_socketpair(int type = SOCK_STREAM) {
  int s[2];
  if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, s) != 0) throw std::runtime_error("socketpair");
  return {fd(s[0]), fd(s[1])};
}

/// A TCP listener on 127.0.0.1, any free port.
struct tcp_listener {
  fd sock;
  sockaddr_in addr{};
  explicit tcp_listener(int backlog = 16, int flags = 0) {
    sock = fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | flags, 0));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (::bind(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
        ::getsockname(sock.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
        ::listen(sock.get(), backlog) != 0)
      throw std::runtime_error("tcp listener");
  }
  [[nodiscard]] const sockaddr* sa() const noexcept { return reinterpret_cast<const sockaddr*>(&addr); }
};

inline fd tcp_socket() { return fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)); }

/// The kernel thread id of the calling thread.
inline int this_tid() noexcept { return static_cast<int>(::syscall(SYS_gettid)); }

/// True if thread `tid` of this process is blocked in poll()/ppoll() right now.
inline bool blocked_in_poll(int tid) {
  std::ifstream f("/proc/self/task/" + std::to_string(tid) + "/syscall");
  long nr = -1;
  if (!(f >> nr)) return false;  // "running", or the thread is gone
#ifdef SYS_poll
  if (nr == SYS_poll) return true;
#endif
  return nr == SYS_ppoll;
}

/// True if thread `tid` of this process is blocked in futex() right now (a
/// mutex, a condition variable, std::atomic::wait).
inline bool blocked_in_futex(int tid) {
  std::ifstream f("/proc/self/task/" + std::to_string(tid) + "/syscall");
  long nr = -1;
  if (!(f >> nr)) return false;
  return nr == SYS_futex;
}

/// Waits (up to 60 s) until thread `tid` is blocked in poll(): the point
/// where a test knows a call really waits, not merely that it was started.
inline bool wait_until_blocked(int tid, bool (*blocked)(int) = blocked_in_poll) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!blocked(tid)) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

/// `n` bytes of a recognisable pattern: byte i is i % 251.
inline std::vector<std::byte> pattern(std::size_t n, std::size_t offset = 0) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i + offset) % 251);
  return v;
}

/// Reads everything now in non-blocking-readable `f` (until EAGAIN or EOF).
inline std::vector<std::byte> drain(int f) {
  const int fl = ::fcntl(f, F_GETFL);
  ::fcntl(f, F_SETFL, fl | O_NONBLOCK);
  std::vector<std::byte> out;
  std::byte buf[65536];
  for (;;) {
    const ssize_t n = ::read(f, buf, sizeof buf);
    if (n <= 0) break;
    out.insert(out.end(), buf, buf + n);
  }
  ::fcntl(f, F_SETFL, fl);
  return out;
}

/// Number of open fds of this process.
inline std::size_t open_fds() {
  std::size_t n = 0;
  for (int i = 0; i < 65536; ++i)
    if (::fcntl(i, F_GETFD) >= 0) ++n;
  return n;
}

}  // namespace test
