// SPDX-License-Identifier: MIT
// ctx::propagation: a context's deadline and trace ID across a process
// boundary, as the `grpc-timeout` and W3C `traceparent` header values.
//
// The codecs (encode_grpc_timeout, decode_grpc_timeout, traceparent) are
// pure functions of their arguments. inject() reads the context and calls
// the caller's setter; extract() derives a new context. Nothing here keeps
// state between calls except traceparent::generate()'s per-thread random
// generator.
//
// Thread safety: every function may be called from any number of threads at
// once; inject() and extract() have the thread safety of the context
// operations they use (see <ctx/context.hpp>) and of the caller's getter and
// setter, which they call on the calling thread only.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "context.hpp"
#include "key.hpp"

namespace ctx::propagation {

// --- grpc-timeout ---------------------------------------------------------------

/// The `grpc-timeout` value for a remaining time: at most 8 digits and one
/// unit of `H M S m u n` (hours, minutes, seconds, milli-, micro-,
/// nanoseconds), in the smallest unit in which the value fits in 8 digits,
/// rounded up, so the value sent is never shorter than `remaining` and longer
/// by less than one part in 10^5 (as gRPC does: a deadline is never rounded
/// to zero). Zero or negative encodes as `"1n"` (already expired at the
/// receiver); `nanoseconds::max()` encodes as `"2562048H"` without overflow.
///
/// Example: `encode_grpc_timeout(50ms) == "50000000n"`, `encode_grpc_timeout(300ms) == "300000u"`,
/// `encode_grpc_timeout(2min) == "120000m"`.
/// Throws only std::bad_alloc.
[[nodiscard]] std::string encode_grpc_timeout(std::chrono::nanoseconds remaining);

/// The time a `grpc-timeout` value gives, or `nullopt` if the gRPC spec
/// (PROTOCOL-HTTP2.md: `TimeoutValue TimeoutUnit`, 1 to 8 ASCII digits then
/// one of `H M S m u n`) does not allow it: empty, no digits, more than 8
/// digits (leading zeros count), a sign, a space or any other character,
/// an unknown or missing unit, anything after the unit. Strict on purpose:
/// a value is either exactly what the sender meant or ignored, never a
/// guess. A value of zero (`"0n"`) is accepted and gives zero (an expired
/// deadline), as gRPC's own parser does. A valid value too large for
/// `nanoseconds` (`"99999999H"`, about 11 400 years) saturates at
/// `nanoseconds::max()`. Never throws.
[[nodiscard]] std::optional<std::chrono::nanoseconds> decode_grpc_timeout(std::string_view value) noexcept;

// --- traceparent ----------------------------------------------------------------

/// A W3C Trace Context (level 1) `traceparent` value: which trace a call
/// belongs to and which span of the caller made it.
///
/// parse() accepts version `00` exactly as specified (55 characters:
/// `00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`) and, as the spec
/// asks, later versions whose first 55 characters have that layout and are
/// followed by the end of the value or a `-`: their extra fields are
/// dropped. Hex digits must be lowercase; version `ff`, an all-zero trace-id
/// and an all-zero parent-id are rejected. All eight flag bits are kept as
/// received (bit 0 is `sampled`).
///
/// to_string() always writes version `00`, the highest version this library
/// knows, as the spec requires of a forwarder; so parse(s)->to_string() == s
/// for every valid version-00 `s`.
struct traceparent {
  /// The 16-byte trace-id shared by every call of one trace; never all zero in a parsed value.
  std::array<std::uint8_t, 16> trace_id{};
  /// The 8-byte id of the caller's span (the "parent-id"); never all zero in a parsed value.
  std::array<std::uint8_t, 8> parent_id{};
  /// The trace-flags byte, as received; bit 0 (`sampled_flag`) says the caller may have recorded the trace.
  std::uint8_t flags = 0;

  static constexpr std::uint8_t sampled_flag = 0x01;

  /// The value of a `traceparent` header, or `nullopt` if it is not one (see
  /// the class comment). Never throws.
  [[nodiscard]] static std::optional<traceparent> parse(std::string_view value) noexcept;

  /// A new trace: random non-zero trace-id and parent-id (from a per-thread
  /// generator seeded by std::random_device), and `flags`. For the edge of a
  /// system, where a request arrives without a trace.
  [[nodiscard]] static traceparent generate(std::uint8_t flags = 0);

