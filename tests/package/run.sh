#!/usr/bin/env bash
# Installs ctx to a scratch prefix, then builds and runs the consumer against
# it with find_package, add_subdirectory and FetchContent.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake -S "$src" -B "$work/build" -G Ninja -DCTX_BUILD_TESTS=OFF -DCTX_BUILD_EXAMPLES=OFF -DCTX_INSTALL=ON >/dev/null
cmake --install "$work/build" --prefix "$work/prefix" >/dev/null
test -f "$work/prefix/share/cmake/ctx/ctxConfig.cmake"
for mode in find_package subdirectory fetchcontent; do
  cmake -S "$src/tests/package" -B "$work/$mode" -G Ninja --no-warn-unused-cli -DCTX_CONSUME=$mode \
        -DCMAKE_PREFIX_PATH="$work/prefix" -DCTX_SOURCE_DIR="$src" >/dev/null
  cmake --build "$work/$mode" >/dev/null
  "$work/$mode/consumer"
  if [ -x "$work/$mode/consumer_fmt" ]; then "$work/$mode/consumer_fmt"; fi
  if [ -x "$work/$mode/consumer_grpc" ]; then "$work/$mode/consumer_grpc"; fi
  echo "package: $mode ok"
done
