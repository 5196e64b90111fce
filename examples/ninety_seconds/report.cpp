// SPDX-License-Identifier: MIT
#include "report.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <fstream>
#include <string_view>

namespace demo {
namespace {

std::string printf_string(const char* format, ...) __attribute__((format(printf, 1, 2)));
std::string printf_string(const char* format, ...) {
  va_list args;
  va_start(args, format);
  va_list again;
  va_copy(again, args);
  const int n = std::vsnprintf(nullptr, 0, format, args);
  va_end(args);
  std::string s(n > 0 ? static_cast<std::size_t>(n) : 0, '\0');
  std::vsnprintf(s.data(), s.size() + 1, format, again);
  va_end(again);
  return s;
}

std::string title_of(const run_result& r) { return r.ignore_context ? "without ctx" : "with ctx"; }

std::string percent(long part, long whole) {
  return whole == 0
             ? ""
             : printf_string(" (%.0f %%)", 100.0 * static_cast<double>(part) / static_cast<double>(whole));
}

std::string latency(std::chrono::steady_clock::duration d) {
  const double ms = std::chrono::duration<double, std::milli>(d).count();
  if (ms < 10) return printf_string("%.1f ms", ms);
  if (ms < 1000) return printf_string("%.0f ms", ms);
  return printf_string("%.2f s", ms / 1000);
}

/// The p-quantile (nearest rank) of what the callers saw, a caller that gave
/// up counting as "more than its timeout".
std::string quantile(std::vector<call> calls, double p, std::chrono::milliseconds caller_timeout) {
  if (calls.empty()) return "-";
  std::sort(calls.begin(), calls.end(), [](const call& a, const call& b) {
    return a.gave_up != b.gave_up ? b.gave_up : a.took < b.took;  // those who gave up last
  });
  const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(calls.size())));
  const call& c = calls[std::clamp<std::size_t>(rank, 1, calls.size()) - 1];
  return c.gave_up ? "> " + format_duration(caller_timeout) + " (gave up)" : latency(c.took);
}

/// The first sample at or after `t`, or the last one.
const sample& sample_at(const run_result& r, double t) {
  static const sample none;
  if (r.samples.empty()) return none;
  for (const sample& s : r.samples)
    if (s.t >= t) return s;
  return r.samples.back();
}

template <class F>
int peak(const run_result& r, F f) {
  int m = 0;
  for (const sample& s : r.samples) m = std::max(m, f(s.g));
  return m;
}

}  // namespace

// --- progress ------------------------------------------------------------------

progress::progress(std::FILE* out) : out_(out), tty_(::isatty(::fileno(out)) != 0) {}

void progress::start(const std::string& title, int threads, int connections) {
  const std::lock_guard lock(m_);
  clear_locked();
  threads_ = threads;
  connections_ = connections;
  printed_at_ = -1;
  std::fprintf(out_, "\n%s\n", title.c_str());
  std::fflush(out_);
}

