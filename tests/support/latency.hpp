// SPDX-License-Identifier: MIT
// Latency bounds in tests that assert one ("returns within 50 ms of the
// cancel"), lifted under valgrind, whose ~50x slowdown breaks any real-time
// bound while the test still checks everything else.
#pragma once

#include <chrono>

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif

namespace test {

/// True when the program runs under valgrind.
[[nodiscard]] inline bool under_valgrind() noexcept {
#ifdef RUNNING_ON_VALGRIND
  return RUNNING_ON_VALGRIND != 0;
#else
  return false;
#endif
}

/// `measured <= bound`, or always true under valgrind.
[[nodiscard]] inline bool within(std::chrono::nanoseconds measured, std::chrono::nanoseconds bound) noexcept {
  return under_valgrind() || measured <= bound;
}

/// Milliseconds, for messages.
[[nodiscard]] inline double ms(std::chrono::nanoseconds d) noexcept {
  return std::chrono::duration<double, std::milli>(d).count();
}

}  // namespace test
