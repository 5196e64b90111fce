// SPDX-License-Identifier: MIT
// fork() and ctx: fork() never waits for user code, and a child that uses
// only contexts it made itself never hangs, whatever the parent's threads
// were doing at the fork; deadlines inherited from the parent never fire in
// the child (see the file comment of detail/timer_service.hpp).
//
// Each scenario runs in a process of its own (forked from this one while it
// is single-threaded), in its own process group, which is killed when it
// does not finish in time: a hang fails the test instead of stalling the
// suite, and leaves no process behind. Scenarios report by exit code.
//
// Under ASan: a child of a multi-threaded process can deadlock on ASan's own
// allocator lock if another thread held it at the fork (tests/CMakeLists.txt).
// These scenarios are built so that no other thread allocates around the
// fork: the other threads are blocked, or loop on calls that allocate nothing.
#include <ctx/condition_variable.hpp>
#include <ctx/ctx.hpp>
#include <ctx/testing.hpp>

#include <poll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <future>
#include <latch>
#include <mutex>
#include <thread>

#include "support/catch.hpp"
#include "support/common.hpp"

using namespace std::chrono_literals;

namespace {

constexpr int timed_out = -1;
constexpr int killed_by_signal = -2;

/// Waits up to `limit` for child `pid` to end; on time-out kills it (and its
/// process group when `group`) and reaps it. Returns its exit status, or
/// timed_out / killed_by_signal.
int wait_for_child(pid_t pid, std::chrono::milliseconds limit, bool group = false) {
  const auto give_up = std::chrono::steady_clock::now() + limit;
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  bool ended = false;
  int status = 0;
  if (pidfd >= 0) {
    for (;;) {
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(give_up - std::chrono::steady_clock::now());
      pollfd p{pidfd, POLLIN, 0};
      const int r = ::poll(&p, 1, left.count() > 0 ? static_cast<int>(left.count()) : 0);
      if (r > 0) ended = true;
      if (r >= 0 || errno != EINTR) break;
    }
    ::close(pidfd);
  } else {  // no pidfd_open (kernels before 5.3, valgrind): look every millisecond
    while (std::chrono::steady_clock::now() < give_up) {
      const pid_t r = ::waitpid(pid, &status, WNOHANG);
      if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : killed_by_signal;
      if (r < 0 && errno != EINTR) break;
      std::this_thread::sleep_for(1ms);
    }
  }
  if (!ended) ::kill(group ? -pid : pid, SIGKILL);
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!ended) return timed_out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : killed_by_signal;
}

/// Runs `scenario` in a new process (its own process group) and returns its
/// exit code, or timed_out if it did not end within `limit`.
int run_scenario(int (*scenario)(), std::chrono::seconds limit = 60s) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return 2;
  if (pid == 0) {
    ::setpgid(0, 0);
    int rc = 3;
    try {
      rc = scenario();
    } catch (...) {
    }
    std::fflush(nullptr);
    ::_exit(rc);
  }
  ::setpgid(pid, pid);
  return wait_for_child(pid, limit, true);
}

/// Forks; the child runs `body` and exits with its result (0: passed).
template <class F>
pid_t fork_child(F&& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(body());
  return pid;
}

/// Starts the timer thread and lets it settle: a thread still starting (and
/// allocating, under ASan from ASan's own allocator) at the fork could leave
/// an allocator lock held in the child, a hang that is no fault of ctx.
void warm_up() {
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 1ms);
  c.wait();
  std::this_thread::sleep_for(5ms);  // the callback-free firing has returned to the heap
}

/// The child's own deadline: it must fire, whatever the parent left behind.
int own_deadline_fires() {
  auto [own, cancel] = ctx::with_timeout(ctx::background(), 20ms);
  own.wait();
  return own.err() == deadline_exceeded ? 0 : 1;
}

// --- the scenarios ---------------------------------------------------------------

