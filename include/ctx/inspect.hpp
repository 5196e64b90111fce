// SPDX-License-Identifier: MIT
// ctx::inspect: which contexts are alive, where they were made, and which
// ended while something still holds them (the zombie report).
//
// A *zombie* is a context that has been done for longer than a threshold and
// is still referenced from outside its own tree: by a copy of the context (a
// local, a lambda capture, a member, a queue entry) or by an after_func
// registration. Work that holds a context it was told to stop for is work that
// did not stop. References that do not count: the nodes derived from it (each
// child holds its parent; a parent kept alive only by its children is not a
// zombie, its children are reported if they are), and its own cancel handle
// (which cannot observe the context, and is often kept for RAII).
//
// Inspection is off by default and then costs nothing measurable (see
// docs/inspect.md). It is turned on by the environment variable CTX_INSPECT=1
// (read once, before main()) or by `ctx::inspect::enable()`. Contexts made
// while it is on, and every context derived from them (also after it is
// turned off again), are *tracked*; the others are invisible to this header.
//
// Thread safety: every function here may be called at any moment from any
// thread, while other threads derive, cancel and destroy contexts. A snapshot
// reads one shard of the registry at a time under that shard's mutex (a leaf
// lock, held for a copy of that shard's records, never while user code or I/O
// runs); derivations and destructions that hit that shard wait meanwhile. The
// numbers of a context are read without stopping the program: a reference
// taken or dropped during the snapshot may be counted or not.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <tuple>
#include <vector>

#include "context.hpp"
#include "detail/inspect_registry.hpp"

