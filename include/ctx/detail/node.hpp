// SPDX-License-Identifier: MIT
// Context nodes: reference counting, the cancellation tree, and the cancel algorithm.
//
// Thread safety: a node's immutable part (kind, ops, parent,
// nearest_cancelable, deadline_holder, key_bloom, a value node's key and
// value) is written before the node is published and never again. A cancel
// node's mutable part is guarded by its own mutex (child list head, callback
// list, cause, stop source) or by its cancelable parent's mutex (its sibling
// links and `linked`). The state word is marked done under the node's mutex
// (mark_locked, a release store) and read lock-free with acquire order; the
// cause is written before that store, so a reader that sees `st_done` sees
// the final err and cause. Two exceptions: a node with nothing attached
// (state word 0, see st_busy) is marked done by a compare-and-swap without
// its mutex, and then its cause is the empty one it always had; and
// st_settled is added without the mutex, by a read-modify-write of the cancel
// that marked the node (settle), so that flags set meanwhile are kept.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string_view>
#include <system_error>
#include <thread>

#include "../error.hpp"
#include "futex.hpp"
#include "intrusive_list.hpp"
#include "node_cache.hpp"
#include "tiny_mutex.hpp"

namespace ctx::detail {

enum class node_kind : std::uint8_t {
  background,          // static root
  todo,                // static root
  cancel,              // with_cancel
  deadline,            // with_deadline / with_timeout that set a new, earlier deadline
  inherited_deadline,  // with_deadline / with_timeout whose parent's deadline is earlier
  stop_token,          // with_stop_token
  value,               // with_value
  without_cancel,      // without_cancel
};

struct node;
struct cancel_node;
struct callback_rec;

/// Per-type operations of a node (a hand-made vtable: static roots stay constinit).
struct node_ops {
  void (*destroy)(node*) noexcept;           // deletes the node; must not release the parent
  void (*on_cancel)(cancel_node*) noexcept;  // after marking done, outside all locks (timers)
};

/// The part every node has.
struct node {
  constexpr node(node_kind k, const node_ops* o, node* p, cancel_node* cancelable, const node* deadline,
                 std::uint64_t keys, bool statically_allocated) noexcept
      : ops(o),
        refs(1),
        kind(k),
        is_static(statically_allocated),
        insp(0),
        parent(p),
        nearest_cancelable(cancelable),
        deadline_holder(deadline),
        key_bloom(keys) {}

  const node_ops* ops;
  std::atomic<std::uint32_t> refs;
  node_kind kind;
  bool is_static;
  // Inspection (detail/inspect_registry.hpp): 0 for an untracked node. Sits in
  // what was padding, so the node does not grow.
  std::atomic<std::uint8_t> insp;
  node* parent;                     // owns a reference; nullptr for roots
  cancel_node* nearest_cancelable;  // self, or the nearest ancestor that can be cancelled; nullptr if none
  const node* deadline_holder;  // the deadline_node whose `when` is the effective deadline; nullptr if none
  std::uint64_t key_bloom;      // one bit per key of every value node on the chain
};

inline constexpr std::uint32_t st_done = 1;     // err and cause are final
inline constexpr std::uint32_t st_settled = 2;  // every descendant is done too
inline constexpr std::uint32_t st_err_shift = 2;
// A thread sleeps on the state word (context::wait, a losing cancel): set
// under the node's mutex, kept by every later write, so that the writer of
// st_done or st_settled knows whether to wake anyone (no system call, no
// fence when nobody waits).
inline constexpr std::uint32_t st_waiters = std::uint32_t{1} << 31;
// Something is attached to the node, or may be: a child, an after_func, a
// stop source, a waiter; or it has a timer or a stop callback of its own.
// Sticky. A node whose state word is 0 (live, nothing attached) can be
// cancelled by one compare-and-swap without its mutex (cancel's fast path);
// every writer that attaches something sets st_busy first, by a
// read-modify-write under the mutex, so either it sees st_done or the fast
// path fails and the cancel takes the mutex.
inline constexpr std::uint32_t st_busy = std::uint32_t{1} << 30;
inline constexpr std::uint32_t st_flags = st_waiters | st_busy;

[[nodiscard]] constexpr std::uint32_t done_state(errc e) noexcept {
  return st_done | (static_cast<std::uint32_t>(e) << st_err_shift);
}
/// An empty error_code. `std::error_code{}` calls std::system_category(), an
/// out-of-line library function, on every construction: err() on a live
/// context would pay a call each time. A copy of this one is two moves.
[[nodiscard]] inline const std::error_code& no_error() noexcept {
  static const std::error_code none;
  return none;
}
/// Makes no_error()'s object before main(), so that no thread is ever inside
/// its first initialisation when another calls fork(): the child would wait
/// for that initialisation's guard for ever.
inline const std::error_code& no_error_made_before_main = no_error();
[[nodiscard]] inline std::error_code err_of_state(std::uint32_t s) noexcept {
  if (!(s & st_done)) return no_error();
  return make_error_code(static_cast<errc>((s & ~st_flags) >> st_err_shift));
}

/// A node that can be cancelled: with_cancel, deadlines, with_stop_token.
struct cancel_node : node {
  cancel_node(node_kind k, const node_ops* o, node* p, const node* d) noexcept
      : node(k, o, p, this, d, p->key_bloom, false),
        state(k == node_kind::cancel || k == node_kind::inherited_deadline ? 0 : st_busy) {}

