// SPDX-License-Identifier: MIT
// The registry behind <ctx/inspect.hpp>: which contexts exist, where each was
// made, and the hooks the derivations call. Not API.
//
// Inspection is off by default, and then a derivation pays one relaxed load
// of a global flag and one of its parent's `insp` byte (the cache line it is
// about to write anyway) and stores the new node's `insp` byte; cancel,
// done() and destruction pay nothing, because a node is hooked by swapping
// its `ops` table, never by a test on the hot path (the cancel handle's
// destructor tests `insp`, to know whether the handle still holds its
// reference). A node made while inspection is on, or derived from a tracked
// node (whether inspection is still on or not), is *tracked*: it gets a
// record, and its `ops` point at the record's own table (tracked_destroy,
// tracked_on_cancel: they keep the record in step, then call the node's own
// ops), so the record is found from the node in O(1) without a lock. A
// tracked cancelable node is never cancelled by cancel's lock-free path
// (st_busy is set), so that its on_cancel hook always runs and notes when it
// became done.
//
// Thread safety: records are kept in 64 shards, each an intrusive list
// guarded by the shard's mutex, a leaf lock: nothing else is locked while it
// is held, and no user code runs under it. A thread adds the records it makes
// to its own shard (round-robin), so derivations on different threads do not
// contend. A record exists exactly while its node does (it is unlinked by the
// node's destroy, under the shard's mutex, before the node's memory is
// freed), so a reader that holds the shard's mutex may read the node and its
// ancestors (every node holds a reference to its parent, and a parent's
// record outlives its children's). A record's other fields are written before
// the node is published; `visible` is stored with release order once the
// derivation has linked the node, and read with acquire order, so a reader
// that sees it also sees how the node was born. `done_ns` and `children` are
// atomics updated by whoever cancels or derives (relaxed: they are numbers to
// report, not synchronisation). The shards' mutexes are held across fork().
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>
#include <type_traits>
#include <version>

#include <pthread.h>

#include "node.hpp"
#include "timer_service.hpp"
#include "tiny_mutex.hpp"

#if defined(__cpp_lib_source_location)
#include <source_location>
#endif

namespace ctx {

#if defined(__cpp_lib_source_location)
/// Where a context was made: `std::source_location` where the standard
/// library has it (GCC 11+, Clang 15+ with libstdc++/libc++).
using source_location = std::source_location;
#else
/// Where a context was made: the same interface as `std::source_location`,
/// for standard libraries or compilers that lack it (Clang 14 with
/// libstdc++ 12), built on the compiler builtins std::source_location uses.
struct source_location {
  [[nodiscard]] static constexpr source_location current(
      const char* file = __builtin_FILE(), const char* function = __builtin_FUNCTION(),
      std::uint_least32_t line = __builtin_LINE(), std::uint_least32_t column = __builtin_COLUMN()) noexcept {
    source_location s;
    s.file_ = file;
    s.function_ = function;
    s.line_ = line;
    s.column_ = column;
    return s;
  }
  constexpr source_location() noexcept = default;
  [[nodiscard]] constexpr const char* file_name() const noexcept { return file_; }
  [[nodiscard]] constexpr const char* function_name() const noexcept { return function_; }
  [[nodiscard]] constexpr std::uint_least32_t line() const noexcept { return line_; }
  [[nodiscard]] constexpr std::uint_least32_t column() const noexcept { return column_; }

 private:
  const char* file_ = "";
  const char* function_ = "";
  std::uint_least32_t line_ = 0;
  std::uint_least32_t column_ = 0;
};
#endif

namespace inspect {
/// Which derivation made a context.
enum class kind : std::uint8_t {
  with_cancel,
  with_timeout,
  with_deadline,
  with_stop_token,
  with_value,
  without_cancel
};
}  // namespace inspect

}  // namespace ctx

