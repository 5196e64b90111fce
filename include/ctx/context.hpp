// SPDX-License-Identifier: MIT
// ctx::basic_context, its derivations, the cancel handle and after_func.
//
// Thread safety: every member of basic_context is const and may be called
// from any number of threads at once; so may the derivations, on the same
// parent. A context is a reference-counted handle: copies share one node.
// Cancellation publishes err() and cause() before done() turns true (one
// release store, read with acquire), so a thread that sees done() sees the
// final err() and cause(). When any cancel returns, also one that lost a race
// with a concurrent cancel, the context and every descendant report done().
// The thread that won runs the stop requests and after_func callbacks of the
// contexts it cancelled before its own cancel returns; a cancel that lost the
// race does not wait for them (it cannot, without risking a deadlock when a
// callback cancels an ancestor).
//
// Layout: the public API, declared and documented, comes first; its
// definitions and the internals they use follow the "Implementation" line.
#pragma once

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <optional>
#include <ratio>
#include <stop_token>
#include <system_error>
#include <type_traits>
#include <utility>

#include "detail/after_func.hpp"
#include "detail/inspect_registry.hpp"
#include "detail/node.hpp"
#include "detail/time_arith.hpp"
#include "detail/timer_service.hpp"
#include "error.hpp"
#include "key.hpp"

namespace ctx {

template <class Clock = std::chrono::steady_clock>
class basic_context;

/// A context on `std::chrono::steady_clock`: what almost every program uses.
using context = basic_context<>;

class cancel_handle;
class registration;

namespace detail {
struct access;
}

/// A cheap, immutable, thread-safe handle to one unit of work's lifetime.
///
/// Pass it by `const&` as the first parameter of every call that may block.
/// It tells whether the work is over (`done()`, `err()`, `cause()`), by when
/// it must be over (`deadline()`, `remaining()`), carries request-scoped
/// values (`value()`), and plugs into the standard library's cancellation
/// through `stop_token()`. New contexts are derived from it with
/// `with_cancel`, `with_timeout`, `with_deadline`, `with_stop_token`,
/// `with_value` and `without_cancel`.
///
/// A context is one pointer wide: copying it is one relaxed atomic increment
/// (none for `background()`); moving it is free and leaves `background()`
/// behind. A default-constructed context is `background()`: never done, no
/// deadline, no values.
template <class Clock>
class basic_context {
 public:
  using clock = Clock;
  using time_point = typename Clock::time_point;
  using duration = typename Clock::duration;

  /// Same as `background()`.
  basic_context() noexcept;
  basic_context(const basic_context& other) noexcept;
  basic_context(basic_context&& other) noexcept;
  basic_context& operator=(const basic_context& other) noexcept;
  basic_context& operator=(basic_context&& other) noexcept;
  ~basic_context();

  /// True once the context is cancelled or its deadline passed. One atomic
  /// load (acquire): no lock, no clock read. Never turns false again.
  [[nodiscard]] bool done() const noexcept;

  /// `{}` while live; then `errc::canceled` or `errc::deadline_exceeded`, forever.
  [[nodiscard]] std::error_code err() const noexcept;

  /// `{}` while live; then the cause given to the cancel that won (the
  /// handle's argument, or the deadline's), falling back to `err()` when none
  /// was given. Stable once done.
  [[nodiscard]] std::error_code cause() const noexcept;

  /// The effective deadline: the earliest of this context's and its
  /// ancestors' (up to the nearest `without_cancel`); empty if none.
  [[nodiscard]] std::optional<time_point> deadline() const noexcept;

  /// Time left until the deadline: `duration::max()` without one, zero once
  /// it has passed (even before the timer marks the context done). Reads the clock.
  [[nodiscard]] duration remaining() const noexcept;

  /// A `std::stop_token` on which stop is requested when this context is
  /// done, before the cancel that did it returns. For a context that can
  /// never be done (`background()`, `without_cancel`) the token has
  /// `stop_possible() == false`. The first call on a context allocates its
  /// stop state (as Go makes its Done channel lazily); later calls share it.
  /// Throws `std::bad_alloc` if that allocation fails.
  [[nodiscard]] std::stop_token stop_token() const;

