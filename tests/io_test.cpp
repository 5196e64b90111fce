// SPDX-License-Identifier: MIT
// <ctx/io.hpp> on real pipes, socket pairs and loopback TCP: cancellation and
// deadlines while blocked, partial transfers, the fd's state afterwards, and
// the system's errors (EPIPE without SIGPIPE, EBADF, EINTR, EAGAIN).
#include <ctx/ctx.hpp>
#include <ctx/io.hpp>
#include <ctx/testing.hpp>

#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstring>
#include <future>
#include <latch>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"
#include "support/posix_helpers.hpp"

using namespace std::chrono_literals;

namespace {

std::error_code sys(int e) { return {e, std::system_category()}; }

std::span<const std::byte> as_bytes(const char* s) { return std::as_bytes(std::span(s, std::strlen(s))); }

/// Runs `f` on a new thread and records the thread's tid before `f` starts.
template <class R>
struct worker {
  std::atomic<int> tid{0};
  std::optional<R> out;
  std::latch started{1};  // a member: it outlives the thread's count_down()
  std::thread t;
  template <class F>
  explicit worker(F f) {
    t = std::thread([this, f] {
      tid = test::this_tid();
      started.count_down();
      out = f();
    });
    started.wait();
  }
  bool blocked() const { return test::wait_until_blocked(tid.load()); }
  R get() {
    t.join();
    return *out;
  }
};

}  // namespace

// --- a done context --------------------------------------------------------------

TEST_CASE("an already done context returns at once without touching the fd", "[io]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  auto p = test::make_pipe();
  REQUIRE(::write(p.b.get(), "data", 4) == 4);
  std::byte buf[16];

  CHECK(ctx::io::wait_readable(c, p.a.get()) == canceled);
  CHECK(ctx::io::wait_writable(c, p.b.get()) == canceled);
  const auto r = ctx::io::read(c, p.a.get(), buf);
  CHECK(r.bytes() == 0);
  CHECK(r.error() == canceled);
  const auto w = ctx::io::write(c, p.b.get(), as_bytes("more"));
  CHECK(w.bytes() == 0);
  CHECK(w.error() == canceled);
  CHECK(ctx::io::recv(c, -1, buf).error() == canceled);  // not even the fd is looked at
  CHECK(ctx::io::send(c, -1, as_bytes("x")).error() == canceled);
  CHECK(ctx::io::connect(c, -1, nullptr, 0) == canceled);
  CHECK(ctx::io::accept(c, -1).error() == canceled);
  CHECK(ctx::io::accept(c, -1).fd() == -1);

  // Nothing was read or written: the pipe holds exactly "data".
  const auto left = test::drain(p.a.get());
  REQUIRE(left.size() == 4);
  CHECK(std::memcmp(left.data(), "data", 4) == 0);
}

TEST_CASE("a context past its deadline reports deadline_exceeded without waiting", "[io]") {
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 0s);
  auto p = test::make_pipe();
  std::byte buf[4];
  CHECK(ctx::io::read(c, p.a.get(), buf).error() == deadline_exceeded);
}

// --- reads ---------------------------------------------------------------------------

TEST_CASE("read returns what is there, short reads included, and 0 bytes at end of file", "[io]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto p = test::make_pipe();
  REQUIRE(::write(p.b.get(), "hello", 5) == 5);
  std::byte buf[64];
  auto r = ctx::io::read(c, p.a.get(), buf);
  CHECK(r.error() == std::error_code{});
  CHECK(r.bytes() == 5);
  CHECK(std::memcmp(buf, "hello", 5) == 0);

  r = ctx::io::read(c, p.a.get(), std::span(buf, 0));  // empty buffer: no wait
  CHECK(r.bytes() == 0);
  CHECK(r.error() == std::error_code{});

  p.b.reset();
  r = ctx::io::read(c, p.a.get(), buf);
  CHECK(r.bytes() == 0);
  CHECK(r.error() == std::error_code{});
}

TEST_CASE("wait_readable and wait_writable report readiness, end of file included", "[io]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto p = test::make_pipe();
  CHECK(ctx::io::wait_writable(c, p.b.get()) == std::error_code{});
  REQUIRE(::write(p.b.get(), "x", 1) == 1);
  CHECK(ctx::io::wait_readable(c, p.a.get()) == std::error_code{});
  CHECK(ctx::io::wait_readable(c, p.a.get()) == std::error_code{});  // consumes nothing
  std::byte buf[4];
  REQUIRE(::read(p.a.get(), buf, sizeof buf) == 1);
  p.b.reset();
  CHECK(ctx::io::wait_readable(c, p.a.get()) == std::error_code{});  // the hang-up: read(2) sees EOF
}

