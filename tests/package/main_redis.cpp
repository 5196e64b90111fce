// SPDX-License-Identifier: MIT
#include <ctx/redis.hpp>

int main() {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  const auto conn = ctx::redis::connect_unix(c, "/nonexistent/redis.sock");
  return conn.error() == ctx::errc::canceled && conn.state() == ctx::redis::connection_state::closed ? 0 : 1;
}