void progress::update(const sample& s) {
  const std::lock_guard lock(m_);
  if (!tty_ && printed_at_ >= 0 && s.t < printed_at_ + 1.0) return;
  printed_at_ = s.t;
  std::string line = printf_string(
      "  %5.1f s  sent %5ld  ok %5ld  errors %4ld  gave up %4ld | threads busy %3d/%d  queued %4d  "
      "db %2d/%d  downstream %3d",
      s.t, s.sent, s.ok, s.errors, s.gave_up, s.g.threads_busy, threads_, s.g.queued, s.g.db_checked_out,
      connections_, s.g.downstream);
  if (tty_) {
    // One line that rewrites itself: it must not wrap.
    winsize w{};
    if (::ioctl(::fileno(out_), TIOCGWINSZ, &w) == 0 && w.ws_col > 1 && line.size() >= w.ws_col)
      line.resize(static_cast<std::size_t>(w.ws_col) - 1);
    std::fprintf(out_, "\r\033[K%s", line.c_str());
    live_ = true;
  } else {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void progress::event(const std::string& line) {
  const std::lock_guard lock(m_);
  clear_locked();
  std::fprintf(out_, "  -> %s\n", line.c_str());
  std::fflush(out_);
}

void progress::done() {
  const std::lock_guard lock(m_);
  clear_locked();
}

void progress::clear_locked() {
  if (live_) std::fputs("\r\033[K", out_);
  live_ = false;
}

// --- the table -----------------------------------------------------------------

void print_table(std::FILE* out, const std::vector<run_result>& runs, const options& o) {
  constexpr int label_width = 44;
  constexpr int column_width = 30;
  const auto row = [&](const std::string& label, const auto& cell) {
    std::fprintf(out, "%-*s", label_width, label.c_str());
    for (const run_result& r : runs) std::fprintf(out, "  %-*s", column_width, std::string(cell(r)).c_str());
    std::fputc('\n', out);
  };
  const auto count_if = [](const run_result& r, auto pred) {
    return static_cast<long>(std::count_if(r.calls.begin(), r.calls.end(), pred));
  };

  std::fputc('\n', out);
  row("", [](const run_result& r) { return title_of(r) + (r.ignore_context ? " (--ignore-context)" : ""); });
  row("", [](const run_result&) { return std::string(column_width, '-'); });
  row("requests sent", [](const run_result& r) { return std::to_string(r.calls.size()); });
  row("  served (200 OK)", [&](const run_result& r) {
    const long n = count_if(r, [](const call& c) { return c.status == 200; });
    return std::to_string(n) + percent(n, static_cast<long>(r.calls.size()));
  });
  row("  failed: 504 at the request's deadline", [&](const run_result& r) {
    const long n = count_if(r, [](const call& c) { return c.status == 504; });
    return std::to_string(n) + percent(n, static_cast<long>(r.calls.size()));
  });
  row("  failed: other errors", [&](const run_result& r) {
    return std::to_string(
        count_if(r, [](const call& c) { return !c.gave_up && c.status != 200 && c.status != 504; }));
  });
  row("  failed: the caller gave up (" + format_duration(o.caller_timeout) + ")", [&](const run_result& r) {
    const long n = count_if(r, [](const call& c) { return c.gave_up; });
    return std::to_string(n) + percent(n, static_cast<long>(r.calls.size()));
  });
  row("latency p50, as the callers saw it",
      [&](const run_result& r) { return quantile(r.calls, 0.50, o.caller_timeout); });
  row("latency p99", [&](const run_result& r) { return quantile(r.calls, 0.99, o.caller_timeout); });
  row("handler threads busy, peak", [](const run_result& r) {
    return std::to_string(peak(r, [](const service_gauges& g) { return g.threads_busy; })) + " of " +
           std::to_string(r.threads);
  });
  row("DB connections checked out, peak", [](const run_result& r) {
    return std::to_string(peak(r, [](const service_gauges& g) { return g.db_checked_out; })) + " of " +
           std::to_string(r.connections);
  });
  row("downstream calls in flight, peak", [](const run_result& r) {
    return std::to_string(peak(r, [](const service_gauges& g) { return g.downstream; }));
  });
  row("requests queued for a thread, peak", [](const run_result& r) {
    return std::to_string(peak(r, [](const service_gauges& g) { return g.queued; }));
  });
  row("when the load stopped: threads / DB / calls", [](const run_result& r) {
    const sample& s = sample_at(r, r.load_stop);
    return std::to_string(s.g.threads_busy) + " / " + std::to_string(s.g.db_checked_out) + " / " +
           std::to_string(s.g.downstream);
  });
  row("idle again after the load stopped", [&](const run_result& r) {
    if (r.idle_after) return format_seconds(*r.idle_after);
    return "not within " + format_duration(o.cutoff) + ": cut off";
  });
  if (std::any_of(runs.begin(), runs.end(), [](const run_result& r) { return r.at_cutoff.has_value(); })) {
    row("  held at the cut-off: threads / DB / calls", [](const run_result& r) -> std::string {
      if (!r.at_cutoff) return "-";
      const sample& s = *r.at_cutoff;
      return std::to_string(s.g.threads_busy) + " / " + std::to_string(s.g.db_checked_out) + " / " +
             std::to_string(s.g.downstream) + ", " + std::to_string(s.g.queued) + " queued";
    });
    row("  idle once the stalls were released", [](const run_result& r) -> std::string {
      return r.idle_after_release ? format_seconds(*r.idle_after_release) : "-";
    });
  }
  row("connection held past its request's deadline", [](const run_result& r) {
    if (r.holds.past_deadline == 0) return std::string("never");
    return std::to_string(r.holds.past_deadline) + " times, by up to " + latency(r.holds.worst_overshoot);
  });
  row("downstream calls: stalled / caller hung up", [](const run_result& r) {
    return std::to_string(r.downstream_stalled) + " / " + std::to_string(r.downstream_abandoned);
  });
  row("audit lines written (detached work)", [](const run_result& r) {
    return std::to_string(r.counts.audits_written) + " of " +
           std::to_string(r.counts.audits_written + r.counts.audits_failed);
  });
  std::fputc('\n', out);
  std::fflush(out);
}

// --- the chart -----------------------------------------------------------------

namespace {

/// A step for about `n` ticks over [0, max]: 1, 2 or 5 times a power of ten.
double tick_step(double max, int n) {
  const double raw = max / n;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * p >= raw) return m * p;
  return 10 * p;
}

std::string escape(std::string_view s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      default:
        out += ch;
    }
  }
  return out;
}

}  // namespace