  /// The value stored under `k` by the nearest `with_value` on the chain, or
  /// nullptr. A miss usually costs one bit test. The pointer stays valid as
  /// long as any context derived from that `with_value` lives.
  template <class T>
  [[nodiscard]] const T* value(const key<T>& k) const noexcept;

  /// Throws `ctx::error` (code() == err(), with cause()) if the context is done.
  void throw_if_done() const;

  /// Blocks the calling thread until the context is done. On a context that
  /// can never be done this blocks forever, as Go's `<-ctx.Done()` does.
  void wait() const noexcept;

 private:
  friend struct detail::access;
  explicit basic_context(detail::node* adopted) noexcept;
  detail::node* n_;
};

/// The never-done root context.
template <class Clock = std::chrono::steady_clock>
[[nodiscard]] basic_context<Clock> background() noexcept;

/// Same as `background()`, but says "the right context is not wired here
/// yet" (and prints as `todo`).
template <class Clock = std::chrono::steady_clock>
[[nodiscard]] basic_context<Clock> todo() noexcept;

/// Cancels a derived context: the one type for every derivation and clock.
///
/// Move-only. Calling it cancels the context with `errc::canceled` (and the
/// given cause); destroying it does the same, so a handle going out of scope
/// replaces Go's `defer cancel()`. Calling it again, from any number of
/// threads, changes nothing: the first cancel wins. When a call returns, the
/// context and all its descendants are done. A moved-from or
/// default-constructed handle does nothing. The handle keeps the context's
/// state alive, so it may be called after every copy of the context is gone;
/// a callback that a call runs may destroy the handle itself, its
/// registration and every context (the call holds what it still needs).
class cancel_handle {
 public:
  cancel_handle() noexcept = default;
  cancel_handle(cancel_handle&& other) noexcept;
  cancel_handle& operator=(cancel_handle&& other) noexcept;
  ~cancel_handle();

  /// Cancels with `errc::canceled`; cause() reports `errc::canceled` too.
  void operator()() const noexcept;

  /// Cancels with `errc::canceled` and records `cause` (an empty cause means canceled).
  void operator()(std::error_code cause) const noexcept;

  /// False for a moved-from or default-constructed handle.
  [[nodiscard]] explicit operator bool() const noexcept;

