// SPDX-License-Identifier: MIT
// The service's database in SQLite, through ctx::sqlite: a file in a
// temporary directory, in WAL mode so that readers never wait for the writer.
#include <ctx/sqlite.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "store.hpp"

namespace demo {
namespace {

using namespace std::chrono_literals;

sqlite3* open_file(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) != SQLITE_OK) {
    const std::string why = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    throw std::runtime_error("sqlite: cannot open " + path + ": " + why);
  }
  // Lock waits (another connection writing) end with the call's context too.
  if (ctx::sqlite::busy_timeout(db, 5s) ||
      ctx::sqlite::exec(ctx::background(), db, "pragma synchronous = normal")) {
    const std::string why = sqlite3_errmsg(db);
    sqlite3_close(db);
    throw std::runtime_error("sqlite: cannot set up " + path + ": " + why);
  }
  return db;
}

ctx::sqlite::statement prepare(sqlite3* db, std::string_view sql) {
  auto [stmt, err, tail] = ctx::sqlite::prepare(ctx::background(), db, sql);
  if (err) throw std::runtime_error("sqlite: " + std::string(sql) + ": " + sqlite3_errmsg(db));
  return std::move(stmt);
}

class sqlite_connection final : public connection {
 public:
  explicit sqlite_connection(const std::string& path)
      : db_(open_file(path)),
        find_(prepare(db_, "select name from users where id = ?1")),
        visit_(prepare(db_, "update users set visits = visits + 1 where id = ?1")),
        audit_(prepare(db_, "insert into audit(trace_id, user_id, status) values (?1, ?2, ?3)")) {}
  sqlite_connection(const sqlite_connection&) = delete;
  sqlite_connection& operator=(const sqlite_connection&) = delete;
  ~sqlite_connection() override {
    find_.reset();
    visit_.reset();
    audit_.reset();
    sqlite3_close(db_);
  }

  std::error_code find_user(const ctx::context& c, int id, std::string& name) override {
    sqlite3_stmt* s = find_.get();
    if (const std::error_code e = ctx::sqlite::bind(s, id)) return e;
    const ctx::sqlite::step_result row = ctx::sqlite::step(c, s);
    name = row ? ctx::sqlite::column<std::string>(s, 0) : "";
    sqlite3_reset(s);  // ends the read: the statement runs again from its first row
    return row.error();
  }

  std::error_code record_visit(const ctx::context& c, int id) override { return run(c, visit_.get(), id); }

  std::error_code write_audit(const ctx::context& c, std::string_view trace_id, int user,
                              int status) override {
    return run(c, audit_.get(), trace_id, user, status);
  }

 private:
  /// Binds `args` and steps `s` to its end.
  template <class... Args>
  static std::error_code run(const ctx::context& c, sqlite3_stmt* s, const Args&... args) {
    if (const std::error_code e = ctx::sqlite::bind(s, args...)) return e;
    const ctx::sqlite::step_result done = ctx::sqlite::step(c, s);
    sqlite3_reset(s);
    return done.error();
  }

  sqlite3* db_;
  ctx::sqlite::statement find_, visit_, audit_;
};

class sqlite_database final : public database {
 public:
  explicit sqlite_database(int users) {
    char dir[] = "/tmp/ninety_seconds-XXXXXX";
    if (!::mkdtemp(dir)) throw std::runtime_error("sqlite: cannot make a temporary directory");
    dir_ = dir;
    path_ = dir_ + "/users.db";
    sqlite3* db = open_file(path_);
    const std::string setup =
        "pragma journal_mode = wal;"
        "create table users(id integer primary key, name text not null, visits integer not null default 0);"
        "create table audit(id integer primary key, trace_id text, user_id integer, status integer);"
        "with recursive n(i) as (select 1 union all select i + 1 from n where i < " +
        std::to_string(users) + ") insert into users(id, name) select i, 'user ' || i from n;";
    const std::error_code err = ctx::sqlite::exec(ctx::background(), db, setup);
    const std::string why = err ? sqlite3_errmsg(db) : "";
    sqlite3_close(db);
    if (err) {
      std::filesystem::remove_all(dir_);
      throw std::runtime_error("sqlite: cannot create the tables: " + why);
    }
  }
  sqlite_database(const sqlite_database&) = delete;
  sqlite_database& operator=(const sqlite_database&) = delete;
  ~sqlite_database() override {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  std::string describe() const override { return std::string("SQLite ") + sqlite3_libversion() + " (WAL)"; }
  std::unique_ptr<connection> connect() override { return std::make_unique<sqlite_connection>(path_); }

 private:
  std::string dir_, path_;
};

}  // namespace

std::unique_ptr<database> make_sqlite_database(int users) { return std::make_unique<sqlite_database>(users); }

}  // namespace demo
