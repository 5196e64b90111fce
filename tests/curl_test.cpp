// SPDX-License-Identifier: MIT
// <ctx/curl.hpp> against a real HTTP server on 127.0.0.1 (tests/support/http_server.hpp):
// cancels and deadlines that end every kind of stall, the handle and the
// connections afterwards, curl's own errors, fan-out, threads, fork, and the
// slow name resolution that only CURLOPT_QUICK_EXIT lets a cancel end.
#include <ctx/ctx.hpp>
#include <ctx/curl.hpp>
#include <ctx/testing.hpp>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <latch>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/common.hpp"
#include "support/engine.hpp"
#include "support/http_server.hpp"
#include "support/latency.hpp"
#include "support/posix_helpers.hpp"

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

std::error_code curl_error(CURLcode e) { return ctx::curl::make_error_code(e); }

/// libcurl's global state for the whole program; the main thread's multi
/// handle (a thread_local) is cleaned up before this static's destructor.
struct curl_global {
  curl_global() { curl_global_init(CURL_GLOBAL_DEFAULT); }
  ~curl_global() { curl_global_cleanup(); }
} const global_init;

/// One HTTP server for the test program, started on first use.
test::http_server& server() {
  static test::http_server s;
  return s;
}

/// An easy handle that collects the response body.
struct transfer {
  CURL* h = curl_easy_init();
  std::string body;
  std::atomic<std::size_t> received{0};

  explicit transfer(const std::string& url) {
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &transfer::on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, this);
    set_url(url);
  }
  transfer(const transfer&) = delete;
  transfer& operator=(const transfer&) = delete;
  ~transfer() { curl_easy_cleanup(h); }

  void set_url(const std::string& url) {
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    body.clear();
  }
  /// Blocks until at least `n` body bytes arrived.
  void wait_received(std::size_t n) {
    for (std::size_t v; (v = received.load()) < n;) received.wait(v);
  }

  static std::size_t on_write(char* p, std::size_t size, std::size_t n, void* self) {
    auto* t = static_cast<transfer*>(self);
    t->body.append(p, size * n);
    t->received.fetch_add(size * n);
    t->received.notify_all();
    return size * n;
  }
};

/// perform() on a new thread; records when it returned.
struct background_perform {
  std::error_code result;
  steady::time_point returned;
  std::atomic<int> tid{0};
  std::latch started{1};  // a member: it outlives the thread's count_down()
  std::thread t;

  template <class Clock>
  background_perform(const ctx::basic_context<Clock>& c, CURL* h) {
    t = std::thread([this, c, h] {
      tid = test::this_tid();
      started.count_down();
      result = ctx::curl::perform(c, h);
      returned = steady::now();
    });
    started.wait();
  }
  bool blocked() const { return test::wait_until_blocked(tid.load()); }
  void join() { t.join(); }
};

/// Where a stalled transfer stops, and how a test knows it got there.
enum class stall { before_headers, mid_body, never_answered };

std::string stall_url(stall s) {
  switch (s) {
    case stall::before_headers:
      return server().url("/stall-headers");
    case stall::mid_body:
      return server().url("/stall-body");
    case stall::never_answered:
      break;
  }
  return server().silent_url();
}

/// Waits until the transfer of `t`, run by `p`, is stuck at `s`.
void wait_stalled(stall s, transfer& t, const background_perform& p, std::size_t connections_before) {
  switch (s) {
    case stall::before_headers:
      REQUIRE(server().wait_requests("/stall-headers", 1));
      break;
    case stall::mid_body:
      t.wait_received(10);
      break;
    case stall::never_answered:
      REQUIRE(server().wait_connections(connections_before + 1));
      break;
  }
  REQUIRE(p.blocked());
}

/// Closes the calling thread's cached connections and waits until the server saw them closed.
void no_cached_connections() {
  ctx::curl::thread_cleanup();
  REQUIRE(server().wait_open_connections(0));
}

