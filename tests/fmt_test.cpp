// SPDX-License-Identifier: MIT
#include <ctx/fmt.hpp>
#include <ctx/testing.hpp>
// Included after <ctx/fmt.hpp>: its formatter of std::error_code must not clash with one {fmt} ships.
#include <fmt/os.h>
#include <fmt/std.h>

#include <sstream>
#include <string>
#include <system_error>

#include "support/catch.hpp"
#include "support/common.hpp"

using namespace std::chrono_literals;

namespace {
inline constexpr ctx::key<std::string> trace_id{"trace_id"};
}

TEST_CASE("a context prints its derivation chain as Go's String does", "[fmt]") {
  CHECK(fmt::format("{}", ctx::background()) == "background");
  CHECK(fmt::format("{}", ctx::todo()) == "todo");
  auto v = ctx::with_value(ctx::background<manual>(), trace_id, "abc");
  auto [d, cd] = ctx::with_timeout(v, 1998ms);
  auto [c, cc] = ctx::with_cancel(d);
  CHECK(fmt::format("{}", c) == "background.with_value(trace_id).with_deadline(+1.998s).with_cancel");
  manual::advance(2s);
  CHECK(fmt::format("{}", d) == "background.with_value(trace_id).with_deadline(-0.002s)");
}

TEST_CASE("every kind of node has a name", "[fmt]") {
  std::stop_source src;
  auto [a, ca] = ctx::with_stop_token(ctx::background<manual>(), src.get_token());
  auto b = ctx::without_cancel(a);
  auto [late, cl] = ctx::with_timeout(b, manual::duration::max());
  auto [inherited, ci] = ctx::with_timeout(late, manual::duration::max());
  CHECK(fmt::format("{}", inherited) ==
        "background.with_stop_token.without_cancel.with_deadline(never).with_cancel");
}

TEST_CASE("errc prints its message and honours string specs", "[fmt]") {
  CHECK(fmt::format("{}", ctx::errc::canceled) == "context canceled");
  CHECK(fmt::format("{}", ctx::errc::deadline_exceeded) == "context deadline exceeded");
  CHECK(fmt::format("[{:>18}]", ctx::errc::canceled) == "[  context canceled]");
}

TEST_CASE("a context rejects format specs", "[fmt]") {
  CHECK_THROWS_AS(fmt::format(fmt::runtime("{:x}"), ctx::background()), fmt::format_error);
}

TEST_CASE("an error_code from any API formats as its operator<< prints it", "[fmt]") {
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  const std::error_code errors[] = {c.err(), ctx::errc::deadline_exceeded, {9, std::system_category()}, {}};
  for (const std::error_code& e : errors) {
    std::ostringstream os;
    os << e;
    CHECK(fmt::format("{}", e) == os.str());
  }
  CHECK(fmt::format("{}", c.err()) == "ctx:1");
}

// Regression (issue 9, bug 7): `when - now` overflowed for a time_point::min()
// deadline, and a done context printed a deadline far in the future.
TEST_CASE("a deadline at the start of time prints as far in the past", "[fmt]") {
  manual::advance(1s);  // now > 0: min() - now does not fit
  auto [c, cancel] = ctx::with_deadline(ctx::background<manual>(), manual::time_point::min());
  REQUIRE(c.done());
  CHECK(fmt::format("{}", c) ==
        "background.with_deadline(-9223372036.855s)");  // saturated at duration::min()
}

TEST_CASE("an inspected context prints as the zombie report's line", "[fmt][inspect]") {
  ctx::inspect::enable();
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  const auto line = __LINE__ - 1;
  cancel();
  const auto z = ctx::inspect::zombies(std::chrono::nanoseconds(0));
  ctx::inspect::enable(false);
  REQUIRE(z.size() == 1);
  const std::string s = fmt::format("{}", z.front());
  CHECK(s == ctx::inspect::to_string(z.front()));
  CHECK(s.find("with_cancel at ") != std::string::npos);
  CHECK(s.find("fmt_test.cpp:" + std::to_string(line) + ": done ") != std::string::npos);
  CHECK(fmt::format("{:>13}", ctx::inspect::kind::with_value) == "   with_value");
}
