// SPDX-License-Identifier: MIT
// ctx::curl: libcurl transfers that end when a context is done.
//
// perform() runs an easy handle's transfer on the calling thread through a
// multi handle that the thread keeps and reuses (with its connection cache),
// waiting in curl_multi_poll(). A std::stop_callback on the context's stop
// token calls curl_multi_wakeup() and nothing else; the woken thread sees the
// context done, removes the transfer from the multi handle (curl closes its
// connection) and returns `c.err()`. A deadline reaches it the same way (the
// timer thread, or manual_clock::advance, requests stop), so it bounds name
// resolution, connect and transfer alike. No progress callback is used or
// needed, and no option of the easy handle is changed but one:
// CURLOPT_QUICK_EXIT (see perform()).
//
// Thread safety: perform() and perform_all() may be called on any number of
// threads at once, each thread with its own multi handle and its own easy
// handles (an easy handle is used by one thread at a time, as libcurl
// requires). Cancellation may come from any thread: the stop request
// happens-before the blocked call returns the context's error. On one thread
// the calls do not nest: perform() from inside a callback of a transfer that
// perform() runs on the same thread fails with CURLE_RECURSIVE_API_CALL.
// Call curl_global_init() before the first call, as libcurl requires.
#pragma once

#include <curl/curl.h>
#include <pthread.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <system_error>
#include <vector>

#include "context.hpp"

