// SPDX-License-Identifier: MIT
// <ctx/postgres.hpp> against a real PostgreSQL server (tests/support/
// postgres_server.hpp): queries cancelled and at deadlines, what the server
// and the connection look like afterwards, parameters, errors of the server
// and of the connection, a server that dies mid-query, connects cancelled,
// cancels racing completions. Tests tagged [real] assert a real-time bound.
#include <ctx/ctx.hpp>
#include <ctx/postgres.hpp>

#include <libpq-fe.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <latch>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"
#include "support/engine.hpp"
#include "support/latency.hpp"
#include "support/postgres_server.hpp"
#include "support/temp_dir.hpp"

using namespace std::chrono_literals;
using std::chrono::steady_clock;

namespace {

/// A new connection to the shared server (REQUIREs success).
ctx::postgres::connection connect() {
  auto [conn, err, message] =
      ctx::postgres::connect(ctx::background(), test::postgres_server::shared().conninfo());
  INFO(message);
  REQUIRE(err == std::error_code{});
  REQUIRE(conn);
  return std::move(conn);
}

/// The single value `sql` returns, through plain libpq.
std::string value(PGconn* conn, const char* sql) {
  PGresult* r = PQexec(conn, sql);
  INFO(PQresultErrorMessage(r));
  REQUIRE(PQresultStatus(r) == PGRES_TUPLES_OK);
  REQUIRE(PQntuples(r) == 1);
  std::string v = PQgetvalue(r, 0, 0);
  PQclear(r);
  return v;
}

/// Waits (up to 5 s) until backend `pid` no longer runs a query; how long that took.
std::optional<steady_clock::duration> until_idle(PGconn* observer, int pid) {
  const auto start = steady_clock::now();
  const std::string sql = "select state from pg_stat_activity where pid = " + std::to_string(pid);
  while (steady_clock::now() - start < 5s) {
    if (value(observer, sql.c_str()) != "active") return steady_clock::now() - start;
    std::this_thread::sleep_for(1ms);
  }
  return std::nullopt;
}

std::chrono::milliseconds since(steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(steady_clock::now() - t);
}

/// Cancels `cancel` after `after` on a thread of its own, recording when.
class canceller {
 public:
  canceller(ctx::cancel_handle& cancel, std::chrono::milliseconds after)
      : t_([&cancel, after, this] {
          std::this_thread::sleep_for(after);
          at_ = steady_clock::now();
          cancel();
        }) {}
  steady_clock::time_point when() {
    t_.join();
    return at_;
  }

 private:
  steady_clock::time_point at_;
  std::thread t_;
};

}  // namespace

// --- success, parameters, errors ------------------------------------------------

TEST_CASE("exec runs a query and returns its rows", "[postgres]") {
  auto conn = connect();
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 10s);
  const auto r = ctx::postgres::exec(c, conn.get(), "select 1 as one, 'two'::text, null::int");
  REQUIRE(r.error() == std::error_code{});
  REQUIRE(r);
  CHECK(r.rows() == 1);
  CHECK(r.columns() == 3);
  CHECK(r.value(0, 0) == "1");
  CHECK(r.value(0, 1) == "two");
  CHECK(r.is_null(0, 2));
  CHECK(r.message().empty());
  // Several statements: the last one's result.
  const auto m = ctx::postgres::exec(
      c, conn.get(), "create temp table t(v int); insert into t values (1), (2); select sum(v) from t");
  REQUIRE(m);
  CHECK(m.value(0, 0) == "3");
}

TEST_CASE("parameters are bound without building SQL text", "[postgres]") {
  auto conn = connect();
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 10s);
  const std::vector<std::byte> blob{std::byte{0}, std::byte{'\''}, std::byte{255}};
  const auto r = ctx::postgres::exec(c, conn.get(),
                                     "select $1::int8 + 1, $2::text, $3::int is null, length($4::bytea), "
                                     "$5::float8 * 2, $6::bool, $7::text",
                                     std::int64_t{41}, "it's; drop table x", nullptr, std::span(blob), 1.25,
                                     true, std::optional<std::string>("opt"));
  INFO(r.message());
  REQUIRE(r);
  CHECK(r.value(0, 0) == "42");
  CHECK(r.value(0, 1) == "it's; drop table x");
  CHECK(r.value(0, 2) == "t");
  CHECK(r.value(0, 3) == "3");
  CHECK(r.value(0, 4) == "2.5");
  CHECK(r.value(0, 5) == "t");
  CHECK(r.value(0, 6) == "opt");
}

