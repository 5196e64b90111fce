// SPDX-License-Identifier: MIT
// Multi-threaded behaviour of <ctx/context.hpp>. Every test here is meant to
// be run under ThreadSanitizer (the tsan preset, in CI); threads meet through
// std::latch / std::barrier, never sleeps.
#include <ctx/ctx.hpp>
#include <ctx/testing.hpp>

#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <latch>
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

unsigned thread_count() { return 8; }

template <class F>
void run_threads(unsigned n, F&& f) {
  std::vector<std::jthread> threads;
  threads.reserve(n);
  for (unsigned i = 0; i < n; ++i) threads.emplace_back([&f, i] { f(i); });
}

/// Runs `on_thread` on a new thread and `here` on this one, released at the
/// same moment; returns when both have returned.
template <class A, class B>
void at_once(A&& on_thread, B&& here) {
  std::latch start(2);
  std::jthread t([&] {
    start.arrive_and_wait();
    on_thread();
  });
  start.arrive_and_wait();
  here();
}

/// Rounds for a race whose window is a few instructions wide: many in plain
/// builds, where such a race is caught by timing alone; fewer under a
/// sanitizer (which runs 5 to 20 times slower and catches data races by
/// itself) or valgrind (the leak check sets CTX_STRESS_MS).
int race_rounds(int plain) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return plain / 10;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  return plain / 10;
#endif
#endif
  if (std::getenv("CTX_STRESS_MS")) return plain / 20;
  return plain;
}

/// Busy-waits for about `n` short steps (a few nanoseconds each).
void spin_for(int n) {
  std::atomic<int> sink{0};
  for (int i = 0; i < n; ++i) sink.fetch_add(1, std::memory_order_relaxed);
}

/// Spins until `pred()`, yielding only after a while (one core: let the other thread run).
template <class P>
void spin_until(P&& pred) {
  for (int spin = 0; !pred(); ++spin)
    if (spin > 10'000) std::this_thread::yield();
}

/// Runs `rounds` rounds of a race between `on_thread(r)`, on one thread that
/// lives through every round, and `here(r)`, on this one. Between rounds both
/// threads spin, without sleeping or a system call, so that the two calls
/// start within nanoseconds of each other, and each round delays one side by
/// a few more steps than the last, so that the start of one call is swept
/// across the other: a window of a few instructions is hit many times, where
/// threads that meet through a latch (a futex wake-up, microseconds) would
/// hardly ever hit it. `prepare(r)` runs before the round, `check(r)` after
/// both calls returned, both on this thread.
template <class Prepare, class A, class B, class Check>
void lockstep(int rounds, Prepare&& prepare, A&& on_thread, B&& here, Check&& check) {
  std::atomic<int> go{0};
  std::atomic<int> finished{0};
  std::thread t([&] {
    for (int r = 1; r <= rounds; ++r) {
      spin_until([&] { return go.load() >= r; });
      if (r % 128 >= 64) spin_for(r % 64);
      on_thread(r);
      finished.store(r);
    }
  });
  for (int r = 1; r <= rounds; ++r) {
    prepare(r);
    go.store(r);
    if (r % 128 < 64) spin_for(r % 64);
    here(r);
    spin_until([&] { return finished.load() >= r; });
    check(r);
  }
  t.join();
}

/// A tree of `width`^`depth` contexts below `root`, with a handle for each.
struct tree {
  std::vector<ctx::context> contexts;
  std::vector<ctx::cancel_handle> handles;

  tree(const ctx::context& root, int width, int depth) {
    std::vector<ctx::context> level{root};
    for (int d = 0; d < depth; ++d) {
      std::vector<ctx::context> next;
      for (const auto& parent : level)
        for (int w = 0; w < width; ++w) {
          auto [c, h] = ctx::with_cancel(parent);
          next.push_back(c);
          contexts.push_back(std::move(c));
          handles.push_back(std::move(h));
        }
      level = std::move(next);
    }
  }
};

}  // namespace