namespace ctx::inspect {

/// Turns inspection on or off for contexts made from now on. Contexts
/// derived from a tracked context stay tracked whatever the switch says.
inline void enable(bool on = true) noexcept { detail::insp::on.store(on, std::memory_order_relaxed); }

/// True while new contexts are tracked.
[[nodiscard]] inline bool enabled() noexcept { return detail::insp::on.load(std::memory_order_relaxed); }

/// "with_cancel", "with_timeout", ...
[[nodiscard]] constexpr std::string_view to_string(kind k) noexcept {
  switch (k) {
    case kind::with_cancel:
      return "with_cancel";
    case kind::with_timeout:
      return "with_timeout";
    case kind::with_deadline:
      return "with_deadline";
    case kind::with_stop_token:
      return "with_stop_token";
    case kind::with_value:
      return "with_value";
    case kind::without_cancel:
      return "without_cancel";
  }
  return "?";
}

/// What a snapshot tells of one tracked context.
struct context_info {
  std::uint64_t id = 0;  ///< unique while the process runs
  std::uint64_t parent =
      0;  ///< the parent's id; 0 when the parent is not tracked (a root, or made while off)
  inspect::kind kind = kind::with_cancel;
  source_location site;            ///< where the derivation was called
  std::chrono::nanoseconds age{};  ///< since it was made (steady clock)
  /// Time left until its effective deadline in its own clock (zero once
  /// passed); empty when it has none, nanoseconds::max() for a deadline that never fires.
  std::optional<std::chrono::nanoseconds> remaining;
  bool done = false;
  std::error_code err;                  ///< as c.err()
  std::error_code cause;                ///< as c.cause()
  std::chrono::nanoseconds done_for{};  ///< how long it has been done (steady clock); zero while live
  std::uint32_t outside_refs = 0;       ///< references held from outside the context tree (see above)
  std::uint32_t children = 0;           ///< contexts derived from it that are still alive
  bool handle_held = false;             ///< its cancel handle still exists (cancelable kinds only)
  /// Names of the keys whose values it sees, nearest first (never the values:
  /// they may be secrets). The views point at the keys' names.
  std::vector<std::string_view> keys;
};

/// A snapshot of every tracked context that is alive, in no particular order.
///
/// O(n) in the number of tracked contexts; each shard of the registry is
/// locked while it is copied (about 1/64 of them). Throws std::bad_alloc.
[[nodiscard]] std::vector<context_info> live();

/// The zombies: contexts done for at least `threshold` and still referenced
/// from outside their tree, worst (done longest) first. Throws std::bad_alloc.
[[nodiscard]] std::vector<context_info> zombies(std::chrono::nanoseconds threshold);

/// One line: "#12 with_timeout at file.cpp:17: done 85.0s ago (deadline_exceeded,
/// cause deadline_exceeded), age 87.0s, 1 outside ref, parent #3, keys trace_id".
[[nodiscard]] std::string to_string(const context_info& i);

/// How many contexts are tracked now (alive and made visible, or being made).
[[nodiscard]] std::size_t tracked_count() noexcept;

enum class format { text, json };

/// The zombie report: zombies grouped by site (count, oldest, kind, err),
/// worst site first, then the `detail_limit` worst zombies one by one.
/// `format::json` gives the same for tools. Throws std::bad_alloc.
[[nodiscard]] std::string report(std::chrono::nanoseconds threshold, format f = format::text,
                                 std::size_t detail_limit = 20);

/// Arms a dump on signal `sig`: each time the process receives it, a thread
/// of ctx's own (not the signal handler, which only writes one byte to a
/// pipe, an async-signal-safe call) writes `report(threshold)` to `path`
/// (appended), or to standard error when `path` is empty. Turns inspection
/// on. Call it once, early; later calls change nothing and return false.
/// Returns false if the pipe, the thread or the handler could not be set up.
///
/// The environment does the same without a change to the program:
/// CTX_INSPECT_SIGNAL=USR2 (or SIGUSR2, or a number), CTX_INSPECT_THRESHOLD
/// (seconds, default 1), CTX_INSPECT_FILE (default: standard error), read
/// before main() by every program that includes this header (ctx.hpp does).
bool dump_on_signal(int sig, std::chrono::nanoseconds threshold = std::chrono::seconds(1),
                    std::string path = {});

// ---------------------------------------------------------------------------
// Implementation.

namespace detail {

using ctx::detail::insp::record;

inline void collect(const record& r, std::int64_t now, context_info& out) {
  using ns = std::chrono::nanoseconds;
  namespace d = ctx::detail;
  const d::node* n = r.n;
  out.id = r.id;
  out.parent = r.parent ? r.parent->id : 0;
  out.kind = r.k;
  out.site = r.site;
  out.age = ns(now - r.created_ns);
  out.children = r.children.load(std::memory_order_relaxed);
  out.remaining.reset();
  if (n->deadline_holder) out.remaining = ns(r.clk->remaining_ns(n->deadline_holder));
  out.keys.clear();
  for (const d::node* a = n; a; a = a->parent) {
    if (a->kind != d::node_kind::value) continue;
    const auto* v = static_cast<const d::value_node_base*>(a);
    bool seen = false;
    for (const d::node* b = n; b != a; b = b->parent)
      if (b->kind == d::node_kind::value && static_cast<const d::value_node_base*>(b)->key == v->key)
        seen = true;
    if (!seen) out.keys.push_back(v->key_name);
  }
  const std::uint8_t flags = n->insp.load(std::memory_order_relaxed);
  const bool cancelable = n->nearest_cancelable == n;
  out.handle_held = cancelable && !(flags & d::insp::handle_gone);
  const std::uint32_t refs = n->refs.load(std::memory_order_acquire);
  const std::uint32_t inside = out.children + (out.handle_held ? 1 : 0);
  out.outside_refs = refs > inside ? refs - inside : 0;
  out.done = false;
  out.err = out.cause = {};
  out.done_for = ns(0);
  if (const d::cancel_node* c = n->nearest_cancelable) {
    const std::uint32_t s = c->state.load(std::memory_order_acquire);
    if (s & d::st_done) {
      out.done = true;
      out.err = d::err_of_state(s);
      out.cause = c->cause_ ? c->cause_ : out.err;
      // The done time of the nearest cancelable context, if it is tracked;
      // else the first time a snapshot saw this one done.
      record& self = const_cast<record&>(r);
      std::int64_t when =
          r.nearest_cancelable ? r.nearest_cancelable->done_ns.load(std::memory_order_relaxed) : 0;
      if (!when && !r.nearest_cancelable) {
        d::insp::note_done(&self, now);
        when = self.done_ns.load(std::memory_order_relaxed);
      }
      // 0: marked, its hook not yet run: done just now.
      if (when && now > when) out.done_for = ns(now - when);
    }
  }
}

[[nodiscard]] inline bool is_zombie(const context_info& i, std::chrono::nanoseconds threshold) noexcept {
  return i.done && i.done_for >= threshold && i.outside_refs > 0;
}

inline void append_escaped(std::string& s, std::string_view v) {
  for (const char ch : v) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      s += '\\';
      s += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      s += buf;
    } else {
      s += ch;
    }
  }
}

