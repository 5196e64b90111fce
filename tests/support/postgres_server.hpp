// SPDX-License-Identifier: MIT
// A real PostgreSQL server for the tests: initdb into a temporary directory,
// `postgres` listening only on a Unix socket in that directory (no TCP),
// trust authentication, superuser `postgres`, fsync off. As root (CI) initdb
// and the server run as the `postgres` user (privileges dropped in the child
// before exec, as runuser does) and the directory belongs to that user;
// otherwise they run as the current user.
//
// Every server has a guardian: a process of its own (tests/support/
// pg_fixture.cpp, mode `guard`, started with posix_spawn, so nothing runs in
// a forked copy of a multi-threaded test) that runs initdb, starts
// `postgres` as its child, and stops it and removes the directory when told
// to (SIGTERM), when the server dies, or when the process it watches exits,
// however that happens: a test that fails or aborts leaves nothing behind.
//
// One server per test program: under ctest, a fixture (`pg_fixture start`,
// FIXTURES_SETUP) starts one server for every test case of the program and
// passes its directory in $CTX_PG_FIXTURE; `postgres_server::shared()` uses
// it, and otherwise starts one, once per process, at its first call. A test
// that kills its server starts a private one with `postgres_server::start()`.
// When PostgreSQL is not installed, they call test::skip_missing_engine.
#pragma once

#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "engine.hpp"

extern char** environ;

namespace test {

namespace pg_detail {

namespace fs = std::filesystem;

inline constexpr const char* port = "5432";
inline constexpr int not_installed = 77;

inline std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

/// Waits up to `limit` for process `pid` (not necessarily a child) to end.
inline bool wait_gone(pid_t pid, std::chrono::milliseconds limit) {
  const int fd = pidfd_open(pid);
  if (fd < 0) return errno == ESRCH;
  pollfd p{fd, POLLIN, 0};
  const int r = ::poll(&p, 1, static_cast<int>(limit.count()));
  ::close(fd);
  return r > 0;
}

/// Starts `argv` with posix_spawn (safe in a multi-threaded process), its
/// stdout and stderr appended to `log`, in a session of its own.
inline pid_t spawn(const std::vector<std::string>& argv, const std::string& log) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int e = ::posix_spawn(&pid, args[0], &fa, &attr, args.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  if (e != 0) throw std::system_error(e, std::system_category(), "posix_spawn " + argv[0]);
  return pid;
}

// --- the guardian's side (runs in pg_fixture, a fresh single-threaded process) ---

/// The directory of initdb and postgres, or "" when PostgreSQL's server is not installed.
inline std::string bindir() {
  std::vector<fs::path> candidates;
  if (FILE* p = ::popen("pg_config --bindir 2>/dev/null", "r")) {
    char buf[4096];
    std::string out;
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    ::pclose(p);
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    if (!out.empty()) candidates.emplace_back(out);
  }
  std::error_code ec;
  std::vector<fs::path> debian;  // Debian: /usr/lib/postgresql/<major>/bin, newest first
  for (const auto& e : fs::directory_iterator("/usr/lib/postgresql", ec)) debian.push_back(e.path() / "bin");
  std::sort(debian.begin(), debian.end(), [](const fs::path& a, const fs::path& b) {
    return std::atoi(a.parent_path().filename().c_str()) > std::atoi(b.parent_path().filename().c_str());
  });
  candidates.insert(candidates.end(), debian.begin(), debian.end());
  if (const char* path = std::getenv("PATH")) {
    std::stringstream ss(path);
    for (std::string d; std::getline(ss, d, ':');) candidates.emplace_back(d);
  }
  for (const auto& d : candidates)
    if (::access((d / "initdb").c_str(), X_OK) == 0 && ::access((d / "postgres").c_str(), X_OK) == 0)
      return d.string();
  return {};
}

/// Who runs initdb and the server: `postgres` when we are root, else ourselves.
struct identity {
  bool drop = false;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
};

/// In a forked child of the guardian: become `id`, stdout and stderr to
/// `log`, exec `argv`. Never returns.
[[noreturn]] inline void exec_as(const identity& id, const std::string& log,
                                 const std::vector<std::string>& argv) {
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  if (fd >= 0) {
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::close(fd);
  }
  if (id.drop && (::setgroups(id.groups.size(), id.groups.data()) != 0 || ::setgid(id.gid) != 0 ||
                  ::setuid(id.uid) != 0))
    ::_exit(126);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  ::execv(args[0], args.data());
  ::_exit(127);
}

/// pg_fixture guard DIR WATCH: the guardian of the server in DIR (an empty
/// directory), watching process WATCH. Its stdout and stderr go to
/// DIR/guardian.log. Exit status: 77 when PostgreSQL is not installed, 1 when
/// the server could not be made (DIR is then left for the caller to read and
/// remove), 0 after a normal stop (DIR removed).
inline int guardian(const std::string& dir, pid_t watch) {
  for (int fd = 3; fd < 1024; ++fd) ::close(fd);  // nothing of the spawner's
  sigset_t stop;
  sigemptyset(&stop);
  for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&stop, s);
  ::sigprocmask(SIG_BLOCK, &stop, nullptr);
  const int stop_fd = ::signalfd(-1, &stop, SFD_CLOEXEC);
  const int watch_fd = pidfd_open(watch);
  if (stop_fd < 0 || watch_fd < 0) {
    std::perror("guardian: signalfd/pidfd_open");
    return 1;
  }

