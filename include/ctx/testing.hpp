// SPDX-License-Identifier: MIT
// ctx::testing::manual_clock: a clock that moves only when a test moves it.
//
// Thread safety: now() may be called from any thread. advance() and set()
// are serialised with each other; the timers they make due fire on the
// calling thread, in deadline order, before the call returns, so everything
// those cancellations did (done(), callbacks, stop requests) happens-before
// the return. A deadline derived on another thread while the clock moves
// past it is never left pending: either the move fires it, or the
// derivation finds it overdue and fires it at once, on the deriving thread.
// A callback fired by advance() or set() may itself call advance() or set()
// on the same thread (it is not a deadlock): the inner call fires what its
// new time makes due before it returns. A move holds its lock while the
// callbacks it fires run, so a callback must not wait for a move on another
// thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>

#include "context.hpp"

namespace ctx::testing {

/// A steady clock with one global time per process, starting at its epoch,
/// that moves only through advance() and set(). Contexts on it
/// (`ctx::background<ctx::testing::manual_clock>()`) get deadlines that fire
/// exactly when a test moves the clock to or past them, on the test's thread,
/// so tests of deadline logic need no sleeps and no timer thread.
/// Satisfies Cpp17TrivialClock.
struct manual_clock {
  using rep = std::int64_t;
  using period = std::nano;
  using duration = std::chrono::duration<rep, period>;
  using time_point = std::chrono::time_point<manual_clock>;
  static constexpr bool is_steady = true;
  /// The clock trait that makes ctx fire this clock's deadlines on the thread
  /// that moves it (inside advance() and set()), and start no timer thread.
  /// Any clock may declare it; such a clock must then make every change of
  /// its time through `ctx::detail::timer_service<Clock>::instance().advance(move)`,
  /// where `move()` stores the new time and returns it, as advance() and set()
  /// below do; otherwise its deadlines never fire.
  static constexpr bool timers_fire_on_move = true;

  /// The current manual time.
  [[nodiscard]] static time_point now() noexcept {
    return time_point(duration(ticks().load(std::memory_order_acquire)));
  }

  /// Moves the clock forward by `d` and fires every timer now due, on this
  /// thread, before returning. Saturates at time_point::max(). Throws
  /// std::invalid_argument if `d` is negative (the clock is then unchanged).
  /// May be called from a callback that advance() or set() fired.
  static void advance(duration d) {
    if (d < duration::zero())
      throw std::invalid_argument("ctx::testing::manual_clock::advance: negative duration");
    detail::timer_service<manual_clock>::instance().advance([d] {
      const time_point t = detail::deadline_after(now(), d);
      ticks().store(t.time_since_epoch().count(), std::memory_order_release);
      return t;
    });
  }

  /// Sets the clock to `t` and fires every timer now due, as advance() does.
  /// Precondition t >= now(); throws std::invalid_argument otherwise (a
  /// steady clock never goes back).
  static void set(time_point t) {
    detail::timer_service<manual_clock>::instance().advance([t] {
      if (t < now()) throw std::invalid_argument("ctx::testing::manual_clock::set: time would go backwards");
      ticks().store(t.time_since_epoch().count(), std::memory_order_release);
      return t;
    });
  }

 private:
  static std::atomic<rep>& ticks() noexcept {
    static constinit std::atomic<rep> t{0};
    return t;
  }
};

}  // namespace ctx::testing