TEST_CASE("bad SQL returns the server's SQLSTATE and message and the connection works on", "[postgres]") {
  auto conn = connect();
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 10s);
  const auto r = ctx::postgres::exec(c, conn.get(), "selec 1");
  CHECK_FALSE(r);
  CHECK(r.error().category() == ctx::postgres::category());
  CHECK(std::string(r.error().category().name()) == "postgres");
  CHECK(r.sqlstate() == "42601");
  CHECK(r.error() == ctx::postgres::make_error_code("42601"));
  CHECK(r.error().message() == "SQLSTATE 42601: syntax error or access rule violation");
  CHECK(r.message().find("syntax error") != std::string_view::npos);
  REQUIRE(r.get());  // the server's full error, for detail and position
  CHECK(std::string(PQresultErrorField(r.get(), PG_DIAG_SQLSTATE)) == "42601");

  const auto missing = ctx::postgres::exec(c, conn.get(), "select * from no_such_table");
  CHECK(missing.sqlstate() == "42P01");
  CHECK(ctx::postgres::exec(c, conn.get(), "select 1").value(0, 0) == "1");
}

TEST_CASE("make_error_code and sqlstate round-trip every SQLSTATE character", "[postgres]") {
  for (const char* s : {"42601", "57014", "08006", "XX000", "P0001", "2BP01", "22P02", "HV00A"}) {
    const std::error_code e = ctx::postgres::make_error_code(s);
    CHECK(e.category() == ctx::postgres::category());
    CHECK(ctx::postgres::sqlstate(e) == s);
  }
  CHECK(ctx::postgres::make_error_code("00000") == std::error_code{});
  CHECK(ctx::postgres::sqlstate(std::error_code(1, std::generic_category())).empty());
}

TEST_CASE("a refused connection returns 08001 with libpq's message", "[postgres]") {
  test::temp_dir empty("ctx-pg-none");  // a socket directory with no server in it
  auto [conn, err, message] =
      ctx::postgres::connect(ctx::background(), "host=" + empty.path().string() + " port=5432 user=postgres");
  CHECK_FALSE(conn);
  CHECK(err == ctx::postgres::make_error_code("08001"));
  CHECK(message.find("No such file or directory") != std::string::npos);

  // TCP: a port that was just free on the loopback.
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(s);
  auto refused = ctx::postgres::connect(ctx::background(),
                                        "hostaddr=127.0.0.1 port=" + std::to_string(ntohs(a.sin_port)));
  CHECK(refused.error == ctx::postgres::make_error_code("08001"));
  CHECK(refused.message.find("refused") != std::string::npos);
}

TEST_CASE("exec on a null connection returns 08003", "[postgres]") {
  CHECK(ctx::postgres::exec(ctx::background(), nullptr, "select 1").sqlstate() == "08003");
}

// --- a done context sends nothing --------------------------------------------------

TEST_CASE("an already done context sends nothing and starts no connection", "[postgres]") {
  auto conn = connect();
  REQUIRE(ctx::postgres::exec(ctx::background(), conn.get(), "create temp table t(v int)"));
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  CHECK(ctx::postgres::exec(c, conn.get(), "insert into t values (1)").error() == canceled);
  CHECK(ctx::postgres::exec(c, conn.get(), "insert into t values ($1)", 1).error() == canceled);
  CHECK(ctx::postgres::drain(c, conn.get()) == canceled);
  CHECK(value(conn.get(), "select count(*) from t") == "0");
  auto [none, err, message] = ctx::postgres::connect(c, test::postgres_server::shared().conninfo());
  CHECK_FALSE(none);
  CHECK(err == canceled);
}

