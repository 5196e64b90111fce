// SPDX-License-Identifier: MIT
// A real redis-server for the tests: started in a fresh temporary directory,
// listening on a Unix socket there (and, if asked, on an OS-chosen loopback
// port), without persistence; killed, reaped and its directory removed by
// the destructor. A test program shares one, started on first use
// (shared_redis()); tests that kill or pause a server make their own.
//
// When redis-server is not installed the test is skipped (exit 77) through
// test::skip_missing_engine(). The server dies with the thread that started
// it (PR_SET_PDEATHSIG), so a test that crashes leaves no process behind:
// start servers from the test's main thread.
#pragma once

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "engine.hpp"

namespace test {

/// The path of redis-server (PATH, then the usual places), or "" when not installed.
inline std::string find_redis_server() {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream ss(path);
    for (std::string d; std::getline(ss, d, ':');)
      if (!d.empty()) dirs.push_back(d);
  }
  for (const char* d : {"/usr/bin", "/usr/sbin", "/usr/local/bin"}) dirs.emplace_back(d);
  for (const std::string& d : dirs) {
    const std::string p = d + "/redis-server";
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return {};
}

/// A hiredis reply, freed when it goes.
using redis_reply = std::unique_ptr<redisReply, decltype(&freeReplyObject)>;

/// A plain blocking hiredis connection, for a test's own checks ("is the item in the list?").
class redis_client {
 public:
  explicit redis_client(redisContext* c) : c_(c) {
    if (!c_ || c_->err) throw std::runtime_error("redis_client: cannot connect");
  }
  redis_client(const redis_client&) = delete;
  redis_client& operator=(const redis_client&) = delete;
  ~redis_client() { redisFree(c_); }

  /// Runs one command (arguments as in redisCommandArgv); throws if the connection fails.
  template <class... Args>
  redis_reply command(const Args&... args) {
    const std::string a[] = {std::string(args)...};
    const char* argv[sizeof...(Args)];
    std::size_t len[sizeof...(Args)];
    for (std::size_t i = 0; i < sizeof...(Args); ++i) {
      argv[i] = a[i].c_str();
      len[i] = a[i].size();
    }
    void* r = redisCommandArgv(c_, static_cast<int>(sizeof...(Args)), argv, len);
    if (!r) throw std::runtime_error(std::string("redis_client: ") + c_->errstr);
    return redis_reply(static_cast<redisReply*>(r), &freeReplyObject);
  }
  /// The integer reply of a command (LLEN, EXISTS, ...).
  template <class... Args>
  long long integer(const Args&... args) {
    const redis_reply r = command(args...);
    if (r->type != REDIS_REPLY_INTEGER) throw std::runtime_error("redis_client: not an integer reply");
    return r->integer;
  }
  [[nodiscard]] redisContext* get() const noexcept { return c_; }

 private:
  redisContext* c_;
};

class redis_server {
 public:
  /// Starts a server; `tcp` adds a loopback TCP port to the Unix socket.
  explicit redis_server(bool tcp = false) {
    const std::string bin = find_redis_server();
    if (bin.empty()) skip_missing_engine("redis-server is not installed (Debian package redis-server)");
    char dir[] = "/tmp/ctx-redis-XXXXXX";
    if (!::mkdtemp(dir)) throw std::runtime_error("redis_server: mkdtemp");
    dir_ = dir;
    socket_ = dir_ + "/redis.sock";
    for (int attempt = 0;; ++attempt) {
      if (tcp) port_ = free_port();
      if (start(bin)) return;
      if (!tcp || attempt == 4) {
        const std::string log = read_log();
        stop();
        throw std::runtime_error("redis_server: redis-server did not start:\n" + log);
      }
      // The port was taken between free_port() and the server's bind: try another.
    }
  }
  redis_server(const redis_server&) = delete;
  redis_server& operator=(const redis_server&) = delete;
  ~redis_server() { stop(); }

  [[nodiscard]] const std::string& socket_path() const noexcept { return socket_; }
  /// The TCP port, or 0 without TCP.
  [[nodiscard]] int port() const noexcept { return port_; }
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }

  /// A blocking hiredis connection to it.
  [[nodiscard]] std::unique_ptr<redis_client> client() const {
    return std::make_unique<redis_client>(redisConnectUnix(socket_.c_str()));
  }

  /// Kills the server (SIGKILL) and waits until it is gone.
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }
  /// Stops the server's process (SIGSTOP): it accepts nothing, reads nothing.
  void pause() { ::kill(pid_, SIGSTOP); }
  /// Lets it run again (SIGCONT).
  void resume() { ::kill(pid_, SIGCONT); }

 private:
  static int free_port() {
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      throw std::runtime_error("redis_server: no free port");
    ::close(s);
    return ntohs(a.sin_port);
  }

  /// Starts redis-server and waits until it answers PING; false if it exited.
  bool start(const std::string& bin) {
    const std::vector<std::string> args = {bin,
                                           "--port",
                                           std::to_string(port_),
                                           "--bind",
                                           "127.0.0.1",
                                           "--unixsocket",
                                           socket_,
                                           "--unixsocketperm",
                                           "700",
                                           "--dir",
                                           dir_,
                                           "--save",
                                           "",
                                           "--appendonly",
                                           "no",
                                           "--daemonize",
                                           "no",
                                           "--logfile",
                                           dir_ + "/redis.log",
                                           "--databases",
                                           "1"};
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("redis_server: fork");
    if (pid == 0) {  // async-signal-safe calls only until execv
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      const int null = ::open("/dev/null", O_RDWR);
      if (null >= 0) {
        ::dup2(null, 0);
        ::dup2(null, 1);
        ::dup2(null, 2);
      }
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    pid_ = pid;
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < give_up) {
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      if (redisContext* c = redisConnectUnix(socket_.c_str())) {
        bool up = false;
        if (!c->err) {
          if (auto* r = static_cast<redisReply*>(redisCommand(c, "PING"))) {
            up = r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
          }
        }
        redisFree(c);
        if (up) return true;
      }
      // An external process starting up: nothing to wait on but its socket.
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

  std::string read_log() const {
    std::ifstream f(dir_ + "/redis.log");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  void stop() noexcept {
    if (pid_ > 0) {
      ::kill(pid_, SIGCONT);  // in case a test left it paused
      kill();
    }
    if (dir_.empty()) return;
    if (DIR* d = ::opendir(dir_.c_str())) {
      while (const dirent* e = ::readdir(d)) {
        const std::string_view name = e->d_name;
        if (name != "." && name != "..") ::unlink((dir_ + "/" + e->d_name).c_str());
      }
      ::closedir(d);
    }
    ::rmdir(dir_.c_str());
    dir_.clear();
  }

  std::string dir_, socket_;
  int port_ = 0;
  pid_t pid_ = -1;
};

/// The test program's shared server, started on first use and stopped at exit.
inline redis_server& shared_redis() {
  static redis_server s;
  return s;
}

}  // namespace test
