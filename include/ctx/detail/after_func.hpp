// SPDX-License-Identifier: MIT
// The after_func records: linking one into its context's callback list,
// stopping it, destroying it. ctx::after_func and ctx::registration
// (context.hpp) are the public face; fire_hooks (node.hpp) runs the records.
//
// Thread safety: a record's links and its runner fields are guarded by its
// owner's mutex; run_state is written under that mutex too (except for a
// record without owner, which only its registration touches), and read
// without it only by a registration waiting for a running callback to finish.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

#include "node.hpp"
#include "tiny_mutex.hpp"

namespace ctx::detail {

/// A record that owns the user's callable.
template <class F>
struct callback_impl final : callback_rec {
  template <class G>
  explicit callback_impl(G&& g) : f(static_cast<G&&>(g)) {
    invoke = [](callback_rec* r) noexcept { static_cast<callback_impl*>(r)->f(); };
    destroy = [](callback_rec* r) noexcept { delete static_cast<callback_impl*>(r); };
  }
  F f;
};

/// Attaches `rec` to `owner` (taking a reference to it for `rec`): links it
/// into owner's callback list while `owner` is live, or, when `owner` is done
/// already, runs it at once on this thread.
inline void add_callback(cancel_node* owner, callback_rec* rec) noexcept {
  acquire(owner);
  rec->owner = owner;
  {
    tiny_lock lock(owner->mtx);
    if (!(claim_locked(owner) & st_done)) {
      callback_list::push_front(owner->first_callback, rec);
      rec->run_state.store(callback_rec::linked, std::memory_order_relaxed);
      return;
    }
  }
  rec->invoke(rec);
  rec->run_state.store(callback_rec::finished, std::memory_order_relaxed);
}

/// registration::stop(): true iff this call kept `rec` from ever running.
[[nodiscard]] inline bool prevent_callback(callback_rec* rec) noexcept {
  if (!rec->owner) {
    std::uint32_t idle = callback_rec::idle;
    return rec->run_state.compare_exchange_strong(idle, callback_rec::removed, std::memory_order_relaxed);
  }
  tiny_lock lock(rec->owner->mtx);
  if (rec->run_state.load(std::memory_order_relaxed) != callback_rec::linked) return false;
  callback_list::unlink(rec->owner->first_callback, rec);
  rec->run_state.store(callback_rec::removed, std::memory_order_relaxed);
  return true;
}

/// The registration's destructor: unlinks `rec`, waits for it if it runs on
/// another thread (not if it runs on this one: the callback destroys its own
/// registration), drops the reference to the owner and frees `rec`.
inline void destroy_callback(callback_rec* rec) noexcept {
  if (cancel_node* owner = rec->owner) {
    bool wait = false;
    {
      tiny_lock lock(owner->mtx);
      switch (rec->run_state.load(std::memory_order_relaxed)) {
        case callback_rec::linked:
          callback_list::unlink(owner->first_callback, rec);
          break;
        case callback_rec::running:
          if (rec->runner == std::this_thread::get_id())
            *rec->destroyed = true;  // inside f: do not wait
          else
            wait = true;
          break;
        default:
          break;
      }
    }
    if (wait) {
      std::uint32_t s;
      while ((s = rec->run_state.load(std::memory_order_acquire)) == callback_rec::running)
        rec->run_state.wait(s);
      tiny_lock sync(owner->mtx);  // the runner stores `finished` under this lock
    }
    release(owner);
  }
  rec->destroy(rec);
}

}  // namespace ctx::detail
