// SPDX-License-Identifier: MIT
// Soak test of <ctx/context.hpp>: deriving and dropping millions of contexts
// from one long-lived parent keeps memory flat. A memory test, not a speed
// test: it reads the resident set size from /proc/self/statm before and after,
// prints both and asserts a generous bound on the growth.
//
// The count is 10 million (CTX_SOAK_COUNT overrides it); under ASan or TSan,
// which are much slower, it is 200 000 by default. Under ASan and valgrind,
// which hold freed memory back on purpose (quarantine), the RSS bound is only
// printed, not asserted: LeakSanitizer and memcheck check for leaks there.
#include <ctx/ctx.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "support/catch.hpp"

using namespace std::chrono_literals;

#if defined(__SANITIZE_ADDRESS__)
#define CTX_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CTX_TEST_ASAN 1
#endif
#endif
#ifndef CTX_TEST_ASAN
#define CTX_TEST_ASAN 0
#endif
#if defined(__SANITIZE_THREAD__)
#define CTX_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CTX_TEST_TSAN 1
#endif
#endif
#ifndef CTX_TEST_TSAN
#define CTX_TEST_TSAN 0
#endif

namespace {

long soak_count() {
  if (const char* v = std::getenv("CTX_SOAK_COUNT"); v && *v) return std::strtol(v, nullptr, 10);
  return CTX_TEST_ASAN || CTX_TEST_TSAN ? 200'000 : 10'000'000;
}

/// ASan's quarantine and valgrind's freed-block queue hold freed memory on
/// purpose: the RSS bound means nothing there (their leak checkers do the job).
bool rss_meaningless() {
  const char* preload = std::getenv("LD_PRELOAD");
  return CTX_TEST_ASAN || (preload && std::strstr(preload, "valgrind"));
}

/// Resident set size in bytes (Linux).
long rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  long size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

inline constexpr ctx::key<int> soak_key{"soak"};

}  // namespace

TEST_CASE("soak: deriving and dropping millions of children of one parent keeps memory flat", "[soak]") {
  const long n = soak_count();
  auto parent_d = ctx::with_timeout(ctx::background(), 1h);  // clang 14 cannot capture structured bindings
  const ctx::context& parent = parent_d.context;
  auto [earliest, ec] =
      ctx::with_timeout(ctx::background(), 10min);  // heap top: children do not wake the timer thread
  const auto round = [&parent](long i) {
    switch (i % 8) {
      case 0: {  // a child with its own, earlier deadline: a timer inserted and removed
        auto [c, h] = ctx::with_timeout(parent, 30min);
        break;
      }
      case 1: {  // a child with a callback and a stop token
        auto [c, h] = ctx::with_cancel(parent);
        auto reg = ctx::after_func(c, [] {});
        (void)c.stop_token();
        break;
      }
      case 2: {  // cancelled before it is dropped
        auto [c, h] = ctx::with_cancel(ctx::with_value(parent, soak_key, 1));
        h();
        break;
      }
      default: {
        auto [c, h] = ctx::with_cancel(parent);
        break;
      }
    }
  };
  for (long i = 0; i < 10'000; ++i) round(i);  // warm up: timer thread, allocator caches
  const long before = rss_bytes();
  const auto start = std::chrono::steady_clock::now();
  for (long i = 0; i < n; ++i) round(i);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const long after = rss_bytes();
  std::printf(
      "soak: %ld contexts derived and dropped in %.2f s; RSS %.1f MiB before, %.1f MiB after (%+.2f MiB)\n",
      n, secs, static_cast<double>(before) / (1 << 20), static_cast<double>(after) / (1 << 20),
      static_cast<double>(after - before) / (1 << 20));
  if (rss_meaningless()) {
    std::printf("soak: under ASan or valgrind, which keep freed memory on purpose: RSS bound not asserted\n");
  } else {
    CHECK(after - before < 16L * 1024 * 1024);
  }
  const auto* pn = static_cast<const ctx::detail::cancel_node*>(ctx::detail::access::of(parent));
  CHECK(pn->first_child == nullptr);  // no dead child left in the parent's list
  CHECK(pn->refs.load() == 2);        // `parent` and its handle
  CHECK(ctx::detail::timer_service<std::chrono::steady_clock>::instance().pending() ==
        2);  // parent and `earliest`
}
