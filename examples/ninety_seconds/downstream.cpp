// SPDX-License-Identifier: MIT
#include "downstream.hpp"

#include <ctx/io.hpp>
#include <ctx/sleep.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <span>
#include <string_view>
#include <system_error>

namespace demo {

using namespace std::chrono_literals;

template <class F>
void downstream::threads::start(F f) {
  const std::lock_guard lock(m_);
  reap_locked();
  const auto self = running_.emplace(running_.end());
  // The new thread cannot record itself as finished before `*self` is
  // assigned: that takes m_, which is held until then.
  *self = std::thread([this, self, f = std::move(f)]() mutable {
    f();
    const std::lock_guard done(m_);
    finished_.push_back(self);
  });
}

void downstream::threads::reap_locked() {
  for (const auto& t : finished_) {
    t->join();  // it has finished: only its exit is left
    running_.erase(t);
  }
  finished_.clear();
}

void downstream::threads::join_all() {
  std::list<std::thread> all;
  {
    const std::lock_guard lock(m_);
    all.swap(running_);  // iterators stay valid: they now point into `all`
  }
  for (std::thread& t : all) t.join();
  const std::lock_guard lock(m_);
  finished_.clear();
}

downstream::downstream(std::chrono::milliseconds stall, double share)
    : stall_(stall),
      share_(share),
      life_(ctx::with_cancel(ctx::background())),
      release_(ctx::with_cancel(life_.context)) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  auto* sa = reinterpret_cast<sockaddr*>(&addr);
  if (listen_fd_ < 0 || ::bind(listen_fd_, sa, len) != 0 || ::listen(listen_fd_, SOMAXCONN) != 0 ||
      ::getsockname(listen_fd_, sa, &len) != 0) {
    const int e = errno;
    if (listen_fd_ >= 0) ::close(listen_fd_);
    throw std::system_error(e, std::system_category(), "downstream: cannot listen on 127.0.0.1");
  }
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { accept_loop(); });
}

downstream::~downstream() {
  life_.cancel();  // ends the accept loop, every read and every stall
  acceptor_.join();
  connections_.join_all();
  ::close(listen_fd_);
}

std::string downstream::url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/quote"; }

bool downstream::should_stall(long n) const noexcept {
  return std::floor(static_cast<double>(n + 1) * share_) > std::floor(static_cast<double>(n) * share_);
}

void downstream::accept_loop() {
  const ctx::context& c = life_.context;
  for (;;) {
    const ctx::io::accept_result a = ctx::io::accept(c, listen_fd_);
    if (a.error()) {
      if (c.done()) return;
      (void)ctx::sleep_for(c, 10ms);  // out of file descriptors, say: try again
      continue;
    }
    connections_.start([this, fd = a.fd()] {
      serve(fd);
      ::close(fd);
    });
  }
}

void downstream::serve(int fd) {
  const ctx::context& c = life_.context;
  // The request's head (a GET has no body).
  std::string head;
  while (head.find("\r\n\r\n") == std::string::npos) {
    std::byte buf[2048];
    const ctx::io::result r = ctx::io::recv(c, fd, buf);
    if (r.error() || r.bytes() == 0 || head.size() > 16384) return;
    head.append(reinterpret_cast<const char*>(buf), r.bytes());
  }

  const long n = calls_.fetch_add(1, std::memory_order_relaxed);
  if (should_stall(n) && !release_.context.done()) {
    stalled_.fetch_add(1, std::memory_order_relaxed);
    stalling_.fetch_add(1, std::memory_order_relaxed);
    auto [stall, end_stall] = ctx::with_timeout(release_.context, stall_);
    // Readable means end of file: the caller hung up. Otherwise the stall
    // ended (or was released): answer.
    const std::error_code still_there = ctx::io::wait_readable(stall, fd);
    stalling_.fetch_sub(1, std::memory_order_relaxed);
    if (!still_there) {
      abandoned_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }

  // GET /quote?user=N HTTP/1.1
  const std::size_t at = head.find("user=");
  const int user = at == std::string::npos ? 0 : std::atoi(head.c_str() + at + 5);
  const std::string body =
      "quote " + std::to_string(100 + (user * 37) % 900) + "." + std::to_string(user % 100);
  const std::string answer =
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\nConnection: close\r\n\r\n" + body;
  (void)ctx::io::send(c, fd, std::as_bytes(std::span(answer.data(), answer.size())));
}

}  // namespace demo