/// "1.234s", "85.0s", "12ms", "3us"
inline std::string human(std::chrono::nanoseconds d) {
  char buf[32];
  const auto v = d.count();
  if (v == 0) return "0s";
  if (d == std::chrono::nanoseconds::max()) return "never";
  if (v >= 1'000'000'000)
    std::snprintf(buf, sizeof buf, "%.1fs", static_cast<double>(v) / 1e9);
  else if (v >= 1'000'000)
    std::snprintf(buf, sizeof buf, "%.1fms", static_cast<double>(v) / 1e6);
  else
    std::snprintf(buf, sizeof buf, "%.1fus", static_cast<double>(v) / 1e3);
  return buf;
}

inline std::string site_string(const source_location& s) {
  std::string out = s.file_name();
  out += ':';
  out += std::to_string(s.line());
  return out;
}

inline std::string err_string(const std::error_code& e) {
  if (!e) return "-";
  if (e.category() == ctx::category()) return e == errc::deadline_exceeded ? "deadline_exceeded" : "canceled";
  return std::string(e.category().name()) + ":" + std::to_string(e.value());
}

struct site_group {
  const context_info* worst = nullptr;  // done longest
  std::size_t count = 0;
  std::uint64_t refs = 0;
};

}  // namespace detail

inline std::vector<context_info> live() {
  std::vector<context_info> out;
  out.reserve(tracked_count() + 64);
  const std::int64_t now = ctx::detail::insp::steady_ns();
  ctx::detail::insp::for_each([&](const detail::record& r) { detail::collect(r, now, out.emplace_back()); });
  return out;
}

inline std::vector<context_info> zombies(std::chrono::nanoseconds threshold) {
  std::vector<context_info> out;
  context_info scratch;
  const std::int64_t now = ctx::detail::insp::steady_ns();
  ctx::detail::insp::for_each([&](const detail::record& r) {
    detail::collect(r, now, scratch);
    if (detail::is_zombie(scratch, threshold)) out.push_back(scratch);
  });
  std::sort(out.begin(), out.end(), [](const context_info& a, const context_info& b) {
    return a.done_for != b.done_for ? a.done_for > b.done_for : a.id < b.id;
  });
  return out;
}

inline std::size_t tracked_count() noexcept {
  std::size_t n = 0;
  for (auto& s : ctx::detail::insp::shards) {
    ctx::detail::tiny_lock lock(s.mu);
    n += s.size;
  }
  return n;
}

inline std::string to_string(const context_info& z) {
  std::string s = "#" + std::to_string(z.id) + " " + std::string(to_string(z.kind)) + " at " +
                  detail::site_string(z.site) + ": ";
  if (z.done)
    s += "done " + detail::human(z.done_for) + " ago (" + detail::err_string(z.err) + ", cause " +
         detail::err_string(z.cause) + ")";
  else
    s += "live";
  if (z.remaining && !z.done) s += ", " + detail::human(*z.remaining) + " left";
  s += ", age " + detail::human(z.age) + ", " + std::to_string(z.outside_refs) + " outside ref" +
       (z.outside_refs == 1 ? "" : "s");
  if (z.parent) s += ", parent #" + std::to_string(z.parent);
  if (!z.keys.empty()) {
    s += ", keys";
    for (std::string_view k : z.keys) {
      s += ' ';
      s += k;
    }
  }
  return s;
}

