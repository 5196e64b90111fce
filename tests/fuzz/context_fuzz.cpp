// SPDX-License-Identifier: MIT
// Model-based fuzzer for <ctx/context.hpp>: the input bytes are decoded into a
// sequence of operations (derive, cancel, drop, after_func, stop, advance the
// manual clock, request stop, ask for stop tokens, look up values), run
// against ctx and against a small reference model made of plain structs;
// after every step every observable (done, err, cause, deadline, remaining,
// values, stop tokens, callback counts, pending timers) must agree.
//
// with_stop_token listens either to a plain stop source or to another
// context's stop token. A callback may drop a context, a cancel handle (which
// cancels it: possibly the very handle whose call is running the callback),
// its own registration, or another registration of the same context: so a
// callback can destroy every reference to the context it runs for while the
// cancel still runs (issue 9, bug 1's class).
//
// Order: the model fires a context's stop-token listeners first, then its
// after_func callbacks newest first, as the library does (the order of
// callbacks on one context is unspecified to users; the fuzzer pins the
// library's). Callbacks never cancel with a cause, so the order in which one
// cancel fires different contexts changes nothing observable.
//
// Built two ways: with clang's -fsanitize=fuzzer as a libFuzzer target
// (tests/fuzz/run.sh), or with any compiler as a replay driver that runs the
// committed corpus (fuzz_replay.cpp; a ctest test).
//
// Single-threaded by design: every deadline is on ctx::testing::manual_clock,
// so timers fire on this thread inside advance(). manual_clock time is global
// per process and only moves forward: the model reads now() at every step.
#include <ctx/ctx.hpp>
#include <ctx/testing.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <system_error>
#include <vector>

// The model and the checks are not what is being explored: keep libFuzzer's
// coverage instrumentation (and its cost) for the library.
#if defined(__clang__)
#define CTX_FUZZ_NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define CTX_FUZZ_NO_COVERAGE
#endif

namespace {

using manual = ctx::testing::manual_clock;
using mctx = ctx::basic_context<manual>;
using time_point = manual::time_point;
using duration = manual::duration;

// --- input decoding -----------------------------------------------------------

struct reader {
  const std::uint8_t* p;
  std::size_t n;
  [[nodiscard]] bool empty() const { return n == 0; }
  std::uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  std::size_t index(std::size_t size) { return size == 0 ? 0 : byte() % size; }
};

const std::error_code causes[] = {
    {},
    std::make_error_code(std::errc::broken_pipe),
    std::make_error_code(std::errc::connection_reset),
    std::make_error_code(std::errc::timed_out),
};

inline constexpr ctx::key<int> key_a{"a"};
inline constexpr ctx::key<int> key_b{"b"};
inline constexpr ctx::key<std::string> key_s{"s"};  // a non-trivial value type

constexpr std::size_t max_nodes = 96;  // bounds the work per input
constexpr std::size_t n_sources = 3;

// --- the reference model: obviously correct, not fast -----------------------

enum class kind { root, cancel, deadline, inherited_deadline, stop_token, value, detach };

struct mnode {
  kind k = kind::root;
  int parent = -1;
  bool done = false;
  ctx::errc err{};
  std::error_code raw_cause;           // what the node stores; cause() falls back to err
  std::optional<time_point> deadline;  // effective
  std::optional<time_point> timer;     // own pending timer
  std::error_code deadline_cause;      // for kind::deadline
  int source = -1;                     // for kind::stop_token: a stop source, or
  int listen = -1;                     // the cancelable node whose stop token it listens to
  const void* key = nullptr;           // for kind::value
  int ivalue = 0;
  std::string svalue;
};

enum class rstate { never, linked, stopped, fired, never_stopped };

struct mreg {
  int owner = -1;  // model cancelable node, or -1 for a never-done context
  rstate st = rstate::never;
  bool held = true;
  int runs = 0;
  bool self_drop = false;  // the callback destroys its own registration
  int drop_ctx = -1;       // the callback drops this context slot
  int drop_handle = -1;    // the callback drops this handle slot (which cancels)
  int drop_reg = -1;       // the callback drops this registration (of the same context)
};

struct model {
  std::vector<mnode> nodes;
  std::vector<mreg> regs;
  std::vector<bool> source_stopped = std::vector<bool>(n_sources, false);
  std::vector<int> ctx_slot_node;  // model node of each context slot, -1 if dropped
  std::vector<int> handle_node;    // model node of each handle slot, -1 if dropped

