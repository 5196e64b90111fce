// SPDX-License-Identifier: MIT
// A TCP read on loopback that gives up at the request's deadline, leaving the
// connection usable: the bytes that arrive later are still there to read.
#include <ctx/ctx.hpp>
#include <ctx/io.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <span>

using namespace std::chrono_literals;

int main() {
  // A server on 127.0.0.1 that accepts, then stays silent: a stuck downstream.
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  auto* sa = reinterpret_cast<sockaddr*>(&addr);
  if (::bind(listener, sa, len) != 0 || ::getsockname(listener, sa, &len) != 0 || ::listen(listener, 1) != 0)
    return 1;

  // The request has 200 ms for everything: connect, accept and the read.
  auto [c, cancel] = ctx::with_timeout(ctx::background(), 200ms);
  const int sock = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const std::error_code connected = ctx::io::connect(c, sock, sa, len);
  const ctx::io::accept_result server = ctx::io::accept(c, listener);
  if (connected || server.error()) {
    std::printf("connect: %s, accept: %s\n", connected.message().c_str(), server.error().message().c_str());
    return 1;
  }

  const auto start = std::chrono::steady_clock::now();
  std::byte buf[256];
  const ctx::io::result r = ctx::io::recv(c, sock, buf);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  std::printf("recv: %zu bytes, \"%s\" after %lld ms\n", r.bytes(), r.error().message().c_str(),
              static_cast<long long>(ms.count()));

  // Nothing was lost: a late answer is read under a fresh context.
  const auto late = ctx::io::send(ctx::background(), server.fd(), std::as_bytes(std::span("late", 4)));
  auto [c2, cancel2] = ctx::with_timeout(ctx::background(), 5s);
  const ctx::io::result again = ctx::io::recv(c2, sock, buf);
  std::printf("later: %zu of %zu bytes, \"%s\"\n", again.bytes(), late.bytes(),
              again.error().message().c_str());

  ::close(server.fd());
  ::close(sock);
  ::close(listener);
  return r.error() == ctx::errc::deadline_exceeded && again.bytes() == 4 ? 0 : 1;
}