TEST_CASE("concurrent cancels of a tree: every loser also returns with the subtree done", "[race]") {
  for (int round = 0; round < 20; ++round) {
    auto root_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
    auto& root = root_cancel.context;
    auto& cancel = root_cancel.cancel;
    tree t(root, 4, 4);  // 340 contexts
    std::atomic<int> callbacks{0};
    std::vector<ctx::registration> regs;
    for (const auto& c : t.contexts) regs.push_back(ctx::after_func(c, [&] { callbacks.fetch_add(1); }));

    std::barrier sync(static_cast<std::ptrdiff_t>(thread_count()));
    std::atomic<int> failures{0};
    run_threads(thread_count(), [&](unsigned i) {
      sync.arrive_and_wait();
      // Half cancel the root, half cancel inner nodes; all check the subtree.
      const std::size_t idx = i % 2 ? 0 : i;
      if (i % 2)
        cancel(P);
      else
        t.handles[idx]();
      if (i % 2)
        for (const auto& c : t.contexts)
          if (!c.done()) failures.fetch_add(1);
    });
    CHECK(failures == 0);
    CHECK(callbacks == static_cast<int>(t.contexts.size()));  // each exactly once
    for (const auto& c : t.contexts) CHECK(c.err() == ctx::errc::canceled);
  }
}

TEST_CASE("cancel versus derive: every child is done once both have returned", "[race]") {
  for (int round = 0; round < 50; ++round) {
    auto root_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
    auto& root = root_cancel.context;
    auto& cancel = root_cancel.cancel;
    std::latch start(3);
    std::vector<ctx::context> made_a, made_b;
    std::vector<ctx::cancel_handle> handles_a, handles_b;
    auto deriver = [&](std::vector<ctx::context>& out, std::vector<ctx::cancel_handle>& hs) {
      start.arrive_and_wait();
      for (int i = 0; i < 200; ++i) {
        auto [c, h] = ctx::with_cancel(root);
        out.push_back(std::move(c));
        hs.push_back(std::move(h));
      }
    };
    {
      std::jthread a([&] { deriver(made_a, handles_a); });
      std::jthread b([&] { deriver(made_b, handles_b); });
      start.arrive_and_wait();
      cancel(P);
    }
    for (const auto* v : {&made_a, &made_b})
      for (const auto& c : *v) {
        CHECK(c.done());
        CHECK(c.cause() == P);
      }
  }
}

// A plain leaf with nothing attached is cancelled by one compare-and-swap,
// without its mutex (st_busy in detail/node.hpp). Everything that attaches to
// a node must either see it done or make that fast path fail.

TEST_CASE("fast path: a leaf cancelled by its handle and by its parent at once", "[race][fast_path]") {
  for (int round = 0; round < 100; ++round) {
    auto root_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
    auto& root = root_cancel.context;
    auto& cancel = root_cancel.cancel;
    std::vector<ctx::context> kids;
    std::vector<ctx::cancel_handle> handles;
    for (int i = 0; i < 64; ++i) {
      auto [c, h] = ctx::with_cancel(root);
      kids.push_back(std::move(c));
      handles.push_back(std::move(h));
    }
    at_once(
        [&] {
          for (auto& h : handles) h();
        },
        [&] { cancel(P); });
    for (const auto& c : kids) {
      CHECK(c.err() == ctx::errc::canceled);
      const std::error_code cause = c.cause();
      CHECK((cause == P || cause == ctx::errc::canceled));
    }
  }
}

TEST_CASE("fast path: after_func registered while the leaf is cancelled runs exactly once",
          "[race][fast_path]") {
  for (int round = 0; round < 500; ++round) {
    auto c_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
    auto& c = c_cancel.context;
    auto& cancel = c_cancel.cancel;
    std::atomic<int> ran{0};
    ctx::registration reg;
    at_once([&] { reg = ctx::after_func(c, [&] { ran.fetch_add(1); }); }, [&] { cancel(); });
    CHECK(ran == 1);
  }
}

TEST_CASE("fast path: a thread entering wait() while the leaf is cancelled wakes", "[race][fast_path]") {
  for (int round = 0; round < 500; ++round) {
    auto c_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
    auto& c = c_cancel.context;
    auto& cancel = c_cancel.cancel;
    at_once(
        [&] {
          c.wait();  // hangs the test if the cancel missed this waiter
        },
        [&] { cancel(); });
    CHECK(c.done());
  }
}

