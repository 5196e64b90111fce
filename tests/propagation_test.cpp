// SPDX-License-Identifier: MIT
// <ctx/propagation.hpp>: the grpc-timeout and traceparent codecs edge by edge,
// and inject/extract on the manual clock.
#include <ctx/propagation.hpp>
#include <ctx/testing.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <system_error>

#include "support/catch.hpp"
#include "support/common.hpp"

using namespace std::chrono_literals;
using ns = std::chrono::nanoseconds;
using mcontext = ctx::basic_context<manual>;
using ctx::propagation::decode_grpc_timeout;
using ctx::propagation::encode_grpc_timeout;
using ctx::propagation::traceparent;

namespace {

constexpr std::string_view spec_example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Headers as an HTTP library keeps them; get() is a header_getter.
struct headers {
  std::map<std::string, std::string, std::less<>> map;
  void set(std::string_view k, std::string_view v) { map.insert_or_assign(std::string(k), std::string(v)); }
  [[nodiscard]] std::optional<std::string> get(std::string_view k) const {
    auto it = map.find(k);
    if (it == map.end()) return std::nullopt;
    return it->second;
  }
};

headers injected(const mcontext& c) {
  headers h;
  ctx::propagation::inject(c, [&](std::string_view k, std::string_view v) { h.set(k, v); });
  return h;
}

ctx::derived<manual> extract(const mcontext& parent, const headers& h) {
  return ctx::propagation::extract(parent, [&](std::string_view k) { return h.get(k); });
}

template <class D>
ctx::derived<manual> extract(const mcontext& parent, const headers& h, D limit) {
  return ctx::propagation::extract(
      parent, [&](std::string_view k) { return h.get(k); }, limit);
}

/// The time from now to c's deadline on the manual clock.
std::optional<manual::duration> left(const mcontext& c) {
  if (!c.deadline()) return std::nullopt;
  return *c.deadline() - manual::now();
}

}  // namespace

// --- encode_grpc_timeout --------------------------------------------------------------

TEST_CASE("encode_grpc_timeout writes zero and negative times as 1n", "[propagation]") {
  CHECK(encode_grpc_timeout(0ns) == "1n");
  CHECK(encode_grpc_timeout(-1ns) == "1n");
  CHECK(encode_grpc_timeout(-5s) == "1n");
  CHECK(encode_grpc_timeout(ns::min()) == "1n");
}

TEST_CASE("encode_grpc_timeout uses the smallest unit that fits in 8 digits", "[propagation]") {
  CHECK(encode_grpc_timeout(1ns) == "1n");
  CHECK(encode_grpc_timeout(50ms) == "50000000n");
  CHECK(encode_grpc_timeout(99'999'999ns) == "99999999n");
  CHECK(encode_grpc_timeout(100'000'000ns) == "100000u");
  CHECK(encode_grpc_timeout(300ms) == "300000u");
  CHECK(encode_grpc_timeout(2s) == "2000000u");
  CHECK(encode_grpc_timeout(99'999'999us) == "99999999u");
  CHECK(encode_grpc_timeout(100'000'000us) == "100000m");
  CHECK(encode_grpc_timeout(2min) == "120000m");
  CHECK(encode_grpc_timeout(1h) == "3600000m");
  CHECK(encode_grpc_timeout(99'999'999ms) == "99999999m");
  CHECK(encode_grpc_timeout(100'000'000ms) == "100000S");
  CHECK(encode_grpc_timeout(99'999'999s) == "99999999S");
  CHECK(encode_grpc_timeout(100'000'000s) == "1666667M");  // 1 666 666.67 minutes, rounded up
  CHECK(encode_grpc_timeout(std::chrono::minutes(99'999'999)) == "99999999M");
  CHECK(encode_grpc_timeout(std::chrono::minutes(100'000'000)) == "1666667H");
}