TEST_CASE("recv passes its flags on: MSG_PEEK leaves the data", "[io]") {
  auto s = test::make_socketpair();
  REQUIRE(::send(s.b.get(), "peek", 4, 0) == 4);
  std::byte buf[8];
  CHECK(ctx::io::recv(ctx::background(), s.a.get(), buf, MSG_PEEK).bytes() == 4);
  CHECK(ctx::io::recv(ctx::background(), s.a.get(), buf).bytes() == 4);
}

TEST_CASE("read on a never-done context works without a wake-up fd", "[io]") {
  auto p = test::make_pipe();
  REQUIRE(::write(p.b.get(), "abc", 3) == 3);
  std::byte buf[8];
  const auto r = ctx::io::read(ctx::background(), p.a.get(), buf);
  CHECK(r.bytes() == 3);
  CHECK(r.error() == std::error_code{});
}

TEST_CASE("cancel while blocked in read returns canceled and leaves the pipe usable", "[io][cancel]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto p = test::make_pipe();
  worker<ctx::io::result> w([&, c = c] {
    std::byte buf[16];
    return ctx::io::read(c, p.a.get(), buf);
  });
  REQUIRE(w.blocked());
  cancel();
  const auto r = w.get();
  CHECK(r.error() == canceled);
  CHECK(r.bytes() == 0);

  REQUIRE(::write(p.b.get(), "after", 5) == 5);
  std::byte buf[16];
  const auto again = ctx::io::read(ctx::background(), p.a.get(), buf);
  CHECK(again.bytes() == 5);
  CHECK(again.error() == std::error_code{});
}

TEST_CASE("cancel while blocked in recv on a socket pair returns canceled", "[io][cancel]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto s = test::make_socketpair();
  worker<ctx::io::result> w([&, c = c] {
    std::byte buf[16];
    return ctx::io::recv(c, s.a.get(), buf);
  });
  REQUIRE(w.blocked());
  cancel(std::make_error_code(std::errc::connection_aborted));
  const auto r = w.get();
  CHECK(r.error() == canceled);  // err(), not the cause
  CHECK(r.bytes() == 0);

  REQUIRE(::send(s.b.get(), "x", 1, 0) == 1);
  std::byte buf[4];
  CHECK(ctx::io::recv(ctx::background(), s.a.get(), buf).bytes() == 1);
}

TEST_CASE("a manual-clock deadline wakes a blocked read exactly when the clock is advanced",
          "[io][deadline]") {
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 10s);
  auto p = test::make_pipe();
  std::atomic<bool> returned{false};
  worker<ctx::io::result> w([&, c = c] {
    std::byte buf[16];
    auto r = ctx::io::read(c, p.a.get(), buf);
    returned = true;
    return r;
  });
  REQUIRE(w.blocked());
  manual::advance(9s);
  CHECK_FALSE(c.done());
  CHECK_FALSE(returned.load());
  CHECK(test::blocked_in_poll(w.tid));
  manual::advance(1s);
  CHECK(c.done());
  const auto r = w.get();
  CHECK(r.error() == deadline_exceeded);
  CHECK(r.bytes() == 0);
}

TEST_CASE("a real deadline ends a blocked TCP read on loopback", "[io][deadline]") {
  test::tcp_listener l;
  auto client = test::tcp_socket();
  REQUIRE(ctx::io::connect(ctx::background(), client.get(), l.sa(), sizeof l.addr) == std::error_code{});
  const auto server = ctx::io::accept(ctx::background(), l.sock.get());
  REQUIRE(server.error() == std::error_code{});
  test::fd server_fd(server.fd());

  const auto start = std::chrono::steady_clock::now();
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 50ms);
  std::byte buf[16];
  const auto r = ctx::io::read(c, client.get(), buf);
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(r.error() == deadline_exceeded);
  CHECK(r.bytes() == 0);
  CHECK(took >= 50ms);
  CHECK(took < 30s);  // generous: the point is that it returns at all
}

TEST_CASE("a non-blocking fd waits instead of reporting EAGAIN", "[io][errors]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto p = test::make_pipe(O_CLOEXEC | O_NONBLOCK);
  worker<ctx::io::result> w([&, c = c] {
    std::byte buf[16];
    return ctx::io::read(c, p.a.get(), buf);
  });
  REQUIRE(w.blocked());
  REQUIRE(::write(p.b.get(), "late", 4) == 4);
  const auto r = w.get();
  CHECK(r.error() == std::error_code{});
  CHECK(r.bytes() == 4);
}

namespace {
std::atomic<int> usr1_count{0};
extern "C" void on_usr1(int) { usr1_count.fetch_add(1); }
}  // namespace

