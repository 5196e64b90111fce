// SPDX-License-Identifier: MIT
// Fuzzer for the decoders of <ctx/propagation.hpp>: decode_grpc_timeout,
// traceparent::parse and extract(). The input bytes are used whole as a
// header value, split at the first '\n' into a grpc-timeout and a
// traceparent value for extract(), and read as 64-bit durations for
// encode_grpc_timeout. Checked on every input:
//
// - agreement with a reference model written differently (a field split and
//   128-bit arithmetic), so "valid" means exactly what the spec says;
// - round trips: decode(encode(d)) is never shorter than d and at most one
//   part in 10^5 longer; a parsed traceparent writes a value that parses
//   back equal (and, for version 00, is the input itself);
// - monotonicity: a larger value or a larger unit never decodes shorter, and
//   extract() never gives a deadline later than the server's limit or the
//   parent's, whatever the headers hold; a malformed header gives exactly
//   what no header gives;
// - nothing throws past the API (a throw aborts the run).
//
// Built two ways, as context_fuzz.cpp is: a libFuzzer target with clang's
// -fsanitize=fuzzer (tests/fuzz/run.sh --fuzzer propagation), and with any
// compiler as a replay driver over the committed corpus (a ctest test).
#include <ctx/propagation.hpp>
#include <ctx/testing.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#if defined(__clang__)
#define CTX_FUZZ_NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define CTX_FUZZ_NO_COVERAGE
#endif

