// SPDX-License-Identifier: MIT
// ctx::postgres (opt-in, target ctx::postgres): PostgreSQL queries and
// connects (libpq) that return when a context is done.
//
// Every call runs on libpq's asynchronous API (PQconnectStart/PQconnectPoll,
// PQsendQuery/PQsendQueryParams, PQflush, PQconsumeInput, PQisBusy) and
// waits in poll() on the connection's socket plus the calling thread's
// wake-up eventfd, which a std::stop_callback on the context signals: the
// waiting machinery of <ctx/io.hpp>. A deadline reaches it the same way.
//
// A query that the context ends after it was sent is cancelled on the
// server: the woken thread takes libpq's cancel object (PQgetCancel) and
// hands it to a small canceller (at most four threads, started on demand),
// which sends the cancel request (PQcancel: a new connection to the server,
// 11-15 ms over a Unix socket, most of it the server starting a process to
// serve it), and returns at once. The connection then has the cancelled
// query in flight (`PQtransactionStatus(conn) == PQTRANS_ACTIVE`): the next
// ctx::postgres call on it, or `drain`, first waits, under its own context,
// until the cancel request has been served (so that it cannot cancel the
// next query instead) and reads and discards what is left of the cancelled
// query's results. Nothing is sent twice.
//
// Thread safety: as libpq's. A connection is used by one thread at a time;
// different connections may be used on any number of threads at once,
// under one context or many. A cancel or deadline may come from any thread:
// it happens-before the call returns `c.err()`. The canceller's threads
// touch only the copied cancel object and their own state, never the
// connection, so a connection may be closed (PQfinish) right after a call.
#pragma once

#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "condition_variable.hpp"
#include "context.hpp"
#include "detail/wake_fd.hpp"

namespace ctx::postgres {

/// The category of PostgreSQL's errors; its name is "postgres".
///
/// An error's value is the SQLSTATE, five characters packed as PostgreSQL
/// packs them (MAKE_SQLSTATE; "00000", success, is 0); `sqlstate(e)` gives
/// the characters back. The message names the SQLSTATE and its class
/// ("SQLSTATE 42601: syntax error or access rule violation"); the server's
/// own message is `result::message()`. Errors that libpq finds on the client
/// side have SQLSTATEs of class 08: 08001 when a connection could not be
/// made, 08006 when it broke (the server went away), 08003 for no connection.
[[nodiscard]] const std::error_category& category() noexcept;

/// An error of `category()` for `sqlstate` (five characters); `{}` for "00000".
[[nodiscard]] std::error_code make_error_code(std::string_view sqlstate) noexcept;

/// The SQLSTATE of an error of `category()`, or "" for any other error.
[[nodiscard]] std::string sqlstate(std::error_code e);

/// Owns a connection: PQfinish on destruction.
struct finisher {
  void operator()(PGconn* c) const noexcept { PQfinish(c); }
};
using connection = std::unique_ptr<PGconn, finisher>;

/// What `connect` returns: `auto [conn, err, message] = ctx::postgres::connect(c, "...");`
struct connect_result {
  connection conn;        ///< the open connection; null on error
  std::error_code error;  ///< `{}`, `c.err()`, or an error of category() (08001)
  std::string message;    ///< libpq's message when the connection could not be made
};

/// Opens a connection (PQconnectStart, then PQconnectPoll until it is made),
/// waiting on its socket until it is made, fails, or `c` is done.
///
/// A done `c` returns `c.err()` without starting. When `c` ends the attempt,
/// the half-made connection is closed. libpq's `connect_timeout` does not
/// apply: the context is the time limit. Host names are resolved inside
/// PQconnectStart, which blocks: give `hostaddr` (or a socket directory)
/// where resolution may be slow.
template <class Clock>
[[nodiscard]] connect_result connect(const basic_context<Clock>& c, std::string_view conninfo);

/// What a query returned: owns the PGresult; error(), and the rows in text form.
class result {
 public:
  result() noexcept = default;
  result(PGresult* r, std::error_code error, std::string message = {}) noexcept
      : r_(r), error_(error), message_(std::move(message)) {}
  result(result&& o) noexcept
      : r_(std::exchange(o.r_, nullptr)), error_(o.error_), message_(std::move(o.message_)) {}
  result& operator=(result&& o) noexcept {
    if (this != &o) {
      PQclear(std::exchange(r_, std::exchange(o.r_, nullptr)));
      error_ = o.error_;
      message_ = std::move(o.message_);
    }
    return *this;
  }
  ~result() { PQclear(r_); }