  const std::string bin = bindir();
  if (bin.empty()) {
    std::fprintf(stderr,
                 "PostgreSQL's server (initdb, postgres) is not installed: apt-get install postgresql\n");
    return not_installed;
  }
  identity id;
  if (::geteuid() == 0) {
    const passwd* pw = ::getpwnam("postgres");
    if (!pw) {
      std::fprintf(stderr,
                   "running as root, but there is no 'postgres' user to run the server as "
                   "(Debian's postgresql package creates it)\n");
      return not_installed;
    }
    id.drop = true;
    id.uid = pw->pw_uid;
    id.gid = pw->pw_gid;
    int n = 64;
    id.groups.resize(static_cast<std::size_t>(n));
    if (::getgrouplist(pw->pw_name, pw->pw_gid, id.groups.data(), &n) < 0) n = 0;
    id.groups.resize(static_cast<std::size_t>(n));
    if (::chown(dir.c_str(), id.uid, id.gid) != 0) {
      std::perror("guardian: chown");
      return 1;
    }
  }
  const auto run = [&](const std::string& log, const std::vector<std::string>& argv) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      exec_as(id, log, argv);
    }
    return pid;
  };

  int status = 0;
  const pid_t init = run(dir + "/initdb.log", {bin + "/initdb", "-D", dir + "/data", "-A", "trust", "-U",
                                               "postgres", "-E", "UTF8", "--locale=C", "--no-sync"});
  if (init < 0 || ::waitpid(init, &status, 0) != init || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "initdb failed:\n%s\n", read_file(dir + "/initdb.log").c_str());
    return 1;
  }
  const pid_t server = run(dir + "/server.log",
                           {bin + "/postgres", "-D", dir + "/data", "-k", dir, "-p", port, "-c",
                            "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c",
                            "full_page_writes=off", "-c", "max_connections=60", "-c", "shared_buffers=16MB"});
  const int server_fd = server > 0 ? pidfd_open(server) : -1;
  if (server_fd < 0) {
    std::fprintf(stderr, "could not start postgres\n");
    return 1;
  }
  pollfd p[3] = {{stop_fd, POLLIN, 0}, {watch_fd, POLLIN, 0}, {server_fd, POLLIN, 0}};
  while (::poll(p, 3, -1) < 0 && errno == EINTR) {
  }
  if (!(p[2].revents & POLLIN)) {
    ::kill(server, SIGINT);  // fast shutdown: roll back, disconnect the clients, exit
    pollfd s{server_fd, POLLIN, 0};
    if (::poll(&s, 1, 10000) <= 0) ::kill(server, SIGKILL);
  }
  ::waitpid(server, nullptr, 0);
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}

}  // namespace pg_detail

/// A running PostgreSQL server (see the file comment).
class postgres_server {
 public:
  postgres_server(const postgres_server&) = delete;
  postgres_server& operator=(const postgres_server&) = delete;

  /// Stops the server, if this process started it, and waits until it and
  /// its directory are gone.
  ~postgres_server() { stop(); }