/// A cancel ends a transfer stalled at `s` within 50 ms, the connection is
/// closed, and the same handle then performs a fast request.
void check_cancel_ends(stall s) {
  no_cached_connections();
  const std::size_t requests_before = server().requests("/stall-headers");
  const std::size_t connections_before = server().connections();
  transfer t(stall_url(s));
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  background_perform p(c, t.h);
  if (s == stall::before_headers) REQUIRE(server().wait_requests("/stall-headers", requests_before + 1));
  if (s != stall::before_headers) wait_stalled(s, t, p, connections_before);
  REQUIRE(p.blocked());
  const auto t0 = steady::now();
  cancel();
  p.join();
  CHECK(p.result == canceled);
  INFO("cancel -> return: " << test::ms(p.returned - t0) << " ms");
  CHECK(test::within(p.returned - t0, 50ms));
  if (s == stall::mid_body) CHECK(t.body == "0123456789");  // what arrived before the cancel

  // The stalled connection was closed, not cached; the handle works at once.
  CHECK(server().wait_open_connections(0));
  t.set_url(server().url("/fast"));
  CHECK(ctx::curl::perform(ctx::background(), t.h) == std::error_code{});
  CHECK(t.body == "hello");
  ctx::curl::thread_cleanup();
}

/// The same with a deadline: it ends the stall within 50 ms of itself.
void check_deadline_ends(stall s) {
  no_cached_connections();
  const std::size_t connections_before = server().connections();
  transfer t(stall_url(s));
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 100ms);
  const steady::time_point deadline = *c.deadline();
  const std::error_code r = ctx::curl::perform(c, t.h);
  const auto late = steady::now() - deadline;
  CHECK(r == deadline_exceeded);
  INFO("deadline -> return: " << test::ms(late) << " ms");
  CHECK(test::within(late, 50ms));
  CHECK(server().connections() == connections_before + 1);  // it did connect: the stall was real
  t.set_url(server().url("/fast"));
  CHECK(ctx::curl::perform(ctx::background(), t.h) == std::error_code{});
  CHECK(t.body == "hello");
}

}  // namespace

// --- the plain path ---------------------------------------------------------------

TEST_CASE("perform completes a fast local GET", "[curl]") {
  transfer t(server().url("/fast"));
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
  CHECK(ctx::curl::perform(c, t.h) == std::error_code{});
  CHECK(t.body == "hello");
  long status = 0;
  curl_easy_getinfo(t.h, CURLINFO_RESPONSE_CODE, &status);
  CHECK(status == 200);
}

TEST_CASE("perform reuses the thread's cached connection across handles", "[curl]") {
  no_cached_connections();
  const std::size_t before = server().connections();
  transfer a(server().url("/fast"));
  transfer b(server().url("/bytes/100000"));
  CHECK(ctx::curl::perform(ctx::background(), a.h) == std::error_code{});
  CHECK(ctx::curl::perform(ctx::background(), b.h) == std::error_code{});
  CHECK(ctx::curl::perform(ctx::background(), a.h) == std::error_code{});
  CHECK(b.body.size() == 100000);
  CHECK(server().connections() == before + 1);
  ctx::curl::thread_cleanup();
}

TEST_CASE("an already done context returns its error and sends nothing", "[curl]") {
  no_cached_connections();
  const std::size_t before = server().connections();
  const std::size_t fast_before = server().requests("/fast");
  transfer t(server().url("/fast"));
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  cancel();
  CHECK(ctx::curl::perform(c, t.h) == canceled);
  auto [d, cancel_d] = ctx::with_timeout(ctx::background(), -1s);
  CHECK(ctx::curl::perform(d, t.h) == deadline_exceeded);
  CHECK(ctx::curl::perform(c, nullptr) == canceled);  // not even the handle is looked at
  CURL* both[2] = {t.h, t.h};
  std::error_code results[2];
  CHECK(ctx::curl::perform_all(c, both, results) == canceled);
  CHECK(results[0] == canceled);
  CHECK(results[1] == canceled);
  CHECK(server().connections() == before);
  CHECK(server().requests("/fast") == fast_before);
  CHECK(ctx::curl::perform(ctx::background(), t.h) == std::error_code{});  // the handle was not touched
}

// --- cancel and deadline end every stall -------------------------------------------

TEST_CASE("cancel ends a transfer stalled before the headers within 50 ms", "[curl][cancel]") {
  check_cancel_ends(stall::before_headers);
}

TEST_CASE("cancel ends a transfer stalled mid-body within 50 ms", "[curl][cancel]") {
  check_cancel_ends(stall::mid_body);
}

TEST_CASE("cancel ends a transfer whose server accepted and never answered within 50 ms", "[curl][cancel]") {
  check_cancel_ends(stall::never_answered);
}