namespace ctx::curl {

/// The error category of libcurl's `CURLcode`s: an error's value is the
/// `CURLcode` and its message is curl_easy_strerror()'s. Name "curl".
///
/// CURLE_OPERATION_TIMEDOUT (the handle's own CURLOPT_TIMEOUT or
/// CURLOPT_CONNECTTIMEOUT) is equivalent to `std::errc::timed_out`, as
/// `ctx::errc::deadline_exceeded` is; CURLE_OUT_OF_MEMORY to
/// `std::errc::not_enough_memory`.
[[nodiscard]] const std::error_category& category() noexcept;

/// Makes a `std::error_code` of category() (`{}` for CURLE_OK).
[[nodiscard]] std::error_code make_error_code(CURLcode e) noexcept;

/// Performs the transfer of `easy` on the calling thread, as
/// curl_easy_perform() does, until it completes or `c` is done.
///
/// Returns `{}` when the transfer completed (also when `c` became done in the
/// same instant: a completed transfer is never reported as cancelled);
/// exactly `c.err()` when `c` ended it, or when it failed while `c` was done
/// (a done context wins over a failure, e.g. a progress callback of the
/// caller's that aborted because it saw the context done); else an error in
/// category() with curl's code, e.g. CURLE_COULDNT_RESOLVE_HOST,
/// CURLE_COULDNT_CONNECT, CURLE_OPERATION_TIMEDOUT (the handle's own
/// timeouts), CURLE_HTTP_RETURNED_ERROR (with CURLOPT_FAILONERROR). Errors
/// of the multi interface are mapped as curl_easy_perform() maps them
/// (CURLE_OUT_OF_MEMORY, else CURLE_BAD_FUNCTION_ARGUMENT: a null handle, or
/// one already in a multi handle), except CURLE_RECURSIVE_API_CALL, also
/// returned when perform() is called from inside a callback of a transfer
/// that perform() or perform_all() runs on the same thread.
///
/// A done context returns at once: nothing is resolved, connected or sent.
///
/// Limits: the effective limit of a transfer is the earlier of the context's
/// deadline and the handle's own CURLOPT_TIMEOUT(_MS)/CURLOPT_CONNECTTIMEOUT,
/// which are left alone. Whichever comes first ends it: the context's with
/// `c.err()` (`errc::deadline_exceeded`), curl's with CURLE_OPERATION_TIMEDOUT.
///
/// After `c` ended a transfer, `easy` is idle, in no multi handle, with its
/// options unchanged (but for CURLOPT_QUICK_EXIT below), and may be performed
/// again at once, by perform() or curl_easy_perform(). Its connection was
/// closed (an HTTP/2 stream is reset instead) and never goes back to the
/// cache; nothing of the transfer is leaked. What the transfer delivered
/// before the cancel (headers, part of a body) was already passed to the
/// handle's callbacks. A request may have reached the server before the
/// cancel (a POST may have been processed): the library never sends it again.
///
/// CURLOPT_QUICK_EXIT (curl >= 7.87) is set to 1 on `easy`, and stays set:
/// without it, removing a transfer that is still resolving its host name
/// waits for the resolver thread's getaddrinfo() to return (seconds with an
/// unresponsive DNS server), so a cancel could not end it. With it, curl
/// leaves that thread to finish on its own and free its memory when
/// getaddrinfo() returns. With older curl, a cancel during resolution waits
/// for getaddrinfo().
///
/// The thread's multi handle: made on the first call on a thread (never
/// shared between threads), kept with its connection cache until the thread
/// exits or thread_cleanup() is called, so connections are reused across
/// calls and easy handles. As for any easy handle in a multi handle, the
/// handle's CURLOPT_MAXCONNECTS is ignored (the cache holds curl's default of
/// 4 per handle added; set CURLMOPT_MAXCONNECTS on thread_multi() to change
/// it). curl_multi_add_handle() discards the easy handle's own connection
/// cache left by an earlier curl_easy_perform(). A process made by fork()
/// does not touch the multi handle its parent's thread had: it makes its own
/// (the inherited one, whose sockets the parent still uses, is left alone and
/// its memory leaked in the child).
template <class Clock>
[[nodiscard]] std::error_code perform(const basic_context<Clock>& c, CURL* easy);

/// What perform_all() does with the other transfers when one fails.
enum class on_error {
  cancel_rest,  ///< stop them at once (their result: `errc::canceled`), as a task_group does
  finish_rest,  ///< let them run to completion (or until the context is done)
};

/// Performs the transfers of every handle in `easies` concurrently on the
/// calling thread, under one context: a fan-out of requests that returns when
/// all are complete, at the first failure (with on_error::cancel_rest, the
/// default), or when `c` is done.
///
/// Returns the first failure in time order: `{}` when every transfer
/// completed; a transfer's curl error (category()); or `c.err()` when `c`
/// ended the transfers that were still running before any had failed.
/// `results`, if not empty, must have one element per handle and receives
/// each transfer's outcome: `{}` if it completed, its curl error, `c.err()`
/// if `c` ended it (or it failed while `c` was done), or
/// `ctx::errc::canceled` if an earlier failure stopped it (cancel_rest).
/// Transfers that completed before a failure keep their `{}`: their data is
/// whole. HTTP status codes are not failures unless a handle sets
/// CURLOPT_FAILONERROR.
///
/// Each transfer has perform()'s guarantees: a done context starts nothing;
/// a stopped transfer's handle is idle and reusable, its connection closed,
/// and no request is sent twice. If a handle cannot be added (null, already
/// in a multi handle, listed twice), nothing is started and every result is
/// that error (CURLE_BAD_FUNCTION_ARGUMENT). `results` of the wrong size:
/// CURLE_BAD_FUNCTION_ARGUMENT, nothing started. An empty `easies` returns
/// `{}` (or `c.err()` if `c` is done).
///
/// The transfers share the thread's multi handle (HTTP/2 requests to one
/// host may share a connection); all of them start at once (to limit
/// connections per host, set CURLMOPT_MAX_HOST_CONNECTIONS on thread_multi()).
/// Throws std::bad_alloc (before anything is started).
///
/// Example:
/// \code
///   std::vector<CURL*> shards = make_requests(...);
///   std::vector<std::error_code> each(shards.size());
///   if (std::error_code ec = ctx::curl::perform_all(request, shards, each)) return ec;
/// \endcode
template <class Clock>
[[nodiscard]] std::error_code perform_all(const basic_context<Clock>& c, std::span<CURL* const> easies,
                                          std::span<std::error_code> results = {},
                                          on_error policy = on_error::cancel_rest);

/// The calling thread's multi handle, made if the thread has none yet (null
/// if curl_multi_init() fails, and once the thread's exit has cleaned it up):
/// for curl_multi_setopt() only, e.g. CURLMOPT_MAXCONNECTS or
/// CURLMOPT_MAX_HOST_CONNECTIONS. Do not add easy handles to it or drive it
/// yourself. Settings are lost with thread_cleanup(), at thread exit and in
/// a child made by fork(). A perform() from a thread_local destructor that
/// runs after the thread's multi handle was cleaned up uses a multi handle of
/// its own, cleaned up when it returns.
[[nodiscard]] CURLM* thread_multi() noexcept;

/// Closes the calling thread's multi handle and every connection in its
/// cache now; the thread's next perform() makes a new one. Done
/// automatically when the thread exits; call it on the main thread before
/// curl_global_cleanup(), which must come after every connection is closed.
/// Does nothing when the thread has no multi handle, or when called from
/// inside a callback of a transfer that perform() runs on this thread.
void thread_cleanup() noexcept;

// ---------------------------------------------------------------------------
// Implementation.

namespace detail {

class curl_category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "curl"; }
  std::string message(int v) const override { return curl_easy_strerror(static_cast<CURLcode>(v)); }
  std::error_condition default_error_condition(int v) const noexcept override {
    switch (v) {
      case CURLE_OPERATION_TIMEDOUT:
        return std::errc::timed_out;
      case CURLE_OUT_OF_MEMORY:
        return std::errc::not_enough_memory;
      default:
        return {v, *this};
    }
  }
};

