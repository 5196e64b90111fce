// SPDX-License-Identifier: MIT
// <ctx/sqlite.hpp> against real SQLite database files: cancel and deadline
// while a statement runs, while it waits for another connection's lock, and
// before it starts; what the connection, the statement and transactions look
// like afterwards; SQLite's errors; cancels racing completions. Tests tagged
// [real] assert a bound on real time (the valgrind leak check skips them).
#include <ctx/ctx.hpp>
#include <ctx/sqlite.hpp>
#include <ctx/testing.hpp>

#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <latch>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"
#include "support/temp_dir.hpp"

using namespace std::chrono_literals;
using std::chrono::steady_clock;

namespace {

/// Runs for many seconds (tens of millions of VM loops) unless stopped.
constexpr std::string_view long_query =
    "with recursive r(i) as (select 1 union all select i + 1 from r where i < 20000000) "
    "select count(*) from r";
/// A write that runs as long: inserts its rows one by one.
constexpr std::string_view long_insert =
    "insert into t(v) with recursive r(i) as (select 1 union all select i + 1 from r where i < 20000000) "
    "select i from r";

/// A connection to a database file in its own temporary directory.
class database {
 public:
  database() : dir_("ctx-sqlite") { open_into(db_); }
  database(const database&) = delete;
  database& operator=(const database&) = delete;
  ~database() { sqlite3_close_v2(db_); }

  [[nodiscard]] sqlite3* get() const noexcept { return db_; }
  [[nodiscard]] std::string path() const { return dir_.file("test.db"); }

  /// Another connection to the same file (closed by the caller).
  [[nodiscard]] sqlite3* open_another() const {
    sqlite3* other = nullptr;
    open_into(other);
    return other;
  }

  /// Runs `sql` with plain SQLite; REQUIREs success.
  void run(const char* sql) const { run_on(db_, sql); }
  static void run_on(sqlite3* db, const char* sql) {
    char* err = nullptr;
    const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err);
    INFO((err ? err : ""));
    sqlite3_free(err);
    REQUIRE(rc == SQLITE_OK);
  }

  /// The single integer `sql` returns, with plain SQLite.
  [[nodiscard]] std::int64_t value(const char* sql) const { return value_on(db_, sql); }
  static std::int64_t value_on(sqlite3* db, const char* sql) {
    sqlite3_stmt* s = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, sql, -1, &s, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(s) == SQLITE_ROW);
    const std::int64_t v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
  }

 private:
  void open_into(sqlite3*& db) const {
    const int rc = sqlite3_open_v2(path().c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
    REQUIRE(rc == SQLITE_OK);
  }

  test::temp_dir dir_;
  sqlite3* db_ = nullptr;
};

struct closer {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
using connection = std::unique_ptr<sqlite3, closer>;

/// Cancels `cancel` after `after` on a thread of its own, recording when.
class canceller {
 public:
  canceller(ctx::cancel_handle& cancel, std::chrono::milliseconds after)
      : t_([&cancel, after, this] {
          std::this_thread::sleep_for(after);
          at_ = steady_clock::now();
          cancel();
        }) {}
  /// When the cancel was made (joins the thread).
  steady_clock::time_point when() {
    t_.join();
    return at_;
  }

 private:
  steady_clock::time_point at_;
  std::thread t_;
};

std::chrono::milliseconds since(steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(steady_clock::now() - t);
}

}  // namespace

// --- success and SQLite's errors ---------------------------------------------

TEST_CASE("exec runs every statement of its text", "[sqlite]") {
  database db;
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 10s);
  CHECK(ctx::sqlite::exec(c, db.get(),
                          "create table t(v); insert into t values (1); insert into t values (2);\n"
                          "-- a comment\n select * from t; ") == std::error_code{});
  CHECK(db.value("select sum(v) from t") == 3);
  CHECK(ctx::sqlite::exec(c, db.get(), "") == std::error_code{});
  CHECK(ctx::sqlite::exec(c, db.get(), "  -- nothing\n") == std::error_code{});
}