  /// The header value, version `00`: 55 characters, lowercase hex.
  [[nodiscard]] std::string to_string() const;
  /// The trace-id as 32 lowercase hex digits: what a log line shows.
  [[nodiscard]] std::string trace_id_hex() const;
  /// The parent-id as 16 lowercase hex digits.
  [[nodiscard]] std::string parent_id_hex() const;
  /// True if the `sampled` flag is set.
  [[nodiscard]] constexpr bool sampled() const noexcept { return (flags & sampled_flag) != 0; }

  friend bool operator==(const traceparent&, const traceparent&) = default;
};

// --- a context across the wire --------------------------------------------------

/// The header that carries the remaining time, in gRPC's format: gRPC itself
/// sends it, and gRPC-Web sends it over HTTP/1.1; ctx uses the same header
/// and format over plain HTTP. Header names are lowercase (HTTP/2 requires
/// it; HTTP/1.1 compares them case-insensitively).
inline constexpr std::string_view timeout_header = "grpc-timeout";
/// The header that carries the trace, W3C Trace Context's.
inline constexpr std::string_view traceparent_header = "traceparent";

/// The key under which a context carries its trace: the `traceparent` that
/// extract() found in a request's headers, which inject() sends on with every
/// outgoing call. Set it at the edge with
/// `ctx::with_value(c, ctx::propagation::trace_key, traceparent::generate())`;
/// read it (for a log line) with `c.value(ctx::propagation::trace_key)`,
/// which is nullptr when the context has no trace.
inline constexpr key<traceparent> trace_key{"traceparent"};

/// What a header getter for extract() returns: something that tests false
/// when the header is absent and otherwise dereferences to the value, such
/// as `std::optional<std::string>`, `std::optional<std::string_view>` or a
/// `const std::string*`.
template <class G>
concept header_getter = requires(G& get, std::string_view name) {
  { !get(name) } -> std::convertible_to<bool>;
  {std::string_view(*get(name))};
};

/// Writes `c`'s deadline and trace into outgoing headers by calling
/// `set(name, value)` once per header: `grpc-timeout` with the time left
/// (encode_grpc_timeout(c.remaining()), `"1n"` once the deadline passed) if
/// `c` has a deadline, and `traceparent` if `c` carries a trace_key value.
/// Nothing for a header it has nothing to say in. `set` receives views valid
/// only during the call. The remaining time is read here: inject just
/// before sending. Throws what `set` throws, or std::bad_alloc.
///
/// Example (cpp-httplib): `ctx::propagation::inject(c, [&](auto k, auto v) { headers.emplace(k, v); });`
template <class Clock, class Set>
requires std::invocable<Set&, std::string_view, std::string_view>
void inject(const basic_context<Clock>& c, Set&& set);

/// A context for serving a request whose headers `get` reads: a child of
/// `parent` whose deadline is the earliest of the request's `grpc-timeout`
/// (measured from this call), the server's own `limit` and `parent`'s
/// deadline, and which carries the request's `traceparent` under trace_key
/// (else `parent`'s, if any).
///
/// A header that is absent or malformed (decode_grpc_timeout or
/// traceparent::parse say `nullopt`) is ignored, as gRPC ignores an invalid
/// `grpc-timeout`: the server's limit (and the parent's deadline) then
/// apply, so a malformed header can never give a longer deadline than a
/// missing one, nor than `limit`. The returned handle cancels the context:
/// call it when the client goes away, and let it go out of scope when the
/// request is done.
///
/// `get(name)` is called with the lowercase header names timeout_header and
/// traceparent_header; a case-insensitive lookup is the getter's job (most
/// HTTP libraries do it). Throws what `get` throws, std::bad_alloc, or
/// std::system_error if the timer thread cannot be started.
template <class Clock, header_getter Get>
[[nodiscard]] derived<Clock> extract(const basic_context<Clock>& parent, Get&& get,
                                     source_location site = source_location::current());

/// extract(parent, get), with the server's own limit: the deadline is never
/// later than `limit` from now, whatever the request asks for.
template <class Clock, header_getter Get, class Rep, class Period>
[[nodiscard]] derived<Clock> extract(const basic_context<Clock>& parent, Get&& get,
                                     std::chrono::duration<Rep, Period> limit,
                                     source_location site = source_location::current());

// ---------------------------------------------------------------------------
// Implementation.

namespace detail {

inline constexpr char hex_digits[] = "0123456789abcdef";

/// 0-15 for a lowercase hex digit, -1 for anything else.
constexpr int hex_value(char ch) noexcept {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  return -1;
}

/// Decodes 2*N lowercase hex digits into `out`; false on any other character.
template <std::size_t N>
constexpr bool parse_hex(std::string_view s, std::array<std::uint8_t, N>& out) noexcept {
  for (std::size_t i = 0; i < N; ++i) {
    const int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<std::uint8_t>(hi * 16 + lo);
  }
  return true;
}

template <std::size_t N>
constexpr bool all_zero(const std::array<std::uint8_t, N>& a) noexcept {
  for (std::uint8_t b : a)
    if (b != 0) return false;
  return true;
}

inline void append_hex(std::string& s, std::uint8_t b) {
  s += hex_digits[b >> 4];
  s += hex_digits[b & 0xf];
}

template <std::size_t N>
std::string to_hex(const std::array<std::uint8_t, N>& a) {
  std::string s;
  s.reserve(2 * N);
  for (std::uint8_t b : a) append_hex(s, b);
  return s;
}

/// `d` in nanoseconds, rounded up (truncated if floating-point), saturated at
/// nanoseconds::max() and min(). A NaN is min(): already expired, as
/// with_timeout takes a duration that is not greater than zero. An integral
/// count is scaled exactly (std::chrono::ceil multiplies count * num before
/// dividing, which overflows: 1e10 thirds of a second came out negative). A
/// floating-point one is truncated: a limit of 0.1 s is 100 ms, not 100 ms
/// and 1 ns (with_timeout rounds it up instead, so that it never fires early).
template <class Rep, class Period>
std::chrono::nanoseconds ceil_nanoseconds(std::chrono::duration<Rep, Period> d) noexcept {
  using ns = std::chrono::nanoseconds;
  if constexpr (std::is_same_v<std::chrono::duration<Rep, Period>, ns>) {
    return d;
  } else if constexpr (std::chrono::treat_as_floating_point_v<Rep>) {
    using wide = std::chrono::duration<long double, std::nano>;
    if (wide(d) >= wide(ns::max())) return ns::max();
    if (!(wide(d) > wide(ns::min()))) return ns::min();  // also NaN, which no conversion may see
    return std::chrono::duration_cast<ns>(d);
  } else {
    const ctx::detail::scaled_count s = ctx::detail::ceil_scale<std::nano>(d);
    constexpr auto top = static_cast<std::uint64_t>(ns::max().count());  // |min()| is top + 1
    if (s.negative) {
      if (s.kind == ctx::detail::scaled_count::huge || s.magnitude > top) return ns::min();
      return ns(-static_cast<std::int64_t>(s.magnitude));
    }
    if (s.kind == ctx::detail::scaled_count::huge || s.magnitude >= top) return ns::max();
    return ns(static_cast<std::int64_t>(s.magnitude));
  }
}

/// Calls `get(name)` and hands the value (or nullopt) to `f` while the
/// getter's result is still alive.
template <class Get, class F>
auto with_header(Get& get, std::string_view name, F&& f) {
  auto v = get(name);
  if (!v) return f(std::optional<std::string_view>());
  return f(std::optional<std::string_view>(std::string_view(*v)));
}

}  // namespace detail

inline std::string encode_grpc_timeout(std::chrono::nanoseconds remaining) {
  constexpr std::int64_t max_value = 99'999'999;  // 8 digits
  // Each unit and its size in the previous one. ceil(ceil(x / a) / b) == ceil(x / (a * b)).
  constexpr std::pair<char, std::int64_t> units[] = {
      {'u', 1000}, {'m', 1000}, {'S', 1000}, {'M', 60}, {'H', 60}};
  std::int64_t value = remaining.count();
  if (value <= 0) return "1n";
  char unit = 'n';
  for (const auto& [next, ratio] : units) {
    if (value <= max_value) break;
    value = value / ratio + (value % ratio != 0 ? 1 : 0);
    unit = next;
  }
  // nanoseconds::max() is 2 562 048 hours: the loop always ends within 8 digits.
  std::string s = std::to_string(value);
  s += unit;
  return s;
}

inline std::optional<std::chrono::nanoseconds> decode_grpc_timeout(std::string_view value) noexcept {
  if (value.size() < 2 || value.size() > 9) return std::nullopt;  // 1-8 digits and a unit
  std::int64_t n = 0;
  for (char ch : value.substr(0, value.size() - 1)) {
    if (ch < '0' || ch > '9') return std::nullopt;
    n = n * 10 + (ch - '0');
  }
  std::int64_t unit_ns = 0;
  switch (value.back()) {
    case 'n':
      unit_ns = 1;
      break;
    case 'u':
      unit_ns = 1'000;
      break;
    case 'm':
      unit_ns = 1'000'000;
      break;
    case 'S':
      unit_ns = 1'000'000'000;
      break;
    case 'M':
      unit_ns = 60'000'000'000;
      break;
    case 'H':
      unit_ns = 3'600'000'000'000;
      break;
    default:
      return std::nullopt;
  }
  using ns = std::chrono::nanoseconds;
  if (n > ns::max().count() / unit_ns) return ns::max();  // only hours can overflow
  return ns(n * unit_ns);
}

inline std::optional<traceparent> traceparent::parse(std::string_view s) noexcept {
  // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55.
  constexpr std::size_t size = 55;
  if (s.size() < size) return std::nullopt;
  const int v_hi = detail::hex_value(s[0]), v_lo = detail::hex_value(s[1]);
  if (v_hi < 0 || v_lo < 0) return std::nullopt;
  const int version = v_hi * 16 + v_lo;
  if (version == 0xff) return std::nullopt;
  // Version 00 is exactly 55 characters; a later version may add fields after a '-'.
  if (version == 0 ? s.size() != size : (s.size() > size && s[size] != '-')) return std::nullopt;
  if (s[2] != '-' || s[35] != '-' || s[52] != '-') return std::nullopt;
  traceparent tp;
  std::array<std::uint8_t, 1> flags{};
  if (!detail::parse_hex(s.substr(3, 32), tp.trace_id) ||
      !detail::parse_hex(s.substr(36, 16), tp.parent_id) || !detail::parse_hex(s.substr(53, 2), flags))
    return std::nullopt;
  if (detail::all_zero(tp.trace_id) || detail::all_zero(tp.parent_id)) return std::nullopt;
  tp.flags = flags[0];
  return tp;
}

inline traceparent traceparent::generate(std::uint8_t flags) {
  thread_local std::mt19937_64 gen = [] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }();
  traceparent tp;
  tp.flags = flags;
  auto fill = [&](auto& bytes) {
    do {
      for (std::size_t i = 0; i < bytes.size(); i += 8) {
        std::uint64_t r = gen();
        for (std::size_t j = i; j < i + 8 && j < bytes.size(); ++j, r >>= 8)
          bytes[j] = static_cast<std::uint8_t>(r);
      }
    } while (detail::all_zero(bytes));
  };
  fill(tp.trace_id);
  fill(tp.parent_id);
  return tp;
}

