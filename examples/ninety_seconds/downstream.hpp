// SPDX-License-Identifier: MIT
// The downstream: an HTTP service on 127.0.0.1 that answers GET /quote at
// once, except a share of calls, on which it hangs for far longer than any
// caller's deadline (the story's 90 seconds, scaled down).
//
// A thread per connection, written with <ctx/io.hpp>: a stalled call waits
// for its stall to end *or for its caller to hang up* (the socket becomes
// readable at end of file), so when the service gives up on a call, the
// downstream's thread is freed too. release_stalls() ends every stall at
// once and stops stalling: the demo's cut-off for the run without ctx.
//
// Thread safety: every member may be called from any thread.
#pragma once

#include <ctx/ctx.hpp>

#include <atomic>
#include <chrono>
#include <list>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace demo {

class downstream {
 public:
  /// Listens on 127.0.0.1 (an OS-chosen port) and serves until destroyed.
  /// Every call whose number n (from 0) makes floor((n + 1) * share) step up
  /// stalls for `stall`: exactly `share` of the calls, evenly spread.
  /// Throws std::system_error if it cannot listen.
  downstream(std::chrono::milliseconds stall, double share);
  downstream(const downstream&) = delete;
  downstream& operator=(const downstream&) = delete;
  /// Ends every stall, stops accepting, joins every thread.
  ~downstream();

  /// "http://127.0.0.1:PORT/quote"
  [[nodiscard]] std::string url() const;

  /// Answers every stalled call now, and stalls no more.
  void release_stalls() noexcept { release_.cancel(); }

  [[nodiscard]] long calls() const noexcept { return calls_.load(std::memory_order_relaxed); }
  [[nodiscard]] long stalled() const noexcept { return stalled_.load(std::memory_order_relaxed); }
  /// Stalled calls whose caller hung up before the stall ended.
  [[nodiscard]] long abandoned() const noexcept { return abandoned_.load(std::memory_order_relaxed); }
  /// Calls stalled now.
  [[nodiscard]] int stalling() const noexcept { return stalling_.load(std::memory_order_relaxed); }

 private:
  void accept_loop();
  void serve(int fd);
  [[nodiscard]] bool should_stall(long n) const noexcept;

  /// The connection threads: each removes itself from `running_` when done,
  /// and the accept loop joins the finished ones.
  class threads {
   public:
    template <class F>
    void start(F f);
    void join_all();

   private:
    void reap_locked();
    std::mutex m_;
    std::list<std::thread> running_;
    std::vector<std::list<std::thread>::iterator> finished_;
  };

  const std::chrono::milliseconds stall_;
  const double share_;
  ctx::derived<std::chrono::steady_clock> life_;     // cancelled by the destructor
  ctx::derived<std::chrono::steady_clock> release_;  // a child of life_: ends the stalls
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<long> calls_{0}, stalled_{0}, abandoned_{0};
  std::atomic<int> stalling_{0};
  threads connections_;
  std::thread acceptor_;
};

}  // namespace demo