// Issue 9, bug 2: the timer thread fires a deadline whose callback (the plain
// condition_variable waker of ctx::wait) waits for a mutex that the thread
// calling fork() holds. fork() used to wait for that firing to finish: for ever.
int fork_while_a_callback_waits_for_the_forking_threads_mutex() {
  warm_up();
  std::mutex m;
  std::condition_variable cv;
  std::atomic<int> checks{0};
  auto d = ctx::with_timeout(ctx::background(), 300ms);
  std::thread waiter([&] {
    std::unique_lock lock(m);
    ctx::wait(d.context, cv, lock, [&] {
      checks.fetch_add(1);
      return false;
    });
  });
  while (checks.load() < 2) std::this_thread::yield();  // the second check is made with the waker registered
  std::unique_lock held(m);                             // so the waiter is inside cv.wait()
  if (d.context.done()) {                               // too slow to set the scene: say so
    held.unlock();
    waiter.join();
    return 11;
  }
  while (!d.context.done()) std::this_thread::yield();  // the timer thread fires: its waker waits for `m`
  const pid_t pid = fork_child([] { return 0; });
  held.unlock();
  waiter.join();
  return wait_for_child(pid, 20s) == 0 ? 0 : 12;
}

// Issue 9, bug 3 (made certain): another thread holds the lock of a context
// whose deadline is due in the child. The child's timer thread used to fire
// that inherited deadline first and block on the lock for ever.
int child_of_a_parent_holding_a_contexts_lock_fires_its_own_deadlines() {
  warm_up();
  auto d = ctx::with_timeout(ctx::background(), 30ms);
  std::latch locked(1);
  std::latch release(1);
  std::thread holder([&] {
    ctx::detail::cancel_node* n = ctx::detail::access::of(d.context)->nearest_cancelable;
    n->mtx.lock();  // as a thread inside after_func() or stop_token() on `d` does, briefly
    locked.count_down();
    release.wait();
    n->mtx.unlock();
  });
  locked.wait();
  // `d` must still be pending here: its timer is what the child must not fire.
  const bool pending = !d.context.done();
  const pid_t pid = fork_child([&d] {
    auto [own, cancel] = ctx::with_timeout(ctx::background(), 100ms);  // due after `d`'s
    own.wait();
    return own.err() == deadline_exceeded && !d.context.done() ? 0 : 1;
  });
  const int rc = wait_for_child(pid, 20s);
  release.count_down();
  holder.join();
  d.context.wait();         // the parent's own timer thread fires it once the lock is free
  if (!pending) return 11;  // too slow to set the scene: say so
  return rc == 0 ? 0 : rc == timed_out ? 21 : 22;
}

// Issue 9, bug 3 (as found): a thread keeps asking a context for its stop
// token while the main thread forks; each child uses only its own deadline.
int children_forked_while_a_thread_uses_a_context_never_hang() {
  warm_up();
  int failed = 0;
  for (int round = 0; round < 40; ++round) {
    auto d = ctx::with_timeout(ctx::background(), 2ms);
    (void)d.context.stop_token();  // its stop state exists: later calls take the lock and allocate nothing
    std::atomic<bool> stop{false};
    std::latch running(1);
    std::thread user([&] {
      running.count_down();
      while (!stop.load(std::memory_order_relaxed)) (void)d.context.stop_token();
    });
    running.wait();
    const pid_t pid = fork_child(own_deadline_fires);
    stop = true;
    user.join();
    if (const int rc = wait_for_child(pid, 20s); rc != 0) {
      ++failed;
      std::fprintf(stderr, "fork_test: child of round %d ended with %d\n", round, rc);
    }
  }
  return failed == 0 ? 0 : 30;
}