  /// `{}` on success; exactly `c.err()` when the context ended the call;
  /// otherwise an error of `category()`: the server's SQLSTATE, or class 08
  /// for the connection's own failures.
  [[nodiscard]] std::error_code error() const noexcept { return error_; }
  /// True on success.
  [[nodiscard]] explicit operator bool() const noexcept { return !error_; }
  /// The SQLSTATE of error() ("42P01"), or "".
  [[nodiscard]] std::string sqlstate() const { return postgres::sqlstate(error_); }
  /// The server's primary message ("relation \"t\" does not exist") or
  /// libpq's, when error() is of category(); "" otherwise.
  [[nodiscard]] std::string_view message() const noexcept { return message_; }

  /// libpq's result: the last statement's result (or the failing one's, with
  /// detail, hint and position: PQresultErrorField); null when the call sent
  /// nothing or the context ended it.
  [[nodiscard]] PGresult* get() const noexcept { return r_; }
  /// Gives up ownership of get(): the caller PQclears it.
  [[nodiscard]] PGresult* release() noexcept { return std::exchange(r_, nullptr); }

  /// Rows and columns of the result (0 without one).
  [[nodiscard]] int rows() const noexcept { return r_ ? PQntuples(r_) : 0; }
  [[nodiscard]] int columns() const noexcept { return r_ ? PQnfields(r_) : 0; }
  /// A value in PostgreSQL's text form ("" for NULL); valid while the result lives.
  [[nodiscard]] std::string_view value(int row, int column) const noexcept {
    return {PQgetvalue(r_, row, column), static_cast<std::size_t>(PQgetlength(r_, row, column))};
  }
  [[nodiscard]] bool is_null(int row, int column) const noexcept { return PQgetisnull(r_, row, column) != 0; }

