// SPDX-License-Identifier: MIT
// A small HTTP/1.1 client and server on <ctx/io.hpp>, one request per
// connection (Connection: close), carrying a context's deadline and trace in
// headers with <ctx/propagation.hpp>. Used by the HTTP peer (process B) and
// process A of the two-process tests and the wire benchmark.
//
// HTTP/1.1 has no cancel message: a client that gives up closes its
// connection. So the server watches the connection while the handler runs
// and cancels the request's context when the client is gone (end of file or
// a reset), which is how any HTTP server can honour a caller's cancel.
#pragma once

#include <ctx/ctx.hpp>
#include <ctx/io.hpp>
#include <ctx/propagation.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "posix_helpers.hpp"
#include "thread_set.hpp"

namespace test::http {

struct request {
  std::string method, target;
  std::vector<std::pair<std::string, std::string>> headers;  // names in lowercase, values trimmed

  /// The first value of header `name` (lowercase), or nullptr: a ctx::propagation::header_getter.
  [[nodiscard]] const std::string* header(std::string_view name) const {
    for (const auto& [k, v] : headers)
      if (k == name) return &v;
    return nullptr;
  }
};

struct response {
  int status = 0;
  std::string body;
};

namespace detail {

inline std::string lower(std::string_view s) {
  std::string out(s);
  for (char& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

/// Reads until `end` appears in `buf` (or EOF), under `c`. At most `limit` bytes.
template <class Clock>
std::error_code read_until(const ctx::basic_context<Clock>& c, int fd, std::string& buf, std::string_view end,
                           std::size_t limit) {
  std::byte chunk[4096];
  while (end.empty() || buf.find(end) == std::string::npos) {
    if (buf.size() > limit) return std::make_error_code(std::errc::message_size);
    const ctx::io::result r = ctx::io::recv(c, fd, std::span<std::byte>(chunk));
    if (r.error()) return r.error();
    if (r.bytes() == 0)
      return end.empty() ? std::error_code() : std::make_error_code(std::errc::connection_aborted);
    buf.append(reinterpret_cast<const char*>(chunk), r.bytes());
  }
  return {};
}

inline sockaddr_in loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  return a;
}

}  // namespace detail

/// GET `target` from 127.0.0.1:`port` under `c`: `c`'s deadline and trace go
/// in the headers (ctx::propagation::inject), plus `extra` headers as given.
/// Returns the response, or `c.err()` when `c` ended the call first (the
/// connection is then closed, which tells the server), or a system error.
template <class Clock>
std::pair<response, std::error_code> get(const ctx::basic_context<Clock>& c, int port,
                                         std::string_view target,
                                         const std::vector<std::pair<std::string, std::string>>& extra = {}) {
  test::fd sock = test::tcp_socket();
  const sockaddr_in addr = detail::loopback(port);
  if (std::error_code ec =
          ctx::io::connect(c, sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr))
    return {{}, ec};
  std::string head = "GET " + std::string(target) + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  ctx::propagation::inject(c, [&](std::string_view k, std::string_view v) {
    head.append(k).append(": ").append(v).append("\r\n");
  });
  for (const auto& [k, v] : extra) head.append(k).append(": ").append(v).append("\r\n");
  head += "\r\n";
  const ctx::io::result sent =
      ctx::io::send(c, sock.get(), std::as_bytes(std::span(head.data(), head.size())));
  if (sent.error()) return {{}, sent.error()};
  std::string in;
  if (std::error_code ec = detail::read_until(c, sock.get(), in, "", 1 << 20)) return {{}, ec};
  response r;
  // "HTTP/1.1 200 OK\r\n...\r\n\r\nbody"
  if (in.size() < 12 || in.compare(0, 5, "HTTP/") != 0)
    return {{}, std::make_error_code(std::errc::bad_message)};
  r.status = std::atoi(in.c_str() + 9);
  const std::size_t body = in.find("\r\n\r\n");
  if (body != std::string::npos) r.body = in.substr(body + 4);
  // The server's 504 for our own deadline, read a moment before our timer
  // marked `c` done: the deadline ended the call, as ctx::grpc::error says
  // for gRPC's DEADLINE_EXCEEDED.
  if (r.status == 504 && c.deadline() && c.remaining() == c.remaining().zero())
    return {r, ctx::errc::deadline_exceeded};
  return {r, {}};
}

/// A server on 127.0.0.1 and a port the OS chose. Each connection gets a
/// thread that reads one request, derives its context with
/// ctx::propagation::extract(parent, headers, limit), watches the
/// connection (a client that closes it cancels the context), calls the
/// handler, and writes its response.
class server {
 public:
  using handler = std::function<response(const ctx::context&, const request&)>;

