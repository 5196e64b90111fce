// SPDX-License-Identifier: MIT
// What a test does when the real engine it needs (a server, a tool) is not
// installed, or when it cannot run in this build: it is reported as skipped,
// never as passed.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace test {

/// True when CTX_REQUIRE_ENGINES is set to anything but "" or "0": CI installs
/// every engine, so there a missing one is a failure, not a skip.
[[nodiscard]] inline bool engines_required() noexcept {
  const char* v = std::getenv("CTX_REQUIRE_ENGINES");
  return v && *v && std::string_view(v) != "0";
}

/// Ends the test program: exit code 77, which ctest reports as "Skipped"
/// (SKIP_RETURN_CODE, set for every test in tests/CMakeLists.txt), or 1 when
/// engines are required. `why` names what is missing and how to install it.
[[noreturn]] inline void skip_missing_engine(const std::string& why) {
  const bool fail = engines_required();
  std::fprintf(stderr, "%s: %s\n", fail ? "FAILED (CTX_REQUIRE_ENGINES is set)" : "SKIPPED", why.c_str());
  std::fflush(stderr);
  std::_Exit(fail ? 1 : 77);
}

/// Ends the test program with exit code 77 (ctest: "Skipped"): the test case
/// cannot run in this build (a sanitizer, valgrind), and says so rather than
/// pass without having run. Only for a test case that ctest runs alone.
[[noreturn]] inline void skip_in_this_build(const std::string& why) {
  std::fprintf(stderr, "SKIPPED in this build: %s\n", why.c_str());
  std::fflush(stderr);
  std::_Exit(77);
}

}  // namespace test
