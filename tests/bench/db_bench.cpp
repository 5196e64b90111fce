// SPDX-License-Identifier: MIT
// The database integrations against the plain library calls, in one run:
// the overhead of a fast statement, and cancel -> return of a long one.
//
//   cmake --preset bench && cmake --build --preset bench -j2 --target db_bench
//   build/bench/tests/bench/db_bench --benchmark_repetitions=9
//       --benchmark_enable_random_interleaving=true --benchmark_display_aggregates_only=true
//
// Latency rows use manual time: the mean of cancel -> return; counters p50_ns and p99_ns.
// The PostgreSQL rows use the server libpq's environment names (PGHOST, ...),
// for instance the tests' own: build/dev/tests/pg_fixture run /none -- db_bench ...
#include <ctx/ctx.hpp>

#include <benchmark/benchmark.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#if CTX_BENCH_SQLITE
#include <ctx/sqlite.hpp>
#endif
#if CTX_BENCH_POSTGRES
#include <ctx/postgres.hpp>
#endif

using namespace std::chrono_literals;
using std::chrono::steady_clock;

namespace {

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(p * static_cast<double>(v.size() - 1))];
}

/// A thread that runs `Round::run()` once per round and stamps when it returned.
template <class Round>
class runner {
 public:
  explicit runner(Round& r) : round_(r), t_([this] { loop(); }) {}
  ~runner() {
    go_.store(-1);
    go_.notify_all();
    t_.join();
  }
  /// Starts round `i` (>= 1); returns once the runner is about to call run().
  void start(int i) {
    go_.store(i);
    go_.notify_all();
    for (int r; (r = ready_.load()) != i;) ready_.wait(r);
  }
  /// Waits up to `limit` for round `i` to return; its return time, or nothing.
  std::optional<steady_clock::time_point> returned(int i, std::chrono::milliseconds limit) {
    const auto give_up = steady_clock::now() + limit;
    while (done_.load(std::memory_order_acquire) != i) {
      if (steady_clock::now() > give_up) return std::nullopt;
      std::this_thread::yield();
    }
    return stamp_;
  }

 private:
  void loop() {
    int seen = 0;
    for (;;) {
      int g;
      while ((g = go_.load(std::memory_order_acquire)) == seen) go_.wait(g);
      if (g < 0) return;
      seen = g;
      ready_.store(g);
      ready_.notify_all();
      round_.run();
      stamp_ = steady_clock::now();
      done_.store(g, std::memory_order_release);
    }
  }
  Round& round_;
  std::atomic<int> go_{0}, ready_{0}, done_{0};
  steady_clock::time_point stamp_;
  std::jthread t_;
};

/// Per round: reset(), run() on the runner thread, `settle` later stop(); the
/// time from stop() to run() returning. A stop that run() has not noticed
/// after 1 s (the plain library's own lost-interrupt race) is repeated, and
/// the round counted in `lost` instead of timed.
template <class Round>
void measure_stop(benchmark::State& state, Round& round, std::chrono::microseconds settle) {
  runner<Round> r(round);
  std::vector<double> lat;
  int i = 0;
  int lost = 0;
  for (auto _ : state) {
    ++i;
    round.reset();
    r.start(i);
    std::this_thread::sleep_for(settle);
    const auto t0 = steady_clock::now();
    round.stop();
    auto t1 = r.returned(i, 1000ms);
    if (!t1) {
      ++lost;
      while (!(t1 = r.returned(i, 100ms))) round.stop();
      state.SetIterationTime(1e-6);
      continue;
    }
    const double ns = std::chrono::duration<double, std::nano>(*t1 - t0).count();
    lat.push_back(ns);
    state.SetIterationTime(ns * 1e-9);
    if (!round.ok()) state.SkipWithError("the long statement was not stopped");
  }
  state.counters["p50_ns"] = percentile(lat, 0.50);
  state.counters["p99_ns"] = percentile(lat, 0.99);
  state.counters["lost"] = lost;
}

