// SPDX-License-Identifier: MIT
// {fmt} support (opt-in, target ctx::fmt): formatters for contexts,
// ctx::errc, ctx::inspect's context_info and kind, and std::error_code (what
// every ctx API returns) made formattable.
//
// A context prints as its derivation chain, root first, the way Go's
// Context.String() does:
//
//     background.with_value(trace_id).with_deadline(+1.998s).with_cancel
//
// A deadline prints as the time left when formatting (negative once passed).
// A with_deadline/with_timeout whose parent's deadline was earlier made no
// timer and prints as with_cancel, as in Go. `ctx::errc` prints its message.
//
// `std::error_code` prints as `category:value` ("ctx:1", "system:9"), as its
// operator<< does: with the formatter {fmt} ships, which this header includes
// (<fmt/os.h> in fmt 8 and 9, <fmt/std.h> from fmt 10 on, as fmt's
// changelog records), or, before fmt 8, one defined here that prints the
// same. For the message, format `c.err().message()`.
//
// Thread safety: formatting reads only immutable parts of the chain and the
// clock; it may run concurrently with anything.
#pragma once

#include <fmt/format.h>
// The header where this {fmt} ships its formatter of std::error_code, if any.
#if FMT_VERSION >= 100000
#include <fmt/std.h>
#elif FMT_VERSION >= 80000
#include <fmt/os.h>
#endif

#include <chrono>
#include <string_view>
#include <system_error>
#include <vector>

#include "ctx.hpp"

namespace ctx::detail {

template <class Clock, class Out>
Out format_chain(const node* leaf, Out out) {
  std::vector<const node*> chain;
  for (const node* n = leaf; n; n = n->parent) chain.push_back(n);
  bool first = true;
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
    const node* n = *it;
    if (!first) *out++ = '.';
    first = false;
    switch (n->kind) {
      case node_kind::background:
        out = fmt::format_to(out, "background");
        break;
      case node_kind::todo:
        out = fmt::format_to(out, "todo");
        break;
      case node_kind::cancel:
      case node_kind::inherited_deadline:
        out = fmt::format_to(out, "with_cancel");
        break;
      case node_kind::stop_token:
        out = fmt::format_to(out, "with_stop_token");
        break;
      case node_kind::without_cancel:
        out = fmt::format_to(out, "without_cancel");
        break;
      case node_kind::value:
        out = fmt::format_to(out, "with_value({})", static_cast<const value_node_base*>(n)->key_name);
        break;
      case node_kind::deadline: {
        const auto when = static_cast<const deadline_node<Clock>*>(n)->when;
        if (when == Clock::time_point::max()) {
          out = fmt::format_to(out, "with_deadline(never)");
        } else {
          // Saturated: a time_point::min() deadline is as far in the past as the duration reaches.
          const auto left = std::chrono::duration<double>(saturating_sub(when, Clock::now())).count();
          out = fmt::format_to(out, "with_deadline({:+.3f}s)", left);
        }
        break;
      }
    }
  }
  return out;
}

}  // namespace ctx::detail

/// Formats a context as its derivation chain; takes no format spec.
template <class Clock>
struct fmt::formatter<ctx::basic_context<Clock>> {
  constexpr auto parse(fmt::format_parse_context& pc) {
    auto it = pc.begin();
    if (it != pc.end() && *it != '}') throw fmt::format_error("ctx::basic_context takes no format spec");
    return it;
  }
  template <class FormatContext>
  auto format(const ctx::basic_context<Clock>& c, FormatContext& fc) const {
    return ctx::detail::format_chain<Clock>(ctx::detail::access::of(c), fc.out());
  }
};

/// Formats `ctx::errc` as its message ("context canceled"); string specs apply.
template <>
struct fmt::formatter<ctx::errc> : fmt::formatter<std::string_view> {
  template <class FormatContext>
  auto format(ctx::errc e, FormatContext& fc) const {
    const std::string_view msg = e == ctx::errc::canceled            ? "context canceled"
                                 : e == ctx::errc::deadline_exceeded ? "context deadline exceeded"
                                                                     : "unknown ctx error";
    return fmt::formatter<std::string_view>::format(msg, fc);
  }
};

/// Formats a `ctx::inspect::context_info` (an entry of `live()` or
/// `zombies()`) as the one line of the zombie report, `ctx::inspect::to_string`;
/// string specs apply: `fmt::print("{}\n", z)`.
template <>
struct fmt::formatter<ctx::inspect::context_info> : fmt::formatter<std::string_view> {
  template <class FormatContext>
  auto format(const ctx::inspect::context_info& i, FormatContext& fc) const {
    return fmt::formatter<std::string_view>::format(ctx::inspect::to_string(i), fc);
  }
};

/// Formats `ctx::inspect::kind` as the derivation's name ("with_timeout").
template <>
struct fmt::formatter<ctx::inspect::kind> : fmt::formatter<std::string_view> {
  template <class FormatContext>
  auto format(ctx::inspect::kind k, FormatContext& fc) const {
    return fmt::formatter<std::string_view>::format(ctx::inspect::to_string(k), fc);
  }
};

#if FMT_VERSION < 80000
/// Formats `std::error_code` as `category:value`, like its operator<< and
/// like the formatter that fmt 8 and later ship (which is used instead).
template <>
struct fmt::formatter<std::error_code> {
  constexpr auto parse(fmt::format_parse_context& pc) { return pc.begin(); }
  template <class FormatContext>
  auto format(const std::error_code& e, FormatContext& fc) const {
    return fmt::format_to(fc.out(), "{}:{}", e.category().name(), e.value());
  }
};
#endif
