// SPDX-License-Identifier: MIT
// What the demo prints and draws: the live progress line, the table of both
// runs side by side, and the SVG chart of threads and connections over time.
#pragma once

#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "options.hpp"
#include "scenario.hpp"

namespace demo {

/// The live progress of a run: on a terminal one line that rewrites itself
/// (every sample), elsewhere a plain line per second. Events (the load
/// stopped, the cut-off) are lines of their own. Thread-safe.
class progress {
 public:
  explicit progress(std::FILE* out);
  /// A heading for the next run, whose service has these many handler
  /// threads and database connections (shown in the progress line).
  void start(const std::string& title, int threads, int connections);
  /// The latest sample (from the sampler's thread).
  void update(const sample& s);
  void event(const std::string& line);
  /// Ends the live line.
  void done();

 private:
  void clear_locked();
  std::FILE* out_;
  const bool tty_;
  std::mutex m_;
  bool live_ = false;       // a live line is on the terminal
  double printed_at_ = -1;  // when the last plain line was printed
  int threads_ = 0, connections_ = 0;
};

/// Prints the runs side by side.
void print_table(std::FILE* out, const std::vector<run_result>& runs, const options& o);

/// Writes the chart of the runs to `path` as SVG. Returns false (and why)
/// if the file cannot be written.
[[nodiscard]] bool write_chart(const std::string& path, const std::vector<run_result>& runs, const options& o,
                               std::string& error);

}  // namespace demo
