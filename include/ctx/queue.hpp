// SPDX-License-Identifier: MIT
// ctx::bounded_queue: a multi-producer, multi-consumer queue whose blocking push and pop take a context.
//
// Thread safety: every member may be called from any number of threads at
// once, except the destructor (no thread may be inside the queue then). A
// push that succeeds happens-before the pop that returns its item (both take
// the queue's mutex). Blocked calls wait on `std::condition_variable_any`
// with the context's stop token, so a cancel or deadline wakes them through
// the condition variable's own mutex: the queue's mutex is private, and a
// context may be cancelled from anywhere, also from inside a push or pop
// callback chain. No data is lost: a push that fails leaves the item with
// the caller, and a pop that fails takes nothing from the queue.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

#include "context.hpp"

namespace ctx {

/// Why a queue operation did nothing, besides the context's own errors.
///
/// `closed` is equivalent to `std::errc::broken_pipe`; `full` and `empty` to
/// `std::errc::resource_unavailable_try_again` (EAGAIN).
enum class queue_errc {
  closed = 1,  ///< "queue closed": push after close(), or pop on a closed, drained queue.
  full = 2,    ///< "queue full": try_push found no room.
  empty = 3,   ///< "queue empty": try_pop found nothing.
};

}  // namespace ctx

template <>
struct std::is_error_code_enum<ctx::queue_errc> : std::true_type {};

namespace ctx {

/// The category of `ctx::queue_errc`; its name is "ctx.queue".
[[nodiscard]] const std::error_category& queue_category() noexcept;

/// Makes a `std::error_code` of `ctx::queue_category()`; found by argument-dependent lookup.
[[nodiscard]] inline std::error_code make_error_code(queue_errc e) noexcept {
  return {static_cast<int>(e), queue_category()};
}

/// A bounded, first-in first-out, multi-producer multi-consumer queue of `T`.
///
/// `push(c, item)` blocks while the queue is full and `pop(c, ec)` while it is
/// empty, each until there is room or an item, the queue is closed, or `c` is
/// done. Errors are `std::error_code`s: `c.err()` (`errc::canceled`,
/// `errc::deadline_exceeded`) or a `queue_errc`. Pop reports through an
/// `std::error_code&` out-parameter next to a `std::optional<T>` (the style
/// of std::filesystem and Asio; C++20 has no std::expected): the optional
/// holds the item exactly when the error is empty.
///
/// `close()` stops producers at once; consumers drain what is left, then get
/// `queue_errc::closed`: Go's channel close, without the panics.
///
/// Example:
/// \code
///   ctx::bounded_queue<job> jobs(64);
///   // producer
///   if (auto ec = jobs.push(c, std::move(j))) return ec;  // j is still ours on error
///   // consumer
///   std::error_code ec;
///   while (auto j = jobs.pop(c, ec)) run(*j);
///   if (ec != ctx::queue_errc::closed) log("stopped early: ", ec.message());
/// \endcode
template <class T>
class bounded_queue {
 public:
  using value_type = T;

  /// An empty queue that holds at most `capacity` items. Throws
  /// std::invalid_argument if `capacity` is 0.
  explicit bounded_queue(std::size_t capacity);
  bounded_queue(const bounded_queue&) = delete;
  bounded_queue& operator=(const bounded_queue&) = delete;
  /// Destroys the remaining items. Precondition: no thread is inside a member.
  ~bounded_queue() = default;

  /// Appends `item`, waiting while the queue is full.
  ///
  /// Returns `{}` once the item is in the queue (moved from `item`). Returns
  /// `c.err()` if `c` is done first (at once, without touching the queue, if
  /// it is done on entry), or `queue_errc::closed` if the queue is or gets
  /// closed; on every error `item` is left untouched: pass
  /// `std::move(x)` and `x` still holds the value. Throws what T's move
  /// constructor throws, or std::bad_alloc; the queue is then unchanged.
  template <class Clock>
  [[nodiscard]] std::error_code push(const basic_context<Clock>& c, T&& item);

  /// As above, but copies `item` on success.
  template <class Clock>
  [[nodiscard]] std::error_code push(const basic_context<Clock>& c,
                                     const T& item) requires std::is_copy_constructible_v<T>;

  /// Appends `item` if there is room now: `{}`, `queue_errc::full` or
  /// `queue_errc::closed`; `item` is moved from only on success. Never blocks
  /// (beyond the queue's short internal lock).
  [[nodiscard]] std::error_code try_push(T&& item);

  /// As above, but copies `item` on success.
  [[nodiscard]] std::error_code try_push(const T& item) requires std::is_copy_constructible_v<T>;

  /// Removes and returns the oldest item, waiting while the queue is empty.
  ///
  /// On success returns the item and sets `ec` to `{}`. Otherwise returns an
  /// empty optional and sets `ec` to `c.err()` if `c` is done first (at once,
  /// without touching the queue, if it is done on entry; a cancelled pop
  /// leaves every item in the queue), or to `queue_errc::closed` once the
  /// queue is closed and drained. Items still queued at close() are
  /// returned first. Throws what T's move constructor throws.
  template <class Clock>
  [[nodiscard]] std::optional<T> pop(const basic_context<Clock>& c, std::error_code& ec);

  /// Removes and returns the oldest item if there is one now. Otherwise sets
  /// `ec` to `queue_errc::empty`, or to `queue_errc::closed` if the queue is
  /// closed (and drained). Never blocks (beyond the short internal lock).
  [[nodiscard]] std::optional<T> try_pop(std::error_code& ec);