TEST_CASE("exec under a context that never ends runs without a progress handler", "[sqlite]") {
  database db;
  int calls = 0;
  sqlite3_progress_handler(
      db.get(), 1, [](void* n) { return ++*static_cast<int*>(n), 0; }, &calls);
  CHECK(ctx::sqlite::exec(ctx::background(), db.get(), "create table t(v); insert into t values (1)") ==
        std::error_code{});
  CHECK(ctx::sqlite::exec(ctx::without_cancel(ctx::background()), db.get(), "select * from t") ==
        std::error_code{});
  CHECK(calls > 0);  // the user's handler is still the connection's
  sqlite3_progress_handler(db.get(), 0, nullptr, nullptr);
}

TEST_CASE("bad SQL returns the error of the sqlite category with its code and message", "[sqlite]") {
  database db;
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 10s);
  const std::error_code e = ctx::sqlite::exec(c, db.get(), "selec 1");
  CHECK(e.category() == ctx::sqlite::category());
  CHECK(std::string_view(e.category().name()) == "sqlite");
  CHECK(e.value() == SQLITE_ERROR);
  CHECK(e.message() == sqlite3_errstr(SQLITE_ERROR));
  CHECK(std::string(sqlite3_errmsg(db.get())).find("syntax error") != std::string::npos);

  CHECK(ctx::sqlite::exec(c, db.get(), "select * from missing") ==
        ctx::sqlite::make_error_code(SQLITE_ERROR));
  CHECK(std::string(sqlite3_errmsg(db.get())) == "no such table: missing");
}

TEST_CASE("a constraint violation returns the extended result code", "[sqlite]") {
  database db;
  db.run("create table t(id integer primary key, u unique)");
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 10s);
  CHECK(ctx::sqlite::exec(c, db.get(), "insert into t values (1, 1); insert into t values (1, 2)").value() ==
        SQLITE_CONSTRAINT_PRIMARYKEY);
  const std::error_code e = ctx::sqlite::exec(c, db.get(), "insert into t values (2, 1)");
  CHECK(e.value() == SQLITE_CONSTRAINT_UNIQUE);
  CHECK((e.value() & 0xff) == SQLITE_CONSTRAINT);
  CHECK(db.value("select count(*) from t") == 1);  // the statements before the error ran
}

TEST_CASE("exec stops at the first failing statement and runs none after it", "[sqlite]") {
  database db;
  db.run("create table t(v)");
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 10s);
  CHECK(ctx::sqlite::exec(c, db.get(), "insert into t values (1); bad; insert into t values (2)") ==
        ctx::sqlite::make_error_code(SQLITE_ERROR));
  CHECK(db.value("select count(*) from t") == 1);
}

TEST_CASE("make_error_code maps the success codes to an empty error", "[sqlite]") {
  CHECK(ctx::sqlite::make_error_code(SQLITE_OK) == std::error_code{});
  CHECK(ctx::sqlite::make_error_code(SQLITE_ROW) == std::error_code{});
  CHECK(ctx::sqlite::make_error_code(SQLITE_DONE) == std::error_code{});
  CHECK(ctx::sqlite::make_error_code(SQLITE_BUSY).value() == SQLITE_BUSY);
}

// --- prepared statements -----------------------------------------------------