#if CTX_BENCH_SQLITE
// --- SQLite ---------------------------------------------------------------------

struct sqlite_db {
  sqlite3* db = nullptr;
  sqlite3_stmt* select1 = nullptr;
  sqlite_db() {
    if (sqlite3_open(":memory:", &db) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "select 1", -1, &select1, nullptr) != SQLITE_OK)
      std::abort();
  }
  ~sqlite_db() {
    sqlite3_finalize(select1);
    sqlite3_close(db);
  }
};

constexpr const char* sqlite_long_query =
    "with recursive r(i) as (select 1 union all select i + 1 from r) select count(*) from r";

/// Prepared `select 1` with plain SQLite: step to the row, read it, step to the end, reset.
void BM_sqlite_select1_plain(benchmark::State& state) {
  sqlite_db d;
  for (auto _ : state) {
    int rc = sqlite3_step(d.select1);
    benchmark::DoNotOptimize(sqlite3_column_int(d.select1, 0));
    rc = sqlite3_step(d.select1);
    benchmark::DoNotOptimize(rc);
    sqlite3_reset(d.select1);
  }
}
BENCHMARK(BM_sqlite_select1_plain);

/// The same through ctx::sqlite::step, under a context with a deadline (1 h).
void BM_sqlite_select1_ctx(benchmark::State& state) {
  sqlite_db d;
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 1h);
  for (auto _ : state) {
    auto r = ctx::sqlite::step(c, d.select1);
    benchmark::DoNotOptimize(ctx::sqlite::column<int>(d.select1, 0));
    r = ctx::sqlite::step(c, d.select1);
    benchmark::DoNotOptimize(r);
    sqlite3_reset(d.select1);
  }
}
BENCHMARK(BM_sqlite_select1_ctx);

/// The same through ctx::sqlite::step under background(): no handler, no call record.
void BM_sqlite_select1_ctx_background(benchmark::State& state) {
  sqlite_db d;
  for (auto _ : state) {
    auto r = ctx::sqlite::step(ctx::background(), d.select1);
    benchmark::DoNotOptimize(ctx::sqlite::column<int>(d.select1, 0));
    r = ctx::sqlite::step(ctx::background(), d.select1);
    benchmark::DoNotOptimize(r);
    sqlite3_reset(d.select1);
  }
}
BENCHMARK(BM_sqlite_select1_ctx_background);

/// A point query on a database file, the common case: bind, step to the row,
/// read it, reset. 10k rows; the file lives in /tmp for the run.
struct sqlite_file_db {
  std::string path = "/tmp/ctx-db-bench-" + std::to_string(::getpid()) + ".db";
  sqlite3* db = nullptr;
  sqlite3_stmt* point = nullptr;
  sqlite_file_db() {
    std::remove(path.c_str());
    if (sqlite3_open(path.c_str(), &db) != SQLITE_OK ||
        sqlite3_exec(db,
                     "create table users(id integer primary key, name text);"
                     "insert into users with recursive r(i) as (select 1 union all select i + 1 from r "
                     "where i < 10000) select i, 'user ' || i from r",
                     nullptr, nullptr, nullptr) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "select name from users where id = ?", -1, &point, nullptr) != SQLITE_OK)
      std::abort();
  }
  ~sqlite_file_db() {
    sqlite3_finalize(point);
    sqlite3_close(db);
    std::remove(path.c_str());
  }
};

void BM_sqlite_point_plain(benchmark::State& state) {
  sqlite_file_db d;
  int id = 0;
  for (auto _ : state) {
    sqlite3_bind_int(d.point, 1, id++ % 10000 + 1);
    if (sqlite3_step(d.point) != SQLITE_ROW) std::abort();
    benchmark::DoNotOptimize(sqlite3_column_text(d.point, 0));
    sqlite3_reset(d.point);
  }
}
BENCHMARK(BM_sqlite_point_plain);