TEST_CASE("encode_grpc_timeout rounds up and never to zero", "[propagation]") {
  CHECK(encode_grpc_timeout(100'000'001ns) == "100001u");
  CHECK(encode_grpc_timeout(99'999'999'001ns) == "100000m");  // 99 999 999.001 us do not fit
  CHECK(encode_grpc_timeout(100'000'000'001ns) == "100001m");
  CHECK(encode_grpc_timeout(100'000'000s + 1ns) == "1666667M");
}

TEST_CASE("encode_grpc_timeout of nanoseconds max does not overflow", "[propagation]") {
  CHECK(encode_grpc_timeout(ns::max()) == "2562048H");
  CHECK(decode_grpc_timeout(encode_grpc_timeout(ns::max())) == ns::max());
}

TEST_CASE("encode_grpc_timeout is never shorter and at most one part in 100000 longer", "[propagation]") {
  std::mt19937_64 gen(42);
  for (int i = 0; i < 200'000; ++i) {
    // Values spread over every magnitude from 1 ns to nanoseconds::max().
    const int bits = static_cast<int>(gen() % 63) + 1;
    const std::int64_t v = static_cast<std::int64_t>(gen() >> (64 - bits)) | 1;
    const std::string s = encode_grpc_timeout(ns(v));
    const auto d = decode_grpc_timeout(s);
    // (d - v) / v <= 1e-5, in integers: 100000 (d - v) <= v. Saturation only shortens.
    // One Catch assertion per failure only: 200 000 of them would be most of the run time.
    if (s.size() < 2 || s.size() > 9 || !d || d->count() < v || (d->count() - v) > v / 100'000) {
      INFO(v << " -> " << s);
      FAIL("encoded badly");
    }
  }
}

// --- decode_grpc_timeout --------------------------------------------------------------

TEST_CASE("decode_grpc_timeout reads every unit", "[propagation]") {
  CHECK(decode_grpc_timeout("7n") == 7ns);
  CHECK(decode_grpc_timeout("7u") == 7us);
  CHECK(decode_grpc_timeout("7m") == 7ms);
  CHECK(decode_grpc_timeout("7S") == 7s);
  CHECK(decode_grpc_timeout("7M") == 7min);
  CHECK(decode_grpc_timeout("7H") == 7h);
  CHECK(decode_grpc_timeout("300000u") == 300ms);
  CHECK(decode_grpc_timeout("99999999n") == 99'999'999ns);
  CHECK(decode_grpc_timeout("99999999M") == std::chrono::minutes(99'999'999));
}

TEST_CASE("decode_grpc_timeout accepts leading zeros within 8 digits and zero itself", "[propagation]") {
  CHECK(decode_grpc_timeout("00000001S") == 1s);
  CHECK(decode_grpc_timeout("00000000n") == 0ns);
  CHECK(decode_grpc_timeout("0n") == 0ns);
  CHECK(decode_grpc_timeout("0H") == 0ns);
}

TEST_CASE("decode_grpc_timeout saturates a valid value too large for nanoseconds", "[propagation]") {
  CHECK(decode_grpc_timeout("99999999H") == ns::max());
  CHECK(decode_grpc_timeout("2562048H") == ns::max());  // 2 562 048 h is just over nanoseconds::max()
  CHECK(decode_grpc_timeout("2562047H") == std::chrono::hours(2'562'047));
}

TEST_CASE("decode_grpc_timeout rejects what the gRPC spec does not allow", "[propagation]") {
  for (std::string_view bad : {
           "",            // empty
           "S",           // no digits
           "1",           // no unit
           "12345678",    // no unit, 8 digits
           "000000001S",  // 9 digits, even with a small value
           "123456789n",  // 9 digits
           "99999999999999999999H",
           "+1S",
           "-1S",  // signs
           " 1S",
           "1S ",
           "1 S",
           "\t1S",
           "1S\r\n",  // white space
           "1s",
           "1h",
           "1N",
           "1U",
           "1x",
           "1?",  // unknown units (they are case-sensitive)
           "1SS",
           "1S1",
           "1Sx",  // anything after the unit
           "1.5S",
           "1e3S",
           "0x1S",
           "1_000S",  // not plain digits
       }) {
    INFO('"' << bad << '"');
    CHECK_FALSE(decode_grpc_timeout(bad));
  }
  CHECK_FALSE(decode_grpc_timeout(std::string_view("1\0S", 3)));
  CHECK_FALSE(decode_grpc_timeout(std::string_view("1S\0", 3)));
  CHECK_FALSE(decode_grpc_timeout("\xd9\xa1S"));  // a non-ASCII digit (Arabic-Indic one)
}

TEST_CASE("decode_grpc_timeout reads back what encode_grpc_timeout wrote", "[propagation]") {
  for (ns d : {ns(1), ns(999), ns(1'000'000), ns(123'456'789), ns(std::chrono::hours(24)), ns::max()}) {
    const auto back = decode_grpc_timeout(encode_grpc_timeout(d));
    REQUIRE(back);
    CHECK(*back >= d);
    CHECK(encode_grpc_timeout(*back) == encode_grpc_timeout(d));  // a fixed point after one round
  }
}

// --- traceparent --------------------------------------------------------------------------

TEST_CASE("traceparent parses the spec's example and writes it back unchanged", "[propagation]") {
  const auto tp = traceparent::parse(spec_example);
  REQUIRE(tp);
  CHECK(tp->trace_id_hex() == "4bf92f3577b34da6a3ce929d0e0e4736");
  CHECK(tp->parent_id_hex() == "00f067aa0ba902b7");
  CHECK(tp->flags == 0x01);
  CHECK(tp->sampled());
  CHECK(tp->trace_id[0] == 0x4b);
  CHECK(tp->parent_id[7] == 0xb7);
  CHECK(tp->to_string() == spec_example);
}

TEST_CASE("traceparent keeps every flag bit", "[propagation]") {
  for (std::string_view flags : {"00", "01", "02", "09", "80", "fe", "ff"}) {
    std::string s(spec_example.substr(0, 53));
    s += flags;
    const auto tp = traceparent::parse(s);
    REQUIRE(tp);
    CHECK(tp->to_string() == s);
    CHECK(tp->sampled() == ((tp->flags & 1) != 0));
  }
}

TEST_CASE("traceparent rejects what W3C Trace Context level 1 does not allow", "[propagation]") {
  const std::string ok(spec_example);
  auto with = [&](std::size_t pos, std::string_view part) {
    return std::string(ok).replace(pos, part.size(), part);
  };
  for (const std::string& bad : {
           std::string(),
           ok.substr(0, 54),  // too short
           ok + "-",          // version 00 has nothing after the flags
           ok + "-00",        //
           ok + " ",          //
           " " + ok,          //
           with(0, "ff"),     // version ff is invalid
           with(0, "0A"),
           with(0, "A0"),
           with(0, "g0"),                                // version: lowercase hex only
           with(3, "4BF92F"),                            // trace-id: lowercase hex only
           with(36, "00F067"),                           // parent-id: lowercase hex only
           with(53, "0A"),                               // flags: lowercase hex only
           with(3, "4bf92f3577b34da6a3ce929d0e0e473g"),  // not hex
           with(36, "00f067aa0ba902bz"),                 //
           with(53, "0x"),                               //
           with(3, "00000000000000000000000000000000"),  // all-zero trace-id
           with(36, "0000000000000000"),                 // all-zero parent-id
           with(2, "_"),
           with(35, "_"),
           with(52, "_"),                                                      // separators
           with(3, "-bf92f3577b34da6a3ce929d0e0e4736"),                        //
           std::string(ok).replace(3, 32, "4bf92f3577b34da6a3ce929d0e0e473"),  // 31 hex digits
       }) {
    INFO('"' << bad << '"');
    CHECK_FALSE(traceparent::parse(bad));
  }
}

TEST_CASE("traceparent parses later versions forward-compatibly and writes version 00", "[propagation]") {
  const std::string rest(spec_example.substr(2));  // "-<trace-id>-<parent-id>-01"
  for (std::string_view version : {"01", "42", "cc", "fe"}) {
    INFO(version);
    const std::string base = std::string(version) + rest;
    for (const std::string& s : {base, base + "-", base + "-what-ever-comes-next", base + "-XYZ"}) {
      INFO(s);
      const auto tp = traceparent::parse(s);
      REQUIRE(tp);
      CHECK(tp->to_string() == spec_example);  // the fields it knows, as version 00
    }
    CHECK_FALSE(traceparent::parse(base + "x"));  // the flags are followed by the end or a '-'
    CHECK_FALSE(traceparent::parse(base + "0"));  //
    CHECK_FALSE(traceparent::parse(base.substr(0, 54)));
  }
  CHECK_FALSE(traceparent::parse("ff" + rest));
  CHECK_FALSE(traceparent::parse("ff" + rest + "-more"));
}

TEST_CASE("traceparent generate makes random non-zero ids and keeps the flags", "[propagation]") {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    const traceparent tp = traceparent::generate(i % 2 ? traceparent::sampled_flag : 0);
    CHECK(tp.sampled() == (i % 2 == 1));
    const auto back = traceparent::parse(tp.to_string());
    REQUIRE(back);
    CHECK(*back == tp);
    seen.insert(tp.trace_id_hex());
  }
  CHECK(seen.size() == 1000);
}

TEST_CASE("a default traceparent is not a valid header value", "[propagation]") {
  CHECK(traceparent{}.to_string() == "00-00000000000000000000000000000000-0000000000000000-00");
  CHECK_FALSE(traceparent::parse(traceparent{}.to_string()));
}

// --- inject ---------------------------------------------------------------------------------

TEST_CASE("inject writes nothing for a context without deadline or trace", "[propagation]") {
  CHECK(injected(ctx::background<manual>()).map.empty());
  auto [c, cancel] = ctx::with_cancel(ctx::background<manual>());
  CHECK(injected(c).map.empty());
}

TEST_CASE("inject writes the time left as grpc-timeout", "[propagation]") {
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 300ms);
  CHECK(injected(c).map == std::map<std::string, std::string, std::less<>>{{"grpc-timeout", "300000u"}});
  manual::advance(250ms);
  CHECK(injected(c).get("grpc-timeout") == "50000000n");
  manual::advance(50ms);
  REQUIRE(c.done());
  CHECK(injected(c).get("grpc-timeout") == "1n");
  manual::advance(1h);
  CHECK(injected(c).get("grpc-timeout") == "1n");
}

TEST_CASE("inject sends no deadline for a timeout that saturated", "[propagation]") {
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), std::chrono::hours::max());
  CHECK(injected(c).map.empty());
}

