// SPDX-License-Identifier: MIT
// The timer service: one per clock type, each a binary heap and one timer
// thread, started by the clock's first pending deadline (none for a clock
// whose timers fire on move, see manual_timers).
//
// Thread safety: the heap and every node's heap index are guarded by the
// service's mutex. The timer thread never holds that mutex while it cancels a
// node, so cancellation (which removes timers) cannot deadlock with it.
// schedule() wakes the thread only when the new deadline is earlier than the
// one it sleeps until (wake_at_, guarded by the mutex); removing a timer never
// wakes it, so it may wake for a removed timer and simply sleep again.
// Nodes are scheduled while their own mutex is held (see derive_deadline in
// context.hpp),
// so a node is never scheduled after it was marked done; the cancel algorithm
// removes the timer of every deadline node it marks (node_ops::on_cancel).
//
// fork(): fork() never waits for the timer thread, nor for any callback
// (which may itself wait for a lock the forking thread holds). The service's
// own mutex, held only by the short library code that edits the heap (never
// while user code runs), is taken across fork() by a pthread_atfork handler
// so that the child inherits a consistent heap, which it then empties:
// deadlines inherited from the parent never fire in the child. The child has
// no timer thread; its first deadline starts one, which fires the child's own
// deadlines only and so never touches a context the parent's threads may
// have left locked or half cancelled at the fork. An inherited context can
// still be cancelled in the child (its timer is simply gone). The service is
// made before main() (see instance()), so a fork() can never find another
// thread inside its construction.
#pragma once

#include <pthread.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

#include "node.hpp"
#include "time_arith.hpp"

namespace ctx::detail {

/// True for a clock that declares `static constexpr bool timers_fire_on_move
/// = true;` (as ctx::testing::manual_clock does): its deadlines fire on the
/// thread that moves the clock, inside timer_service<Clock>::advance(), and
/// never on a timer thread (none is started for it). Such a clock must make
/// every change of its time through advance() (see manual_clock::advance and
/// manual_clock::set), or its deadlines never fire. Any other clock, and a
/// clock that declares the member false, gets the timer thread.
template <class Clock>
inline constexpr bool manual_timers = requires {
  requires Clock::timers_fire_on_move;
};

template <class Clock>
class timer_service;

/// A cancel node with its own, earlier deadline.
template <class Clock>
struct deadline_node final : cancel_node, cached_node<deadline_node<Clock>> {
  using time_point = typename Clock::time_point;
  static constexpr std::uint32_t no_slot = UINT32_MAX;

  static void destroy(node* n) noexcept {
    auto* d = static_cast<deadline_node*>(n);
    retire(d);
    delete d;
  }
  static void on_cancel(cancel_node* n) noexcept {
    timer_service<Clock>::instance().remove(static_cast<deadline_node*>(n));
  }
  static constexpr node_ops ops_{&destroy, &on_cancel};

  deadline_node(node* p, time_point w) noexcept : cancel_node(node_kind::deadline, &ops_, p, this), when(w) {}

  time_point when;
  std::uint32_t slot = no_slot;  // index in the heap; guarded by the service's mutex
};

template <class Clock>
class timer_service {
 public:
  using time_point = typename Clock::time_point;
  using timed_node = deadline_node<Clock>;

  /// The process-wide service. It is never destroyed, so timers still pending
  /// at exit, and a timer thread still running then, stay safe. It is made
  /// before main() (by `made_before_main_`), so no thread can be inside this
  /// function-local static's initialisation when another one calls fork():
  /// the child would wait for that initialisation for ever.
  [[nodiscard]] static timer_service& instance() {
    static timer_service* const s = new timer_service;  // intentionally immortal
    static_cast<void>(&made_before_main_);              // odr-use: instantiates it
    return *s;
  }

  /// Adds n's timer. Precondition: n->mtx held, n not done, n not scheduled.
  void schedule(timed_node* n) {
    std::unique_lock lock(mu_);
    if constexpr (!manual_timers<Clock>) {
      if (!started_) {
        std::thread(&timer_service::run, this).detach();  // may throw std::system_error
        started_ = true;
      }
    }
    heap_.push_back({n->when, n});  // may throw std::bad_alloc; nothing changed then
    n->slot = static_cast<std::uint32_t>(heap_.size() - 1);
    sift_up(n->slot);
    // Wake the timer thread only if it would sleep past this deadline. A
    // timeout that is cancelled before it fires, the common case, then costs
    // no futex wake and no context switch; the thread recomputes wake_at_.
    if (!manual_timers<Clock> && n->when < wake_at_) {
      wake_at_ = n->when;
      cv_.notify_one();
    }
  }

