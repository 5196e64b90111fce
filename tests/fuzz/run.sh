#!/usr/bin/env bash
# Runs a libFuzzer target for a bounded time under ASan + UBSan (clang's
# libFuzzer, built in the `asan` preset's tree), starting from its committed corpus.
#
#   tests/fuzz/run.sh [--fuzzer NAME] [SECONDS]          fuzz for SECONDS (default 60); new inputs go to a temporary dir
#   tests/fuzz/run.sh [--fuzzer NAME] --update-corpus N  fuzz N seconds, then minimise everything into the corpus
#
# NAME is `context` (default: the model-based fuzzer of <ctx/context.hpp>,
# corpus tests/fuzz/corpus, also seeded with the inputs that once found a bug,
# tests/fuzz/regressions) or `propagation` (the decoders of
# <ctx/propagation.hpp>, corpus tests/fuzz/corpus_propagation).
#
# A mismatch with the model, a failed property, a sanitizer report or a leak
# stops the run with a non-zero exit and writes the input to
# build/asan/crash-*; replay it with build/asan/tests/fuzz/ctx_NAME_fuzzer FILE.
set -euo pipefail
cd "$(dirname "$0")/../.."
update=0
name=context
while [[ $# -gt 0 ]]; do
  case "$1" in
    --update-corpus) update=1; shift ;;
    --fuzzer) name="$2"; shift 2 ;;
    *) break ;;
  esac
done
seconds="${1:-60}"
case "$name" in
  context) corpus=tests/fuzz/corpus seeds=(tests/fuzz/regressions) max_len=256 extra=() ;;
  propagation) corpus=tests/fuzz/corpus_propagation seeds=() max_len=128 extra=(-dict="$PWD/tests/fuzz/propagation.dict") ;;
  *) echo "fuzz: unknown fuzzer '$name' (context, propagation)" >&2; exit 2 ;;
esac

cmake --preset asan >/dev/null
cmake --build --preset asan --target "ctx_${name}_fuzzer" -j2
fuzzer="$PWD/build/asan/tests/fuzz/ctx_${name}_fuzzer"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$corpus"/* "$work/"
for dir in "${seeds[@]}"; do cp "$dir"/* "$work/"; done  # inputs that once found a bug
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:quarantine_size_mb=64" UBSAN_OPTIONS="print_stacktrace=1"
cd build/asan
# grep hides libFuzzer's chatter; the status is the fuzzer's. (Not `|| true`:
# under pipefail that ran on a failing fuzzer too and reset PIPESTATUS to 0.)
set +e
"$fuzzer" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 \
  "${extra[@]}" "$work" 2>&1 |
  grep -E '^(#[0-9]+ +(INITED|DONE)|Done|stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|ctx fuzz)'
status=${PIPESTATUS[0]}
set -e
if [[ $status -ne 0 ]]; then
  echo "fuzz: FAILED (exit $status); the input is in build/asan/crash-*" >&2
  exit "$status"
fi
if [[ $update -eq 1 ]]; then
  # Keep a small corpus: the fewest inputs that cover every edge reached.
  fresh="$(mktemp -d)"
  "$fuzzer" -set_cover_merge=1 -use_counters=0 "$fresh" "$work" "../../$corpus" >/dev/null 2>&1
  rm -f "../../$corpus"/*
  cp "$fresh"/* "../../$corpus/"
  rm -rf "$fresh"
  echo "fuzz: corpus now $(ls "../../$corpus" | wc -l) files"
fi
echo "fuzz: OK ($name), ${seconds}s, no mismatch with the model, no sanitizer report"