TEST_CASE("prepare bind step and column round-trip every supported type", "[sqlite]") {
  database db;
  db.run("create table t(i, d, s, b, n)");
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 10s);
  {
    auto [ins, err, tail] =
        ctx::sqlite::prepare(c, db.get(), "insert into t values (?, ?, ?, ?, ?); select 1");
    REQUIRE(err == std::error_code{});
    REQUIRE(ins);
    CHECK(tail == " select 1");
    const std::vector<std::byte> blob{std::byte{0}, std::byte{1}, std::byte{255}};
    REQUIRE(ctx::sqlite::bind(ins.get(), std::int64_t{1} << 40, 2.5, std::string("text"), std::span(blob),
                              nullptr) == std::error_code{});
    auto r = ctx::sqlite::step(c, ins.get());
    CHECK_FALSE(r.row());
    CHECK(r.error() == std::error_code{});
    sqlite3_reset(ins.get());
    REQUIRE(ctx::sqlite::bind(ins.get(), true, 1.0f, "lit", std::string_view("view"), std::optional<int>{}) ==
            std::error_code{});
    CHECK(ctx::sqlite::step(c, ins.get()).error() == std::error_code{});
    sqlite3_reset(ins.get());
    CHECK(ctx::sqlite::bind(ins.get(), 1, 2, 3, 4, 5, 6) == ctx::sqlite::make_error_code(SQLITE_RANGE));
  }
  auto [sel, err, tail] = ctx::sqlite::prepare(c, db.get(), "select i, d, s, b, n from t order by rowid");
  REQUIRE(err == std::error_code{});
  auto r = ctx::sqlite::step(c, sel.get());
  REQUIRE(r.row());
  CHECK(ctx::sqlite::column<std::int64_t>(sel.get(), 0) == std::int64_t{1} << 40);
  CHECK(ctx::sqlite::column<double>(sel.get(), 1) == 2.5);
  CHECK(ctx::sqlite::column<std::string>(sel.get(), 2) == "text");
  const auto b = ctx::sqlite::column<std::span<const std::byte>>(sel.get(), 3);
  REQUIRE(b.size() == 3);
  CHECK(b[2] == std::byte{255});
  CHECK(ctx::sqlite::column<std::optional<int>>(sel.get(), 4) == std::nullopt);
  CHECK(ctx::sqlite::column<int>(sel.get(), 4) == 0);
  CHECK(ctx::sqlite::column<std::string_view>(sel.get(), 4).empty());
  REQUIRE(ctx::sqlite::step(c, sel.get()).row());
  CHECK(ctx::sqlite::column<bool>(sel.get(), 0));
  CHECK(ctx::sqlite::column<float>(sel.get(), 1) == 1.0f);
  CHECK(ctx::sqlite::column<std::string_view>(sel.get(), 2) == "lit");
  CHECK(ctx::sqlite::column<std::string>(sel.get(), 3) == "view");
  CHECK(ctx::sqlite::column<std::optional<std::string>>(sel.get(), 4) == std::nullopt);
  r = ctx::sqlite::step(c, sel.get());
  CHECK_FALSE(r);
  CHECK(r.error() == std::error_code{});
}

TEST_CASE("prepare returns SQLite's error and a null statement for bad SQL", "[sqlite]") {
  database db;
  auto [stmt, err, tail] = ctx::sqlite::prepare(ctx::background(), db.get(), "select from");
  CHECK_FALSE(stmt);
  CHECK(err == ctx::sqlite::make_error_code(SQLITE_ERROR));
  auto empty = ctx::sqlite::prepare(ctx::background(), db.get(), " -- only a comment");
  CHECK_FALSE(empty.stmt);
  CHECK(empty.error == std::error_code{});
}

TEST_CASE("step on a null statement is a misuse", "[sqlite]") {
  CHECK(ctx::sqlite::step(ctx::background(), nullptr).error() == ctx::sqlite::make_error_code(SQLITE_MISUSE));
}

// --- a done context runs nothing ---------------------------------------------

TEST_CASE("an already done context runs nothing", "[sqlite]") {
  database db;
  db.run("create table t(v)");
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  auto [ins, err, tail] = ctx::sqlite::prepare(c, db.get(), "insert into t values (1)");
  REQUIRE(ins);
  cancel();
  CHECK(ctx::sqlite::exec(c, db.get(), "insert into t values (1)") == canceled);
  CHECK(ctx::sqlite::step(c, ins.get()).error() == canceled);
  auto p = ctx::sqlite::prepare(c, db.get(), "insert into t values (1)");
  CHECK(p.error == canceled);
  CHECK_FALSE(p.stmt);
  CHECK(db.value("select count(*) from t") == 0);

  auto [expired, c2] = ctx::with_timeout(ctx::background(), 0s);
  CHECK(ctx::sqlite::exec(expired, db.get(), "insert into t values (1)") == deadline_exceeded);
  CHECK(db.value("select count(*) from t") == 0);
}