 private:
  PGresult* r_ = nullptr;
  std::error_code error_;
  std::string message_;
};

/// Runs `sql` (PQsendQuery: one or more statements, the simple protocol)
/// and waits for all of its results, or until `c` is done.
///
/// Returns the last statement's result, or the first failing statement's
/// error (the server runs none after it). A done `c` returns `c.err()`
/// without sending anything. When `c` ends the call after the query was
/// sent, the query is cancelled on the server (see the file comment) and
/// the call returns `c.err()` at once; the query may have completed on the
/// server just before the cancel reached it: a cancelled write is not known
/// to be undone unless it ran in a transaction that is then rolled back.
///
/// The connection afterwards: usable for the next call, which first
/// finishes the cancel. In a transaction block, a cancelled statement leaves
/// the transaction failed (`PQTRANS_INERROR`): roll it back. If `c` ended
/// the call while the query was still being sent (a query larger than the
/// socket's buffer, which the server did not read), the connection is
/// broken on purpose (`PQstatus(conn) == CONNECTION_BAD`): a half-sent
/// message cannot be taken back. Reset it (PQreset) or close it.
template <class Clock>
[[nodiscard]] result exec(const basic_context<Clock>& c, PGconn* conn, std::string_view sql);

/// Runs one statement with parameters `$1`, `$2`, ... bound to `args`
/// (PQsendQueryParams: no SQL text is built from the values). As exec()
/// above otherwise.
///
/// Arguments: `std::nullptr_t` and an empty `std::optional` are NULL;
/// `bool` is "true"/"false"; integers and floating point are sent as text
/// in their shortest exact form, strings (`std::string_view`,
/// `std::string`, `const char*`) as text (which cannot hold a NUL byte, in
/// PostgreSQL), `std::span<const std::byte>` as a binary `bytea`. The server
/// infers each parameter's type from the statement (cast as `$1::int8` where
/// it cannot).
template <class Clock, class... Args>
requires(sizeof...(Args) > 0) [[nodiscard]] result
    exec(const basic_context<Clock>& c, PGconn* conn, std::string_view sql, const Args&... args);

/// Finishes what a cancelled call left on `conn`: waits until the cancel
/// request was served and reads and discards the cancelled query's results.
///
/// Returns `{}` when the connection is idle (at once if nothing was left),
/// `c.err()` when `c` ends first (the work is left for the next call), or
/// the connection's error. Every ctx::postgres call does this first; a pool
/// that hands connections to plain libpq code calls it before.
template <class Clock>
[[nodiscard]] std::error_code drain(const basic_context<Clock>& c, PGconn* conn);

// ---------------------------------------------------------------------------
// Implementation.

namespace detail {

/// PostgreSQL's MAKE_SQLSTATE: six bits per character.
[[nodiscard]] constexpr int pack_sqlstate(std::string_view s) noexcept {
  int v = 0;
  for (std::size_t i = 0; i < 5 && i < s.size(); ++i)
    v += ((static_cast<int>(static_cast<unsigned char>(s[i])) - '0') & 0x3F) << (6 * static_cast<int>(i));
  return v;
}

[[nodiscard]] inline std::string unpack_sqlstate(int v) {
  std::string s(5, '0');
  for (std::size_t i = 0; i < 5; ++i)
    s[i] = static_cast<char>(((v >> (6 * static_cast<int>(i))) & 0x3F) + '0');
  return s;
}

/// The classes of SQLSTATE (the first two characters), from PostgreSQL's Appendix A.
[[nodiscard]] inline std::string_view sqlstate_class(std::string_view cls) noexcept {
  static constexpr std::pair<std::string_view, std::string_view> classes[] = {
      {"00", "successful completion"},
      {"01", "warning"},
      {"02", "no data"},
      {"03", "SQL statement not yet complete"},
      {"08", "connection exception"},
      {"09", "triggered action exception"},
      {"0A", "feature not supported"},
      {"0B", "invalid transaction initiation"},
      {"0F", "locator exception"},
      {"0L", "invalid grantor"},
      {"0P", "invalid role specification"},
      {"0Z", "diagnostics exception"},
      {"20", "case not found"},
      {"21", "cardinality violation"},
      {"22", "data exception"},
      {"23", "integrity constraint violation"},
      {"24", "invalid cursor state"},
      {"25", "invalid transaction state"},
      {"26", "invalid SQL statement name"},
      {"27", "triggered data change violation"},
      {"28", "invalid authorization specification"},
      {"2B", "dependent privilege descriptors still exist"},
      {"2D", "invalid transaction termination"},
      {"2F", "SQL routine exception"},
      {"34", "invalid cursor name"},
      {"38", "external routine exception"},
      {"39", "external routine invocation exception"},
      {"3B", "savepoint exception"},
      {"3D", "invalid catalog name"},
      {"3F", "invalid schema name"},
      {"40", "transaction rollback"},
      {"42", "syntax error or access rule violation"},
      {"44", "WITH CHECK OPTION violation"},
      {"53", "insufficient resources"},
      {"54", "program limit exceeded"},
      {"55", "object not in prerequisite state"},
      {"57", "operator intervention"},
      {"58", "system error"},
      {"72", "snapshot failure"},
      {"F0", "configuration file error"},
      {"HV", "foreign data wrapper error"},
      {"P0", "PL/pgSQL error"},
      {"XX", "internal error"},
  };
  for (const auto& [code, name] : classes)
    if (code == cls) return name;
  return "unknown class";
}

class category_impl final : public std::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "postgres"; }
  [[nodiscard]] std::string message(int value) const override {
    const std::string s = unpack_sqlstate(value);
    return "SQLSTATE " + s + ": " + std::string(sqlstate_class(std::string_view(s).substr(0, 2)));
  }
};

inline const category_impl category_instance{};

/// One call's waits on the connection's socket plus the thread's wake fd
/// (the machinery of <ctx/io.hpp>), armed at the first wait.
class waiter {
 public:
  /// Waits until `fd` has one of `events` or `c` is done: `{}`, `c.err()`
  /// (a done context wins), or poll()'s error.
  template <class Clock>
  [[nodiscard]] std::error_code wait(const basic_context<Clock>& c, int fd, short events,
                                     short* revents = nullptr) {
    if (!g_) g_.emplace(c.stop_token());
    if (const std::error_code e = g_->error()) return e;
    std::error_code ec;
    switch (ctx::detail::poll_fd(
        fd, events, g_->fd(), [&c]() noexcept { return c.done(); }, ec, revents)) {
      case ctx::detail::poll_outcome::ready:
        return {};
      case ctx::detail::poll_outcome::stopped:
        return c.err();
      case ctx::detail::poll_outcome::failed:
        break;
    }
    return ec;
  }