TEST_CASE("a signal interrupting a blocked read (EINTR) is retried", "[io][errors]") {
  struct sigaction sa {};
  sa.sa_handler = on_usr1;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: poll() fails with EINTR
  struct sigaction old {};
  REQUIRE(::sigaction(SIGUSR1, &sa, &old) == 0);
  usr1_count = 0;

  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto p = test::make_pipe();
  worker<ctx::io::result> w([&, c = c] {
    std::byte buf[16];
    return ctx::io::read(c, p.a.get(), buf);
  });
  REQUIRE(w.blocked());
  REQUIRE(::pthread_kill(w.t.native_handle(), SIGUSR1) == 0);
  while (usr1_count.load() == 0) std::this_thread::yield();
  REQUIRE(w.blocked());  // back in poll()
  REQUIRE(::write(p.b.get(), "ok", 2) == 2);
  const auto r = w.get();
  CHECK(r.error() == std::error_code{});
  CHECK(r.bytes() == 2);
  ::sigaction(SIGUSR1, &old, nullptr);
}

TEST_CASE("a bad fd is EBADF", "[io][errors]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto p = test::make_pipe();
  // A closed fd number far above the ones this test opens (the thread's
  // eventfd, made on first use, would otherwise take a just-closed low number).
  const int closed = ::fcntl(p.a.get(), F_DUPFD_CLOEXEC, 5000);
  REQUIRE(closed >= 5000);
  ::close(closed);
  std::byte buf[4];
  for (int f : {-1, closed}) {
    CHECK(ctx::io::wait_readable(c, f) == sys(EBADF));
    CHECK(ctx::io::wait_writable(c, f) == sys(EBADF));
    CHECK(ctx::io::read(c, f, buf).error() == sys(EBADF));
    CHECK(ctx::io::write(c, f, as_bytes("x")).error() == sys(EBADF));
    CHECK(ctx::io::recv(c, f, buf).error() == sys(EBADF));
    CHECK(ctx::io::send(c, f, as_bytes("x")).error() == sys(EBADF));
    CHECK(ctx::io::accept(c, f).error() == sys(EBADF));
    CHECK(ctx::io::read(ctx::background(), f, buf).error() == sys(EBADF));
  }
  CHECK(ctx::io::recv(c, p.b.get(), buf).error() == sys(ENOTSOCK));
}

// --- a closed fd: EBADF in every order of events -------------------------------------
//
// The thread's wake-up eventfd is made on its first wait and takes the lowest
// free fd number, which may be the one the caller just closed. A call on that
// number must still be EBADF: never a wait on ctx's own eventfd (until the
// deadline, or forever without one), never a read or write of it.

namespace {

/// Every call of <ctx/io.hpp> on `fd`, by name; each returns its error.
struct io_call {
  const char* name;
  std::error_code (*run)(const ctx::context&, int);
};

const io_call every_io_call[] = {
    {"wait_readable", [](const ctx::context& c, int f) { return ctx::io::wait_readable(c, f); }},
    {"wait_writable", [](const ctx::context& c, int f) { return ctx::io::wait_writable(c, f); }},
    {"read",
     [](const ctx::context& c, int f) {
       std::byte buf[8];
       return ctx::io::read(c, f, buf).error();
     }},
    {"write",
     [](const ctx::context& c, int f) { return ctx::io::write(c, f, as_bytes("12345678")).error(); }},
    {"recv",
     [](const ctx::context& c, int f) {
       std::byte buf[8];
       return ctx::io::recv(c, f, buf).error();
     }},
    {"send", [](const ctx::context& c, int f) { return ctx::io::send(c, f, as_bytes("12345678")).error(); }},
    {"accept", [](const ctx::context& c, int f) { return ctx::io::accept(c, f).error(); }},
    {"connect",
     [](const ctx::context& c, int f) {
       sockaddr_in to{};  // never reached: the fd is the problem
       to.sin_family = AF_INET;
       to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
       to.sin_port = htons(9);
       return ctx::io::connect(c, f, reinterpret_cast<const sockaddr*>(&to), sizeof to);
     }},
};

/// Closes a fresh pipe and returns the read end's number: the lowest free fd,
/// which the next fd this process makes takes (this test is single-threaded
/// but for the threads it starts, and those make no fd but the eventfd).
int closed_lowest_fd() {
  auto p = test::make_pipe();
  const int n = p.a.get();
  p.a.reset();
  p.b.reset();
  return n;
}

/// Runs `f` on a new thread, which has no wake-up eventfd yet, and returns
/// its result. Should `f` hang waiting on ctx's own eventfd at number
/// `release` (the bug under test), it is released by writes to that fd
/// every 2 s, so that the test fails instead of hanging.
template <class F>
auto on_new_thread(int release, F f) {
  std::promise<decltype(f())> out;
  auto result = out.get_future();
  std::thread t([&] { out.set_value(f()); });
  while (result.wait_for(2s) != std::future_status::ready) {
    const std::uint64_t one = 1;
    (void)!::write(release, &one, sizeof one);
  }
  t.join();
  return result.get();
}

}  // namespace

