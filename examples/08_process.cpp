// SPDX-License-Identifier: MIT
// Runs child processes under a deadline: one finishes in time, one is stopped
// (SIGTERM, then SIGKILL after a grace period) and reaped when time runs out.
#include <ctx/ctx.hpp>
#include <ctx/process.hpp>

#include <spawn.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>

extern char** environ;

using namespace std::chrono_literals;

namespace {

pid_t start(const char* path, const char* arg1, const char* arg2) {
  char* argv[] = {const_cast<char*>(path), const_cast<char*>(arg1), const_cast<char*>(arg2), nullptr};
  pid_t pid = -1;
  return ::posix_spawn(&pid, path, nullptr, nullptr, argv, environ) == 0 ? pid : -1;
}

void report(const char* what, const ctx::process::result& r) {
  if (r.exited())
    std::printf("%s: exited with %d (%s)\n", what, r.exit_code(),
                r.error() ? r.error().message().c_str() : "in time");
  else if (r.signaled())
    std::printf("%s: ended by signal %d (%s)\n", what, r.signal(), r.error().message().c_str());
  else
    std::printf("%s: not waited for: %s\n", what, r.error().message().c_str());
}

}  // namespace

int main() {
  // The whole job gets one second.
  auto [job, cancel] = ctx::with_timeout(ctx::background(), 1s);

  const ctx::process::result quick = ctx::process::wait(job, start("/bin/sh", "-c", "exit 3"));
  report("sh -c 'exit 3'", quick);

  // Far too slow: at the deadline it gets SIGTERM, and SIGKILL 2 s later if it ignores that.
  const ctx::process::result slow =
      ctx::process::wait(job, start("/bin/sleep", "30", nullptr), {.signal = SIGTERM, .grace = 2s});
  report("sleep 30", slow);

  const bool ok = quick.exit_code() == 3 && !quick.error() && slow.error() == ctx::errc::deadline_exceeded &&
                  slow.signal() == SIGTERM;
  return ok ? 0 : 1;
}
