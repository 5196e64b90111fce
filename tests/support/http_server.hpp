// SPDX-License-Identifier: MIT
// A small HTTP/1.1 server on 127.0.0.1, run on a thread of the test, with
// endpoints that answer at once or stall exactly where a test needs them to.
//
// A raw-socket server rather than a library, so that a stall is precise: the
// request was read, the headers were (or were not) sent, the body stopped at
// byte 10. One thread, poll(), non-blocking sockets; keep-alive and pipelined
// requests work; request bodies (Content-Length) are read and discarded, and
// "Expect: 100-continue" is answered. Everything it accepted is closed by the
// destructor, which also joins the thread.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace test {

/// The endpoints (any method):
///   /fast           200, body "hello"
///   /bytes/N        200, N bytes of 'x'
///   /status/N       status N, body "status"
///   /stall-headers  reads the request, never answers
///   /stall-body     200 with Content-Length 1000000, sends "0123456789", then nothing
///   /barrier/N[/S]  answers all at once when N requests to /barrier/N[/...] wait: status S
///                   (default 200), body "hello"
///   /close          closes the connection without answering
/// and silent_url(): a second listener whose connections are accepted and
/// then never read from or answered.
class http_server {
 public:
  http_server() {
    listener_ = listen_on_loopback(port_);
    silent_ = listen_on_loopback(silent_port_);
    if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) throw std::runtime_error("http_server: pipe2");
    thread_ = std::thread([this] { run(); });
  }
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  ~http_server() {
    const char b = 0;
    (void)!::write(wake_[1], &b, 1);
    thread_.join();
    for (const conn& k : conns_) ::close(k.fd);
    ::close(listener_);
    ::close(silent_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  [[nodiscard]] int port() const noexcept { return port_; }
  [[nodiscard]] std::string url(std::string_view path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + std::string(path);
  }
  /// A URL whose server accepts the connection and never reads or answers.
  [[nodiscard]] std::string silent_url() const {
    return "http://127.0.0.1:" + std::to_string(silent_port_) + "/";
  }

  /// Complete requests (headers and body) received for `path`.
  [[nodiscard]] std::size_t requests(const std::string& path) const {
    std::lock_guard lock(m_);
    const auto it = requests_.find(path);
    return it == requests_.end() ? 0 : it->second;
  }
  /// Connections accepted so far, on both listeners.
  [[nodiscard]] std::size_t connections() const {
    std::lock_guard lock(m_);
    return accepted_;
  }
  /// Connections accepted and not yet closed by the client.
  [[nodiscard]] std::size_t open_connections() const {
    std::lock_guard lock(m_);
    return open_;
  }
  /// Waits until at least `n` complete requests for `path` arrived; false after `timeout`.
  bool wait_requests(const std::string& path, std::size_t n,
                     std::chrono::milliseconds timeout = std::chrono::seconds(20)) const {
    std::unique_lock lock(m_);
    return cv_.wait_for(lock, timeout, [&] {
      const auto it = requests_.find(path);
      return it != requests_.end() && it->second >= n;
    });
  }
  /// Waits until at least `n` connections were accepted; false after `timeout`.
  bool wait_connections(std::size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(20)) const {
    std::unique_lock lock(m_);
    return cv_.wait_for(lock, timeout, [&] { return accepted_ >= n; });
  }
  /// Waits until exactly `n` connections are open; false after `timeout`.
  bool wait_open_connections(std::size_t n,
                             std::chrono::milliseconds timeout = std::chrono::seconds(20)) const {
    std::unique_lock lock(m_);
    return cv_.wait_for(lock, timeout, [&] { return open_ == n; });
  }

 private:
  struct conn {
    int fd = -1;
    bool silent = false;   // accepted on the silent listener: never read
    bool stalled = false;  // a stall endpoint: read (to see the close) and discard
    bool close_after_write = false;
    bool continued = false;  // "100 Continue" sent for the current request
    std::string in, out;
    std::string barrier;  // the /barrier/N group it waits in, if any
    int barrier_status = 200;
  };

  static int listen_on_loopback(int& port) {
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (s < 0 || ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0 || ::listen(s, 128) != 0)
      throw std::runtime_error("http_server: cannot listen on 127.0.0.1");
    port = ntohs(a.sin_port);
    return s;
  }

  static std::string response(int status, std::string_view body) {
    const char* reason = status == 200 ? "OK" : status == 404 ? "Not Found" : "Status";
    std::string r = "HTTP/1.1 " + std::to_string(status) + " " + reason +
                    "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
                    "\r\n\r\n";
    r.append(body);
    return r;
  }

  /// The value of header `name` (lower case) in `head`, or "".
  static std::string header(std::string_view head, std::string_view name) {
    std::size_t pos = head.find("\r\n");
    while (pos != std::string_view::npos && pos + 2 < head.size()) {
      const std::size_t start = pos + 2;
      const std::size_t end = head.find("\r\n", start);
      const std::string_view line =
          head.substr(start, end == std::string_view::npos ? head.npos : end - start);
      const std::size_t colon = line.find(':');
      if (colon != std::string_view::npos && colon == name.size() &&
          std::equal(name.begin(), name.end(), line.begin(),
                     [](char a, char b) { return a == std::tolower(static_cast<unsigned char>(b)); })) {
        std::string_view v = line.substr(colon + 1);
        while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
        return std::string(v);
      }
      pos = end;
    }
    return {};
  }

  void count(const std::string& path) {
    {
      std::lock_guard lock(m_);
      ++requests_[path];
    }
    cv_.notify_all();
  }

  /// Parses and answers the complete requests in `k.in`.
  void handle(conn& k) {
    while (!k.stalled && !k.close_after_write && k.barrier.empty()) {
      const std::size_t end = k.in.find("\r\n\r\n");
      if (end == std::string::npos) return;
      const std::string head = k.in.substr(0, end);
      const std::size_t body_len = std::strtoul(header(head, "content-length").c_str(), nullptr, 10);
      if (k.in.size() < end + 4 + body_len) {
        if (!k.continued && header(head, "expect") == "100-continue") {
          k.continued = true;
          k.out += "HTTP/1.1 100 Continue\r\n\r\n";
        }
        return;
      }
      k.in.erase(0, end + 4 + body_len);
      k.continued = false;
      const std::size_t sp1 = head.find(' ');
      const std::size_t sp2 = head.find(' ', sp1 + 1);
      std::string path = head.substr(sp1 + 1, sp2 - sp1 - 1);
      count(path);
      if (path == "/fast") {
        k.out += response(200, "hello");
      } else if (path.rfind("/bytes/", 0) == 0) {
        k.out += response(200, std::string(std::strtoul(path.c_str() + 7, nullptr, 10), 'x'));
      } else if (path.rfind("/status/", 0) == 0) {
        k.out += response(static_cast<int>(std::strtol(path.c_str() + 8, nullptr, 10)), "status");
      } else if (path == "/stall-headers") {
        k.stalled = true;
      } else if (path == "/stall-body") {
        k.out += "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n0123456789";
        k.stalled = true;
      } else if (path.rfind("/barrier/", 0) == 0) {
        char* end_n = nullptr;
        const auto want = std::strtoul(path.c_str() + 9, &end_n, 10);
        k.barrier = path.substr(0, static_cast<std::size_t>(end_n - path.c_str()));
        k.barrier_status = *end_n == '/' ? static_cast<int>(std::strtol(end_n + 1, nullptr, 10)) : 200;
        std::size_t waiting = 0;
        for (const conn& o : conns_) waiting += o.barrier == k.barrier;
        if (waiting >= want) {
          const std::string group = k.barrier;
          for (conn& o : conns_) {
            if (o.barrier != group) continue;
            o.barrier.clear();
            o.out += response(o.barrier_status, "hello");
          }
        }
      } else if (path == "/close") {
        k.close_after_write = true;
      } else {
        k.out += response(404, "no such endpoint");
      }
    }
  }

  /// Sends what `k.out` holds; false if the connection is to be closed.
  static bool flush(conn& k) {
    while (!k.out.empty()) {
      const ssize_t n = ::send(k.fd, k.out.data(), k.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
      k.out.erase(0, static_cast<std::size_t>(n));
    }
    return !k.close_after_write;
  }

  void accept_from(int listener, bool silent) {
    for (;;) {
      const int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) return;
      conn k;
      k.fd = fd;
      k.silent = silent;
      conns_.push_back(std::move(k));
      {
        std::lock_guard lock(m_);
        ++accepted_;
        ++open_;
      }
      cv_.notify_all();
    }
  }

  void close_conn(std::size_t i) {
    ::close(conns_[i].fd);
    conns_.erase(conns_.begin() + static_cast<std::ptrdiff_t>(i));
    {
      std::lock_guard lock(m_);
      --open_;
    }
    cv_.notify_all();
  }

  void run() {
    std::vector<pollfd> p;
    for (;;) {
      p.clear();
      p.push_back({wake_[0], POLLIN, 0});
      p.push_back({listener_, POLLIN, 0});
      p.push_back({silent_, POLLIN, 0});
      for (const conn& k : conns_)
        p.push_back(
            {k.fd, static_cast<short>((k.silent ? POLLRDHUP : POLLIN) | (k.out.empty() ? 0 : POLLOUT)), 0});
      if (::poll(p.data(), p.size(), -1) < 0) continue;
      if (p[0].revents) return;
      // Connections first (their indexes match p), then new ones.
      for (std::size_t i = conns_.size(); i-- > 0;) {
        const short re = p[i + 3].revents;
        if (!re) continue;
        conn& k = conns_[i];
        bool keep = true;
        if (k.silent) {
          keep = !(re & (POLLRDHUP | POLLHUP | POLLERR));  // the client went away; nothing is read
        } else if (re & (POLLIN | POLLHUP | POLLERR)) {
          char buf[65536];
          const ssize_t n = ::recv(k.fd, buf, sizeof buf, MSG_DONTWAIT);
          if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            keep = false;
          } else if (n > 0 && !k.stalled) {
            k.in.append(buf, static_cast<std::size_t>(n));
            handle(k);
          }
        }
        // A barrier's release fills other connections' buffers: flush them all below.
        if (keep) keep = flush(k);
        if (!keep) close_conn(i);
      }
      for (std::size_t i = conns_.size(); i-- > 0;)
        if (!conns_[i].out.empty() && !flush(conns_[i])) close_conn(i);
      if (p[1].revents) accept_from(listener_, false);
      if (p[2].revents) accept_from(silent_, true);
    }
  }

  int listener_ = -1, silent_ = -1;
  int port_ = 0, silent_port_ = 0;
  int wake_[2] = {-1, -1};
  std::vector<conn> conns_;  // owned by the server thread
  mutable std::mutex m_;
  mutable std::condition_variable cv_;
  std::map<std::string, std::size_t, std::less<>> requests_;  // guarded by m_
  std::size_t accepted_ = 0, open_ = 0;                       // guarded by m_
  std::thread thread_;
};

}  // namespace test