TEST_CASE("inject writes the context's trace as traceparent", "[propagation]") {
  const auto tp = *traceparent::parse(spec_example);
  const mcontext c = ctx::with_value(ctx::background<manual>(), ctx::propagation::trace_key, tp);
  CHECK(injected(c).get("traceparent") == std::string(spec_example));
  CHECK_FALSE(injected(c).get("grpc-timeout"));
}

// --- extract --------------------------------------------------------------------------------

TEST_CASE("extract takes the deadline from the header", "[propagation]") {
  headers h;
  h.set("grpc-timeout", "300000u");
  auto [c, cancel] = extract(ctx::background<manual>(), h);
  CHECK(left(c) == 300ms);
  manual::advance(299ms);
  CHECK_FALSE(c.done());
  manual::advance(1ms);
  CHECK(c.err() == ctx::errc::deadline_exceeded);
}

TEST_CASE("extract takes the earliest of the header and the server's limit and the parent", "[propagation]") {
  headers h;
  h.set("grpc-timeout", "300m");
  {
    auto [c, cancel] = extract(ctx::background<manual>(), h, 100ms);
    CHECK(left(c) == 100ms);
  }
  {
    auto [c, cancel] = extract(ctx::background<manual>(), h, 1h);
    CHECK(left(c) == 300ms);
  }
  {
    auto [parent, pc] = ctx::with_timeout(ctx::background<manual>(), 50ms);
    auto [c, cancel] = extract(parent, h, 1h);
    CHECK(left(c) == 50ms);
  }
  {
    auto [c, cancel] = extract(ctx::background<manual>(), h, std::chrono::duration<double>(0.1));
    CHECK(left(c) == 100ms);
  }
}