TEST_CASE("a closed fd is EBADF when the call's own wake-up fd takes its number", "[io][errors][wake]") {
  for (const io_call& call : every_io_call) {
    INFO(call.name);
    const int closed = closed_lowest_fd();
    const auto [e, wake_fd] = on_new_thread(closed, [&] {
      auto [c, cancel] = ctx::with_cancel(ctx::background());
      const std::error_code r = call.run(c, closed);
      return std::pair(r, ctx::detail::this_thread_wake_fd_holder().fd);
    });
    CHECK(e == sys(EBADF));
    // The calls that wait before any system call on the fd made the eventfd, and it took the number.
    if (wake_fd >= 0) CHECK(wake_fd == closed);
  }
}

TEST_CASE("a closed fd is EBADF when the thread's wake-up fd took its number before", "[io][errors][wake]") {
  auto p = test::make_pipe();
  const int closed = closed_lowest_fd();
  const auto results = on_new_thread(closed, [&] {
    std::vector<std::pair<std::string, std::error_code>> r;
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    if (ctx::io::wait_writable(c, p.b.get())) return r;  // makes the eventfd
    r.emplace_back("the wake-up fd took the closed number",
                   ctx::detail::this_thread_wake_fd_holder().fd == closed ? std::error_code{} : sys(EBADF));
    for (const io_call& call : every_io_call) {
      r.emplace_back(std::string(call.name) + " on a cancellable context", call.run(c, closed));
      r.emplace_back(std::string(call.name) + " on background()", call.run(ctx::background(), closed));
    }
    // Nothing wrote to or read from the eventfd: a cancel still wakes a blocked read.
    std::uint64_t v;
    r.emplace_back("the eventfd is untouched",
                   ::read(closed, &v, sizeof v) == -1 && errno == EAGAIN ? std::error_code{} : sys(EBADF));
    auto [c2, cancel2] = ctx::with_timeout(ctx::background(), 10ms);
    std::byte buf[1];
    r.emplace_back(
        "a deadline still wakes a read",
        ctx::io::read(c2, p.a.get(), buf).error() == deadline_exceeded ? std::error_code{} : sys(EBADF));
    return r;
  });
  REQUIRE(results.size() == 2 + 2 * std::size(every_io_call) + 1);
  for (const auto& [what, e] : results) {
    INFO(what);
    if (what.find(" on ") != std::string::npos)
      CHECK(e == sys(EBADF));
    else
      CHECK(e == std::error_code{});
  }
}

TEST_CASE("a closed fd is EBADF when the thread's wake-up fd has another number", "[io][errors][wake]") {
  auto p = test::make_pipe();
  const auto results = on_new_thread(-1, [&] {
    std::vector<std::error_code> r;
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    (void)ctx::io::wait_writable(c, p.b.get());  // makes the eventfd
    const int closed = closed_lowest_fd();       // now a number the eventfd does not have
    if (closed == ctx::detail::this_thread_wake_fd_holder().fd) return r;
    for (const io_call& call : every_io_call) {
      r.push_back(call.run(c, closed));
      r.push_back(call.run(ctx::background(), closed));
    }
    return r;
  });
  REQUIRE(results.size() == 2 * std::size(every_io_call));
  for (const auto& e : results) CHECK(e == sys(EBADF));
}

// --- writes ----------------------------------------------------------------------------

TEST_CASE("write writes everything to a pipe and a socket while a reader drains it", "[io]") {
  const auto data = test::pattern(1 << 20);
  for (bool on_socket : {false, true}) {
    auto p = on_socket ? test::make_socketpair() : test::make_pipe();
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    std::vector<std::byte> got;
    std::thread reader([&] {
      std::byte buf[8192];
      for (;;) {
        const ssize_t n = ::read(p.a.get(), buf, sizeof buf);
        if (n <= 0) break;
        got.insert(got.end(), buf, buf + n);
      }
    });
    const auto r = ctx::io::write(c, p.b.get(), data);
    p.b.reset();
    reader.join();
    CHECK(r.error() == std::error_code{});
    CHECK(r.bytes() == data.size());
    CHECK(std::ranges::equal(got, data));
  }
}

namespace {

// Holds a thread inside a signal handler until released: the thread can then
// not run the code after its poll(), which makes a schedule certain.
std::atomic<bool> held_in_handler{false};
std::atomic<bool> release_handler{false};
extern "C" void hold_until_released(int) {
  held_in_handler.store(true);
  while (!release_handler.load()) {
  }
}

}  // namespace