  model() { nodes.push_back({}); }

  [[nodiscard]] CTX_FUZZ_NO_COVERAGE bool cancelable(int n) const {
    const kind k = nodes[static_cast<std::size_t>(n)].k;
    return k == kind::cancel || k == kind::deadline || k == kind::inherited_deadline || k == kind::stop_token;
  }
  /// Nearest cancelable node, self included; -1 if none (root or across a detach).
  [[nodiscard]] CTX_FUZZ_NO_COVERAGE int up(int n) const {
    for (; n >= 0; n = nodes[static_cast<std::size_t>(n)].parent) {
      if (cancelable(n)) return n;
      if (nodes[static_cast<std::size_t>(n)].k == kind::detach ||
          nodes[static_cast<std::size_t>(n)].k == kind::root)
        return -1;
    }
    return -1;
  }
  CTX_FUZZ_NO_COVERAGE mnode& at(int n) { return nodes[static_cast<std::size_t>(n)]; }

  /// Marks `n` done and every not-yet-done cancelable descendant, recursively
  /// through value nodes, stopping at detach nodes. Then runs the callbacks
  /// and the stop-token cancellations this triggered.
  CTX_FUZZ_NO_COVERAGE void cancel(int n, ctx::errc e, std::error_code raw) {
    if (at(n).done) return;
    std::vector<int> marked;
    mark(n, e, raw, marked);
    for (int m : marked) fire(m);
  }
  CTX_FUZZ_NO_COVERAGE void mark(int n, ctx::errc e, const std::error_code& raw, std::vector<int>& marked) {
    mnode& x = at(n);
    x.done = true;
    x.err = e;
    x.raw_cause = raw;
    x.timer.reset();
    marked.push_back(n);
    for (int c = 0; c < static_cast<int>(nodes.size()); ++c)
      if (at(c).parent == n) mark_below(c, e, raw, marked);
  }
  CTX_FUZZ_NO_COVERAGE void mark_below(int c, ctx::errc e, const std::error_code& raw,
                                       std::vector<int>& marked) {
    if (at(c).k == kind::detach) return;
    if (cancelable(c)) {
      if (!at(c).done) mark(c, e, raw, marked);  // a done child's subtree is done already
      return;
    }
    for (int g = 0; g < static_cast<int>(nodes.size()); ++g)
      if (at(g).parent == c) mark_below(g, e, raw, marked);
  }
  CTX_FUZZ_NO_COVERAGE void fire(int n) {
    // The stop request first: contexts listening to n's stop token.
    for (int l = 0; l < static_cast<int>(nodes.size()); ++l)
      if (at(l).k == kind::stop_token && at(l).listen == n) cancel(l, ctx::errc::canceled, {});
    // Then the after_func callbacks, newest first; one may drop another.
    for (std::size_t i = regs.size(); i-- > 0;) {
      if (regs[i].owner != n || regs[i].st != rstate::linked) continue;
      regs[i].st = rstate::fired;
      run_callback(i);
    }
  }
  /// What registration i's callback does, in the order the harness's does it.
  CTX_FUZZ_NO_COVERAGE void run_callback(std::size_t i) {
    mreg& r = regs[i];
    ++r.runs;
    const int drop_ctx = r.drop_ctx, drop_handle = r.drop_handle, drop_reg = r.drop_reg;
    if (drop_ctx >= 0) ctx_slot_node[static_cast<std::size_t>(drop_ctx)] = -1;
    if (drop_handle >= 0) drop_handle_slot(static_cast<std::size_t>(drop_handle));
    if (drop_reg >= 0) drop_registration(static_cast<std::size_t>(drop_reg));
    if (regs[i].self_drop) regs[i].held = false;
  }
  CTX_FUZZ_NO_COVERAGE void drop_handle_slot(std::size_t h) {
    const int n = handle_node[h];
    if (n < 0) return;  // dropped already
    handle_node[h] = -1;
    cancel(n, ctx::errc::canceled, {});
  }
  CTX_FUZZ_NO_COVERAGE void drop_registration(std::size_t i) {
    mreg& r = regs[i];
    if (!r.held) return;
    r.held = false;
    if (r.st == rstate::linked) r.st = rstate::stopped;
  }
  CTX_FUZZ_NO_COVERAGE void stop_source(int s) {
    if (source_stopped[static_cast<std::size_t>(s)]) return;
    source_stopped[static_cast<std::size_t>(s)] = true;
    // Every stop-token node listening to `s` cancels with canceled and no
    // cause; they all record the same err and cause, so order does not matter.
    for (int n = 0; n < static_cast<int>(nodes.size()); ++n)
      if (at(n).k == kind::stop_token && at(n).source == s) cancel(n, ctx::errc::canceled, {});
  }
  /// manual_clock reached `now`: fire due timers in deadline order.
  CTX_FUZZ_NO_COVERAGE void timers_due(time_point now) {
    for (;;) {
      int best = -1;
      for (int n = 0; n < static_cast<int>(nodes.size()); ++n)
        if (at(n).timer && *at(n).timer <= now && (best < 0 || *at(n).timer < *at(best).timer)) best = n;
      if (best < 0) return;
      at(best).timer.reset();
      cancel(best, ctx::errc::deadline_exceeded, at(best).deadline_cause);
    }
  }
  [[nodiscard]] CTX_FUZZ_NO_COVERAGE std::size_t pending_timers() const {
    return static_cast<std::size_t>(
        std::count_if(nodes.begin(), nodes.end(), [](const mnode& x) { return x.timer.has_value(); }));
  }

