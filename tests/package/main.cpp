// SPDX-License-Identifier: MIT
#include <ctx/ctx.hpp>

#include <chrono>

int main() {
  auto [c, cancel] = ctx::with_timeout(ctx::background(), std::chrono::milliseconds(1));
  c.wait();
  return c.err() == ctx::errc::deadline_exceeded && CTX_VERSION >= 100 ? 0 : 1;
}
