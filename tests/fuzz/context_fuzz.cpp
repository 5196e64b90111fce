// SPDX-License-Identifier: MIT
// Model-based fuzzer for <ctx/context.hpp>: the input bytes are decoded into a
// sequence of operations (derive, cancel, drop, after_func, stop, advance the
// manual clock, request stop, ask for stop tokens, look up values), run
// against ctx and against a small reference model made of plain structs;
// after every step every observable (done, err, cause, deadline, remaining,
// values, stop tokens, callback counts, pending timers) must agree.
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
  int source = -1;                     // for kind::stop_token
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
};

struct model {
  std::vector<mnode> nodes;
  std::vector<mreg> regs;
  std::vector<bool> source_stopped = std::vector<bool>(n_sources, false);
  std::vector<int> ctx_slot_node;  // model node of each context slot, -1 if dropped

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
    for (std::size_t i = 0; i < regs.size(); ++i) {
      mreg& r = regs[i];
      if (r.owner != n || r.st != rstate::linked) continue;
      r.st = rstate::fired;
      ++r.runs;
      if (r.self_drop) r.held = false;
      if (r.drop_ctx >= 0) ctx_slot_node[static_cast<std::size_t>(r.drop_ctx)] = -1;
    }
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
  CTX_FUZZ_NO_COVERAGE int derive_stop_token(int p, int source) {
    mnode x;
    x.k = kind::stop_token;
    x.parent = p;
    x.deadline = at(p).deadline;
    x.source = source;
    const int n = add(std::move(x));
    if (!born_done(n) && source_stopped[static_cast<std::size_t>(source)]) cancel(n, ctx::errc::canceled, {});
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

struct handle_slot {
  ctx::cancel_handle h;
  int node;
};
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
  std::vector<handle_slot> handles;
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
    handles.push_back({std::move(d.cancel), node});
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
        const auto t = std::chrono::milliseconds(static_cast<int>(b & 31) - 4);
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
            when = now + std::chrono::microseconds(500) * (static_cast<int>(b & 63) - 8);
            break;
        }
        const int expect = m.derive_deadline(p, when, cause, now);
        add_derived(ctx::with_deadline(*contexts[s], when, cause), expect);
        break;
      }
      case 3: {  // with_stop_token on one of the harness's stop sources
        const std::size_t s = live[in.index(live.size())];
        const int p = m.ctx_slot_node[s];
        const int src = static_cast<int>(in.index(n_sources));
        const int expect = m.derive_stop_token(p, src);
        add_derived(ctx::with_stop_token(*contexts[s], sources[static_cast<std::size_t>(src)].get_token()),
                    expect);
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
      case 6: {  // cancel a handle, with or without a cause
        if (handles.empty()) break;
        handle_slot& h = handles[in.index(handles.size())];
        const std::error_code cause = causes[in.index(4)];
        m.cancel(h.node, ctx::errc::canceled, cause);
        if (cause)
          h.h(cause);
        else
          h.h();
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
        if (handles.empty()) break;
        const std::size_t i = in.index(handles.size());
        m.cancel(handles[i].node, ctx::errc::canceled, {});
        handles.erase(handles.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
      case 9: {  // after_func; the callback may drop its registration or a context
        const std::size_t s = live[in.index(live.size())];
        const std::uint8_t b = in.byte();
        const int node = m.ctx_slot_node[s];
        const std::size_t idx = regs.size();
        mreg r;
        r.owner = m.up(node);
        r.self_drop = (b & 3) == 1;
        r.drop_ctx = (b & 3) == 2 && s != 0 ? static_cast<int>(s) : -1;
        if (r.owner < 0)
          r.st = rstate::never;
        else if (m.at(r.owner).done) {
          r.st = rstate::fired;  // runs at once; a self-drop finds nothing to drop yet
          r.runs = 1;
        } else
          r.st = rstate::linked;
        if (r.st == rstate::fired && r.drop_ctx >= 0) m.ctx_slot_node[s] = -1;
        m.regs.push_back(r);
        runs.push_back(0);
        regs.push_back(nullptr);
        int* counter = &runs.back();
        const bool self_drop = r.self_drop;
        const int drop_ctx = r.drop_ctx;
        auto f = [this, counter, idx, self_drop, drop_ctx] {
          ++*counter;
          if (drop_ctx >= 0) contexts[static_cast<std::size_t>(drop_ctx)].reset();
          if (self_drop) regs[idx].reset();  // destroys this lambda: touch no capture after it
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
        m.regs[i].held = false;
        if (m.regs[i].st == rstate::linked) m.regs[i].st = rstate::stopped;
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