// --- a running statement ------------------------------------------------------

TEST_CASE("a long query cancelled at 100 ms returns within 50 ms of the cancel", "[sqlite][real]") {
  // Up to three tries: a missed cancel makes every try slow, a busy machine some.
  database db;
  auto best = steady_clock::duration::max();
  for (int i = 0; i < 3 && best >= 50ms; ++i) {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    canceller k(cancel, 100ms);
    const std::error_code e = ctx::sqlite::exec(c, db.get(), long_query);
    const auto returned = steady_clock::now();
    const auto cancelled = k.when();
    REQUIRE(e == canceled);
    REQUIRE(returned - cancelled < 1s);
    best = std::min(best, returned - cancelled);
  }
  CHECK(best < 50ms);
  // The connection runs the next statement.
  CHECK(ctx::sqlite::exec(ctx::background(), db.get(), "create table t(v); insert into t values (7)") ==
        std::error_code{});
  CHECK(db.value("select v from t") == 7);
}

TEST_CASE("a long query stops at its deadline with deadline_exceeded", "[sqlite][real]") {
  database db;
  const auto start = steady_clock::now();
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 100ms);
  CHECK(ctx::sqlite::exec(c, db.get(), long_query) == deadline_exceeded);
  CHECK(since(start) >= 100ms);
  CHECK(since(start) < 1s);
}

TEST_CASE("a stepped query stops at cancel and its statement is reset for the next run", "[sqlite]") {
  database db;
  auto [stmt, err, tail] = ctx::sqlite::prepare(ctx::background(), db.get(), long_query);
  REQUIRE(stmt);
  {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    canceller k(cancel, 50ms);
    CHECK(ctx::sqlite::step(c, stmt.get()).error() == canceled);
    (void)k.when();
  }
  CHECK_FALSE(sqlite3_stmt_busy(stmt.get()));
  // The same statement runs again, and stops again.
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 50ms);
  CHECK(ctx::sqlite::step(c, stmt.get()).error() == deadline_exceeded);
}

TEST_CASE("a deadline on the manual clock stops a running query", "[sqlite]") {
  database db;
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 1h);
  std::latch running(1);
  std::thread advancer([&] {
    running.wait();
    std::this_thread::sleep_for(20ms);  // let the query get going; the result is the same either way
    manual::advance(1h);
  });
  running.count_down();
  CHECK(ctx::sqlite::exec(c, db.get(), long_query) == deadline_exceeded);
  advancer.join();
}

TEST_CASE("a count of a whole table stops at cancel through sqlite3_interrupt", "[sqlite][real]") {
  // count(*) of a table is one VM instruction that walks every page: the
  // progress handler is never called, SQLite's interrupt flag is looked at.
  // Small pages, one row each: 50k pages, 25 MB, a count of tens of ms.
  database db;
  db.run(
      "pragma page_size = 512; pragma journal_mode = off; pragma synchronous = off; create table big(b);"
      "insert into big with recursive r(i) as (select 1 union all select i + 1 from r where i < 50000) "
      "select zeroblob(400) from r");
  const auto start = steady_clock::now();
  CHECK(db.value("select count(*) from big") == 50000);
  const auto full = since(start);
  INFO("a full count takes " << full.count() << " ms");
  auto best = std::chrono::milliseconds::max();
  auto [count, err, tail] = ctx::sqlite::prepare(ctx::background(), db.get(), "select count(*) from big");
  REQUIRE(count);
  for (int i = 0; i < 4; ++i) {  // the best of four, exec and step: the machine may be busy
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    canceller k(cancel, 3ms);
    const std::error_code e = i % 2 ? ctx::sqlite::step(c, count.get()).error()
                                    : ctx::sqlite::exec(c, db.get(), "select count(*) from big");
    const auto returned = steady_clock::now();
    const auto cancelled = k.when();
    REQUIRE(e == canceled);
    best = std::min(best, std::chrono::duration_cast<std::chrono::milliseconds>(returned - cancelled));
  }
  CHECK(best < std::max(std::chrono::milliseconds(5), full / 4));
}