/// True once the calling thread's multi holder is destroyed (the thread is
/// exiting). Trivially destructible, so the destructors of other thread_local
/// objects, which may run after the holder's, can read it.
[[nodiscard]] inline bool& this_thread_multi_gone() noexcept {
  thread_local bool gone = false;
  return gone;
}

/// One thread's multi handle, and whether a call on this thread is using it.
struct thread_multi_holder {
  CURLM* multi = nullptr;
  bool busy = false;
  thread_multi_holder() = default;
  thread_multi_holder(const thread_multi_holder&) = delete;
  thread_multi_holder& operator=(const thread_multi_holder&) = delete;
  ~thread_multi_holder() {
    if (multi) curl_multi_cleanup(multi);
    multi = nullptr;
    this_thread_multi_gone() = true;
  }
};

[[nodiscard]] inline thread_multi_holder& this_thread_multi_holder() noexcept {
  thread_local thread_multi_holder h;
  return h;
}

/// pthread_atfork child handler: the child has only the thread that forked,
/// whose multi handle's sockets (cached connections, the wake-up socket pair)
/// are shared with the parent. Cleaning it up could send on them (a TLS
/// close_notify on the parent's connection), so it is abandoned; the child
/// makes a fresh one on first use.
inline void forget_multi_after_fork() noexcept { this_thread_multi_holder().multi = nullptr; }

/// The calling thread's multi handle, made on first use; null if curl_multi_init() failed.
[[nodiscard]] inline CURLM* acquire_thread_multi(thread_multi_holder& h) noexcept {
  if (!h.multi) [[unlikely]] {
    static const bool at_fork = ::pthread_atfork(nullptr, nullptr, &forget_multi_after_fork) == 0;
    (void)at_fork;
    h.multi = curl_multi_init();
  }
  return h.multi;
}

