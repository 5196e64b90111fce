// SPDX-License-Identifier: MIT
// ctx::sqlite (opt-in, target ctx::sqlite): SQLite statements that stop when a context is done.
//
// How a running statement is stopped (measured on SQLite 3.40; the numbers
// and the commands are in docs/sqlite.md). Two mechanisms, because neither
// suffices alone:
// - A progress handler reads `done()` every 1000 VM instructions, on the
//   stepping thread. It stops exactly the statement of the call whose
//   context ended, and cannot miss a cancel. But some single instructions
//   run long without calling it: `select count(*)` of a whole table (780 ms
//   for 30M rows here), the merge of a big sort, an index build.
// - `sqlite3_interrupt`, from a stop callback (one store: the callback only
//   wakes). SQLite checks its flag inside the count (then stopping takes
//   0.1 ms), but it is the connection's flag: it stops every active statement
//   of the connection, and a flag set just before `sqlite3_step` starts a
//   statement is cleared by that step, so the cancel is lost.
// So a call arms the interrupt when it starts a statement (the first step,
// where counts, sorts and index builds run), and only when the connection
// has no transaction open (autocommit mode, no read transaction: then no
// statement that reads a table is active, and none can start, since the call
// holds the connection's mutex, as `sqlite3_exec` does, until the stop
// callback is gone). If the interrupt fired but the step still returned a
// row, the row is dropped and the statement reset, so the flag cannot
// outlive the statement. The progress handler catches what the interrupt
// misses: a cancel in the instant before the statement starts, later steps,
// and statements inside a transaction, which do not arm the interrupt (there
// a count of a whole table stops when it ends; the merge of a big sort and
// an index build do not look at the flag either: about 20 ms to stop).
//
// A lock wait calls the busy handler, which neither reaches. The handler
// that `ctx::sqlite::busy_timeout` installs waits like SQLite's own and also
// ends when the context of the ctx::sqlite call is done. SQLite cannot read
// back a busy handler (`PRAGMA busy_timeout` costs a statement preparation,
// 6x a prepared `select 1`), so ctx does not swap handlers per call: on a
// connection set up with `sqlite3_busy_timeout`, a lock wait lasts what that
// says, then the call returns `c.err()`.
//
// The progress handler is installed when a ctx::sqlite call starts a
// statement under a context that can end, and is left installed: it reads a
// thread-local pointer and does nothing outside ctx::sqlite calls (one load
// every 1000 instructions). A progress handler of your own is replaced.
//
// Thread safety: calls may run on any number of threads at once, on
// different connections or, as SQLite allows (its serialized mode, the
// default), on one connection: a call holds the connection's mutex for its
// duration. A cancel may come from any thread: it happens-before the `done()`
// read that stops the statement. Nothing of a call outlives it (its stop
// callback is deregistered, waiting for one that runs on another thread,
// before it returns), so closing the connection after a call is safe.
#pragma once

#include <pthread.h>
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>

#include "context.hpp"

