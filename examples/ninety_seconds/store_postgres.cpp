// SPDX-License-Identifier: MIT
// The service's database in PostgreSQL, through ctx::postgres: a schema of
// its own on the server that --postgres names, dropped at the end.
#include <stdexcept>
#include <string>

#include "store.hpp"

#if NINETY_SECONDS_POSTGRES
#include <ctx/postgres.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>

namespace demo {
namespace {

using namespace std::chrono_literals;

ctx::postgres::connection open(const std::string& conninfo) {
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 10s);
  auto [conn, err, message] = ctx::postgres::connect(c, conninfo);
  if (err)
    throw std::runtime_error("postgres: cannot connect: " + (message.empty() ? err.message() : message));
  return std::move(conn);
}

void run(PGconn* conn, const std::string& sql) {
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 30s);
  const ctx::postgres::result r = ctx::postgres::exec(c, conn, sql);
  if (!r)
    throw std::runtime_error("postgres: " + sql + ": " + std::string(r.message()) + " (" + r.sqlstate() +
                             ")");
}

class postgres_connection final : public connection {
 public:
  explicit postgres_connection(ctx::postgres::connection conn) : conn_(std::move(conn)) {}

  std::error_code find_user(const ctx::context& c, int id, std::string& name) override {
    const ctx::postgres::result r =
        ctx::postgres::exec(c, conn_.get(), "select name from users where id = $1", id);
    name = r && r.rows() > 0 ? std::string(r.value(0, 0)) : "";
    return r.error();
  }

  std::error_code record_visit(const ctx::context& c, int id) override {
    return ctx::postgres::exec(c, conn_.get(), "update users set visits = visits + 1 where id = $1", id)
        .error();
  }

  std::error_code write_audit(const ctx::context& c, std::string_view trace_id, int user,
                              int status) override {
    return ctx::postgres::exec(c, conn_.get(),
                               "insert into audit(trace_id, user_id, status) values ($1, $2, $3)", trace_id,
                               user, status)
        .error();
  }

 private:
  ctx::postgres::connection conn_;
};

class postgres_database final : public database {
 public:
  postgres_database(const std::string& conninfo, int users) : conninfo_(conninfo) {
    static std::atomic<int> made{0};
    schema_ = "ninety_seconds_" + std::to_string(::getpid()) + "_" + std::to_string(made++);
    const ctx::postgres::connection conn = open(conninfo_);
    PQsetNoticeProcessor(
        conn.get(), [](void*, const char*) {}, nullptr);
    version_ = std::to_string(PQserverVersion(conn.get()) / 10000);
    run(conn.get(),
        "create schema " + schema_ + "; set search_path to " + schema_ +
            ";"
            "create table users(id int primary key, name text not null, visits int not null default 0);"
            "create table audit(id bigserial primary key, trace_id text, user_id int, status int);"
            "insert into users(id, name) select g, 'user ' || g from generate_series(1, " +
            std::to_string(users) + ") g;");
  }
  postgres_database(const postgres_database&) = delete;
  postgres_database& operator=(const postgres_database&) = delete;
  ~postgres_database() override {
    try {
      const ctx::postgres::connection conn = open(conninfo_);
      PQsetNoticeProcessor(
          conn.get(), [](void*, const char*) {}, nullptr);
      run(conn.get(), "drop schema " + schema_ + " cascade");
    } catch (const std::exception&) {
      // The server went away: nothing left to drop.
    }
  }

  std::string describe() const override { return "PostgreSQL " + version_ + " (schema " + schema_ + ")"; }

  std::unique_ptr<connection> connect() override {
    ctx::postgres::connection conn = open(conninfo_);
    run(conn.get(), "set search_path to " + schema_);
    return std::make_unique<postgres_connection>(std::move(conn));
  }

 private:
  std::string conninfo_, schema_, version_;
};

}  // namespace

std::unique_ptr<database> make_postgres_database(const std::string& conninfo, int users) {
  return std::make_unique<postgres_database>(conninfo, users);
}

}  // namespace demo

#else  // built without libpq

namespace demo {

std::unique_ptr<database> make_postgres_database(const std::string&, int) {
  throw std::runtime_error(
      "this build has no PostgreSQL support: install libpq-dev (Debian), then configure and build again");
}

}  // namespace demo

#endif
