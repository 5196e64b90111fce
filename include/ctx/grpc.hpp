// SPDX-License-Identifier: MIT
// ctx::grpc: a context's deadline, trace and cancellation on gRPC calls, on
// both sides of the wire (gRPC C++ 1.51 or later; target ctx::grpc).
//
// Client: client_context is a grpc::ClientContext whose deadline and
// `traceparent` metadata come from a context, and which is cancelled
// (TryCancel) when the context is done. TryCancel may block and run user
// code (it takes the ClientContext's mutex, runs the client interceptors and
// flushes gRPC's callback queue on the calling thread), so the context's
// callback, which runs on the thread that cancels (the timer thread for a
// deadline), only queues it for one process-wide canceller thread, started
// by the first client_context.
//
// Server: server_call derives a context from a call's ServerContext: its
// deadline (what the client's grpc-timeout gave, or none), the client's
// `traceparent` metadata, the server's own limit and a parent context. With
// the callback API, gRPC reports a client that cancels or disconnects (and
// the call's deadline) through the reactor's OnCancel() reaction, which
// cancels the context: unary_reactor does this for unary methods, and any
// reactor can call server_call::on_cancel() from its own OnCancel(). The sync
// API has no such notification (only IsCancelled(), which must be polled):
// there the context carries the deadline and trace but is not cancelled when
// the client goes away.
//
// Thread safety: a client_context is used by one call at a time, as a
// grpc::ClientContext is; its cancellation may come from any thread. The
// canceller thread calls TryCancel on a ClientContext only while its
// client_context is alive: the destructor dequeues it and waits for a
// TryCancel already running. A server_call's context() may be copied and
// used from any thread; on_cancel() and cancel() may be called from any
// thread, any number of times.
#pragma once

#include <grpc/support/time.h>
#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>
#include <grpcpp/support/status.h>

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <iterator>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

#include "context.hpp"
#include "error.hpp"
#include "propagation.hpp"

namespace ctx::grpc {

/// The `std::error_category` of gRPC status codes: name "grpc", value a
/// `grpc::StatusCode`, message its name (`"UNAVAILABLE"`, ...). The status's
/// own message is not in the error_code: keep the `grpc::Status` for it.
[[nodiscard]] const std::error_category& category() noexcept;

/// The error rule for a call made with a client_context on `c`: `{}` if `s`
/// is OK; exactly `c.err()` if `c` ended the call (`c` is done and `s` is
/// CANCELLED or DEADLINE_EXCEEDED); `errc::deadline_exceeded`, what `c.err()`
/// is about to be, for DEADLINE_EXCEEDED within 2 ms of `c`'s deadline or
/// after it while `c` is not done yet (gRPC, given `c`'s deadline, ended
/// the call first: it keeps deadlines in whole milliseconds on both sides,
/// so a client's or a server's gRPC timer may fire up to about 2 ms before
/// the deadline it was given); otherwise
/// `{s.error_code(), category()}` (a DEADLINE_EXCEEDED from the server's own
/// limit, earlier than `c`'s deadline, included).
template <class Clock>
[[nodiscard]] std::error_code error(const basic_context<Clock>& c, const ::grpc::Status& s) noexcept;

/// The status a server handler returns for `ec`: OK for `{}`,
/// DEADLINE_EXCEEDED and CANCELLED for the context's two errors, the code
/// itself for an error in category(), UNKNOWN (with `ec.message()`) for
/// anything else. Throws std::bad_alloc.
[[nodiscard]] ::grpc::Status to_status(std::error_code ec);

namespace detail {
/// A ClientContext that the canceller thread may TryCancel; guarded by the canceller's mutex.
struct cancel_target {
  ::grpc::ClientContext* cc;
  cancel_target* prev = nullptr;
  cancel_target* next = nullptr;
  bool queued = false;
};
}  // namespace detail

/// A `grpc::ClientContext` for one call under a context: pass get() to the
/// stub.
///
/// On construction: the deadline is set to `c.remaining()` from now (none if
/// `c` has none), so the server receives it as `grpc-timeout`; `c`'s trace
/// (ctx::propagation::trace_key) is added as `traceparent` metadata; and the
/// call is cancelled (TryCancel, on the canceller thread) as soon as `c` is
/// done, which makes it end with CANCELLED and sends the server a
/// cancellation (RST_STREAM). If `c` is done already, TryCancel runs at once
/// on this thread, before any call starts: the call then ends at once with
/// CANCELLED and sends no request. Set more on get() (metadata, credentials,
/// wait_for_ready) before the call as usual; do not change the deadline.
///
/// Destroy it after the call has completed, as a grpc::ClientContext. The
/// destructor deregisters from `c` and, if the canceller thread is inside
/// this context's TryCancel at that moment, waits for it to return.
/// Not copyable or movable (neither is grpc::ClientContext).
///
/// Example:
///
///     ctx::grpc::client_context cc(c);
///     grpc::Status s = stub->Run(cc.get(), request, &reply);
///     if (std::error_code ec = cc.error(s)) return ec;  // == c.err() if c ended it
template <class Clock = std::chrono::steady_clock>
class client_context {
 public:
  /// Throws std::bad_alloc, or std::system_error if the canceller thread cannot be started.
  explicit client_context(const basic_context<Clock>& c);
  client_context(const client_context&) = delete;
  client_context& operator=(const client_context&) = delete;
  ~client_context();

