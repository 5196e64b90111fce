// SPDX-License-Identifier: MIT
// ctx::wait and ctx::get for std::future and std::shared_future: the one bounded poll.
//
// `std::future` has no wake-up hook: nothing can interrupt `wait()` when a
// context is cancelled. So these functions wait on the future in slices of
// `future_poll_interval` (1 ms) and check the context between slices. This
// is the only polling wait in ctx, and its cost is bounded: a blocked waiter
// wakes about 1000 times a second, and notices that its context is done at
// most one slice (plus scheduling delay) after it happened. A future that
// becomes ready wakes the waiter at once.
//
// Thread safety: as for the future itself. Several threads may wait on
// copies of one `std::shared_future`; a `std::future` must have one user at
// a time. The context may be cancelled from any thread. When the future is
// ready, whatever the producer did before making it ready happens-before the
// wait returns (the standard's guarantee); when the context ends the wait,
// the cancel happens-before it returns (acquire load of done()).
#pragma once

#include <chrono>
#include <future>
#include <system_error>

#include "context.hpp"

namespace ctx {

/// The slice a future wait polls in: the bound on how late it notices a done context.
inline constexpr std::chrono::milliseconds future_poll_interval{1};

/// Waits until `f` is ready or `c` is done; `{}` when ready, else `c.err()`.
///
/// If `c` is done on entry, returns `c.err()` at once without touching `f`.
/// When both are true by the time the wait looks, readiness wins: a value
/// that is there is not reported as lost. A context that becomes done while
/// waiting is noticed within `future_poll_interval` plus scheduling delay.
/// The future stays valid and usable after a cancelled wait.
///
/// A deferred future (`std::async(std::launch::deferred, ...)`) runs its
/// function on this thread here, as `f.wait()` would; that run cannot be
/// interrupted. Throws `std::future_error` (`no_state`) if `!f.valid()`.
template <class Clock, class T>
[[nodiscard]] std::error_code wait(const basic_context<Clock>& c, const std::future<T>& f);

/// As the `std::future` overload, for a `std::shared_future`.
template <class Clock, class T>
[[nodiscard]] std::error_code wait(const basic_context<Clock>& c, const std::shared_future<T>& f);

/// Waits as `wait(c, f)` does, then returns `f.get()`.
///
/// Throws `ctx::error` (code() == c.err(), with c.cause()) if `c` ends the
/// wait; `f` is then left valid, so the result can still be collected
/// later. Otherwise returns what `f.get()` returns, or throws what it throws
/// (the producer's exception), and `f` is no longer valid, as after `f.get()`.
///
/// Example:
/// \code
///   auto [c, cancel] = ctx::with_timeout(request, 200ms);
///   std::future<int> price = std::async(std::launch::async, fetch_price, item);
///   int p = ctx::get(c, price);  // throws ctx::error after 200 ms
/// \endcode
template <class Clock, class T>
T get(const basic_context<Clock>& c, std::future<T>& f);

/// As the `std::future` overload, for a `std::shared_future`; returns what its get() returns.
template <class Clock, class T>
decltype(auto) get(const basic_context<Clock>& c, const std::shared_future<T>& f);

// ---------------------------------------------------------------------------
// Implementation.

namespace detail {

template <class Clock, class Future>
[[nodiscard]] std::error_code wait_future(const basic_context<Clock>& c, const Future& f) {
  if (c.done()) return c.err();
  if (!f.valid()) throw std::future_error(std::future_errc::no_state);
  for (;;) {
    switch (f.wait_for(future_poll_interval)) {
      case std::future_status::ready:
        return {};
      case std::future_status::deferred:
        f.wait();
        return {};
      case std::future_status::timeout:
        break;
    }
    if (c.done()) return c.err();
  }
}

}  // namespace detail

template <class Clock, class T>
std::error_code wait(const basic_context<Clock>& c, const std::future<T>& f) {
  return detail::wait_future(c, f);
}

template <class Clock, class T>
std::error_code wait(const basic_context<Clock>& c, const std::shared_future<T>& f) {
  return detail::wait_future(c, f);
}

template <class Clock, class T>
T get(const basic_context<Clock>& c, std::future<T>& f) {
  if (const std::error_code e = detail::wait_future(c, f)) throw error(e, c.cause());
  return f.get();
}

template <class Clock, class T>
decltype(auto) get(const basic_context<Clock>& c, const std::shared_future<T>& f) {
  if (const std::error_code e = detail::wait_future(c, f)) throw error(e, c.cause());
  return f.get();
}

}  // namespace ctx
