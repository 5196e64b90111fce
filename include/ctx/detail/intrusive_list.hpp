// SPDX-License-Identifier: MIT
// A doubly linked intrusive list: the links are two pointer members of the
// element, the head is a plain pointer held elsewhere.
//
// Thread safety: none of its own. The caller holds whatever lock guards the
// head and the links (for ctx's lists, a cancel node's mutex).
#pragma once

namespace ctx::detail {

/// Operations on a list of `T` threaded through `T::*Prev` and `T::*Next`,
/// whose first element is `head` (nullptr when empty). An element in no list
/// has both links null. No allocation, no owning: the list never frees.
template <class T, T* T::*Prev, T* T::*Next>
struct intrusive_list {
  /// Makes `x` the first element. Precondition: `x` is in no list.
  static void push_front(T*& head, T* x) noexcept {
    T* const first = head;  // read once: the stores below may alias `head` for the compiler
    x->*Next = first;
    if (first) first->*Prev = x;
    head = x;
  }

  /// Takes `x` out of the list whose first element is `head`, and clears its
  /// links. Precondition: `x` is in that list.
  static void unlink(T*& head, T* x) noexcept {
    T* const prev = x->*Prev;
    T* const next = x->*Next;
    if (prev)
      prev->*Next = next;
    else
      head = next;
    if (next) next->*Prev = prev;
    x->*Prev = x->*Next = nullptr;
  }

  /// Takes the first element out of the list and returns it; nullptr if empty.
  [[nodiscard]] static T* pop_front(T*& head) noexcept {
    T* x = head;
    if (x) unlink(head, x);
    return x;
  }
};

}  // namespace ctx::detail
