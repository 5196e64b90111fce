// SPDX-License-Identifier: MIT
// The service: an HTTP server (cpp-httplib) with one endpoint, GET /quote?user=N.
//
// Per request it derives a context with a deadline and the caller's trace
// ID, checks a connection out of the pool, looks the user up, asks the
// downstream for a quote (ctx::curl), records the visit, gives the
// connection back, answers, and starts the audit write as detached work
// (ctx::detach). With `ignore_context`, every one of those leaves gets
// ctx::background() instead of the request's context: the service as it was
// before ctx. Nothing else differs between the two runs.
//
// Requests are served by a fixed pool of handler threads (a cpp-httplib
// TaskQueue of our own, which also counts them). A request's deadline counts
// from when its connection was accepted, not from when a thread got to it.
// GET /debug/contexts is served on a port and a thread of its own
// (admin_port()), so that it answers while every handler thread is stuck.
//
// Thread safety: the gauges and counters may be read from any thread while
// the service runs.
#pragma once

#include <ctx/ctx.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "pool.hpp"

namespace httplib {
class Server;
}

namespace demo {

/// The request's trace ID: read from the caller's X-Trace-Id header (or
/// made up), passed to the downstream, and written to the audit log.
inline constexpr ctx::key<std::string> trace_id{"trace_id"};

struct service_options {
  std::chrono::milliseconds deadline{2000};
  int threads = 32;
  bool ignore_context = false;
  std::string downstream_url;                     ///< "http://127.0.0.1:PORT/quote"
  std::chrono::milliseconds audit_timeout{1000};  ///< the detached audit write's own bound
};

/// What the service is doing now: read by the sampler.
struct service_gauges {
  int threads_busy = 0;    ///< handler threads serving a connection
  int queued = 0;          ///< accepted connections waiting for a handler thread
  int db_checked_out = 0;  ///< connections of the request pool checked out
  int downstream = 0;      ///< downstream calls in flight
  int audits = 0;          ///< detached audit writes running
};

/// What the service did, counted as it answered.
struct service_counts {
  long ok = 0;        ///< 200
  long deadline = 0;  ///< 504: the request's context ended it (in the pool, the database, the downstream)
  long failed = 0;    ///< 500 or 502: the database or the downstream failed
  long audits_written = 0;
  long audits_failed = 0;
};

class handler_pool;

class service {
 public:
  /// Starts serving on 127.0.0.1 (an OS-chosen port). `pool` serves the
  /// requests, `audit_pool` the detached audit writes. Throws std::runtime_error.
  service(const service_options& o, connection_pool& pool, connection_pool& audit_pool);
  service(const service&) = delete;
  service& operator=(const service&) = delete;
  /// stop()s, and waits for the audit writes.
  ~service();

  [[nodiscard]] int port() const noexcept { return port_; }
  /// The port of the debug endpoints (GET /debug/contexts).
  [[nodiscard]] int admin_port() const noexcept { return admin_port_; }
  [[nodiscard]] service_gauges gauges() const noexcept;
  [[nodiscard]] service_counts counts() const noexcept;

  /// Waits until every detached audit write has finished (each is bounded by
  /// audit_timeout, unless the context is ignored).
  void wait_for_audits();

  /// Stops accepting, lets the handler threads finish what was accepted,
  /// joins them. Call it when the service is idle: connections still queued
  /// are closed unanswered.
  void stop();

 private:
  class audit_token;
  void wait_ready();
  void start_admin();
  void handle_quote(const std::string& trace, int user, int& status, std::string& body);
  [[nodiscard]] std::error_code quote_for(const ctx::context& c, ctx::context::time_point deadline,
                                          const std::string& trace, int user, std::string& body);
  [[nodiscard]] std::error_code call_downstream(const ctx::context& c, const std::string& trace, int user,
                                                std::string& body);
  void start_audit(const ctx::context& request, int user, int status);

  const service_options o_;
  connection_pool& pool_;
  connection_pool& audit_pool_;
  std::unique_ptr<handler_pool> handlers_;
  std::unique_ptr<httplib::Server> http_;
  std::latch listening_{1};
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread listener_;
  std::unique_ptr<httplib::Server> admin_;
  std::latch admin_listening_{1};
  int admin_port_ = 0;
  std::thread admin_listener_;

  std::atomic<int> downstream_{0};
  std::atomic<long> ok_{0}, deadline_{0}, failed_{0}, audits_written_{0}, audits_failed_{0};

  std::mutex audits_m_;
  std::condition_variable audits_cv_;
  std::atomic<int> audits_running_{0};  // changed under audits_m_
};

/// The live-context report (ctx::inspect's zombie report): the contexts done
/// for at least a second that a thread still holds, grouped by the line that
/// made them. Served at GET /debug/contexts on the admin port (JSON with
/// ?format=json), and printed by the run without ctx at its cut-off. The
/// service turns inspection on when it starts.
[[nodiscard]] std::string live_context_report(bool json = false);

}  // namespace demo