/// Marks the thread's multi handle in use for one call; refuses a nested call.
///
/// During thread exit, after the thread's holder is destroyed (a call from
/// the destructor of a thread_local object constructed before it), the call
/// gets a multi handle of its own, cleaned up when the lease goes: the
/// thread's was cleaned up already, and keeping a new one would leak it and
/// its connections.
class multi_lease {
 public:
  explicit multi_lease(thread_multi_holder& h) noexcept : h_(h) {
    if (this_thread_multi_gone()) [[unlikely]] {
      temporary_ = owned_ = true;
      multi_ = curl_multi_init();
      return;
    }
    if (h_.busy) return;
    h_.busy = true;
    owned_ = true;
    multi_ = acquire_thread_multi(h_);
  }
  multi_lease(const multi_lease&) = delete;
  multi_lease& operator=(const multi_lease&) = delete;
  ~multi_lease() {
    if (temporary_) {
      if (multi_) curl_multi_cleanup(multi_);
    } else if (owned_) {
      h_.busy = false;
    }
  }
  /// CURLE_OK with multi() usable, or why not.
  [[nodiscard]] CURLcode status() const noexcept {
    if (!owned_) return CURLE_RECURSIVE_API_CALL;
    return multi_ ? CURLE_OK : CURLE_OUT_OF_MEMORY;
  }
  [[nodiscard]] CURLM* multi() const noexcept { return multi_; }

 private:
  thread_multi_holder& h_;
  CURLM* multi_ = nullptr;
  bool owned_ = false;
  bool temporary_ = false;  // multi_ is this call's own (thread exit)
};

/// A multi interface error as a CURLcode, as curl_easy_perform() maps them.
[[nodiscard]] inline CURLcode from_multi(CURLMcode mc) noexcept {
  switch (mc) {
    case CURLM_OK:
      return CURLE_OK;
    case CURLM_OUT_OF_MEMORY:
      return CURLE_OUT_OF_MEMORY;
    case CURLM_RECURSIVE_API_CALL:
      return CURLE_RECURSIVE_API_CALL;
    default:
      return CURLE_BAD_FUNCTION_ARGUMENT;
  }
}

/// The stop callback: wakes the thread blocked in curl_multi_poll(), nothing else.
struct wake_multi {
  CURLM* multi;
  void operator()() const noexcept { (void)curl_multi_wakeup(multi); }
};

/// Runs the transfers of `easies` in `multi` until all are complete, the
/// first failure (if `cancel_rest`), or `c` is done. Precondition: `c` is not
/// done, `easies` is not empty, `results` and `running` have its size.
/// Every handle is out of `multi` when it returns.
template <class Clock>
std::error_code drive(const basic_context<Clock>& c, CURLM* multi, std::span<CURL* const> easies,
                      std::span<std::error_code> results, std::span<bool> running, bool cancel_rest) {
  // First, since c.stop_token() may throw std::bad_alloc (the context's stop
  // state is made on first use): then no handle has been added yet.
  std::optional<std::stop_callback<wake_multi>> wake;
  if (const std::stop_token token = c.stop_token(); token.stop_possible())
    wake.emplace(token, wake_multi{multi});

  const std::size_t n = easies.size();
  for (std::size_t i = 0; i < n; ++i) {
    CURLMcode mc = CURLM_BAD_EASY_HANDLE;
    if (easies[i]) {
#if LIBCURL_VERSION_NUM >= 0x075700  // 7.87.0: see perform()'s comment
      (void)curl_easy_setopt(easies[i], CURLOPT_QUICK_EXIT, 1L);
#endif
      mc = curl_multi_add_handle(multi, easies[i]);
    }
    if (mc != CURLM_OK) {  // nothing has started yet: curl starts a transfer in curl_multi_perform()
      for (std::size_t j = 0; j < i; ++j) (void)curl_multi_remove_handle(multi, easies[j]);
      const std::error_code e = make_error_code(from_multi(mc));
      std::fill(results.begin(), results.end(), e);
      return e;
    }
    running[i] = true;
  }
  std::size_t left = n;
  std::error_code first;
  // Ends every transfer still running with `e`: removing a transfer that has
  // not completed makes curl close its connection.
  auto stop_rest = [&](std::error_code e) noexcept {
    for (std::size_t i = 0; i < n; ++i) {
      if (!running[i]) continue;
      (void)curl_multi_remove_handle(multi, easies[i]);
      running[i] = false;
      results[i] = e;
    }
    left = 0;
  };
  auto fail = [&](std::error_code e) noexcept {
    if (!first) first = e;
  };

  while (left > 0) {
    // The context first: once it is done, curl is not asked to move more data.
    if (c.done()) {
      fail(c.err());
      stop_rest(c.err());
      break;
    }
    int still_running = 0;
    CURLMcode mc = curl_multi_perform(multi, &still_running);
    // Every transfer that completed in this round keeps its result, also
    // one whose message comes after a failure's.
    bool failed_now = false;
    int queued = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &queued)) {
      if (msg->msg != CURLMSG_DONE) continue;
      const auto it = std::find(easies.begin(), easies.end(), msg->easy_handle);
      if (it == easies.end()) continue;  // not ours: cannot happen (the multi handle is private)
      const auto i = static_cast<std::size_t>(it - easies.begin());
      if (!running[i]) continue;
      const CURLcode code = msg->data.result;            // read before the removal frees the message
      (void)curl_multi_remove_handle(multi, easies[i]);  // complete: a reusable connection goes to the cache
      running[i] = false;
      --left;
      std::error_code e;
      if (code != CURLE_OK) e = c.done() ? c.err() : make_error_code(code);
      results[i] = e;
      if (e) {
        fail(e);
        failed_now = true;
      }
    }
    // A failure because the context is done is handled at the top of the loop.
    if (failed_now && cancel_rest && !c.done()) stop_rest(ctx::errc::canceled);
    if (left == 0) break;
    // curl waits no longer than its own next timeout; a stop request wakes it.
    if (mc == CURLM_OK) mc = curl_multi_poll(multi, nullptr, 0, INT_MAX, nullptr);
    if (mc != CURLM_OK) {
      const std::error_code e = make_error_code(from_multi(mc));
      fail(e);
      stop_rest(e);
    }
  }
  return first;
}

}  // namespace detail

