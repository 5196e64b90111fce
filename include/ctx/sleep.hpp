// SPDX-License-Identifier: MIT
// ctx::sleep_for and ctx::sleep_until: sleeps that end early when the context is done.
//
// Thread safety: both functions may be called from any number of threads on
// the same context. A sleep waits for a private child context derived with
// `with_deadline`, so it ends through the same path as every other waiter:
// the timer service (or manual_clock::advance) or a cancel marks the child
// done with a release store, and the sleeper reads it with acquire. Whatever
// happened before that cancel or deadline happens-before the sleep returns.
#pragma once

#include <chrono>
#include <concepts>
#include <system_error>

#include "context.hpp"

namespace ctx {

/// Blocks until `t` has passed on `Clock`, or until `c` is done, whichever comes first.
///
/// Returns `{}` after the full sleep, else `c.err()` (`errc::canceled` or
/// `errc::deadline_exceeded`). If `c` is done already it returns `c.err()` at
/// once; if `t` has passed already it returns `{}` at once. When the
/// context's own deadline is at or before `t`, the sleep ends at that
/// deadline with `errc::deadline_exceeded`.
///
/// The sleep is a child context with deadline `t`: no thread and no polling,
/// one timer in the clock's timer service. On `ctx::testing::manual_clock`
/// it returns exactly when a test moves the clock to or past `t`, never
/// before: the timer fires inside `advance()`, which marks the sleep done
/// before it returns.
///
/// Throws std::bad_alloc, or std::system_error if the timer thread cannot be
/// started (as `with_deadline` does).
template <class Clock, class Duration>
[[nodiscard]] std::error_code sleep_until(const basic_context<Clock>& c,
                                          std::chrono::time_point<Clock, Duration> t,
                                          source_location site = source_location::current());

/// Rejected at compile time: a time point of another clock than the context's
/// (as for with_deadline; the static_assert says how to convert it).
template <class Clock, class OtherClock, class Duration>
requires(!std::same_as<Clock, OtherClock>) std::error_code
    sleep_until(const basic_context<Clock>&, std::chrono::time_point<OtherClock, Duration>,
                source_location = source_location::current()) {
  static_assert(std::same_as<Clock, OtherClock>,
                "ctx::sleep_until: the time point is of another clock than the context's. Convert it to "
                "the context's clock first (for a duration from now: "
                "ctx::sleep_for(c, t - OtherClock::now())), or sleep on a context of that clock "
                "(ctx::background<OtherClock>()).");
  return {};
}

/// Blocks for `d`, or until `c` is done: `sleep_until(c, Clock::now() + d)`.
///
/// Saturating: `d <= 0` returns at once (`{}`, or `c.err()` if `c` is done);
/// `duration::max()` sleeps until `c` is done. See `sleep_until`.
///
/// Example:
/// \code
///   for (int attempt = 0;; ++attempt) {
///     if (try_connect(c)) break;
///     if (auto ec = ctx::sleep_for(c, backoff(attempt))) return ec;  // canceled or deadline
///   }
/// \endcode
template <class Clock, class Rep, class Period>
[[nodiscard]] std::error_code sleep_for(const basic_context<Clock>& c, std::chrono::duration<Rep, Period> d,
                                        source_location site = source_location::current());

// ---------------------------------------------------------------------------
// Implementation.

namespace detail {

/// Waits until `timer` (a child of `c`) is done; reports whether `c` ended it.
template <class Clock>
[[nodiscard]] std::error_code sleep_on(const basic_context<Clock>& c, derived<Clock> timer) {
  timer.context.wait();
  // The child is done because its own deadline fired or because `c` is done:
  // in the second case c.done() is true now (the child takes c's err).
  return c.err();
}

}  // namespace detail

template <class Clock, class Duration>
std::error_code sleep_until(const basic_context<Clock>& c, std::chrono::time_point<Clock, Duration> t,
                            source_location site) {
  if (c.done()) return c.err();
  return detail::sleep_on(c, with_deadline(c, t, {}, site));
}

template <class Clock, class Rep, class Period>
std::error_code sleep_for(const basic_context<Clock>& c, std::chrono::duration<Rep, Period> d,
                          source_location site) {
  if (c.done()) return c.err();
  return detail::sleep_on(c, with_timeout(c, d, {}, site));
}

}  // namespace ctx