TEST_CASE("a cancelled index build leaves no index and the connection usable", "[sqlite]") {
  database db;
  db.run(
      "create table big(k); insert into big with recursive r(i) as (select 1 union all select i + 1 from r "
      "where i < 200000) select hex(randomblob(16)) from r");
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  canceller k(cancel, 30ms);
  const std::error_code e = ctx::sqlite::exec(c, db.get(), "create index big_k on big(k)");
  (void)k.when();
  const auto indexes = db.value("select count(*) from sqlite_schema where type = 'index'");
  if (e == std::error_code{}) {  // this machine built it before the cancel
    CHECK(indexes == 1);
  } else {
    CHECK(e == canceled);
    CHECK(indexes == 0);
  }
  CHECK(db.value("select count(*) from big") == 200000);
}

// --- transactions --------------------------------------------------------------

TEST_CASE("a transaction that exec began and a cancel cut short is rolled back", "[sqlite]") {
  database db;
  db.run("create table t(v)");
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 100ms);
  const std::string sql =
      "begin; insert into t values (1); " + std::string(long_query) + "; insert into t values (2); commit";
  CHECK(ctx::sqlite::exec(c, db.get(), sql) == deadline_exceeded);
  CHECK(sqlite3_get_autocommit(db.get()) != 0);
  CHECK(db.value("select count(*) from t") == 0);
  // A second connection sees nothing either, and can write.
  connection other(db.open_another());
  CHECK(database::value_on(other.get(), "select count(*) from t") == 0);
  database::run_on(other.get(), "insert into t values (3)");
}

TEST_CASE("a long write in autocommit mode cancelled leaves nothing behind", "[sqlite]") {
  database db;
  db.run("create table t(v)");
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 100ms);
  CHECK(ctx::sqlite::exec(c, db.get(), long_insert) == deadline_exceeded);
  CHECK(sqlite3_get_autocommit(db.get()) != 0);
  CHECK(db.value("select count(*) from t") == 0);
}

TEST_CASE("a write cancelled inside the caller's transaction rolls the whole transaction back", "[sqlite]") {
  database db;
  db.run("create table t(v); begin; insert into t values (1)");
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 100ms);
  CHECK(ctx::sqlite::exec(c, db.get(), long_insert) == deadline_exceeded);
  // SQLite's rule for an interrupted write: the transaction is gone, the first insert too.
  CHECK(sqlite3_get_autocommit(db.get()) != 0);
  CHECK(db.value("select count(*) from t") == 0);
}

TEST_CASE("a read cancelled inside the caller's transaction leaves it open as it was", "[sqlite]") {
  database db;
  db.run("create table t(v); begin; insert into t values (1)");
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 100ms);
  CHECK(ctx::sqlite::exec(c, db.get(), long_query) == deadline_exceeded);
  CHECK(sqlite3_get_autocommit(db.get()) == 0);
  CHECK(db.value("select count(*) from t") == 1);  // the caller's write is there, uncommitted
  db.run("rollback");
  CHECK(db.value("select count(*) from t") == 0);
}

// --- locks ------------------------------------------------------------------------

TEST_CASE("a write blocked by another connection's lock returns at the deadline", "[sqlite][real]") {
  database db;
  db.run("create table t(v)");
  REQUIRE(ctx::sqlite::busy_timeout(db.get(), 20s) == std::error_code{});
  connection holder(db.open_another());
  database::run_on(holder.get(), "begin immediate; insert into t values (1)");

  const auto start = steady_clock::now();
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 100ms);
  CHECK(ctx::sqlite::exec(c, db.get(), "insert into t values (2)") == deadline_exceeded);
  CHECK(since(start) >= 100ms);
  CHECK(since(start) < 1s);

  // Cancel works the same, from another thread (up to three tries, as above).
  auto best = steady_clock::duration::max();
  for (int i = 0; i < 3 && best >= 50ms; ++i) {
    auto [c2, cancel2] = ctx::with_cancel(ctx::background());
    canceller k(cancel2, 50ms);
    REQUIRE(ctx::sqlite::exec(c2, db.get(), "insert into t values (2)") == canceled);
    const auto returned = steady_clock::now();
    best = std::min(best, returned - k.when());
  }
  CHECK(best < 50ms);

  database::run_on(holder.get(), "commit");
  CHECK(ctx::sqlite::exec(ctx::background(), db.get(), "insert into t values (2)") == std::error_code{});
  CHECK(db.value("select count(*) from t") == 2);
}

