// SPDX-License-Identifier: MIT
// Concurrent stress of <ctx/context.hpp>: many threads derive from, cancel,
// drop, register callbacks on and stop callbacks of one shared tree while
// real timers fire and other threads wait on condition variables; then the
// root is cancelled and the invariants are checked: every context under the
// cancelled root is done, every callback ran at most once (exactly once when
// its registration was kept), and nothing is left behind (no child in the
// root's list, no reference on the root but ours, no pending timer, no live
// callable). Bounded in time (CTX_STRESS_MS, default 2000 ms in all), with
// deterministic seeds per thread and round; prints the operations it ran.
//
// Catch2 v2 assertions are not thread-safe: threads count failures in
// atomics, the main thread CHECKs them.
#include <ctx/ctx.hpp>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <random>
#include <stop_token>
#include <thread>
#include <vector>

#include "support/catch.hpp"

using namespace std::chrono_literals;

namespace {

const std::error_code P = std::make_error_code(std::errc::broken_pipe);
inline constexpr ctx::key<int> stress_key{"stress"};

long env_or(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtol(v, nullptr, 10) : fallback;
}

/// Counts live callables, to show that every one was destroyed.
std::atomic<long> live_callables{0};
struct tracker {
  tracker() noexcept { live_callables.fetch_add(1); }
  tracker(const tracker&) noexcept { live_callables.fetch_add(1); }
  tracker(tracker&&) noexcept { live_callables.fetch_add(1); }
  tracker& operator=(const tracker&) = default;
  tracker& operator=(tracker&&) = default;
  ~tracker() { live_callables.fetch_sub(1); }
};

struct entry {
  ctx::context c;
  bool under_root;  // false below a without_cancel: such contexts need not be done
};

/// The shared tree: contexts and handles any thread may pick.
struct shared_tree {
  std::mutex m;
  std::vector<entry> contexts;
  std::vector<std::shared_ptr<ctx::cancel_handle>> handles;

  entry pick(std::mt19937& rng) {
    std::lock_guard lock(m);
    return contexts[rng() % contexts.size()];
  }
  std::shared_ptr<ctx::cancel_handle> pick_handle(std::mt19937& rng) {
    std::lock_guard lock(m);
    if (handles.empty()) return nullptr;
    return handles[rng() % handles.size()];
  }
  void add(entry e, std::shared_ptr<ctx::cancel_handle> h, std::mt19937& rng) {
    entry dropped_c;
    std::shared_ptr<ctx::cancel_handle> dropped_h;
    std::lock_guard lock(m);
    if (contexts.size() >= 1500) {  // bounded: replace a random one (dropped outside the lock)
      const std::size_t i = 1 + rng() % (contexts.size() - 1);
      dropped_c = std::move(contexts[i]);
      contexts[i] = std::move(e);
    } else {
      contexts.push_back(std::move(e));
    }
    if (h) {
      if (handles.size() >= 1500) {
        const std::size_t i = rng() % handles.size();
        dropped_h = std::move(handles[i]);
        handles[i] = std::move(h);
      } else {
        handles.push_back(std::move(h));
      }
    }
  }
  void drop(std::mt19937& rng) {
    entry dropped_c;
    std::shared_ptr<ctx::cancel_handle> dropped_h;
    std::lock_guard lock(m);
    if (contexts.size() > 1) {
      const std::size_t i = 1 + rng() % (contexts.size() - 1);
      dropped_c = std::move(contexts[i]);
      contexts[i] = std::move(contexts.back());
      contexts.pop_back();
    }
    if (!handles.empty() && rng() % 2) {
      const std::size_t i = rng() % handles.size();
      dropped_h = std::move(handles[i]);  // cancels when the last copy goes, outside the lock
      handles[i] = std::move(handles.back());
      handles.pop_back();
    }
  }
};

enum class reg_fate { kept, stopped, stop_failed, dropped };

struct reg_entry {
  ctx::registration reg;
  std::shared_ptr<std::atomic<int>> runs;
  reg_fate fate = reg_fate::kept;
  bool under_root = true;
};

struct thread_state {
  std::vector<reg_entry> regs;
  std::vector<entry> own;  // contexts this thread keeps to the end
  std::vector<std::stop_token> tokens;
  long ops = 0;
};

}  // namespace

