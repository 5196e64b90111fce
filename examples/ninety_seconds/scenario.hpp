// SPDX-License-Identifier: MIT
// One run of the demo: a database, the downstream, the service and the
// load, a sampler that reads the service's state at a fixed interval, and
// the cut-off that ends a run that would not end on its own.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "load.hpp"
#include "options.hpp"
#include "pool.hpp"
#include "service.hpp"

namespace demo {

class progress;

/// The service's state at one instant.
struct sample {
  double t = 0;  ///< seconds since the load started
  service_gauges g;
  long sent = 0, ok = 0, errors = 0, gave_up = 0;  ///< the callers' counts so far
};

/// Everything one run measured.
struct run_result {
  bool ignore_context = false;
  std::string database;
  int threads = 0, connections = 0;
  double load_stop = 0;  ///< seconds since the load started (the load's duration)

  std::vector<call> calls;  ///< as the callers saw them
  service_counts counts;
  hold_stats holds;  ///< the request pool's checkouts
  long downstream_calls = 0, downstream_stalled = 0, downstream_abandoned = 0;
  std::vector<sample> samples;  ///< every sample_every, from the load's start to the end of the run

  /// Seconds after the load stopped when the service was first seen idle
  /// (no thread busy, nothing queued, no connection out, no downstream call,
  /// no caller waiting), before the cut-off; empty if it was cut off.
  std::optional<double> idle_after;
  /// The run was cut off: the state then, and when the service was idle
  /// after the stalls were released.
  std::optional<sample> at_cutoff;
  std::optional<double> idle_after_release;
};

/// Makes one run. `ignore_context` selects the service without ctx. Prints
/// progress on `out`. Throws std::runtime_error when the database cannot be
/// set up.
[[nodiscard]] run_result run_scenario(const options& o, bool ignore_context, progress& out);

}  // namespace demo
