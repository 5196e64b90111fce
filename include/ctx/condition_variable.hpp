// SPDX-License-Identifier: MIT
// ctx::wait on condition variables: a predicate wait that also ends when the context is done.
//
// Thread safety: as for the standard waits. Any number of threads may wait
// on one condition variable under one context; the context may be cancelled,
// or its deadline may fire, from any thread at any time. A waiter checks
// `c.done()` while holding its mutex before every wait; the wake-up that the
// cancel triggers notifies the condition variable in a way that is ordered
// with that check (through the condition variable's internal mutex for
// `std::condition_variable_any`, through the waiter's own mutex for
// `std::condition_variable`), so a cancel is never lost: whatever happened
// before the cancel happens-before the wait returns.
#pragma once

#include <concepts>
#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <utility>

#include "context.hpp"

namespace ctx {

/// Waits on `cv` until `pred()` is true or `c` is done; returns `pred()`.
///
/// Like `cv.wait(lock, pred)`: `lock` must be locked on entry, is locked on
/// return, and `pred` is always evaluated with it held. The result is the
/// last `pred()`: true means the condition holds; false means `c` is done
/// (see `c.err()`: `errc::canceled`, or `errc::deadline_exceeded` when the
/// deadline fired) and the condition does not hold. The lock and the
/// condition variable stay usable either way.
///
/// If `c` is done on entry, returns `pred()` at once without touching `cv`.
/// Uses `std::condition_variable_any`'s `std::stop_token` overload with
/// `c.stop_token()`: the wake-up notifies through `cv`'s internal mutex, so a
/// context may be cancelled by a thread that holds `lock`'s mutex. Throws
/// what `pred` throws, and std::bad_alloc (stop state of `c`).
template <class Clock, class Lock, class Predicate>
requires std::predicate<Predicate&>
bool wait(const basic_context<Clock>& c, std::condition_variable_any& cv, Lock& lock, Predicate pred);

/// Waits on a `std::condition_variable` until `pred()` is true or `c` is done; returns `pred()`.
///
/// Same contract as the `std::condition_variable_any` overload: `lock` is
/// held on entry and on return, `pred` is evaluated with it held, and the
/// result is the last `pred()`. If `c` is done on entry, or `pred()` holds
/// on entry, returns at once without touching `cv`.
///
/// How the wake-up works: the wait registers an `after_func` callback on `c`
/// that locks `lock.mutex()` and then calls `cv.notify_all()`. Locking the
/// waiter's mutex is what makes the wake-up impossible to lose: the waiter
/// checks `c.done()` under that mutex before each `cv.wait`. The lock is
/// released while the callback is registered and again, briefly, when the
/// callback has run (to let it finish): like a spurious wake-up, so `pred`
/// is re-evaluated before returning.
///
/// **The rule:** never cancel `c` while holding `lock.mutex()`. The cancel
/// runs the wake-up on the cancelling thread, which then locks the mutex: a
/// thread that cancels (calls or destroys a cancel handle of `c` or of an
/// ancestor, or advances a `manual_clock` past its deadline) while holding
/// that mutex deadlocks against itself, and a cancel on another thread blocks
/// until the mutex is released. So change the shared state under the mutex,
/// unlock, then cancel. A deadline takes the mutex on the timer thread, so
/// do not hold the mutex for long stretches. If the rule does not fit, use
/// `std::condition_variable_any`, whose overload has no such rule.
/// Throws what `pred` throws, and std::bad_alloc (the registration); the
/// lock is held when it throws.
template <class Clock, class Predicate>
requires std::predicate<Predicate&>
bool wait(const basic_context<Clock>& c, std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
          Predicate pred);

// ---------------------------------------------------------------------------
// Implementation.

template <class Clock, class Lock, class Predicate>
requires std::predicate<Predicate&>
bool wait(const basic_context<Clock>& c, std::condition_variable_any& cv, Lock& lock, Predicate pred) {
  if (c.done()) return static_cast<bool>(pred());
  return cv.wait(lock, c.stop_token(), std::move(pred));
}

namespace detail {

/// The after_func callback: lock the waiter's mutex, then notify.
struct cv_waker {
  std::condition_variable* cv;
  std::mutex* m;
  void operator()() const {
    std::lock_guard guard(*m);
    cv->notify_all();
  }
};

/// Owns the waker's registration while the waiter holds its lock. Destroying
/// a registration waits for a callback running on another thread, and that
/// callback may be blocked on the waiter's mutex: so when the callback ran
/// or runs, the lock is dropped while the registration is destroyed.
class cv_waker_guard {
 public:
  cv_waker_guard(registration reg, std::unique_lock<std::mutex>& lock) noexcept
      : reg_(std::move(reg)), lock_(lock) {}
  cv_waker_guard(const cv_waker_guard&) = delete;
  cv_waker_guard& operator=(const cv_waker_guard&) = delete;
  ~cv_waker_guard() {
    if (armed_) release();
  }

  /// Deregisters; returns true if the lock was dropped (and taken again) meanwhile.
  bool release() {
    armed_ = false;
    if (reg_.stop()) return false;  // the callback never ran and now never will
    lock_.unlock();
    reg_ = registration{};  // waits for a callback still running elsewhere
    lock_.lock();
    return true;
  }

 private:
  registration reg_;
  std::unique_lock<std::mutex>& lock_;
  bool armed_ = true;
};

}  // namespace detail

template <class Clock, class Predicate>
requires std::predicate<Predicate&>
bool wait(const basic_context<Clock>& c, std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
          Predicate pred) {
  if (c.done()) return static_cast<bool>(pred());
  if (pred()) return true;
  // Register without holding the mutex: on a context that became done
  // meanwhile, after_func runs the waker at once, on this thread.
  lock.unlock();
  registration reg;
  try {
    reg = after_func(c, detail::cv_waker{&cv, lock.mutex()});
  } catch (...) {
    lock.lock();
    throw;
  }
  lock.lock();
  detail::cv_waker_guard guard(std::move(reg), lock);
  bool result;
  while (!(result = static_cast<bool>(pred())) && !c.done()) cv.wait(lock);
  if (guard.release()) result = static_cast<bool>(pred());
  return result;
}

}  // namespace ctx