  /// The grpc::ClientContext to pass to a stub.
  [[nodiscard]] ::grpc::ClientContext* get() noexcept { return &cc_; }
  /// The context the call runs under.
  [[nodiscard]] const basic_context<Clock>& context() const noexcept { return c_; }
  /// ctx::grpc::error(context(), s).
  [[nodiscard]] std::error_code error(const ::grpc::Status& s) const noexcept { return grpc::error(c_, s); }

 private:
  ::grpc::ClientContext cc_;  // declared first: destroyed last, after the deregistration
  basic_context<Clock> c_;
  detail::cancel_target target_{&cc_};
  registration reg_;
};

/// A context for serving one gRPC call: see the file comment.
///
/// The context is a child of `parent` (say, the server's shutdown context)
/// with the call's deadline (what the client's grpc-timeout gave, measured
/// by gRPC from the request's arrival), capped at `limit` from now if given,
/// and with the client's `traceparent` metadata under
/// ctx::propagation::trace_key (a malformed one is ignored; the parent's
/// trace, if any, is kept then). It is cancelled by on_cancel() and
/// cancel(), and when the server_call is destroyed.
template <class Clock = std::chrono::steady_clock>
class server_call {
 public:
  /// Throws std::bad_alloc, or std::system_error if the timer thread cannot be started.
  explicit server_call(const ::grpc::ServerContextBase& sc,
                       const basic_context<Clock>& parent = background<Clock>());
  template <class Rep, class Period>
  server_call(const ::grpc::ServerContextBase& sc, const basic_context<Clock>& parent,
              std::chrono::duration<Rep, Period> limit);

  /// The call's context. Copy it to use it after the call ends (after Finish()).
  [[nodiscard]] const basic_context<Clock>& context() const noexcept { return d_.context; }

  /// For a reactor's OnCancel(): gRPC says the call is over before the
  /// handler finished (the client cancelled or disconnected, or the deadline
  /// passed). Cancels context() at once (err() `errc::canceled`). When this
  /// comes within 10 ms + 1% of the call's deadline, the cause is
  /// `errc::deadline_exceeded`, else `errc::canceled`. The server cannot
  /// know why a client cancelled, but a client's deadline ends its call a
  /// little before the server's: gRPC rounds the timeout it sends up by up
  /// to 1% (to whole milliseconds below 1 s) and measures it before the
  /// request leaves, so the server's deadline is later by that and by the
  /// request's delay in both processes (milliseconds on a loaded machine).
  /// Log cause() to tell a client's deadline from a client that gave up.
  /// Only wakes: never blocks.
  void on_cancel() noexcept;

  /// Cancels context() with `errc::canceled`.
  void cancel() noexcept { d_.cancel(); }

 private:
  server_call(const ::grpc::ServerContextBase& sc, const basic_context<Clock>& parent,
              std::chrono::nanoseconds limit, int);
  derived<Clock> d_;
  // The deadline the client's grpc-timeout gave, and how close to it on_cancel() says it was the deadline.
  std::optional<typename Clock::time_point> client_deadline_;
  typename Clock::duration near_{};
};

/// A `grpc::ServerUnaryReactor` whose server_call context is cancelled when
/// gRPC reports the call cancelled (OnCancel), for unary methods of the
/// callback API. Create it with `new` in the method handler and return it;
/// it deletes itself when gRPC is done with it (OnDone), which also cancels
/// its context. Finish it exactly once, from any thread; after Finish() (or
/// finish()) it may be gone at any moment, so copy context() first if the
/// work needs it afterwards.
///
/// Example:
///
///     grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* sc, const Req* req, Rep* rep) override {
///       auto* call = new ctx::grpc::unary_reactor(sc, server_ctx, 5s);
///       pool.post([call, req, rep] { call->finish(handle(call->context(), *req, *rep)); });
///       return call;
///     }
template <class Clock = std::chrono::steady_clock>
class unary_reactor final : public ::grpc::ServerUnaryReactor {
 public:
  explicit unary_reactor(::grpc::CallbackServerContext* sc,
                         const basic_context<Clock>& parent = background<Clock>())
      : call_(*sc, parent) {}
  template <class Rep, class Period>
  unary_reactor(::grpc::CallbackServerContext* sc, const basic_context<Clock>& parent,
                std::chrono::duration<Rep, Period> limit)
      : call_(*sc, parent, limit) {}

