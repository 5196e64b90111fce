// SPDX-License-Identifier: MIT
// A fixed pool of database connections whose checkout waits under a context.
//
// The free connections sit in a ctx::bounded_queue: acquire() is a pop that
// returns when a connection is free or the context is done, whichever comes
// first. A request that cannot get a connection before its deadline gives
// up at the deadline instead of queueing behind requests that are stuck.
//
// The pool also measures what the demo reports: how many connections are
// checked out (a gauge the sampler reads), and for every checkout how long
// it was held and whether it was given back after the request's deadline.
//
// Thread safety: every member may be called from any number of threads. A
// lease is used by one thread at a time, and must not outlive the pool.
#pragma once

#include <ctx/ctx.hpp>
#include <ctx/queue.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <vector>

#include "store.hpp"

namespace demo {

/// What the pool measured about its checkouts.
struct hold_stats {
  long checkouts = 0;                             ///< leases given back
  std::chrono::steady_clock::duration longest{};  ///< the longest a lease was held
  long past_deadline = 0;                         ///< leases given back after their request's deadline
  std::chrono::steady_clock::duration worst_overshoot{};  ///< how long after it, at worst
};

class connection_pool {
 public:
  using clock = std::chrono::steady_clock;

  /// A checked-out connection: given back to the pool when destroyed.
  class lease {
   public:
    lease() noexcept = default;
    lease(lease&& o) noexcept
        : pool_(std::exchange(o.pool_, nullptr)), conn_(o.conn_), taken_(o.taken_), deadline_(o.deadline_) {}
    lease& operator=(lease&&) = delete;
    ~lease() { give_back(); }

    [[nodiscard]] connection* operator->() const noexcept { return conn_; }
    [[nodiscard]] explicit operator bool() const noexcept { return pool_ != nullptr; }
    /// Gives the connection back now.
    void give_back() noexcept;

   private:
    friend class connection_pool;
    lease(connection_pool* p, connection* c, clock::time_point deadline) noexcept
        : pool_(p), conn_(c), taken_(clock::now()), deadline_(deadline) {}
    connection_pool* pool_ = nullptr;
    connection* conn_ = nullptr;
    clock::time_point taken_;
    clock::time_point deadline_;
  };

  /// A pool of `n` connections of `db`. Throws what `db.connect()` throws.
  connection_pool(database& db, int n);

  /// Takes a free connection, waiting until one is given back or `c` is done.
  ///
  /// Returns the lease and sets `ec` to `{}`, or returns an empty lease and
  /// sets `ec` to `c.err()`. `deadline` is the request's deadline, kept for
  /// the hold statistics only (it is not a limit: `c` is).
  [[nodiscard]] lease acquire(const ctx::context& c, std::error_code& ec, clock::time_point deadline);

  /// Connections checked out now.
  [[nodiscard]] int checked_out() const noexcept { return out_.load(std::memory_order_relaxed); }
  [[nodiscard]] int size() const noexcept { return static_cast<int>(owned_.size()); }
  [[nodiscard]] hold_stats holds() const;

 private:
  void put_back(const lease& l) noexcept;

  std::vector<std::unique_ptr<connection>> owned_;
  ctx::bounded_queue<connection*> free_;
  std::atomic<int> out_{0};
  mutable std::mutex stats_m_;
  hold_stats stats_;
};

}  // namespace demo