TEST_CASE("fast path: a child derived while its leaf parent is cancelled is done", "[race][fast_path]") {
  for (int round = 0; round < 500; ++round) {
    auto p_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
    auto& parent = p_cancel.context;
    auto& cancel = p_cancel.cancel;
    ctx::context child;
    ctx::cancel_handle child_cancel;
    at_once(
        [&] {
          auto [c, h] = ctx::with_cancel(parent);
          child = std::move(c);
          child_cancel = std::move(h);
        },
        [&] { cancel(); });
    CHECK(child.done());
    CHECK(child.cause() == ctx::errc::canceled);
  }
}

TEST_CASE("a thread that sees done() sees the final err and cause", "[race]") {
  for (int round = 0; round < 200; ++round) {
    auto [c, cancel] = ctx::with_cancel(ctx::background());
    static constexpr ctx::key<int> unused{"unused"};
    auto v = ctx::with_value(c, unused, 1);  // read through a value node too
    std::atomic<bool> ok{true};
    std::jthread reader([&] {
      while (!v.done()) {
      }
      if (v.err() != ctx::errc::canceled || v.cause() != P) ok = false;
    });
    cancel(P);
    reader.join();
    CHECK(ok);
  }
}

TEST_CASE("a reader chasing a cancel through many children sees each one's final err and cause", "[race]") {
  // A cancel marks the children of a node one after another, oldest first.
  // A reader that waits for each child to turn done, in the same order,
  // reads its err and cause right after that child's state word was written:
  // a cancel that published done before err and cause is caught in the act.
  constexpr int width = 256;
  int wrong = 0;
  std::vector<ctx::context> kids;
  std::vector<ctx::cancel_handle> handles;
  ctx::cancel_handle root_cancel;
  lockstep(
      race_rounds(1000),
      [&](int) {
        kids.clear();
        handles.clear();
        auto root = ctx::with_cancel(ctx::background());
        for (int i = 0; i < width; ++i) {
          auto [c, h] = ctx::with_cancel(root.context);
          kids.push_back(std::move(c));
          handles.push_back(std::move(h));
        }
        root_cancel = std::move(root.cancel);
      },
      [&](int) {
        for (const auto& k : kids) {
          spin_until([&] { return k.done(); });
          if (k.err() != ctx::errc::canceled || k.cause() != P) ++wrong;
        }
      },
      [&](int) { root_cancel(P); }, [](int) {});
  CHECK(wrong == 0);
}

