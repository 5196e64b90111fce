// SPDX-License-Identifier: MIT
// A request's deadline reaches its SQLite query: a slow query returns at the
// deadline with the context's error, and the connection runs the next one.
#include <ctx/ctx.hpp>
#include <ctx/sqlite.hpp>

#include <cstdio>
#include <string>

using namespace std::chrono_literals;

/// The name of user `id` ("" if there is none), under the request's context
/// and a 2 s budget of its own; or why not.
std::error_code user_name(const ctx::context& request, sqlite3* db, int id, std::string& name) {
  auto [c, cancel] = ctx::with_timeout(request, 2s);
  auto [stmt, err, tail] = ctx::sqlite::prepare(c, db, "select name from users where id = $1");
  if (err) return err;
  if (const std::error_code e = ctx::sqlite::bind(stmt.get(), id)) return e;
  const ctx::sqlite::step_result row = ctx::sqlite::step(c, stmt.get());
  name = row ? ctx::sqlite::column<std::string>(stmt.get(), 0) : "";
  return row.error();
}

int main() {
  sqlite3* db = nullptr;
  if (sqlite3_open(":memory:", &db) != SQLITE_OK) return 1;
  (void)ctx::sqlite::busy_timeout(db, 5s);  // lock waits end with the call's context too
  if (ctx::sqlite::exec(ctx::background(), db,
                        "create table users(id integer primary key, name text);"
                        "insert into users values (1, 'ada'), (2, 'grace')"))
    return 1;

  std::string name;
  const std::error_code found = user_name(ctx::background(), db, 2, name);
  std::printf("user 2: %s\n", found ? found.message().c_str() : name.c_str());

  // A request with 100 ms left meets a query that would run for seconds.
  auto [request, cancel] = ctx::with_timeout(ctx::background(), 100ms);
  const std::error_code slow = ctx::sqlite::exec(
      request, db, "with recursive r(i) as (select 1 union all select i + 1 from r) select count(*) from r");
  std::printf("slow query: %s\n", slow.message().c_str());

  // The connection is ready for the next request.
  const std::error_code again = user_name(ctx::background(), db, 1, name);
  std::printf("user 1: %s\n", again ? again.message().c_str() : name.c_str());
  sqlite3_close(db);
  return !found && slow == ctx::errc::deadline_exceeded && !again && name == "ada" ? 0 : 1;
}