  /// Removes n's timer if it is pending; frees its slot at once.
  void remove(timed_node* n) noexcept {
    std::lock_guard lock(mu_);
    const std::uint32_t i = n->slot;
    if (i == timed_node::no_slot) return;
    n->slot = timed_node::no_slot;
    const std::uint32_t last = static_cast<std::uint32_t>(heap_.size() - 1);
    if (i != last) {
      heap_[i] = heap_[last];
      heap_[i].n->slot = i;
      heap_.pop_back();
      if (i > 0 && heap_[i].when < heap_[(i - 1) / 2].when)
        sift_up(i);
      else
        sift_down(i);
    } else {
      heap_.pop_back();
    }
    // Give the memory of a burst back, without reallocating on every small swing.
    if (heap_.capacity() > 4096 && heap_.size() < heap_.capacity() / 8) heap_.shrink_to_fit();
  }

  /// Moves a manual clock and fires, on the calling thread and in deadline
  /// order, every timer due at the new time: `move()` stores the new time and
  /// returns it. Serialised with every other move (so that a timer due when
  /// one returns has fired), and re-entrant: a callback that a move fires
  /// may move the clock again; the inner move fires what its new time makes
  /// due before it returns, and the outer one then finds nothing left.
  template <class Move>
  void advance(Move&& move) {
    static_assert(manual_timers<Clock>);
    struct hold {
      timer_service& s;
      explicit hold(timer_service& service) : s(service) {
        s.advance_mu_.lock();
        if (s.advance_depth_++ == 0) s.advance_owner_ = std::this_thread::get_id();
      }
      ~hold() {
        if (--s.advance_depth_ == 0) s.advance_owner_ = std::thread::id();
        s.advance_mu_.unlock();
      }
      hold(const hold&) = delete;
      hold& operator=(const hold&) = delete;
    } lock(*this);
    const time_point now = move();
    while (timed_node* n = pop_due(now)) fire_one(n);
  }

  /// Number of pending timers (for tests and benchmarks).
  [[nodiscard]] std::size_t pending() {
    std::lock_guard lock(mu_);
    return heap_.size();
  }

  /// For tests: how many times the timer thread went to sleep, and until
  /// when it went to sleep the last time (time_point::max(): for work).
  struct sleep_record {
    std::uint64_t count = 0;
    time_point until = time_point::max();
  };
  [[nodiscard]] sleep_record last_sleep() {
    std::lock_guard lock(mu_);
    return slept_;
  }

 private:
  struct entry {
    time_point when;
    timed_node* n;
  };

  timer_service() { ::pthread_atfork(&prepare_fork, &after_fork_in_parent, &after_fork_in_child); }

  // fork(): see the file comment. prepare_fork waits only for a thread inside
  // one of the service's short critical sections, which run no user code.
  static void prepare_fork() noexcept { instance().mu_.lock(); }
  static void after_fork_in_parent() noexcept { instance().mu_.unlock(); }
  static void after_fork_in_child() noexcept {
    timer_service& s = instance();
    // Inherited deadlines never fire here: forget them. Their nodes are alive
    // (a node leaves the heap before it can be freed), so their slots can be
    // reset, and cancelling one in the child finds no timer to remove.
    for (const entry& e : s.heap_) e.n->slot = timed_node::no_slot;
    s.heap_.clear();
    s.wake_at_ = time_point::max();
    s.started_ = false;  // the timer thread did not survive the fork
    // Threads waiting on it in the parent do not exist here; a thread
    // inside a move of a manual clock may have held the advance lock.
    new (&s.cv_) std::condition_variable();
    if constexpr (manual_timers<Clock>) {
      // The advance lock gets a fresh mutex in every case: a recursive mutex
      // records its owner's kernel thread id, which the forking thread does
      // not keep in the child, so even its own unlock would fail there. If
      // the forking thread was inside moves (a fork() from a callback that a
      // move fired), it takes the fresh mutex as many times, so that its way
      // out of those moves unlocks it. Any other state (another thread
      // inside a move, or between its lock and its bookkeeping) leaves the
      // fresh mutex unlocked.
      const bool mine = s.advance_owner_ == std::this_thread::get_id();
      const int depth = mine ? s.advance_depth_ : 0;
      new (&s.advance_mu_) std::recursive_mutex();
      for (int i = 0; i < depth; ++i) s.advance_mu_.lock();
      s.advance_depth_ = depth;
      if (!mine) s.advance_owner_ = std::thread::id();
    }
    s.mu_.unlock();
  }

  /// The standard library's clocks, whose now() is the library's own code.
  static constexpr bool standard_clock =
      std::is_same_v<Clock, std::chrono::steady_clock> || std::is_same_v<Clock, std::chrono::system_clock>;

