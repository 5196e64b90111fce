// SPDX-License-Identifier: MIT
// <ctx/redis.hpp> against a real redis-server (tests/support/redis_server.hpp):
// blocking consumes that return at cancel, what the connection is afterwards,
// a publish that is in the list once or not at all as reported, a command
// half-sent, a server killed mid-command, replies never mismatched.
#include <ctx/ctx.hpp>
#include <ctx/redis.hpp>
#include <ctx/testing.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <latch>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"
#include "support/latency.hpp"
#include "support/posix_helpers.hpp"
#include "support/redis_server.hpp"

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using ctx::redis::connection_state;

namespace {

ctx::redis::connection open(const test::redis_server& s) {
  auto conn = ctx::redis::connect_unix(ctx::background(), s.socket_path());
  REQUIRE(conn.state() == connection_state::ready);
  return conn;
}

std::string_view str(const ctx::redis::reply& r) {
  REQUIRE(r.get());
  return {r->str, r->len};
}

/// A field of INFO (e.g. "blocked_clients").
long long info(test::redis_client& cl, std::string_view field) {
  const test::redis_reply r = cl.command("INFO");
  const std::string_view text(r->str, r->len);
  const std::size_t at = text.find(std::string(field) + ":");
  if (at == std::string_view::npos) return -1;
  return std::stoll(std::string(text.substr(at + field.size() + 1)));
}

/// Waits until INFO's `field` is `value` (an external process's state: nothing to wait on but it).
bool wait_info(test::redis_client& cl, std::string_view field, long long value) {
  const auto give_up = steady::now() + 20s;
  while (info(cl, field) != value) {
    if (steady::now() > give_up) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

/// A command run on a new thread; records when it returned.
struct background_command {
  ctx::redis::reply result;
  steady::time_point returned;
  std::atomic<int> tid{0};
  std::latch started{1};  // a member: it outlives the thread's count_down()
  std::thread t;

  template <class F>
  explicit background_command(F f) {
    t = std::thread([this, f] {
      tid = test::this_tid();
      started.count_down();
      result = f();
      returned = steady::now();
    });
    started.wait();
  }
  bool blocked() const { return test::wait_until_blocked(tid.load()); }
  void join() { t.join(); }
};

}  // namespace

// --- the plain path -----------------------------------------------------------------

TEST_CASE("connect and commands round trip with hiredis replies", "[redis]") {
  auto& s = test::shared_redis();
  auto conn = open(s);
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
  auto r = conn.command(c, "SET", "greeting", std::string("hello\0world", 11));
  CHECK(r.error() == std::error_code{});
  CHECK(r.sent());
  CHECK(r->type == REDIS_REPLY_STATUS);
  r = conn.command(c, "GET", "greeting");
  CHECK(str(r) == std::string_view("hello\0world", 11));  // binary-safe
  r = conn.command(c, "DEL", "list:plain");
  r = conn.command(c, "LPUSH", "list:plain", "a", "b");
  CHECK(r->type == REDIS_REPLY_INTEGER);
  CHECK(r->integer == 2);
  std::vector<std::string_view> args = {"RPUSH", "list:plain", "c", "d", "e", "f", "g", "h", "i", "j", "k"};
  r = conn.command_argv(c, args);  // more arguments than the formatter's stack arrays hold
  CHECK(r->integer == 11);
  r = conn.command(ctx::background(), "GET", "no-such-key");
  CHECK(r->type == REDIS_REPLY_NIL);
  CHECK(r.error() == std::error_code{});
  CHECK(conn.state() == connection_state::ready);
  redisReply* raw = r.release();
  CHECK(r.get() == nullptr);
  freeReplyObject(raw);
}

TEST_CASE("an already done context sends nothing and connects nothing", "[redis]") {
  auto& s = test::shared_redis();
  auto cl = s.client();
  auto conn = open(s);
  (void)cl->command("DEL", "list:done");
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  const auto r = conn.command(c, "LPUSH", "list:done", "x");
  CHECK(r.error() == canceled);
  CHECK(!r.sent());
  CHECK(r.get() == nullptr);
  CHECK(conn.state() == connection_state::ready);
  CHECK(conn.get_reply(c).error() == canceled);
  CHECK(conn.state() == connection_state::ready);

  const long long connections = info(*cl, "total_connections_received");
  auto [d, cancel_d] = ctx::with_timeout(ctx::background(), -1s);
  const auto none = ctx::redis::connect_unix(d, s.socket_path());
  CHECK(none.state() == connection_state::closed);
  CHECK(none.error() == deadline_exceeded);
  CHECK(ctx::redis::connect(c, "127.0.0.1", 1).error() == canceled);
  CHECK(info(*cl, "total_connections_received") == connections);

  CHECK(conn.command(ctx::background(), "PING").error() == std::error_code{});  // still usable
  CHECK(cl->integer("EXISTS", "list:done") == 0);
}

// --- blocking consumes: cancel, deadline, and the connection afterwards ----------------

TEST_CASE("a BLPOP blocked on an empty list returns at cancel within 50 ms", "[redis][cancel]") {
  auto& s = test::shared_redis();
  auto conn = open(s);
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  background_command b([&, c = c] { return conn.command(c, "BLPOP", "list:cancel", "0"); });
  REQUIRE(b.blocked());
  const auto t0 = steady::now();
  cancel();
  b.join();
  CHECK(b.result.error() == canceled);
  CHECK(b.result.sent());
  CHECK(b.result.get() == nullptr);
  INFO("cancel -> return: " << test::ms(b.returned - t0) << " ms");
  CHECK(test::within(b.returned - t0, 50ms));
  CHECK(conn.state() == connection_state::reply_pending);
}

TEST_CASE("a deadline ends a blocked BLPOP within 50 ms of it", "[redis][deadline]") {
  auto conn = open(test::shared_redis());
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 100ms);
  const steady::time_point deadline = *c.deadline();
  const auto r = conn.command(c, "BLPOP", "list:deadline", "0");
  const auto late = steady::now() - deadline;
  CHECK(r.error() == deadline_exceeded);
  INFO("deadline -> return: " << test::ms(late) << " ms");
  CHECK(test::within(late, 50ms));
  CHECK(conn.state() == connection_state::reply_pending);
}

TEST_CASE("a manual clock deadline ends a blocked BLPOP when the clock is advanced", "[redis][deadline]") {
  auto conn = open(test::shared_redis());
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 10s);
  background_command b([&, c = c] { return conn.command(c, "BLPOP", "list:manual", "0"); });
  REQUIRE(b.blocked());
  manual::advance(10s);
  b.join();
  CHECK(b.result.error() == deadline_exceeded);
}