 private:
  std::optional<ctx::detail::wake_guard> g_;
};

/// Waiting for one cancel request to be served.
struct cancel_state {
  explicit cancel_state(int pid) noexcept : backend_pid(pid) {}
  const int backend_pid;  // PQbackendPID of the cancelled connection: tells it from a new one at its address
  std::mutex m;
  std::condition_variable_any cv;
  bool done = false;

  template <class Clock>
  [[nodiscard]] std::error_code wait(const basic_context<Clock>& c) {
    std::unique_lock lock(m);
    return ctx::wait(c, cv, lock, [this] { return done; }) ? std::error_code{} : c.err();
  }
  void finish() {
    {
      std::lock_guard lock(m);
      done = true;
    }
    cv.notify_all();
  }
};

/// Sends cancel requests (PQcancel, which blocks until the server has served
/// them) on threads of its own, so that the caller does not wait; remembers,
/// per connection, the request on its way. One per process, never destroyed
/// (a thread may still be sending when the program exits).
///
/// A child made by fork() has none of the parent's threads: it starts with
/// no worker and nothing queued or pending (the parent's requests are the
/// parent's to send, for connections the child must not use), or it would
/// count the parent's lingering workers as its own, queue its cancels for
/// them, and wait for them forever.
class canceller {
 public:
  static canceller& instance() {
    static canceller* const c = new canceller;  // NOLINT: outlives every thread that uses it
    return *c;
  }

  /// Cancels the query in flight on `conn`: called by the thread that uses it.
  void cancel(PGconn* conn) {
    PGcancel* pc = PQgetCancel(conn);
    if (!pc) return;  // out of memory: the next call waits for the query to end
    auto st = std::make_shared<cancel_state>(PQbackendPID(conn));
    {
      std::lock_guard lock(m_);
      pending_[conn] = st;
      pending_count_.store(static_cast<int>(pending_.size()), std::memory_order_release);
      jobs_.push_back({pc, conn, st});
      if (idle_ > 0) cv_.notify_one();  // a worker waits for work: usually no thread to start
      if (idle_ >= static_cast<int>(jobs_.size()) || workers_ >= max_workers) return;
      ++workers_;
    }
    try {
      std::thread([this] { work(true); }).detach();
    } catch (...) {  // no thread: send it from here, as PQcancel users do, and do not linger
      {
        std::lock_guard lock(m_);
        --workers_;
      }
      work(false);
    }
  }

  /// True if a cancel request is on its way for some connection: one atomic
  /// load, so that calls look up their connection only then.
  [[nodiscard]] bool any_pending() const noexcept {
    return pending_count_.load(std::memory_order_acquire) != 0;
  }

  /// The cancel request on its way for `conn`, or null. Requests are
  /// remembered by address, and a connection closed right after its call was
  /// cancelled may have left its address to a new one (malloc reuses it at
  /// once): a request for a different server process is not this one's.
  [[nodiscard]] std::shared_ptr<cancel_state> pending(PGconn* conn) {
    std::lock_guard lock(m_);
    const auto it = pending_.find(conn);
    if (it == pending_.end() || it->second->backend_pid != PQbackendPID(conn)) return nullptr;
    return it->second;
  }

 private:
  canceller() {
    // fork() never copies m_ locked by another thread: the child could not unlock it.
    (void)::pthread_atfork([] { instance().m_.lock(); }, [] { instance().m_.unlock(); },
                           [] { instance().forget_after_fork(); });
  }

  /// pthread_atfork child handler, with m_ held by this thread. The parent's
  /// jobs, pending states and condition variables (which may count waiters
  /// that do not exist here: destroying or notifying them could block) are
  /// abandoned, not destroyed: a few hundred bytes leaked in the child.
  void forget_after_fork() noexcept {
    ::new (static_cast<void*>(&cv_)) std::condition_variable();
    ::new (static_cast<void*>(&jobs_)) std::deque<job>();
    ::new (static_cast<void*>(&pending_)) std::unordered_map<PGconn*, std::shared_ptr<cancel_state>>();
    workers_ = 0;
    idle_ = 0;
    pending_count_.store(0, std::memory_order_relaxed);
    m_.unlock();
  }

  static constexpr int max_workers = 4;
  static constexpr auto linger =
      std::chrono::seconds(10);  // an idle worker waits this long for the next cancel
  struct job {
    PGcancel* cancel;
    PGconn* conn;
    std::shared_ptr<cancel_state> state;
  };