bool write_chart(const std::string& path, const std::vector<run_result>& runs, const options& o,
                 std::string& error) {
  constexpr double panel_w = 400, panel_h = 250, left0 = 60, top = 56, gap = 90;
  const double width = left0 + static_cast<double>(runs.size()) * (panel_w + gap) - gap + 30;
  const double height = top + panel_h + 110;
  double t_max = 1, y_max = 1;
  for (const run_result& r : runs) {
    if (!r.samples.empty()) t_max = std::max(t_max, r.samples.back().t);
    y_max = std::max({y_max, static_cast<double>(r.threads), static_cast<double>(r.connections)});
  }
  y_max *= 1.08;
  const double t_step = tick_step(t_max, 6), y_step = tick_step(y_max, 5);
  const char* blue = "#1f5fa8";
  const char* orange = "#e07b00";

  std::string svg = printf_string(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
      "font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
      width, height, width, height);
  svg += printf_string(
      "<text x=\"%.0f\" y=\"22\" font-size=\"15\" font-weight=\"bold\">The ninety-second request: a "
      "downstream "
      "that stalls %.3g %% of calls for %s, deadline %s</text>\n",
      left0, o.stall_share * 100, escape(format_duration(o.stall)).c_str(),
      escape(format_duration(o.deadline)).c_str());

  for (std::size_t i = 0; i < runs.size(); ++i) {
    const run_result& r = runs[i];
    const double left = left0 + static_cast<double>(i) * (panel_w + gap);
    const auto x = [&](double t) { return left + t / t_max * panel_w; };
    const auto y = [&](double v) { return top + panel_h - v / y_max * panel_h; };

    svg += printf_string("<text x=\"%.1f\" y=\"%.1f\" font-size=\"14\" font-weight=\"bold\">%s</text>\n",
                         left, top - 12,
                         escape(title_of(r) + (r.ignore_context ? " (--ignore-context)" : "")).c_str());
    // The load, as a band.
    svg += printf_string("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#eeeeee\"/>\n",
                         x(0), top, x(r.load_stop) - x(0), panel_h);
    svg += printf_string("<text x=\"%.1f\" y=\"%.1f\" fill=\"#777\">load: %d callers</text>\n", x(0) + 4,
                         top + 14, o.concurrency);
    // Grid and axes.
    for (double v = 0; v <= y_max; v += y_step) {
      svg += printf_string("<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", left,
                           left + panel_w, y(v), y(v));
      svg += printf_string("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"#444\">%g</text>\n",
                           left - 6, y(v) + 4, v);
    }
    for (double t = 0; t <= t_max; t += t_step)
      svg += printf_string("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#444\">%g</text>\n",
                           x(t), top + panel_h + 16, t);
    svg += printf_string(
        "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#444\">seconds since the load "
        "started</text>\n",
        left + panel_w / 2, top + panel_h + 34);
    svg += printf_string(
        "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#888\"/>\n", left,
        top, panel_w, panel_h);
    // Capacities.
    svg += printf_string(
        "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-dasharray=\"4 3\" "
        "stroke-width=\"1\"/>\n",
        left, left + panel_w, y(r.threads), y(r.threads), blue);
    svg += printf_string(
        "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"%s\" font-size=\"11\">%d threads</text>\n",
        left + panel_w - 4, y(r.threads) - 4, blue, r.threads);
    svg += printf_string(
        "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-dasharray=\"4 3\" "
        "stroke-width=\"1\"/>\n",
        left, left + panel_w, y(r.connections), y(r.connections), orange);
    svg += printf_string(
        "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"%s\" font-size=\"11\">%d "
        "connections</text>\n",
        left + panel_w - 4, y(r.connections) - 4, orange, r.connections);
    // The cut-off.
    if (r.at_cutoff) {
      const double xc = x(r.at_cutoff->t);
      svg += printf_string(
          "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#c00\" stroke-dasharray=\"5 "
          "3\"/>\n",
          xc, xc, top, top + panel_h);
      svg += printf_string(
          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"#c00\" font-size=\"11\">cut-off: stalls "
          "released</text>\n",
          xc - 4, top + 28);
    }
    // The series.
    const auto series = [&](auto value, const char* colour) {
      std::string points;
      for (const sample& s : r.samples) points += printf_string("%.1f,%.1f ", x(s.t), y(value(s.g)));
      svg += printf_string(
          "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\" "
          "stroke-linejoin=\"round\"/>\n",
          points.c_str(), colour);
    };
    series([](const service_gauges& g) { return g.threads_busy; }, blue);
    series([](const service_gauges& g) { return g.db_checked_out; }, orange);
  }

  // Legend and footnote.
  const double ly = top + panel_h + 60;
  svg += printf_string(
      "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>"
      "<text x=\"%.1f\" y=\"%.1f\">handler threads busy</text>\n",
      left0, left0 + 24, ly, ly, blue, left0 + 30, ly + 4);
  svg += printf_string(
      "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>"
      "<text x=\"%.1f\" y=\"%.1f\">database connections checked out</text>\n",
      left0 + 190, left0 + 214, ly, ly, orange, left0 + 220, ly + 4);
  svg += printf_string(
      "<rect x=\"%.1f\" y=\"%.1f\" width=\"24\" height=\"10\" fill=\"#eeeeee\"/>"
      "<text x=\"%.1f\" y=\"%.1f\">callers sending</text>\n",
      left0 + 440, ly - 5, left0 + 470, ly + 4);
  svg += printf_string(
      "<text x=\"%.1f\" y=\"%.1f\" fill=\"#666\" font-size=\"11\">Sampled every %s. %d handler threads, %d "
      "connections (%s), %d callers at %g requests/s for %s; a caller gives up after %s.</text>\n",
      left0, ly + 26, escape(format_duration(o.sample_every)).c_str(), o.threads, o.connections,
      escape(runs.empty() ? "" : runs.front().database).c_str(), o.concurrency, o.rate,
      escape(format_duration(o.duration)).c_str(), escape(format_duration(o.caller_timeout)).c_str());
  svg += "</svg>\n";

  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << svg;
  f.close();
  if (!f) {
    error = "cannot write " + path;
    return false;
  }
  return true;
}

}  // namespace demo