TEST_CASE("busy_timeout keeps its meaning outside ctx calls and inside them", "[sqlite][real]") {
  database db;
  db.run("create table t(v)");
  REQUIRE(ctx::sqlite::busy_timeout(db.get(), 200ms) == std::error_code{});
  connection holder(db.open_another());
  database::run_on(holder.get(), "begin immediate; insert into t values (1)");

  // Plain SQLite: waits the timeout, then SQLITE_BUSY.
  auto start = steady_clock::now();
  CHECK(sqlite3_exec(db.get(), "insert into t values (2)", nullptr, nullptr, nullptr) == SQLITE_BUSY);
  CHECK(since(start) >= 150ms);
  CHECK(since(start) < 2s);

  // Under a context with time to spare: the same timeout, SQLite's error.
  start = steady_clock::now();
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
  const std::error_code e = ctx::sqlite::exec(c, db.get(), "insert into t values (2)");
  CHECK(e.category() == ctx::sqlite::category());
  CHECK((e.value() & 0xff) == SQLITE_BUSY);
  CHECK(since(start) >= 150ms);
  CHECK(since(start) < 2s);

  REQUIRE(ctx::sqlite::busy_timeout(db.get(), 0ms) == std::error_code{});
  start = steady_clock::now();
  CHECK(sqlite3_exec(db.get(), "insert into t values (2)", nullptr, nullptr, nullptr) == SQLITE_BUSY);
  CHECK(since(start) < 100ms);
  database::run_on(holder.get(), "rollback");
}

TEST_CASE("with SQLite's own busy_timeout a lock wait lasts its timeout then returns the context's error",
          "[sqlite]") {
  // Documented: SQLite's own busy handler cannot be read back or cut short.
  database db;
  db.run("create table t(v)");
  sqlite3_busy_timeout(db.get(), 300);
  connection holder(db.open_another());
  database::run_on(holder.get(), "begin immediate; insert into t values (1)");
  const auto start = steady_clock::now();
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 50ms);
  CHECK(ctx::sqlite::exec(c, db.get(), "insert into t values (2)") == deadline_exceeded);
  CHECK(since(start) >= 250ms);
  database::run_on(holder.get(), "rollback");
}

TEST_CASE("a commit waiting for a lock is rolled back when its deadline passes", "[sqlite]") {
  database db;
  db.run("create table t(v)");
  REQUIRE(ctx::sqlite::busy_timeout(db.get(), 20s) == std::error_code{});
  connection reader(db.open_another());
  // A reader in the middle of a statement holds a SHARED lock: a commit in
  // rollback-journal mode must wait for it (EXCLUSIVE).
  sqlite3_stmt* r = nullptr;
  REQUIRE(sqlite3_prepare_v2(reader.get(), "select 1 from t union all select 2", -1, &r, nullptr) ==
          SQLITE_OK);
  db.run("insert into t values (0)");
  REQUIRE(sqlite3_step(r) == SQLITE_ROW);
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 100ms);
  CHECK(ctx::sqlite::exec(c, db.get(), "begin; insert into t values (1); commit") == deadline_exceeded);
  CHECK(sqlite3_get_autocommit(db.get()) != 0);
  sqlite3_finalize(r);
  CHECK(db.value("select count(*) from t") == 1);
}

// --- the connection after a cancel -------------------------------------------------