TEST_CASE("an item pushed after a cancelled BLPOP is delivered by get_reply", "[redis][cancel]") {
  auto& s = test::shared_redis();
  auto cl = s.client();
  (void)cl->command("DEL", "list:late");
  auto conn = open(s);
  {
    auto [c, cancel] = ctx::with_timeout(ctx::background(), 20ms);
    CHECK(conn.command(c, "BLPOP", "list:late", "0").error() == deadline_exceeded);
  }
  REQUIRE(conn.state() == connection_state::reply_pending);
  // The BLPOP is still blocked on the server: it takes the item, and get_reply hands it over.
  (void)cl->command("LPUSH", "list:late", "precious");
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
  const auto r = conn.get_reply(c);
  REQUIRE(r.error() == std::error_code{});
  REQUIRE(r->type == REDIS_REPLY_ARRAY);
  REQUIRE(r->elements == 2);
  CHECK(std::string_view(r->element[1]->str, r->element[1]->len) == "precious");
  CHECK(!r.sent());
  CHECK(conn.state() == connection_state::ready);
  CHECK(cl->integer("LLEN", "list:late") == 0);  // taken by the cancelled BLPOP, and not lost
  CHECK(conn.command(c, "PING").error() == std::error_code{});
}

TEST_CASE("a connection with a pending reply refuses commands and sends nothing", "[redis]") {
  auto& s = test::shared_redis();
  auto cl = s.client();
  (void)cl->command("DEL", "list:refused");
  auto conn = open(s);
  auto [d, cancel_d] = ctx::with_timeout(ctx::background(), 10ms);
  REQUIRE(conn.command(d, "BLPOP", "list:pending", "0").error() == deadline_exceeded);
  REQUIRE(conn.state() == connection_state::reply_pending);
  const auto r = conn.command(ctx::background(), "LPUSH", "list:refused", "x");
  CHECK(r.error() == ctx::redis::errc::reply_pending);
  CHECK(r.error().category() == ctx::redis::category());
  CHECK(!r.sent());
  CHECK(conn.state() == connection_state::reply_pending);
  CHECK(cl->integer("EXISTS", "list:refused") == 0);
  // A wait for the late reply that is cancelled in turn leaves it pending.
  auto [e, cancel_e] = ctx::with_timeout(ctx::background(), 10ms);
  CHECK(conn.get_reply(e).error() == deadline_exceeded);
  CHECK(conn.state() == connection_state::reply_pending);
}

