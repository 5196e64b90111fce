// SPDX-License-Identifier: MIT
// What process B of the two-process tests and the wire benchmark tells A,
// for gRPC and HTTP alike: the log line it writes about each call (A reads
// B's log through a pipe). B's work itself is in slow_query.hpp.
#pragma once

#include <ctx/ctx.hpp>
#include <ctx/propagation.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

namespace test {

/// steady_clock in nanoseconds. On Linux it is CLOCK_MONOTONIC, one clock for
/// every process of the machine, so A and B compare their readings directly.
inline std::int64_t steady_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// One call as B saw it.
struct query_event {
  std::string what;                    // "start" or "end"
  std::string kind;                    // the request's kind ("fast", "wait", "slow")
  std::string trace;                   // the context's trace-id, "-" without one
  std::int64_t deadline_left_ns = -1;  // the context's deadline from the call's start, -1 without one
  std::int64_t started_ns = 0;         // steady_ns() when the work began
  std::int64_t ended_ns = 0;           // steady_ns() when it ended (0 in a "start" event)
  std::string cause = "ok";            // the context's cause() then ("ok" while it is live)
  std::string err = "ok";              // how the work ended: "ok" or the error's message
};

/// Records in `e` how the work under `c` ended: its error and `c`'s cause.
inline void end_event(query_event& e, const ctx::context& c, std::error_code ec) {
  e.what = "end";
  e.ended_ns = steady_ns();
  e.err = ec ? ec.message() : "ok";
  e.cause = c.cause() ? c.cause().message() : "ok";
}

/// A query_event for a call about to start under `c`.
inline query_event begin_event(const ctx::context& c, std::string_view kind) {
  query_event e;
  e.what = "start";
  e.kind = kind;
  const auto* tp = c.value(ctx::propagation::trace_key);
  e.trace = tp ? tp->trace_id_hex() : "-";
  if (c.deadline()) e.deadline_left_ns = std::chrono::nanoseconds(c.remaining()).count();
  e.started_ns = steady_ns();
  return e;
}

/// B's log line: `query <what> kind=.. trace=.. deadline_left_ns=.. started_ns=.. ended_ns=..
/// cause=<message> err=<message>` (the messages may hold spaces: cause ends at " err=").
inline std::string format_event(const query_event& e) {
  return "query " + e.what + " kind=" + e.kind + " trace=" + e.trace +
         " deadline_left_ns=" + std::to_string(e.deadline_left_ns) +
         " started_ns=" + std::to_string(e.started_ns) + " ended_ns=" + std::to_string(e.ended_ns) +
         " cause=" + e.cause + " err=" + e.err;
}

/// The event of a log line, or nullopt if the line is not one.
inline std::optional<query_event> parse_event(std::string_view line) {
  constexpr std::string_view prefix = "query ";
  if (line.substr(0, prefix.size()) != prefix) return std::nullopt;
  line.remove_prefix(prefix.size());
  query_event e;
  const std::size_t sp = line.find(' ');
  e.what = std::string(line.substr(0, sp));
  if (sp == std::string_view::npos) return std::nullopt;
  line.remove_prefix(sp);  // keeps the space: every field is preceded by one
  // Each value runs to the next " " (or, for cause, to " err="; err runs to the end).
  auto field = [&](std::string_view key, std::string_view until) -> std::optional<std::string> {
    std::string k(1, ' ');
    k.append(key).append(1, '=');
    const std::size_t at = line.find(k);
    if (at == std::string_view::npos) return std::nullopt;
    const std::size_t from = at + k.size();
    const std::size_t to = until.empty() ? std::string_view::npos : line.find(until, from);
    return std::string(line.substr(from, to == std::string_view::npos ? line.size() - from : to - from));
  };
  const auto kind = field("kind", " "), trace = field("trace", " "), left = field("deadline_left_ns", " "),
             started = field("started_ns", " "), ended = field("ended_ns", " "),
             cause = field("cause", " err="), err = field("err", "");
  if (!kind || !trace || !left || !started || !ended || !cause || !err) return std::nullopt;
  e.cause = *cause;
  e.kind = *kind;
  e.trace = *trace;
  e.deadline_left_ns = std::strtoll(left->c_str(), nullptr, 10);
  e.started_ns = std::strtoll(started->c_str(), nullptr, 10);
  e.ended_ns = std::strtoll(ended->c_str(), nullptr, 10);
  e.err = *err;
  return e;
}

/// Writes B's log line to standard output, flushed (A reads it at once).
inline void log_event(const query_event& e) {
  const std::string line = format_event(e) + "\n";
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);
}

}  // namespace test
