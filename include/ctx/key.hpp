// SPDX-License-Identifier: MIT
// ctx::key<T>: a typed, named key for values carried by a context.
#pragma once

#include <string_view>

namespace ctx {

/// A typed key for `with_value` and `basic_context::value`.
///
/// A key's identity is its address, not its name: two keys with the same name
/// are different keys, so a library cannot collide with its users by
/// accident. Keys are therefore neither copyable nor movable; declare each one
/// once, usually as an `inline constexpr` variable at namespace scope:
///
///     inline constexpr ctx::key<std::string> trace_id{"trace_id"};
///
/// The name is only used for printing (see `<ctx/fmt.hpp>`).
template <class T>
class key {
 public:
  using value_type = T;

  constexpr explicit key(std::string_view name) noexcept : name_(name) {}
  key(const key&) = delete;
  key& operator=(const key&) = delete;

  /// The name given at construction.
  [[nodiscard]] constexpr std::string_view name() const noexcept { return name_; }

 private:
  std::string_view name_;
};

}  // namespace ctx