void BM_sqlite_point_ctx(benchmark::State& state) {
  sqlite_file_db d;
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 1h);
  int id = 0;
  for (auto _ : state) {
    (void)ctx::sqlite::bind(d.point, id++ % 10000 + 1);
    if (!ctx::sqlite::step(c, d.point)) std::abort();
    benchmark::DoNotOptimize(ctx::sqlite::column<std::string_view>(d.point, 0));
    sqlite3_reset(d.point);
  }
}
BENCHMARK(BM_sqlite_point_ctx);

/// `select 1` as SQL text: sqlite3_exec, and ctx::sqlite::exec under a 1 h deadline.
void BM_sqlite_exec_select1_plain(benchmark::State& state) {
  sqlite_db d;
  for (auto _ : state) benchmark::DoNotOptimize(sqlite3_exec(d.db, "select 1", nullptr, nullptr, nullptr));
}
BENCHMARK(BM_sqlite_exec_select1_plain);

void BM_sqlite_exec_select1_ctx(benchmark::State& state) {
  sqlite_db d;
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 1h);
  for (auto _ : state) benchmark::DoNotOptimize(ctx::sqlite::exec(c, d.db, "select 1"));
}
BENCHMARK(BM_sqlite_exec_select1_ctx);

/// cancel -> ctx::sqlite::exec returns, on a query that would never end.
struct sqlite_ctx_round {
  sqlite_db d;
  ctx::context c;
  ctx::cancel_handle cancel;
  std::error_code e;
  void reset() {
    auto [nc, h] = ctx::with_cancel(ctx::background());
    c = std::move(nc);
    cancel = std::move(h);
  }
  void run() { e = ctx::sqlite::exec(c, d.db, sqlite_long_query); }
  void stop() { cancel(); }
  bool ok() const { return e == ctx::errc::canceled; }
};
void BM_sqlite_cancel_return(benchmark::State& state) {
  sqlite_ctx_round r;
  measure_stop(state, r, 2ms);
}
BENCHMARK(BM_sqlite_cancel_return)->UseManualTime()->Iterations(300);

/// The plain library's own stop: sqlite3_interrupt -> sqlite3_exec returns.
struct sqlite_raw_round {
  sqlite_db d;
  int rc = SQLITE_OK;
  void reset() {}
  void run() { rc = sqlite3_exec(d.db, sqlite_long_query, nullptr, nullptr, nullptr); }
  void stop() { sqlite3_interrupt(d.db); }
  bool ok() const { return rc == SQLITE_INTERRUPT; }
};
void BM_sqlite_interrupt_return(benchmark::State& state) {
  sqlite_raw_round r;
  measure_stop(state, r, 2ms);
}
BENCHMARK(BM_sqlite_interrupt_return)->UseManualTime()->Iterations(300);
#endif

#if CTX_BENCH_POSTGRES
// --- PostgreSQL ---------------------------------------------------------------------

/// A connection to the environment's server, or null (the rows are then skipped).
ctx::postgres::connection pg_connect() {
  auto [conn, err, message] = ctx::postgres::connect(ctx::background(), "");
  return std::move(conn);
}

/// `select 1` over a Unix socket: PQexec.
void BM_postgres_select1_plain(benchmark::State& state) {
  auto conn = pg_connect();
  if (!conn) return state.SkipWithError("no PostgreSQL server (PGHOST)");
  for (auto _ : state) PQclear(PQexec(conn.get(), "select 1"));
}
BENCHMARK(BM_postgres_select1_plain);

/// The same through ctx::postgres::exec, under a context with a deadline (1 h).
void BM_postgres_select1_ctx(benchmark::State& state) {
  auto conn = pg_connect();
  if (!conn) return state.SkipWithError("no PostgreSQL server (PGHOST)");
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 1h);
  for (auto _ : state) benchmark::DoNotOptimize(ctx::postgres::exec(c, conn.get(), "select 1"));
}
BENCHMARK(BM_postgres_select1_ctx);

