// SPDX-License-Identifier: MIT
// Must not compile: a deadline on another clock than the context's. The test
// "compile-fail: ..." (tests/CMakeLists.txt) builds this file and expects the
// static_assert of <ctx/context.hpp> that says how to convert it.
#include <ctx/ctx.hpp>

#include <chrono>

int main() {
  auto [c, cancel] = ctx::with_deadline(ctx::background(), std::chrono::system_clock::now());
  return c.done() ? 1 : 0;
}
