// SPDX-License-Identifier: MIT
// The ninety-second request, reenacted and fixed (docs/demo.md).
//
// A service looks a user up in a database through a small pool of
// connections and asks a downstream service for a quote; the downstream
// stalls on a share of calls for far longer than any caller waits. Without
// ctx, each stalled call keeps its handler thread and its database
// connection until the stall ends, long after the caller gave up, and the
// service fills up with such zombie requests. With ctx, the request's
// deadline reaches the pool, the database and the HTTP client, and all of
// them give their resources back at the deadline.
//
// The files: service.cpp (the handler: the code to read), pool.cpp,
// store_sqlite.cpp and store_postgres.cpp (the database), downstream.cpp,
// load.cpp (the callers), scenario.cpp (one run, its sampler and cut-off),
// report.cpp (progress, table, chart), check.cpp (the test's assertions).
#include <ctx/curl.hpp>

#include <curl/curl.h>
#include <sys/resource.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <exception>
#include <vector>

#include "check.hpp"
#include "options.hpp"
#include "report.hpp"
#include "scenario.hpp"

namespace {

/// Raises the soft limit on open files: the run without ctx piles up a
/// socket per request that waits for a thread, and 1024 (a common default)
/// is not enough for that.
void raise_file_limit() {
  rlimit l{};
  if (::getrlimit(RLIMIT_NOFILE, &l) != 0) return;
  const rlim_t want = l.rlim_max == RLIM_INFINITY ? 65536 : std::min<rlim_t>(l.rlim_max, 65536);
  if (l.rlim_cur < want) {
    l.rlim_cur = want;
    (void)::setrlimit(RLIMIT_NOFILE, &l);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int exit_code = 0;
  const std::optional<demo::options> parsed = demo::parse_options(argc, argv, exit_code);
  if (!parsed) return exit_code;
  const demo::options& o = *parsed;

  std::signal(SIGPIPE, SIG_IGN);  // a caller that hung up is an error code, not a signal
  raise_file_limit();
  curl_global_init(CURL_GLOBAL_DEFAULT);

  std::printf(
      "The ninety-second request, reenacted. A downstream stalls on %.3g %% of its calls for %s\n"
      "(the story's 90 s, scaled down). The service: %d handler threads, %d database connections,\n"
      "each request a %s deadline. The load: %d callers, %g requests/s in all, for %s; a caller\n"
      "gives up after %s.\n",
      o.stall_share * 100, demo::format_duration(o.stall).c_str(), o.threads, o.connections,
      demo::format_duration(o.deadline).c_str(), o.concurrency, o.rate,
      demo::format_duration(o.duration).c_str(), demo::format_duration(o.caller_timeout).c_str());

  demo::progress out(stdout);
  std::vector<demo::run_result> runs;
  const int total = o.which == demo::runs::both ? 2 : 1;
  try {
    if (o.which != demo::runs::with_context) {
      out.start("Run 1 of " + std::to_string(total) +
                    ": without ctx (--ignore-context): every leaf gets ctx::background()",
                o.threads, o.connections);
      runs.push_back(demo::run_scenario(o, true, out));
    }
    if (o.which != demo::runs::ignore_context) {
      out.start("Run " + std::to_string(total) + " of " + std::to_string(total) +
                    ": with ctx: the request's context reaches the pool, the database, the HTTP client",
                o.threads, o.connections);
      runs.push_back(demo::run_scenario(o, false, out));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ninety_seconds: %s\n", e.what());
    return 1;
  }
  std::printf("\nDatabase: %s.\n", runs.front().database.c_str());
  demo::print_table(stdout, runs, o);

  std::string error;
  if (demo::write_chart(o.chart, runs, o, error)) {
    std::printf("Chart of threads busy and connections held over time: %s\n", o.chart.c_str());
  } else {
    std::fprintf(stderr, "ninety_seconds: %s\n", error.c_str());
    exit_code = 1;
  }

  ctx::curl::thread_cleanup();
  curl_global_cleanup();
  if (o.check && !demo::check_guarantees(stdout, runs, o)) exit_code = 1;
  return exit_code;
}