// What inherited timers mean in the child: they never fire there; the
// context can still be cancelled there (and its children with it); the
// child's own deadlines fire, also below an inherited context's values.
int inherited_deadlines_never_fire_in_the_child() {
  warm_up();
  static constexpr ctx::key<int> k{"k"};
  auto inherited = ctx::with_timeout(ctx::background(), 100ms);
  auto parent_only = ctx::with_timeout(ctx::background(), 1h);  // clang 14 cannot capture structured bindings
  const pid_t pid = fork_child([&] {
    auto [own, cancel] = ctx::with_timeout(ctx::background(), 250ms);  // past the inherited deadline
    own.wait();
    bool ok = own.err() == deadline_exceeded;
    ok = ok && !inherited.context.done() && inherited.context.remaining() == 0ms;
    // Values kept, deadline dropped: a deadline of the child's own, which fires.
    const auto values = ctx::without_cancel(ctx::with_value(inherited.context, k, 7));
    auto [below, cb] = ctx::with_timeout(values, 10ms);
    below.wait();
    ok = ok && below.err() == deadline_exceeded && *below.value(k) == 7;
    auto [child_of_inherited, cc] = ctx::with_cancel(inherited.context);
    inherited.cancel();  // an inherited context can be cancelled in the child; its timer is simply gone
    ok = ok && inherited.context.err() == canceled && child_of_inherited.err() == canceled;
    ok = ok && !parent_only.context.done();
    return ok ? 0 : 1;
  });
  const bool pending = !inherited.context.done();  // else the scene was not set in time
  inherited.context.wait();                        // the parent's timer thread is unaffected
  const int rc = wait_for_child(pid, 20s);
  if (!pending && rc != 0) return 11;
  return rc == 0 && inherited.context.err() == deadline_exceeded ? 0 : 40;
}

// fork() from a callback running on the timer thread: no lock of the service
// is held while callbacks run, so the fork proceeds and the child works.
int fork_from_a_callback_on_the_timer_thread() {
  warm_up();
  auto d = ctx::with_timeout(ctx::background(), 5ms);
  std::atomic<int> child_rc{-100};
  std::atomic<bool> finished{false};
  auto reg = ctx::after_func(d.context, [&child_rc, &finished] {
    const pid_t pid = fork_child(own_deadline_fires);
    child_rc = wait_for_child(pid, 20s);
    finished = true;
    finished.notify_all();
  });
  finished.wait(false);  // not d.context.wait(): done() turns true before the callbacks run
  return child_rc.load() == 0 ? 0 : 50;
}

/// steady_clock's time, with a now() that, on the timer thread, waits for a
/// gate mutex when one is set: user code the timer thread calls.
struct gated_clock {
  using duration = std::chrono::steady_clock::duration;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<gated_clock>;
  [[maybe_unused]] static constexpr bool is_steady = true;
  static inline std::atomic<std::thread::id> timer_thread{};
  static inline std::atomic<std::mutex*> gate{nullptr};
  static inline std::atomic<bool> at_gate{false};
  static time_point now() {
    if (std::mutex* g = gate.load(); g && std::this_thread::get_id() == timer_thread.load()) {
      at_gate = true;
      std::lock_guard wait_for_gate(*g);
    }
    return time_point(std::chrono::steady_clock::now().time_since_epoch());
  }
};

// The timer thread reads a user clock's now(), which waits for a mutex the
// forking thread holds. It used to read it holding the service's mutex,
// which fork() takes: fork() waited on user code for ever.
int fork_while_the_timer_thread_is_in_a_user_clocks_now() {
  warm_up();
  std::promise<std::thread::id> fired_on;
  auto [first, c1] = ctx::with_timeout(ctx::background<gated_clock>(), 1ms);
  auto r1 = ctx::after_func(first, [&fired_on] { fired_on.set_value(std::this_thread::get_id()); });
  gated_clock::timer_thread = fired_on.get_future().get();
  std::mutex m;
  std::unique_lock held(m);
  gated_clock::gate = &m;
  auto [second, c2] = ctx::with_timeout(ctx::background<gated_clock>(), 50ms);  // wakes the timer thread
  while (!gated_clock::at_gate.load()) std::this_thread::yield();
  const pid_t pid = fork_child(own_deadline_fires);
  held.unlock();
  second.wait();
  gated_clock::gate = nullptr;
  return wait_for_child(pid, 20s) == 0 ? 0 : 70;
}