// --- a running query --------------------------------------------------------------------

TEST_CASE("pg_sleep cancelled at 100 ms returns at once and the backend stops", "[postgres][real]") {
  auto conn = connect();
  auto observer = connect();
  const int pid = PQbackendPID(conn.get());
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  canceller k(cancel, 100ms);
  const auto r = ctx::postgres::exec(c, conn.get(), "select pg_sleep(30)");
  const auto returned = steady_clock::now();
  const auto cancelled = k.when();
  CHECK(r.error() == canceled);
  CHECK(returned - cancelled < 1s);
  // The cancel request is on its way: the connection reports a query in flight.
  CHECK(PQtransactionStatus(conn.get()) == PQTRANS_ACTIVE);
  const auto idle = until_idle(observer.get(), pid);
  REQUIRE(idle);
  CHECK(*idle < 1s);
  // The next query on the same connection works (it finishes the cancel first).
  const auto next = ctx::postgres::exec(ctx::background(), conn.get(), "select 2");
  REQUIRE(next);
  CHECK(next.value(0, 0) == "2");
  CHECK(PQtransactionStatus(conn.get()) == PQTRANS_IDLE);
}

TEST_CASE("pg_sleep stops at its deadline with deadline_exceeded", "[postgres][real]") {
  auto conn = connect();
  const auto start = steady_clock::now();
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 100ms);
  CHECK(ctx::postgres::exec(c, conn.get(), "select pg_sleep(30)").error() == deadline_exceeded);
  CHECK(since(start) >= 100ms);
  CHECK(since(start) < 1s);
  CHECK(ctx::postgres::drain(ctx::background(), conn.get()) == std::error_code{});
  CHECK(PQtransactionStatus(conn.get()) == PQTRANS_IDLE);
  CHECK(value(conn.get(), "select 3") == "3");
}

TEST_CASE("a query cancelled inside a transaction leaves it failed until rollback", "[postgres]") {
  auto conn = connect();
  REQUIRE(ctx::postgres::exec(ctx::background(), conn.get(), "create temp table t(v int)"));
  REQUIRE(ctx::postgres::exec(ctx::background(), conn.get(), "begin; insert into t values (1)"));
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 50ms);
  CHECK(ctx::postgres::exec(c, conn.get(), "select pg_sleep(30)").error() == deadline_exceeded);
  REQUIRE(ctx::postgres::drain(ctx::background(), conn.get()) == std::error_code{});
  CHECK(PQtransactionStatus(conn.get()) == PQTRANS_INERROR);
  CHECK(ctx::postgres::exec(ctx::background(), conn.get(), "select 1").sqlstate() == "25P02");
  REQUIRE(ctx::postgres::exec(ctx::background(), conn.get(), "rollback"));
  CHECK(value(conn.get(), "select count(*) from t") == "0");
}

