// SPDX-License-Identifier: MIT
// A four-byte mutex for context nodes, built on std::atomic wait/notify (a futex on Linux).
#pragma once

#include <atomic>
#include <cstdint>

namespace ctx::detail {

/// A non-recursive mutex of one 32-bit word: 0 free, 1 held, 2 held with waiters.
///
/// Thread safety: lock() acquires and unlock() releases, so everything written
/// before an unlock() happens-before everything read after the next lock().
/// Critical sections in ctx are a handful of pointer writes, so a short spin
/// precedes sleeping in the kernel.
class tiny_mutex {
 public:
  constexpr tiny_mutex() noexcept = default;
  tiny_mutex(const tiny_mutex&) = delete;
  tiny_mutex& operator=(const tiny_mutex&) = delete;

  void lock() noexcept {
    std::uint32_t expected = 0;
    if (word_.compare_exchange_strong(expected, 1, std::memory_order_acquire, std::memory_order_relaxed))
        [[likely]]
      return;
    lock_slow();
  }

  void unlock() noexcept {
    if (word_.exchange(0, std::memory_order_release) == 2) [[unlikely]]
      word_.notify_one();
  }

 private:
  void lock_slow() noexcept {
    for (int spin = 0; spin < 64; ++spin) {
      std::uint32_t expected = 0;
      if (word_.load(std::memory_order_relaxed) == 0 &&
          word_.compare_exchange_weak(expected, 1, std::memory_order_acquire, std::memory_order_relaxed))
        return;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    while (word_.exchange(2, std::memory_order_acquire) != 0) word_.wait(2, std::memory_order_relaxed);
  }

  std::atomic<std::uint32_t> word_{0};
};

/// Scoped lock for tiny_mutex (std::lock_guard without the <mutex> include).
class tiny_lock {
 public:
  explicit tiny_lock(tiny_mutex& m) noexcept : m_(m) { m_.lock(); }
  ~tiny_lock() { m_.unlock(); }
  tiny_lock(const tiny_lock&) = delete;
  tiny_lock& operator=(const tiny_lock&) = delete;

 private:
  tiny_mutex& m_;
};

}  // namespace ctx::detail