 private:
  friend struct detail::access;
  explicit cancel_handle(detail::cancel_node* adopted) noexcept;
  void reset() noexcept;
  detail::cancel_node* n_ = nullptr;
};

/// What every cancelable derivation returns: `auto [c, cancel] = ctx::with_cancel(parent);`
template <class Clock = std::chrono::steady_clock>
struct derived {
  basic_context<Clock> context;
  cancel_handle cancel;
};

/// A child that is done when `parent` is, or when the handle cancels it.
/// A child of a done parent is born done with the parent's err and cause.
/// Allocates one node; throws std::bad_alloc.
/// `site` is where the context is made, recorded when inspection is on
/// (<ctx/inspect.hpp>); leave it defaulted.
template <class Clock>
[[nodiscard]] derived<Clock> with_cancel(const basic_context<Clock>& parent,
                                         source_location site = source_location::current());

/// A child that is also done, with `errc::deadline_exceeded`, at `d`.
///
/// The effective deadline is min(parent's, d): when the parent's is earlier
/// or equal, no timer is made and `cause` is unused. A deadline now or in the
/// past makes the child born done with `deadline_exceeded`. `cause` becomes
/// cause() only if this deadline is what ends the context. `d` may have any
/// duration type, integral or floating-point; it is rounded up to the
/// clock's tick (a deadline never fires early) and saturates at
/// `time_point::min()` and `time_point::max()` (which never fires); a NaN
/// deadline is already passed. `d` must be a time point of the context's own
/// clock (see the overload below). Throws std::bad_alloc, or
/// std::system_error if the timer thread cannot be started.
/// `site` is where the context is made, recorded when inspection is on
/// (<ctx/inspect.hpp>); leave it defaulted.
template <class Clock, class Duration>
[[nodiscard]] derived<Clock> with_deadline(const basic_context<Clock>& parent,
                                           std::chrono::time_point<Clock, Duration> d,
                                           std::error_code cause = {},
                                           source_location site = source_location::current());

/// Rejected at compile time: a deadline on another clock than the context's.
/// Clocks need not tick together (system_clock jumps, steady_clock does not),
/// so ctx does not convert silently; the static_assert says how to do it.
template <class Clock, class OtherClock, class Duration>
requires(!std::same_as<Clock, OtherClock>) derived<Clock> with_deadline(
    const basic_context<Clock>&, std::chrono::time_point<OtherClock, Duration>, std::error_code = {},
    source_location = source_location::current());

/// `with_deadline(parent, Clock::now() + t, cause)`, saturating: `t <= 0`
/// (and NaN) is already expired, `t` is rounded up to the clock's tick (so a
/// floating-point `1.5ns` waits 2 ns, and a positive `t` never expires at
/// once), and `duration::max()` or +infinity of any type never overflows:
/// it never fires.
/// `site` is where the context is made, recorded when inspection is on
/// (<ctx/inspect.hpp>); leave it defaulted.
template <class Clock, class Rep, class Period>
[[nodiscard]] derived<Clock> with_timeout(const basic_context<Clock>& parent,
                                          std::chrono::duration<Rep, Period> t, std::error_code cause = {},
                                          source_location site = source_location::current());

/// A child that is also done (with `errc::canceled`) when stop is requested
/// on `token`. If stop was requested already, the child is born done.
/// Throws std::bad_alloc.
/// `site` is where the context is made, recorded when inspection is on
/// (<ctx/inspect.hpp>); leave it defaulted.
template <class Clock>
[[nodiscard]] derived<Clock> with_stop_token(const basic_context<Clock>& parent, std::stop_token token,
                                             source_location site = source_location::current());

/// A child that carries `value` under `k`, and everything else of `parent`.
/// Lookups find the nearest value for a key. Throws what T's constructor throws, or std::bad_alloc.
/// `site` is where the context is made, recorded when inspection is on
/// (<ctx/inspect.hpp>); leave it defaulted.
template <class Clock, class T, class U>
requires std::constructible_from<T, U&&>
[[nodiscard]] basic_context<Clock> with_value(const basic_context<Clock>& parent, const key<T>& k, U&& value,
                                              source_location site = source_location::current());

/// A child that keeps `parent`'s values but is never done and has no
/// deadline: for work that must outlive the request (give it its own timeout).
/// Throws std::bad_alloc.
/// `site` is where the context is made, recorded when inspection is on
/// (<ctx/inspect.hpp>); leave it defaulted.
template <class Clock>
[[nodiscard]] basic_context<Clock> without_cancel(const basic_context<Clock>& parent,
                                                  source_location site = source_location::current());

/// An `after_func` registration: move-only; destroying it deregisters.
///
/// Destroying it while the callback runs on another thread waits for the
/// callback to return (std::stop_callback's rule); destroying it from inside
/// the callback does not wait. The callable is destroyed with the registration.
class registration {
 public:
  registration() noexcept = default;
  registration(registration&& other) noexcept;
  registration& operator=(registration&& other) noexcept;
  ~registration();

  /// Prevents the callback from running. True iff this call prevented it:
  /// false if it already ran or is running, or if stop() already returned
  /// true. Never waits for a running callback.
  bool stop() noexcept;