  /// The nearest cancelable ancestor: the node whose child list holds this one.
  [[nodiscard]] cancel_node* cancelable_parent() const noexcept { return parent->nearest_cancelable; }

  std::atomic<std::uint32_t> state;  // st_* bits; 0 or st_busy at first (a timer or a stop callback)
  tiny_mutex mtx;
  bool linked = false;                 // in cancelable_parent()'s child list; guarded by its mtx
  bool has_hooks = false;              // a stop source or callbacks when marked; owned by the marking cancel
  cancel_node* first_child = nullptr;  // guarded by mtx
  cancel_node* prev_sib = nullptr;     // guarded by cancelable_parent()->mtx
  // While linked: the next sibling, guarded by cancelable_parent()->mtx. Once a cancel has
  // taken the node out of its parent's list (mark_locked): that cancel's
  // worklist link, owned by that one cancel (saves a pointer per node).
  cancel_node* next_sib = nullptr;
  callback_rec* first_callback = nullptr;  // guarded by mtx
  std::error_code cause_ = no_error();     // written before st_done: under mtx, or before publication
  std::stop_source stop_source_{std::nostopstate};  // created lazily; guarded by mtx
};

/// An after_func record (registration in context.hpp is its handle; detail/after_func.hpp
/// links, stops and destroys it; fire_hooks below runs it).
struct callback_rec {
  enum : std::uint32_t { idle, linked, running, finished, removed };