  server(ctx::context parent, std::optional<std::chrono::nanoseconds> limit, handler h)
      : parent_(std::move(parent)), limit_(limit), handler_(std::move(h)) {
    accept_thread_ = std::thread([this] { accept_loop(); });
  }
  server(const server&) = delete;
  server& operator=(const server&) = delete;
  /// Stops accepting, cancels every request's context, joins every thread.
  ~server() {
    stop_.cancel();
    accept_thread_.join();
    connections_.join();
  }

  [[nodiscard]] int port() const noexcept { return ntohs(listener_.addr.sin_port); }

 private:
  void accept_loop() {
    for (;;) {
      const ctx::io::accept_result a = ctx::io::accept(stop_.context, listener_.sock.get());
      if (a.error()) return;  // stopped (or the listener failed: nothing more to serve)
      connections_.spawn([this, conn = std::make_shared<test::fd>(a.fd())] { serve(conn->get()); });
    }
  }

  void serve(int fd) {
    // The request's head, within 10 s of the connection.
    std::string in;
    request req;
    {
      auto [c, cancel] = ctx::with_timeout(stop_.context, std::chrono::seconds(10));
      if (detail::read_until(c, fd, in, "\r\n\r\n", 1 << 16)) return;
    }
    std::string_view head(in.data(), in.find("\r\n\r\n"));
    std::string_view line = head.substr(0, head.find("\r\n"));
    const std::size_t sp1 = line.find(' '), sp2 = line.find(' ', sp1 + 1);
    if (sp1 == std::string_view::npos || sp2 == std::string_view::npos) return;
    req.method = line.substr(0, sp1);
    req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    for (std::size_t at = head.find("\r\n"); at != std::string_view::npos;) {
      const std::size_t next = head.find("\r\n", at + 2);
      const std::string_view h =
          head.substr(at + 2, next == std::string_view::npos ? std::string_view::npos : next - at - 2);
      if (const std::size_t colon = h.find(':'); colon != std::string_view::npos)
        req.headers.emplace_back(detail::lower(h.substr(0, colon)),
                                 std::string(detail::trim(h.substr(colon + 1))));
      at = next;
    }
    // The request's context: the headers' deadline and trace, capped by our limit.
    auto get = [&](std::string_view name) { return req.header(name); };
    auto [c, cancel] = limit_ ? ctx::propagation::extract(stop_.context, get, *limit_)
                              : ctx::propagation::extract(stop_.context, get);
    // When the client's own deadline would end the request: a client that
    // closes the connection within 10 ms + 1% of it gave up because of its
    // deadline (which passed a transit time before ours), as
    // ctx::grpc::server_call::on_cancel() judges a gRPC cancel.
    std::optional<std::chrono::steady_clock::time_point> client_deadline;
    std::chrono::nanoseconds near{};
    if (const std::string* t = req.header(ctx::propagation::timeout_header))
      if (const auto d = ctx::propagation::decode_grpc_timeout(*t); d && *d < std::chrono::hours(24 * 365)) {
        client_deadline = std::chrono::steady_clock::now() + *d;
        near = std::chrono::milliseconds(10) + *d / 100;
      }
    // A client that goes away (end of file or reset) cancels the request.
    std::thread watcher([&c = c, &cancel = cancel, fd, client_deadline, near] {
      if (ctx::io::wait_readable(c, fd)) return;  // the request ended first
      std::byte b;
      if (::recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0) return;  // more data, not a close
      const bool at_deadline = client_deadline && std::chrono::steady_clock::now() + near >= *client_deadline;
      cancel(at_deadline ? ctx::errc::deadline_exceeded : ctx::errc::canceled);
    });
    const response r = handler_(c, req);
    cancel();  // the request is over: stops the watcher
    watcher.join();
    std::string out = "HTTP/1.1 " + std::to_string(r.status) + " " + (r.status == 200 ? "OK" : "Error") +
                      "\r\nConnection: close\r\nContent-Length: " + std::to_string(r.body.size()) +
                      "\r\n\r\n" + r.body;
    auto [wc, wcancel] = ctx::with_timeout(stop_.context, std::chrono::seconds(5));
    (void)ctx::io::send(wc, fd,
                        std::as_bytes(std::span(out.data(), out.size())));  // EPIPE if the client left
  }

  ctx::context parent_;
  std::optional<std::chrono::nanoseconds> limit_;
  handler handler_;
  ctx::derived<std::chrono::steady_clock> stop_ = ctx::with_cancel(parent_);
  test::tcp_listener listener_{128, SOCK_NONBLOCK};
  test::thread_set connections_;
  std::thread accept_thread_;
};

/// The HTTP status for how a request's work ended: 200, 504 for the
/// deadline, 499 (nginx's "client closed request") for a cancel, else 500.
inline int status_for(std::error_code ec) {
  if (!ec) return 200;
  if (ec == ctx::errc::deadline_exceeded) return 504;
  if (ec == ctx::errc::canceled) return 499;
  return 500;
}

}  // namespace test::http
