// SPDX-License-Identifier: MIT
// Runs one context operation N times, for instruction counts under callgrind:
//   valgrind --tool=callgrind --callgrind-out-file=/dev/null op_count <op> <n>
// The count per operation is (Ir(n2) - Ir(n1)) / (n2 - n1): start-up cancels out.
// Ops: with_cancel (derive + cancel + destroy, child of a cancelable parent),
// with_timeout (the same with a one-hour timeout), with_value (derive +
// destroy), done (done() on a live context). A third argument "on" turns
// inspection on first (when the headers have it).
#include <ctx/ctx.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>

#if __has_include(<ctx/inspect.hpp>)
#include <ctx/inspect.hpp>
#define CTX_HAVE_INSPECT 1
#endif

namespace {

template <class T>
void keep(const T& v) {
  asm volatile("" : : "r,m"(v) : "memory");  // as benchmark::DoNotOptimize
}

constexpr ctx::key<int> value_key{"bench"};

}  // namespace

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  if (argc < 3) return 2;
  const char* op = argv[1];
  const long n = std::atol(argv[2]);
#ifdef CTX_HAVE_INSPECT
  if (argc > 3 && std::strcmp(argv[3], "on") == 0) ctx::inspect::enable();
#endif
  auto [root, stop] = ctx::with_cancel(ctx::background());
  if (std::strcmp(op, "with_cancel") == 0) {
    for (long i = 0; i < n; ++i) {
      auto [c, cancel] = ctx::with_cancel(root);
      cancel();
      keep(c);
    }
  } else if (std::strcmp(op, "with_timeout") == 0) {
    for (long i = 0; i < n; ++i) {
      auto [c, cancel] = ctx::with_timeout(root, 1h);
      cancel();
      keep(c);
    }
  } else if (std::strcmp(op, "with_value") == 0) {
    const ctx::context bg = ctx::background();
    for (long i = 0; i < n; ++i) {
      auto c = ctx::with_value(bg, value_key, static_cast<int>(i));
      keep(c);
    }
  } else if (std::strcmp(op, "done") == 0) {
    for (long i = 0; i < n; ++i) keep(root.done());
  } else {
    return 2;
  }
  return 0;
}
