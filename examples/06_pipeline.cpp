// SPDX-License-Identifier: MIT
// A producer/consumer pipeline on ctx::bounded_queue: close() ends it
// cleanly, a deadline ends it early, and nothing in flight is lost.
#include <ctx/ctx.hpp>
#include <ctx/queue.hpp>
#include <ctx/sleep.hpp>
#include <ctx/task_group.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <system_error>

using namespace std::chrono_literals;

namespace {

/// Produces `jobs` jobs into `q`, then closes it. A job that could not be
/// queued is still here, to be retried or reported.
std::error_code produce(const ctx::context& c, ctx::bounded_queue<std::string>& q, int jobs) {
  std::error_code ec;
  for (int i = 0; i < jobs && !ec; ++i) {
    std::string job = "job-" + std::to_string(i);
    if ((ec = q.push(c, std::move(job))))
      std::printf("  not queued: %s (%s)\n", job.c_str(), ec.message().c_str());
  }
  q.close();  // consumers drain what is queued, then stop
  return ec;
}

std::error_code consume(const ctx::context& c, ctx::bounded_queue<std::string>& q, std::atomic<int>& done,
                        std::atomic<int>& interrupted) {
  std::error_code ec;
  while (auto job = q.pop(c, ec)) {
    if (const std::error_code stop = ctx::sleep_for(c, 2ms)) {  // the work itself
      interrupted.fetch_add(1);  // a real consumer would requeue or report *job
      return stop;
    }
    done.fetch_add(1);
  }
  return ec == ctx::queue_errc::closed ? std::error_code{} : ec;
}

std::error_code run(std::chrono::milliseconds budget, int jobs) {
  auto [c, cancel] = ctx::with_timeout(ctx::background(), budget);
  ctx::bounded_queue<std::string> q(4);
  std::atomic<int> done{0}, interrupted{0};
  ctx::task_group g(c);
  g.spawn([&](const ctx::context& gc) { return produce(gc, q, jobs); });
  for (int i = 0; i < 2; ++i)
    g.spawn([&](const ctx::context& gc) { return consume(gc, q, done, interrupted); });
  const std::error_code ec = g.wait();
  std::printf("  of %d jobs: %d done, %d interrupted, %zu still queued: %s\n", jobs, done.load(),
              interrupted.load(), q.size(), ec ? ec.message().c_str() : "ok");
  return ec;
}

}  // namespace

int main() {
  std::puts("enough time:");
  const std::error_code ok = run(5s, 20);
  std::puts("a 15 ms budget for 200 jobs:");
  const std::error_code late = run(15ms, 200);
  return !ok && late == ctx::errc::deadline_exceeded ? 0 : 1;
}