namespace ctx::sqlite {

/// The category of SQLite's result codes; its name is "sqlite".
///
/// An error's value is SQLite's extended result code (`SQLITE_CONSTRAINT_UNIQUE`,
/// `SQLITE_BUSY`, ...; `ec.value() & 0xff` is the primary code) and its message
/// is `sqlite3_errstr()`'s. The message of the failing call itself ("no such
/// table: t") is `sqlite3_errmsg(db)`, until the connection's next call.
[[nodiscard]] const std::error_category& category() noexcept;

/// An error of `category()` for SQLite result code `rc`; `{}` for
/// `SQLITE_OK`, `SQLITE_ROW` and `SQLITE_DONE`.
[[nodiscard]] std::error_code make_error_code(int rc) noexcept;

/// Runs every statement of `sql`, in order, discarding rows (as
/// `sqlite3_exec` without a callback).
///
/// Returns `{}` when all ran; `c.err()` when `c` ended the call; otherwise
/// the error of the first statement that failed (the later ones do not run;
/// `sqlite3_errmsg(db)` says why, and a transaction that the failing
/// statements had begun is left as SQLite leaves it, as `sqlite3_exec` does).
///
/// A done `c` returns `c.err()` without running anything; `c` is also
/// checked before each statement. When `c` ends the call, the running
/// statement stops within about 1000 VM instructions and nothing else runs.
/// If the connection was in autocommit mode when the call began and a
/// transaction is open when `c` ends it (`BEGIN; ...; COMMIT` cut short), the
/// call rolls that transaction back: a string of statements is never left
/// half done. A transaction that was open before the call is the caller's:
/// see `step`. No statement is run twice.
template <class Clock>
[[nodiscard]] std::error_code exec(const basic_context<Clock>& c, sqlite3* db, std::string_view sql);

/// Owns a prepared statement: `sqlite3_finalize` on destruction.
struct finalizer {
  void operator()(sqlite3_stmt* s) const noexcept { sqlite3_finalize(s); }
};
using statement = std::unique_ptr<sqlite3_stmt, finalizer>;

/// What `prepare` returns: `auto [stmt, err, tail] = ctx::sqlite::prepare(c, db, sql);`
struct prepared {
  statement stmt;         ///< null on error, and when `sql` holds no statement (blanks, comments)
  std::error_code error;  ///< `{}`, `c.err()`, or SQLite's error
  std::string_view tail;  ///< what follows the first statement in `sql`
};

/// Compiles the first statement of `sql` (`sqlite3_prepare_v2`).
///
/// Under `c` because compiling may read the schema, which can wait for a
/// lock. A done `c` returns `c.err()` without compiling.
template <class Clock>
[[nodiscard]] prepared prepare(const basic_context<Clock>& c, sqlite3* db, std::string_view sql);

/// Binds `args` to the parameters 1, 2, ... of `s` (`?`, `?NNN` and named
/// parameters count in SQLite's order), after clearing none: unbound
/// parameters keep their values. Text and blobs are copied
/// (`SQLITE_TRANSIENT`).
///
/// Types: `std::nullptr_t` and an empty `std::optional` bind NULL; `bool`
/// and other integers bind an integer (`sqlite3_bind_int64`); floating point
/// a double; `std::string_view`, `std::string` and `const char*` text;
/// `std::span<const std::byte>` a blob. Returns the first error (`SQLITE_RANGE`
/// for too many arguments, `SQLITE_TOOBIG`, ...) or `{}`.
template <class... Args>
[[nodiscard]] std::error_code bind(sqlite3_stmt* s, const Args&... args);

/// What `step` did: a row is ready, the statement is finished, or why not.
class step_result {
 public:
  step_result() noexcept = default;
  step_result(bool row, std::error_code error) noexcept : row_(row), error_(error) {}

  /// True if a row is ready (`SQLITE_ROW`): read it with `column<T>()`.
  [[nodiscard]] constexpr bool row() const noexcept { return row_; }
  /// `{}` for a row or the end; `c.err()` when the context ended the step;
  /// otherwise SQLite's error.
  [[nodiscard]] std::error_code error() const noexcept { return error_; }
  /// Same as `row()`: `while ((r = ctx::sqlite::step(c, s))) ...`
  constexpr explicit operator bool() const noexcept { return row_; }

