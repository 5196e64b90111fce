// SPDX-License-Identifier: MIT
// Must not compile: a sleep until a time point of another clock than the
// context's (see with_deadline_other_clock.cpp).
#include <ctx/sleep.hpp>

#include <chrono>

int main() {
  const std::error_code ec = ctx::sleep_until(ctx::background(), std::chrono::system_clock::now());
  return ec ? 1 : 0;
}
