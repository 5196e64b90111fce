#!/usr/bin/env bash
# Installs ctx to a scratch prefix, then builds and runs the consumer against
# it with find_package, add_subdirectory, FetchContent and pkg-config, and
# checks that a plain `cmake -B b && cmake --install b` needs no Catch2.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cxx=${CXX:-c++}

# What a first-time user types, with Catch2 hidden: configures (tests skipped with a
# warning), installs. Asked for explicitly, the tests make a missing Catch2 an error.
cmake -S "$src" -B "$work/plain" -DCMAKE_DISABLE_FIND_PACKAGE_Catch2=ON >"$work/plain.log" 2>&1 ||
  { cat "$work/plain.log"; echo "package: plain configure without Catch2 FAILED"; exit 1; }
grep -q "Catch2 was not found, so the tests are not built" "$work/plain.log"
cmake --install "$work/plain" --prefix "$work/plain-prefix" >/dev/null
if cmake -S "$src" -B "$work/explicit" -DCTX_BUILD_TESTS=ON -DCMAKE_DISABLE_FIND_PACKAGE_Catch2=ON >/dev/null 2>&1; then
  echo "package: -DCTX_BUILD_TESTS=ON without Catch2 configured, but must fail"
  exit 1
fi
echo "package: plain configure + install without Catch2 ok"

cmake -S "$src" -B "$work/build" -G Ninja -DCTX_BUILD_TESTS=OFF -DCTX_BUILD_EXAMPLES=OFF -DCTX_INSTALL=ON >/dev/null
cmake --install "$work/build" --prefix "$work/prefix" >/dev/null
test -f "$work/prefix/share/cmake/ctx/ctxConfig.cmake"
for mode in find_package subdirectory fetchcontent; do
  cmake -S "$src/tests/package" -B "$work/$mode" -G Ninja --no-warn-unused-cli -DCTX_CONSUME=$mode \
        -DCMAKE_PREFIX_PATH="$work/prefix" -DCTX_SOURCE_DIR="$src" >/dev/null
  cmake --build "$work/$mode" >/dev/null
  "$work/$mode/consumer"
  for opt in fmt curl redis grpc; do
    if [ -x "$work/$mode/consumer_$opt" ]; then "$work/$mode/consumer_$opt"; fi
  done
  echo "package: $mode ok"
done

# pkg-config: the consumer, and for every optional target installed
# (ctx-<name>.pc) its consumer, or else a program that includes its header.
export PKG_CONFIG_PATH="$work/prefix/share/pkgconfig"
# shellcheck disable=SC2046  # the flags are meant to split into words
"$cxx" -std=c++20 -o "$work/pc_consumer" "$src/tests/package/main.cpp" $(pkg-config --cflags --libs ctx)
"$work/pc_consumer"
checked=ctx
for pc in "$work/prefix/share/pkgconfig"/ctx-*.pc; do
  [ -e "$pc" ] || continue
  name=$(basename "$pc" .pc)
  name=${name#ctx-}
  main="$src/tests/package/main_$name.cpp"
  if [ ! -f "$main" ]; then
    main="$work/main_$name.cpp"
    printf '#include <ctx/%s.hpp>\nint main() { return 0; }\n' "$name" >"$main"
  fi
  # shellcheck disable=SC2046
  "$cxx" -std=c++20 -o "$work/pc_consumer_$name" "$main" $(pkg-config --cflags --libs "ctx-$name")
  "$work/pc_consumer_$name"
  checked="$checked ctx-$name"
done
echo "package: pkg-config ok ($checked)"
