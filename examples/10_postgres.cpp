// SPDX-License-Identifier: MIT
// A request's deadline reaches its PostgreSQL query: a stalled query returns
// at the deadline, the server stops it, and the connection serves the next
// request. The server is the one libpq's environment names (PGHOST, PGPORT,
// PGUSER, PGDATABASE); the test runs this with a server of its own.
#include <ctx/ctx.hpp>
#include <ctx/postgres.hpp>

#include <chrono>
#include <cstdio>
#include <string>

using namespace std::chrono_literals;

/// The seed's query: the name of user `id` ("" if there is none), under the
/// request's context and a 2 s budget of its own; or why not.
std::error_code user_name(const ctx::context& request, PGconn* db, int id, std::string& name) {
  auto [c, cancel] = ctx::with_timeout(request, 2s);
  const ctx::postgres::result r = ctx::postgres::exec(c, db, "select name from users where id = $1", id);
  name = r && r.rows() > 0 ? std::string(r.value(0, 0)) : "";
  return r.error();
}

int main() {
  auto [conn, err, message] = ctx::postgres::connect(ctx::background(), "");
  if (err) return std::fprintf(stderr, "connect: %s\n", message.c_str()), 1;
  PGconn* db = conn.get();
  if (!ctx::postgres::exec(ctx::background(), db,
                           "create temp table users(id int primary key, name text);"
                           "insert into users values (1, 'ada'), (2, 'grace')"))
    return 1;

  std::string name;
  const std::error_code found = user_name(ctx::background(), db, 2, name);
  std::printf("user 2: %s\n", found ? found.message().c_str() : name.c_str());

  // A request with 100 ms left meets a query that stalls for 30 s.
  auto [request, cancel] = ctx::with_timeout(ctx::background(), 100ms);
  const auto start = std::chrono::steady_clock::now();
  const ctx::postgres::result slow = ctx::postgres::exec(request, db, "select pg_sleep(30)");
  const auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  std::printf("slow query: %s after %lld ms\n", slow.error().message().c_str(),
              static_cast<long long>(took.count()));

  // The next request on the connection: the cancel is finished first.
  const std::error_code again = user_name(ctx::background(), db, 1, name);
  std::printf("user 1: %s\n", again ? again.message().c_str() : name.c_str());
  return !found && slow.error() == ctx::errc::deadline_exceeded && !again && name == "ada" ? 0 : 1;
}