  /// Clock::now(), read by the timer thread. A user's clock's now() is user
  /// code, which must not run while the service's mutex is held (it might
  /// block, or derive a deadline on this clock: a fork() or a schedule()
  /// would then wait on it): the mutex is dropped around it, and the thread
  /// counts as awake meanwhile, so schedule() leaves waking it to its next
  /// look at the heap.
  time_point read_clock(std::unique_lock<std::mutex>& lock) {
    if constexpr (standard_clock) {
      return Clock::now();
    } else {
      wake_at_ = time_point::min();
      lock.unlock();
      const time_point now = Clock::now();
      lock.lock();
      return now;
    }
  }

  /// Sleeps until `next` on Clock (read as `now`), or until notified.
  /// steady_clock and system_clock deadlines are waited for as they are
  /// (absolute, so a system_clock change is followed). For any other clock
  /// the standard wait would compute `next - Clock::now()` (under the mutex)
  /// and add it to steady_clock::now(), overflowing for a far deadline (or a
  /// clock whose now() is negative, as file_clock's): wait for the time left
  /// instead, saturated, and at most a second at a time, so that a clock that
  /// jumps is looked at again soon.
  void sleep_until(std::unique_lock<std::mutex>& lock, time_point next, time_point now) {
    if constexpr (standard_clock) {
      cv_.wait_until(lock, next);
    } else {
      const typename Clock::duration left = time_until(next, now);
      if (left > std::chrono::seconds(1))
        cv_.wait_for(lock, std::chrono::seconds(1));
      else
        cv_.wait_for(lock, left);
    }
  }

  /// Pops the earliest timer if due, with a reference on its node.
  timed_node* pop_due(time_point now) {
    std::lock_guard lock(mu_);
    while (!heap_.empty() && heap_[0].when <= now) {
      timed_node* n = heap_[0].n;
      pop_top();
      if (try_acquire(n)) return n;
    }
    return nullptr;
  }

  static void fire_one(timed_node* n) noexcept {
    cancel(n, errc::deadline_exceeded, nullptr);
    release(n);
  }

  void pop_top() noexcept {
    heap_[0].n->slot = timed_node::no_slot;
    heap_[0] = heap_.back();
    heap_.pop_back();
    if (!heap_.empty()) {
      heap_[0].n->slot = 0;
      sift_down(0);
    }
  }

  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      if (heap_.empty()) {
        wake_at_ = time_point::max();
        slept_ = {slept_.count + 1, wake_at_};
        cv_.wait(lock);
        continue;
      }
      const time_point next = heap_[0].when;
      const time_point now = read_clock(lock);
      if (heap_.empty() || heap_[0].when != next) continue;  // changed while the clock was read
      if (now < next) {
        wake_at_ = next;
        slept_ = {slept_.count + 1, wake_at_};
        sleep_until(lock, next, now);
        continue;
      }
      wake_at_ = time_point::min();  // awake: it looks at the heap again before sleeping
      timed_node* n = heap_[0].n;
      pop_top();
      if (!try_acquire(n)) continue;
      lock.unlock();  // never holds the mutex while user code runs (callbacks, stop requests)
      fire_one(n);
      lock.lock();
    }
  }

  void sift_up(std::uint32_t i) noexcept {
    entry e = heap_[i];
    while (i > 0) {
      const std::uint32_t p = (i - 1) / 2;
      if (!(e.when < heap_[p].when)) break;
      heap_[i] = heap_[p];
      heap_[i].n->slot = i;
      i = p;
    }
    heap_[i] = e;
    e.n->slot = i;
  }

  void sift_down(std::uint32_t i) noexcept {
    const std::uint32_t size = static_cast<std::uint32_t>(heap_.size());
    entry e = heap_[i];
    for (;;) {
      std::uint32_t c = 2 * i + 1;
      if (c >= size) break;
      if (c + 1 < size && heap_[c + 1].when < heap_[c].when) ++c;
      if (!(heap_[c].when < e.when)) break;
      heap_[i] = heap_[c];
      heap_[i].n->slot = i;
      i = c;
    }
    heap_[i] = e;
    e.n->slot = i;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<entry> heap_;
  // When the timer thread next looks at the heap on its own: the deadline it
  // sleeps until, max() when it waits for work, min() while it is awake.
  time_point wake_at_ = time_point::max();
  bool started_ = false;
  sleep_record slept_;  // for tests
  // Manual clocks: serialises the moves of the clock (see advance()).
  std::recursive_mutex advance_mu_;
  int advance_depth_ = 0;          // nested moves in progress; guarded by advance_mu_
  std::thread::id advance_owner_;  // the thread moving the clock; guarded by advance_mu_

  inline static timer_service* const made_before_main_ = &instance();
};

}  // namespace ctx::detail
