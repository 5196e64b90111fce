// SPDX-License-Identifier: MIT
// The aliases and constants that the unit tests share, so that each test file
// does not define its own copy.
#pragma once

#include <ctx/error.hpp>
#include <ctx/testing.hpp>

#include <system_error>

/// The clock that tests of deadline logic move by hand.
using manual = ctx::testing::manual_clock;

/// err() of a cancelled context and of one whose deadline passed, as
/// std::error_code, to compare with directly.
inline const std::error_code canceled = ctx::errc::canceled;
inline const std::error_code deadline_exceeded = ctx::errc::deadline_exceeded;
