// SPDX-License-Identifier: MIT
// The time arithmetic behind deadlines (<ctx/detail/time_arith.hpp>): now +
// timeout, a deadline converted to the clock's tick, the difference of two
// time points. Checked exactly, against 128-bit reference arithmetic, over
// every combination of integral (signed, unsigned, 8 to 64 bits) and
// floating counts, periods that divide the clock's tick and periods that do
// not, the extremes of every type, and clocks whose now() is negative (as
// file_clock's is). Meant to run under UBSan too (the asan preset): not one
// operation may overflow. Then the same through the public API.
#include <ctx/ctx.hpp>
#include <ctx/testing.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <ratio>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"

using namespace std::chrono_literals;

#if defined(__SIZEOF_INT128__)

namespace {

__extension__ using i128 = __int128;
__extension__ using u128 = unsigned __int128;

/// A clock of any representation and period (only its types are used here).
template <class Rep, class Period>
struct fake_clock {
  using rep = Rep;
  using period = Period;
  using duration = std::chrono::duration<Rep, Period>;
  using time_point = std::chrono::time_point<fake_clock>;
  static constexpr bool is_steady = false;
  static time_point now() noexcept { return time_point{}; }
};

template <class... T>
struct type_list {};

// Counts of durations given by the user: every integral width and signedness, and floating point.
using reps = type_list<std::int8_t, std::uint8_t, std::int16_t, std::int32_t, std::uint32_t, std::int64_t,
                       std::uint64_t, float, double, long double>;
// Periods that divide a nanosecond tick evenly, and ones that do not (1/3 s, 1/60 s, 7/3 s, 1000/7 s, ps).
using periods = type_list<std::nano, std::micro, std::milli, std::ratio<1>, std::ratio<60>, std::ratio<3600>,
                          std::ratio<1, 3>, std::ratio<1, 60>, std::pico, std::ratio<7, 3>,
                          std::ratio<1000, 7>, std::ratio<86400 * 365>>;
// Clocks: steady-like (int64 ns), coarse and narrow ones, unsigned ones, a
// clock whose tick is 1/3 s, and floating-point clocks.
using integral_clocks =
    type_list<fake_clock<std::int64_t, std::nano>, fake_clock<std::int64_t, std::micro>,
              fake_clock<std::int32_t, std::milli>, fake_clock<std::uint64_t, std::nano>,
              fake_clock<std::uint32_t, std::ratio<1>>, fake_clock<std::int64_t, std::ratio<1, 3>>,
              fake_clock<std::int16_t, std::ratio<60>>>;
using floating_clocks = type_list<fake_clock<double, std::ratio<1>>, fake_clock<long double, std::nano>,
                                  fake_clock<float, std::milli>>;

template <class... T, class F>
void for_each_type(type_list<T...>, F&& f) {
  (f(static_cast<T*>(nullptr)), ...);
}

/// The exact value x * num / den of a finite floating count as m * 2^e * num / den.
template <class F>
struct exact_float {
  i128 m = 0;  // signed mantissa
  int e = 0;
};
template <class F>
exact_float<F> decompose(F v) {
  int k = 0;
  const long double f = std::frexp(static_cast<long double>(v), &k);  // v = f * 2^k, 0.5 <= |f| < 1
  constexpr int digits = std::numeric_limits<long double>::digits;
  exact_float<F> r;
  r.m = static_cast<i128>(std::ldexp(f, digits));  // exact: f has at most `digits` bits
  r.e = k - digits;
  while (r.m != 0 && r.m % 2 == 0) {  // smallest mantissa: keeps the products small
    r.m /= 2;
    ++r.e;
  }
  return r;
}

int bits(u128 v) {
  int b = 0;
  while (v) {
    v >>= 1;
    ++b;
  }
  return b;
}
u128 magnitude(i128 v) { return v < 0 ? u128(0) - static_cast<u128>(v) : static_cast<u128>(v); }

/// ceil(a / b) for b > 0.
i128 ceil_div(i128 a, i128 b) { return a / b + ((a % b != 0 && a > 0) ? 1 : 0); }

/// The exact ceil(count * num / den), or nothing when the reference cannot
/// hold it in 126 bits (then the test does not compare that value).
template <class Rep, class Ratio>
std::optional<i128> reference_ceil(Rep count) {
  const i128 num = Ratio::num, den = Ratio::den;
  if constexpr (std::is_floating_point_v<Rep>) {
    const exact_float<Rep> x = decompose(count);
    if (x.m == 0) return i128{0};
    if (x.e >= 0) {
      if (bits(magnitude(x.m)) + bits(static_cast<u128>(num)) + x.e > 125) return std::nullopt;
      return ceil_div(x.m * num * (i128{1} << x.e), den);
    }
    if (bits(magnitude(x.m)) + bits(static_cast<u128>(num)) + x.e < 0)
      return i128{x.m > 0 ? 1 : 0};  // |value| < 1
    if (bits(magnitude(x.m)) + bits(static_cast<u128>(num)) > 125 || bits(static_cast<u128>(den)) - x.e > 125)
      return std::nullopt;
    return ceil_div(x.m * num, den * (i128{1} << -x.e));
  } else {
    return ceil_div(static_cast<i128>(count) * num, den);
  }
}

/// Values worth trying for a count type: zero, ones, the extremes, powers
/// of two and ten around the 64-bit boundaries, fractions, infinities, NaN.
template <class Rep>
std::vector<Rep> interesting_counts() {
  using L = std::numeric_limits<Rep>;
  std::vector<Rep> v{Rep(0),     Rep(1), Rep(2), Rep(3), L::max(), static_cast<Rep>(L::max() - Rep(1)),
                     L::lowest()};
  if constexpr (std::is_signed_v<Rep>) {
    v.push_back(Rep(-1));
    v.push_back(Rep(-2));
    v.push_back(static_cast<Rep>(L::lowest() + Rep(1)));
  }
  if constexpr (std::is_floating_point_v<Rep>) {
    for (long double x : {0.5L, 1.5L, 2.5L, 1e-12L, 3e-9L, 0.1L, 1e-3L, 1e3L, 1e9L, 3.3e9L, 9.2e18L, 9.3e18L,
                          1.8e19L, 1.9e19L, 1e30L, 1e-30L, 1e-300L, 123456.789L})
      for (long double s : {1.0L, -1.0L}) v.push_back(static_cast<Rep>(s * x));
    v.push_back(static_cast<Rep>(1) / 3);
    v.push_back(static_cast<Rep>(2) / 3);
    v.push_back(std::nextafter(Rep(1), Rep(2)));
    v.push_back(std::nextafter(Rep(1), Rep(0)));
    v.push_back(std::nextafter(Rep(3), Rep(4)));
    v.push_back(L::denorm_min());
    v.push_back(L::min());
    v.push_back(-L::denorm_min());
    v.push_back(Rep(-0.0));
    v.push_back(L::infinity());
    v.push_back(-L::infinity());
    v.push_back(L::quiet_NaN());
  } else {
    for (int s = 1; s < std::numeric_limits<Rep>::digits; s += 7) {
      const auto p = static_cast<Rep>(static_cast<std::uint64_t>(1) << s);
      v.push_back(p);
      v.push_back(static_cast<Rep>(p - 1));
      if constexpr (std::is_signed_v<Rep>) v.push_back(static_cast<Rep>(-p));
    }
    if constexpr (sizeof(Rep) >= 8) {
      // 105 years in units of 1/3 s and 1/60 s (issue 9, bug 4), and in seconds.
      for (std::int64_t x :
           {std::int64_t{9'937'296'000}, std::int64_t{198'745'920'000}, std::int64_t{3'312'432'000}})
        v.push_back(static_cast<Rep>(x));
    }
  }
  std::mt19937_64 rng(42);
  for (int i = 0; i < 40; ++i) {
    if constexpr (std::is_floating_point_v<Rep>) {
      const int exponent =
          static_cast<int>(rng() % 140) - 70;  // one call per statement: the same values everywhere
      const long double mag = std::ldexp(static_cast<long double>(rng() % 1000) / 1000, exponent);
      v.push_back(static_cast<Rep>(rng() % 2 ? mag : -mag));
    } else {
      const auto shift = rng() % 64;  // one call per statement: the same values with every compiler
      v.push_back(static_cast<Rep>(rng() >> shift));
    }
  }
  return v;
}

/// Now values: zero, small, negative (as file_clock's, about -4.6e18 ns),
/// and the extremes of the clock's time_point.
template <class TimePoint>
std::vector<TimePoint> interesting_nows() {
  using D = typename TimePoint::duration;
  using R = typename D::rep;
  using L = std::numeric_limits<R>;
  std::vector<R> counts{R(0), R(1), L::max(), static_cast<R>(L::max() - R(1)), static_cast<R>(L::max() / 2)};
  if constexpr (std::is_signed_v<R>) {
    for (R c : {R(-1), L::lowest(), static_cast<R>(L::lowest() + R(1)), static_cast<R>(L::lowest() / 2)})
      counts.push_back(c);
    if constexpr (sizeof(R) == 8 && std::is_integral_v<R>) counts.push_back(R(-4'611'686'018'427'387'904));
  }
  std::vector<TimePoint> v;
  for (R c : counts) v.push_back(TimePoint(D(c)));
  return v;
}

}  // namespace

TEST_CASE("mul_add_div agrees with 128-bit arithmetic and its portable version", "[time]") {
  const std::uint64_t max = ~std::uint64_t{0};
  std::vector<std::uint64_t> vals{0,
                                  1,
                                  2,
                                  3,
                                  7,
                                  1000,
                                  999'999'937,
                                  std::uint64_t{1} << 32,
                                  (std::uint64_t{1} << 32) - 1,
                                  std::uint64_t{1} << 63,
                                  (std::uint64_t{1} << 63) - 1,
                                  max,
                                  max - 1};
  std::mt19937_64 rng(7);
  for (int i = 0; i < 30; ++i) {
    const auto shift = rng() % 64;  // one call per statement: the same values with every compiler
    vals.push_back(rng() >> shift);
  }
  std::size_t compared = 0;
  std::size_t wrong = 0;
  std::string first_wrong;
  for (std::uint64_t a : vals)
    for (std::uint64_t b : vals)
      for (std::uint64_t c : {std::uint64_t{0}, std::uint64_t{1}, max, b})
        for (std::uint64_t d : vals) {
          if (d == 0) continue;
          const u128 p = static_cast<u128>(a) * b + c;
          const u128 q = p / d;
          const auto fast = ctx::detail::mul_add_div(a, b, c, d);
          const auto portable = ctx::detail::mul_add_div_portable(a, b, c, d);
          const bool overflow = (q >> 64) != 0;
          bool ok = fast.overflow == overflow && portable.overflow == overflow;
          if (ok && !overflow)
            ok = fast.q == static_cast<std::uint64_t>(q) && portable.q == static_cast<std::uint64_t>(q) &&
                 fast.r == static_cast<std::uint64_t>(p % d) &&
                 portable.r == static_cast<std::uint64_t>(p % d);
          ++compared;
          if (!ok && wrong++ == 0) {
            std::ostringstream o;
            o << a << " * " << b << " + " << c << " / " << d;
            first_wrong = o.str();
          }
        }
  INFO(first_wrong);
  CHECK(wrong == 0);
  CHECK(compared > 300'000);
}

TEST_CASE("a fractional count scales exactly and rounds outward", "[time]") {
  // frac * num for frac in [0, 1): the exact ceiling (floor when rounding down),
  // with num exact in the floating type and, for double, too large to be.
  std::mt19937_64 rng(11);
  std::vector<double> fracs{0.0, 0.5, 0.25, 1.0 / 3, 2.0 / 3, 0.1, 0.9999999999999999, 1e-12, 3e-9, 1e-300};
  for (int i = 0; i < 200; ++i) {
    const int exponent =
        -53 - static_cast<int>(rng() % 20);  // one call per statement: the same values everywhere
    fracs.push_back(std::ldexp(static_cast<double>(rng() >> 11), exponent));
  }
  const std::uint64_t nums[] = {1,
                                3,
                                1000,
                                1'000'000'000,
                                3'600'000'000'000,
                                31'536'000'000'000'000,
                                (std::uint64_t{1} << 53) + 1,
                                (std::uint64_t{1} << 62) + 12345};
  for (double f : fracs)
    for (std::uint64_t num : nums)
      for (bool down : {false, true}) {
        const exact_float<double> x = decompose(f);
        if (x.e < -120 + bits(num)) continue;  // beyond the reference's 128 bits
        const i128 scaled = x.m * static_cast<i128>(num);
        const i128 unit = i128{1} << (x.e < 0 ? -x.e : 0);
        const i128 exact_floor = x.m == 0 ? 0 : (x.e >= 0 ? scaled << x.e : scaled / unit);
        const bool integral = x.m == 0 || x.e >= 0 || scaled % unit == 0;
        const i128 expect = down ? exact_floor : exact_floor + (integral ? 0 : 1);
        const auto got_ld = ctx::detail::scaled_fraction(static_cast<long double>(f), num, down);
        INFO("f=" << f << " num=" << num << " down=" << down);
        CHECK(static_cast<i128>(got_ld) == expect);  // long double holds every num exactly here
        const auto got_d = ctx::detail::scaled_fraction(f, num, down);
        if (num <= (std::uint64_t{1} << 53)) {
          CHECK(static_cast<i128>(got_d) == expect);
        } else {  // not exact: never on the early side, and close
          if (down)
            CHECK(static_cast<i128>(got_d) <= expect);
          else
            CHECK(static_cast<i128>(got_d) >= expect);
          CHECK(magnitude(static_cast<i128>(got_d) - expect) <= 4096);
        }
      }
}

namespace {

/// The comparisons of one sweep. The sweeps instantiate hundreds of
/// count/period/clock combinations: the checking lives here, outside the
/// templates, so that each combination compiles to a few lines.
struct tally {
  std::size_t compared = 0;
  std::size_t wrong = 0;
  std::string first_wrong;
  void check(bool ok, const char* what, long double count, std::intmax_t num, std::intmax_t den,
             int clock_bytes, long double now, long double got, long double expect) {
    ++compared;
    if (ok) return;
    if (wrong++ == 0) {
      std::ostringstream o;
      o.precision(21);
      o << what << ": count " << count << " period " << num << "/" << den << ", clock count of "
        << clock_bytes << " bytes, now " << now << ": got " << got << ", expected " << expect;
      first_wrong = o.str();
    }
  }
};

}  // namespace

TEST_CASE("now plus a timeout is exact rounded up and saturates for every count period and clock", "[time]") {
  tally t;
  for_each_type(integral_clocks{}, [&](auto* clock) {
    using Clock = std::remove_pointer_t<decltype(clock)>;
    using TP = typename Clock::time_point;
    using D = typename TP::duration;
    const i128 max = TP::max().time_since_epoch().count();
    const std::vector<TP> nows = interesting_nows<TP>();
    for_each_type(reps{}, [&](auto* rep) {
      using Rep = std::remove_pointer_t<decltype(rep)>;
      const std::vector<Rep> counts = interesting_counts<Rep>();
      for_each_type(periods{}, [&](auto* period) {
        using Period = std::remove_pointer_t<decltype(period)>;
        using ratio = std::ratio_divide<Period, typename D::period>;
        for (TP now : nows)
          for (Rep count : counts) {
            const std::chrono::duration<Rep, Period> timeout(count);
            const i128 n = now.time_since_epoch().count();
            const i128 got = ctx::detail::deadline_after(now, timeout).time_since_epoch().count();
            i128 expect;
            if (!(timeout > timeout.zero())) {
              expect = n;  // zero, negative, NaN: expired
            } else {
              const i128 beyond = i128{1} << 100;  // more than any clock's headroom
              std::optional<i128> y;
              if constexpr (std::is_floating_point_v<Rep>)
                if (std::isinf(count)) y = beyond;
              if (!y) y = reference_ceil<Rep, ratio>(count);
              if (!y) y = beyond;  // beyond 126 bits: far beyond any clock
              expect = *y >= max - n ? max : n + *y;
            }
            t.check(got == expect, "deadline_after", static_cast<long double>(count), Period::num,
                    Period::den, static_cast<int>(sizeof(typename D::rep)), static_cast<long double>(n),
                    static_cast<long double>(got), static_cast<long double>(expect));
          }
      });
    });
  });
  INFO(t.first_wrong);
  CHECK(t.wrong == 0);
  CHECK(t.compared > 100'000);
}

TEST_CASE("a deadline converts to the clock's tick exactly rounded up and saturates at both ends", "[time]") {
  tally t;
  for_each_type(integral_clocks{}, [&](auto* clock) {
    using Clock = std::remove_pointer_t<decltype(clock)>;
    using TP = typename Clock::time_point;
    using D = typename TP::duration;
    const i128 max = TP::max().time_since_epoch().count();
    const i128 min = TP::min().time_since_epoch().count();
    for_each_type(reps{}, [&](auto* rep) {
      using Rep = std::remove_pointer_t<decltype(rep)>;
      const std::vector<Rep> counts = interesting_counts<Rep>();
      for_each_type(periods{}, [&](auto* period) {
        using Period = std::remove_pointer_t<decltype(period)>;
        using ratio = std::ratio_divide<Period, typename D::period>;
        for (Rep count : counts) {
          const std::chrono::time_point<Clock, std::chrono::duration<Rep, Period>> tp{
              std::chrono::duration<Rep, Period>(count)};
          const i128 got = ctx::detail::ceil_time_point<TP>(tp).time_since_epoch().count();
          std::optional<i128> y;
          if constexpr (std::is_floating_point_v<Rep>) {
            if (std::isnan(count))
              y = min;
            else if (std::isinf(count))
              y = count > 0 ? max : min;
          }
          if (!y) y = reference_ceil<Rep, ratio>(count);
          if (!y) y = count > 0 ? max : min;
          const i128 expect = *y >= max ? max : *y <= min ? min : *y;
          t.check(got == expect, "ceil_time_point", static_cast<long double>(count), Period::num, Period::den,
                  static_cast<int>(sizeof(typename D::rep)), 0, static_cast<long double>(got),
                  static_cast<long double>(expect));
        }
      });
    });
  });
  INFO(t.first_wrong);
  CHECK(t.wrong == 0);
  CHECK(t.compared > 5'000);
}

TEST_CASE("the difference of two time points saturates at the duration's limits", "[time]") {
  for_each_type(integral_clocks{}, [](auto* clock) {
    using TP = typename std::remove_pointer_t<decltype(clock)>::time_point;
    using D = typename TP::duration;
    const i128 dmax = D::max().count(), dmin = D::min().count();
    for (TP a : interesting_nows<TP>())
      for (TP b : interesting_nows<TP>()) {
        const i128 diff = static_cast<i128>(a.time_since_epoch().count()) - b.time_since_epoch().count();
        const i128 expect = diff > dmax ? dmax : diff < dmin ? dmin : diff;
        CHECK(static_cast<i128>(ctx::detail::saturating_sub(a, b).count()) == expect);
        const i128 left = diff <= 0 ? 0 : expect;
        CHECK(static_cast<i128>(ctx::detail::time_until(a, b).count()) == left);
      }
  });
}

TEST_CASE("clocks with a floating-point count saturate and never land early", "[time]") {
  for_each_type(floating_clocks{}, [](auto* clock) {
    using Clock = std::remove_pointer_t<decltype(clock)>;
    using TP = typename Clock::time_point;
    using R = typename TP::duration::rep;
    for (R n : {R(0), R(-1e6), R(1e6), R(1e30), std::numeric_limits<R>::max()}) {
      const TP now{typename TP::duration(n)};
      for (double s : {0.0, -1.0, 1e-9, 1.5, 1e3, 1e300, std::numeric_limits<double>::infinity(),
                       -std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
        const std::chrono::duration<double> t(s);
        const TP got = ctx::detail::deadline_after(now, t);
        if (!(s > 0)) {
          CHECK(got == now);
          continue;
        }
        const long double exact =
            static_cast<long double>(n) +
            static_cast<long double>(s) * (static_cast<long double>(TP::duration::period::den) /
                                           static_cast<long double>(TP::duration::period::num));
        const long double g = got.time_since_epoch().count();
        CHECK((got == TP::max() || g >= exact));
        CHECK_FALSE(std::isnan(g));
      }
      CHECK(ctx::detail::ceil_time_point<TP>(std::chrono::time_point<Clock, std::chrono::duration<double>>(
                std::chrono::duration<double>(std::numeric_limits<double>::quiet_NaN()))) == TP::min());
    }
  });
}

#endif  // __SIZEOF_INT128__

// --- through the public API --------------------------------------------------------

TEST_CASE("floating-point timeouts round up to the clock's tick and never fire early", "[time][deadline]") {
  auto root = ctx::background<manual>();
  const auto now = manual::now();
  {
    auto [c, cancel] = ctx::with_timeout(root, std::chrono::duration<double, std::nano>(1.5));
    CHECK(c.deadline() == now + 2ns);
    CHECK_FALSE(c.done());
  }
  {
    auto [c, cancel] = ctx::with_timeout(root, std::chrono::duration<float>(1e-12f));
    CHECK(c.deadline() == now + 1ns);
    CHECK_FALSE(c.done());  // a positive timeout is never born done
    manual::advance(0ns);
    CHECK_FALSE(c.done());
    manual::advance(1ns);
    CHECK(c.err() == ctx::errc::deadline_exceeded);
  }
  {
    auto [c, cancel] = ctx::with_timeout(root, std::chrono::duration<double>(3e-9));  // a hair above 3 ns
    CHECK(c.deadline() >= manual::now() + 3ns);
  }
}

TEST_CASE("NaN and infinite timeouts and deadlines are defined", "[time][deadline]") {
  auto root = ctx::background<manual>();
  constexpr double inf = std::numeric_limits<double>::infinity();
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  using fsec = std::chrono::duration<double>;
  using ftp = std::chrono::time_point<manual, fsec>;
  {
    auto [c, cancel] = ctx::with_timeout(root, fsec(nan));
    CHECK(c.err() == ctx::errc::deadline_exceeded);
  }
  {
    auto [c, cancel] = ctx::with_timeout(root, fsec(-inf));
    CHECK(c.err() == ctx::errc::deadline_exceeded);
  }
  {
    auto [c, cancel] = ctx::with_timeout(root, fsec(inf));
    CHECK(c.deadline() == manual::time_point::max());
    manual::advance(1000h);
    CHECK_FALSE(c.done());
  }
  {
    auto [c, cancel] = ctx::with_deadline(root, ftp(fsec(nan)));
    CHECK(c.err() == ctx::errc::deadline_exceeded);
  }
  {
    auto [c, cancel] = ctx::with_deadline(root, ftp(fsec(-inf)));
    CHECK(c.err() == ctx::errc::deadline_exceeded);
  }
  {
    auto [c, cancel] = ctx::with_deadline(root, ftp(fsec(inf)));
    CHECK(c.deadline() == manual::time_point::max());
    CHECK_FALSE(c.done());
  }
}

// Regression (issue 9, bug 4): std::chrono::ceil multiplied count * num
// before dividing, so about 105 years in units of 1/3 s or 1/60 s overflowed
// and the context was born done.
TEST_CASE("a timeout of about 105 years in units that do not divide the tick is not born done",
          "[time][deadline]") {
  using third = std::chrono::duration<std::int64_t, std::ratio<1, 3>>;
  using sixtieth = std::chrono::duration<std::int64_t, std::ratio<1, 60>>;
  constexpr std::int64_t seconds = 105LL * 365 * 86400;
  auto root = ctx::background<manual>();
  const auto now = manual::now();
  {
    auto [c, cancel] = ctx::with_timeout(root, third(seconds * 3));
    CHECK_FALSE(c.done());
    CHECK(c.deadline() == now + std::chrono::seconds(seconds));
  }
  {
    auto [c, cancel] = ctx::with_timeout(root, sixtieth(seconds * 60 + 1));
    CHECK_FALSE(c.done());
    CHECK(c.deadline() == now + std::chrono::seconds(seconds) + 16'666'667ns);  // 1/60 s, rounded up
  }
  {
    const std::chrono::time_point<manual, third> when(third(seconds * 3));
    auto [c, cancel] = ctx::with_deadline(root, when);
    CHECK_FALSE(c.done());
    CHECK(c.deadline() == manual::time_point(std::chrono::seconds(seconds)));
  }
}

// Regression (issue 9, bug 5): `time_point::max() - now` overflowed when
// now() is negative, as libstdc++'s file_clock's is, and a 50 ms timeout
// never fired.
TEST_CASE("deadlines work on a clock whose now is negative", "[time][deadline][real]") {
  using fc = std::chrono::file_clock;
  REQUIRE(fc::now().time_since_epoch() < fc::duration::zero());  // libstdc++: about -4.6e18 ns
  const auto start = std::chrono::steady_clock::now();
  auto [c, cancel] = ctx::with_timeout(ctx::background<fc>(), 50ms);
  CHECK(c.remaining() <= 50ms);
  CHECK(c.remaining() > 0ms);
  auto [never, cn] = ctx::with_timeout(ctx::background<fc>(), fc::duration::max());
  CHECK(never.remaining() > 100'000h);  // saturated, not overflowed
  auto [far, cf] = ctx::with_deadline(ctx::background<fc>(), fc::time_point::max() - 1ns);
  CHECK(far.remaining() == fc::duration::max());  // more than the duration can hold
  c.wait();
  CHECK(c.err() == ctx::errc::deadline_exceeded);
  CHECK(std::chrono::steady_clock::now() - start >= 50ms);
  CHECK_FALSE(far.done());
}

namespace {

/// A steady clock whose tick is a minute.
struct minute_clock {
  using rep = std::int64_t;
  using period = std::ratio<60>;
  using duration = std::chrono::duration<rep, period>;
  using time_point = std::chrono::time_point<minute_clock>;
  [[maybe_unused]] static constexpr bool is_steady = true;
  static time_point now() noexcept {
    return time_point(std::chrono::floor<duration>(std::chrono::steady_clock::now().time_since_epoch()));
  }
};

/// A steady clock whose count is a double, in seconds.
struct double_clock {
  using rep = double;
  using period = std::ratio<1>;
  using duration = std::chrono::duration<rep, period>;
  using time_point = std::chrono::time_point<double_clock>;
  [[maybe_unused]] static constexpr bool is_steady = true;
  static time_point now() noexcept {
    return time_point(
        std::chrono::duration_cast<duration>(std::chrono::steady_clock::now().time_since_epoch()));
  }
};

}  // namespace

// Regression: the timer thread compared the time left with seconds(1), which
// converts minutes to seconds: for a far deadline the product overflowed
// (UBSan), and the wait that followed ended in the past, so the thread spun.
TEST_CASE("the timer thread of a clock whose tick is a minute sleeps for a far deadline",
          "[time][deadline][real]") {
  auto& service = ctx::detail::timer_service<minute_clock>::instance();
  auto [c, cancel] = ctx::with_deadline(ctx::background<minute_clock>(),
                                        minute_clock::time_point(minute_clock::duration(INT64_MAX / 2)));
  const auto asleep = std::chrono::steady_clock::now() + 10s;  // the timer thread starts and goes to sleep
  while (service.last_sleep().count == 0 && std::chrono::steady_clock::now() < asleep)
    std::this_thread::sleep_for(1ms);
  const auto before = service.last_sleep().count;
  std::this_thread::sleep_for(300ms);
  // It sleeps at most a second at a time: one more sleep at most, not thousands.
  CHECK(service.last_sleep().count - before <= 1);
  CHECK_FALSE(c.done());
}

// Regression: on a clock whose count is floating-point, a deadline of +inf
// in the clock's own duration was kept as +inf: a timer that could never
// fire, which woke the timer thread every second, and deadline() was not max().
TEST_CASE("an infinite deadline on a floating-point clock is no deadline", "[time][deadline]") {
  constexpr double inf = std::numeric_limits<double>::infinity();
  auto root = ctx::background<double_clock>();
  auto& service = ctx::detail::timer_service<double_clock>::instance();
  const std::size_t pending = service.pending();
  auto [c, cancel] = ctx::with_deadline(root, double_clock::time_point(double_clock::duration(inf)));
  CHECK(c.deadline() == double_clock::time_point::max());
  CHECK(service.pending() == pending);
  CHECK_FALSE(c.done());
  auto [past, cancel_past] = ctx::with_deadline(root, double_clock::time_point(double_clock::duration(-inf)));
  CHECK(past.err() == ctx::errc::deadline_exceeded);
}

TEST_CASE("manual_clock advance saturates at the end of time", "[time][testing]") {
  // Last in the process: the manual clock never goes back. Run alone by ctest.
  auto [c, cancel] = ctx::with_deadline(ctx::background<manual>(), manual::time_point::max() - 1ns);
  manual::advance(manual::duration::max());
  CHECK(manual::now() == manual::time_point::max());
  CHECK(c.err() == ctx::errc::deadline_exceeded);
  manual::advance(1h);
  CHECK(manual::now() == manual::time_point::max());
}
