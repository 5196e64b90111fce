// SPDX-License-Identifier: MIT
// Per-thread caches of node memory, so that derive + cancel + destroy on one
// thread reuses a block instead of paying a malloc/free pair.
//
// Thread safety: each thread has its own cache and touches no other; a block
// freed on another thread than the one that allocated it simply joins the
// freeing thread's cache. Reuse is ordered by the node's reference count: the
// release that frees a node happens-after every access to it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

namespace ctx::detail {

#if defined(CTX_NO_NODE_CACHE)
inline constexpr bool node_cache_enabled = false;
#elif defined(__SANITIZE_ADDRESS__)
inline constexpr bool node_cache_enabled = false;  // let ASan see every use after free
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool node_cache_enabled = false;
#else
inline constexpr bool node_cache_enabled = true;
#endif
#else
inline constexpr bool node_cache_enabled = true;
#endif

/// A bounded free list of blocks of `Size` bytes per thread.
///
/// At most `capacity` blocks (a few KiB) stay cached per thread; the rest go
/// back to the global allocator at once, so a burst (a million timeouts) is
/// returned as usual. The cache is emptied when its thread exits; a block
/// freed after that, during the same thread's exit, goes straight to the
/// global allocator.
template <std::size_t Size>
class node_cache {
 public:
  static constexpr std::uint32_t capacity = 64;

  [[nodiscard]] static void* allocate() {
    if constexpr (node_cache_enabled) {
      state& s = tls_;
      if (block* b = s.head) {
        s.head = b->next;
        --s.count;
        return b;
      }
    }
    return ::operator new(Size);
  }

  static void deallocate(void* p) noexcept {
    if constexpr (node_cache_enabled) {
      state& s = tls_;
      if (s.count < capacity && s.alive()) {
        auto* b = static_cast<block*>(p);
        b->next = s.head;
        s.head = b;
        ++s.count;
        return;
      }
    }
    ::operator delete(p);
  }

 private:
  struct block {
    block* next;
  };
  struct drainer {
    ~drainer() {
      state& s = tls_;
      s.phase = state::dead;
      while (block* b = s.head) {
        s.head = b->next;
        ::operator delete(b);
      }
      s.count = 0;
    }
  };
  struct state {
    enum : std::uint8_t { fresh, live, dead };
    block* head = nullptr;
    std::uint32_t count = 0;
    std::uint8_t phase = fresh;
    /// True while blocks may be cached; registers the exit-time drain once.
    bool alive() noexcept {
      if (phase == live) [[likely]]
        return true;
      if (phase == dead) return false;
      thread_local drainer d;  // constructed once per thread, destroyed at its exit
      (void)d;
      phase = live;
      return true;
    }
  };
  static_assert(Size >= sizeof(block));
  inline static thread_local constinit state tls_{};
};

/// Class-specific allocation for a node type: `struct n : ..., cached_node<n>`.
template <class Node>
struct cached_node {
  static void* operator new(std::size_t size) {
    if (size != sizeof(Node)) return ::operator new(size);
    return node_cache<sizeof(Node)>::allocate();
  }
  static void operator delete(void* p, std::size_t size) noexcept {
    if (size != sizeof(Node)) return ::operator delete(p);
    node_cache<sizeof(Node)>::deallocate(p);
  }
};

}  // namespace ctx::detail
