// SPDX-License-Identifier: MIT
// ctx::task_group: Go's errgroup. Run tasks on threads under one context; the first error cancels the rest.
//
// Thread safety: spawn() and try_spawn() may be called from any thread,
// including from inside a task of the same group; set_limit() too. wait()
// is called by one thread, after the spawns that do not come from tasks
// (as with Go's errgroup: a spawn from outside racing with wait() may or may
// not be waited for). Everything a task did happens-before wait() returns
// (each task's thread is joined). The first failure is recorded under the
// group's mutex; the group's context is cancelled after that mutex is
// released, so callbacks on it may call back into the group.
#pragma once

#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "context.hpp"

namespace ctx {

/// What a task of a group is: called with the group's context, returns a
/// `std::error_code` (`{}` for success), or returns nothing (always success).
template <class F, class Clock>
concept group_task = std::invocable < std::decay_t<F>
&, const basic_context<Clock>& >
       &&(std::is_void_v<std::invoke_result_t<std::decay_t<F>&, const basic_context<Clock>&>> ||
          std::convertible_to<std::invoke_result_t<std::decay_t<F>&, const basic_context<Clock>&>,
                              std::error_code>);

/// A group of tasks that work on parts of one job, each on its own thread,
/// under one context that the first failure cancels: Go's errgroup.WithContext.
///
/// `context()` is a `with_cancel` child of the parent given to the
/// constructor. Every task gets it. The first task to fail, by returning a
/// non-empty error or by throwing, cancels it: with the error as its cause()
/// (err() is `errc::canceled`), or with a plain cancel for an exception.
/// Later failures are dropped. `wait()` joins every task, cancels the context
/// and returns the first error, or rethrows the first exception if a throw
/// was the first failure.
///
/// Each task runs on a new `std::thread`, joined by wait() or by the
/// destructor: simple and predictable for the tens of parallel calls that
/// fan out from a request, not a thread pool for thousands of small jobs
/// (use set_limit to bound the threads).
///
/// Example:
/// \code
///   ctx::task_group g(request);
///   for (const auto& shard : shards)
///     g.spawn([&](const ctx::context& c) { return query(c, shard); });
///   if (std::error_code ec = g.wait()) return ec;  // the first shard that failed
/// \endcode
template <class Clock = std::chrono::steady_clock>
class basic_task_group {
 public:
  using context_type = basic_context<Clock>;

  /// A group whose context is a new child of `parent`. Throws std::bad_alloc.
  explicit basic_task_group(const context_type& parent, source_location site = source_location::current());
  basic_task_group(const basic_task_group&) = delete;
  basic_task_group& operator=(const basic_task_group&) = delete;

  /// Cancels the group's context and waits for every task, as
  /// `std::jthread` requests stop and joins; errors and exceptions not
  /// collected by wait() are dropped. Call wait() to see them.
  ~basic_task_group();

  /// The context every task gets: done when the parent is, at the first
  /// failure, and when wait() returns. Valid for the group's lifetime.
  [[nodiscard]] const context_type& context() const noexcept { return ctx_; }

  /// Starts `f(context())` on a new thread.
  ///
  /// With a limit set, blocks until fewer than the limit tasks run (not
  /// interrupted by the context: tasks of a cancelled group end quickly).
  /// So with a limit, a task that spawns into its own group may wait for a
  /// slot that only its siblings can free: use try_spawn there.
  /// `f` is decay-copied to the new thread. Throws std::system_error if the
  /// thread cannot be started, or what copying `f` throws; `f` does not run then.
  template <class F>
  requires group_task<F, Clock>
  void spawn(F&& f);

  /// Starts `f(context())` on a new thread if the limit allows it now;
  /// returns false (and does not touch `f`) if not. Throws as spawn() does.
  template <class F>
  requires group_task<F, Clock>
  [[nodiscard]] bool try_spawn(F&& f);

  /// Limits how many tasks run at once; `n < 0` removes the limit (the
  /// default). Takes effect for later spawns; tasks already running are not
  /// affected. Throws std::invalid_argument if `n == 0`.
  void set_limit(std::ptrdiff_t n);

