#!/usr/bin/env bash
# Runs the model-based fuzzer of <ctx/context.hpp> for a bounded time under
# ASan + UBSan (clang's libFuzzer), starting from the committed corpus.
#
#   tests/fuzz/run.sh [SECONDS]          fuzz for SECONDS (default 60) from corpus/ and regressions/;
#                                        new inputs go to a temporary dir
#   tests/fuzz/run.sh --update-corpus N  fuzz N seconds, then minimise everything into tests/fuzz/corpus
#
# A mismatch with the model, a sanitizer report or a leak stops the run with a
# non-zero exit and writes the input to build/fuzz/crash-*; replay it with
# build/fuzz/tests/fuzz/ctx_context_fuzzer FILE.
set -euo pipefail
cd "$(dirname "$0")/../.."
update=0
if [[ "${1:-}" == "--update-corpus" ]]; then
  update=1
  shift
fi
seconds="${1:-60}"

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz --target ctx_context_fuzzer -j2
fuzzer="$PWD/build/fuzz/tests/fuzz/ctx_context_fuzzer"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp tests/fuzz/corpus/* tests/fuzz/regressions/* "$work/"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:quarantine_size_mb=64" UBSAN_OPTIONS="print_stacktrace=1"
cd build/fuzz
# grep hides libFuzzer's chatter; the exit status is the fuzzer's. (Not
# `pipeline || true`: PIPESTATUS would then be that of `true`, and a failed
# run would be reported as a pass.)
set +e
"$fuzzer" -max_total_time="$seconds" -max_len=256 -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 "$work" 2>&1 |
  grep -E '^(#[0-9]+ +(INITED|DONE)|Done|stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|ctx fuzz)'
status=${PIPESTATUS[0]}
set -e
if [[ $status -ne 0 ]]; then
  echo "fuzz: FAILED (exit $status); the input is in build/fuzz/crash-*" >&2
  exit "$status"
fi
if [[ $update -eq 1 ]]; then
  # Keep a small corpus: the fewest inputs that cover every edge reached.
  fresh="$(mktemp -d)"
  "$fuzzer" -set_cover_merge=1 -use_counters=0 "$fresh" "$work" ../../tests/fuzz/corpus >/dev/null 2>&1
  rm -f ../../tests/fuzz/corpus/*
  cp "$fresh"/* ../../tests/fuzz/corpus/
  rm -rf "$fresh"
  echo "fuzz: corpus now $(ls ../../tests/fuzz/corpus | wc -l) files"
fi
echo "fuzz: OK, ${seconds}s, no mismatch with the model, no sanitizer report"