TEST_CASE("an outer statement of the same connection survives a cancelled inner one", "[sqlite]") {
  // sqlite3_interrupt would stop every active statement of the connection.
  database db;
  db.run(
      "create table big(k); insert into big with recursive r(i) as (select 1 union all select i + 1 from r "
      "where i < 200000) select hex(randomblob(16)) from r");
  auto [outer, err, tail] = ctx::sqlite::prepare(ctx::background(), db.get(), "select rowid from big");
  REQUIRE(outer);
  REQUIRE(ctx::sqlite::step(ctx::background(), outer.get()).row());
  for (int i = 0; i < 2; ++i) {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    canceller k(cancel, 50ms);
    const std::error_code e = ctx::sqlite::exec(
        c, db.get(),
        i == 0 ? std::string(long_query) : "select count(*) from (select k from big order by k)");
    (void)k.when();
    CHECK((e == canceled || e == std::error_code{}));
  }
  int rows = 1;
  ctx::sqlite::step_result r;
  while ((r = ctx::sqlite::step(ctx::background(), outer.get()))) ++rows;
  CHECK(r.error() == std::error_code{});
  CHECK(rows == 200000);
}

TEST_CASE("a user's progress handler is replaced by ctx's which is inert outside calls", "[sqlite]") {
  database db;
  int calls = 0;
  sqlite3_progress_handler(
      db.get(), 1, [](void* n) { return ++*static_cast<int*>(n), 0; }, &calls);
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 10s);
  CHECK(ctx::sqlite::exec(c, db.get(), "select 1") == std::error_code{});
  const int before = calls;
  cancel();
  // A done context no longer stops plain statements: nothing of the call is left.
  CHECK(db.value("with recursive r(i) as (select 1 union all select i + 1 from r where i < 100000) "
                 "select count(*) from r") == 100000);
  CHECK(calls == before);
}

TEST_CASE("closing a connection right after a cancelled call is safe", "[sqlite]") {
  test::temp_dir dir("ctx-sqlite");
  const std::string path = dir.file("close.db");
  for (int i = 0; i < 20; ++i) {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    std::latch go(1);
    std::thread t([&, &h = cancel] {  // clang 14: no capture of a structured binding
      go.wait();
      std::this_thread::sleep_for(std::chrono::microseconds(500 * (i % 5)));
      h();
    });
    go.count_down();
    CHECK(ctx::sqlite::exec(c, db, long_query) == canceled);
    CHECK(sqlite3_close(db) == SQLITE_OK);
    t.join();
  }
}

// --- races -------------------------------------------------------------------------

TEST_CASE("short deadlines never lose their cancel", "[sqlite][real]") {
  // The lost-interrupt race: a cancel that lands after the done() check but
  // before sqlite3_step starts the statement. sqlite3_interrupt alone loses
  // it (the step clears the flag) and the query runs for seconds.
  database db;
  auto [stmt, err, tail] = ctx::sqlite::prepare(ctx::background(), db.get(), long_query);
  REQUIRE(stmt);
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> us(0, 300);
  const auto give_up = steady_clock::now() + 10s;
  int runs = 0;
  for (; runs < 400 && steady_clock::now() < give_up; ++runs) {
    const auto start = steady_clock::now();
    auto [c, cancel] = ctx::with_timeout(ctx::background(), std::chrono::microseconds(us(rng)));
    const std::error_code e =
        runs % 2 ? ctx::sqlite::exec(c, db.get(), long_query) : ctx::sqlite::step(c, stmt.get()).error();
    REQUIRE(e == deadline_exceeded);
    REQUIRE(since(start) < 500ms);
  }
  CHECK(runs >= 50);
}