TEST_CASE("stress: threads derive, cancel, drop and register on one tree while timers fire",
          "[stress][real]") {
  const unsigned threads = 6;
  const int rounds = 4;
  const auto round_time = std::chrono::milliseconds(env_or("CTX_STRESS_MS", 2000) / rounds);
  long total_ops = 0;
  long total_callbacks = 0;
  const auto started = std::chrono::steady_clock::now();

  for (int round = 0; round < rounds; ++round) {
    // Failures by kind, counted by the threads, checked by the main thread.
    std::atomic<int> live_after_cancel{0};  // a context under the cancelled root not done
    std::atomic<int> bad_callback{0};       // a callback run count the fate of its registration forbids
    auto root_d = ctx::with_cancel(ctx::background());
    ctx::context root = root_d.context;
    shared_tree tree;
    tree.contexts.push_back({root, true});
    std::vector<thread_state> states(threads);
    std::atomic<bool> root_cancelled{false};
    std::barrier sync(static_cast<std::ptrdiff_t>(threads));
    const auto cancel_at = std::chrono::steady_clock::now() + round_time * 3 / 4;
    const auto stop_at = std::chrono::steady_clock::now() + round_time;
    {
      std::vector<std::jthread> workers;
      for (unsigned t = 0; t < threads; ++t)
        workers.emplace_back([&, t] {
          std::mt19937 rng(static_cast<unsigned>(round) * 1000u + t);
          thread_state& me = states[t];
          sync.arrive_and_wait();
          while (std::chrono::steady_clock::now() < stop_at) {
            if (t == 0 && !root_cancelled && std::chrono::steady_clock::now() >= cancel_at) {
              root_d.cancel(P);  // the others keep going on a done tree
              root_cancelled = true;
            }
            for (int burst = 0; burst < 32; ++burst, ++me.ops) {
              const entry parent = tree.pick(rng);
              switch (rng() % 14) {
                case 0:
                case 1: {
                  auto [c, h] = ctx::with_cancel(parent.c);
                  if (rng() % 4 == 0) me.own.push_back({c, parent.under_root});
                  tree.add({std::move(c), parent.under_root},
                           std::make_shared<ctx::cancel_handle>(std::move(h)), rng);
                  break;
                }
                case 2: {  // a real timer, 0-2 ms
                  auto [c, h] = ctx::with_timeout(parent.c, std::chrono::microseconds(rng() % 2000), P);
                  if (rng() % 4 == 0) me.own.push_back({c, parent.under_root});
                  tree.add({std::move(c), parent.under_root},
                           std::make_shared<ctx::cancel_handle>(std::move(h)), rng);
                  break;
                }
                case 3: {  // linked to another context through its stop token
                  const entry other = tree.pick(rng);
                  auto [c, h] = ctx::with_stop_token(parent.c, other.c.stop_token());
                  tree.add({std::move(c), parent.under_root},
                           std::make_shared<ctx::cancel_handle>(std::move(h)), rng);
                  break;
                }
                case 4:
                  tree.add({ctx::with_value(parent.c, stress_key, static_cast<int>(t)), parent.under_root},
                           nullptr, rng);
                  break;
                case 5:
                  if (rng() % 8 == 0) tree.add({ctx::without_cancel(parent.c), false}, nullptr, rng);
                  break;
                case 6:
                  if (auto h = tree.pick_handle(rng)) (*h)(rng() % 2 ? P : std::error_code{});
                  break;
                case 7:
                  tree.drop(rng);
                  break;
                case 8:
                case 9: {  // a callback that counts; some also cancel a handle from inside
                  auto runs = std::make_shared<std::atomic<int>>(0);
                  std::shared_ptr<ctx::cancel_handle> victim =
                      rng() % 4 == 0 ? tree.pick_handle(rng) : nullptr;
                  reg_entry r{ctx::after_func(parent.c,
                                              [runs, victim, tr = tracker{}] {
                                                runs->fetch_add(1, std::memory_order_relaxed);
                                                if (victim) (*victim)(P);
                                              }),
                              runs, reg_fate::kept, parent.under_root};
                  me.regs.push_back(std::move(r));
                  break;
                }
                case 10: {  // stop one of ours
                  if (me.regs.empty()) break;
                  reg_entry& r = me.regs[rng() % me.regs.size()];
                  if (r.fate != reg_fate::kept) break;
                  r.fate = r.reg.stop() ? reg_fate::stopped : reg_fate::stop_failed;
                  break;
                }
                case 11: {  // drop one of ours
                  if (me.regs.empty()) break;
                  reg_entry& r = me.regs[rng() % me.regs.size()];
                  if (r.fate == reg_fate::kept) r.fate = reg_fate::dropped;
                  r.reg = ctx::registration{};
                  break;
                }
                case 12: {  // wait on a condition variable until stop or 200 us
                  const entry e = tree.pick(rng);
                  std::mutex m;
                  std::condition_variable_any cv;
                  std::unique_lock lock(m);
                  const bool was_cancelled = root_cancelled;
                  const std::stop_token tok = e.c.stop_token();
                  cv.wait_for(lock, tok, 200us, [] { return false; });
                  // (Its stop request may lag done() when a timer thread won the race.)
                  if (e.under_root && was_cancelled && !e.c.done()) live_after_cancel.fetch_add(1);
                  break;
                }
                case 13:
                  if (me.tokens.size() < 64) me.tokens.push_back(parent.c.stop_token());
                  (void)parent.c.value(stress_key);
                  (void)parent.c.remaining();
                  break;
              }
            }
          }
          if (t == 0 && !root_cancelled) {  // a slow machine (valgrind) may reach the end first
            root_d.cancel(P);
            root_cancelled = true;
          }
        });
    }
    CHECK(root.done());
    // Everything under the cancelled root is done, its stop tokens stopped.
    for (const entry& e : tree.contexts)
      if (e.under_root && !e.c.done()) live_after_cancel.fetch_add(1);
    for (const thread_state& s : states) {
      for (const entry& e : s.own)
        if (e.under_root && !e.c.done()) live_after_cancel.fetch_add(1);
    }
    // Callbacks: a cancel that lost a race to the timer thread returns before
    // the winner ran the callbacks, so wait (boundedly) for the kept ones.
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    for (thread_state& s : states)
      for (reg_entry& r : s.regs) {
        if (r.fate == reg_fate::kept || r.fate == reg_fate::stop_failed)
          if (r.under_root || r.fate == reg_fate::stop_failed)
            while (r.runs->load() == 0 && std::chrono::steady_clock::now() < give_up)
              std::this_thread::yield();
      }
    for (thread_state& s : states) {
      for (reg_entry& r : s.regs) r.reg = ctx::registration{};  // waits for any callback still running
      for (const reg_entry& r : s.regs) {
        const int n = r.runs->load();
        total_callbacks += n;
        const bool ok = n <= 1 && (r.fate != reg_fate::stopped || n == 0) &&
                        (r.fate != reg_fate::stop_failed || n == 1) &&
                        (r.fate != reg_fate::kept || !r.under_root || n == 1);
        if (!ok) {
          bad_callback.fetch_add(1);
          std::printf("stress: callback ran %d times; fate %d, under root %d\n", n, static_cast<int>(r.fate),
                      static_cast<int>(r.under_root));
        }
      }
      total_ops += s.ops;
    }
    // Nothing left behind: once every context and handle is gone, the root
    // has no child and no reference but ours (the timer thread may still be
    // releasing one for a moment), and no timer is pending.
    states.clear();
    tree.contexts.clear();
    tree.handles.clear();
    const auto* rn = static_cast<const ctx::detail::cancel_node*>(ctx::detail::access::of(root));
    const auto settle_by = std::chrono::steady_clock::now() + 10s;
    while (rn->refs.load() != 3 && std::chrono::steady_clock::now() < settle_by) std::this_thread::yield();
    CHECK(rn->refs.load() == 3);  // `root`, `root_d.context` and the handle
    CHECK(rn->first_child == nullptr);
    CHECK(ctx::detail::timer_service<std::chrono::steady_clock>::instance().pending() == 0);
    CHECK(live_callables.load() == 0);
    CHECK(live_after_cancel.load() == 0);
    CHECK(bad_callback.load() == 0);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::printf("stress: %u threads x %d rounds: %ld operations, %ld callbacks run, in %.2f s (%.0f ops/s)\n",
              threads, rounds, total_ops, total_callbacks, secs, static_cast<double>(total_ops) / secs);
  CHECK(total_ops > 0);
}
