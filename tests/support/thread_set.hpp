// SPDX-License-Identifier: MIT
// A set of threads, one per request, joined at the end; threads that have
// finished are joined as new ones start, so a long run does not keep every
// finished thread's stack until the end.
#pragma once

#include <atomic>
#include <list>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

namespace test {

class thread_set {
 public:
  thread_set() = default;
  thread_set(const thread_set&) = delete;
  thread_set& operator=(const thread_set&) = delete;
  ~thread_set() { join(); }

  /// Runs f() on a new thread.
  template <class F>
  void spawn(F&& f) {
    std::lock_guard lock(mu_);
    for (auto it = threads_.begin(); it != threads_.end();) {
      if (it->done->load(std::memory_order_acquire)) {
        it->t.join();
        it = threads_.erase(it);
      } else {
        ++it;
      }
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    threads_.push_back({std::thread([f = std::forward<F>(f), done]() mutable {
                          f();
                          done->store(true, std::memory_order_release);
                        }),
                        done});
  }

  /// Joins every thread started so far.
  void join() {
    std::list<entry> all;
    {
      std::lock_guard lock(mu_);
      all.swap(threads_);
    }
    for (auto& e : all) e.t.join();
  }

 private:
  struct entry {
    std::thread t;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex mu_;
  std::list<entry> threads_;
};

}  // namespace test