TEST_CASE("a deadline ends every kind of stall within 50 ms of it", "[curl][deadline]") {
  check_deadline_ends(stall::before_headers);
  check_deadline_ends(stall::mid_body);
  check_deadline_ends(stall::never_answered);
  ctx::curl::thread_cleanup();
}

namespace {
/// A listener whose accept queue is full (backlog 0, one connection waiting):
/// the kernel drops further SYNs, so a connect to it stays in SYN_SENT.
struct full_listener {
  test::fd listener{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  test::fd filler{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  int port = 0;
  full_listener() {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    REQUIRE(::bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);
    REQUIRE(::listen(listener.get(), 0) == 0);
    REQUIRE(::connect(filler.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    port = ntohs(a.sin_port);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port) + "/"; }
};
}  // namespace

TEST_CASE("a deadline and a cancel end a connect that never completes within 50 ms", "[curl][deadline]") {
  full_listener full;
  transfer t(full.url());
  {
    auto [c, cancel] = ctx::with_timeout(ctx::background(), 100ms);
    const steady::time_point deadline = *c.deadline();
    CHECK(ctx::curl::perform(c, t.h) == deadline_exceeded);
    INFO("deadline -> return: " << test::ms(steady::now() - deadline) << " ms");
    CHECK(test::within(steady::now() - deadline, 50ms));
  }
  {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    background_perform p(c, t.h);
    REQUIRE(p.blocked());
    const auto t0 = steady::now();
    cancel();
    p.join();
    CHECK(p.result == canceled);
    CHECK(test::within(p.returned - t0, 50ms));
  }
  t.set_url(server().url("/fast"));
  CHECK(ctx::curl::perform(ctx::background(), t.h) == std::error_code{});
  CHECK(t.body == "hello");
  ctx::curl::thread_cleanup();
}

TEST_CASE("a manual clock deadline ends a stalled transfer when the clock is advanced", "[curl][deadline]") {
  no_cached_connections();
  transfer t(server().url("/stall-headers"));
  auto [c, cancel] = ctx::with_timeout(ctx::background<manual>(), 10s);
  const std::size_t before = server().requests("/stall-headers");
  background_perform p(c, t.h);
  REQUIRE(server().wait_requests("/stall-headers", before + 1));
  REQUIRE(p.blocked());
  manual::advance(10s);
  p.join();
  CHECK(p.result == deadline_exceeded);
  CHECK(server().wait_open_connections(0));
}

TEST_CASE("the handle's own CURLOPT_TIMEOUT still applies and gives curl's error", "[curl][deadline]") {
  transfer t(server().url("/stall-headers"));
  SECTION("curl's timeout first") {
    curl_easy_setopt(t.h, CURLOPT_TIMEOUT_MS, 100L);
    auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
    const std::error_code r = ctx::curl::perform(c, t.h);
    CHECK(r == curl_error(CURLE_OPERATION_TIMEDOUT));
    CHECK(r == std::errc::timed_out);
    CHECK(r != deadline_exceeded);
  }
  SECTION("the context's deadline first") {
    curl_easy_setopt(t.h, CURLOPT_TIMEOUT_MS, 20000L);
    auto [c, cancel] = ctx::with_timeout(ctx::background(), 100ms);
    CHECK(ctx::curl::perform(c, t.h) == deadline_exceeded);
  }
  ctx::curl::thread_cleanup();
}

// --- curl's own errors ---------------------------------------------------------------

TEST_CASE("a refused connection gives curl's error with curl's message", "[curl]") {
  // A bound socket that does not listen: connecting to its port is refused.
  test::fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  REQUIRE(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);
  transfer t("http://127.0.0.1:" + std::to_string(ntohs(a.sin_port)) + "/");
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
  const std::error_code r = ctx::curl::perform(c, t.h);
  CHECK(r == curl_error(CURLE_COULDNT_CONNECT));
  CHECK(r.category() == ctx::curl::category());
  CHECK(r.message() == curl_easy_strerror(CURLE_COULDNT_CONNECT));
}

TEST_CASE("a host name that does not resolve gives curl's error", "[curl]") {
  // No network here: the resolver fails at once (what a real run shows; a
  // slow resolver is the next test's business).
  transfer t("http://no-such-host.invalid/");
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
  const std::error_code r = ctx::curl::perform(c, t.h);
  CHECK(r == curl_error(CURLE_COULDNT_RESOLVE_HOST));
  CHECK(r.message() == curl_easy_strerror(CURLE_COULDNT_RESOLVE_HOST));
}

TEST_CASE("a server that closes without answering gives curl's error", "[curl]") {
  transfer t(server().url("/close"));
  CHECK(ctx::curl::perform(ctx::background(), t.h) == curl_error(CURLE_GOT_NOTHING));
}

TEST_CASE("the curl category keeps curl's code and message", "[curl]") {
  CHECK(std::string(ctx::curl::category().name()) == "curl");
  CHECK(ctx::curl::make_error_code(CURLE_OK) == std::error_code{});
  const std::error_code e = ctx::curl::make_error_code(CURLE_COULDNT_RESOLVE_HOST);
  CHECK(e.value() == CURLE_COULDNT_RESOLVE_HOST);
  CHECK(e.message() == curl_easy_strerror(CURLE_COULDNT_RESOLVE_HOST));
  CHECK(ctx::curl::make_error_code(CURLE_OPERATION_TIMEDOUT) == std::errc::timed_out);
  CHECK(ctx::curl::make_error_code(CURLE_OUT_OF_MEMORY) == std::errc::not_enough_memory);
  CHECK(e != std::errc::timed_out);
}

// --- slow name resolution ---------------------------------------------------------------
//
// With the threaded resolver, removing a transfer that is still resolving
// waits for getaddrinfo() unless CURLOPT_QUICK_EXIT is set (seen: 10 s with
// a silent DNS server). Making getaddrinfo() slow needs a DNS server that
// never answers in /etc/resolv.conf: the test runs this program again in a
// private mount namespace where /etc/resolv.conf names a UDP socket of the
// parent that never reads.

TEST_CASE("slow name resolution: the hidden half that runs in the namespace", "[.slow_dns]") {
  transfer t("http://slow.invalid/");
  {
    auto [c, cancel] = ctx::with_timeout(ctx::background(), 200ms);
    const steady::time_point deadline = *c.deadline();
    const std::error_code r = ctx::curl::perform(c, t.h);
    const auto late = steady::now() - deadline;
    CHECK(r == deadline_exceeded);  // not CURLE_COULDNT_RESOLVE_HOST: the resolver was still waiting
    INFO("deadline -> return: " << test::ms(late) << " ms");
    CHECK(test::within(late, 50ms));
  }
  {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    background_perform p(c, t.h);
    REQUIRE(p.blocked());
    const auto t0 = steady::now();
    cancel();
    p.join();
    CHECK(p.result == canceled);
    INFO("cancel -> return: " << test::ms(p.returned - t0) << " ms");
    CHECK(test::within(p.returned - t0, 50ms));
  }
  // The handle works at once (the abandoned resolver threads finish on their own).
  t.set_url(server().url("/fast"));
  CHECK(ctx::curl::perform(ctx::background(), t.h) == std::error_code{});
  CHECK(t.body == "hello");
}

TEST_CASE("a deadline and a cancel end a slow name resolution", "[curl][deadline]") {
  // A silent DNS server on a loopback address of its own (all of 127/8 is loopback).
  const std::string ns = "127.0.53." + std::to_string(2 + ::getpid() % 250);
  test::fd dns(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(53);
  ::inet_pton(AF_INET, ns.c_str(), &a.sin_addr);
  if (::bind(dns.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    std::fprintf(stderr, "SKIPPED: cannot bind %s:53 for a silent DNS server: %s (needs root)\n", ns.c_str(),
                 std::strerror(errno));
    std::_Exit(77);
  }
  char dir[] = "/tmp/ctx-curl-dns-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  const std::string conf = std::string(dir) + "/resolv.conf";
  std::ofstream(conf) << "nameserver " << ns << "\noptions timeout:5 attempts:2\n";

  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  REQUIRE(n > 0);
  exe[n] = 0;
  char arg0[] = "curl_test";
  char filter[] = "[.slow_dns]";
  char* argv[] = {arg0, filter, nullptr};
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // async-signal-safe calls only until execv
    if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount(conf.c_str(), "/etc/resolv.conf", nullptr, MS_BIND, nullptr) != 0)
      ::_exit(77);
    ::execv(exe, argv);
    ::_exit(78);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  ::unlink(conf.c_str());
  ::rmdir(dir);
  REQUIRE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) {
    std::fprintf(stderr, "SKIPPED: no private mount namespace here (unshare/mount need CAP_SYS_ADMIN)\n");
    std::_Exit(77);
  }
  CHECK(WEXITSTATUS(status) == 0);
}

// --- the handle and the thread's multi handle ---------------------------------------------

namespace {
struct reentry {
  ctx::context c;
  CURL* inner;
  bool called = false;
  std::error_code nested, nested_all;
};
std::size_t reenter(char*, std::size_t size, std::size_t n, void* p) {
  auto* r = static_cast<reentry*>(p);
  if (!r->called) {
    r->called = true;
    r->nested = ctx::curl::perform(r->c, r->inner);
    CURL* one[1] = {r->inner};
    r->nested_all = ctx::curl::perform_all(r->c, one);
    ctx::curl::thread_cleanup();  // refused too: the multi handle is in use
  }
  return size * n;
}
}  // namespace

TEST_CASE("perform from inside a curl callback on the same thread is refused", "[curl]") {
  transfer outer(server().url("/bytes/1000"));
  transfer inner(server().url("/fast"));
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
  reentry r{c, inner.h, false, {}, {}};
  curl_easy_setopt(outer.h, CURLOPT_WRITEFUNCTION, &reenter);
  curl_easy_setopt(outer.h, CURLOPT_WRITEDATA, &r);
  CHECK(ctx::curl::perform(c, outer.h) == std::error_code{});
  REQUIRE(r.called);
  CHECK(r.nested == curl_error(CURLE_RECURSIVE_API_CALL));
  CHECK(r.nested_all == curl_error(CURLE_RECURSIVE_API_CALL));
  CHECK(ctx::curl::perform(c, inner.h) == std::error_code{});  // and afterwards it works
  CHECK(inner.body == "hello");
  ctx::curl::thread_cleanup();
}

TEST_CASE("a handle works with curl_easy_perform after perform and the other way round", "[curl]") {
  transfer t(server().url("/fast"));
  CHECK(ctx::curl::perform(ctx::background(), t.h) == std::error_code{});
  t.body.clear();
  CHECK(curl_easy_perform(t.h) == CURLE_OK);
  CHECK(t.body == "hello");
  t.body.clear();
  CHECK(ctx::curl::perform(ctx::background(), t.h) == std::error_code{});
  CHECK(t.body == "hello");
  ctx::curl::thread_cleanup();
}

TEST_CASE("a cancelled POST reached the server once and is never sent again", "[curl][cancel]") {
  no_cached_connections();
  transfer t(server().url("/stall-headers"));
  curl_easy_setopt(t.h, CURLOPT_POSTFIELDS, "publish-me");
  const std::size_t before = server().requests("/stall-headers");
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  background_perform p(c, t.h);
  REQUIRE(server().wait_requests("/stall-headers", before + 1));
  REQUIRE(p.blocked());
  cancel();
  p.join();
  CHECK(p.result == canceled);
  t.set_url(server().url("/fast"));
  CHECK(ctx::curl::perform(ctx::background(), t.h) == std::error_code{});
  CHECK(server().requests("/stall-headers") == before + 1);
  ctx::curl::thread_cleanup();
}

TEST_CASE("cancel and deadline racing completion leave the handle usable", "[curl][cancel][race]") {
  no_cached_connections();
  transfer t(server().url("/fast"));
  std::uint32_t seed = 12345;
  int completed = 0, stopped = 0;
  for (int i = 0; i < 200; ++i) {
    seed = seed * 1664525u + 1013904223u;
    const auto delay = std::chrono::microseconds(seed % 400);
    t.body.clear();
    std::error_code r;
    if (i % 2 == 0) {
      auto [c, cancel] = ctx::with_cancel(ctx::background());
      std::thread canceller([&cancel = cancel, delay] {
        const auto until = steady::now() + delay;
        while (steady::now() < until) {
        }
        cancel();
      });
      r = ctx::curl::perform(c, t.h);
      canceller.join();
      CHECK((r == std::error_code{} || r == canceled));
    } else {
      auto [c, cancel] = ctx::with_timeout(ctx::background(), delay);
      r = ctx::curl::perform(c, t.h);
      CHECK((r == std::error_code{} || r == deadline_exceeded));
    }
    if (!r) {
      ++completed;
      CHECK(t.body == "hello");
    } else {
      ++stopped;
    }
  }
  INFO(completed << " completed, " << stopped << " stopped");
  t.body.clear();
  CHECK(ctx::curl::perform(ctx::background(), t.h) == std::error_code{});
  CHECK(t.body == "hello");
  ctx::curl::thread_cleanup();
  CHECK(server().wait_open_connections(0));
}

TEST_CASE("threads perform at once each with its own multi handle closed at thread exit", "[curl][threads]") {
  no_cached_connections();
  constexpr int threads = 4, each = 25;
  std::atomic<int> ok{0}, stopped{0};
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 30s);
  {
    std::vector<std::jthread> pool;
    for (int i = 0; i < threads; ++i) {
      pool.emplace_back([&, c = c, i] {
        transfer t(server().url("/fast"));
        for (int j = 0; j < each; ++j) {
          if (ctx::curl::perform(c, t.h) == std::error_code{} && t.body == "hello") ++ok;
          t.body.clear();
        }
        // One cancelled stall per thread: its connection is closed.
        transfer s(server().url(i % 2 ? "/stall-body" : "/stall-headers"));
        auto [d, cancel_d] = ctx::with_timeout(c, 20ms);
        if (ctx::curl::perform(d, s.h) == ctx::errc::deadline_exceeded) ++stopped;
      });
    }
  }
  CHECK(ok == threads * each);
  CHECK(stopped == threads);
  // Every thread's cached connection was closed when its multi handle went with the thread.
  CHECK(server().wait_open_connections(0));
}

namespace {

std::error_code exit_perform_result = ctx::errc::canceled;  // replaced by the destructor below
std::string exit_perform_body;

/// Constructed before the thread's first perform(), so destroyed after ctx's
/// per-thread holder, which cleaned the thread's multi handle up.
struct perform_at_exit {
  ~perform_at_exit() {
    transfer t(server().url("/fast"));
    auto [c, cancel] = ctx::with_timeout(ctx::background(), 30s);
    exit_perform_result = ctx::curl::perform(c, t.h);
    exit_perform_body = t.body;
  }
};

}  // namespace

TEST_CASE("perform from a thread_local destructor after the thread's multi handle was cleaned up works",
          "[curl][threads]") {
  // The holder cleaned its multi handle up but kept the pointer: a perform()
  // later in the thread's exit added the handle to freed memory (curl said
  // CURLE_BAD_FUNCTION_ARGUMENT, or worse once the memory was reused).
  std::thread([] {
    thread_local perform_at_exit at_exit;  // constructed first: destroyed after ctx's holder
    (void)&at_exit;
    transfer t(server().url("/fast"));
    CHECK(ctx::curl::perform(ctx::background(), t.h) == std::error_code{});
  }).join();
  CHECK(exit_perform_result == std::error_code{});
  CHECK(exit_perform_body == "hello");
  // The destructor's own multi handle was cleaned up with its connection.
  CHECK(server().wait_open_connections(0));
}

TEST_CASE("thread_cleanup closes the thread's cached connections", "[curl]") {
  no_cached_connections();
  transfer t(server().url("/fast"));
  const std::size_t before = server().connections();
  CHECK(ctx::curl::perform(ctx::background(), t.h) == std::error_code{});
  CHECK(server().wait_open_connections(1));
  ctx::curl::thread_cleanup();
  CHECK(server().wait_open_connections(0));
  ctx::curl::thread_cleanup();  // twice: nothing to do
  CHECK(ctx::curl::perform(ctx::background(), t.h) == std::error_code{});
  CHECK(server().connections() == before + 2);
  REQUIRE(ctx::curl::thread_multi() != nullptr);
  CHECK(curl_multi_setopt(ctx::curl::thread_multi(), CURLMOPT_MAXCONNECTS, 8L) == CURLM_OK);
  ctx::curl::thread_cleanup();
}

TEST_CASE("cancelled transfers leave no connection and no fd behind", "[curl][cancel]") {
  no_cached_connections();
  const std::size_t fds = test::open_fds();
  for (int i = 0; i < 5; ++i) {
    transfer t(server().url(i % 2 ? "/stall-body" : "/stall-headers"));
    auto [c, cancel] = ctx::with_timeout(ctx::background(), 10ms);
    CHECK(ctx::curl::perform(c, t.h) == deadline_exceeded);
  }
  CHECK(server().wait_open_connections(0));  // closed at once, not cached
  ctx::curl::thread_cleanup();
  CHECK(test::open_fds() == fds);
}

TEST_CASE("a forked child makes its own multi handle and leaves the parent's connection alone",
          "[curl][fork]") {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // The child allocates (curl does), and the sanitizers' allocators are not
  // safe in the child of a multi-threaded fork (the server runs on a thread).
  test::skip_in_this_build(
      "fork() in a multi-threaded process: the sanitizers' allocators are not safe in the child");
#else
  if (test::under_valgrind()) {
    // The child leaks the multi handle it inherited, by design (see perform()):
    // valgrind's leak check of the child would report it.
    test::skip_in_this_build("the child abandons state by design, which valgrind's leak check would report");
  }
  no_cached_connections();
  transfer t(server().url("/fast"));
  CHECK(ctx::curl::perform(ctx::background(), t.h) == std::error_code{});
  const std::size_t before = server().connections();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    transfer mine(server().url("/fast"));
    const bool ok =
        ctx::curl::perform(ctx::background(), mine.h) == std::error_code{} && mine.body == "hello";
    ::_exit(ok ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(server().connections() == before + 1);  // the child connected anew
  t.body.clear();
  CHECK(ctx::curl::perform(ctx::background(), t.h) ==
        std::error_code{});  // the parent's cached one still works
  CHECK(t.body == "hello");
  CHECK(server().connections() == before + 1);
  ctx::curl::thread_cleanup();
#endif
}

// --- fan-out ---------------------------------------------------------------------

TEST_CASE("perform_all runs its transfers concurrently", "[curl][fan_out]") {
  // /barrier/4 answers only once four requests wait on it: one at a time would hang.
  std::vector<std::unique_ptr<transfer>> ts;
  std::vector<CURL*> hs;
  for (int i = 0; i < 4; ++i) {
    ts.push_back(std::make_unique<transfer>(server().url("/barrier/4")));
    hs.push_back(ts.back()->h);
  }
  std::vector<std::error_code> results(hs.size());
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
  CHECK(ctx::curl::perform_all(c, hs, results) == std::error_code{});
  for (std::size_t i = 0; i < ts.size(); ++i) {
    CHECK(results[i] == std::error_code{});
    CHECK(ts[i]->body == "hello");
  }
  ctx::curl::thread_cleanup();
}

TEST_CASE("perform_all stops the other transfers at the first failure", "[curl][fan_out]") {
  transfer failing(server().url("/status/500"));
  curl_easy_setopt(failing.h, CURLOPT_FAILONERROR, 1L);
  transfer stalled(server().url("/stall-headers"));
  transfer half(server().url("/stall-body"));
  CURL* hs[3] = {stalled.h, failing.h, half.h};
  std::error_code results[3];
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
  const auto t0 = steady::now();
  CHECK(ctx::curl::perform_all(c, hs, results) == curl_error(CURLE_HTTP_RETURNED_ERROR));
  CHECK(test::within(steady::now() - t0, 5s));
  CHECK(results[0] == canceled);
  CHECK(results[1] == curl_error(CURLE_HTTP_RETURNED_ERROR));
  CHECK(results[2] == canceled);
  CHECK(!c.done());
  // Every handle is reusable.
  for (CURL* h : hs) {
    curl_easy_setopt(h, CURLOPT_URL, server().url("/fast").c_str());
    CHECK(ctx::curl::perform(c, h) == std::error_code{});
  }
  ctx::curl::thread_cleanup();
}

// Regression: a transfer that completed in the same round as the first
// failure, its message read after the failing one's, was reported as
// cancelled although its response was whole.
TEST_CASE("perform_all keeps the result of a transfer that completed with the failing one",
          "[curl][fan_out]") {
  no_cached_connections();
  int kept = 0;
  for (int round = 0; round < 20; ++round) {
    // Both are answered at the same instant, the failing one first.
    transfer failing(server().url("/barrier/2/500")), ok(server().url("/barrier/2"));
    curl_easy_setopt(failing.h, CURLOPT_FAILONERROR, 1L);
    CURL* hs[2] = {failing.h, ok.h};
    std::error_code results[2];
    auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
    CHECK(ctx::curl::perform_all(c, hs, results) == curl_error(CURLE_HTTP_RETURNED_ERROR));
    CHECK(results[0] == curl_error(CURLE_HTTP_RETURNED_ERROR));
    // Completed (whole body, {}) or stopped (canceled, body incomplete): never canceled with a whole body.
    CHECK((results[1] == std::error_code{} || results[1] == canceled));
    CHECK((results[1] == std::error_code{}) == (ok.body == "hello"));
    if (results[1] == std::error_code{}) ++kept;
  }
  INFO(kept << " of 20 rounds kept the completed transfer");
  ctx::curl::thread_cleanup();
}

TEST_CASE("perform_all with finish_rest lets the other transfers complete", "[curl][fan_out]") {
  transfer failing(server().url("/status/404"));
  curl_easy_setopt(failing.h, CURLOPT_FAILONERROR, 1L);
  transfer a(server().url("/barrier/2")), b(server().url("/barrier/2")), fast(server().url("/fast"));
  CURL* hs[4] = {failing.h, a.h, b.h, fast.h};
  std::error_code results[4];
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 20s);
  CHECK(ctx::curl::perform_all(c, hs, results, ctx::curl::on_error::finish_rest) ==
        curl_error(CURLE_HTTP_RETURNED_ERROR));
  CHECK(results[0] == curl_error(CURLE_HTTP_RETURNED_ERROR));
  CHECK(results[1] == std::error_code{});
  CHECK(results[2] == std::error_code{});
  CHECK(results[3] == std::error_code{});
  CHECK(a.body == "hello");
  CHECK(fast.body == "hello");
  ctx::curl::thread_cleanup();
}

TEST_CASE("perform_all returns the context's error when a cancel ends it", "[curl][fan_out][cancel]") {
  no_cached_connections();
  transfer fast(server().url("/fast")), stalled(server().url("/stall-headers")),
      half(server().url("/stall-body"));
  CURL* hs[3] = {fast.h, stalled.h, half.h};
  std::error_code results[3];
  auto [c, cancel] = ctx::with_cancel(ctx::background());
  const std::size_t before = server().requests("/stall-headers");
  std::error_code r;
  steady::time_point returned;
  std::atomic<int> tid{0};
  std::thread t([&, c = c] {
    tid = test::this_tid();
    r = ctx::curl::perform_all(c, hs, results);
    returned = steady::now();
  });
  REQUIRE(server().wait_requests("/stall-headers", before + 1));
  half.wait_received(10);
  while (tid.load() == 0) std::this_thread::yield();
  REQUIRE(test::wait_until_blocked(tid.load()));
  const auto t0 = steady::now();
  cancel();
  t.join();
  CHECK(r == canceled);
  CHECK(test::within(returned - t0, 50ms));
  CHECK(results[0] == std::error_code{});  // it completed before the stalls were cancelled
  CHECK(fast.body == "hello");
  CHECK(results[1] == canceled);
  CHECK(results[2] == canceled);
  ctx::curl::thread_cleanup();
  CHECK(server().wait_open_connections(0));
}

TEST_CASE("perform_all refuses a bad list and starts nothing", "[curl][fan_out]") {
  no_cached_connections();
  const std::size_t before = server().connections();
  transfer t(server().url("/fast")), u(server().url("/fast"));
  const std::error_code bad = curl_error(CURLE_BAD_FUNCTION_ARGUMENT);
  std::error_code results[3];
  SECTION("a handle listed twice") {
    CURL* hs[3] = {t.h, u.h, t.h};
    CHECK(ctx::curl::perform_all(ctx::background(), hs, results) == bad);
    CHECK(results[0] == bad);
    CHECK(results[2] == bad);
  }
  SECTION("a null handle") {
    CURL* hs[3] = {t.h, nullptr, u.h};
    CHECK(ctx::curl::perform_all(ctx::background(), hs, results) == bad);
    CHECK(ctx::curl::perform(ctx::background(), nullptr) == bad);
  }
  SECTION("results of the wrong size") {
    CURL* hs[2] = {t.h, u.h};
    CHECK(ctx::curl::perform_all(ctx::background(), hs, results) == bad);
  }
  CHECK(server().connections() == before);
  CHECK(ctx::curl::perform(ctx::background(), t.h) ==
        std::error_code{});  // nothing was left in the multi handle
  CHECK(ctx::curl::perform_all(ctx::background(), std::span<CURL* const>{}) == std::error_code{});
  ctx::curl::thread_cleanup();
}