  /// Closes the queue: pushes fail with `queue_errc::closed` from now on,
  /// blocked pushes return it at once; pops take the remaining items, then
  /// fail with `queue_errc::closed`. Calling it again does nothing.
  void close();

  /// True once close() was called.
  [[nodiscard]] bool closed() const;

  /// The number of queued items (a snapshot).
  [[nodiscard]] std::size_t size() const;

  /// The maximum number of queued items, as given to the constructor.
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }

 private:
  template <class Clock, class U>
  std::error_code push_impl(const basic_context<Clock>& c, U& item);
  template <class U>
  std::error_code try_push_impl(U& item);
  std::optional<T> take_locked(std::unique_lock<std::mutex>& lock);

  const std::size_t capacity_;
  mutable std::mutex m_;
  std::condition_variable_any not_empty_;
  std::condition_variable_any not_full_;
  std::deque<T> items_;
  bool closed_ = false;
};

// ---------------------------------------------------------------------------
// Implementation.

namespace detail {

class queue_category_impl final : public std::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "ctx.queue"; }

  [[nodiscard]] std::string message(int value) const override {
    switch (static_cast<queue_errc>(value)) {
      case queue_errc::closed:
        return "queue closed";
      case queue_errc::full:
        return "queue full";
      case queue_errc::empty:
        return "queue empty";
    }
    return "unknown ctx.queue error " + std::to_string(value);
  }

  [[nodiscard]] std::error_condition default_error_condition(int value) const noexcept override {
    switch (static_cast<queue_errc>(value)) {
      case queue_errc::closed:
        return std::errc::broken_pipe;
      case queue_errc::full:
      case queue_errc::empty:
        return std::errc::resource_unavailable_try_again;
    }
    return {value, *this};
  }
};

inline const queue_category_impl queue_category_instance{};

}  // namespace detail

inline const std::error_category& queue_category() noexcept { return detail::queue_category_instance; }

template <class T>
bounded_queue<T>::bounded_queue(std::size_t capacity) : capacity_(capacity) {
  if (capacity == 0) throw std::invalid_argument("ctx::bounded_queue: capacity must be at least 1");
}

template <class T>
template <class Clock, class U>
std::error_code bounded_queue<T>::push_impl(const basic_context<Clock>& c, U& item) {
  if (c.done()) return c.err();
  std::unique_lock lock(m_);
  const bool room =
      not_full_.wait(lock, c.stop_token(), [&] { return closed_ || items_.size() < capacity_; });
  if (closed_) return queue_errc::closed;
  if (!room) return c.err();                 // the predicate was false under the lock: nothing to pass on
  items_.push_back(static_cast<U&&>(item));  // strong guarantee: on throw, nothing changed
  lock.unlock();
  not_empty_.notify_one();
  return {};
}

template <class T>
template <class Clock>
std::error_code bounded_queue<T>::push(const basic_context<Clock>& c, T&& item) {
  return push_impl(c, item);
}

template <class T>
template <class Clock>
std::error_code bounded_queue<T>::push(const basic_context<Clock>& c,
                                       const T& item) requires std::is_copy_constructible_v<T> {
  return push_impl(c, item);
}

template <class T>
template <class U>
std::error_code bounded_queue<T>::try_push_impl(U& item) {
  {
    std::lock_guard lock(m_);
    if (closed_) return queue_errc::closed;
    if (items_.size() >= capacity_) return queue_errc::full;
    items_.push_back(static_cast<U&&>(item));
  }
  not_empty_.notify_one();
  return {};
}

template <class T>
std::error_code bounded_queue<T>::try_push(T&& item) {
  return try_push_impl(item);
}

template <class T>
std::error_code bounded_queue<T>::try_push(const T& item) requires std::is_copy_constructible_v<T> {
  return try_push_impl(item);
}

template <class T>
std::optional<T> bounded_queue<T>::take_locked(std::unique_lock<std::mutex>& lock) {
  std::optional<T> item(std::move(items_.front()));  // on throw, the item stays queued
  items_.pop_front();
  lock.unlock();
  not_full_.notify_one();
  return item;
}

template <class T>
template <class Clock>
std::optional<T> bounded_queue<T>::pop(const basic_context<Clock>& c, std::error_code& ec) {
  if (c.done()) {
    ec = c.err();
    return std::nullopt;
  }
  std::unique_lock lock(m_);
  const bool ready = not_empty_.wait(lock, c.stop_token(), [&] { return closed_ || !items_.empty(); });
  if (!items_.empty()) {
    ec.clear();
    return take_locked(lock);
  }
  if (ready) {
    ec = queue_errc::closed;
    return std::nullopt;
  }
  ec = c.err();
  return std::nullopt;
}

template <class T>
std::optional<T> bounded_queue<T>::try_pop(std::error_code& ec) {
  std::unique_lock lock(m_);
  if (items_.empty()) {
    ec = closed_ ? queue_errc::closed : queue_errc::empty;
    return std::nullopt;
  }
  ec.clear();
  return take_locked(lock);
}

template <class T>
void bounded_queue<T>::close() {
  {
    std::lock_guard lock(m_);
    if (closed_) return;
    closed_ = true;
  }
  not_empty_.notify_all();
  not_full_.notify_all();
}

template <class T>
bool bounded_queue<T>::closed() const {
  std::lock_guard lock(m_);
  return closed_;
}

template <class T>
std::size_t bounded_queue<T>::size() const {
  std::lock_guard lock(m_);
  return items_.size();
}

}  // namespace ctx
