// SPDX-License-Identifier: MIT
// Includes Catch2 v3 or v2, whichever the build found; tests include only this.
#pragma once

#if CTX_CATCH_V3
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#else
#include <catch2/catch.hpp>
#endif
