// SPDX-License-Identifier: MIT
// The library version: the one place it is written (CMake reads it from here).
#pragma once

#define CTX_VERSION_MAJOR 0
#define CTX_VERSION_MINOR 1
#define CTX_VERSION_PATCH 0

/// The version as one integer: major * 10000 + minor * 100 + patch.
#define CTX_VERSION (CTX_VERSION_MAJOR * 10000 + CTX_VERSION_MINOR * 100 + CTX_VERSION_PATCH)