 private:
  bool row_ = false;
  std::error_code error_;
};

/// Runs `s` until its next row or its end (`sqlite3_step`), or until `c` is done.
///
/// Returns a row, the end (`!row() && !error()`), `c.err()` when `c` ended
/// the step, or SQLite's error. A done `c` returns `c.err()` without
/// stepping. Whenever it returns `c.err()` the statement has been reset
/// (`sqlite3_reset`, bindings kept): it holds no lock and may run again from
/// its first row. A step that finished just as `c` ended reports what it
/// did: its row or its end.
///
/// What a cancel leaves behind is what SQLite does for an interrupted
/// statement: nothing of a statement in autocommit mode; inside a
/// transaction the caller opened, a write statement (INSERT, UPDATE, ...)
/// rolls the whole transaction back (the connection is in autocommit mode
/// again, `sqlite3_get_autocommit(db)` says so), a read-only one leaves it
/// open as it was. The connection is usable for the next call.
template <class Clock>
[[nodiscard]] step_result step(const basic_context<Clock>& c, sqlite3_stmt* s);

/// Column `i` (from 0) of the current row of `s`, converted as SQLite does.
///
/// `T`: any integer (from `sqlite3_column_int64`, narrowed as a cast would),
/// `bool`, `float`, `double`, `std::string`, `std::string_view` and
/// `std::span<const std::byte>` (views into SQLite's buffer, valid until the
/// next step, reset or conversion of that column), or `std::optional` of one
/// of those (empty for NULL). NULL reads as 0, an empty string or an empty span.
template <class T>
[[nodiscard]] T column(sqlite3_stmt* s, int i);

/// Sets `db`'s busy timeout, as `sqlite3_busy_timeout(db, timeout)`, with a
/// busy handler that also ends a lock wait when the context of the running
/// ctx::sqlite call is done.
///
/// Outside ctx::sqlite calls the handler waits exactly as SQLite's own (the
/// same sleeps, up to `timeout`, then `SQLITE_BUSY`). Inside a call, the
/// wait ends at `timeout` or when the call's context is done, whichever
/// comes first; the call then returns `c.err()`. `timeout <= 0` removes the
/// busy handler. It replaces any busy handler, and `PRAGMA busy_timeout`
/// reads 0 afterwards (SQLite reports only its own handler's timeout).
/// Set it once, when the connection is opened.
[[nodiscard]] std::error_code busy_timeout(sqlite3* db, std::chrono::milliseconds timeout) noexcept;

// ---------------------------------------------------------------------------
// Implementation.

namespace detail {

class category_impl final : public std::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "sqlite"; }
  [[nodiscard]] std::string message(int value) const override { return sqlite3_errstr(value); }
};

inline const category_impl category_instance{};

/// VM instructions between two calls of the progress handler.
inline constexpr int progress_period = 1000;

/// The stop callback armed while a statement starts: one store into the
/// connection, then a flag, nothing that blocks. The flag comes last: a
/// thread that sees it knows that the callback no longer touches the
/// connection (it only returns, through the stop state's code).
struct interrupter {
  sqlite3* db;
  std::atomic<bool>* fired;
  void operator()() const noexcept {
    sqlite3_interrupt(db);
    fired->store(true, std::memory_order_release);
  }
};

/// The calling thread's interrupt registration, kept as <ctx/detail/wake_fd.hpp>
/// keeps its stop callback: one that fired is left in place and destroyed by
/// the thread's next arm (or at its exit), not at once, because the
/// cancelling thread may still be returning through it (destroying it then
/// would wait for that thread, and libstdc++'s cancelling thread touches the
/// callback object after its waiter could have gone: so it must not live in
/// a stack frame that is gone).
struct interrupt_holder {
  std::atomic<bool> fired{false};
  bool armed = false;  // between arm() and disarm(); a nested call does not arm
  std::optional<std::stop_callback<interrupter>> cb;

  /// Arms for `db` and `token`; false if this thread already has an armed
  /// one (a ctx::sqlite call inside a SQL function of another).
  bool arm(sqlite3* db, std::stop_token token) noexcept {
    if (armed) return false;
    cb.reset();  // the last one, which fired long ago: no wait
    fired.store(false, std::memory_order_relaxed);
    cb.emplace(std::move(token), interrupter{db, &fired});  // runs at once if stop was requested
    armed = true;
    return true;
  }

  /// Takes the registration down; true if it interrupted the connection.
  /// When it did, the callback is left in place (see above); otherwise it is
  /// destroyed, which waits for one running on another thread, and looked
  /// at again.
  bool disarm() noexcept {
    armed = false;
    if (fired.load(std::memory_order_acquire)) return true;
    cb.reset();
    return fired.load(std::memory_order_acquire);
  }
};

void forget_interrupt_after_fork() noexcept;

[[nodiscard]] inline interrupt_holder& this_thread_interrupt() noexcept {
  thread_local interrupt_holder h;
  static const bool at_fork = ::pthread_atfork(nullptr, nullptr, &forget_interrupt_after_fork) == 0;
  (void)at_fork;
  return h;
}

/// pthread_atfork child handler: a callback left in place may belong to a
/// thread that does not exist in the child; destroying it could wait for
/// that thread forever. It is abandoned (a few dozen bytes).
inline void forget_interrupt_after_fork() noexcept {
  interrupt_holder& h = this_thread_interrupt();
  ::new (static_cast<void*>(&h.cb)) std::optional<std::stop_callback<interrupter>>();
  h.armed = false;
}

