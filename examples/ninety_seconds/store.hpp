// SPDX-License-Identifier: MIT
// The service's database: a users table and an audit table, in SQLite
// (through ctx::sqlite) or PostgreSQL (through ctx::postgres).
//
// Every call takes the context first and returns when its statement is done
// or the context is: {}, the context's error, or the engine's own error.
#pragma once

#include <ctx/ctx.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <system_error>

namespace demo {

/// One connection, used by one thread at a time (the pool sees to that).
class connection {
 public:
  virtual ~connection() = default;
  /// The name of user `id` ("" if there is none).
  [[nodiscard]] virtual std::error_code find_user(const ctx::context& c, int id, std::string& name) = 0;
  /// Counts one visit of user `id`.
  [[nodiscard]] virtual std::error_code record_visit(const ctx::context& c, int id) = 0;
  /// Appends a line to the audit log.
  [[nodiscard]] virtual std::error_code write_audit(const ctx::context& c, std::string_view trace_id,
                                                    int user, int status) = 0;
};

/// A database made for one run: its tables are created (users 1..N) when it
/// is made, and dropped (or its files removed) when it is destroyed, after
/// every connection is closed.
class database {
 public:
  virtual ~database() = default;
  /// "SQLite 3.40.1 (WAL, a file in /tmp/...)".
  [[nodiscard]] virtual std::string describe() const = 0;
  /// Opens one more connection. Throws std::runtime_error on failure.
  [[nodiscard]] virtual std::unique_ptr<connection> connect() = 0;
};

/// A fresh SQLite database in a temporary directory. Throws std::runtime_error.
[[nodiscard]] std::unique_ptr<database> make_sqlite_database(int users);

/// A fresh schema of its own on the PostgreSQL server `conninfo` names.
/// Throws std::runtime_error, also when the demo was built without libpq.
[[nodiscard]] std::unique_ptr<database> make_postgres_database(const std::string& conninfo, int users);

}  // namespace demo