TEST_CASE("closing a connection with a blocked BLPOP leaves later items in the list", "[redis][cancel]") {
  test::redis_server s;  // its own: the test counts blocked clients
  auto cl = s.client();
  auto conn = open(s);
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  background_command b([&, c = c] { return conn.command(c, "BLPOP", "list:closed", "0"); });
  REQUIRE(wait_info(*cl, "blocked_clients", 1));
  cancel();
  b.join();
  REQUIRE(conn.state() == connection_state::reply_pending);
  conn.close();
  CHECK(conn.state() == connection_state::closed);
  CHECK(conn.error() == std::error_code{});
  REQUIRE(wait_info(*cl, "blocked_clients", 0));  // the server dropped the blocked BLPOP
  CHECK(cl->integer("LPUSH", "list:closed", "kept") == 1);
  CHECK(cl->integer("LLEN", "list:closed") == 1);
  CHECK(conn.command(ctx::background(), "PING").error() == ctx::redis::errc::closed);
}

TEST_CASE("CLIENT UNBLOCK from another connection ends a cancelled BLPOP for get_reply", "[redis][cancel]") {
  test::redis_server s;  // its own: the test counts blocked clients
  auto cl = s.client();
  auto conn = open(s);
  const auto id = conn.command(ctx::background(), "CLIENT", "ID");
  REQUIRE(id->type == REDIS_REPLY_INTEGER);
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  background_command b([&, c = c] { return conn.command(c, "BLPOP", "list:unblock", "0"); });
  REQUIRE(wait_info(*cl, "blocked_clients", 1));
  cancel();
  b.join();
  REQUIRE(conn.state() == connection_state::reply_pending);
  CHECK(cl->integer("CLIENT", "UNBLOCK", std::to_string(id->integer)) == 1);
  auto [d, cancel_d] = ctx::with_timeout(ctx::background(), 20s);
  const auto r = conn.get_reply(d);
  CHECK(r.error() == std::error_code{});
  CHECK(r->type == REDIS_REPLY_NIL);  // BLPOP's "timed out": nothing was popped
  CHECK(conn.state() == connection_state::ready);
  CHECK(str(conn.command(d, "ECHO", "next")) == "next");
}

TEST_CASE("XREADGROUP BLOCK returns at cancel and get_reply delivers the entry that came later",
          "[redis][cancel]") {
  auto& s = test::shared_redis();
  auto cl = s.client();
  (void)cl->command("DEL", "stream:jobs");
  (void)cl->command("XGROUP", "CREATE", "stream:jobs", "workers", "$", "MKSTREAM");
  auto conn = open(s);
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  background_command b([&, c = c] {
    return conn.command(c, "XREADGROUP", "GROUP", "workers", "w1", "BLOCK", "0", "STREAMS", "stream:jobs",
                        ">");
  });
  REQUIRE(b.blocked());
  const auto t0 = steady::now();
  cancel();
  b.join();
  CHECK(b.result.error() == canceled);
  CHECK(test::within(b.returned - t0, 50ms));
  REQUIRE(conn.state() == connection_state::reply_pending);
  (void)cl->command("XADD", "stream:jobs", "*", "job", "42");
  auto [d, cancel_d] = ctx::with_timeout(ctx::background(), 20s);
  const auto r = conn.get_reply(d);
  REQUIRE(r.error() == std::error_code{});
  REQUIRE(r->type == REDIS_REPLY_ARRAY);  // [[stream, [[id, [job, 42]]]]]
  const redisReply* entry = r->element[0]->element[1]->element[0];
  CHECK(std::string_view(entry->element[1]->element[1]->str) == "42");
  CHECK(conn.state() == connection_state::ready);
}

// --- publishing: once or not at all, as reported ---------------------------------------