TEST_CASE("a cancelled write reports exactly how much it wrote", "[io][cancel]") {
  // A small pipe (blocking and not), and a socket pair: the reader takes some
  // bytes, the writer blocks on the full buffer, the cancel ends it, and what
  // arrived is exactly the first bytes() bytes of the data. Two schedules:
  // the writer free to refill the buffer before the cancel lands, and the
  // writer held (in a signal handler, outside poll()) while the reader takes
  // bytes and the cancel lands, so that it wrote nothing more than what was
  // read. The bytes written are at least the bytes read before the cancel:
  // no more can be promised (with a 4096-byte pipe, reads of up to 1000 bytes
  // take exactly 8192 in ten reads, and the cancel may land before the writer
  // refills the third page).
  struct sigaction sa {};
  sa.sa_handler = hold_until_released;
  sigemptyset(&sa.sa_mask);
  struct sigaction old {};
  REQUIRE(::sigaction(SIGUSR2, &sa, &old) == 0);
  const auto data = test::pattern(1 << 20);
  enum kind { blocking_pipe, nonblocking_pipe, socket_pair };
  for (const bool hold_writer : {false, true})
    for (kind k : {blocking_pipe, nonblocking_pipe, socket_pair}) {
      INFO("kind " << k << (hold_writer ? ", writer held" : ""));
      auto p = k == socket_pair ? test::make_socketpair() : test::make_pipe(O_CLOEXEC, 4096);
      if (k == nonblocking_pipe) ::fcntl(p.b.get(), F_SETFL, O_NONBLOCK);  // the write end only
      auto [c, cancel] = ctx::with_cancel(ctx::background());
      worker<ctx::io::result> w([&, c = c] { return ctx::io::write(c, p.b.get(), data); });
      REQUIRE(w.blocked());
      if (hold_writer) {
        held_in_handler = false;
        release_handler = false;
        REQUIRE(::pthread_kill(w.t.native_handle(), SIGUSR2) == 0);
        while (!held_in_handler.load()) std::this_thread::yield();
      }
      std::vector<std::byte> got;
      std::byte buf[1000];
      for (int i = 0; i < 10; ++i) {
        const ssize_t n = ::read(p.a.get(), buf, sizeof buf);
        REQUIRE(n > 0);
        got.insert(got.end(), buf, buf + n);
        if (hold_writer) break;  // the held writer refills nothing: one read, or the next one blocks for ever
      }
      const std::size_t read_before_cancel = got.size();
      if (!hold_writer) REQUIRE(w.blocked());
      cancel();
      release_handler = true;
      const auto r = w.get();
      CHECK(r.error() == canceled);
      const auto rest = test::drain(p.a.get());
      got.insert(got.end(), rest.begin(), rest.end());
      CHECK(r.bytes() >= read_before_cancel);
      CHECK(r.bytes() < data.size());
      CHECK(got.size() == r.bytes());
      CHECK(std::equal(got.begin(), got.end(), data.begin()));

      // The fd is unchanged and usable: its flags, and a write that fits.
      CHECK(((::fcntl(p.b.get(), F_GETFL) & O_NONBLOCK) != 0) == (k == nonblocking_pipe));
      const auto more = ctx::io::write(ctx::background(), p.b.get(), as_bytes("more"));
      CHECK(more.bytes() == 4);
    }
  ::sigaction(SIGUSR2, &old, nullptr);
}

TEST_CASE("a closed reader is EPIPE, never a SIGPIPE", "[io][errors]") {
  auto old = std::signal(SIGPIPE, SIG_DFL);  // a SIGPIPE would kill the test
  for (bool on_socket : {false, true}) {
    auto p = on_socket ? test::make_socketpair() : test::make_pipe();
    p.a.reset();
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    const auto r = ctx::io::write(c, p.b.get(), test::pattern(100));
    CHECK(r.error() == sys(EPIPE));
    CHECK(r.bytes() == 0);
    if (on_socket) CHECK(ctx::io::send(c, p.b.get(), test::pattern(1)).error() == sys(EPIPE));
    sigset_t pending, mask;
    sigemptyset(&pending);
    ::sigpending(&pending);
    CHECK_FALSE(sigismember(&pending, SIGPIPE));  // consumed
    ::pthread_sigmask(SIG_SETMASK, nullptr, &mask);
    CHECK_FALSE(sigismember(&mask, SIGPIPE));  // the thread's mask is restored
  }
  std::signal(SIGPIPE, old);
}

