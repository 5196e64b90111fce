// SPDX-License-Identifier: MIT
// The load driver: callers that each send GET /quote, wait for the answer
// (or give up after their own timeout, as a browser or an upstream service
// does), and send the next one at their pace, for a fixed time.
//
// Each caller is a thread with one request at a time, through ctx::curl.
// The pacing sleeps under the load's context, whose deadline is the end of
// the load: after it no caller sends again, and the requests still out are
// waited for until they are answered or their caller gives up.
//
// Thread safety: the counters may be read from any thread while it runs.
#pragma once

#include <ctx/ctx.hpp>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace demo {

struct load_options {
  std::string url;  ///< the service's "http://127.0.0.1:PORT/quote"
  int callers = 200;
  double rate = 200;  ///< requests per second, all callers together, while answers come at once
  std::chrono::milliseconds duration{8000};
  std::chrono::milliseconds caller_timeout{3000};
  int users = 1000;  ///< ids asked for: 1..users
};

/// One request as its caller saw it.
struct call {
  std::chrono::steady_clock::duration sent_at;  ///< since the load started
  std::chrono::steady_clock::duration took;     ///< until the answer, or until the caller gave up
  int status = 0;                               ///< the HTTP status; 0 if the caller gave up or failed
  bool gave_up = false;                         ///< no answer within the caller's timeout
};

class load_driver {
 public:
  /// Starts the callers at once; the load runs for `o.duration` from now.
  explicit load_driver(const load_options& o);
  load_driver(const load_driver&) = delete;
  load_driver& operator=(const load_driver&) = delete;
  /// join()s.
  ~load_driver();

  [[nodiscard]] std::chrono::steady_clock::time_point started() const noexcept { return start_; }
  /// When the callers stop sending: started() + duration.
  [[nodiscard]] std::chrono::steady_clock::time_point stops() const noexcept { return start_ + o_.duration; }

  /// Waits for every caller: until duration is over and every request out is answered or given up.
  void join();
  /// Every request, once join() returned.
  [[nodiscard]] std::vector<call> calls() const;

  [[nodiscard]] long sent() const noexcept { return sent_.load(std::memory_order_relaxed); }
  [[nodiscard]] long answered_ok() const noexcept { return ok_.load(std::memory_order_relaxed); }
  [[nodiscard]] long answered_error() const noexcept { return errors_.load(std::memory_order_relaxed); }
  [[nodiscard]] long gave_up() const noexcept { return gave_up_.load(std::memory_order_relaxed); }

 private:
  void caller(int i, std::vector<call>& mine);

  const load_options o_;
  const std::chrono::steady_clock::time_point start_;
  ctx::derived<std::chrono::steady_clock> load_;  // its deadline: the end of the load
  std::atomic<long> sent_{0}, ok_{0}, errors_{0}, gave_up_{0};
  std::vector<std::vector<call>> calls_;  // one list per caller, written by that caller only
  std::vector<std::thread> callers_;
};

}  // namespace demo