TEST_CASE("a forked child sends its own cancels while the parent's canceller lingers", "[postgres][fork]") {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // The child allocates (libpq does), and the sanitizers' allocators are not
  // safe in the child of a multi-threaded fork (the canceller has a thread).
  test::skip_in_this_build(
      "fork() in a multi-threaded process: the sanitizers' allocators are not safe in the child");
#else
  if (test::under_valgrind()) {
    // The child abandons the parent's canceller state, by design: valgrind's
    // leak check of the child would report it.
    test::skip_in_this_build("the child abandons state by design, which valgrind's leak check would report");
  }
  const std::string conninfo = test::postgres_server::shared().conninfo();
  {
    // A cancel in the parent: its canceller thread then lingers, idle.
    auto conn = connect();
    auto [c, cancel] = ctx::with_timeout(ctx::background(), 20ms);
    CHECK(ctx::postgres::exec(c, conn.get(), "select pg_sleep(30)").error() == deadline_exceeded);
    REQUIRE(ctx::postgres::drain(ctx::background(), conn.get()) == std::error_code{});
  }
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Before the fix the child counted the parent's idle worker as its own:
    // its cancel was queued for a thread that does not exist here, and the
    // next call waited for that cancel until its deadline.
    auto [conn, err, message] = ctx::postgres::connect(ctx::background(), conninfo);
    if (!conn) ::_exit(2);
    auto [c, cancel] = ctx::with_timeout(ctx::background(), 20ms);
    if (ctx::postgres::exec(c, conn.get(), "select pg_sleep(30)").error() != deadline_exceeded) ::_exit(3);
    auto [next, stop] = ctx::with_timeout(ctx::background(), 20s);
    const auto r = ctx::postgres::exec(next, conn.get(), "select 1");
    ::_exit(r && r.value(0, 0) == "1" ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
#endif
}

TEST_CASE("a new connection at a closed one's address does not wait for that one's cancel", "[postgres]") {
  // Pools close a connection whose call was cancelled. Its cancel request
  // may still be on its way when malloc gives its address to the next
  // connection, and the canceller remembered requests by address: the new
  // connection's first call waited for the old one's cancel. Here the old
  // cancels cannot be served at all (their server's postmaster is stopped),
  // so such a wait is unmistakable.
  auto other = test::postgres_server::start();
  std::vector<ctx::postgres::connection> olds;
  for (int i = 0; i < 20; ++i) {
    auto [conn, err, message] = ctx::postgres::connect(ctx::background(), other->conninfo());
    REQUIRE(conn);
    olds.push_back(std::move(conn));
  }
  const pid_t pm = other->postmaster_pid();
  REQUIRE(pm > 0);
  REQUIRE(::kill(pm, SIGSTOP) == 0);
  struct resume {
    pid_t pm;
    ~resume() { ::kill(pm, SIGCONT); }
  } resume_at_end{pm};
  bool reused = false;
  for (auto& old : olds) {
    auto [c, cancel] = ctx::with_timeout(ctx::background(), 20ms);
    REQUIRE(ctx::postgres::exec(c, old.get(), "select pg_sleep(5)").error() == deadline_exceeded);
    const PGconn* const address = old.get();
    old.reset();  // closed with its cancel still on its way
    auto conn = connect();
    if (conn.get() != address) continue;
    reused = true;
    auto [next, stop] = ctx::with_timeout(ctx::background(), 5s);
    const auto r = ctx::postgres::exec(next, conn.get(), "select 1");
    REQUIRE(r.error() == std::error_code{});
    CHECK(r.value(0, 0) == "1");
    break;
  }
  if (!reused) SUCCEED("malloc never gave a closed connection's address to the next (ASan's quarantine)");
}

TEST_CASE("a large query is flushed under the context", "[postgres]") {
  auto conn = connect();
  const std::string big(4 << 20, 'x');  // larger than any socket buffer
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 30s);
  const auto r = ctx::postgres::exec(c, conn.get(), "select length('" + big + "')");
  REQUIRE(r);
  CHECK(r.value(0, 0) == std::to_string(big.size()));
  const auto p = ctx::postgres::exec(c, conn.get(), "select length($1)", big);
  REQUIRE(p);
  CHECK(p.value(0, 0) == std::to_string(big.size()));
}

// --- the server goes away ------------------------------------------------------------------

TEST_CASE("a backend terminated mid-query returns 08006 and never hangs", "[postgres]") {
  auto conn = connect();
  auto killer = connect();
  const int pid = PQbackendPID(conn.get());
  std::thread t([&] {
    std::this_thread::sleep_for(100ms);
    (void)value(killer.get(), ("select pg_terminate_backend(" + std::to_string(pid) + ")").c_str());
  });
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 60s);
  const auto r = ctx::postgres::exec(c, conn.get(), "select pg_sleep(30)");
  t.join();
  CHECK(r.error().category() == ctx::postgres::category());
  CHECK(r.message().find("terminat") != std::string_view::npos);
  // The connection is broken, and says so; the next call errors at once.
  CHECK(PQstatus(conn.get()) == CONNECTION_BAD);
  CHECK(ctx::postgres::exec(c, conn.get(), "select 1").sqlstate() == "08006");
}