 private:
  friend struct detail::access;
  explicit registration(detail::callback_rec* rec) noexcept;
  void reset() noexcept;
  detail::callback_rec* rec_ = nullptr;
};

/// Arranges for `f()` to run once when `c` is done.
///
/// `f` runs on the thread that cancels (the timer thread for a deadline),
/// inline, like a `std::stop_callback`; if `c` is done already it runs at once
/// on this thread, before after_func returns. So `f` must only wake someone
/// (notify a condition variable, signal an eventfd, set a flag): a slow `f`
/// delays every deadline in the process. `f` may cancel or derive contexts.
/// `f` must not throw: if it does, std::terminate is called. Callbacks on one
/// context run in no specified order. On a context that can never be done,
/// `f` never runs.
///
/// Keep the returned registration: destroying it deregisters `f`.
/// Throws std::bad_alloc (f is then not registered).
template <class Clock, class F>
requires std::invocable < std::decay_t<F>
& > [[nodiscard]] registration after_func(const basic_context<Clock>& c, F&& f);

// ---------------------------------------------------------------------------
// Implementation. Nothing below is part of the contract.

namespace detail {

struct access {
  template <class Clock>
  static node* of(const basic_context<Clock>& c) noexcept {
    return c.n_;
  }
  template <class Clock>
  static basic_context<Clock> adopt(node* n) noexcept {
    return basic_context<Clock>(n);
  }
  static registration make_registration(callback_rec* rec) noexcept { return registration(rec); }
  /// A new derived context: `n` starts with references for the context and the handle.
  template <class Clock>
  static derived<Clock> make_derived(cancel_node* n) noexcept {
    n->refs.store(2, std::memory_order_relaxed);
    return {basic_context<Clock>(n), cancel_handle(n)};
  }
};

/// `now`, when given, is a clock reading taken just before `when` was
/// computed (with_timeout's), so the born-done check needs no second read.
template <class Clock, bool Tracked>
derived<Clock> derive_deadline_as(const basic_context<Clock>& parent, typename Clock::time_point when,
                                  const std::error_code& cause, inspect::kind k, source_location site,
                                  const typename Clock::time_point* now) {
  node* p = access::of(parent);
  insp::record* rec = nullptr;
  if (p->deadline_holder && static_cast<const deadline_node<Clock>*>(p->deadline_holder)->when <= when) {
    auto* n = new plain_cancel_node(node_kind::inherited_deadline, p, p->deadline_holder);
    if constexpr (Tracked) rec = insp::begin(n, p, k, site, &insp::clock_ops_of<Clock>);
    acquire(p);
    auto result = access::make_derived<Clock>(n);
    link_to_parent(n);
    if constexpr (Tracked) insp::finish(rec);
    return result;
  }
  auto* n = new deadline_node<Clock>(p, when);
  if constexpr (Tracked) rec = insp::begin(n, p, k, site, &insp::clock_ops_of<Clock>);
  acquire(p);
  n->cause_ = cause;  // recorded as the cause only if the deadline fires
  auto result = access::make_derived<Clock>(n);
  if (!link_to_parent(n)) {  // born done: the parent's err and cause
    if constexpr (Tracked) insp::finish(rec);
    return result;
  }
  if (when <= (now ? *now : Clock::now())) {
    cancel(n, errc::deadline_exceeded, nullptr);
  } else if (when != Clock::time_point::max()) {
    {
      tiny_lock lock(n->mtx);
      if (!(n->state.load(std::memory_order_relaxed) & st_done))
        timer_service<Clock>::instance().schedule(n);  // on throw, `result` cancels and frees n
    }
    // A manual clock moved past `when` by another thread between the reading
    // above and the insertion found no timer to fire. Either that move's
    // search of the heap came after the insertion (both hold the service's
    // mutex) and fires it, or the move's new time is visible here: then the
    // timer is overdue and fires now, at insertion.
    if constexpr (manual_timers<Clock>)
      if (when <= Clock::now()) cancel(n, errc::deadline_exceeded, nullptr);
  }
  if constexpr (Tracked) insp::finish(rec);
  return result;
}

/// Derivations are written once, instantiated twice: untracked (inspection
/// off, the hot path, which pays only insp::wanted's two loads) and tracked.
template <class Clock>
derived<Clock> derive_deadline(const basic_context<Clock>& parent, typename Clock::time_point when,
                               const std::error_code& cause, inspect::kind k, source_location site,
                               const typename Clock::time_point* now = nullptr) {
  if (insp::wanted(access::of(parent))) [[unlikely]]
    return derive_deadline_as<Clock, true>(parent, when, cause, k, site, now);
  return derive_deadline_as<Clock, false>(parent, when, cause, k, site, now);
}

template <class Clock, bool Tracked>
derived<Clock> derive_cancel(node* p, source_location site) {
  auto* n = new plain_cancel_node(node_kind::cancel, p, p->deadline_holder);
  insp::record* rec = nullptr;
  if constexpr (Tracked)
    rec = insp::begin(n, p, inspect::kind::with_cancel, site, &insp::clock_ops_of<Clock>);
  acquire(p);
  auto result = access::make_derived<Clock>(n);
  link_to_parent(n);
  if constexpr (Tracked) insp::finish(rec);
  return result;
}

template <class Clock, bool Tracked>
derived<Clock> derive_stop_token(node* p, std::stop_token& token, source_location site) {
  auto* n = new stop_token_node(p);
  insp::record* rec = nullptr;
  if constexpr (Tracked)
    rec = insp::begin(n, p, inspect::kind::with_stop_token, site, &insp::clock_ops_of<Clock>);
  acquire(p);
  auto result = access::make_derived<Clock>(n);
  if (link_to_parent(n) && token.stop_possible())
    n->reg.emplace(std::move(token), stop_token_node::on_stop{n});
  if constexpr (Tracked) insp::finish(rec);
  return result;
}

template <class Clock, bool Tracked, class T, class U>
basic_context<Clock> derive_value(node* p, const key<T>& k, U&& value, source_location site) {
  auto* n = new value_node<T>(p, &k, k.name(), static_cast<U&&>(value));
  if constexpr (Tracked)
    insp::finish(insp::begin(n, p, inspect::kind::with_value, site, &insp::clock_ops_of<Clock>));
  acquire(p);
  return access::adopt<Clock>(n);
}

template <class Clock, bool Tracked>
basic_context<Clock> derive_without_cancel(node* p, source_location site) {
  auto* n = new without_cancel_node(p);
  if constexpr (Tracked)
    insp::finish(insp::begin(n, p, inspect::kind::without_cancel, site, &insp::clock_ops_of<Clock>));
  acquire(p);
  return access::adopt<Clock>(n);
}

}  // namespace detail

// basic_context

template <class Clock>
inline basic_context<Clock>::basic_context() noexcept : n_(&detail::background_node) {}
template <class Clock>
inline basic_context<Clock>::basic_context(const basic_context& other) noexcept : n_(other.n_) {
  detail::acquire(n_);
}
template <class Clock>
inline basic_context<Clock>::basic_context(basic_context&& other) noexcept
    : n_(std::exchange(other.n_, &detail::background_node)) {}
template <class Clock>
inline basic_context<Clock>& basic_context<Clock>::operator=(const basic_context& other) noexcept {
  detail::acquire(other.n_);
  detail::release(std::exchange(n_, other.n_));
  return *this;
}
template <class Clock>
inline basic_context<Clock>& basic_context<Clock>::operator=(basic_context&& other) noexcept {
  if (this != &other) detail::release(std::exchange(n_, std::exchange(other.n_, &detail::background_node)));
  return *this;
}
template <class Clock>
inline basic_context<Clock>::~basic_context() {
  detail::release(n_);
}
template <class Clock>
inline basic_context<Clock>::basic_context(detail::node* adopted) noexcept : n_(adopted) {}

template <class Clock>
inline bool basic_context<Clock>::done() const noexcept {
  const detail::cancel_node* c = n_->nearest_cancelable;
  return c && (c->state.load(std::memory_order_acquire) & detail::st_done);
}

template <class Clock>
inline std::error_code basic_context<Clock>::err() const noexcept {
  const detail::cancel_node* c = n_->nearest_cancelable;
  if (!c) return detail::no_error();
  return detail::err_of_state(c->state.load(std::memory_order_acquire));
}

template <class Clock>
inline std::error_code basic_context<Clock>::cause() const noexcept {
  const detail::cancel_node* c = n_->nearest_cancelable;
  if (!c) return detail::no_error();
  const std::uint32_t s = c->state.load(std::memory_order_acquire);
  if (!(s & detail::st_done)) return detail::no_error();
  return c->cause_ ? c->cause_ : detail::err_of_state(s);
}

template <class Clock>
inline auto basic_context<Clock>::deadline() const noexcept -> std::optional<time_point> {
  if (!n_->deadline_holder) return std::nullopt;
  return static_cast<const detail::deadline_node<Clock>*>(n_->deadline_holder)->when;
}

template <class Clock>
inline auto basic_context<Clock>::remaining() const noexcept -> duration {
  if (!n_->deadline_holder) return duration::max();
  return detail::time_until(static_cast<const detail::deadline_node<Clock>*>(n_->deadline_holder)->when,
                            Clock::now());
}

template <class Clock>
inline std::stop_token basic_context<Clock>::stop_token() const {
  detail::cancel_node* c = n_->nearest_cancelable;
  if (!c) return {};
  detail::tiny_lock lock(c->mtx);
  if (!c->stop_source_.stop_possible()) {
    c->stop_source_ = std::stop_source();  // no callbacks on it yet: requesting stop runs no user code
    if (detail::claim_locked(c) & detail::st_done) c->stop_source_.request_stop();
  }
  return c->stop_source_.get_token();
}

template <class Clock>
template <class T>
inline const T* basic_context<Clock>::value(const key<T>& k) const noexcept {
  if (!(n_->key_bloom & detail::key_bit(&k))) return nullptr;
  for (const detail::node* n = n_; n; n = n->parent)
    if (n->kind == detail::node_kind::value && static_cast<const detail::value_node_base*>(n)->key == &k)
      return &static_cast<const detail::value_node<T>*>(n)->value;
  return nullptr;
}

template <class Clock>
inline void basic_context<Clock>::throw_if_done() const {
  if (const std::error_code e = err()) throw error(e, cause());
}

template <class Clock>
inline void basic_context<Clock>::wait() const noexcept {
  detail::cancel_node* c = n_->nearest_cancelable;
  if (!c) {
    static std::atomic<std::uint32_t> never{0};
    for (;;) never.wait(0);
  }
  detail::wait_state(c, detail::st_done);
}

template <class Clock>
basic_context<Clock> background() noexcept {
  return {};
}

template <class Clock>
basic_context<Clock> todo() noexcept {
  return detail::access::adopt<Clock>(&detail::todo_node);
}

// cancel_handle

inline cancel_handle::cancel_handle(cancel_handle&& other) noexcept : n_(std::exchange(other.n_, nullptr)) {}
inline cancel_handle& cancel_handle::operator=(cancel_handle&& other) noexcept {
  if (this != &other) {
    reset();
    n_ = std::exchange(other.n_, nullptr);
  }
  return *this;
}
inline cancel_handle::~cancel_handle() { reset(); }
inline cancel_handle::cancel_handle(detail::cancel_node* adopted) noexcept : n_(adopted) {}

inline void cancel_handle::operator()() const noexcept {
  if (n_) detail::cancel(n_, errc::canceled, &detail::no_error());
}

inline void cancel_handle::operator()(std::error_code cause) const noexcept {
  if (n_) detail::cancel(n_, errc::canceled, &cause);
}

inline cancel_handle::operator bool() const noexcept { return n_ != nullptr; }

inline void cancel_handle::reset() noexcept {
  if (detail::cancel_node* n = std::exchange(n_, nullptr)) {
    if (n->insp.load(std::memory_order_relaxed)) [[unlikely]]
      detail::insp::note_handle_dropped(n);
    detail::cancel(n, errc::canceled, &detail::no_error());
    detail::release(n);
  }
}

// The derivations

template <class Clock>
derived<Clock> with_cancel(const basic_context<Clock>& parent, source_location site) {
  detail::node* p = detail::access::of(parent);
  if (detail::insp::wanted(p)) [[unlikely]]
    return detail::derive_cancel<Clock, true>(p, site);
  return detail::derive_cancel<Clock, false>(p, site);
}

template <class Clock, class Duration>
derived<Clock> with_deadline(const basic_context<Clock>& parent, std::chrono::time_point<Clock, Duration> d,
                             std::error_code cause, source_location site) {
  return detail::derive_deadline(parent, detail::ceil_time_point<typename Clock::time_point>(d), cause,
                                 inspect::kind::with_deadline, site);
}

template <class Clock, class OtherClock, class Duration>
requires(!std::same_as<Clock, OtherClock>) derived<Clock> with_deadline(
    const basic_context<Clock>&, std::chrono::time_point<OtherClock, Duration>, std::error_code,
    source_location) {
  static_assert(std::same_as<Clock, OtherClock>,
                "ctx::with_deadline: the deadline is a time point of another clock than the context's. "
                "Convert it to the context's clock first (for a duration from now: "
                "ctx::with_timeout(c, d - OtherClock::now()); between system_clock and utc/file clocks: "
                "std::chrono::clock_cast), or derive from a context of that clock "
                "(ctx::background<OtherClock>()).");
  return {};
}

template <class Clock, class Rep, class Period>
derived<Clock> with_timeout(const basic_context<Clock>& parent, std::chrono::duration<Rep, Period> t,
                            std::error_code cause, source_location site) {
  const typename Clock::time_point now = Clock::now();
  return detail::derive_deadline(parent, detail::deadline_after(now, t), cause, inspect::kind::with_timeout,
                                 site, &now);
}

template <class Clock>
derived<Clock> with_stop_token(const basic_context<Clock>& parent, std::stop_token token,
                               source_location site) {
  detail::node* p = detail::access::of(parent);
  if (detail::insp::wanted(p)) [[unlikely]]
    return detail::derive_stop_token<Clock, true>(p, token, site);
  return detail::derive_stop_token<Clock, false>(p, token, site);
}

template <class Clock, class T, class U>
requires std::constructible_from<T, U&&> basic_context<Clock> with_value(const basic_context<Clock>& parent,
                                                                         const key<T>& k, U&& value,
                                                                         source_location site) {
  detail::node* p = detail::access::of(parent);
  if (detail::insp::wanted(p)) [[unlikely]]
    return detail::derive_value<Clock, true>(p, k, static_cast<U&&>(value), site);
  return detail::derive_value<Clock, false>(p, k, static_cast<U&&>(value), site);
}

template <class Clock>
basic_context<Clock> without_cancel(const basic_context<Clock>& parent, source_location site) {
  detail::node* p = detail::access::of(parent);
  if (detail::insp::wanted(p)) [[unlikely]]
    return detail::derive_without_cancel<Clock, true>(p, site);
  return detail::derive_without_cancel<Clock, false>(p, site);
}

// after_func and registration

template <class Clock, class F>
requires std::invocable < std::decay_t<F>
& > registration after_func(const basic_context<Clock>& c, F&& f) {
  auto* rec = new detail::callback_impl<std::decay_t<F>>(static_cast<F&&>(f));
  registration reg = detail::access::make_registration(rec);
  if (detail::cancel_node* owner = detail::access::of(c)->nearest_cancelable)
    detail::add_callback(owner, rec);
  return reg;  // with no cancelable node the context is never done: f never runs
}

inline registration::registration(registration&& other) noexcept : rec_(std::exchange(other.rec_, nullptr)) {}
inline registration& registration::operator=(registration&& other) noexcept {
  if (this != &other) {
    reset();
    rec_ = std::exchange(other.rec_, nullptr);
  }
  return *this;
}
inline registration::~registration() { reset(); }
inline registration::registration(detail::callback_rec* rec) noexcept : rec_(rec) {}

inline bool registration::stop() noexcept { return rec_ && detail::prevent_callback(rec_); }

inline void registration::reset() noexcept {
  if (detail::callback_rec* rec = std::exchange(rec_, nullptr)) detail::destroy_callback(rec);
}

}  // namespace ctx
