// SPDX-License-Identifier: MIT
// A pool of K PostgreSQL connections shared by N request threads, and a
// query that stalls: every request returns at its deadline, and every
// connection is back in the pool, ready, right then. The server is the one
// libpq's environment names; the test runs this with a server of its own.
#include <ctx/ctx.hpp>
#include <ctx/postgres.hpp>
#include <ctx/queue.hpp>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
constexpr int K = 2;  // connections
constexpr int N = 6;  // request threads

int main() {
  std::vector<ctx::postgres::connection> owned;
  ctx::bounded_queue<PGconn*> pool(K);
  for (int i = 0; i < K; ++i) {
    auto [conn, err, message] = ctx::postgres::connect(ctx::background(), "");
    if (err) return std::fprintf(stderr, "connect: %s\n", message.c_str()), 1;
    (void)pool.try_push(conn.get());
    owned.push_back(std::move(conn));
  }

  // Each request has 300 ms: wait for a connection, then a query that stalls.
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::jthread> requests;
  for (int n = 0; n < N; ++n)
    requests.emplace_back([&pool, n] {
      auto [c, cancel] = ctx::with_timeout(ctx::background(), 300ms);
      std::error_code e;
      if (const auto conn = pool.pop(c, e)) {
        e = ctx::postgres::exec(c, *conn, "select pg_sleep(30)").error();
        (void)pool.try_push(*conn);  // back at once: the next user finishes the cancel
      }
      std::printf("request %d: %s\n", n, e.message().c_str());
    });
  requests.clear();  // joins
  const auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  std::printf("all %d requests done after %lld ms; %zu of %d connections in the pool\n", N,
              static_cast<long long>(took.count()), pool.size(), K);

  // Every pooled connection serves the next query.
  bool ready = pool.size() == K;
  for (const auto& conn : owned)
    ready = ready && ctx::postgres::exec(ctx::background(), conn.get(), "select 1");
  std::printf("connections ready: %s\n", ready ? "yes" : "no");
  return ready && took < 2s ? 0 : 1;
}
