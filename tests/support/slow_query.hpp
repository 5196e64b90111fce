// SPDX-License-Identifier: MIT
// B's slow query in the two-process tests and the wire benchmark: the one
// place that says what B's work is.
#pragma once

#include <ctx/ctx.hpp>
#include <ctx/sqlite.hpp>

#include <system_error>

namespace test {

/// B's slow query, the one place that says what B's work is: a SQLite query
/// of about 10 s here (the sum of a recursive CTE of 25 million rows, in an
/// in-memory database of its own) through ctx::sqlite::exec under `c`.
/// Returns `{}` if it ran to the end, exactly `c.err()` if `c` ended it, or
/// SQLite's error.
inline std::error_code slow_query(const ctx::context& c) {
  sqlite3* db = nullptr;
  if (const int rc = sqlite3_open(":memory:", &db); rc != SQLITE_OK) {
    sqlite3_close(db);
    return ctx::sqlite::make_error_code(rc);
  }
  const std::error_code ec = ctx::sqlite::exec(c, db,
                                               "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM "
                                               "r WHERE i < 25000000) SELECT sum(i) FROM r");
  sqlite3_close(db);
  return ec;
}

}  // namespace test
