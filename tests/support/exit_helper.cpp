// SPDX-License-Identifier: MIT
// A child process for the exit tests. Each mode leaves deadlines pending on
// the real timer thread, after_func registrations alive, and threads blocked
// in wait(), then ends the process in a different way (return from main,
// exit(), quick_exit() with an at_quick_exit handler, static destructors).
// It must exit 0 (`throwing_callback` exits 0 when its forked child died in
// std::terminate).
#include <ctx/ctx.hpp>

#include <sys/wait.h>
#include <unistd.h>
#include <chrono>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <latch>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct pending_work {
  ctx::cancel_handle root_cancel;
  ctx::context root;
  std::vector<ctx::cancel_handle> handles;
  std::vector<ctx::context> contexts;
  std::vector<ctx::registration> regs;

  pending_work() {
    auto [r, rc] = ctx::with_cancel(ctx::background());
    root = r;
    root_cancel = std::move(rc);
    for (int i = 0; i < 5000; ++i) {
      // Deadlines from "fires during exit" to "an hour from now".
      auto [c, h] = ctx::with_timeout(root, std::chrono::microseconds(i * 20) + (i % 2 ? 1h : 0h));
      regs.push_back(ctx::after_func(c, [] {}));
      contexts.push_back(std::move(c));
      handles.push_back(std::move(h));
    }
  }
};

// A second static owner of pending work, constructed later, destroyed first.
struct static_holder {
  pending_work work;
};

void start_blocked_waiters(const ctx::context& c, int n) {
  std::latch started(n);
  for (int i = 0; i < n; ++i)
    std::thread([c, &started] {
      started.count_down();
      c.wait();  // never done before exit
    }).detach();
  started.wait();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: exit_helper return|exit|quick_exit|static_destructor|throwing_callback\n");
    return 2;
  }
  const char* mode = argv[1];
  if (std::strcmp(mode, "throwing_callback") == 0) {
    // The child's callback throws: std::terminate must abort it (documented).
    const pid_t pid = fork();
    if (pid == 0) {
      auto [c, cancel] = ctx::with_cancel(ctx::background());
      auto reg = ctx::after_func(c, [] { throw 42; });
      cancel();
      _exit(0);  // not reached
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return 3;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT ? 0 : 1;
  }

  static pending_work work;  // its static destructor runs while timers are pending
  auto [c, cancel] = ctx::with_cancel(work.root);
  start_blocked_waiters(c, 8);
  std::this_thread::sleep_for(5ms);  // let some deadlines fire on the timer thread

  if (std::strcmp(mode, "return") == 0) return 0;
  if (std::strcmp(mode, "quick_exit") == 0) {
    // No static destructors run: the pending timers, registrations and
    // blocked waiters are simply abandoned. An at_quick_exit handler that
    // cancels the root (waking the waiters, running thousands of callbacks)
    // on the way out must work too.
    std::at_quick_exit([] { work.root_cancel(); });
    std::quick_exit(0);
  }
  if (std::strcmp(mode, "exit") == 0) std::exit(0);
  if (std::strcmp(mode, "static_destructor") == 0) {
    static static_holder holder;  // a second static owner, destroyed first
    return 0;
  }
  std::fprintf(stderr, "exit_helper: unknown mode %s\n", mode);
  return 2;
}
