// SPDX-License-Identifier: MIT
// Sleeping on a 32-bit word: the futex system call on Linux, std::atomic
// wait/notify elsewhere. Used where the waker already knows whether anyone
// sleeps (a flag set under a lock), so that waking costs nothing otherwise.
#pragma once

#include <atomic>
#include <climits>
#include <cstdint>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace ctx::detail {

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
              std::atomic<std::uint32_t>::is_always_lock_free);

#if defined(__linux__)

/// Sleeps while `word == expected` (checked by the kernel, atomically with
/// going to sleep); may return spuriously (signals, a stale wake-up).
inline void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr,
            nullptr, 0);
}

/// Wakes every thread sleeping in futex_wait on `word`. The kernel orders it
/// after every store this thread made before (a full barrier on entry).
inline void futex_wake_all(std::atomic<std::uint32_t>& word) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr,
            0);
}

#else  // portable fallback: std::atomic wait/notify

inline void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected) noexcept {
  word.wait(expected, std::memory_order_relaxed);
}

inline void futex_wake_all(std::atomic<std::uint32_t>& word) noexcept {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  word.notify_all();
}

#endif

}  // namespace ctx::detail