// Another thread is inside manual_clock::advance() (in a callback it fired)
// at the fork: the child's own advance() must neither hang nor skip timers.
int child_of_a_parent_inside_a_manual_clock_advance_can_advance() {
  auto d = ctx::with_timeout(ctx::background<manual>(), 1s);
  std::latch in_callback(1);
  std::latch release(1);
  auto reg = ctx::after_func(d.context, [&] {
    in_callback.count_down();
    release.wait();
  });
  std::thread mover([] { manual::advance(1s); });
  in_callback.wait();
  const pid_t pid = fork_child([] {
    auto [own, cancel] = ctx::with_timeout(ctx::background<manual>(), 1s);
    manual::advance(1s);
    return own.err() == deadline_exceeded ? 0 : 1;
  });
  const int rc = wait_for_child(pid, 20s);
  release.count_down();
  mover.join();
  return rc == 0 ? 0 : rc == timed_out ? 61 : 62;
}

// fork() from a callback that a manual-clock move runs on this thread: the
// child carries on out of the callback and the move (whose lock the forking
// thread holds, legitimately), then moves the clock itself.
int fork_from_a_callback_fired_by_a_manual_clock_move() {
  auto d = ctx::with_timeout(ctx::background<manual>(), 1s);
  pid_t pid = -1;
  auto reg = ctx::after_func(d.context, [&pid] {
    std::fflush(nullptr);
    pid = ::fork();
  });
  manual::advance(1s);  // runs the callback, which forks, on this thread
  if (pid == 0) {       // the child, out of the move
    auto [own, cancel] = ctx::with_timeout(ctx::background<manual>(), 1s);
    manual::advance(1s);
    auto [again, c2] = ctx::with_timeout(ctx::background<manual>(), 1s);
    manual::set(manual::now() + 1s);
    ::_exit(own.done() && again.done() ? 0 : 1);
  }
  if (pid < 0) return 81;
  return wait_for_child(pid, 20s) == 0 ? 0 : 80;
}

}  // namespace

TEST_CASE("fork does not wait for a callback blocked on a mutex the forking thread holds", "[fork]") {
  int rc = 11;
  for (int attempt = 0; attempt < 5 && rc == 11; ++attempt)  // 11: the scene was not set in time
    rc = run_scenario(fork_while_a_callback_waits_for_the_forking_threads_mutex, 30s);
  CHECK(rc == 0);
}

TEST_CASE("a child whose parent held a context's lock at the fork fires its own deadlines", "[fork]") {
  int rc = 11;
  for (int attempt = 0; attempt < 5 && rc == 11; ++attempt)  // 11: the scene was not set in time
    rc = run_scenario(child_of_a_parent_holding_a_contexts_lock_fires_its_own_deadlines, 60s);
  CHECK(rc == 0);
}

TEST_CASE("children forked while another thread uses a context never hang", "[fork]") {
  CHECK(run_scenario(children_forked_while_a_thread_uses_a_context_never_hang, 100s) == 0);
}

TEST_CASE("deadlines inherited from the parent never fire in the child", "[fork]") {
  int rc = 11;
  for (int attempt = 0; attempt < 5 && rc == 11; ++attempt)  // 11: the scene was not set in time
    rc = run_scenario(inherited_deadlines_never_fire_in_the_child, 60s);
  CHECK(rc == 0);
}

TEST_CASE("fork from a callback on the timer thread works", "[fork]") {
  CHECK(run_scenario(fork_from_a_callback_on_the_timer_thread, 30s) == 0);
}

TEST_CASE("fork does not wait for a user clock's now on the timer thread", "[fork]") {
  CHECK(run_scenario(fork_while_the_timer_thread_is_in_a_user_clocks_now, 30s) == 0);
}

TEST_CASE("fork from a callback that a manual clock move runs works", "[fork]") {
  CHECK(run_scenario(fork_from_a_callback_fired_by_a_manual_clock_move, 30s) == 0);
}

TEST_CASE("a child forked while another thread is inside a manual clock advance can advance", "[fork]") {
  CHECK(run_scenario(child_of_a_parent_inside_a_manual_clock_advance_can_advance, 30s) == 0);
}