  /// Sends the queued cancel requests; a worker thread (`lingering`) then
  /// waits a while for more before it ends. The fallback on the caller's
  /// thread was never counted as a worker.
  void work(bool lingering) {
    for (;;) {
      job j;
      {
        std::unique_lock lock(m_);
        if (jobs_.empty() && lingering) {
          ++idle_;
          cv_.wait_for(lock, linger, [this] { return !jobs_.empty(); });
          --idle_;
        }
        if (jobs_.empty()) {
          if (lingering) --workers_;
          return;
        }
        j = std::move(jobs_.front());
        jobs_.pop_front();
      }
      char err[256];
      (void)PQcancel(j.cancel, err, sizeof err);  // failed: the query runs on, and the next call waits for it
      PQfreeCancel(j.cancel);
      {
        std::lock_guard lock(m_);
        const auto it = pending_.find(j.conn);
        if (it != pending_.end() && it->second == j.state) pending_.erase(it);
        pending_count_.store(static_cast<int>(pending_.size()), std::memory_order_release);
      }
      j.state->finish();
    }
  }

  std::mutex m_;
  std::condition_variable cv_;  // idle workers wait here for jobs_
  std::deque<job> jobs_;
  std::unordered_map<PGconn*, std::shared_ptr<cancel_state>> pending_;
  int workers_ = 0;
  int idle_ = 0;
  std::atomic<int> pending_count_{0};  // pending_.size(), readable without m_
};

/// An error of category() for a failure that libpq found or reported about
/// `conn`, with its message (`fallback` when it has none).
[[nodiscard]] inline result client_error(PGconn* conn, std::string_view fallback = "08006") {
  std::string msg = conn ? PQerrorMessage(conn) : "no connection";
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  const std::string_view state = !conn ? "08003" : PQstatus(conn) == CONNECTION_BAD ? "08006" : fallback;
  return {nullptr, make_error_code(state), std::move(msg)};
}

/// The result for `r`, an error result or a success.
[[nodiscard]] inline result to_result(PGconn* conn, PGresult* r) {
  switch (PQresultStatus(r)) {
    case PGRES_COMMAND_OK:
    case PGRES_TUPLES_OK:
    case PGRES_EMPTY_QUERY:
    case PGRES_SINGLE_TUPLE:
      return {r, {}};
    default:
      break;
  }
  std::string msg;
  if (const char* primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY)) {
    msg = primary;
  } else {
    msg = PQresultErrorMessage(r);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  }
  const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  const std::string_view code = state && *state                           ? std::string_view(state)
                                : PQstatus(conn) == CONNECTION_BAD        ? "08006"
                                : PQresultStatus(r) == PGRES_BAD_RESPONSE ? "08P01"
                                                                          : "58000";
  return {r, make_error_code(code), std::move(msg)};
}

/// Keeps the connection in non-blocking mode for one call (so that sending
/// never blocks) and puts the caller's mode back.
class nonblocking_scope {
 public:
  explicit nonblocking_scope(PGconn* conn) noexcept : conn_(conn), was_(PQisnonblocking(conn) != 0) {
    if (!was_) PQsetnonblocking(conn_, 1);
  }
  nonblocking_scope(const nonblocking_scope&) = delete;
  nonblocking_scope& operator=(const nonblocking_scope&) = delete;
  ~nonblocking_scope() {
    if (!was_) PQsetnonblocking(conn_, 0);
  }

 private:
  PGconn* conn_;
  bool was_;
};