  // Derivations: return the new node's index.
  CTX_FUZZ_NO_COVERAGE int add(mnode x) {
    nodes.push_back(std::move(x));
    return static_cast<int>(nodes.size()) - 1;
  }
  /// The new cancelable node `n` is born done if its cancelable parent is.
  CTX_FUZZ_NO_COVERAGE bool born_done(int n) {
    const int u = up(at(n).parent);
    if (u < 0 || !at(u).done) return false;
    at(n).done = true;
    at(n).err = at(u).err;
    at(n).raw_cause = at(u).raw_cause;
    return true;
  }
  CTX_FUZZ_NO_COVERAGE int derive_cancel(int p) {
    mnode x;
    x.k = kind::cancel;
    x.parent = p;
    x.deadline = at(p).deadline;
    const int n = add(std::move(x));
    born_done(n);
    return n;
  }
  CTX_FUZZ_NO_COVERAGE int derive_deadline(int p, time_point when, std::error_code cause, time_point now) {
    mnode x;
    x.parent = p;
    if (at(p).deadline && *at(p).deadline <= when) {
      x.k = kind::inherited_deadline;
      x.deadline = at(p).deadline;
      const int n = add(std::move(x));
      born_done(n);
      return n;
    }
    x.k = kind::deadline;
    x.deadline = when;
    x.deadline_cause = cause;
    x.raw_cause = cause;
    const int n = add(std::move(x));
    if (born_done(n)) return n;
    if (when <= now)
      cancel(n, ctx::errc::deadline_exceeded, cause);
    else if (when != time_point::max())
      at(n).timer = when;
    return n;
  }
  CTX_FUZZ_NO_COVERAGE int derive_stop_token(int p, int source, int listen) {
    mnode x;
    x.k = kind::stop_token;
    x.parent = p;
    x.deadline = at(p).deadline;
    x.source = source;
    x.listen = listen;
    const int n = add(std::move(x));
    if (born_done(n)) return n;
    if (source >= 0 && source_stopped[static_cast<std::size_t>(source)]) cancel(n, ctx::errc::canceled, {});
    if (listen >= 0 && at(listen).done) cancel(n, ctx::errc::canceled, {});
    return n;
  }
  CTX_FUZZ_NO_COVERAGE int derive_value(int p, const void* key, int iv, std::string sv) {
    mnode x;
    x.k = kind::value;
    x.parent = p;
    x.deadline = at(p).deadline;
    x.key = key;
    x.ivalue = iv;
    x.svalue = std::move(sv);
    return add(std::move(x));
  }
  CTX_FUZZ_NO_COVERAGE int derive_detach(int p) {
    mnode x;
    x.k = kind::detach;
    x.parent = p;
    return add(std::move(x));
  }

