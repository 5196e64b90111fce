// SPDX-License-Identifier: MIT
#include "check.hpp"

#include <algorithm>
#include <string>

namespace demo {
namespace {

double ms(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

/// Milliseconds after the load stopped until `busy` was last seen true, plus
/// one sampling interval (it was back by the next sample); 0 if never.
template <class F>
double back_after(const run_result& r, const options& o, F busy) {
  double last = -1;
  for (const sample& s : r.samples)
    if (s.t >= r.load_stop && busy(s.g)) last = s.t;
  return last < 0 ? 0 : (last - r.load_stop) * 1000 + ms(o.sample_every);
}

}  // namespace

bool check_guarantees(std::FILE* out, const std::vector<run_result>& runs, const options& o) {
  bool all = true;
  const auto expect = [&](bool ok, const std::string& what) {
    std::fprintf(out, "%s %s\n", ok ? "ok:    " : "FAILED:", what.c_str());
    all = all && ok;
  };
  const double limit = ms(o.deadline + o.margin);
  std::fprintf(out, "\n--check (deadline %s, margin %s):\n", format_duration(o.deadline).c_str(),
               format_duration(o.margin).c_str());
  for (const run_result& r : runs) {
    const long served =
        std::count_if(r.calls.begin(), r.calls.end(), [](const call& c) { return c.status == 200; });
    if (r.ignore_context) {
      expect(r.at_cutoff && (r.at_cutoff->g.threads_busy > 0 || r.at_cutoff->g.db_checked_out > 0),
             "without ctx, threads or connections were still held at the cut-off (the pile-up shows): " +
                 (r.at_cutoff ? std::to_string(r.at_cutoff->g.threads_busy) + " threads, " +
                                    std::to_string(r.at_cutoff->g.db_checked_out) + " connections"
                              : std::string("no cut-off")));
      continue;
    }
    expect(served > 0, "with ctx, requests were served: " + std::to_string(served));
    expect(r.downstream_stalled > 0,
           "with ctx, the downstream stalled calls: " + std::to_string(r.downstream_stalled));
    expect(!r.at_cutoff, "with ctx, the run ended without the cut-off");
    const double threads =
        back_after(r, o, [](const service_gauges& g) { return g.threads_busy > 0 || g.queued > 0; });
    expect(threads <= limit, "with ctx, every handler thread was back " +
                                 std::to_string(static_cast<long>(threads)) +
                                 " ms after the load stopped (limit: deadline + margin = " +
                                 std::to_string(static_cast<long>(limit)) + " ms)");
    const double connections = back_after(r, o, [](const service_gauges& g) { return g.db_checked_out > 0; });
    expect(connections <= limit,
           "with ctx, every database connection was back " + std::to_string(static_cast<long>(connections)) +
               " ms after the load stopped (limit " + std::to_string(static_cast<long>(limit)) + " ms)");
    expect(r.holds.checkouts > 0 && r.holds.worst_overshoot <= o.margin,
           "with ctx, no request held a connection past its deadline by more than the margin: " +
               std::to_string(r.holds.checkouts) + " checkouts, " + std::to_string(r.holds.past_deadline) +
               " given back after the deadline, by at most " +
               std::to_string(static_cast<long>(ms(r.holds.worst_overshoot))) + " ms");
  }
  return all;
}

}  // namespace demo