/// Reads the results of the query in flight until PQgetResult returns null,
/// handing each to `sink`; COPY is ended (COPY FROM STDIN fails, COPY TO
/// STDOUT is read and dropped) so that the connection stays usable. Returns
/// `{}`, `c.err()`, or poll()'s error. When `c` ends the wait, what has
/// already arrived is read first: a query that had finished is reported as
/// finished.
template <class Clock, class Sink>
[[nodiscard]] std::error_code read_results(const basic_context<Clock>& c, PGconn* conn, waiter& w,
                                           Sink&& sink) {
  for (;;) {
    while (PQisBusy(conn)) {
      if (const std::error_code e = w.wait(c, PQsocket(conn), POLLIN)) {
        if (!c.done() || !PQconsumeInput(conn) || PQisBusy(conn)) return e;
        break;  // the rest had arrived: take it
      }
      if (!PQconsumeInput(conn)) break;  // the connection broke: PQgetResult reports it
    }
    PGresult* r = PQgetResult(conn);
    if (!r) return {};
    const ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COPY_IN) {
      PQclear(r);
      (void)PQputCopyEnd(conn, "COPY FROM STDIN is not supported by ctx::postgres::exec");
      while (PQflush(conn) == 1)
        if (const std::error_code e = w.wait(c, PQsocket(conn), POLLOUT)) return e;
    } else if (st == PGRES_COPY_OUT) {
      PQclear(r);
      for (;;) {
        char* buf = nullptr;
        const int n = PQgetCopyData(conn, &buf, 1);
        if (n > 0) {
          PQfreemem(buf);
        } else if (n == 0) {
          if (const std::error_code e = w.wait(c, PQsocket(conn), POLLIN)) return e;
          if (!PQconsumeInput(conn)) break;
        } else {
          break;  // -1: done, -2: error; PQgetResult says which
        }
      }
    } else {
      sink(r);
    }
  }
}

/// What every call does first on a connection that has a query in flight:
/// waits for a cancel request on its way, then reads and drops the results.
template <class Clock>
[[nodiscard]] std::error_code settle(const basic_context<Clock>& c, PGconn* conn, waiter& w) {
  if (const auto st = canceller::instance().pending(conn))
    if (const std::error_code e = st->wait(c)) return e;
  if (PQtransactionStatus(conn) != PQTRANS_ACTIVE) return {};
  const nonblocking_scope nb(conn);
  return read_results(c, conn, w, [](PGresult* r) { PQclear(r); });
}

/// The common part of both exec()s: `send` puts the query in libpq's buffer.
template <class Clock, class Send>
[[nodiscard]] result run(const basic_context<Clock>& c, PGconn* conn, Send&& send) {
  if (c.done()) return {nullptr, c.err()};
  if (!conn) return client_error(nullptr);
  waiter w;
  // A cancelled call's query in flight, or its cancel request still on its
  // way (the results may have been read with plain libpq since): finish it.
  if (PQtransactionStatus(conn) == PQTRANS_ACTIVE || canceller::instance().any_pending())
    if (const std::error_code e = settle(c, conn, w)) return {nullptr, e};
  if (c.done()) return {nullptr, c.err()};
  const nonblocking_scope nb(conn);
  if (!send()) return client_error(conn, "58000");
  for (;;) {  // PQflush until libpq's buffer is on the wire
    const int f = PQflush(conn);
    if (f == 0) break;
    if (f < 0) return client_error(conn);
    short revents = 0;
    if (const std::error_code e = w.wait(c, PQsocket(conn), POLLIN | POLLOUT, &revents)) {
      if (!c.done()) return {nullptr, e};
      // Half a message is on the wire and cannot be taken back: break the
      // connection now, so that it is never reused silently.
      ::shutdown(PQsocket(conn), SHUT_RDWR);
      (void)PQconsumeInput(conn);  // sees the end: PQstatus() is CONNECTION_BAD from here on
      return {nullptr, c.err()};
    }
    if ((revents & POLLIN) && !PQconsumeInput(conn)) break;  // PQgetResult below reports it
  }
  result out;
  const std::error_code e = read_results(c, conn, w, [&](PGresult* r) {
    if (out.get() && out.error()) {  // the first error wins; the server runs nothing after it
      PQclear(r);
      return;
    }
    out = to_result(conn, r);
  });
  if (e) {
    if (c.done()) canceller::instance().cancel(conn);
    return {nullptr, e};
  }
  if (!out.get()) return client_error(conn);
  return out;
}

template <class T>
inline constexpr bool is_optional = false;
template <class T>
inline constexpr bool is_optional<std::optional<T>> = true;

/// One parameter in libpq's form: value, length and format (text 0, binary 1), type.
struct param {
  const char* value = nullptr;
  int length = 0;
  int format = 0;
  Oid type = 0;
  std::string storage;
};

inline constexpr Oid bytea_oid = 17;

