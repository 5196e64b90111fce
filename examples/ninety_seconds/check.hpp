// SPDX-License-Identifier: MIT
// --check: the guarantees of the run with ctx, asserted from the demo's own
// measurements (the test runs a shortened demo with it).
#pragma once

#include <cstdio>
#include <vector>

#include "options.hpp"
#include "scenario.hpp"

namespace demo {

/// Prints every check with what was measured; true if all hold.
///
/// With ctx: every handler thread and every database connection is back
/// within deadline + margin after the load stopped (nothing queued either),
/// the run ended without the cut-off, and no request held a connection for
/// longer than margin past its deadline. Without ctx (when that run was
/// made): the pile-up showed, i.e. threads or connections were still held at
/// the cut-off.
[[nodiscard]] bool check_guarantees(std::FILE* out, const std::vector<run_result>& runs, const options& o);

}  // namespace demo