/// One ctx::sqlite call in progress on this thread, as the progress and busy
/// handlers see it (through a thread-local pointer: they run on the thread
/// that steps). Lives on the caller's stack; calls may nest (a SQL function
/// that runs ctx::sqlite calls), so each remembers the one it hides.
class call_base {
 public:
  call_base(const call_base&) = delete;
  call_base& operator=(const call_base&) = delete;

  [[nodiscard]] bool done() const noexcept { return done_(this); }
  [[nodiscard]] std::stop_token token() const { return token_(this); }

  /// The statement being stepped (null while preparing).
  [[nodiscard]] sqlite3_stmt* stmt() const noexcept { return stmt_; }
  void stepping(sqlite3_stmt* s) noexcept { stmt_ = s; }

 protected:
  using done_fn = bool (*)(const call_base*) noexcept;
  using token_fn = std::stop_token (*)(const call_base*);

  call_base(done_fn d, token_fn t) noexcept;
  ~call_base();

 private:
  done_fn done_;
  token_fn token_;
  call_base* hidden_;
  sqlite3_stmt* stmt_ = nullptr;
};

/// The innermost ctx::sqlite call of this thread, or null.
[[nodiscard]] inline call_base*& current_call() noexcept {
  thread_local call_base* current = nullptr;
  return current;
}

inline call_base::call_base(done_fn d, token_fn t) noexcept : done_(d), token_(t), hidden_(current_call()) {
  current_call() = this;
}

inline call_base::~call_base() { current_call() = hidden_; }

template <class Clock>
class call final : public call_base {
 public:
  explicit call(const basic_context<Clock>& c) noexcept : call_base(&done_of, &token_of), c_(c) {}

 private:
  static bool done_of(const call_base* b) noexcept { return static_cast<const call*>(b)->c_.done(); }
  static std::stop_token token_of(const call_base* b) { return static_cast<const call*>(b)->c_.stop_token(); }
  const basic_context<Clock>& c_;
};

/// The progress handler: stops the statement when the call's context is
/// done, unless it has already finished. SQLite also calls the handler on the
/// way out of sqlite3_step, after OP_Halt has finished (and, in autocommit
/// mode, committed) the statement: stopping it then would report
/// SQLITE_INTERRUPT for work that was done, and a caller might do it twice.
inline int on_progress(void*) noexcept {
  const call_base* k = current_call();
  if (!k || !k->done()) return 0;
  return !k->stmt() || sqlite3_stmt_busy(k->stmt()) ? 1 : 0;
}

inline void install_progress(sqlite3* db) noexcept {
  sqlite3_progress_handler(db, progress_period, &on_progress, nullptr);
}

/// True if `c` can ever be done; false for background() and without_cancel().
template <class Clock>
[[nodiscard]] bool can_end(const basic_context<Clock>& c) noexcept {
  return ctx::detail::access::of(c)->nearest_cancelable != nullptr;
}

/// A result code that a context's end produces: the progress handler or the
/// interrupt (SQLITE_INTERRUPT), or the busy handler giving up (SQLITE_BUSY).
[[nodiscard]] inline bool stopped_code(int rc) noexcept {
  return (rc & 0xff) == SQLITE_INTERRUPT || (rc & 0xff) == SQLITE_BUSY;
}

/// Holds a connection's mutex (recursive; none outside SQLite's serialized
/// mode) while an interrupt may be armed, and so that an error's extended
/// code is read before another thread's call can replace it.
class db_lock {
 public:
  explicit db_lock(sqlite3* db) noexcept : m_(sqlite3_db_mutex(db)) { sqlite3_mutex_enter(m_); }
  db_lock(const db_lock&) = delete;
  db_lock& operator=(const db_lock&) = delete;
  ~db_lock() { sqlite3_mutex_leave(m_); }

 private:
  sqlite3_mutex* m_;
};

/// True if no statement of `db` that reads a table can be active: autocommit
/// mode and no read transaction. Then sqlite3_interrupt stops only the
/// caller's statement (one that reads no table, such as `select 1` left
/// mid-iteration, would be stopped too). Call with the connection's mutex held.
[[nodiscard]] inline bool no_transaction(sqlite3* db) noexcept {
  return sqlite3_get_autocommit(db) != 0 && sqlite3_txn_state(db, nullptr) == SQLITE_TXN_NONE;
}