inline std::string report(std::chrono::nanoseconds threshold, format f, std::size_t detail_limit) {
  const std::vector<context_info> zs = zombies(threshold);
  const std::size_t tracked = tracked_count();
  // Group by site, worst site first.
  std::map<std::tuple<std::string_view, std::uint_least32_t, kind>, detail::site_group> by_site;
  for (const context_info& z : zs) {
    auto& g = by_site[{z.site.file_name(), z.site.line(), z.kind}];
    if (!g.worst) g.worst = &z;  // zs is sorted worst first
    ++g.count;
    g.refs += z.outside_refs;
  }
  std::vector<const detail::site_group*> groups;
  for (const auto& [k, g] : by_site) groups.push_back(&g);
  std::sort(groups.begin(), groups.end(), [](const detail::site_group* a, const detail::site_group* b) {
    return a->worst->done_for != b->worst->done_for ? a->worst->done_for > b->worst->done_for
                                                    : a->count > b->count;
  });
  std::string s;
  if (f == format::json) {
    s += "{\"threshold_ns\":" + std::to_string(threshold.count()) +
         ",\"tracked\":" + std::to_string(tracked) + ",\"zombies\":" + std::to_string(zs.size()) +
         ",\"sites\":[";
    bool first = true;
    for (const detail::site_group* g : groups) {
      if (!first) s += ',';
      first = false;
      const context_info& w = *g->worst;
      s += "{\"file\":\"";
      detail::append_escaped(s, w.site.file_name());
      s += "\",\"line\":" + std::to_string(w.site.line()) + ",\"function\":\"";
      detail::append_escaped(s, w.site.function_name());
      s += "\",\"kind\":\"" + std::string(to_string(w.kind)) + "\",\"count\":" + std::to_string(g->count) +
           ",\"oldest_done_ns\":" + std::to_string(w.done_for.count()) +
           ",\"outside_refs\":" + std::to_string(g->refs) + ",\"err\":\"" + detail::err_string(w.err) + "\"}";
    }
    s += "],\"contexts\":[";
    for (std::size_t i = 0; i < zs.size() && i < detail_limit; ++i) {
      const context_info& z = zs[i];
      if (i) s += ',';
      s += "{\"id\":" + std::to_string(z.id) + ",\"parent\":" + std::to_string(z.parent) + ",\"kind\":\"" +
           std::string(to_string(z.kind)) + "\",\"file\":\"";
      detail::append_escaped(s, z.site.file_name());
      s += "\",\"line\":" + std::to_string(z.site.line()) + ",\"age_ns\":" + std::to_string(z.age.count()) +
           ",\"done_for_ns\":" + std::to_string(z.done_for.count()) + ",\"err\":\"" +
           detail::err_string(z.err) + "\",\"cause\":\"" + detail::err_string(z.cause) +
           "\",\"outside_refs\":" + std::to_string(z.outside_refs) +
           ",\"children\":" + std::to_string(z.children) + ",\"keys\":[";
      for (std::size_t k = 0; k < z.keys.size(); ++k) {
        if (k) s += ',';
        s += '"';
        detail::append_escaped(s, z.keys[k]);
        s += '"';
      }
      s += "]}";
    }
    s += "]}\n";
    return s;
  }
  s += "ctx zombie report: " + std::to_string(zs.size()) + " context" + (zs.size() == 1 ? "" : "s") +
       " done for >= " + detail::human(threshold) + " and still referenced, among " +
       std::to_string(tracked) + " tracked\n";
  if (!enabled() && tracked == 0)
    s += "(inspection is off: set CTX_INSPECT=1 or call ctx::inspect::enable())\n";
  if (zs.empty()) return s;
  s += "by site, worst first:\n";
  for (const detail::site_group* g : groups) {
    const context_info& w = *g->worst;
    s += "  " + detail::site_string(w.site) + "  " + std::string(to_string(w.kind)) + "  x" +
         std::to_string(g->count) + "  oldest done " + detail::human(w.done_for) + " ago  err " +
         detail::err_string(w.err) + "  in " + w.site.function_name() + "\n";
  }
  s += "worst contexts:\n";
  for (std::size_t i = 0; i < zs.size() && i < detail_limit; ++i) {
    s += "  ";
    s += to_string(zs[i]);
    s += '\n';
  }
  if (zs.size() > detail_limit) s += "  ... " + std::to_string(zs.size() - detail_limit) + " more\n";
  return s;
}

