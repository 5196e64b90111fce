// SPDX-License-Identifier: MIT
// Command-line parsing for the demo.
#include "options.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string_view>

namespace demo {
namespace {

constexpr const char* usage = R"(usage: ninety_seconds [flags]

Replays the ninety-second request: a service whose downstream stalls on a
share of calls, under load, first without ctx (--ignore-context: every leaf
gets ctx::background()), then with ctx (the request's context reaches every
leaf). Prints live progress, then both runs side by side, and writes a chart.

  --ignore-context       only the run without ctx
  --with-context         only the run with ctx
  --deadline D           each request's deadline (default 2s)
  --threads N            handler threads of the service (default 32)
  --connections N        database connections in the pool (default 10)
  --postgres CONNINFO    PostgreSQL through ctx::postgres instead of SQLite
                         ("" takes libpq's PG* environment variables)
  --stall D              how long a stalled downstream call hangs (default 30s)
  --stall-share P        share of downstream calls that stall, 0..1 or N% (default 1.5%)
  --concurrency N        callers, one request at a time each (default 200)
  --rate R               requests per second, all callers together (default 200)
  --duration D           how long the callers send (default 8s)
  --caller-timeout D     a caller gives up after D (default: deadline + 1s)
  --cutoff D             after the load stops, wait at most D for the service to be
                         idle, then release the downstream's stalls (default: deadline + 3s)
  --chart PATH           where to write the SVG chart (default ninety_seconds.svg)
  --check                exit 1 unless the with-ctx run kept its guarantees (the test)
  --margin D             slack over the deadline that --check allows (default 1s)
  --help

Durations take a unit: 500ms, 2s, 1.5s.
)";

/// "500ms", "2s", "1.5s" -> milliseconds.
std::optional<milliseconds> parse_duration(std::string_view s) {
  double value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc{} || value < 0) return std::nullopt;
  const std::string_view unit(end, static_cast<std::size_t>(s.data() + s.size() - end));
  double ms = 0;
  if (unit == "ms") {
    ms = value;
  } else if (unit == "s") {
    ms = value * 1000;
  } else {
    return std::nullopt;
  }
  return milliseconds(std::llround(ms));
}

std::optional<double> parse_number(std::string_view s) {
  double value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc{} || end != s.data() + s.size()) return std::nullopt;
  return value;
}

}  // namespace

std::optional<options> parse_options(int argc, char** argv, int& exit_code) {
  options o;
  bool caller_timeout_given = false;
  bool cutoff_given = false;
  const auto fail = [&](const std::string& why) -> std::optional<options> {
    std::fprintf(stderr, "ninety_seconds: %s\n\n%s", why.c_str(), usage);
    exit_code = 2;
    return std::nullopt;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(usage, stdout);
      exit_code = 0;
      return std::nullopt;
    }
    if (flag == "--ignore-context") {
      o.which = runs::ignore_context;
      continue;
    }
    if (flag == "--with-context") {
      o.which = runs::with_context;
      continue;
    }
    if (flag == "--check") {
      o.check = true;
      continue;
    }
    if (i + 1 >= argc) return fail("missing value after " + std::string(flag));
    const std::string_view value = argv[++i];
    const auto duration = [&](milliseconds& out) {
      const auto d = parse_duration(value);
      if (d) out = *d;
      return d.has_value();
    };
    const auto count = [&](int& out, int min) {
      const auto n = parse_number(value);
      if (!n || *n < min || *n > 100000 || *n != std::floor(*n)) return false;
      out = static_cast<int>(*n);
      return true;
    };
    bool ok = true;
    if (flag == "--deadline") {
      ok = duration(o.deadline) && o.deadline.count() > 0;
    } else if (flag == "--threads") {
      ok = count(o.threads, 1);
    } else if (flag == "--connections") {
      ok = count(o.connections, 1);
    } else if (flag == "--postgres") {
      o.postgres = std::string(value);
    } else if (flag == "--stall") {
      ok = duration(o.stall);
    } else if (flag == "--stall-share") {
      std::string_view v = value;
      const bool percent = !v.empty() && v.back() == '%';
      if (percent) v.remove_suffix(1);
      const auto share = parse_number(v);
      ok = share.has_value();
      if (ok) o.stall_share = percent ? *share / 100 : *share;
      ok = ok && o.stall_share >= 0 && o.stall_share <= 1;
    } else if (flag == "--concurrency") {
      ok = count(o.concurrency, 1);
    } else if (flag == "--rate") {
      const auto r = parse_number(value);
      ok = r && *r > 0;
      if (ok) o.rate = *r;
    } else if (flag == "--duration") {
      ok = duration(o.duration) && o.duration.count() > 0;
    } else if (flag == "--caller-timeout") {
      ok = duration(o.caller_timeout) && o.caller_timeout.count() > 0;
      caller_timeout_given = true;
    } else if (flag == "--cutoff") {
      ok = duration(o.cutoff);
      cutoff_given = true;
    } else if (flag == "--chart") {
      o.chart = std::string(value);
    } else if (flag == "--margin") {
      ok = duration(o.margin);
    } else {
      return fail("unknown flag " + std::string(flag));
    }
    if (!ok) return fail("bad value for " + std::string(flag) + ": " + std::string(value));
  }
  if (!caller_timeout_given) o.caller_timeout = o.deadline + milliseconds(1000);
  if (!cutoff_given) o.cutoff = o.deadline + milliseconds(3000);
  return o;
}

std::string format_duration(clock::duration d) {
  const double ms = std::chrono::duration<double, std::milli>(d).count();
  char buf[32];
  if (std::fabs(ms) < 1000) {
    std::snprintf(buf, sizeof buf, "%.0f ms", ms);
  } else {
    std::snprintf(buf, sizeof buf, "%.*f s", std::fmod(ms, 1000) == 0 ? 0 : (std::fabs(ms) < 10000 ? 2 : 1),
                  ms / 1000);
  }
  return buf;
}

std::string format_seconds(double s) {
  return format_duration(std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(s)));
}

}  // namespace demo
