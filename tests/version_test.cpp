// SPDX-License-Identifier: MIT
#include <ctx/version.hpp>

#include "support/catch.hpp"

TEST_CASE("the version macros agree with each other", "[version]") {
  STATIC_REQUIRE(CTX_VERSION == CTX_VERSION_MAJOR * 10000 + CTX_VERSION_MINOR * 100 + CTX_VERSION_PATCH);
  STATIC_REQUIRE(CTX_VERSION_MAJOR >= 0);
}