inline const std::error_category& category() noexcept {
  static const detail::curl_category cat;
  return cat;
}

inline std::error_code make_error_code(CURLcode e) noexcept {
  return e == CURLE_OK ? std::error_code() : std::error_code(static_cast<int>(e), category());
}

template <class Clock>
std::error_code perform(const basic_context<Clock>& c, CURL* easy) {
  if (c.done()) return c.err();
  detail::multi_lease lease(detail::this_thread_multi_holder());
  if (const CURLcode e = lease.status()) return make_error_code(e);
  CURL* const easies[1] = {easy};
  std::error_code results[1];
  bool running[1] = {false};
  return detail::drive(c, lease.multi(), easies, results, running, true);
}

template <class Clock>
std::error_code perform_all(const basic_context<Clock>& c, std::span<CURL* const> easies,
                            std::span<std::error_code> results, on_error policy) {
  if (c.done()) {
    std::fill(results.begin(), results.end(), c.err());
    return c.err();
  }
  if (!results.empty() && results.size() != easies.size())
    return make_error_code(CURLE_BAD_FUNCTION_ARGUMENT);
  if (easies.empty()) return {};
  std::vector<std::error_code> own;
  if (results.empty()) {
    own.resize(easies.size());
    results = own;
  }
  std::fill(results.begin(), results.end(), std::error_code());
  const std::unique_ptr<bool[]> running(new bool[easies.size()]());
  detail::multi_lease lease(detail::this_thread_multi_holder());
  if (const CURLcode e = lease.status()) {
    std::fill(results.begin(), results.end(), make_error_code(e));
    return make_error_code(e);
  }
  return detail::drive(c, lease.multi(), easies, results, std::span<bool>(running.get(), easies.size()),
                       policy == on_error::cancel_rest);
}

inline CURLM* thread_multi() noexcept {
  if (detail::this_thread_multi_gone()) return nullptr;  // thread exit: no multi handle to keep
  return detail::acquire_thread_multi(detail::this_thread_multi_holder());
}

inline void thread_cleanup() noexcept {
  if (detail::this_thread_multi_gone()) return;
  detail::thread_multi_holder& h = detail::this_thread_multi_holder();
  if (h.busy || !h.multi) return;
  curl_multi_cleanup(h.multi);
  h.multi = nullptr;
}

}  // namespace ctx::curl