template <class T>
void to_param(param& p, const T& v) {
  if constexpr (std::is_same_v<T, std::nullptr_t>) {
    p.value = nullptr;
  } else if constexpr (is_optional<T>) {
    if (v) to_param(p, *v);
  } else if constexpr (std::is_same_v<T, bool>) {
    p.value = v ? "true" : "false";
  } else if constexpr (std::is_arithmetic_v<T>) {
    char buf[64];
    const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    p.storage.assign(buf, ec == std::errc{} ? end : buf);
    p.value = p.storage.c_str();
  } else if constexpr (std::is_same_v<T, std::string>) {
    p.value = v.c_str();
  } else if constexpr (std::is_convertible_v<const T&, const char*>) {
    p.value = v;
  } else if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    p.storage = std::string_view(v);
    p.value = p.storage.c_str();
  } else if constexpr (std::is_convertible_v<const T&, std::span<const std::byte>>) {
    const std::span<const std::byte> b(v);
    p.value = b.empty() ? "" : reinterpret_cast<const char*>(b.data());
    p.length = static_cast<int>(b.size());
    p.format = 1;
    p.type = bytea_oid;
  } else {
    static_assert(sizeof(T) == 0, "ctx::postgres::exec: unsupported parameter type");
  }
}

}  // namespace detail

inline const std::error_category& category() noexcept { return detail::category_instance; }

inline std::error_code make_error_code(std::string_view sqlstate) noexcept {
  const int v = detail::pack_sqlstate(sqlstate);
  if (v == 0) return {};
  return {v, category()};
}

inline std::string sqlstate(std::error_code e) {
  if (!e || e.category() != category()) return {};
  return detail::unpack_sqlstate(e.value());
}

template <class Clock>
connect_result connect(const basic_context<Clock>& c, std::string_view conninfo) {
  connect_result out;
  if (c.done()) {
    out.error = c.err();
    return out;
  }
  const std::string info(conninfo);
  connection conn(PQconnectStart(info.c_str()));
  const auto fail = [&] {
    out.message = conn ? PQerrorMessage(conn.get()) : "out of memory";
    while (!out.message.empty() && (out.message.back() == '\n' || out.message.back() == ' '))
      out.message.pop_back();
    out.error = make_error_code("08001");
    return std::move(out);
  };
  if (!conn || PQstatus(conn.get()) == CONNECTION_BAD) return fail();
  detail::waiter w;
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;  // libpq's rule for the first wait
  for (;;) {
    if (st == PGRES_POLLING_OK) {
      out.conn = std::move(conn);
      return out;
    }
    if (st == PGRES_POLLING_FAILED) return fail();
    const short events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT;
    if (const std::error_code e = w.wait(c, PQsocket(conn.get()), events)) {
      out.error = e;  // c.err(), or poll()'s error; the half-made connection is closed
      return out;
    }
    st = PQconnectPoll(conn.get());
  }
}

template <class Clock>
result exec(const basic_context<Clock>& c, PGconn* conn, std::string_view sql) {
  std::string text;
  return detail::run(c, conn, [&] {
    text.assign(sql);
    return PQsendQuery(conn, text.c_str()) != 0;
  });
}

template <class Clock, class... Args>
requires(sizeof...(Args) > 0) result
    exec(const basic_context<Clock>& c, PGconn* conn, std::string_view sql, const Args&... args) {
  constexpr std::size_t n = sizeof...(Args);
  std::array<detail::param, n> ps;
  std::string text;
  return detail::run(c, conn, [&] {
    std::size_t i = 0;
    (detail::to_param(ps[i++], args), ...);
    std::array<const char*, n> values;
    std::array<int, n> lengths;
    std::array<int, n> formats;
    std::array<Oid, n> types;
    for (std::size_t k = 0; k < n; ++k) {
      values[k] = ps[k].value;
      lengths[k] = ps[k].length;
      formats[k] = ps[k].format;
      types[k] = ps[k].type;
    }
    text.assign(sql);
    return PQsendQueryParams(conn, text.c_str(), static_cast<int>(n), types.data(), values.data(),
                             lengths.data(), formats.data(), 0) != 0;
  });
}

template <class Clock>
std::error_code drain(const basic_context<Clock>& c, PGconn* conn) {
  if (c.done()) return c.err();
  if (!conn) return make_error_code("08003");
  detail::waiter w;
  if (const std::error_code e = detail::settle(c, conn, w)) return e;
  return PQstatus(conn) == CONNECTION_BAD ? make_error_code("08006") : std::error_code{};
}

}  // namespace ctx::postgres