/// Runs `steps()` with sqlite3_interrupt armed for the context of call `k`
/// (the caller holds the connection's mutex and has checked that no other
/// statement is active); `fired` tells whether the interrupt was made. When
/// this returns, the callback no longer touches the connection.
template <class Steps>
int interruptible(const call_base& k, sqlite3* db, bool& fired, Steps&& steps) noexcept {
  interrupt_holder& h = this_thread_interrupt();
  try {
    if (!h.arm(db, k.token())) return steps();
  } catch (...) {  // std::bad_alloc for the stop state: the progress handler still stops it
    return steps();
  }
  const int rc = steps();
  fired = h.disarm();
  return rc;
}

/// The first sqlite3_step of `s` under call `k`, with the connection's mutex
/// held; `rc` as sqlite3_step's, except that SQLITE_ROW after the interrupt
/// fired becomes SQLITE_INTERRUPT: the row is dropped and the statement
/// reset, so the connection's flag is cleared by its next statement.
inline int first_step(const call_base& k, sqlite3* db, sqlite3_stmt* s) noexcept {
  if (!no_transaction(db)) return sqlite3_step(s);
  bool fired = false;
  int rc = interruptible(k, db, fired, [s] { return sqlite3_step(s); });
  if (fired && rc == SQLITE_ROW) {
    sqlite3_reset(s);
    rc = SQLITE_INTERRUPT;
  }
  return rc;
}

/// The delays of SQLite's default busy handler (sqliteDefaultBusyCallback), in ms.
inline constexpr int busy_delays[] = {1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100};
inline constexpr int busy_totals[] = {0, 1, 3, 8, 18, 33, 53, 78, 103, 128, 178, 228};

/// The busy handler of busy_timeout(): `arg` is the timeout in ms.
inline int on_busy(void* arg, int count) noexcept {
  const auto timeout = static_cast<int>(reinterpret_cast<std::intptr_t>(arg));
  constexpr int n = static_cast<int>(std::size(busy_delays));
  int delay = count < n ? busy_delays[count] : busy_delays[n - 1];
  const int prior = count < n ? busy_totals[count] : busy_totals[n - 1] + delay * (count - (n - 1));
  if (prior + delay > timeout) {
    delay = timeout - prior;
    if (delay <= 0) return 0;
  }
  call_base* k = current_call();
  if (!k) {
    sqlite3_sleep(delay);
    return 1;
  }
  if (k->done()) return 0;
  try {
    // A condition variable with the call's stop token: the stop callback it
    // registers only notifies. Nothing else notifies it.
    std::mutex m;
    std::condition_variable_any cv;
    std::unique_lock lock(m);
    cv.wait_for(lock, k->token(), std::chrono::milliseconds(delay), [] { return false; });
  } catch (...) {  // std::bad_alloc, std::system_error: sleep as SQLite would
    sqlite3_sleep(delay);
  }
  return k->done() ? 0 : 1;
}

/// The error of a call on `db` that failed with `rc` under `c`, read with the
/// connection's mutex held: SQLite returns the primary code unless extended
/// codes are switched on, and keeps the extended one in the connection.
template <class Clock>
[[nodiscard]] std::error_code error_of(const basic_context<Clock>& c, sqlite3* db, int rc) noexcept {
  if (stopped_code(rc) && c.done()) return c.err();
  const int ext = sqlite3_extended_errcode(db);
  return sqlite::make_error_code((ext & 0xff) == (rc & 0xff) ? ext : rc);
}

/// prepare() without the checks: the caller has a call in progress (or none
/// is needed), and `sql` fits in an int.
inline int prepare_raw(sqlite3* db, std::string_view sql, sqlite3_stmt** out,
                       std::string_view* tail) noexcept {
  const char* end = nullptr;
  const int rc = sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), out, &end);
  if (tail) *tail = end ? sql.substr(static_cast<std::size_t>(end - sql.data())) : std::string_view{};
  return rc;
}