namespace detail {

struct signal_dump {
  int read_fd = -1;
  int write_fd = -1;
  std::chrono::nanoseconds threshold{};
  std::string path;
};

inline std::atomic<int> signal_write_fd{-1};

inline void on_dump_signal(int) {
  const int saved = errno;
  const int fd = signal_write_fd.load(std::memory_order_relaxed);  // lock-free: async-signal-safe
  if (fd >= 0) {
    const char b = 1;
    [[maybe_unused]] const ssize_t r =
        ::write(fd, &b, 1);  // nonblocking: a full pipe already has a dump pending
  }
  errno = saved;
}

inline void write_all(int fd, std::string_view s) noexcept {
  while (!s.empty()) {
    const ssize_t w = ::write(fd, s.data(), s.size());
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    s.remove_prefix(static_cast<std::size_t>(w));
  }
}

/// The dump thread: waits on the pipe, writes a report per wake-up.
inline void dump_loop(signal_dump d) noexcept {
  for (;;) {
    char buf[64];
    const ssize_t r = ::read(d.read_fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return;
    try {
      const std::string text = report(d.threshold);
      if (d.path.empty()) {
        write_all(STDERR_FILENO, text);
      } else if (const int fd = ::open(d.path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                 fd >= 0) {
        write_all(fd, text);
        ::close(fd);
      }
    } catch (...) {  // out of memory: no report this time
    }
  }
}

inline std::atomic<bool> dump_armed{false};

[[nodiscard]] inline int parse_signal(std::string_view v) noexcept {
  if (v.substr(0, 3) == "SIG") v.remove_prefix(3);
  if (v == "USR1") return SIGUSR1;
  if (v == "USR2") return SIGUSR2;
  if (v == "QUIT") return SIGQUIT;
  if (v == "HUP") return SIGHUP;
  int n = 0;
  for (const char ch : v) {
    if (ch < '0' || ch > '9') return 0;
    n = n * 10 + (ch - '0');
    if (n > 64) return 0;
  }
  return n;
}

/// CTX_INSPECT_SIGNAL and friends, read once before main().
inline bool arm_from_environment() noexcept {
  const char* sig = std::getenv("CTX_INSPECT_SIGNAL");
  if (!sig || !*sig) return false;
  const int n = parse_signal(sig);
  if (n <= 0) return false;
  double seconds = 1.0;
  if (const char* t = std::getenv("CTX_INSPECT_THRESHOLD"); t && *t) seconds = std::strtod(t, nullptr);
  const char* file = std::getenv("CTX_INSPECT_FILE");
  try {
    return dump_on_signal(n, std::chrono::nanoseconds(static_cast<std::int64_t>(seconds * 1e9)),
                          file ? std::string(file) : std::string());
  } catch (...) {
    return false;
  }
}
inline const bool armed_from_environment = arm_from_environment();

}  // namespace detail

inline bool dump_on_signal(int sig, std::chrono::nanoseconds threshold, std::string path) {
  if (detail::dump_armed.exchange(true)) return false;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return false;
  // The reading end blocks: only the writer (the handler) must never block.
  ::fcntl(fds[0], F_SETFL, ::fcntl(fds[0], F_GETFL) & ~O_NONBLOCK);
  try {
    std::thread(detail::dump_loop, detail::signal_dump{fds[0], fds[1], threshold, std::move(path)}).detach();
  } catch (...) {
    ::close(fds[0]);
    ::close(fds[1]);
    return false;
  }
  detail::signal_write_fd.store(fds[1], std::memory_order_relaxed);
  enable();
  struct sigaction sa {};
  sa.sa_handler = &detail::on_dump_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  return ::sigaction(sig, &sa, nullptr) == 0;
}

}  // namespace ctx::inspect