TEST_CASE("a SIGPIPE the caller already blocked stays the caller's", "[io][errors]") {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGPIPE);
  REQUIRE(::pthread_sigmask(SIG_BLOCK, &block, &old) == 0);
  auto p = test::make_pipe();
  p.a.reset();
  CHECK(ctx::io::write(ctx::background(), p.b.get(), as_bytes("x")).error() == sys(EPIPE));
  sigset_t pending;
  sigemptyset(&pending);
  ::sigpending(&pending);
  CHECK(sigismember(&pending, SIGPIPE));  // left pending for the caller, who blocked it
  const timespec zero{};
  CHECK(::sigtimedwait(&block, nullptr, &zero) == SIGPIPE);
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

TEST_CASE("cancel while blocked in wait_writable on a full socket returns canceled", "[io][cancel]") {
  auto s = test::make_socketpair();
  // Fill the socket buffer.
  const auto chunk = test::pattern(65536);
  while (::send(s.b.get(), chunk.data(), chunk.size(), MSG_DONTWAIT) > 0) {
  }
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  worker<std::error_code> w([&, c = c] { return ctx::io::wait_writable(c, s.b.get()); });
  REQUIRE(w.blocked());
  cancel();
  CHECK(w.get() == canceled);
}

// --- sockets: connect, accept, send, recv -------------------------------------------------

TEST_CASE("connect, accept, send and recv work on loopback TCP", "[io][tcp]") {
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 60s);
  test::tcp_listener l;
  auto client = test::tcp_socket();
  REQUIRE(ctx::io::connect(c, client.get(), l.sa(), sizeof l.addr) == std::error_code{});
  CHECK((::fcntl(client.get(), F_GETFL) & O_NONBLOCK) == 0);  // flags restored
  sockaddr_in peer{};
  socklen_t peer_len = sizeof peer;
  const auto a = ctx::io::accept(c, l.sock.get(), reinterpret_cast<sockaddr*>(&peer), &peer_len);
  REQUIRE(a.error() == std::error_code{});
  test::fd server(a.fd());
  CHECK(peer.sin_family == AF_INET);
  CHECK((::fcntl(server.get(), F_GETFD) & FD_CLOEXEC) != 0);

  const auto sent = ctx::io::send(c, client.get(), as_bytes("ping"));
  CHECK(sent.bytes() == 4);
  CHECK(sent.error() == std::error_code{});
  std::byte buf[16];
  const auto got = ctx::io::recv(c, server.get(), buf);
  CHECK(got.bytes() == 4);
  CHECK(std::memcmp(buf, "ping", 4) == 0);
}

TEST_CASE("connect to a closed port is ECONNREFUSED", "[io][tcp][errors]") {
  sockaddr_in addr{};
  {
    test::tcp_listener l;  // find a free port, then close it
    addr = l.addr;
  }
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto s = test::tcp_socket();
  CHECK(ctx::io::connect(c, s.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) ==
        sys(ECONNREFUSED));
}

TEST_CASE("cancel while blocked in connect aborts it and leaves the socket reusable", "[io][tcp][cancel]") {
  // A listener with backlog 0 and one connection queued drops further SYNs,
  // so the next connect waits in SYN-SENT.
  test::tcp_listener l(0);
  auto first = test::tcp_socket();
  REQUIRE(ctx::io::connect(ctx::background(), first.get(), l.sa(), sizeof l.addr) == std::error_code{});

  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto second = test::tcp_socket();
  worker<std::error_code> w([&, c = c] { return ctx::io::connect(c, second.get(), l.sa(), sizeof l.addr); });
  REQUIRE(w.blocked());
  cancel();
  CHECK(w.get() == canceled);
  CHECK((::fcntl(second.get(), F_GETFL) & O_NONBLOCK) == 0);  // flags restored

  // Make room, and connect the same socket again.
  const auto a = ctx::io::accept(ctx::background(), l.sock.get());
  REQUIRE(a.error() == std::error_code{});
  test::fd accepted(a.fd());
  auto [c2, cancel2] = ctx::with_timeout(ctx::background(), 60s);
  CHECK(ctx::io::connect(c2, second.get(), l.sa(), sizeof l.addr) == std::error_code{});
}

TEST_CASE("cancel while blocked in accept returns canceled and leaves the listener usable",
          "[io][tcp][cancel]") {
  test::tcp_listener l;
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  worker<ctx::io::accept_result> w([&, c = c] { return ctx::io::accept(c, l.sock.get()); });
  REQUIRE(w.blocked());
  cancel();
  const auto r = w.get();
  CHECK(r.error() == canceled);
  CHECK(r.fd() == -1);

  auto client = test::tcp_socket();
  REQUIRE(ctx::io::connect(ctx::background(), client.get(), l.sa(), sizeof l.addr) == std::error_code{});
  const auto a = ctx::io::accept(ctx::background(), l.sock.get());
  CHECK(a.error() == std::error_code{});
  test::fd accepted(a.fd());
  CHECK(accepted.get() >= 0);
}