TEST_CASE("after_func racing a cancel runs its callback exactly once", "[race][after_func]") {
  // Each kind of node: a leaf (cancelled by one compare-and-swap), a node
  // with a child (cancelled under its lock), a node with a stop source.
  for (const int kind : {0, 1, 2}) {
    INFO("kind " << kind);
    int wrong = 0;
    ctx::context c;
    ctx::cancel_handle cancel;
    ctx::context child;
    ctx::cancel_handle child_cancel;
    std::stop_token token;
    std::atomic<int> runs{0};
    ctx::registration reg;
    lockstep(
        race_rounds(60'000),
        [&](int) {
          reg = ctx::registration{};
          runs = 0;
          auto d = ctx::with_cancel(ctx::background());
          if (kind == 1) {
            auto e = ctx::with_cancel(d.context);
            child = std::move(e.context);
            child_cancel = std::move(e.cancel);
          }
          if (kind == 2) token = d.context.stop_token();
          c = std::move(d.context);
          cancel = std::move(d.cancel);
        },
        [&](int) { cancel(); }, [&](int) { reg = ctx::after_func(c, [&runs] { runs.fetch_add(1); }); },
        [&](int) {
          if (runs.load() != 1) ++wrong;
        });
    CHECK(wrong == 0);
  }
}

TEST_CASE("after_func stop versus cancel: exactly one of them wins", "[race][after_func]") {
  for (int round = 0; round < 500; ++round) {
    auto c_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
    auto& c = c_cancel.context;
    auto& cancel = c_cancel.cancel;
    std::atomic<int> ran{0};
    auto reg = ctx::after_func(c, [&] { ran.fetch_add(1); });
    bool stopped = false;
    at_once([&] { cancel(); }, [&] { stopped = reg.stop(); });
    CHECK(ran + (stopped ? 1 : 0) == 1);
  }
}

TEST_CASE("destroying a registration waits for its callback running on another thread",
          "[race][after_func]") {
  auto c_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
  auto& c = c_cancel.context;
  auto& cancel = c_cancel.cancel;
  std::latch in_callback(1);
  std::atomic<bool> release{false};
  std::atomic<bool> finished{false};
  auto reg = std::make_unique<ctx::registration>(ctx::after_func(c, [&] {
    in_callback.count_down();
    release.wait(false);
    finished = true;
  }));
  std::jthread canceller([&] { cancel(); });
  in_callback.wait();
  CHECK_FALSE(reg->stop());  // running: too late, and stop() does not wait
  std::jthread releaser([&] {
    release = true;
    release.notify_all();
  });
  reg.reset();  // must wait for the callback to finish
  CHECK(finished);
}

TEST_CASE("stop from another thread while the callback runs returns false at once", "[race][after_func]") {
  auto c_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
  auto& c = c_cancel.context;
  auto& cancel = c_cancel.cancel;
  std::latch in_callback(1);
  std::atomic<bool> release{false};
  auto reg = ctx::after_func(c, [&] {
    in_callback.count_down();
    release.wait(false);
  });
  std::jthread canceller([&] { cancel(); });
  in_callback.wait();
  CHECK_FALSE(reg.stop());
  release = true;
  release.notify_all();
}

TEST_CASE("a callback of a child cancels the parent while another thread cancels the parent", "[race]") {
  // The deadlock shape: thread A cancels the parent and waits for the child,
  // which thread B is cancelling; B's callback on the child cancels the parent.
  for (int round = 0; round < 300; ++round) {
    auto parent_pc = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
    auto& parent = parent_pc.context;
    auto& pc = parent_pc.cancel;
    auto [child, cc] = ctx::with_cancel(parent);
    auto [grand, gc] = ctx::with_cancel(child);
    auto reg = ctx::after_func(child, [&pc] { pc(P); });
    const ctx::cancel_handle& child_cancel = cc;  // clang 14 cannot capture structured bindings
    at_once([&] { pc(); }, [&] { child_cancel(); });
    CHECK(parent.done());
    CHECK(grand.done());
  }
}

TEST_CASE("cancel from inside after_func of a descendant", "[race][after_func]") {
  auto root_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
  auto& root = root_cancel.context;
  auto& cancel = root_cancel.cancel;
  auto [mid, mc] = ctx::with_cancel(root);
  auto [leaf, lc] = ctx::with_cancel(mid);
  auto reg = ctx::after_func(leaf, [&cancel] { cancel(P); });
  lc();
  CHECK(root.done());
  CHECK(mid.cause() == P);
}

TEST_CASE("children dropped while their parent is being cancelled", "[race]") {
  for (int round = 0; round < 50; ++round) {
    auto root_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
    auto& root = root_cancel.context;
    auto& cancel = root_cancel.cancel;
    std::vector<std::vector<ctx::derived<std::chrono::steady_clock>>> batches(4);
    for (auto& b : batches)
      for (int i = 0; i < 100; ++i) b.push_back(ctx::with_cancel(root));
    std::barrier sync(5);
    run_threads(5, [&](unsigned i) {
      sync.arrive_and_wait();
      if (i == 4)
        cancel();
      else
        batches[i].clear();  // drop context and handle: each child leaves (or is skipped)
    });
    const auto* node = static_cast<const ctx::detail::cancel_node*>(ctx::detail::access::of(root));
    CHECK(node->first_child == nullptr);
  }
}

TEST_CASE("stop tokens asked for while the context is being cancelled are all stopped",
          "[race][stop_token]") {
  for (int round = 0; round < 200; ++round) {
    auto c_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
    auto& c = c_cancel.context;
    auto& cancel = c_cancel.cancel;
    std::stop_token tok;
    at_once([&] { tok = c.stop_token(); }, [&] { cancel(); });
    CHECK(tok.stop_requested());
  }
}

TEST_CASE("a timer cancelled exactly as it fires runs its callback exactly once", "[race][deadline][real]") {
  std::mt19937 rng(12345);
  for (int round = 0; round < 200; ++round) {
    auto d = ctx::with_timeout(ctx::background(), std::chrono::microseconds(rng() % 200));
    std::atomic<int> ran{0};
    auto reg = ctx::after_func(d.context, [&] {
      ran.fetch_add(1);
      ran.notify_all();
    });
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
    d.cancel();
    CHECK(d.context.done());
    // If the timer thread won, it runs the callback, possibly after cancel() returned.
    ran.wait(0);
    reg = ctx::registration{};  // waits for a callback still running
    CHECK(ran.load() == 1);
  }
}

TEST_CASE("many threads blocked in wait() all wake on one cancel", "[race]") {
  auto c_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
  auto& c = c_cancel.context;
  auto& cancel = c_cancel.cancel;
  constexpr int n = 256;
  std::latch started(n + 1);
  std::atomic<int> woke{0};
  {
    std::vector<std::jthread> threads;
    for (int i = 0; i < n; ++i)
      threads.emplace_back([&] {
        started.count_down();
        c.wait();
        woke.fetch_add(1);
      });
    started.arrive_and_wait();
    cancel();
  }
  CHECK(woke == n);
}

TEST_CASE("many threads deriving from, cancelling and dropping one shared tree", "[race][stress]") {
  auto root_cancel = ctx::with_cancel(ctx::background());  // clang 14 cannot capture structured bindings
  auto& root = root_cancel.context;
  auto& cancel = root_cancel.cancel;
  std::atomic<long> callbacks{0};
  std::atomic<long> registered{0};
  std::atomic<int> failures{0};
  std::barrier sync(static_cast<std::ptrdiff_t>(thread_count()));
  run_threads(thread_count(), [&](unsigned i) {
    std::mt19937 rng(i);
    std::vector<ctx::context> mine{root};
    std::vector<ctx::cancel_handle> handles;
    std::vector<ctx::registration> regs;
    sync.arrive_and_wait();
    for (int step = 0; step < 3000; ++step) {
      const ctx::context& parent = mine[rng() % mine.size()];
      switch (rng() % 6) {
        case 0:
        case 1: {
          auto [c, h] = ctx::with_cancel(parent);
          mine.push_back(std::move(c));
          handles.push_back(std::move(h));
          break;
        }
        case 2: {
          auto [c, h] = ctx::with_timeout(parent, std::chrono::microseconds(rng() % 2000));
          mine.push_back(std::move(c));
          handles.push_back(std::move(h));
          break;
        }
        case 3:
          if (!handles.empty()) handles[rng() % handles.size()]();
          break;
        case 4:
          regs.push_back(ctx::after_func(parent, [&callbacks] { callbacks.fetch_add(1); }));
          registered.fetch_add(1);
          break;
        case 5:
          if (mine.size() > 1) mine.erase(mine.begin() + 1 + static_cast<long>(rng() % (mine.size() - 1)));
          break;
      }
    }
    sync.arrive_and_wait();
    if (i == 0) cancel();
    sync.arrive_and_wait();
    for (const auto& c : mine)
      if (!c.done()) failures.fetch_add(1);
    if (!regs.empty() && regs.back().stop()) failures.fetch_add(1);  // everything under root ran already
  });
  CHECK(failures == 0);
  CHECK(callbacks == registered);
}

// --- the races peers were bitten by, each against the real timer thread ---------

TEST_CASE("a callback on the timer thread destroys its own registration", "[race][after_func][real]") {
  std::mt19937 rng(7);
  for (int round = 0; round < 200; ++round) {
    auto d = ctx::with_timeout(ctx::background(), std::chrono::microseconds(rng() % 300));
    auto reg = std::make_unique<ctx::registration>();
    std::atomic<int> ran{0};
    std::atomic<bool> armed{false};
    std::atomic<bool> finished{false};
    const auto main_id = std::this_thread::get_id();
    *reg = ctx::after_func(d.context, [&reg, &ran, &armed, &finished, main_id] {
      ran.fetch_add(1);
      auto* f = &finished;
      if (std::this_thread::get_id() != main_id) {  // not the rare inline run of an already-expired timer
        armed.wait(false);                          // `*reg` is assigned
        reg.reset();                                // destroys this callable: no capture is touched after it
      }
      f->store(true);
      f->notify_all();
    });
    armed = true;
    armed.notify_all();
    finished.wait(false);
    CHECK(ran.load() == 1);
    if (reg) reg.reset();  // only after an inline run
  }
}

TEST_CASE("stop from another thread while the timer thread runs the callback", "[race][after_func][real]") {
  std::mt19937 rng(11);
  for (int round = 0; round < 300; ++round) {
    auto d = ctx::with_timeout(ctx::background(), std::chrono::microseconds(rng() % 200));
    std::atomic<int> ran{0};
    auto reg = ctx::after_func(d.context, [&ran] { ran.fetch_add(1); });
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
    const bool stopped = reg.stop();  // never waits
    d.context.wait();
    reg = ctx::registration{};  // waits for a callback still running on the timer thread
    CHECK(ran.load() == (stopped ? 0 : 1));
  }
}

TEST_CASE("a condition_variable_any wait on stop_token wakes on cancel, never misses it",
          "[race][stop_token]") {
  // The waiter may block before, while or after the cancel requests stop:
  // std::condition_variable_any's stop_token overloads must not lose the wake-up.
  std::mt19937 rng(13);
  for (int round = 0; round < 500; ++round) {
    auto d = ctx::with_cancel(ctx::background());
    std::mutex m;
    std::condition_variable_any cv;
    std::latch ready(2);
    bool woke_done = false;
    {
      std::jthread waiter([&] {
        const std::stop_token tok = d.context.stop_token();
        ready.arrive_and_wait();
        std::unique_lock lock(m);
        cv.wait(lock, tok, [] { return false; });  // returns only once stop is requested
        woke_done = d.context.done();
      });
      ready.arrive_and_wait();
      for (auto spin = rng() % 2000; spin > 0; --spin) std::atomic_signal_fence(std::memory_order_seq_cst);
      d.cancel();
    }
    CHECK(woke_done);
  }
}

TEST_CASE("a condition_variable_any wait on stop_token wakes when the timer fires",
          "[race][stop_token][real]") {
  std::mt19937 rng(17);
  for (int round = 0; round < 200; ++round) {
    auto d = ctx::with_timeout(ctx::background(), std::chrono::microseconds(rng() % 300));
    std::mutex m;
    std::condition_variable_any cv;
    std::unique_lock lock(m);
    cv.wait(lock, d.context.stop_token(), [] { return false; });
    CHECK(d.context.err() == ctx::errc::deadline_exceeded);
  }
}

TEST_CASE("destroying the last reference to a context inside its own callback on the timer thread",
          "[race][after_func][real]") {
  // The callback destroys everything the program holds of the context: the
  // context, the handle and the registration. Only the timer thread's own
  // reference is left, and it must be the one that frees the node.
  std::mt19937 rng(19);
  for (int round = 0; round < 200; ++round) {
    struct holder {
      ctx::context c;
      ctx::cancel_handle h;
      ctx::registration r;
    };
    auto h = std::make_unique<holder>();
    auto d = ctx::with_timeout(ctx::background(), std::chrono::microseconds(rng() % 300));
    h->c = std::move(d.context);
    h->h = std::move(d.cancel);
    std::atomic<bool> armed{false};
    std::atomic<bool> finished{false};
    const auto main_id = std::this_thread::get_id();
    h->r = ctx::after_func(h->c, [&h, &armed, &finished, main_id] {
      auto* f = &finished;
      if (std::this_thread::get_id() != main_id) {  // not the rare inline run of an already-expired timer
        armed.wait(false);                          // `h->r` is assigned
        h.reset();  // destroys the registration (and this callable), the handle, the context
      }
      f->store(true);
      f->notify_all();
    });
    const bool inline_run = finished.load();
    armed = true;
    armed.notify_all();
    finished.wait(false);
    CHECK((h == nullptr) != inline_run);
  }
}

TEST_CASE("cancel from inside after_func of a descendant on the timer thread, racing a cancel of the root",
          "[race][after_func][real]") {
  std::mt19937 rng(23);
  for (int round = 0; round < 200; ++round) {
    auto root_d = ctx::with_cancel(ctx::background());
    auto& root_cancel = root_d.cancel;
    auto [mid, mc] = ctx::with_cancel(root_d.context);
    auto [leaf, lc] = ctx::with_timeout(mid, std::chrono::microseconds(rng() % 200));
    std::atomic<int> ran{0};
    auto reg = ctx::after_func(leaf, [&root_cancel, &ran] {
      ran.fetch_add(1);
      root_cancel(P);
    });
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
    root_cancel();
    CHECK(root_d.context.done());
    CHECK(mid.done());
    CHECK(leaf.done());
    reg = ctx::registration{};  // waits for a callback still running on the timer thread
    CHECK(ran.load() <= 1);
  }
}
