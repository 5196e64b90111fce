// SPDX-License-Identifier: MIT
// The demo's settings: the command-line flags and their defaults (docs/demo.md).
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace demo {

using clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

/// Which runs to make: the service without ctx (every leaf gets
/// ctx::background()), with ctx (the request's context reaches every leaf),
/// or both, in that order.
enum class runs { both, ignore_context, with_context };

struct options {
  runs which = runs::both;

  // The service.
  milliseconds deadline{2000};  ///< each request's deadline, counted from when its connection was accepted
  int threads = 32;             ///< handler threads
  int connections = 10;         ///< database connections in the handlers' pool
  std::optional<std::string> postgres;  ///< libpq conninfo: PostgreSQL instead of SQLite

  // The downstream.
  milliseconds stall{30000};   ///< how long a stalled call hangs: the story's 90 s, scaled down
  double stall_share = 0.015;  ///< the share of downstream calls that stall

  // The load.
  int concurrency = 200;              ///< callers, each with one request at a time
  double rate = 200;                  ///< requests per second, all callers together, while healthy
  milliseconds duration{8000};        ///< how long the callers send
  milliseconds caller_timeout{3000};  ///< a caller gives up after this (default: deadline + 1 s)
  milliseconds cutoff{5000};          ///< after the load stops, the demo waits at most this long
                                      ///< for the service to be idle, then releases the stalls
                                      ///< (default: deadline + 3 s)

  // Output.
  std::string chart = "ninety_seconds.svg";
  milliseconds sample_every{20};  ///< the sampler's interval

  // --check: the test's assertions (see check.cpp).
  bool check = false;
  milliseconds margin{1000};  ///< slack over the deadline that --check allows
};

/// Parses the command line. Returns nullopt after printing the usage (for
/// --help, or with an error message for a bad flag); `exit_code` says which.
[[nodiscard]] std::optional<options> parse_options(int argc, char** argv, int& exit_code);

/// "2 s", "500 ms", "1.5 s": how the demo prints a duration.
[[nodiscard]] std::string format_duration(clock::duration d);
/// The same for a number of seconds.
[[nodiscard]] std::string format_seconds(double s);

}  // namespace demo