namespace ctx::detail::insp {

/// Bits of node::insp.
inline constexpr std::uint8_t tracked = 1;      // the node has a record
inline constexpr std::uint8_t handle_gone = 2;  // its cancel handle was destroyed

/// The switch: read on every derivation (relaxed).
inline constinit std::atomic<bool> on{false};

/// CTX_INSPECT=1 (anything but empty or "0") turns inspection on at start-up.
[[nodiscard]] inline bool read_environment() noexcept {
  const char* v = std::getenv("CTX_INSPECT");
  if (v && *v && !(v[0] == '0' && v[1] == '\0')) on.store(true, std::memory_order_relaxed);
  return true;
}
inline const bool environment_read = read_environment();

/// The steady clock in nanoseconds: ages and done times of every context,
/// whatever its own clock (a manual clock does not age a report).
[[nodiscard]] inline std::int64_t steady_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// How to read a context's deadline in its own clock.
struct clock_ops {
  /// Nanoseconds until the deadline held by `deadline_holder` (0 once passed; INT64_MAX for never).
  std::int64_t (*remaining_ns)(const node* deadline_holder) noexcept;
};

template <class Clock>
std::int64_t remaining_ns(const node* deadline_holder) noexcept {
  const auto when = static_cast<const deadline_node<Clock>*>(deadline_holder)->when;
  if (when == Clock::time_point::max()) return std::numeric_limits<std::int64_t>::max();
  const auto left = time_until(when, Clock::now());
  using ns = std::chrono::duration<long double, std::nano>;
  const long double v = std::chrono::duration_cast<ns>(left).count();
  if (v >= static_cast<long double>(std::numeric_limits<std::int64_t>::max()))
    return std::numeric_limits<std::int64_t>::max();
  return static_cast<std::int64_t>(v);
}

template <class Clock>
inline constexpr clock_ops clock_ops_of{&remaining_ns<Clock>};

/// What the registry knows of one tracked node. A tracked node's `ops`
/// point at its record's `ops` (its first member), so the record is found
/// from the node in O(1), without a lock: `record_of`.
struct record {
  node_ops ops;            // what n->ops points at: tracked_destroy, tracked_on_cancel
  record* prev = nullptr;  // the shard's list; guarded by the shard's mutex
  record* next = nullptr;
  const node* n = nullptr;
  const node_ops* own_ops = nullptr;  // the node's ops before tracking
  const clock_ops* clk = nullptr;
  record* parent = nullptr;              // the parent's record, or nullptr if the parent is not tracked
  record* nearest_cancelable = nullptr;  // the nearest cancelable node's record, if tracked
  source_location site;
  std::uint64_t id = 0;
  std::int64_t created_ns = 0;
  std::atomic<std::int64_t> done_ns{0};    // steady_ns() when marked done; 0 while unknown
  std::atomic<std::uint32_t> children{0};  // tracked nodes whose parent is this one
  std::atomic<bool> visible{false};        // set once the derivation has linked the node
  std::uint8_t shard = 0;
  inspect::kind k = inspect::kind::with_cancel;
};
static_assert(std::is_standard_layout_v<record>,
              "record_of() needs `ops` pointer-interconvertible with the record");

/// The record of a tracked node. Precondition: n->insp has `tracked`.
[[nodiscard]] inline record* record_of(const node* n) noexcept {
  return reinterpret_cast<record*>(const_cast<node_ops*>(n->ops));
}

/// One shard: an intrusive list of records. A thread adds the records it
/// makes to its own shard (threads are spread over the shards round-robin),
/// so derivations on different threads do not contend; a record is removed
/// by whichever thread destroys its node.
struct alignas(64) shard {
  tiny_mutex mu;
  record* head = nullptr;  // guarded by mu
  std::size_t size = 0;    // guarded by mu
  std::uint64_t seq = 0;   // guarded by mu: ids
};

inline constexpr std::size_t shard_bits = 6;
inline constexpr std::size_t shard_count = std::size_t{1} << shard_bits;
inline constinit shard shards[shard_count]{};
inline constinit std::atomic<std::uint32_t> next_shard{0};

// fork(): the shards' mutexes are held across fork() (taken in order by the
// forking thread; each is a leaf lock held only by a few lines of this file,
// never while user code runs), so that the child never inherits one held by
// a thread that does not exist there.
inline void lock_shards_for_fork() noexcept {
  for (shard& s : shards) s.mu.lock();
}
inline void unlock_shards_after_fork() noexcept {
  for (shard& s : shards) s.mu.unlock();
}
inline const bool fork_handlers_registered =
    ::pthread_atfork(&lock_shards_for_fork, &unlock_shards_after_fork, &unlock_shards_after_fork) == 0;

[[nodiscard]] inline std::uint8_t my_shard() noexcept {
  thread_local const auto mine =
      static_cast<std::uint8_t>(next_shard.fetch_add(1, std::memory_order_relaxed) % shard_count);
  return mine;
}

/// Notes the done time (first writer wins).
inline void note_done(record* r, std::int64_t when) noexcept {
  std::int64_t expected = 0;
  r->done_ns.compare_exchange_strong(expected, when, std::memory_order_relaxed);
}

inline void tracked_destroy(node* n) noexcept {
  record* r = record_of(n);
  {
    shard& s = shards[r->shard];
    tiny_lock lock(s.mu);
    if (r->prev)
      r->prev->next = r->next;
    else
      s.head = r->next;
    if (r->next) r->next->prev = r->prev;
    --s.size;
  }
  if (r->parent) r->parent->children.fetch_sub(1, std::memory_order_relaxed);
  n->ops = r->own_ops;  // the node's own destroy may read its ops (none does today)
  delete r;
  n->ops->destroy(n);
}

inline void tracked_on_cancel(cancel_node* n) noexcept {
  record* r = record_of(n);
  note_done(r, steady_ns());
  if (r->own_ops->on_cancel) r->own_ops->on_cancel(n);
}

/// True when a new child of `p` must be tracked: inspection is on, or `p` is
/// tracked (so that every reference to a tracked node from a child is known).
[[nodiscard]] inline bool wanted(const node* p) noexcept {
  return on.load(std::memory_order_relaxed) || (p->insp.load(std::memory_order_relaxed) & tracked);
}

/// Tracks `n`, a node nobody else can see yet, child of `p`. Called by a
/// derivation right after constructing `n`, before linking it; `finish`
/// makes it visible to readers once linked. Never throws: if memory runs
/// out, the node is simply not tracked.
[[nodiscard]] inline record* begin(node* n, const node* p, inspect::kind k, source_location site,
                                   const clock_ops* clk) noexcept {
  auto* r = new (std::nothrow) record;
  if (!r) return nullptr;
  r->ops = node_ops{&tracked_destroy, &tracked_on_cancel};
  r->n = n;
  r->own_ops = n->ops;
  r->clk = clk;
  r->site = site;
  r->k = k;
  r->created_ns = steady_ns();
  if (p->insp.load(std::memory_order_relaxed) & tracked) {
    r->parent = record_of(p);  // alive: the caller holds a reference to p
    r->parent->children.fetch_add(1, std::memory_order_relaxed);
    r->nearest_cancelable = p->nearest_cancelable == p ? r->parent : r->parent->nearest_cancelable;
  }
  if (n->nearest_cancelable == n) r->nearest_cancelable = r;
  if (!n->nearest_cancelable) r->nearest_cancelable = nullptr;  // without_cancel: never done
  r->shard = my_shard();
  {
    shard& s = shards[r->shard];
    tiny_lock lock(s.mu);
    r->next = s.head;
    if (r->next) r->next->prev = r;
    s.head = r;
    ++s.size;
    r->id = (++s.seq << shard_bits) | r->shard;
  }
  n->ops = &r->ops;
  n->insp.store(tracked, std::memory_order_relaxed);
  if (n->nearest_cancelable == n) {
    // Never marked by cancel's lock-free path, which skips on_cancel.
    auto* c = static_cast<cancel_node*>(n);
    c->state.store(c->state.load(std::memory_order_relaxed) | st_busy, std::memory_order_relaxed);
  }
  return r;
}

/// Makes a tracked node visible to reports, once its derivation has linked it.
inline void finish(record* r) noexcept {
  if (!r) return;
  if (r->nearest_cancelable == r) {
    const auto* c = static_cast<const cancel_node*>(r->n);
    if (c->state.load(std::memory_order_acquire) & st_done) note_done(r, r->created_ns);  // born done
  }
  r->visible.store(true, std::memory_order_release);
}

/// Called by a cancel handle about to drop its reference.
inline void note_handle_dropped(node* n) noexcept {
  n->insp.fetch_or(handle_gone, std::memory_order_relaxed);
}

/// Runs `f(const record&, const node&)` for every visible record, one shard
/// at a time, under that shard's mutex (so `f` must not derive, cancel or
/// destroy contexts, nor block).
template <class F>
void for_each(F&& f) {
  for (shard& s : shards) {
    tiny_lock lock(s.mu);
    for (const record* r = s.head; r; r = r->next)
      if (r->visible.load(std::memory_order_acquire)) f(*r);
  }
}

}  // namespace ctx::detail::insp