TEST_CASE("a cancelled publish is in the list once or not at all as the library reported",
          "[redis][cancel][race]") {
  auto& s = test::shared_redis();
  auto cl = s.client();
  (void)cl->command("DEL", "list:publish");
  auto conn = open(s);
  std::uint32_t seed = 2024;
  int completed = 0, not_sent = 0, sent_pending = 0;
  for (int i = 0; i < 300; ++i) {
    seed = seed * 1664525u + 1013904223u;
    const auto delay = std::chrono::microseconds(seed % 60);
    const std::string value = "item-" + std::to_string(i);
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    if (i % 50 == 0) cancel();  // some before the call: surely not sent
    std::thread canceller([&cancel = cancel, delay] {
      const auto until = steady::now() + delay;
      while (steady::now() < until) {
      }
      cancel();
    });
    const auto r = conn.command(c, "LPUSH", "list:publish", value);
    canceller.join();
    long long expected = 0;
    if (!r.error()) {
      ++completed;
      CHECK(r->type == REDIS_REPLY_INTEGER);
      expected = 1;
    } else {
      REQUIRE(r.error() == canceled);
      if (!r.sent()) {
        ++not_sent;
        CHECK(conn.state() == connection_state::ready);
      } else {
        ++sent_pending;
        REQUIRE(conn.state() == connection_state::reply_pending);
        auto [d, cancel_d] = ctx::with_timeout(ctx::background(), 20s);
        const auto late = conn.get_reply(d);  // the server ran it: its reply says so
        REQUIRE(late.error() == std::error_code{});
        CHECK(late->type == REDIS_REPLY_INTEGER);
        expected = 1;
      }
    }
    CHECK(cl->integer("LREM", "list:publish", "0", value) == expected);
  }
  INFO(completed << " completed, " << not_sent << " not sent, " << sent_pending << " sent then cancelled");
  CHECK(not_sent >= 6);
  CHECK(cl->integer("LLEN", "list:publish") == 0);
}

TEST_CASE(
    "a cancel in the middle of sending a large command closes the connection and the server never runs it",
    "[redis][cancel]") {
  test::redis_server s;  // its own: it is paused
  auto cl = s.client();
  auto conn = open(s);
  const std::string big(32u << 20, 'x');  // far more than the socket buffers hold
  s.pause();
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  background_command b([&, c = c] { return conn.command(c, "SET", "big:half", big); });
  REQUIRE(b.blocked());
  cancel();
  b.join();
  s.resume();
  CHECK(b.result.error() == canceled);
  CHECK(!b.result.sent());
  CHECK(conn.state() == connection_state::closed);
  CHECK(conn.error() == ctx::redis::errc::aborted);
  CHECK(cl->integer("EXISTS", "big:half") == 0);
  CHECK(conn.command(ctx::background(), "PING").error() == ctx::redis::errc::closed);
}

// --- the server goes away ----------------------------------------------------------------

TEST_CASE("a server killed during a BLPOP gives a clear error and no hang", "[redis]") {
  test::redis_server s;  // its own: it is killed
  auto conn = open(s);
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 30s);
  background_command b([&, c = c] { return conn.command(c, "BLPOP", "list:killed", "0"); });
  REQUIRE(b.blocked());
  {
    auto cl = s.client();
    REQUIRE(wait_info(*cl, "blocked_clients", 1));  // the server has read it: a close, not a reset
  }
  const auto t0 = steady::now();
  s.kill();
  b.join();
  CHECK(b.result.error() == ctx::redis::errc::eof);
  CHECK(b.result.error().category() == ctx::redis::category());
  CHECK(b.result.message() == "Server closed the connection");
  CHECK(b.result.sent());
  CHECK(test::within(b.returned - t0, 1s));
  CHECK(conn.state() == connection_state::closed);
  CHECK(conn.error() == ctx::redis::errc::eof);
  CHECK(conn.command(c, "PING").error() == ctx::redis::errc::closed);
}

TEST_CASE("a command to a killed server fails with a clear error and no hang", "[redis]") {
  test::redis_server s;
  auto conn = open(s);
  s.kill();
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 30s);
  const auto r = conn.command(c, "LPUSH", "list:gone", "x");
  REQUIRE(r.error());
  CHECK(r.error().category() == ctx::redis::category());
  CHECK((r.error() == ctx::redis::errc::eof || r.error() == ctx::redis::errc::io));
  INFO(r.message());
  CHECK(!c.done());
  CHECK(conn.state() == connection_state::closed);
  CHECK(conn.get_reply(c).error() == ctx::redis::errc::closed);
}

