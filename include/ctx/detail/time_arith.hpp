// SPDX-License-Identifier: MIT
// Saturating, exactly rounded time arithmetic: `now + timeout` and a time
// point converted to a clock's own tick, both rounded up (a deadline never
// fires early) and saturated at the time_point's limits, and the difference
// of two time points saturated at the duration's. For every std::chrono
// representation (signed, unsigned or floating, up to 64 bits) and period,
// for any `now()` (negative too, as file_clock's), never overflowing.
//
// The arithmetic is exact: a count is scaled by the ratio of the two periods
// in 128-bit integers (unsigned __int128 where the compiler has it, else a
// portable long multiplication and division); a floating count is split into
// its integral part, scaled exactly, and its fractional part, whose scaled
// value is rounded with its exact error (one fma), so `1.5ns` becomes 2 ns and
// `1e-12s` 1 ns. NaN is no time at all (a timeout of NaN is expired, a
// deadline of NaN is time_point::min()); +inf saturates at max(), -inf at min().
//
// Thread safety: pure functions.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ratio>
#include <type_traits>

namespace ctx::detail {

/// floor((a * b + c) / d) and the remainder; `overflow` when the quotient needs more than 64 bits.
struct wide_quotient {
  std::uint64_t q;
  std::uint64_t r;
  bool overflow;
};

/// mul_add_div without 128-bit integers: a 64x64 multiplication by 32-bit
/// halves, then a 128-by-64 long division, one quotient bit per step.
/// Precondition d > 0.
[[nodiscard]] constexpr wide_quotient mul_add_div_portable(std::uint64_t a, std::uint64_t b, std::uint64_t c,
                                                           std::uint64_t d) noexcept {
  constexpr std::uint64_t low32 = 0xffff'ffffu;
  const std::uint64_t al = a & low32, ah = a >> 32, bl = b & low32, bh = b >> 32;
  const std::uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
  const std::uint64_t mid = (ll >> 32) + (lh & low32) + (hl & low32);
  std::uint64_t lo = (ll & low32) | (mid << 32);
  std::uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
  lo += c;
  if (lo < c) ++hi;  // a*b + c < 2^128: no carry out of `hi`
  if (hi >= d) return {~std::uint64_t{0}, 0, true};
  std::uint64_t r = hi;  // < d throughout
  std::uint64_t q = 0;
  for (int i = 63; i >= 0; --i) {
    const bool carry = (r >> 63) != 0;  // the shifted remainder is 2^64 + r: at least d
    r = (r << 1) | ((lo >> i) & 1u);
    q <<= 1;
    if (carry || r >= d) {
      r -= d;  // modulo 2^64: the true difference, which is < d
      q |= 1u;
    }
  }
  return {q, r, false};
}

/// floor((a * b + c) / d) and (a * b + c) mod d, exactly. Precondition d > 0.
[[nodiscard]] constexpr wide_quotient mul_add_div(std::uint64_t a, std::uint64_t b, std::uint64_t c,
                                                  std::uint64_t d) noexcept {
#if defined(__SIZEOF_INT128__)
  __extension__ using u128 = unsigned __int128;
  const u128 p = static_cast<u128>(a) * b + c;
  const u128 q = p / d;
  if (q >> 64) return {~std::uint64_t{0}, 0, true};
  return {static_cast<std::uint64_t>(q), static_cast<std::uint64_t>(p % d), false};
#else
  return mul_add_div_portable(a, b, c, d);
#endif
}

/// A count scaled to another period and rounded up: its sign and magnitude,
/// or a magnitude of 2^64 or more, or not a number.
struct scaled_count {
  enum kind_t : std::uint8_t { finite, huge, nan };
  kind_t kind = finite;
  bool negative = false;
  std::uint64_t magnitude = 0;  // meaningful when finite
};

template <class Rep>
inline constexpr bool supported_rep =
    (std::is_integral_v<Rep> && sizeof(Rep) <= sizeof(std::uint64_t)) || std::is_floating_point_v<Rep>;

/// `frac * num` (0 <= frac < 1) rounded up, or down when `down`, exactly
/// when `num` is exact in F (always for x86's long double); otherwise rounded
/// one rounding error further out, so that the result still never lies on
/// the early side. Uses the exact error of the product (one fma).
template <class F>
[[nodiscard]] std::uint64_t scaled_fraction(F frac, std::uint64_t num, bool down) noexcept {
  if (!(frac > 0)) return 0;
  constexpr int digits = std::numeric_limits<F>::digits;
  constexpr std::uint64_t exact_limit = digits >= 64 ? ~std::uint64_t{0} : std::uint64_t{1} << (digits % 64);
  const F n = static_cast<F>(num);
  const F p = frac * n;  // <= num
  if (num <= exact_limit) {
    const F err = std::fma(frac, n, -p);  // frac * num == p + err, exactly
    const auto ip = static_cast<std::uint64_t>(p);
    // p is the rounding of the true product, so it is in the same closed
    // interval between integers: only an integral p needs the error's sign.
    if (static_cast<F>(ip) == p) return down ? ip - (err < 0 ? 1u : 0u) : ip + (err > 0 ? 1u : 0u);
    return down ? ip : ip + 1;
  }
  // Both `n` and `p` carry a rounding error of at most half a unit in the
  // last place of `num`; step past both.
  const F slack = std::ldexp(n, 1 - digits) + 1;
  if (down) return p > slack ? static_cast<std::uint64_t>(std::floor(p - slack)) : 0;
  return static_cast<std::uint64_t>(std::ceil(p + slack));
}

/// Stores the quotient `w` as the magnitude of `s`, rounded toward
/// +infinity: a positive value with a remainder goes one up, a negative one
/// (its magnitude) stays, toward zero. Too large for 64 bits: huge.
inline void store_rounded_up(scaled_count& s, const wide_quotient& w) noexcept {
  if (w.overflow) {
    s.kind = scaled_count::huge;
    return;
  }
  s.magnitude = w.q;
  if (!s.negative && w.r != 0) {
    if (s.magnitude == ~std::uint64_t{0})
      s.kind = scaled_count::huge;
    else
      ++s.magnitude;
  }
}

/// `d` in units of `ToPeriod`, rounded toward +infinity (a negative value
/// toward zero), exactly.
template <class ToPeriod, class Rep, class Period>
[[nodiscard]] scaled_count ceil_scale(std::chrono::duration<Rep, Period> d) noexcept {
  static_assert(
      supported_rep<Rep>,
      "ctx: a duration's count must be an integral type of at most 64 bits or a floating-point type");
  using ratio = std::ratio_divide<Period, ToPeriod>;
  constexpr auto num = static_cast<std::uint64_t>(ratio::num);
  constexpr auto den = static_cast<std::uint64_t>(ratio::den);
  constexpr std::uint64_t all_ones = ~std::uint64_t{0};
  scaled_count s;
  if constexpr (std::is_floating_point_v<Rep>) {
    using F = long double;
    const F v = static_cast<F>(d.count());
    if (std::isnan(v)) {
      s.kind = scaled_count::nan;
      return s;
    }
    s.negative = v < 0;
    const F a = std::fabs(v);
    std::uint64_t whole_count;
    std::uint64_t scale = num;
    F frac = 0;
    if (std::isinf(a)) {
      s.kind = scaled_count::huge;
      return s;
    }
    if (a < 0x1p64L) {
      const F whole = std::trunc(a);
      frac = a - whole;  // exact
      whole_count = static_cast<std::uint64_t>(whole);
    } else {
      // An integer (no floating type has more than 64 bits of mantissa):
      // a == m * 2^k with m < 2^64, k >= 1. It fits after scaling only if
      // den is large; num * 2^k >= 2^64 gives at least 2^127 / den >= 2^64.
      int e = 0;
      const F f = std::frexp(a, &e);  // a == f * 2^e, 0.5 <= f < 1, e > 64
      const int k = e - 64;
      if (k >= 64 || num > (all_ones >> k)) {
        s.kind = scaled_count::huge;
        return s;
      }
      whole_count = static_cast<std::uint64_t>(std::ldexp(f, 64));
      scale = num << k;
    }
    // The fractional part in units of 1/den of the target period, rounded
    // away from the whole part's side: up for a positive value, down for a
    // negative one. Rounding it first loses nothing: no multiple of `den`
    // lies strictly between two neighbouring integers.
    const std::uint64_t part = scaled_fraction(frac, num, s.negative);
    store_rounded_up(s, mul_add_div(whole_count, scale, part, den));
    return s;
  } else {
    const Rep x = d.count();
    std::uint64_t a;
    if constexpr (std::is_signed_v<Rep>) {
      s.negative = x < 0;
      a = s.negative ? std::uint64_t{0} - static_cast<std::uint64_t>(x) : static_cast<std::uint64_t>(x);
    } else {
      a = static_cast<std::uint64_t>(x);
    }
    if constexpr (den == 1) {  // a whole multiple: seconds to nanoseconds, 1h to ticks
      if constexpr (num != 1) {
        if (a > all_ones / num) {  // a compile-time constant: one comparison
          s.kind = scaled_count::huge;
          return s;
        }
      }
      s.magnitude = a * num;
      return s;
    } else {
      store_rounded_up(s, mul_add_div(a, num, 0, den));
      return s;
    }
  }
}

/// The count of `t`'s duration as an unsigned 64-bit word (modulo 2^64).
template <class TimePoint>
[[nodiscard]] constexpr std::uint64_t raw_count(TimePoint t) noexcept {
  return static_cast<std::uint64_t>(t.time_since_epoch().count());
}

/// `now + t`, rounded up to the tick of TimePoint's duration, saturated at
/// TimePoint::max() (which means "never"). A `t` that is not positive (zero,
/// negative, -0.0, -inf, NaN) gives `now`: already expired.
template <class TimePoint, class Rep, class Period>
[[nodiscard]] TimePoint deadline_after(TimePoint now, std::chrono::duration<Rep, Period> t) noexcept {
  using D = typename TimePoint::duration;
  using R = typename D::rep;
  static_assert(supported_rep<R>,
                "ctx: a clock's count must be an integral type of at most 64 bits or floating-point");
  if (!(t > t.zero())) return now;
  if constexpr (std::is_floating_point_v<R>) {
    // A clock whose count is floating-point has no tick to round to: add in
    // long double, saturate, and never land before the exact sum.
    using F = long double;
    using ratio = std::ratio_divide<Period, typename D::period>;
    const F dt = static_cast<F>(t.count()) * static_cast<F>(ratio::num) / static_cast<F>(ratio::den);
    const F base = static_cast<F>(now.time_since_epoch().count());
    const F top = static_cast<F>(TimePoint::max().time_since_epoch().count());
    if (!(base + dt < top)) return TimePoint::max();
    R sum = static_cast<R>(base + dt);
    if (static_cast<F>(sum) < base + dt) sum = std::nextafter(sum, std::numeric_limits<R>::infinity());
    return TimePoint(D(sum));
  } else {
    const std::uint64_t headroom = raw_count(TimePoint::max()) - raw_count(now);  // exact: max >= now
    const scaled_count s = ceil_scale<typename D::period>(t);
    if (s.kind != scaled_count::finite || s.magnitude >= headroom) return TimePoint::max();
    return TimePoint(D(static_cast<R>(raw_count(now) + s.magnitude)));  // < max: no wrap
  }
}

/// `tp` as a TimePoint of its own clock: rounded up to TimePoint's tick and
/// saturated at TimePoint::min() and max(); NaN gives min() (already passed).
template <class TimePoint, class Duration>
[[nodiscard]] TimePoint ceil_time_point(
    std::chrono::time_point<typename TimePoint::clock, Duration> tp) noexcept {
  using D = typename TimePoint::duration;
  using R = typename D::rep;
  static_assert(supported_rep<R>,
                "ctx: a clock's count must be an integral type of at most 64 bits or floating-point");
  if constexpr (std::is_same_v<Duration, D>) {
    if constexpr (std::is_floating_point_v<R>) {
      const R v = tp.time_since_epoch().count();
      if (std::isnan(v)) return TimePoint::min();  // a NaN would break the heap's order
      if (!(v < TimePoint::max().time_since_epoch().count())) return TimePoint::max();  // +inf: never
      if (!(v > TimePoint::min().time_since_epoch().count())) return TimePoint::min();  // -inf: passed
    }
    return tp;
  } else if constexpr (std::is_floating_point_v<R>) {
    using F = long double;
    using ratio = std::ratio_divide<typename Duration::period, typename D::period>;
    const F v = static_cast<F>(tp.time_since_epoch().count()) * static_cast<F>(ratio::num) /
                static_cast<F>(ratio::den);
    if (std::isnan(v)) return TimePoint::min();
    if (!(v < static_cast<F>(TimePoint::max().time_since_epoch().count()))) return TimePoint::max();
    if (!(v > static_cast<F>(TimePoint::min().time_since_epoch().count()))) return TimePoint::min();
    R r = static_cast<R>(v);
    if (static_cast<F>(r) < v) r = std::nextafter(r, std::numeric_limits<R>::infinity());
    return TimePoint(D(r));
  } else {
    const scaled_count s = ceil_scale<typename D::period>(tp.time_since_epoch());
    if (s.kind == scaled_count::nan) return TimePoint::min();
    if (s.negative) {
      const std::uint64_t lowest = std::uint64_t{0} - raw_count(TimePoint::min());  // |min|; 0 when unsigned
      if (s.kind == scaled_count::huge || s.magnitude >= lowest) return TimePoint::min();
      return TimePoint(D(static_cast<R>(std::uint64_t{0} - s.magnitude)));
    }
    if (s.kind == scaled_count::huge || s.magnitude >= raw_count(TimePoint::max())) return TimePoint::max();
    return TimePoint(D(static_cast<R>(s.magnitude)));
  }
}

/// `a - b`, saturated at the duration's min() and max().
template <class TimePoint>
[[nodiscard]] typename TimePoint::duration saturating_sub(TimePoint a, TimePoint b) noexcept {
  using D = typename TimePoint::duration;
  using R = typename D::rep;
  static_assert(supported_rep<R>,
                "ctx: a clock's count must be an integral type of at most 64 bits or floating-point");
  if constexpr (std::is_floating_point_v<R>) {
    return a - b;
  } else {
    if (a >= b) {
      const std::uint64_t m = raw_count(a) - raw_count(b);
      return m >= static_cast<std::uint64_t>(D::max().count()) ? D::max() : D(static_cast<R>(m));
    }
    const std::uint64_t m = raw_count(b) - raw_count(a);
    const std::uint64_t lowest = std::uint64_t{0} - static_cast<std::uint64_t>(D::min().count());
    return m >= lowest ? D::min() : D(static_cast<R>(std::uint64_t{0} - m));
  }
}

/// Time left from `now` until `when`: zero once passed, saturated at duration::max().
template <class TimePoint>
[[nodiscard]] typename TimePoint::duration time_until(TimePoint when, TimePoint now) noexcept {
  return when <= now ? TimePoint::duration::zero() : saturating_sub(when, now);
}

}  // namespace ctx::detail