TEST_CASE("a full Unix-domain backlog is EAGAIN from connect, reported as is", "[io][errors]") {
  // A non-blocking connect(2) on a Unix socket cannot wait for room in the
  // backlog, and connect() runs the socket non-blocking: the system's EAGAIN.
  test::fd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string name = "ctx-io-test-" + std::to_string(::getpid());
  std::memcpy(addr.sun_path + 1, name.data(), name.size());  // abstract: no file
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  const auto* sa = reinterpret_cast<const sockaddr*>(&addr);
  REQUIRE(::bind(listener.get(), sa, len) == 0);
  REQUIRE(::listen(listener.get(), 0) == 0);

  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::vector<test::fd> clients;
  std::error_code e;
  for (int i = 0; i < 8 && !e; ++i) {
    clients.emplace_back(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    e = ctx::io::connect(c, clients.back().get(), sa, len);
  }
  CHECK(e == sys(EAGAIN));
  CHECK((::fcntl(clients.back().get(), F_GETFL) & O_NONBLOCK) == 0);  // flags restored
}

TEST_CASE("a signal interrupting a blocked write (EINTR) loses and repeats nothing", "[io][errors]") {
  struct sigaction sa {};
  sa.sa_handler = on_usr1;
  sigemptyset(&sa.sa_mask);
  struct sigaction old {};
  REQUIRE(::sigaction(SIGUSR1, &sa, &old) == 0);
  usr1_count = 0;

  const auto data = test::pattern(100000);
  auto p = test::make_pipe(O_CLOEXEC, 4096);
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  worker<ctx::io::result> w([&, c = c] { return ctx::io::write(c, p.b.get(), data); });
  REQUIRE(w.blocked());
  REQUIRE(::pthread_kill(w.t.native_handle(), SIGUSR1) == 0);
  while (usr1_count.load() == 0) std::this_thread::yield();
  std::vector<std::byte> got;
  std::byte buf[8192];
  while (got.size() < data.size()) {
    const ssize_t n = ::read(p.a.get(), buf, sizeof buf);
    REQUIRE(n > 0);
    got.insert(got.end(), buf, buf + n);
  }
  const auto r = w.get();
  CHECK(r.error() == std::error_code{});
  CHECK(r.bytes() == data.size());
  CHECK(std::ranges::equal(got, data));
  ::sigaction(SIGUSR1, &old, nullptr);
}

// --- the wake-up fd ------------------------------------------------------------------------

TEST_CASE("a stale wake-up does not cancel the next operation on the thread", "[io][wake]") {
  // Cancels racing with reads that complete anyway, then a check that the
  // thread's eventfd is back to zero, and a final blocked read that must wait.
  auto p = test::make_pipe();
  std::atomic<int> stale{0}, failed{0};
  std::thread t([&] {
    for (int i = 0; i < 500; ++i) {
      auto [c, cancel_c] = ctx::with_cancel(ctx::background());
      const ctx::cancel_handle& cancel =
          cancel_c;  // a lambda cannot capture a structured binding in clang < 16
      if (::write(p.b.get(), "x", 1) != 1) ++failed;
      std::thread canceller([&cancel] { cancel(); });
      std::byte buf[1];
      const auto r = ctx::io::read(c, p.a.get(), buf);
      canceller.join();
      if (r.error()) {  // cancelled before the read: take the byte out
        if (r.error() != canceled || ::read(p.a.get(), buf, 1) != 1) ++failed;
      }
      std::uint64_t v;
      if (::read(ctx::detail::thread_wake_fd(), &v, sizeof v) != -1 || errno != EAGAIN) ++stale;
    }
  });
  t.join();
  CHECK(failed.load() == 0);
  CHECK(stale.load() == 0);

  // After a cancel that did wake this thread, the next wait still blocks.
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto [c2, cancel2] = ctx::with_cancel(ctx::background());
  std::atomic<int> phase{0};
  worker<ctx::io::result> w([&, c = c, c2 = c2] {
    std::byte buf[4];
    const auto first = ctx::io::read(c, p.a.get(), buf);
    if (first.error() != canceled) return first;
    phase = 1;
    return ctx::io::read(c2, p.a.get(), buf);
  });
  REQUIRE(w.blocked());
  cancel();
  while (phase.load() == 0) std::this_thread::yield();
  REQUIRE(w.blocked());
  REQUIRE(::write(p.b.get(), "ok", 2) == 2);
  const auto r = w.get();
  CHECK(r.error() == std::error_code{});
  CHECK(r.bytes() == 2);
}

TEST_CASE("the wake-up eventfd is made once per thread and reused", "[io][wake]") {
  auto p = test::make_pipe();
  int first = -1, last = -2, reads = 0;
  std::size_t before = 0, after = 1;
  std::thread t([&] {
    first = ctx::detail::thread_wake_fd();
    before = test::open_fds();
    for (int i = 0; i < 100; ++i) {
      auto [c, cancel] = ctx::with_cancel(ctx::background());
      std::byte buf[1];
      if (::write(p.b.get(), "x", 1) == 1 && ctx::io::read(c, p.a.get(), buf).bytes() == 1) ++reads;
    }
    after = test::open_fds();
    last = ctx::detail::thread_wake_fd();
  });
  t.join();
  CHECK(reads == 100);
  CHECK(first >= 0);
  CHECK(after == before);
  CHECK(last == first);
}

TEST_CASE("a stray wake-up on the eventfd is drained, not spun on", "[io][wake]") {
  // White-box: a wake-up without a stop request (which ctx never leaves
  // behind) must not make the call return, nor spin: it waits in poll() again.
  auto p = test::make_pipe();
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  worker<ctx::io::result> w([&, c = c] {
    const std::uint64_t one = 1;
    if (::write(ctx::detail::thread_wake_fd(), &one, sizeof one) != sizeof one) return ctx::io::result{};
    std::byte buf[4];
    return ctx::io::read(c, p.a.get(), buf);
  });
  REQUIRE(w.blocked());
  REQUIRE(::write(p.b.get(), "ok", 2) == 2);
  const auto r = w.get();
  CHECK(r.error() == std::error_code{});
  CHECK(r.bytes() == 2);
}

TEST_CASE("a forked child does not share the thread's wake-up eventfd", "[io][wake]") {
  auto p = test::make_pipe();
  {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    REQUIRE(::write(p.b.get(), "x", 1) == 1);
    std::byte buf[1];
    REQUIRE(ctx::io::read(c, p.a.get(), buf).bytes() == 1);  // this thread has its eventfd now
  }
  const int parent_fd = ctx::detail::thread_wake_fd();
  REQUIRE(parent_fd >= 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Signal the child's own eventfd, then check that the parent's copy, if
    // the fd number is still open here at all, is not the same eventfd.
    const std::uint64_t one = 1;
    const int mine = ctx::detail::thread_wake_fd();
    const bool ok = mine >= 0 && ::write(mine, &one, sizeof one) == sizeof one;
    ::_exit(ok ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  std::uint64_t v;
  CHECK(::read(parent_fd, &v, sizeof v) == -1);  // the child's wake-up did not reach the parent
  CHECK(errno == EAGAIN);
}

TEST_CASE("a forked child's first wait after a cancelled one in the parent works", "[io][wake]") {
  // White-box: a wait that was woken by a cancel leaves its std::stop_callback
  // to the thread's next wait (so that it need not sleep until the cancelling
  // thread has left the callback). A fork()ed child abandons it: its next
  // wait must neither touch the parent's callback nor hang.
  auto p = test::make_pipe();
  auto [c, cancel_c] = ctx::with_cancel(ctx::background());
  const ctx::cancel_handle& cancel = cancel_c;  // a lambda cannot capture a structured binding in clang < 16
  std::thread canceller([&cancel, tid = test::this_tid()] {
    (void)test::wait_until_blocked(tid);
    cancel();
  });
  std::byte buf[1];
  const auto r = ctx::io::read(c, p.a.get(), buf);
  canceller.join();
  REQUIRE(r.error() == canceled);
  REQUIRE(ctx::detail::this_thread_wake_fd_holder().cb.has_value());  // the case under test
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    auto [c2, cancel2] = ctx::with_cancel(ctx::background());
    std::byte b[1];
    const bool ok = ::write(p.b.get(), "x", 1) == 1 && ctx::io::read(c2, p.a.get(), b).bytes() == 1;
    ::_exit(ok ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("a thousand threads blocked on one context all wake on one cancel", "[io][cancel][stress]") {
  constexpr int n = 1000;
  auto p = test::make_pipe();
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  std::vector<std::atomic<int>> tids(n);
  std::vector<std::error_code> results(n);
  std::latch started(n);
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i, c = c] {
      tids[static_cast<std::size_t>(i)] = test::this_tid();
      started.count_down();
      results[static_cast<std::size_t>(i)] = ctx::io::wait_readable(c, p.a.get());
    });
  }
  started.wait();
  for (auto& tid : tids) REQUIRE(test::wait_until_blocked(tid.load()));
  cancel();
  for (auto& t : threads) t.join();
  int woken = 0;
  for (const auto& r : results) woken += r == canceled;
  CHECK(woken == n);
}