TEST_CASE("extract ignores a malformed grpc-timeout and the server's limit applies", "[propagation]") {
  for (std::string_view bad : {"", "abc", "300000000000u", "-1S", "1 S", "300ms", "1s"}) {
    INFO('"' << bad << '"');
    headers h;
    h.set("grpc-timeout", bad);
    auto [limited, c1] = extract(ctx::background<manual>(), h, 2s);
    CHECK(left(limited) == 2s);
    auto [unlimited, c2] = extract(ctx::background<manual>(), h);
    CHECK_FALSE(unlimited.deadline());
  }
}

TEST_CASE("extract without a header and without a limit gives a cancelable context with no deadline",
          "[propagation]") {
  auto [c, cancel] = extract(ctx::background<manual>(), headers{});
  CHECK_FALSE(c.deadline());
  CHECK_FALSE(c.done());
  CHECK_FALSE(c.value(ctx::propagation::trace_key));
  cancel();
  CHECK(c.err() == ctx::errc::canceled);
}

TEST_CASE("extract of an expired header gives a context born done", "[propagation]") {
  for (std::string_view zero : {"0n", "1n"}) {
    headers h;
    h.set("grpc-timeout", zero);
    auto [c, cancel] = extract(ctx::background<manual>(), h, 1s);
    if (zero == "0n") {
      CHECK(c.err() == ctx::errc::deadline_exceeded);
    } else {
      manual::advance(1ns);
      CHECK(c.err() == ctx::errc::deadline_exceeded);
    }
  }
}

