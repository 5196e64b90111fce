// SPDX-License-Identifier: MIT
#include "scenario.hpp"

#include <ctx/condition_variable.hpp>
#include <ctx/sleep.hpp>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>

#include "downstream.hpp"
#include "report.hpp"
#include "store.hpp"

namespace demo {
namespace {

using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

constexpr int users = 1000;
constexpr int audit_connections = 2;

double seconds(clock::duration d) { return std::chrono::duration<double>(d).count(); }

/// Reads the service's state every `every`, on a thread of its own, from the
/// load's start until stop(): the numbers of the table and the chart.
class sampler {
 public:
  sampler(const service& svc, const load_driver& load, clock::duration every, progress& out)
      : svc_(svc),
        load_(load),
        every_(every),
        load_stop_(seconds(load.stops() - load.started())),
        out_(out),
        life_(ctx::with_cancel(ctx::background())),
        thread_([this] { run(); }) {}
  sampler(const sampler&) = delete;
  sampler& operator=(const sampler&) = delete;
  ~sampler() { (void)stop(); }

  /// Waits until a sample taken after the load stopped finds the service
  /// idle, or until `c` is done. Returns when it was idle (seconds since the
  /// load started), or nothing.
  std::optional<double> wait_idle(const ctx::context& c) {
    std::unique_lock lock(m_);
    if (!ctx::wait(c, cv_, lock, [&] { return idle_at_.has_value(); })) return std::nullopt;
    return idle_at_;
  }

  /// The latest sample.
  sample latest() const {
    const std::lock_guard lock(m_);
    return samples_.empty() ? sample{} : samples_.back();
  }

  /// Stops sampling; returns every sample.
  std::vector<sample> stop() {
    life_.cancel();
    if (thread_.joinable()) thread_.join();
    const std::lock_guard lock(m_);
    return samples_;
  }

 private:
  /// No thread busy, nothing queued, no connection out, no downstream call,
  /// no caller still waiting for an answer.
  static bool idle(const sample& s) {
    const service_gauges& g = s.g;
    return g.threads_busy == 0 && g.queued == 0 && g.db_checked_out == 0 && g.downstream == 0 &&
           s.sent == s.ok + s.errors + s.gave_up;
  }

  sample read(clock::time_point now) const {
    sample s;
    s.t = seconds(now - load_.started());
    // The answers before `sent`: a request answered in between is counted
    // as still out, never the other way round.
    s.ok = load_.answered_ok();
    s.errors = load_.answered_error();
    s.gave_up = load_.gave_up();
    s.sent = load_.sent();
    s.g = svc_.gauges();
    return s;
  }

  void run() {
    bool announced_stop = false;
    for (long k = 0;; ++k) {
      if (ctx::sleep_until(life_.context, load_.started() + every_ * k)) return;
      const sample s = read(clock::now());
      const bool after_stop = s.t >= load_stop_;
      {
        const std::lock_guard lock(m_);
        samples_.push_back(s);
        if (after_stop && !idle_at_ && idle(s)) {
          idle_at_ = s.t;
          cv_.notify_all();
        }
      }
      if (after_stop && !announced_stop) {
        announced_stop = true;
        out_.event("the load stopped at " + format_duration(load_.stops() - load_.started()) + ": " +
                   std::to_string(s.sent - s.ok - s.errors - s.gave_up) + " callers still waiting");
      }
      out_.update(s);
    }
  }

  const service& svc_;
  const load_driver& load_;
  const clock::duration every_;
  const double load_stop_;
  progress& out_;
  mutable std::mutex m_;
  std::condition_variable_any cv_;
  std::vector<sample> samples_;
  std::optional<double> idle_at_;
  ctx::derived<clock> life_;
  std::thread thread_;
};

std::string describe_state(const sample& s, const run_result& r) {
  return std::to_string(s.g.threads_busy) + "/" + std::to_string(r.threads) + " threads and " +
         std::to_string(s.g.db_checked_out) + "/" + std::to_string(r.connections) + " connections held, " +
         std::to_string(s.g.downstream) + " downstream calls hanging, " + std::to_string(s.g.queued) +
         " queued";
}

}  // namespace

run_result run_scenario(const options& o, bool ignore_context, progress& out) {
  run_result r;
  r.ignore_context = ignore_context;
  r.threads = o.threads;
  r.connections = o.connections;
  r.load_stop = seconds(o.duration);

  const std::unique_ptr<database> db =
      o.postgres ? make_postgres_database(*o.postgres, users) : make_sqlite_database(users);
  r.database = db->describe();
  connection_pool pool(*db, o.connections);
  connection_pool audit_pool(*db, audit_connections);
  downstream down(o.stall, o.stall_share);
  service_options so;
  so.deadline = o.deadline;
  so.threads = o.threads;
  so.ignore_context = ignore_context;
  so.downstream_url = down.url();
  service svc(so, pool, audit_pool);
  out.event("service at http://127.0.0.1:" + std::to_string(svc.port()) + "/quote (" + r.database +
            "), its contexts at http://127.0.0.1:" + std::to_string(svc.admin_port()) +
            "/debug/contexts; downstream at " + down.url());

  load_options lo;
  lo.url = "http://127.0.0.1:" + std::to_string(svc.port()) + "/quote";
  lo.callers = o.concurrency;
  lo.rate = o.rate;
  lo.duration = o.duration;
  lo.caller_timeout = o.caller_timeout;
  lo.users = users;
  load_driver load(lo);
  sampler samples(svc, load, o.sample_every, out);

  // Wait for the service to be idle after the load stops, but not forever.
  auto [cutoff, cancel_cutoff] = ctx::with_deadline(ctx::background(), load.stops() + o.cutoff);
  if (const std::optional<double> idle = samples.wait_idle(cutoff)) {
    r.idle_after = *idle - r.load_stop;
    out.event("idle " + format_seconds(*r.idle_after) + " after the load stopped");
  } else {
    r.at_cutoff = samples.latest();
    out.event("cut-off, " + format_duration(o.cutoff) +
              " after the load stopped: " + describe_state(*r.at_cutoff, r));
    // The request contexts that are long done but still held by a thread.
    if (const std::string report = live_context_report(); !report.empty()) out.event(report);
    out.event("releasing the downstream's stalls, so that the run can end");
    down.release_stalls();
    auto [again, cancel_again] = ctx::with_timeout(ctx::background(), 60s);
    const std::optional<double> idle_again = samples.wait_idle(again);
    if (!idle_again) {
      std::fprintf(stderr, "ninety_seconds: the service is still busy 60 s after the stalls were released\n");
      std::_Exit(3);  // a bug of the demo: its threads cannot be joined
    }
    r.idle_after_release = *idle_again - r.load_stop;
    out.event("idle " + format_seconds(*r.idle_after_release) +
              " after the load stopped, once the stalls were released");
  }

  load.join();
  svc.wait_for_audits();
  (void)ctx::sleep_for(ctx::background(), o.sample_every * 5);  // a few idle samples for the chart
  r.samples = samples.stop();
  out.done();
  svc.stop();

  r.calls = load.calls();
  r.counts = svc.counts();
  r.holds = pool.holds();
  r.downstream_calls = down.calls();
  r.downstream_stalled = down.stalled();
  r.downstream_abandoned = down.abandoned();
  return r;
}

}  // namespace demo