  // Observers.
  [[nodiscard]] CTX_FUZZ_NO_COVERAGE bool done(int n) const {
    const int u = up(n);
    return u >= 0 && nodes[static_cast<std::size_t>(u)].done;
  }
  [[nodiscard]] CTX_FUZZ_NO_COVERAGE std::error_code err(int n) const {
    return done(n) ? make_error_code(nodes[static_cast<std::size_t>(up(n))].err) : std::error_code{};
  }
  [[nodiscard]] CTX_FUZZ_NO_COVERAGE std::error_code cause(int n) const {
    if (!done(n)) return {};
    const mnode& u = nodes[static_cast<std::size_t>(up(n))];
    return u.raw_cause ? u.raw_cause : make_error_code(u.err);
  }
  [[nodiscard]] CTX_FUZZ_NO_COVERAGE const mnode* find_value(int n, const void* key) const {
    for (; n >= 0; n = nodes[static_cast<std::size_t>(n)].parent)
      if (nodes[static_cast<std::size_t>(n)].k == kind::value &&
          nodes[static_cast<std::size_t>(n)].key == key)
        return &nodes[static_cast<std::size_t>(n)];
    return nullptr;
  }
};

// --- the real side ------------------------------------------------------------

struct token_slot {
  std::stop_token t;
  int node;  // model node the token was asked of
};

[[noreturn]] void fail(const char* what, std::size_t step, long detail) {
  std::fprintf(stderr, "ctx fuzz: model mismatch at step %zu: %s (%ld)\n", step, what, detail);
  std::abort();
}

struct harness {
  model m;
  std::vector<std::optional<mctx>> contexts;  // slot i is model node m.ctx_slot_node[i]
  std::vector<std::unique_ptr<ctx::cancel_handle>>
      handles;  // slot i is model node m.handle_node[i]; null once dropped
  std::vector<std::unique_ptr<ctx::registration>> regs;  // null once dropped
  std::deque<int> runs;                                  // per registration, outlives it
  std::vector<token_slot> tokens;
  std::vector<std::stop_source> sources = std::vector<std::stop_source>(n_sources);
  std::size_t step = 0;

  harness() {
    contexts.emplace_back(ctx::background<manual>());
    m.ctx_slot_node.push_back(0);
  }

  [[nodiscard]] std::vector<std::size_t> live_slots() const {
    std::vector<std::size_t> v;
    for (std::size_t i = 0; i < contexts.size(); ++i)
      if (contexts[i]) v.push_back(i);
    return v;
  }
  void add_context(mctx c, int node) {
    contexts.emplace_back(std::move(c));
    m.ctx_slot_node.push_back(node);
  }
  void add_derived(ctx::derived<manual> d, int node) {
    add_context(std::move(d.context), node);
    handles.push_back(std::make_unique<ctx::cancel_handle>(std::move(d.cancel)));
    m.handle_node.push_back(node);
  }
  /// A few nanoseconds, different for every node: the clock only moves in
  /// steps of 250 us and timeouts are whole 500 us or ms, so with this no
  /// two pending timers share a deadline. Timers with equal deadlines fire in
  /// no specified order, and the order can matter (a stop-token listener
  /// cancelled by one, or its parent's deadline by the other, records
  /// different errors); the model fires in deadline order.
  [[nodiscard]] duration unique_offset() const {
    return duration(static_cast<duration::rep>(m.nodes.size()));
  }
  [[nodiscard]] std::vector<std::size_t> live_handles() const {
    std::vector<std::size_t> v;
    for (std::size_t i = 0; i < handles.size(); ++i)
      if (handles[i]) v.push_back(i);
    return v;
  }