  /// The server shared by this test program.
  static postgres_server& shared() {
    static const std::unique_ptr<postgres_server> s = [] {
      if (const char* dir = std::getenv("CTX_PG_FIXTURE"); dir && *dir) {
        auto f = std::unique_ptr<postgres_server>(new postgres_server(dir));
        if (f->ping()) return f;
        std::fprintf(stderr, "no server in CTX_PG_FIXTURE=%s: starting one for this process\n", dir);
      }
      return start();
    }();
    return *s;
  }

  /// A new server of the caller's own in a new temporary directory, stopped
  /// when the object is destroyed or this process exits.
  static std::unique_ptr<postgres_server> start(const std::string& helper = CTX_PG_FIXTURE_BIN) {
    std::string dir = "/tmp/ctx-pg-XXXXXX";
    if (!::mkdtemp(dir.data())) throw std::system_error(errno, std::system_category(), "mkdtemp");
    return start_in(helper, dir, ::getpid());
  }

  /// Starts a guardian and its server in `dir` (an empty directory), watching
  /// process `watch`, and waits until the server accepts connections.
  static std::unique_ptr<postgres_server> start_in(const std::string& helper, const std::string& dir,
                                                   pid_t watch) {
    auto s = std::unique_ptr<postgres_server>(new postgres_server(dir));
    s->guardian_ = pg_detail::spawn({helper, "guard", dir, std::to_string(watch)}, dir + "/guardian.log");
    std::ofstream(dir + "/guardian.pid") << s->guardian_ << "\n";
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(90);
    for (;;) {
      if (s->ping()) return s;
      int status = 0;
      if (::waitpid(s->guardian_, &status, WNOHANG) == s->guardian_ ||
          std::chrono::steady_clock::now() > give_up) {
        if (std::chrono::steady_clock::now() > give_up) ::kill(s->guardian_, SIGTERM);
        s->guardian_ = -1;
        const std::string log = pg_detail::read_file(dir + "/guardian.log");
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
        if (WIFEXITED(status) && WEXITSTATUS(status) == pg_detail::not_installed) skip_missing_engine(log);
        throw std::runtime_error("the PostgreSQL server did not start:\n" + log);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  /// libpq's connection string for the server, plus `extra` ("connect_timeout=5", ...).
  [[nodiscard]] std::string conninfo(const std::string& extra = "") const {
    return "host=" + dir_ + " port=" + pg_detail::port + " user=postgres dbname=postgres" +
           (extra.empty() ? "" : " " + extra);
  }
  /// The directory of the server's socket (its `host`).
  [[nodiscard]] const std::string& dir() const noexcept { return dir_; }

  /// True if the server accepts connections.
  [[nodiscard]] bool ping() const { return PQping(conninfo("connect_timeout=2").c_str()) == PQPING_OK; }

  /// The postmaster's pid (from postmaster.pid), or -1.
  [[nodiscard]] pid_t postmaster_pid() const {
    std::ifstream f(dir_ + "/data/postmaster.pid");
    long pid = -1;
    f >> pid;
    return static_cast<pid_t>(pid);
  }

  /// Kills the server with SIGKILL, as a crash would; its backends end when
  /// they notice, and the guardian removes the directory.
  void kill_hard() const {
    if (const pid_t pm = postmaster_pid(); pm > 0) ::kill(pm, SIGKILL);
  }

  /// Leaves the server running when this object goes (pg_fixture start):
  /// its guardian ends it when the watched process exits.
  void release() noexcept { guardian_ = -1; }

  /// Stops a server this process started, and waits for its guardian.
  void stop() {
    if (guardian_ <= 0) return;
    ::kill(guardian_, SIGTERM);
    ::waitpid(guardian_, nullptr, 0);
    guardian_ = -1;
  }

  /// Stops the server of the guardian whose pid is in `dir`/guardian.pid
  /// (`pg_fixture stop`), and waits until the guardian is gone.
  static void stop_in(const std::string& dir) {
    std::ifstream f(dir + "/guardian.pid");
    long pid = -1;
    if (!(f >> pid) || pid <= 0) return;
    if (::kill(static_cast<pid_t>(pid), SIGTERM) == 0)
      (void)pg_detail::wait_gone(static_cast<pid_t>(pid), std::chrono::seconds(30));
  }

 private:
  explicit postgres_server(std::string dir) : dir_(std::move(dir)) {}

  std::string dir_;
  pid_t guardian_ = -1;  // a child of this process, or -1
};

}  // namespace test
