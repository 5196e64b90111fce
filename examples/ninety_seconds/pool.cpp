// SPDX-License-Identifier: MIT
#include "pool.hpp"

#include <algorithm>
#include <cstddef>

namespace demo {

connection_pool::connection_pool(database& db, int n) : free_(static_cast<std::size_t>(n)) {
  for (int i = 0; i < n; ++i) {
    owned_.push_back(db.connect());
    (void)free_.try_push(owned_.back().get());  // room for all n
  }
}

connection_pool::lease connection_pool::acquire(const ctx::context& c, std::error_code& ec,
                                                clock::time_point deadline) {
  const std::optional<connection*> conn = free_.pop(c, ec);  // waits under c
  if (!conn) return {};
  out_.fetch_add(1, std::memory_order_relaxed);
  return lease(this, *conn, deadline);
}

void connection_pool::lease::give_back() noexcept {
  if (connection_pool* p = std::exchange(pool_, nullptr)) p->put_back(*this);
}

void connection_pool::put_back(const lease& l) noexcept {
  const clock::time_point now = clock::now();
  {
    const std::lock_guard lock(stats_m_);
    ++stats_.checkouts;
    stats_.longest = std::max(stats_.longest, now - l.taken_);
    if (now > l.deadline_) {
      ++stats_.past_deadline;
      stats_.worst_overshoot = std::max(stats_.worst_overshoot, now - l.deadline_);
    }
  }
  out_.fetch_sub(1, std::memory_order_relaxed);
  (void)free_.try_push(l.conn_);  // never full: only checked-out connections come back
}

hold_stats connection_pool::holds() const {
  const std::lock_guard lock(stats_m_);
  return stats_;
}

}  // namespace demo