  void run_op(reader& in) {
    const std::uint8_t op = in.byte() % 16;
    const std::vector<std::size_t> live = live_slots();
    const time_point now = manual::now();
    if (m.nodes.size() >= max_nodes && op <= 5) return;  // enough nodes: no more derivations
    switch (op) {
      case 0: {  // with_cancel
        const std::size_t s = live[in.index(live.size())];
        const int p = m.ctx_slot_node[s];
        add_derived(ctx::with_cancel(*contexts[s]), m.derive_cancel(p));
        break;
      }
      case 1: {  // with_timeout, maybe with a cause; -4..27 ms, <= 0 is expired
        const std::size_t s = live[in.index(live.size())];
        const int p = m.ctx_slot_node[s];
        const std::uint8_t b = in.byte();
        const std::error_code cause = causes[(b >> 5) & 3];
        duration t = std::chrono::milliseconds(static_cast<int>(b & 31) - 4);
        if (t > t.zero()) t += unique_offset();
        const time_point when = t > t.zero() ? now + t : now;  // a timeout <= 0 saturates to now
        const int expect = m.derive_deadline(p, when, cause, now);
        add_derived(cause || (b & 0x80) ? ctx::with_timeout(*contexts[s], t, cause)
                                        : ctx::with_timeout(*contexts[s], t),
                    expect);
        break;
      }
      case 2: {  // with_deadline: absolute, including the extremes
        const std::size_t s = live[in.index(live.size())];
        const int p = m.ctx_slot_node[s];
        const std::uint8_t b = in.byte();
        const std::error_code cause = causes[(b >> 6) & 3];
        time_point when;
        switch (b & 63) {
          case 62:
            when = time_point::max();
            break;
          case 63:
            when = time_point::min();
            break;
          default:
            when = now + std::chrono::microseconds(500) * (static_cast<int>(b & 63) - 8) + unique_offset();
            break;
        }
        const int expect = m.derive_deadline(p, when, cause, now);
        add_derived(ctx::with_deadline(*contexts[s], when, cause), expect);
        break;
      }
      case 3: {  // with_stop_token on one of the harness's stop sources, or on another context's token
        const std::size_t s = live[in.index(live.size())];
        const int p = m.ctx_slot_node[s];
        const std::size_t pick = in.index(n_sources + 1);
        if (pick < n_sources) {
          const int src = static_cast<int>(pick);
          const int expect = m.derive_stop_token(p, src, -1);
          add_derived(ctx::with_stop_token(*contexts[s], sources[static_cast<std::size_t>(src)].get_token()),
                      expect);
        } else {
          const std::size_t t = live[in.index(live.size())];
          const int expect = m.derive_stop_token(p, -1, m.up(m.ctx_slot_node[t]));
          add_derived(ctx::with_stop_token(*contexts[s], contexts[t]->stop_token()), expect);
        }
        break;
      }
      case 4: {  // with_value
        const std::size_t s = live[in.index(live.size())];
        const int p = m.ctx_slot_node[s];
        const std::uint8_t b = in.byte();
        const int v = b >> 2;
        switch (b & 3) {
          case 0:
          case 1: {
            const ctx::key<int>& k = (b & 1) ? key_b : key_a;
            const int n = m.derive_value(p, &k, v, {});
            add_context(ctx::with_value(*contexts[s], k, v), n);
            break;
          }
          default: {
            std::string sv(static_cast<std::size_t>(v), 'x');  // long enough to allocate
            const int n = m.derive_value(p, &key_s, 0, sv);
            add_context(ctx::with_value(*contexts[s], key_s, std::move(sv)), n);
            break;
          }
        }
        break;
      }
      case 5: {  // without_cancel
        const std::size_t s = live[in.index(live.size())];
        const int p = m.ctx_slot_node[s];
        add_context(ctx::without_cancel(*contexts[s]), m.derive_detach(p));
        break;
      }
      case 6: {  // cancel a handle, with or without a cause (its callbacks may destroy the handle)
        const std::vector<std::size_t> hs = live_handles();
        if (hs.empty()) break;
        const std::size_t i = hs[in.index(hs.size())];
        const std::error_code cause = causes[in.index(4)];
        m.cancel(m.handle_node[i], ctx::errc::canceled, cause);
        const ctx::cancel_handle& h = *handles[i];
        if (cause)
          h(cause);
        else
          h();
        break;
      }
      case 7: {  // drop a context (never the root slot 0: it is background and keeps `live` non-empty)
        if (live.size() <= 1) break;
        const std::size_t s = live[1 + in.index(live.size() - 1)];
        m.ctx_slot_node[s] = -1;
        contexts[s].reset();
        break;
      }
      case 8: {  // drop a handle: cancels
        const std::vector<std::size_t> hs = live_handles();
        if (hs.empty()) break;
        const std::size_t i = hs[in.index(hs.size())];
        m.drop_handle_slot(i);
        handles[i].reset();
        break;
      }
      case 9: {  // after_func; the callback may drop its registration, a context, a handle, another
                 // registration
        const std::size_t s = live[in.index(live.size())];
        const std::uint8_t b = in.byte();
        const std::uint8_t b2 = in.byte();
        const int node = m.ctx_slot_node[s];
        const std::size_t idx = regs.size();
        mreg r;
        r.owner = m.up(node);
        r.self_drop = (b & 3) == 1;
        r.drop_ctx = (b & 3) == 2 && s != 0 ? static_cast<int>(s) : -1;
        // A handle: that of the context the callback runs for (the last
        // references: bug 1's shape), or any handle.
        if ((b2 & 3) == 1) {
          for (std::size_t h = m.handle_node.size(); h-- > 0;)
            if (m.handle_node[h] >= 0 && m.handle_node[h] == r.owner) {
              r.drop_handle = static_cast<int>(h);
              break;
            }
        } else if ((b2 & 3) == 2 && !handles.empty()) {
          r.drop_handle = static_cast<int>((b2 >> 3) % handles.size());
        }
        // Another registration of the same context, held.
        if (b2 & 4) {
          std::vector<std::size_t> same;
          for (std::size_t j = 0; j < m.regs.size(); ++j)
            if (m.regs[j].owner == r.owner && r.owner >= 0 && m.regs[j].held) same.push_back(j);
          if (!same.empty()) r.drop_reg = static_cast<int>(same[(b2 >> 3) % same.size()]);
        }
        const bool runs_now = r.owner >= 0 && m.at(r.owner).done;
        r.st = r.owner < 0 ? rstate::never : runs_now ? rstate::fired : rstate::linked;
        m.regs.push_back(r);
        runs.push_back(0);
        regs.push_back(nullptr);
        if (runs_now) {
          // Runs at once, inside after_func: a self-drop finds nothing to drop yet.
          m.regs[idx].self_drop = false;
          m.run_callback(idx);
          m.regs[idx].self_drop = r.self_drop;
        }
        int* counter = &runs.back();
        auto f = [this, counter, idx, self_drop = r.self_drop, drop_ctx = r.drop_ctx,
                  drop_handle = r.drop_handle, drop_reg = r.drop_reg] {
          // Copies first: dropping the registration destroys this lambda.
          harness* const self = this;
          int* const count = counter;
          const std::size_t me = idx;
          const bool drop_me = self_drop;
          const int ctx_slot = drop_ctx, handle_slot = drop_handle, reg_slot = drop_reg;
          ++*count;
          if (ctx_slot >= 0) self->contexts[static_cast<std::size_t>(ctx_slot)].reset();
          if (handle_slot >= 0)
            self->handles[static_cast<std::size_t>(handle_slot)].reset();  // cancels; may be the caller
          if (reg_slot >= 0) self->regs[static_cast<std::size_t>(reg_slot)].reset();
          if (drop_me) self->regs[me].reset();  // touch no capture after this
        };
        auto reg = ctx::after_func(*contexts[s], f);
        regs[idx] = std::make_unique<ctx::registration>(std::move(reg));
        break;
      }
      case 10: {  // stop a registration
        if (regs.empty()) break;
        const std::size_t i = in.index(regs.size());
        if (!regs[i]) break;
        mreg& r = m.regs[i];
        bool expect = false;
        if (r.st == rstate::linked) {
          r.st = rstate::stopped;
          expect = true;
        } else if (r.st == rstate::never) {
          r.st = rstate::never_stopped;
          expect = true;
        }
        if (regs[i]->stop() != expect) fail("registration::stop()", step, static_cast<long>(i));
        break;
      }
      case 11: {  // drop a registration
        if (regs.empty()) break;
        const std::size_t i = in.index(regs.size());
        m.drop_registration(i);
        regs[i].reset();
        break;
      }
      case 12:
      case 13: {  // advance the manual clock 0..7.75 ms, firing what is due
        const duration d = std::chrono::microseconds(250) * (in.byte() & 31);
        const time_point then = now + d;
        m.timers_due(then);
        manual::advance(d);
        break;
      }
      case 14: {  // request stop on a source
        const int src = static_cast<int>(in.index(n_sources));
        m.stop_source(src);
        sources[static_cast<std::size_t>(src)].request_stop();
        break;
      }
      case 15: {  // ask a context for its stop token, or copy a context
        const std::size_t s = live[in.index(live.size())];
        if (in.byte() & 1)
          tokens.push_back({contexts[s]->stop_token(), m.ctx_slot_node[s]});
        else
          add_context(mctx(*contexts[s]), m.ctx_slot_node[s]);
        break;
      }
    }
  }

