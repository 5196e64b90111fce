// SPDX-License-Identifier: MIT
// Retrying a flaky call with exponential backoff, bounded by the request's deadline.
//
// ctx::sleep_for ends early when the context is done, so the retry loop
// stops at the deadline instead of sleeping past it.
#include <ctx/ctx.hpp>
#include <ctx/sleep.hpp>

#include <chrono>
#include <cstdio>
#include <system_error>

using namespace std::chrono_literals;

namespace {

int failures_left = 3;

/// A downstream call that is refused `failures_left` times, then succeeds.
std::error_code call_downstream(const ctx::context& c) {
  if (c.done()) return c.err();
  if (failures_left-- > 0) return std::make_error_code(std::errc::connection_refused);
  return {};
}

std::error_code call_with_retry(const ctx::context& c) {
  std::chrono::milliseconds backoff = 5ms;
  for (int attempt = 1;; ++attempt) {
    const std::error_code ec = call_downstream(c);
    if (!ec) return {};
    std::printf("  attempt %d: %s; next try in %lld ms\n", attempt, ec.message().c_str(),
                static_cast<long long>(backoff.count()));
    if (const std::error_code over = ctx::sleep_for(c, backoff)) return over;  // the request is over: give up
    backoff *= 2;
  }
}

}  // namespace

int main() {
  std::puts("a downstream that recovers:");
  auto [c1, cancel1] = ctx::with_timeout(ctx::background(), 2s);
  const std::error_code first = call_with_retry(c1);
  std::printf("  result: %s\n", first ? first.message().c_str() : "ok");

  std::puts("a downstream that never recovers, under a 50 ms deadline:");
  failures_left = 1'000'000;
  auto [c2, cancel2] = ctx::with_timeout(ctx::background(), 50ms);
  const std::error_code second = call_with_retry(c2);
  std::printf("  result: %s\n", second.message().c_str());

  return !first && second == ctx::errc::deadline_exceeded ? 0 : 1;
}
