// SPDX-License-Identifier: MIT
// Why a context is done: ctx::errc, its std::error_category, and ctx::error.
#pragma once

#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

namespace ctx {

/// The two reasons a context can be done, as reported by `basic_context::err()`.
///
/// `errc` is a `std::is_error_code_enum`, so it converts to `std::error_code` and
/// compares equal to one. Both values are equivalent to the portable
/// `std::errc` conditions: `canceled == std::errc::operation_canceled` and
/// `deadline_exceeded == std::errc::timed_out`, so code that only knows the
/// standard conditions still recognises them.
enum class errc {
  canceled = 1,           ///< "context canceled": a cancel handle was called or destroyed.
  deadline_exceeded = 2,  ///< "context deadline exceeded": the deadline passed.
};

/// The category of `ctx::errc`; its name is "ctx".
[[nodiscard]] const std::error_category& category() noexcept;

/// Makes a `std::error_code` of `ctx::category()`; found by argument-dependent lookup.
[[nodiscard]] inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), category()};
}

/// The exception thrown by `basic_context::throw_if_done()`.
///
/// `code()` is the context's `err()`; `cause()` is its `cause()`, which equals
/// `code()` unless a cause was given to the cancel handle or the deadline.
class error : public std::system_error {
 public:
  explicit error(std::error_code err, std::error_code cause = {})
      : std::system_error(err), cause_(cause ? cause : err) {}

  /// The recorded cause of the cancellation (never empty).
  [[nodiscard]] const std::error_code& cause() const noexcept { return cause_; }

 private:
  std::error_code cause_;
};

namespace detail {

class ctx_category final : public std::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "ctx"; }

  [[nodiscard]] std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
      case errc::canceled:
        return "context canceled";
      case errc::deadline_exceeded:
        return "context deadline exceeded";
    }
    return "unknown ctx error " + std::to_string(value);
  }

  [[nodiscard]] std::error_condition default_error_condition(int value) const noexcept override {
    switch (static_cast<errc>(value)) {
      case errc::canceled:
        return std::errc::operation_canceled;
      case errc::deadline_exceeded:
        return std::errc::timed_out;
    }
    return {value, *this};
  }
};

inline const ctx_category category_instance{};

}  // namespace detail

inline const std::error_category& category() noexcept { return detail::category_instance; }

}  // namespace ctx

template <>
struct std::is_error_code_enum<ctx::errc> : std::true_type {};