TEST_CASE("extract of a saturated grpc-timeout and no limit gives no deadline", "[propagation]") {
  headers h;
  h.set("grpc-timeout", "99999999H");
  auto [c, cancel] = extract(ctx::background<manual>(), h);
  CHECK_FALSE(c.deadline());
  auto [d, cancel2] = extract(ctx::background<manual>(), h, 5s);
  CHECK(left(d) == 5s);
}

TEST_CASE("extract carries the request's trace and ignores a malformed one", "[propagation]") {
  const auto own = traceparent::generate();
  const mcontext parent = ctx::with_value(ctx::background<manual>(), ctx::propagation::trace_key, own);
  headers h;
  h.set("traceparent", spec_example);
  {
    auto [c, cancel] = extract(parent, h);
    REQUIRE(c.value(ctx::propagation::trace_key));
    CHECK(c.value(ctx::propagation::trace_key)->to_string() == spec_example);
  }
  h.set("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01");
  {
    auto [c, cancel] = extract(parent, h);
    REQUIRE(c.value(ctx::propagation::trace_key));
    CHECK(*c.value(ctx::propagation::trace_key) == own);  // the parent's, untouched
    auto [d, cancel2] = extract(ctx::background<manual>(), h);
    CHECK_FALSE(d.value(ctx::propagation::trace_key));
  }
}

TEST_CASE("extract accepts optional strings and string views and pointers as getters", "[propagation]") {
  const std::string timeout = "7m", trace(spec_example);
  auto as_view = [&](std::string_view k) -> std::optional<std::string_view> {
    if (k == "grpc-timeout") return std::string_view(timeout);
    if (k == "traceparent") return std::string_view(trace);
    return std::nullopt;
  };
  auto as_pointer = [&](std::string_view k) -> const std::string* {
    if (k == "grpc-timeout") return &timeout;
    if (k == "traceparent") return &trace;
    return nullptr;
  };
  auto [a, ca] = ctx::propagation::extract(ctx::background<manual>(), as_view);
  auto [b, cb] = ctx::propagation::extract(ctx::background<manual>(), as_pointer);
  for (const mcontext* c : {&a, &b}) {
    CHECK(left(*c) == 7ms);
    REQUIRE(c->value(ctx::propagation::trace_key));
    CHECK(c->value(ctx::propagation::trace_key)->to_string() == spec_example);
  }
}

TEST_CASE("inject then extract carries deadline and trace across a hop", "[propagation]") {
  auto [a, cancel] = ctx::with_timeout(
      ctx::with_value(ctx::background<manual>(), ctx::propagation::trace_key, traceparent::generate()),
      300ms);
  manual::advance(20ms);
  const headers wire = injected(a);
  auto [b, cancel_b] = extract(ctx::background<manual>(), wire, 10s);
  CHECK(b.deadline() == a.deadline());
  REQUIRE(b.value(ctx::propagation::trace_key));
  CHECK(*b.value(ctx::propagation::trace_key) == *a.value(ctx::propagation::trace_key));
  // And on to the next hop: still the same deadline and trace.
  auto [c, cancel_c] = extract(ctx::background<manual>(), injected(b), 10s);
  CHECK(c.deadline() == a.deadline());
  CHECK(*c.value(ctx::propagation::trace_key) == *a.value(ctx::propagation::trace_key));
  manual::advance(280ms);
  CHECK(c.err() == ctx::errc::deadline_exceeded);
}
