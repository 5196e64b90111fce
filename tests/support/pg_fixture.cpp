// SPDX-License-Identifier: MIT
// The PostgreSQL server of the tests (see postgres_server.hpp), as a program:
//
//   pg_fixture start DIR          start a server in DIR (made anew) for the
//                                 ctest run that started this (FIXTURES_SETUP):
//                                 it lives until `stop`, or until ctest exits
//   pg_fixture stop DIR           stop it and remove DIR (FIXTURES_CLEANUP)
//   pg_fixture run DIR -- CMD...  run CMD with PGHOST, PGPORT, PGUSER and
//                                 PGDATABASE naming the server in DIR, or a
//                                 server of its own if DIR has none
//   pg_fixture guard DIR PID      the guardian of a server (started by the others)
//
// Exit status 77 when PostgreSQL is not installed (ctest: skipped).
#define CTX_PG_FIXTURE_BIN "/proc/self/exe"
#include "postgres_server.hpp"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>

namespace {

int usage() {
  std::fprintf(stderr, "usage: pg_fixture start DIR | stop DIR | run DIR -- CMD [ARGS...] | guard DIR PID\n");
  return 2;
}

int start(const std::string& dir) {
  test::postgres_server::stop_in(dir);  // one left by an earlier run that was killed
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (::mkdir(dir.c_str(), 0700) != 0) {
    std::perror(("pg_fixture: mkdir " + dir).c_str());
    return 1;
  }
  auto s = test::postgres_server::start_in(CTX_PG_FIXTURE_BIN, dir, ::getppid());  // watches ctest
  s->release();  // it outlives this program: `stop`, or ctest's exit, ends it
  std::printf("postgres: %s\n", s->conninfo().c_str());
  return 0;
}

int run(const std::string& dir, char** cmd) {
  std::unique_ptr<test::postgres_server> own;
  std::string host = dir;
  if (PQping(("host=" + dir + " port=5432 user=postgres dbname=postgres connect_timeout=2").c_str()) !=
      PQPING_OK) {
    own = test::postgres_server::start();
    host = own->dir();
  }
  ::setenv("PGHOST", host.c_str(), 1);
  ::setenv("PGPORT", test::pg_detail::port, 1);
  ::setenv("PGUSER", "postgres", 1);
  ::setenv("PGDATABASE", "postgres", 1);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execvp(cmd[0], cmd);
    std::perror("pg_fixture: exec");
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  own.reset();
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  std::fprintf(stderr, "pg_fixture: %s ended by signal %d\n", cmd[0], WTERMSIG(status));
  return 128 + WTERMSIG(status);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  const std::string mode = argv[1];
  const std::string dir = argv[2];
  try {
    if (mode == "guard" && argc == 4)
      return test::pg_detail::guardian(dir, static_cast<pid_t>(std::atol(argv[3])));
    if (mode == "start" && argc == 3) return start(dir);
    if (mode == "stop" && argc == 3) {
      test::postgres_server::stop_in(dir);
      return 0;
    }
    if (mode == "run" && argc >= 5 && std::string(argv[3]) == "--") return run(dir, argv + 4);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pg_fixture %s: %s\n", mode.c_str(), e.what());
    return 1;
  }
  return usage();
}
