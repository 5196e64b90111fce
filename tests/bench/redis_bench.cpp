// SPDX-License-Identifier: MIT
// <ctx/redis.hpp> against plain hiredis, in one run, on a redis-server this
// program starts (tests/support/redis_server.hpp; exit 77 if not installed):
// - cancel -> a blocked BLPOP returns, against the raw pipe wake (a thread in
//   poll() on a pipe, woken by a one-byte write);
// - LPUSH through connection::command() against redisCommand() (and
//   redisCommandArgv(), the closer relative), on the Unix socket.
#include <ctx/ctx.hpp>
#include <ctx/redis.hpp>

#include <benchmark/benchmark.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "support/redis_server.hpp"
#include "wake_harness.hpp"

namespace {

ctx::redis::connection open() {
  auto conn = ctx::redis::connect_unix(ctx::background(), test::shared_redis().socket_path());
  if (conn.state() != ctx::redis::connection_state::ready) std::abort();
  return conn;
}

// --- cancel -> return ------------------------------------------------------------------

/// ctx: a BLPOP on an empty list, ended by a cancel. Between rounds (untimed)
/// the BLPOP still blocked on the server is ended with CLIENT UNBLOCK from
/// another connection and its nil reply read with get_reply().
struct ctx_blpop_round {
  ctx::redis::connection conn = open();
  std::unique_ptr<test::redis_client> admin = test::shared_redis().client();
  std::string id = std::to_string(conn.command(ctx::background(), "CLIENT", "ID")->integer);
  ctx::context c;
  ctx::cancel_handle cancel;
  void reset() {
    if (conn.state() == ctx::redis::connection_state::reply_pending) {
      (void)admin->command("CLIENT", "UNBLOCK", id);
      if (conn.get_reply(ctx::background()).error()) std::abort();
    }
    auto [nc, nh] = ctx::with_cancel(ctx::background());
    c = std::move(nc);
    cancel = std::move(nh);
  }
  void block() {
    if (conn.command(c, "BLPOP", "bench:empty", "0").error() != ctx::errc::canceled) std::abort();
  }
  void ready() {}  // blocked in poll() after the send: the command is out
  void wake() { cancel(); }
};

/// The floor: poll() on an empty pipe, woken by writing a byte.
struct raw_pipe_round {
  int fd[2] = {-1, -1};
  raw_pipe_round() {
    if (::pipe(fd) != 0) std::abort();
  }
  ~raw_pipe_round() {
    ::close(fd[0]);
    ::close(fd[1]);
  }
  void reset() {
    char b;
    pollfd p{fd[0], POLLIN, 0};
    while (::poll(&p, 1, 0) == 1 && ::read(fd[0], &b, 1) == 1) {
    }
  }
  void block() {
    pollfd p{fd[0], POLLIN, 0};
    while (::poll(&p, 1, -1) != 1) {
    }
  }
  void ready() {}
  void wake() {
    const char b = 1;
    if (::write(fd[1], &b, 1) != 1) std::abort();
  }
};

void BM_redis_cancel_blpop(benchmark::State& state) {
  ctx_blpop_round r;
  bench::measure_wake(state, r);
}
BENCHMARK(BM_redis_cancel_blpop)->UseManualTime()->Iterations(500);

void BM_redis_floor_pipe_wake(benchmark::State& state) {
  raw_pipe_round r;
  bench::measure_wake(state, r);
}
BENCHMARK(BM_redis_floor_pipe_wake)->UseManualTime()->Iterations(500);

// --- overhead of LPUSH ---------------------------------------------------------------------

void BM_redis_lpush_hiredis(benchmark::State& state) {
  redisContext* rc = redisConnectUnix(test::shared_redis().socket_path().c_str());
  if (!rc || rc->err) std::abort();
  for (auto _ : state) {
    auto* r = static_cast<redisReply*>(redisCommand(rc, "LPUSH %s %s", "bench:list", "job"));
    if (!r) std::abort();
    freeReplyObject(r);
  }
  freeReplyObject(redisCommand(rc, "DEL bench:list"));
  redisFree(rc);
}
BENCHMARK(BM_redis_lpush_hiredis)->Unit(benchmark::kMicrosecond);

void BM_redis_lpush_hiredis_argv(benchmark::State& state) {
  redisContext* rc = redisConnectUnix(test::shared_redis().socket_path().c_str());
  if (!rc || rc->err) std::abort();
  const char* argv[] = {"LPUSH", "bench:list", "job"};
  const std::size_t len[] = {5, 10, 3};
  for (auto _ : state) {
    auto* r = static_cast<redisReply*>(redisCommandArgv(rc, 3, argv, len));
    if (!r) std::abort();
    freeReplyObject(r);
  }
  freeReplyObject(redisCommand(rc, "DEL bench:list"));
  redisFree(rc);
}
BENCHMARK(BM_redis_lpush_hiredis_argv)->Unit(benchmark::kMicrosecond);

/// connection::command() under a cancellable context.
void BM_redis_lpush_ctx(benchmark::State& state) {
  auto conn = open();
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  for (auto _ : state)
    if (conn.command(c, "LPUSH", "bench:list", "job").error()) std::abort();
  (void)conn.command(c, "DEL", "bench:list");
}
BENCHMARK(BM_redis_lpush_ctx)->Unit(benchmark::kMicrosecond);

/// Both, in alternating pairs (see bench::measure_paired): the overhead
/// row, against redisCommand (`Argv` false) or redisCommandArgv (true).
template <bool Argv>
void BM_redis_lpush_paired(benchmark::State& state) {
  redisContext* rc = redisConnectUnix(test::shared_redis().socket_path().c_str());
  if (!rc || rc->err) std::abort();
  auto conn = open();
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  const char* argv[] = {"LPUSH", "bench:list", "job"};
  const std::size_t len[] = {5, 10, 3};
  bench::measure_paired(
      state,
      [&] {
        void* r =
            Argv ? redisCommandArgv(rc, 3, argv, len) : redisCommand(rc, "LPUSH %s %s", "bench:list", "job");
        if (!r) std::abort();
        freeReplyObject(r);
      },
      [&, &c = c] {
        if (conn.command(c, "LPUSH", "bench:list", "job").error()) std::abort();
      });
  freeReplyObject(redisCommand(rc, "DEL bench:list"));
  redisFree(rc);
}
BENCHMARK(BM_redis_lpush_paired<false>)->Name("BM_redis_lpush_paired")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_redis_lpush_paired<true>)->Name("BM_redis_lpush_paired_argv")->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