/// The same under background(): no wake-up fd, poll() on the socket alone.
void BM_postgres_select1_ctx_background(benchmark::State& state) {
  auto conn = pg_connect();
  if (!conn) return state.SkipWithError("no PostgreSQL server (PGHOST)");
  for (auto _ : state)
    benchmark::DoNotOptimize(ctx::postgres::exec(ctx::background(), conn.get(), "select 1"));
}
BENCHMARK(BM_postgres_select1_ctx_background);

/// cancel -> ctx::postgres::exec returns, on pg_sleep(30); also cancel ->
/// the backend is idle in pg_stat_activity (counters idle_p50_ns, idle_p99_ns).
struct pg_ctx_round {
  ctx::postgres::connection conn = pg_connect();
  ctx::postgres::connection observer = pg_connect();
  ctx::context c;
  ctx::cancel_handle cancel;
  ctx::postgres::result r;
  steady_clock::time_point stopped;
  void reset() {
    (void)ctx::postgres::drain(ctx::background(), conn.get());  // the last round's cancel
    auto [nc, h] = ctx::with_cancel(ctx::background());
    c = std::move(nc);
    cancel = std::move(h);
  }
  void run() { r = ctx::postgres::exec(c, conn.get(), "select pg_sleep(30)"); }
  void stop() {
    stopped = steady_clock::now();
    cancel();
  }
  bool ok() const { return r.error() == ctx::errc::canceled; }
  /// Cancel -> the backend no longer runs the query, in ns.
  double idle_ns() {
    const std::string sql =
        "select state from pg_stat_activity where pid = " + std::to_string(PQbackendPID(conn.get()));
    for (;;) {
      PGresult* res = PQexec(observer.get(), sql.c_str());
      const bool active = PQntuples(res) == 1 && std::string_view(PQgetvalue(res, 0, 0)) == "active";
      PQclear(res);
      if (!active) return std::chrono::duration<double, std::nano>(steady_clock::now() - stopped).count();
    }
  }
};
void BM_postgres_cancel_return(benchmark::State& state) {
  pg_ctx_round r;
  if (!r.conn || !r.observer) return state.SkipWithError("no PostgreSQL server (PGHOST)");
  std::vector<double> idle;
  struct with_idle {
    pg_ctx_round& r;
    std::vector<double>& idle;
    void reset() { r.reset(); }
    void run() { r.run(); }
    void stop() { r.stop(); }
    bool ok() {
      idle.push_back(r.idle_ns());
      return r.ok();
    }
  } w{r, idle};
  measure_stop(state, w, 20ms);
  state.counters["idle_p50_ns"] = percentile(idle, 0.50);
  state.counters["idle_p99_ns"] = percentile(idle, 0.99);
}
BENCHMARK(BM_postgres_cancel_return)->UseManualTime()->Iterations(100);

/// The plain library's cancel: PQcancel, synchronous, from the stopping
/// thread -> PQexec returns on the running one.
struct pg_raw_round {
  ctx::postgres::connection conn = pg_connect();
  PGcancel* pc = nullptr;
  bool cancelled = false;
  void reset() { pc = PQgetCancel(conn.get()); }
  void run() {
    PGresult* res = PQexec(conn.get(), "select pg_sleep(30)");
    const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    cancelled = state && std::string_view(state) == "57014";
    PQclear(res);
  }
  void stop() {
    char err[256];
    (void)PQcancel(pc, err, sizeof err);
    PQfreeCancel(pc);
  }
  bool ok() const { return cancelled; }
};
void BM_postgres_pqcancel_return(benchmark::State& state) {
  pg_raw_round r;
  if (!r.conn) return state.SkipWithError("no PostgreSQL server (PGHOST)");
  measure_stop(state, r, 20ms);
}
BENCHMARK(BM_postgres_pqcancel_return)->UseManualTime()->Iterations(100);
#endif

}  // namespace

BENCHMARK_MAIN();