/// exec()'s work, with the connection's mutex held; `k` is null when `c` can
/// never end. `may_interrupt`: no other statement was active when the call
/// began, and none can start while it holds the mutex (its own are finalized
/// one by one), so the interrupt may be armed for every statement.
template <class Clock>
std::error_code exec_in(const basic_context<Clock>& c, call_base* k, bool may_interrupt, sqlite3* db,
                        std::string_view sql) {
  while (!sql.empty()) {
    if (c.done()) return c.err();
    if (k) k->stepping(nullptr);  // the last statement is finalized
    sqlite3_stmt* raw = nullptr;
    std::string_view tail;
    if (const int rc = prepare_raw(db, sql, &raw, &tail); rc != SQLITE_OK) return error_of(c, db, rc);
    if (!raw) return {};  // only blanks and comments were left
    const statement s(raw);
    if (k) k->stepping(raw);
    // The interrupt stays armed for every step: the rows are not the caller's.
    const auto all_steps = [raw] {
      int rc;
      do rc = sqlite3_step(raw);
      while (rc == SQLITE_ROW);
      return rc;
    };
    bool fired = false;
    const int rc = k && may_interrupt ? interruptible(*k, db, fired, all_steps) : all_steps();
    if (rc != SQLITE_DONE) return error_of(c, db, rc);
    if (tail.size() >= sql.size()) break;  // no progress (a NUL in sql): SQLite stops there too
    sql = tail;
  }
  return {};
}

}  // namespace detail

inline const std::error_category& category() noexcept { return detail::category_instance; }

inline std::error_code make_error_code(int rc) noexcept {
  if (rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE) return ctx::detail::no_error();
  return {rc, category()};
}

template <class Clock>
std::error_code exec(const basic_context<Clock>& c, sqlite3* db, std::string_view sql) {
  if (c.done()) return c.err();
  if (sql.size() > static_cast<std::size_t>(INT_MAX)) return make_error_code(SQLITE_TOOBIG);
  const detail::db_lock lock(db);
  if (!detail::can_end(c)) return detail::exec_in(c, nullptr, false, db, sql);
  detail::install_progress(db);
  const bool autocommit = sqlite3_get_autocommit(db) != 0;
  std::error_code e;
  {
    detail::call<Clock> k(c);
    e = detail::exec_in(c, &k, detail::no_transaction(db), db, sql);
  }
  // Cut short inside a transaction this call began: undo it. The call is
  // over, so the progress handler no longer sees the done context.
  if (e && e == c.err() && autocommit && !sqlite3_get_autocommit(db))
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  return e;
}

template <class Clock>
prepared prepare(const basic_context<Clock>& c, sqlite3* db, std::string_view sql) {
  prepared out;
  if (c.done()) {
    out.error = c.err();
    return out;
  }
  if (sql.size() > static_cast<std::size_t>(INT_MAX)) {
    out.error = make_error_code(SQLITE_TOOBIG);
    return out;
  }
  sqlite3_stmt* raw = nullptr;
  const detail::db_lock lock(db);
  int rc;
  if (detail::can_end(c)) {
    detail::install_progress(db);
    const detail::call<Clock> k(c);
    rc = detail::prepare_raw(db, sql, &raw, &out.tail);
  } else {
    rc = detail::prepare_raw(db, sql, &raw, &out.tail);
  }
  out.stmt.reset(raw);
  if (rc != SQLITE_OK) out.error = detail::error_of(c, db, rc);
  return out;
}

template <class Clock>
step_result step(const basic_context<Clock>& c, sqlite3_stmt* s) {
  if (!s) return {false, make_error_code(SQLITE_MISUSE)};
  if (c.done()) {
    sqlite3_reset(s);
    return {false, c.err()};
  }
  sqlite3* db = sqlite3_db_handle(s);
  int rc;
  std::error_code e = ctx::detail::no_error();  // std::error_code{} is an out-of-line call
  if (detail::can_end(c) && !sqlite3_stmt_busy(s)) {
    // A statement starting: (re)install the progress handler, in case the
    // user replaced it since, and arm the interrupt, with the connection's
    // mutex held until it is disarmed.
    const detail::db_lock lock(db);
    detail::install_progress(db);
    detail::call<Clock> k(c);
    k.stepping(s);
    rc = detail::first_step(k, db, s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) e = detail::error_of(c, db, rc);
  } else {
    // A later step (the progress handler alone), or a context that never
    // ends. The extended code is read as any SQLite user reads it: another
    // thread sharing the connection could replace it in between.
    if (detail::can_end(c)) {
      detail::call<Clock> k(c);
      k.stepping(s);
      rc = sqlite3_step(s);
    } else {
      rc = sqlite3_step(s);
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) e = detail::error_of(c, db, rc);
  }
  if (rc == SQLITE_ROW) return {true, e};
  if (!e) return {false, e};
  if (e == c.err()) sqlite3_reset(s);
  return {false, e};
}