  CTX_FUZZ_NO_COVERAGE void check(bool full = false) {
    // A callback may have dropped a context: the model did the same.
    for (std::size_t i = 0; i < contexts.size(); ++i)
      if (contexts[i].has_value() != (m.ctx_slot_node[i] >= 0))
        fail("context slot liveness", step, static_cast<long>(i));
    const time_point now = manual::now();
    for (std::size_t i = 0; i < contexts.size(); ++i) {
      if (!contexts[i]) continue;
      const mctx& c = *contexts[i];
      const int n = m.ctx_slot_node[i];
      if (c.done() != m.done(n)) fail("done()", step, n);
      if (c.err() != m.err(n)) fail("err()", step, n);
      if (c.cause() != m.cause(n)) fail("cause()", step, n);
      const std::optional<time_point> dl = m.at(n).deadline;
      if (c.deadline() != dl) fail("deadline()", step, n);
      const duration rem = !dl ? duration::max() : *dl <= now ? duration::zero() : *dl - now;
      if (c.remaining() != rem) fail("remaining()", step, n);
      const mnode* a = m.find_value(n, &key_a);
      const mnode* b = m.find_value(n, &key_b);
      const mnode* s = m.find_value(n, &key_s);
      const int* ra = c.value(key_a);
      const int* rb = c.value(key_b);
      const std::string* rs = c.value(key_s);
      if ((a == nullptr) != (ra == nullptr) || (a && *ra != a->ivalue)) fail("value(key_a)", step, n);
      if ((b == nullptr) != (rb == nullptr) || (b && *rb != b->ivalue)) fail("value(key_b)", step, n);
      if ((s == nullptr) != (rs == nullptr) || (s && *rs != s->svalue)) fail("value(key_s)", step, n);
      if (m.done(n) && (full || i == step % contexts.size())) {  // throwing is slow: one slot per step
        c.wait();                                                // returns at once
        bool threw = false;
        try {
          c.throw_if_done();
        } catch (const ctx::error& e) {
          threw = e.code() == m.err(n);
        }
        if (!threw) fail("throw_if_done()", step, n);
      }
    }
    for (const token_slot& t : tokens) {
      const int u = m.up(t.node);
      if (t.t.stop_possible() != (u >= 0)) fail("stop_token().stop_possible()", step, t.node);
      if (t.t.stop_requested() != m.done(t.node)) fail("stop_token().stop_requested()", step, t.node);
    }
    for (std::size_t i = 0; i < handles.size(); ++i)
      if (static_cast<bool>(handles[i]) != (m.handle_node[i] >= 0))
        fail("handle slot liveness", step, static_cast<long>(i));
    for (std::size_t i = 0; i < regs.size(); ++i) {
      if (runs[i] != m.regs[i].runs) fail("after_func run count", step, static_cast<long>(i));
      if (static_cast<bool>(regs[i]) != m.regs[i].held) fail("registration held", step, static_cast<long>(i));
    }
    if (ctx::detail::timer_service<manual>::instance().pending() != m.pending_timers())
      fail("pending timers", step, static_cast<long>(m.pending_timers()));
  }

  /// Drops everything; afterwards no timer may be pending and (checked by
  /// LeakSanitizer or valgrind) no memory may be left.
  void teardown() {
    for (std::size_t i = 0; i < regs.size(); ++i) regs[i].reset();  // nothing runs after this
    handles.clear();
    tokens.clear();
    contexts.clear();
    for (std::size_t i = 0; i < runs.size(); ++i)
      if (runs[i] != m.regs[i].runs)
        fail("a callback ran after its registration was dropped", step, static_cast<long>(i));
    if (ctx::detail::timer_service<manual>::instance().pending() != 0)
      fail("timers left pending after teardown", step, 0);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  reader in{data, size};
  harness h;
  h.check();
  while (!in.empty()) {
    ++h.step;
    h.run_op(in);
    h.check();
  }
  h.check(true);
  h.teardown();
  return 0;
}