TEST_CASE("a cancel aimed at the start of the step is never lost", "[sqlite][real]") {
  // The same race, hit on purpose: another thread cancels a few hundred
  // nanoseconds after this one announces that it is about to step.
  database db;
  auto [stmt, err, tail] = ctx::sqlite::prepare(ctx::background(), db.get(), long_query);
  REQUIRE(stmt);
  std::mt19937 rng(4321);
  std::uniform_int_distribution<int> spins(0, 400);
  const auto give_up = steady_clock::now() + 5s;
  int runs = 0;
  for (; runs < 300 && steady_clock::now() < give_up; ++runs) {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    std::atomic<bool> ready{false};
    std::atomic<bool> go{false};
    const int n = spins(rng);
    std::thread t([&, &h = cancel] {  // clang 14: no capture of a structured binding
      ready.store(true, std::memory_order_release);
      while (!go.load(std::memory_order_acquire)) {
      }
      std::atomic<int> spin{0};
      while (spin.fetch_add(1, std::memory_order_relaxed) < n) {
      }
      h();
    });
    while (!ready.load(std::memory_order_acquire)) {
    }
    const auto start = steady_clock::now();
    go.store(true, std::memory_order_release);
    const std::error_code e = ctx::sqlite::step(c, stmt.get()).error();
    t.join();
    REQUIRE(e == canceled);
    REQUIRE(since(start) < 500ms);
  }
  CHECK(runs >= 50);
}

TEST_CASE("cancels racing quick statements leave a result or the context's error and a usable connection",
          "[sqlite]") {
  database db;
  db.run("create table t(id integer primary key, v)");
  auto [ins, e1, t1] = ctx::sqlite::prepare(ctx::background(), db.get(), "insert into t(v) values (?)");
  auto [sel, e2, t2] = ctx::sqlite::prepare(ctx::background(), db.get(), "select count(*), sum(v) from t");
  REQUIRE(ins);
  REQUIRE(sel);
  std::int64_t inserted = 0;
  std::int64_t sum = 0;
  for (int i = 0; i < 300; ++i) {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    std::latch start(2);
    std::thread t([&, &h = cancel] {  // clang 14: no capture of a structured binding
      start.arrive_and_wait();
      h();
    });
    start.arrive_and_wait();
    REQUIRE(ctx::sqlite::bind(ins.get(), i) == std::error_code{});
    const auto r = ctx::sqlite::step(c, ins.get());
    t.join();
    if (r.error() == std::error_code{}) {
      ++inserted;
      sum += i;
    } else {
      REQUIRE(r.error() == canceled);
    }
    sqlite3_reset(ins.get());
  }
  // Exactly the inserts reported as done are there: none lost, none twice.
  REQUIRE(ctx::sqlite::step(ctx::background(), sel.get()).row());
  CHECK(ctx::sqlite::column<std::int64_t>(sel.get(), 0) == inserted);
  CHECK(ctx::sqlite::column<std::int64_t>(sel.get(), 1) == sum);
}

TEST_CASE("threads sharing one connection are cancelled one by one", "[sqlite]") {
  // SQLite's serialized mode: one connection, several threads. Cancelling one
  // thread's statement never stops another's.
  database db;
  db.run("create table t(v)");
  constexpr int threads = 4;
  std::atomic<int> completed{0};
  std::atomic<int> cancelled{0};
  std::latch start(threads);
  std::vector<std::thread> ts;
  for (int n = 0; n < threads; ++n) {
    ts.emplace_back([&, n] {
      start.arrive_and_wait();
      for (int i = 0; i < 20; ++i) {
        if (n % 2 == 0) {  // victims: long queries with short deadlines
          auto [c, cancel] = ctx::with_timeout(ctx::background(), std::chrono::milliseconds(1 + i % 5));
          if (ctx::sqlite::exec(c, db.get(), long_query) == deadline_exceeded) cancelled.fetch_add(1);
        } else {  // bystanders: short statements under a long deadline must all succeed
          auto [c, cancel] = ctx::with_timeout(ctx::background(), 60s);
          const std::error_code e = ctx::sqlite::exec(c, db.get(),
                                                      "insert into t values (1); with recursive r(i) as "
                                                      "(select 1 union all select i + 1 from r where "
                                                      "i < 20000) select count(*) from r");
          if (!e) completed.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  CHECK(cancelled.load() == threads / 2 * 20);
  CHECK(completed.load() == threads / 2 * 20);
  CHECK(db.value("select count(*) from t") == threads / 2 * 20);
}
