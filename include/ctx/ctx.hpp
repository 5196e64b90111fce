// SPDX-License-Identifier: MIT
// The core of ctx: contexts, derivations, cancel handles, keys, errors and inspection.
#pragma once

#include "context.hpp"  // IWYU pragma: export
#include "error.hpp"    // IWYU pragma: export
#include "inspect.hpp"  // IWYU pragma: export
#include "key.hpp"      // IWYU pragma: export
#include "version.hpp"  // IWYU pragma: export