TEST_CASE("a server killed mid-query returns 08006 and never hangs", "[postgres]") {
  auto own = test::postgres_server::start();
  auto [conn, err, message] = ctx::postgres::connect(ctx::background(), own->conninfo());
  REQUIRE(conn);
  std::thread t([&] {
    std::this_thread::sleep_for(100ms);
    own->kill_hard();
  });
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 60s);
  const auto r = ctx::postgres::exec(c, conn.get(), "select pg_sleep(30)");
  t.join();
  CHECK(r.sqlstate() == "08006");
  CHECK_FALSE(r.message().empty());
  CHECK(PQstatus(conn.get()) == CONNECTION_BAD);
  // And a connect to the dead server fails, it does not hang.
  auto again = ctx::postgres::connect(c, own->conninfo());
  CHECK(again.error == ctx::postgres::make_error_code("08001"));
}

// --- connects --------------------------------------------------------------------------------

TEST_CASE("a connect to a server that never answers ends at the deadline", "[postgres][real]") {
  // A listener that never accepts: the kernel completes the TCP handshake,
  // libpq sends its startup packet and waits for an answer that never comes.
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(s, 4) == 0);
  REQUIRE(::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  const auto start = steady_clock::now();
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 100ms);
  auto [conn, err, message] = ctx::postgres::connect(
      c, "hostaddr=127.0.0.1 sslmode=disable connect_timeout=30 port=" + std::to_string(ntohs(a.sin_port)));
  CHECK_FALSE(conn);
  CHECK(err == deadline_exceeded);
  CHECK(since(start) < 1s);
  ::close(s);
}

// --- races ------------------------------------------------------------------------------------

TEST_CASE("cancels racing quick inserts leave every connection usable", "[postgres]") {
  auto conn = connect();
  REQUIRE(ctx::postgres::exec(ctx::background(), conn.get(), "create temp table t(id int)"));
  int ok = 0;
  for (int i = 0; i < 200; ++i) {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    std::latch start(2);
    std::thread t([&, &h = cancel] {  // clang 14: no capture of a structured binding
      start.arrive_and_wait();
      h();
    });
    start.arrive_and_wait();
    const auto r = ctx::postgres::exec(c, conn.get(), "insert into t values ($1)", i);
    t.join();
    if (r) {
      ++ok;
    } else {
      REQUIRE(r.error() == canceled);
    }
  }
  // Every insert reported done is there; a cancelled one may have completed
  // on the server just before the cancel reached it (documented), never twice.
  const auto n = std::stoi(
      std::string(ctx::postgres::exec(ctx::background(), conn.get(), "select count(*) from t").value(0, 0)));
  CHECK(n >= ok);
  CHECK(n <= 200);
  CHECK(ctx::postgres::exec(ctx::background(), conn.get(), "select count(distinct id) = count(*) from t")
            .value(0, 0) == "t");
}

TEST_CASE("threads with their own connections cancelled at random stay usable", "[postgres]") {
  constexpr int threads = 4;
  std::atomic<int> failures{0};
  std::latch ready(threads);
  std::vector<std::thread> ts;
  for (int n = 0; n < threads; ++n) {
    ts.emplace_back([&, n] {
      auto [conn, err, message] =
          ctx::postgres::connect(ctx::background(), test::postgres_server::shared().conninfo());
      if (!conn) {
        failures.fetch_add(1);
        ready.count_down();
        return;
      }
      ready.arrive_and_wait();
      for (int i = 0; i < 15; ++i) {
        auto [c, cancel] =
            ctx::with_timeout(ctx::background(), std::chrono::milliseconds(1 + (i * 7 + n) % 20));
        const auto r = ctx::postgres::exec(c, conn.get(), "select pg_sleep(0.01 * $1)", i % 3);
        if (!r && r.error() != deadline_exceeded) failures.fetch_add(1);
        const auto next = ctx::postgres::exec(ctx::background(), conn.get(), "select $1::int", i);
        if (!next || next.value(0, 0) != std::to_string(i)) failures.fetch_add(1);
      }
    });
  }
  for (auto& t : ts) t.join();
  CHECK(failures.load() == 0);
}