  /// The call's context.
  [[nodiscard]] const basic_context<Clock>& context() const noexcept { return call_.context(); }
  /// Finish(to_status(ec)).
  void finish(std::error_code ec) { Finish(to_status(ec)); }

  void OnCancel() override { call_.on_cancel(); }
  void OnDone() override { delete this; }

 private:
  ~unary_reactor() override = default;
  server_call<Clock> call_;
};

template <class Clock>
unary_reactor(::grpc::CallbackServerContext*, const basic_context<Clock>&) -> unary_reactor<Clock>;
template <class Clock, class Rep, class Period>
unary_reactor(::grpc::CallbackServerContext*, const basic_context<Clock>&, std::chrono::duration<Rep, Period>)
    -> unary_reactor<Clock>;

// ---------------------------------------------------------------------------
// Implementation.

namespace detail {

class grpc_category final : public std::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "grpc"; }
  [[nodiscard]] std::string message(int value) const override {
    static constexpr const char* names[] = {
        "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
        "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
        "DATA_LOSS", "UNAUTHENTICATED"};
    if (value >= 0 && value < static_cast<int>(std::size(names))) return names[value];
    return "gRPC status " + std::to_string(value);
  }
};

/// One thread for the whole process that runs TryCancel for contexts that
/// are done: their callbacks only queue the ClientContext here (a mutex and
/// a notify, no allocation). Immortal, as the timer service is, so a call
/// cancelled while the process exits stays safe.
class canceller {
 public:
  [[nodiscard]] static canceller& instance() {
    static canceller* const c = new canceller;  // intentionally immortal
    return *c;
  }

  /// Starts the thread if it is not running. Throws std::system_error.
  void start() {
    std::lock_guard lock(mu_);
    if (started_) return;
    std::thread(&canceller::run, this).detach();
    started_ = true;
  }

  /// Queues t for TryCancel (once; a t queued or being cancelled is left alone). Only wakes.
  void post(cancel_target* t) noexcept {
    std::lock_guard lock(mu_);
    if (t->queued || current_ == t) return;
    t->queued = true;
    t->prev = tail_;
    t->next = nullptr;
    (tail_ ? tail_->next : head_) = t;
    tail_ = t;
    cv_.notify_one();
  }

  /// After this returns, the thread neither runs nor will run TryCancel on t.
  void forget(cancel_target* t) noexcept {
    std::unique_lock lock(mu_);
    if (t->queued) unlink(t);
    idle_.wait(lock, [&] { return current_ != t; });
  }

 private:
  canceller() {
    // A fork() never inherits the mutex locked, nor a TryCancel in progress;
    // the child has no canceller thread until its next client_context.
    pthread_atfork([] { instance().mu_.lock(); }, [] { instance().mu_.unlock(); },
                   [] {
                     canceller& c = instance();
                     c.started_ = false;
                     c.current_ = nullptr;
                     new (&c.cv_) std::condition_variable();
                     new (&c.idle_) std::condition_variable();
                     c.mu_.unlock();
                   });
  }

  void unlink(cancel_target* t) noexcept {
    (t->prev ? t->prev->next : head_) = t->next;
    (t->next ? t->next->prev : tail_) = t->prev;
    t->prev = t->next = nullptr;
    t->queued = false;
  }

  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return head_ != nullptr; });
      cancel_target* t = head_;
      unlink(t);
      current_ = t;
      lock.unlock();
      t->cc->TryCancel();  // thread-safe in gRPC; may block briefly and run interceptors
      lock.lock();
      current_ = nullptr;
      idle_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;    // the queue is not empty
  std::condition_variable idle_;  // current_ changed
  cancel_target* head_ = nullptr;
  cancel_target* tail_ = nullptr;
  cancel_target* current_ = nullptr;  // whose TryCancel runs now, outside mu_
  bool started_ = false;
};

/// A gpr_timespec span in nanoseconds, saturated.
inline std::chrono::nanoseconds to_nanoseconds(gpr_timespec span) noexcept {
  using ns = std::chrono::nanoseconds;
  constexpr std::int64_t max_sec = ns::max().count() / 1'000'000'000 - 1;
  if (span.tv_sec > max_sec) return ns::max();
  if (span.tv_sec < -max_sec) return ns::min();
  return ns(span.tv_sec * 1'000'000'000 + span.tv_nsec);
}

}  // namespace detail

inline const std::error_category& category() noexcept {
  static const detail::grpc_category c;
  return c;
}

