// SPDX-License-Identifier: MIT
#include <ctx/key.hpp>

#include <string>
#include <type_traits>

#include "support/catch.hpp"

namespace {
inline constexpr ctx::key<std::string> trace_id{"trace_id"};
inline constexpr ctx::key<std::string> other_trace_id{"trace_id"};
}  // namespace

TEST_CASE("a key keeps its name and type", "[key]") {
  STATIC_REQUIRE(std::is_same_v<decltype(trace_id)::value_type, std::string>);
  CHECK(trace_id.name() == "trace_id");
}

TEST_CASE("keys are identified by address, so they cannot be copied", "[key]") {
  STATIC_REQUIRE_FALSE(std::is_copy_constructible_v<ctx::key<int>>);
  STATIC_REQUIRE_FALSE(std::is_move_constructible_v<ctx::key<int>>);
  CHECK(&trace_id != &other_trace_id);
  CHECK(trace_id.name() == other_trace_id.name());
}