  /// Blocks until every task has returned, cancels the group's context, and
  /// returns the first error, or `{}` if every task succeeded.
  ///
  /// If the first failure was an exception, rethrows it instead (the same
  /// exception object on every call). Calling wait() again returns the same
  /// result, after waiting for tasks spawned since.
  std::error_code wait();

 private:
  template <class F>
  void start(F&& f);  // precondition: a slot is taken (running_ counted)
  void finish(std::error_code e, std::exception_ptr ex) noexcept;
  void join_all() noexcept;

  context_type ctx_;
  cancel_handle cancel_;
  std::mutex m_;
  std::condition_variable slot_free_;
  std::vector<std::thread> threads_;    // guarded by m_
  std::ptrdiff_t limit_ = -1;           // guarded by m_
  std::ptrdiff_t running_ = 0;          // guarded by m_
  bool failed_ = false;                 // guarded by m_
  std::error_code first_error_;         // guarded by m_
  std::exception_ptr first_exception_;  // guarded by m_
};

/// A task group on `std::chrono::steady_clock`.
using task_group = basic_task_group<>;

// ---------------------------------------------------------------------------
// Implementation.

template <class Clock>
basic_task_group<Clock>::basic_task_group(const context_type& parent, source_location site) {
  auto [c, cancel] = with_cancel(parent, site);
  ctx_ = std::move(c);
  cancel_ = std::move(cancel);
}

template <class Clock>
basic_task_group<Clock>::~basic_task_group() {
  cancel_();
  join_all();
}

template <class Clock>
void basic_task_group<Clock>::join_all() noexcept {
  // Tasks may spawn tasks: join until no thread is left.
  for (;;) {
    std::vector<std::thread> batch;
    {
      std::lock_guard lock(m_);
      batch.swap(threads_);
    }
    if (batch.empty()) return;
    for (std::thread& t : batch) t.join();
  }
}

template <class Clock>
void basic_task_group<Clock>::finish(std::error_code e, std::exception_ptr ex) noexcept {
  bool first = false;
  {
    std::lock_guard lock(m_);
    --running_;
    if ((e || ex) && !failed_) {
      failed_ = first = true;
      first_error_ = e;
      first_exception_ = std::move(ex);
    }
  }
  slot_free_.notify_one();
  if (first) cancel_(e);  // outside the mutex: runs callbacks registered on the group's context
}

template <class Clock>
template <class F>
void basic_task_group<Clock>::start(F&& f) {
  try {
    std::lock_guard lock(m_);
    threads_.emplace_back([this, fn = std::decay_t<F>(static_cast<F&&>(f))]() mutable noexcept {
      std::error_code e;
      std::exception_ptr ex;
      try {
        if constexpr (std::is_void_v<std::invoke_result_t<std::decay_t<F>&, const context_type&>>)
          std::invoke(fn, std::as_const(ctx_));
        else
          e = std::invoke(fn, std::as_const(ctx_));
      } catch (...) {
        ex = std::current_exception();
      }
      finish(e, std::move(ex));
    });
  } catch (...) {
    {
      std::lock_guard lock(m_);
      --running_;
    }
    slot_free_.notify_one();
    throw;
  }
}

template <class Clock>
template <class F>
requires group_task<F, Clock>
void basic_task_group<Clock>::spawn(F&& f) {
  {
    std::unique_lock lock(m_);
    slot_free_.wait(lock, [&] { return limit_ < 0 || running_ < limit_; });
    ++running_;
  }
  start(static_cast<F&&>(f));
}

template <class Clock>
template <class F>
requires group_task<F, Clock>
bool basic_task_group<Clock>::try_spawn(F&& f) {
  {
    std::lock_guard lock(m_);
    if (limit_ >= 0 && running_ >= limit_) return false;
    ++running_;
  }
  start(static_cast<F&&>(f));
  return true;
}

template <class Clock>
void basic_task_group<Clock>::set_limit(std::ptrdiff_t n) {
  if (n == 0) throw std::invalid_argument("ctx::task_group::set_limit: the limit must not be 0");
  {
    std::lock_guard lock(m_);
    limit_ = n;
  }
  slot_free_.notify_all();
}

template <class Clock>
std::error_code basic_task_group<Clock>::wait() {
  join_all();
  cancel_();
  std::lock_guard lock(m_);
  if (first_exception_) std::rethrow_exception(first_exception_);
  return first_error_;
}

}  // namespace ctx