// --- errors ---------------------------------------------------------------------------

TEST_CASE("a server error reply keeps the connection ready", "[redis]") {
  auto conn = open(test::shared_redis());
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
  (void)conn.command(c, "SET", "str:wrongtype", "v");
  auto r = conn.command(c, "LPUSH", "str:wrongtype", "x");
  CHECK(r.error() == ctx::redis::server_errc::wrongtype);
  CHECK(r.error().category() == ctx::redis::server_category());
  REQUIRE(r.get());
  CHECK(r->type == REDIS_REPLY_ERROR);
  CHECK(r.message().rfind("WRONGTYPE ", 0) == 0);
  CHECK(r.sent());
  CHECK(conn.state() == connection_state::ready);
  r = conn.command(c, "NO-SUCH-COMMAND");
  CHECK(r.error() == ctx::redis::server_errc::err);
  CHECK(str(conn.command(c, "GET", "str:wrongtype")) == "v");
}

// Regression: an empty command was sent as "*0\r\n", which the server
// answers with nothing, and the call waited for a reply until its deadline.
TEST_CASE("an empty command is refused without sending anything", "[redis]") {
  auto conn = open(test::shared_redis());
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 1s);
  const auto r = conn.command_argv(c, std::span<const std::string_view>{});
  CHECK(r.error() == ctx::redis::errc::other);
  CHECK(!r.sent());
  CHECK(!c.done());
  CHECK(conn.state() == connection_state::ready);
  CHECK(str(conn.command(c, "ECHO", "after")) == "after");
}

TEST_CASE("the error categories tell client errors from server error replies", "[redis]") {
  CHECK(std::string(ctx::redis::category().name()) == "hiredis");
  CHECK(std::string(ctx::redis::server_category().name()) == "redis");
  const std::error_code eof = ctx::redis::errc::eof;
  CHECK(eof.value() == REDIS_ERR_EOF);
  CHECK(eof.message() == "Server closed the connection");
  CHECK(std::error_code(ctx::redis::errc::oom) == std::errc::not_enough_memory);
  CHECK(ctx::redis::classify_error_reply("WRONGTYPE Operation against a key") ==
        ctx::redis::server_errc::wrongtype);
  CHECK(ctx::redis::classify_error_reply("ERR unknown command") == ctx::redis::server_errc::err);
  CHECK(ctx::redis::classify_error_reply("NOGROUP No such key") == ctx::redis::server_errc::nogroup);
  CHECK(ctx::redis::classify_error_reply("SOMETHINGNEW x") == ctx::redis::server_errc::other);
  CHECK(ctx::redis::classify_error_reply("") == ctx::redis::server_errc::other);
  CHECK(std::error_code(ctx::redis::server_errc::busy).message() == "BUSY error reply");
  CHECK(std::error_code(ctx::redis::errc::reply_pending) != std::error_code(ctx::redis::server_errc::err));
}