namespace detail {

template <class T>
inline constexpr bool is_optional = false;
template <class T>
inline constexpr bool is_optional<std::optional<T>> = true;

inline int bind_one(sqlite3_stmt* s, int i, std::nullptr_t) noexcept { return sqlite3_bind_null(s, i); }

template <class T>
int bind_one(sqlite3_stmt* s, int i, const T& v) noexcept {
  if constexpr (is_optional<T>) {
    return v ? bind_one(s, i, *v) : sqlite3_bind_null(s, i);
  } else if constexpr (std::is_integral_v<T>) {
    return sqlite3_bind_int64(s, i, static_cast<sqlite3_int64>(v));
  } else if constexpr (std::is_floating_point_v<T>) {
    return sqlite3_bind_double(s, i, static_cast<double>(v));
  } else if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    const std::string_view t(v);
    return sqlite3_bind_text64(s, i, t.data(), t.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
  } else if constexpr (std::is_convertible_v<const T&, std::span<const std::byte>>) {
    const std::span<const std::byte> b(v);
    // A zero-length blob, not NULL, also when b.data() is null.
    if (b.empty()) return sqlite3_bind_zeroblob(s, i, 0);
    return sqlite3_bind_blob64(s, i, b.data(), b.size(), SQLITE_TRANSIENT);
  } else {
    static_assert(sizeof(T) == 0, "ctx::sqlite::bind: unsupported argument type");
    return SQLITE_MISUSE;
  }
}

}  // namespace detail

template <class... Args>
std::error_code bind(sqlite3_stmt* s, const Args&... args) {
  int i = 0;
  int rc = SQLITE_OK;
  ((rc = rc == SQLITE_OK ? detail::bind_one(s, ++i, args) : rc), ...);
  return make_error_code(rc);
}

template <class T>
T column(sqlite3_stmt* s, int i) {
  if constexpr (detail::is_optional<T>) {
    if (sqlite3_column_type(s, i) == SQLITE_NULL) return std::nullopt;
    return column<typename T::value_type>(s, i);
  } else if constexpr (std::is_same_v<T, bool>) {
    return sqlite3_column_int64(s, i) != 0;
  } else if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(sqlite3_column_int64(s, i));
  } else if constexpr (std::is_floating_point_v<T>) {
    return static_cast<T>(sqlite3_column_double(s, i));
  } else if constexpr (std::is_same_v<T, std::string_view> || std::is_same_v<T, std::string>) {
    // Text first, then its length (SQLite's rule for the pair).
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s, i));
    const auto n = static_cast<std::size_t>(sqlite3_column_bytes(s, i));
    return p ? T(p, n) : T();
  } else if constexpr (std::is_same_v<T, std::span<const std::byte>>) {
    const auto* p = static_cast<const std::byte*>(sqlite3_column_blob(s, i));
    const auto n = static_cast<std::size_t>(sqlite3_column_bytes(s, i));
    return p ? T(p, n) : T();
  } else {
    static_assert(sizeof(T) == 0, "ctx::sqlite::column: unsupported type");
  }
}

inline std::error_code busy_timeout(sqlite3* db, std::chrono::milliseconds timeout) noexcept {
  if (timeout <= std::chrono::milliseconds::zero())
    return make_error_code(sqlite3_busy_handler(db, nullptr, nullptr));
  const auto ms = timeout.count() > INT_MAX ? INT_MAX : static_cast<int>(timeout.count());
  return make_error_code(
      sqlite3_busy_handler(db, &detail::on_busy, reinterpret_cast<void*>(static_cast<std::intptr_t>(ms))));
}

}  // namespace ctx::sqlite
