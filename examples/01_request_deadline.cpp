// SPDX-License-Identifier: MIT
// The story ctx exists for: a deadline set at the edge of a request reaches the
// leaf that blocks, and the leaf returns on time instead of holding the thread.
#include <ctx/ctx.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>

using namespace std::chrono_literals;

inline constexpr ctx::key<std::string> trace_id{"trace_id"};

// A leaf that would block for 90 s: it waits on a condition variable that the
// (very slow) database never signals, but it honours the context.
std::error_code query_database(const ctx::context& c) {
  std::mutex m;
  std::condition_variable_any reply;
  std::unique_lock lock(m);
  reply.wait_for(lock, c.stop_token(), 90s, [] { return false; });
  return c.err();  // {} if the reply came, else why we gave up
}

std::error_code handle_request(const ctx::context& c) {
  std::printf(
      "[%s] handling, %lld ms left\n", c.value(trace_id)->c_str(),
      static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(c.remaining()).count()));
  return query_database(c);
}

int main() {
  const auto start = std::chrono::steady_clock::now();
  auto request = ctx::with_value(ctx::background(), trace_id, std::string("req-42"));
  auto [c, cancel] = ctx::with_timeout(request, 100ms);  // the edge sets the deadline

  const std::error_code err = handle_request(c);

  const auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  std::printf("[%s] returned after %lld ms: %s\n", c.value(trace_id)->c_str(),
              static_cast<long long>(took.count()), err.message().c_str());
  return err == ctx::errc::deadline_exceeded && took < 10s ? 0 : 1;
}