  callback_rec* prev = nullptr;  // links in owner's callback list; guarded by owner->mtx
  callback_rec* next = nullptr;
  void (*invoke)(callback_rec*) noexcept = nullptr;
  void (*destroy)(callback_rec*) noexcept = nullptr;
  cancel_node* owner = nullptr;                // owns a reference; nullptr if the context is never done
  std::atomic<std::uint32_t> run_state{idle};  // one of the enum above
  std::thread::id runner;                      // guarded by owner->mtx
  bool* destroyed = nullptr;                   // set by the runner; used only on the runner's thread
};

/// A cancel node's children (first_child), linked through prev_sib/next_sib.
using child_list = intrusive_list<cancel_node, &cancel_node::prev_sib, &cancel_node::next_sib>;
/// A cancel node's after_func callbacks (first_callback), linked through prev/next.
using callback_list = intrusive_list<callback_rec, &callback_rec::prev, &callback_rec::next>;

// ---------------------------------------------------------------------------
// Reference counting.

inline void acquire(node* n) noexcept {
  if (!n->is_static) n->refs.fetch_add(1, std::memory_order_relaxed);
}

/// Takes a reference unless the count already reached zero (the node is dying).
[[nodiscard]] inline bool try_acquire(node* n) noexcept {
  std::uint32_t r = n->refs.load(std::memory_order_relaxed);
  while (r != 0)
    if (n->refs.compare_exchange_weak(r, r + 1, std::memory_order_acquire, std::memory_order_relaxed))
      return true;
  return false;
}

/// Drops a reference unless it is the last one; true if it did.
[[nodiscard]] inline bool release_unless_last(node* n) noexcept {
  std::uint32_t r = n->refs.load(std::memory_order_relaxed);
  while (r > 1)
    if (n->refs.compare_exchange_weak(r, r - 1, std::memory_order_release, std::memory_order_relaxed))
      return true;
  return false;
}

/// Drops a reference; destroys the node, then its ancestors, iteratively.
inline void release(node* n) noexcept {
  while (n && !n->is_static) {
    if (n->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    node* parent = n->parent;
    n->ops->destroy(n);
    n = parent;
  }
}

// ---------------------------------------------------------------------------
// The tree.

/// Removes `c` from its cancelable parent's child list, if it is still there.
inline void unlink_from_parent(cancel_node* c) noexcept {
  cancel_node* up = c->cancelable_parent();
  if (!up) return;
  tiny_lock lock(up->mtx);
  if (!c->linked) return;
  child_list::unlink(up->first_child, c);
  c->linked = false;
}

/// The state of `c`, with st_busy set: from now on no cancel's fast path can
/// mark `c`, so a live `c` stays live until this thread unlocks its mutex.
/// Precondition: c->mtx held. Sets st_busy by a read-modify-write (acquire:
/// a fast path that won published st_done with it) unless it is set already.
[[nodiscard]] inline std::uint32_t claim_locked(cancel_node* c) noexcept {
  const std::uint32_t s = c->state.load(std::memory_order_acquire);
  if (s & (st_busy | st_done)) return s;
  return c->state.fetch_or(st_busy, std::memory_order_acq_rel) | st_busy;
}

/// Links a new child into its cancelable parent, or makes it born done when
/// the parent is done already. Returns false when the child was born done.
inline bool link_to_parent(cancel_node* c) noexcept {
  cancel_node* up = c->cancelable_parent();
  if (!up) return true;
  tiny_lock lock(up->mtx);
  const std::uint32_t s = claim_locked(up);
  if (s & st_done) {
    c->cause_ = up->cause_;
    c->state.store((s & ~st_flags) | st_settled, std::memory_order_relaxed);
    return false;
  }
  child_list::push_front(up->first_child, c);
  c->linked = true;
  return true;
}

/// Destroys what a cancel node owns besides its memory; used by every destroy().
/// A done node is no longer in its parent's list: it was born done (never
/// linked), or the cancel that marked it was an ancestor's (which emptied the
/// parent's list when it marked the parent) or its own (which unlinked it
/// before returning, holding a reference). So only a live node takes the
/// parent's lock.
inline void retire(cancel_node* c) noexcept {
  if (!(c->state.load(std::memory_order_acquire) & st_done)) unlink_from_parent(c);
}

/// Blocks until `bit` (st_done or st_settled) is set in c's state word.
///
/// The waiter sets st_waiters (and st_busy) under c's mutex: the write that
/// sets `bit` either is a store under that mutex (mark_locked), which then
/// sees the flag and keeps it, or a read-modify-write (settle), which sees it
/// too; cancel's lock-free compare-and-swap expects a word of 0, so it fails
/// once the flags are set. So the writer wakes the waiter, or the waiter sees
/// `bit`; the kernel re-checks the word before sleeping, so a write in
/// between is never missed.
inline void wait_state(cancel_node* c, std::uint32_t bit) noexcept {
  for (;;) {
    if (c->state.load(std::memory_order_acquire) & bit) return;
    std::uint32_t s;
    {
      tiny_lock lock(c->mtx);
      s = c->state.fetch_or(st_waiters | st_busy, std::memory_order_acquire) | st_waiters | st_busy;
    }
    if (!(s & bit)) futex_wait(c->state, s);
  }
}

/// Wakes the threads in wait_state on `c`, if any; `s` is the state word as
/// this thread last wrote or read it after setting st_done or st_settled.
inline void wake_state_waiters(cancel_node* c, std::uint32_t s) noexcept {
  if (s & st_waiters) [[unlikely]]
    futex_wake_all(c->state);
}

inline void wait_settled(cancel_node* c) noexcept { wait_state(c, st_settled); }

/// Marks `n` done and empties its child list: every child that is not being
/// destroyed moves onto `work` with a reference (a child whose count is zero
/// is dropped: nobody can observe it any more).
/// Precondition: n->mtx held, and `claimed` is what claim_locked(n) returned,
/// without st_done (so no fast path can mark `n` meanwhile, nor can any other
/// writer change the word: the plain store below is the only write).
inline void mark_locked(cancel_node* n, std::uint32_t claimed, std::uint32_t done_bits,
                        const std::error_code& cause, cancel_node*& work) noexcept {
  // Hooks added after this point see st_done and run themselves (stop_token()
  // makes a stopped source, after_func runs f at once): fire() need only look
  // at a node that had some now.
  n->has_hooks = n->stop_source_.stop_possible() || n->first_callback != nullptr;
  n->cause_ = cause;
  // A leaf is settled as soon as it is done: no child can be linked to a done
  // node (link_to_parent makes it born done), so settle() skips its RMW.
  const std::uint32_t leaf = n->first_child ? 0 : st_settled;
  n->state.store(done_bits | leaf | (claimed & st_flags), std::memory_order_release);
  for (cancel_node* c = n->first_child; c;) {
    cancel_node* next = c->next_sib;
    c->linked = false;
    c->prev_sib = c->next_sib = nullptr;
    if (try_acquire(c)) {  // a child whose count is zero is being destroyed: nothing to cancel
      c->next_sib = work;
      work = c;
    }
    c = next;
  }
  n->first_child = nullptr;
}

/// Cancel's lock-free path: marks `c` done and settled if its state word is
/// still 0 (live, nothing attached, no waiter; see st_busy). Only for a cause
/// that stays empty: `c`'s cause is not written. On failure, `s` holds the word.
[[nodiscard]] inline bool try_mark_bare(cancel_node* c, std::uint32_t done_bits, std::uint32_t& s) noexcept {
  s = 0;
  return c->state.compare_exchange_strong(s, done_bits | st_settled, std::memory_order_acq_rel,
                                          std::memory_order_acquire);
}

/// Sets st_settled on `n` (unless mark_locked did, for a leaf) and wakes
/// whoever waits for st_done or st_settled on it. Called by the cancel that
/// marked `n`, after marking its whole subtree. A waiter may add st_waiters
/// meanwhile (wait_state, under the mutex), hence a read-modify-write here.
inline void settle(cancel_node* n) noexcept {
  std::uint32_t s = n->state.load(std::memory_order_relaxed);
  if (!(s & st_settled)) s = n->state.fetch_or(st_settled, std::memory_order_release);
  wake_state_waiters(n, s);
}

/// fire() for a node that had a stop source or callbacks when it was marked.
inline void fire_hooks(cancel_node* n) noexcept {
  std::stop_source src{std::nostopstate};
  {
    tiny_lock lock(n->mtx);
    src = n->stop_source_;
  }
  if (src.stop_possible()) src.request_stop();
  if (n->ops->on_cancel) n->ops->on_cancel(n);
  for (;;) {
    bool destroyed = false;
    callback_rec* rec;
    {
      tiny_lock lock(n->mtx);
      rec = callback_list::pop_front(n->first_callback);
      if (!rec) break;
      rec->runner = std::this_thread::get_id();
      rec->destroyed = &destroyed;
      rec->run_state.store(callback_rec::running, std::memory_order_relaxed);
    }
    rec->invoke(rec);  // noexcept: a throwing callback terminates, as with std::stop_callback
    if (!destroyed) {
      // Under the lock, so that a registration being destroyed on another
      // thread frees `rec` only after this thread stopped touching it.
      tiny_lock lock(n->mtx);
      rec->destroyed = nullptr;
      // seq_cst: ordered before notify_all()'s seq_cst check for waiters, as
      // std::atomic::wait's protocol needs (a release store may be reordered
      // after that load, and the waiter in destroy_callback be missed).
      rec->run_state.store(callback_rec::finished, std::memory_order_seq_cst);
      rec->run_state.notify_all();
    }
  }
}

/// Runs what a node triggers once done: its stop source, its timer's removal,
/// its after_func callbacks. Called outside all locks; may run user code. A
/// node with nothing of that (the common leaf) costs two loads here.
/// Precondition: the caller holds a reference to `n` that no callback can
/// drop (a reference of the cancel's own).
inline void fire(cancel_node* n) noexcept {
  if (n->has_hooks) [[unlikely]]
    fire_hooks(n);
  else if (n->ops->on_cancel)
    n->ops->on_cancel(n);
}

/// fire() for the node a cancel was called on, whose caller's reference a
/// callback may drop: a callback may destroy the handle whose call runs it,
/// its own registration and the last context (the documentation allows each),
/// and fire_hooks reads the node after every callback. So the cancel takes a
/// reference of its own first, before any user code can run. Only a node with
/// hooks pays for it (two atomic operations beside its mutex); the hot path,
/// a cancel with nothing attached, pays nothing.
/// Precondition: the caller holds a reference to `n`, and no user code ran
/// since it was checked.
inline void fire_called(cancel_node* n) noexcept {
  if (n->has_hooks) [[unlikely]] {
    acquire(n);
    fire_hooks(n);
    release(n);  // may destroy `n` (and its ancestors' values): nothing touches it afterwards
  } else if (n->ops->on_cancel) {
    n->ops->on_cancel(n);  // removes a timer: no user code
  }
}

/// Cancels `root` and every descendant.
///
/// `cause == nullptr` keeps the cause stored in the node (a deadline's cause).
/// When this returns, `root` and all its descendants are done, also when
/// another thread won the race to cancel: the loser waits until the winner
/// has marked the whole subtree (which runs no user code, so it cannot
/// deadlock on callbacks). Stop requests and callbacks of the nodes this call
/// marked run on this thread before it returns.
inline void cancel(cancel_node* root, errc e, const std::error_code* cause) noexcept {
  // Settled: done with every descendant, so there is nothing to do or wait
  // for (the common `cancel(); ~handle` pair pays one load for the second).
  std::uint32_t root_state = root->state.load(std::memory_order_acquire);
  if (root_state & st_settled) return;
  // Fast path: nothing attached (no child, callback, stop source, waiter,
  // timer) and no cause to record: one compare-and-swap, no mutex.
  if (root_state == 0 && cause && !*cause) {
    if (try_mark_bare(root, done_state(e), root_state)) {
      unlink_from_parent(root);
      return;  // nothing to fire: plain nodes have no on_cancel, and nothing was attached
    }
    if (root_state & st_settled) return;  // another fast path won
  }
  cancel_node* work = nullptr;
  root->mtx.lock();
  root_state = claim_locked(root);
  if (root_state & st_done) {
    root->mtx.unlock();
    wait_settled(root);
    return;
  }
  const std::error_code final_cause = cause ? *cause : root->cause_;
  mark_locked(root, root_state, done_state(e), final_cause, work);
  root->mtx.unlock();
  if (!work) {  // no child to mark (the common `cancel()` of a request's own context)
    settle(root);
    unlink_from_parent(root);
    fire_called(root);
    return;
  }

  // Phase 1: mark the whole subtree, iteratively (a chain of a million levels
  // costs no stack). Children already done belong to another thread's cancel:
  // wait until that one has marked its subtree.
  //
  // A reference that phase 1 took is dropped in phase 1 only when it is not
  // the last one: destroying a node can destroy its ancestors' values, user
  // code, which must not run while the subtree is half marked. A leaf with
  // nothing to fire is finished here, so the common fan-out (many plain
  // leaves, each still referenced by its owner) touches each child once.
  cancel_node* marked = nullptr;      // nodes that still need settle() or fire()
  cancel_node* to_release = nullptr;  // nodes that only need their reference dropped
  const auto drop_later = [&to_release](cancel_node* c) noexcept {
    if (release_unless_last(c)) return;
    c->next_sib = to_release;
    to_release = c;
  };
  const std::uint32_t bits = done_state(e);
  while (work) {
    cancel_node* c = work;
    work = c->next_sib;
    // A plain leaf with nothing attached: the same fast path as above.
    std::uint32_t child_state;
    if (!final_cause && c->state.load(std::memory_order_relaxed) == 0 &&
        try_mark_bare(c, bits, child_state)) {
      drop_later(c);
      continue;
    }
    c->mtx.lock();
    child_state = claim_locked(c);
    if (child_state & st_done) {
      c->mtx.unlock();
      wait_settled(c);
      drop_later(c);
      continue;
    }
    mark_locked(c, child_state, bits, final_cause, work);
    c->mtx.unlock();
    if (const std::uint32_t s = c->state.load(std::memory_order_relaxed);
        s & st_settled) {  // a leaf: settled when marked
      wake_state_waiters(c, s);
      if (!c->has_hooks && !c->ops->on_cancel) {
        drop_later(c);
        continue;
      }
    }
    c->next_sib = marked;
    marked = c;
  }
  settle(root);
  for (cancel_node* m = marked; m; m = m->next_sib) settle(m);

  // A cancelled child leaves its parent's list at once.
  unlink_from_parent(root);

  // Phase 2: wake-ups and callbacks, then drop the references phase 1 took
  // (which keep every marked descendant alive through its own callbacks).
  fire_called(root);
  while (marked) {
    cancel_node* m = marked;
    marked = m->next_sib;
    fire(m);
    release(m);
  }
  while (to_release) {
    cancel_node* r = to_release;
    to_release = r->next_sib;
    release(r);
  }
}

// ---------------------------------------------------------------------------
// Static roots and the node types that need no clock.

inline constexpr node_ops static_ops{nullptr, nullptr};
inline constinit node background_node{node_kind::background, &static_ops, nullptr, nullptr, nullptr, 0, true};
inline constinit node todo_node{node_kind::todo, &static_ops, nullptr, nullptr, nullptr, 0, true};

[[nodiscard]] inline std::uint64_t key_bit(const void* key) noexcept {
  return std::uint64_t{1} << ((reinterpret_cast<std::uintptr_t>(key) * 0x9E3779B97F4A7C15ull) >> 58);
}

struct value_node_base : node {
  value_node_base(node* p, const void* k, std::string_view name) noexcept
      : node(node_kind::value, nullptr, p, p->nearest_cancelable, p->deadline_holder,
             p->key_bloom | key_bit(k), false),
        key(k),
        key_name(name) {}
  const void* key;
  std::string_view key_name;
};

template <class T>
struct value_node final : value_node_base {
  static void destroy(node* n) noexcept { delete static_cast<value_node*>(n); }
  static constexpr node_ops ops_{&destroy, nullptr};
  template <class U>
  value_node(node* p, const void* k, std::string_view name, U&& v)
      : value_node_base(p, k, name), value(static_cast<U&&>(v)) {
    ops = &ops_;
  }
  T value;
};

/// without_cancel's node: keeps the values of the chain above it, cuts its
/// cancellation and its deadline (no cancelable node, no deadline holder).
struct without_cancel_node final : node {
  static void destroy(node* n) noexcept { delete static_cast<without_cancel_node*>(n); }
  static constexpr node_ops ops_{&destroy, nullptr};
  explicit without_cancel_node(node* p) noexcept
      : node(node_kind::without_cancel, &ops_, p, nullptr, nullptr, p->key_bloom, false) {}
};

struct plain_cancel_node final : cancel_node, cached_node<plain_cancel_node> {
  static void destroy(node* n) noexcept {
    auto* c = static_cast<plain_cancel_node*>(n);
    retire(c);
    delete c;
  }
  static constexpr node_ops ops_{&destroy, nullptr};
  plain_cancel_node(node_kind k, node* p, const node* d) noexcept : cancel_node(k, &ops_, p, d) {}
};

struct stop_token_node final : cancel_node {
  struct on_stop {
    stop_token_node* self;
    void operator()() const noexcept {
      if (!try_acquire(self)) return;  // being destroyed: nobody can observe it any more
      cancel(self, errc::canceled, nullptr);
      release(self);
    }
  };
  static void destroy(node* n) noexcept {
    auto* c = static_cast<stop_token_node*>(n);
    c->reg.reset();  // waits for a callback running on another thread
    retire(c);
    delete c;
  }
  static constexpr node_ops ops_{&destroy, nullptr};
  explicit stop_token_node(node* p) noexcept
      : cancel_node(node_kind::stop_token, &ops_, p, p->deadline_holder) {}
  std::optional<std::stop_callback<on_stop>> reg;
};

}  // namespace ctx::detail