inline std::string traceparent::to_string() const {
  std::string s;
  s.reserve(55);
  s += "00-";
  for (std::uint8_t b : trace_id) detail::append_hex(s, b);
  s += '-';
  for (std::uint8_t b : parent_id) detail::append_hex(s, b);
  s += '-';
  detail::append_hex(s, flags);
  return s;
}

inline std::string traceparent::trace_id_hex() const { return detail::to_hex(trace_id); }
inline std::string traceparent::parent_id_hex() const { return detail::to_hex(parent_id); }

template <class Clock, class Set>
requires std::invocable<Set&, std::string_view, std::string_view>
void inject(const basic_context<Clock>& c, Set&& set) {
  // A deadline at time_point::max() never fires (a saturated with_timeout): no deadline to send.
  if (const auto d = c.deadline(); d && *d != Clock::time_point::max()) {
    const std::string t = encode_grpc_timeout(detail::ceil_nanoseconds(c.remaining()));
    set(timeout_header, std::string_view(t));
  }
  if (const traceparent* tp = c.value(trace_key)) {
    const std::string t = tp->to_string();
    set(traceparent_header, std::string_view(t));
  }
}

template <class Clock, header_getter Get>
derived<Clock> extract(const basic_context<Clock>& parent, Get&& get, source_location site) {
  return extract(parent, get, std::chrono::nanoseconds::max(), site);
}

template <class Clock, header_getter Get, class Rep, class Period>
derived<Clock> extract(const basic_context<Clock>& parent, Get&& get,
                       std::chrono::duration<Rep, Period> limit, source_location site) {
  using ns = std::chrono::nanoseconds;
  ns timeout = detail::ceil_nanoseconds(limit);
  if (const auto t = detail::with_header(get, timeout_header,
                                         [](std::optional<std::string_view> v) -> std::optional<ns> {
                                           return v ? decode_grpc_timeout(*v) : std::nullopt;
                                         }))
    timeout = std::min(timeout, *t);
  const auto tp = detail::with_header(get, traceparent_header, [](std::optional<std::string_view> v) {
    return v ? traceparent::parse(*v) : std::nullopt;
  });
  const basic_context<Clock> base = tp ? with_value(parent, trace_key, *tp, site) : parent;
  // with_timeout saturates: nanoseconds::max() (no header, no limit) makes no timer.
  if (timeout == ns::max()) return with_cancel(base, site);
  return with_timeout(base, timeout, {}, site);
}

}  // namespace ctx::propagation
