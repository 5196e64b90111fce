// SPDX-License-Identifier: MIT
// Fanning out to shards with ctx::task_group: the first failure cancels the
// rest, and wait() returns that failure.
#include <ctx/ctx.hpp>
#include <ctx/sleep.hpp>
#include <ctx/task_group.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <system_error>

using namespace std::chrono_literals;

namespace {

/// Shard 2 fails after 5 ms when `broken`; the others need 1 s, unless cancelled.
std::error_code query_shard(const ctx::context& c, int shard, bool broken, int& rows) {
  if (broken && shard == 2) {
    if (const std::error_code ec = ctx::sleep_for(c, 5ms)) return ec;
    return std::make_error_code(std::errc::connection_reset);
  }
  if (const std::error_code ec = ctx::sleep_for(c, broken ? 1s : 1ms)) {
    std::printf("  shard %d stopped: %s\n", shard, ec.message().c_str());
    return ec;
  }
  rows = shard * 10;
  return {};
}

std::error_code query_all(const ctx::context& request, bool broken, std::array<int, 4>& rows) {
  ctx::task_group g(request);
  g.set_limit(4);  // at most four threads for this request
  for (int shard = 0; shard < 4; ++shard)
    g.spawn([&, shard](const ctx::context& c) {
      return query_shard(c, shard, broken, rows[static_cast<std::size_t>(shard)]);
    });
  return g.wait();
}

}  // namespace

int main() {
  auto [request, cancel] = ctx::with_timeout(ctx::background(), 10s);
  std::array<int, 4> rows{};

  std::puts("all shards healthy:");
  const std::error_code ok = query_all(request, false, rows);
  std::printf("  result: %s, rows %d %d %d %d\n", ok ? ok.message().c_str() : "ok", rows[0], rows[1], rows[2],
              rows[3]);

  std::puts("shard 2 broken:");
  const auto start = std::chrono::steady_clock::now();
  const std::error_code failed = query_all(request, true, rows);
  const auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  std::printf("  result: %s after %lld ms, not 1 s\n", failed.message().c_str(),
              static_cast<long long>(took.count()));

  return !ok && failed == std::errc::connection_reset ? 0 : 1;
}