template <class Clock>
std::error_code error(const basic_context<Clock>& c, const ::grpc::Status& s) noexcept {
  if (s.ok()) return {};
  const ::grpc::StatusCode code = s.error_code();
  if (code == ::grpc::StatusCode::CANCELLED || code == ::grpc::StatusCode::DEADLINE_EXCEEDED) {
    if (const std::error_code e = c.err()) return e;
    if (code == ::grpc::StatusCode::DEADLINE_EXCEEDED && c.deadline() &&
        std::chrono::duration<double>(c.remaining()) <=
            std::chrono::milliseconds(2))  // no overflow on any tick
      return errc::deadline_exceeded;
  }
  return {static_cast<int>(code), category()};
}

inline ::grpc::Status to_status(std::error_code ec) {
  if (!ec) return ::grpc::Status::OK;
  if (ec == errc::deadline_exceeded) return {::grpc::StatusCode::DEADLINE_EXCEEDED, ec.message()};
  if (ec == errc::canceled) return {::grpc::StatusCode::CANCELLED, ec.message()};
  if (ec.category() == category()) return {static_cast<::grpc::StatusCode>(ec.value()), ec.message()};
  return {::grpc::StatusCode::UNKNOWN, ec.message()};
}

template <class Clock>
client_context<Clock>::client_context(const basic_context<Clock>& c) : c_(c) {
  detail::canceller::instance().start();
  if (const auto d = c.deadline(); d && *d != Clock::time_point::max()) {
    const std::chrono::nanoseconds left = propagation::detail::ceil_nanoseconds(c.remaining());
    cc_.set_deadline(
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_nanos(left.count(), GPR_TIMESPAN)));
  }
  if (const propagation::traceparent* tp = c.value(propagation::trace_key))
    cc_.AddMetadata(std::string(propagation::traceparent_header), tp->to_string());
  if (c.done()) {
    cc_.TryCancel();  // no call yet: only marks it, so the call ends at once and sends nothing
    return;
  }
  reg_ = after_func(c, [t = &target_] { detail::canceller::instance().post(t); });
}

template <class Clock>
client_context<Clock>::~client_context() {
  reg_ = registration();  // no callback runs, or will run, after this
  detail::canceller::instance().forget(&target_);
}

template <class Clock>
server_call<Clock>::server_call(const ::grpc::ServerContextBase& sc, const basic_context<Clock>& parent)
    : server_call(sc, parent, std::chrono::nanoseconds::max(), 0) {}

template <class Clock>
template <class Rep, class Period>
server_call<Clock>::server_call(const ::grpc::ServerContextBase& sc, const basic_context<Clock>& parent,
                                std::chrono::duration<Rep, Period> limit)
    : server_call(sc, parent, propagation::detail::ceil_nanoseconds(limit), 0) {}

template <class Clock>
server_call<Clock>::server_call(const ::grpc::ServerContextBase& sc, const basic_context<Clock>& parent,
                                std::chrono::nanoseconds limit, int) {
  using ns = std::chrono::nanoseconds;
  ns timeout = limit;
  const gpr_timespec d = sc.raw_deadline();
  if (gpr_time_cmp(d, gpr_inf_future(d.clock_type)) != 0) {
    const gpr_timespec left =
        gpr_time_sub(gpr_convert_clock_type(d, GPR_CLOCK_MONOTONIC), gpr_now(GPR_CLOCK_MONOTONIC));
    const ns call = detail::to_nanoseconds(left);
    timeout = std::min(timeout, call);
    if (call > ns::zero() && call < std::chrono::hours(24 * 365)) {
      client_deadline_ = ctx::detail::deadline_after(Clock::now(), call);  // exact, saturated
      near_ = std::chrono::ceil<typename Clock::duration>(std::chrono::milliseconds(10) + call / 100);
    }
  }
  // The trace: one valid traceparent entry, or none (several are ambiguous, as in HTTP).
  std::optional<propagation::traceparent> tp;
  const auto& md = sc.client_metadata();
  const ::grpc::string_ref name(propagation::traceparent_header.data(),
                                propagation::traceparent_header.size());
  if (md.count(name) == 1) {
    const ::grpc::string_ref v = md.find(name)->second;
    tp = propagation::traceparent::parse(std::string_view(v.data(), v.size()));
  }
  const basic_context<Clock> base = tp ? with_value(parent, propagation::trace_key, *tp) : parent;
  d_ = timeout == ns::max() ? with_cancel(base) : with_timeout(base, timeout);
}

template <class Clock>
void server_call<Clock>::on_cancel() noexcept {
  const bool near = client_deadline_ && Clock::now() + near_ >= *client_deadline_;
  d_.cancel(near ? errc::deadline_exceeded : errc::canceled);
}

}  // namespace ctx::grpc