TEST_CASE("connect over TCP works and a refused port gives hiredis's error", "[redis]") {
  test::redis_server s(true);
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
  auto conn = ctx::redis::connect(c, "127.0.0.1", s.port());
  REQUIRE(conn.state() == connection_state::ready);
  CHECK(conn.command(c, "PING").error() == std::error_code{});

  test::fd bound(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));  // bound, not listening: refused
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  REQUIRE(::bind(bound.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::getsockname(bound.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);
  const auto refused = ctx::redis::connect(c, "127.0.0.1", ntohs(a.sin_port));
  CHECK(refused.state() == connection_state::closed);
  CHECK(refused.error() == ctx::redis::errc::io);
  CHECK(refused.error_message() == "Connection refused");
}

TEST_CASE("connect to a socket path that does not exist gives hiredis's error", "[redis]") {
  const auto conn = ctx::redis::connect_unix(ctx::background(), "/tmp/ctx-no-such-dir/redis.sock");
  CHECK(conn.state() == connection_state::closed);
  CHECK(conn.error() == ctx::redis::errc::io);
  CHECK(conn.error_message() == "No such file or directory");
}

// --- replies stay matched to their commands ---------------------------------------------

TEST_CASE("a large reply arrives whole and a cancel in the middle leaves it for get_reply",
          "[redis][cancel]") {
  auto& s = test::shared_redis();
  auto conn = open(s);
  const std::string big(8u << 20, 'y');
  REQUIRE(conn.command(ctx::background(), "SET", "big:reply", big).error() == std::error_code{});
  CHECK(str(conn.command(ctx::background(), "GET", "big:reply")).size() == big.size());
  int pending = 0;
  for (int i = 0; i < 20; ++i) {
    auto [c, cancel] = ctx::with_timeout(ctx::background(), std::chrono::microseconds(200 * i));
    auto r = conn.command(c, "GET", "big:reply");
    if (r.error()) {
      REQUIRE(r.error() == deadline_exceeded);
      if (conn.state() == connection_state::ready) continue;  // not sent
      ++pending;
      REQUIRE(conn.state() == connection_state::reply_pending);
      r = conn.get_reply(ctx::background());
    }
    REQUIRE(r.error() == std::error_code{});
    CHECK(str(r) == big);
  }
  INFO(pending << " replies finished by get_reply");
  CHECK(conn.command(ctx::background(), "DEL", "big:reply").error() == std::error_code{});
}

TEST_CASE("cancels racing replies never hand one command's reply to another", "[redis][cancel][race]") {
  auto& s = test::shared_redis();
  constexpr int threads = 4, rounds = 150;
  std::atomic<int> mismatched{0}, late{0};
  {
    std::vector<std::jthread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        auto conn = ctx::redis::connect_unix(ctx::background(), s.socket_path());
        std::uint32_t seed = 77u + static_cast<std::uint32_t>(t);
        for (int i = 0; i < rounds; ++i) {
          seed = seed * 1664525u + 1013904223u;
          const std::string tag = std::to_string(t) + ":" + std::to_string(i);
          auto [c, cancel] = ctx::with_timeout(ctx::background(), std::chrono::microseconds(seed % 80));
          auto r = conn.command(c, "ECHO", tag);
          if (r.error() && conn.state() == connection_state::reply_pending) {
            ++late;
            r = conn.get_reply(ctx::background());
          }
          if (!r.error() && std::string_view(r->str, r->len) != tag) ++mismatched;
          if (conn.state() != connection_state::ready) ++mismatched;
        }
      });
    }
  }
  INFO(late.load() << " replies read by get_reply");
  CHECK(mismatched == 0);
}

// --- other uses -------------------------------------------------------------------------

TEST_CASE("get_reply reads the messages of a subscription and a cancelled wait keeps it ready", "[redis]") {
  auto& s = test::shared_redis();
  auto cl = s.client();
  auto conn = open(s);
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
  const auto sub = conn.command(c, "SUBSCRIBE", "news");
  REQUIRE(sub.error() == std::error_code{});
  REQUIRE(sub->type == REDIS_REPLY_ARRAY);
  {
    auto [d, cancel_d] = ctx::with_timeout(ctx::background(), 10ms);
    CHECK(conn.get_reply(d).error() == deadline_exceeded);
    CHECK(conn.state() == connection_state::ready);
  }
  CHECK(cl->integer("PUBLISH", "news", "extra") == 1);
  const auto msg = conn.get_reply(c);
  REQUIRE(msg.error() == std::error_code{});
  REQUIRE(msg->elements == 3);
  CHECK(std::string_view(msg->element[2]->str) == "extra");
}

TEST_CASE("an adopted hiredis context is made non-blocking and works", "[redis]") {
  auto& s = test::shared_redis();
  redisContext* rc = redisConnectUnix(s.socket_path().c_str());
  REQUIRE(rc);
  REQUIRE(rc->err == 0);
  ctx::redis::connection conn(rc);
  REQUIRE(conn.state() == connection_state::ready);
  CHECK(conn.native_handle() == rc);
  CHECK((::fcntl(rc->fd, F_GETFL) & O_NONBLOCK) != 0);
  CHECK(str(conn.command(ctx::background(), "ECHO", "adopted")) == "adopted");
  ctx::redis::connection moved = std::move(conn);
  CHECK(conn.state() == connection_state::closed);
  CHECK(moved.state() == connection_state::ready);
  CHECK(str(moved.command(ctx::background(), "ECHO", "moved")) == "moved");

  ctx::redis::connection broken(redisConnectUnix("/tmp/ctx-no-such-dir/redis.sock"));
  CHECK(broken.state() == connection_state::closed);
  CHECK(broken.error() == ctx::redis::errc::io);
}
