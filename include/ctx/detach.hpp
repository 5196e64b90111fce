// SPDX-License-Identifier: MIT
// ctx::detach: start work that must outlive the request, with the request's values and its own timeout.
//
// A handler that starts background work (an audit log write, a cache fill,
// a notification) must not hand it the request's context: the work would be
// cancelled when the response is sent. Nor should it start from
// `background()`: the work would lose the trace ID and other request values,
// and run without any bound. `detach` derives the right context,
// `with_timeout(without_cancel(c), timeout)`, and runs the work on a thread
// of its own, so the mistake cannot be made by accident.
//
// Thread safety: the context is derived on the calling thread before the new
// thread starts (so the timeout counts from the call, and everything the
// caller did before detach() happens-before the work starts). The work's
// context is independent of `c` from then on: cancelling `c` does not reach it.
#pragma once

#include <chrono>
#include <concepts>
#include <functional>
#include <thread>
#include <type_traits>
#include <utility>

#include "context.hpp"

namespace ctx {

/// The context for work that outlives the request `c`: keeps `c`'s values,
/// drops its cancellation and deadline, and ends `timeout` from now.
///
/// Equivalent to `with_timeout(without_cancel(c), timeout)`. Use it to hand
/// work to an executor of your own; `detach` below also starts a thread.
/// Throws as `with_timeout` does.
template <class Clock, class Rep, class Period>
[[nodiscard]] derived<Clock> detached_context(const basic_context<Clock>& c,
                                              std::chrono::duration<Rep, Period> timeout,
                                              source_location site = source_location::current());

/// Runs `f(d)` on a new, detached thread, where `d` is `detached_context(c, timeout)`.
///
/// `f` is decay-copied to the new thread and sees the request's values
/// (trace ID, user) but not its cancellation: it runs on after the request
/// ends, until it returns or `d` is done `timeout` after this call (a bound
/// the work must honour by passing `d` on to what it blocks in). Its
/// result, if any, is discarded: report errors from inside `f`. An
/// exception escaping `f` calls std::terminate, as for any std::thread.
/// `d` is cancelled (its timer freed) right after `f` returns.
///
/// The thread is detached: a program that must not exit while detached work
/// runs has to track that work itself (for instance with a counter that
/// `f` decrements). Throws std::system_error if the thread cannot be
/// started, std::bad_alloc, or what copying `f` throws; `f` does not run then.
///
/// Example:
/// \code
///   void handle(const ctx::context& request, const order& o) {
///     reply(request, place(request, o));
///     ctx::detach(request, 5s, [o](const ctx::context& c) { audit_log.write(c, o); });
///   }
/// \endcode
template <class Clock, class Rep, class Period, class F>
requires std::invocable < std::decay_t<F>
&, const basic_context<Clock>& > void detach(const basic_context<Clock>& c,
                                             std::chrono::duration<Rep, Period> timeout, F&& f,
                                             source_location site = source_location::current());

// ---------------------------------------------------------------------------
// Implementation.

namespace detail {

/// What the detached thread owns. The context is destroyed before `fn`, so
/// anything `fn` owns outlives the work's context.
template <class Clock, class F>
struct detached_work {
  F fn;
  derived<Clock> d;
  void operator()() {
    std::invoke(fn, std::as_const(d.context));
    d.cancel();  // frees the timer now rather than at the deadline
  }
};

}  // namespace detail

template <class Clock, class Rep, class Period>
derived<Clock> detached_context(const basic_context<Clock>& c, std::chrono::duration<Rep, Period> timeout,
                                source_location site) {
  return with_timeout(without_cancel(c, site), timeout, {}, site);
}

template <class Clock, class Rep, class Period, class F>
requires std::invocable < std::decay_t<F>
&, const basic_context<Clock>& > void detach(const basic_context<Clock>& c,
                                             std::chrono::duration<Rep, Period> timeout, F&& f,
                                             source_location site) {
  std::thread(detail::detached_work<Clock, std::decay_t<F>>{std::decay_t<F>(static_cast<F&&>(f)),
                                                            detached_context(c, timeout, site)})
      .detach();
}

}  // namespace ctx