namespace {

using ns = std::chrono::nanoseconds;
using manual = ctx::testing::manual_clock;
namespace prop = ctx::propagation;
__extension__ using i128 = __int128;  // the model's arithmetic cannot overflow

[[noreturn]] CTX_FUZZ_NO_COVERAGE void fail(const char* what, std::string_view input) {
  std::fprintf(stderr, "ctx fuzz: %s, input (%zu bytes): \"", what, input.size());
  for (const char c : input) {
    const auto ch = static_cast<unsigned char>(c);
    if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\')
      std::fputc(ch, stderr);
    else
      std::fprintf(stderr, "\\x%02x", ch);
  }
  std::fprintf(stderr, "\"\n");
  std::abort();
}

#define CHECK_OR_FAIL(cond, input)   \
  do {                               \
    if (!(cond)) fail(#cond, input); \
  } while (0)

// --- reference models -------------------------------------------------------------
// Unlike the checks below, the models keep libFuzzer's coverage: their
// branches (9 digits, a later version, a dash at 55) are the inputs worth
// finding, and the library's code alone does not lead the fuzzer to them.

/// The gRPC grammar, `TimeoutValue TimeoutUnit`, with 128-bit arithmetic.
std::optional<ns> model_timeout(std::string_view s) {
  const std::size_t digits = s.find_first_not_of("0123456789");
  if (digits == std::string_view::npos || digits == 0 || digits > 8 || s.size() != digits + 1)
    return std::nullopt;
  static constexpr std::string_view units = "numSMH";
  static constexpr i128 unit_ns[] = {1, 1000, 1000000, 1000000000, 60000000000, 3600000000000};
  const std::size_t u = units.find(s.back());
  if (u == std::string_view::npos) return std::nullopt;
  i128 v = 0;
  for (char ch : s.substr(0, digits)) v = v * 10 + (ch - '0');
  v *= unit_ns[u];
  if (v > ns::max().count()) return ns::max();
  return ns(static_cast<std::int64_t>(v));
}

bool lower_hex(std::string_view s) {
  return !s.empty() && s.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

/// W3C Trace Context level 1, by splitting at '-': the trace-id, parent-id
/// and flags it would keep, or nullopt.
std::optional<std::string> model_traceparent(std::string_view s) {
  std::vector<std::string_view> fields;
  for (std::size_t start = 0;;) {
    const std::size_t dash = s.find('-', start);
    fields.push_back(s.substr(start, dash - start));
    if (dash == std::string_view::npos) break;
    start = dash + 1;
  }
  if (fields.size() < 4) return std::nullopt;
  const std::string_view version = fields[0], trace = fields[1], parent = fields[2], flags = fields[3];
  if (version.size() != 2 || !lower_hex(version) || version == "ff") return std::nullopt;
  if (version == "00" && fields.size() != 4) return std::nullopt;
  if (trace.size() != 32 || !lower_hex(trace) || trace.find_first_not_of('0') == std::string_view::npos)
    return std::nullopt;
  if (parent.size() != 16 || !lower_hex(parent) || parent.find_first_not_of('0') == std::string_view::npos)
    return std::nullopt;
  if (flags.size() != 2 || !lower_hex(flags)) return std::nullopt;
  return "00-" + std::string(trace) + "-" + std::string(parent) + "-" + std::string(flags);
}

// --- properties --------------------------------------------------------------------

CTX_FUZZ_NO_COVERAGE void check_encode(ns d, std::string_view input) {
  const std::string s = prop::encode_grpc_timeout(d);
  CHECK_OR_FAIL(s.size() >= 2 && s.size() <= 9, input);
  const auto back = prop::decode_grpc_timeout(s);
  CHECK_OR_FAIL(back.has_value(), input);
  CHECK_OR_FAIL(model_timeout(s) == back, input);
  const std::int64_t want = std::max<std::int64_t>(d.count(), 1);  // zero and negative send 1n
  CHECK_OR_FAIL(back->count() >= want, input);
  CHECK_OR_FAIL(back->count() - want <= want / 100'000, input);  // at most one part in 10^5 longer
  CHECK_OR_FAIL(prop::encode_grpc_timeout(*back) == s, input);   // a fixed point after one round
}

CTX_FUZZ_NO_COVERAGE void check_timeout(std::string_view s) {
  const auto got = prop::decode_grpc_timeout(s);
  CHECK_OR_FAIL(got == model_timeout(s), s);
  if (!got) return;
  CHECK_OR_FAIL(got->count() >= 0, s);
  check_encode(*got, s);
  // Monotonic: one more in the value, or the next larger unit, never decodes shorter.
  std::string larger(s);
  for (std::size_t i = larger.size() - 1; i-- > 0;) {
    if (larger[i] != '9') {
      ++larger[i];
      const auto l = prop::decode_grpc_timeout(larger);
      CHECK_OR_FAIL(l && *l >= *got, s);
      break;
    }
    larger[i] = '0';
  }
  static constexpr std::string_view units = "numSMH";
  const std::size_t u = units.find(s.back());
  if (u + 1 < units.size()) {
    std::string bigger_unit(s);
    bigger_unit.back() = units[u + 1];
    const auto l = prop::decode_grpc_timeout(bigger_unit);
    CHECK_OR_FAIL(l && *l >= *got, s);
  }
}

CTX_FUZZ_NO_COVERAGE void check_traceparent(std::string_view s) {
  const auto got = prop::traceparent::parse(s);
  const auto model = model_traceparent(s);
  CHECK_OR_FAIL(got.has_value() == model.has_value(), s);
  if (!got) return;
  const std::string out = got->to_string();
  CHECK_OR_FAIL(out == *model, s);
  if (s.substr(0, 2) == "00") CHECK_OR_FAIL(out == s, s);
  const auto again = prop::traceparent::parse(out);
  CHECK_OR_FAIL(again && *again == *got, s);
  CHECK_OR_FAIL(got->trace_id_hex() == out.substr(3, 32) && got->parent_id_hex() == out.substr(36, 16), s);
}

/// extract() with these header values, under a parent with and without a
/// deadline and with and without a server limit: the deadline is exactly
/// min(header if valid, limit, parent), never later.
CTX_FUZZ_NO_COVERAGE void check_extract(std::string_view timeout, std::string_view trace,
                                        std::string_view input) {
  const auto header = prop::decode_grpc_timeout(timeout);
  const auto tp = prop::traceparent::parse(trace);
  auto get = [&](std::string_view name) -> std::optional<std::string_view> {
    if (name == prop::timeout_header) return timeout;
    if (name == prop::traceparent_header) return trace;
    return std::nullopt;
  };
  const manual::time_point now = manual::now();
  for (int parent_kind = 0; parent_kind < 2; ++parent_kind) {
    auto [parent, cancel_parent] =
        parent_kind == 0 ? ctx::with_cancel(ctx::background<manual>())
                         : ctx::with_timeout(ctx::background<manual>(), std::chrono::seconds(3));
    for (const std::optional<ns> limit : {std::optional<ns>(), std::optional<ns>(std::chrono::seconds(2)),
                                          std::optional<ns>(std::chrono::minutes(5))}) {
      auto [c, cancel] = limit ? prop::extract(parent, get, *limit) : prop::extract(parent, get);
      // The expected deadline, from the model's reading of the header.
      std::optional<ns> want;
      for (const std::optional<ns> d : {header, limit}) {
        if (d && *d != ns::max()) want = want ? std::min(*want, *d) : *d;
      }
      std::optional<manual::time_point> expect;
      if (want) expect = *want >= manual::time_point::max() - now ? manual::time_point::max() : now + *want;
      if (parent.deadline()) expect = expect ? std::min(*expect, *parent.deadline()) : *parent.deadline();
      CHECK_OR_FAIL(c.deadline() == expect, input);
      if (limit) CHECK_OR_FAIL(c.deadline() && *c.deadline() <= now + *limit, input);
      if (parent.deadline()) CHECK_OR_FAIL(c.deadline() && *c.deadline() <= *parent.deadline(), input);
      if (!header) {  // malformed or absent: exactly what no header at all gives
        auto absent = [](std::string_view) { return std::optional<std::string_view>(); };
        auto [none, cancel_none] =
            limit ? prop::extract(parent, absent, *limit) : prop::extract(parent, absent);
        CHECK_OR_FAIL(none.deadline() == c.deadline(), input);
      }
      const prop::traceparent* carried = c.value(prop::trace_key);
      CHECK_OR_FAIL(tp ? (carried && *carried == *tp) : carried == nullptr, input);
      CHECK_OR_FAIL(c.done() == (c.deadline() && *c.deadline() <= now), input);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  try {
    check_timeout(input);
    check_traceparent(input);
    const std::size_t nl = input.find('\n');
    check_extract(input.substr(0, nl),
                  nl == std::string_view::npos ? std::string_view() : input.substr(nl + 1), input);
    for (std::size_t i = 0; i + 8 <= size; i += 8) {
      std::int64_t v;
      std::memcpy(&v, data + i, 8);
      check_encode(ns(v), input);
      check_encode(ns(v >> (v & 63)), input);  // smaller magnitudes too
    }
  } catch (const std::exception& e) {
    fail(e.what(), input);
  } catch (...) {
    fail("an exception that is not a std::exception", input);
  }
  return 0;
}
