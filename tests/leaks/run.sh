#!/usr/bin/env bash
# Runs the test programs that exercise what LeakSanitizer cannot see under
# valgrind memcheck, in the dev build, and fails on any leak (definite,
# indirect or possible) or memory error.
#
#   tests/leaks/run.sh            configure and build the dev preset, then check
#
# The asan preset's LeakSanitizer checks every test program, but the
# per-thread node cache (detail/node_cache.hpp) is compiled out there, so that
# ASan sees each use after free. So valgrind runs the programs that exercise
# it, with the cache on: the core's tests (every derive, cancel and drop goes
# through the cache; threads exiting with cached blocks; frees on another
# thread), the exit helper (process exit with cached blocks, timers and
# callbacks pending), the fuzzer's corpus and regressions, and the core's
# examples. The adapters' programs allocate through the same cache and are
# left to LeakSanitizer, and so are the fork() tests (tests/fork_test.cpp).
#
# Only glibc's thread-local storage of cached or still-running threads is
# suppressed (tests/leaks/valgrind.supp). Real-time bounds do not hold under
# valgrind's ~50x slowdown, so the tests tagged [real] that assert a timing
# bound or wait for a schedule of the timer thread (an earlier deadline
# added later: the thread must first be seen asleep on the later one, which
# valgrind's one-thread-at-a-time scheduling under load did not reach within
# its minute) are left to the other builds, and so are three tests whose cost is
# their scale, not a path of the cache: two million-deep chains (a stack
# depth check) and a thousand threads woken by one cancel (valgrind runs
# threads one at a time), 70 of valgrind's 100 seconds (see SKIP below). The
# soak test runs 100 000 iterations instead of 10 million (and does not
# assert its RSS bound), the stress test 1 s instead of 2.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)

cmake --preset dev >/dev/null
cmake --build --preset dev -j2 >/dev/null

# Test cases left to the other builds (see above), as Catch2 exclusions.
SKIP=('~a real deadline fires on time\, within a generous bound'
      '~an earlier deadline added later wakes the timer thread'
      '~cancelling and destroying a million-deep chain uses bounded stack'
      '~dropping a million-deep chain of values and detached nodes uses bounded stack'
      '~many threads blocked in wait() all wake on one cancel')

vg=(valgrind -q --leak-check=full --show-leak-kinds=definite,indirect,possible
    --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=99
    --suppressions=tests/leaks/valgrind.supp --fair-sched=yes)
export CTX_SOAK_COUNT=100000 CTX_STRESS_MS=1000

# Two programs at a time (valgrind runs each on one core); each reports when done.
jobs=${CTX_LEAKS_JOBS:-2}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
check() {
  local t0=$(date +%s) rc=0 log
  log=$(mktemp "$logs/XXXXXX")
  "${vg[@]}" "$@" >"$log" 2>&1 || rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "leaks: FAIL (exit $rc): $*"
    tail -n 60 "$log"
    touch "$logs/failed"
    return 1
  fi
  echo "leaks: ok ($(( $(date +%s) - t0 ))s): $*"
}
run() {
  while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do wait -n || true; done
  check "$@" &
}

b=build/dev
for t in context_test context_race_test context_stress_test context_soak_test; do
  run "$b/tests/$t" "${SKIP[@]}"
done
# (fork() is checked by tests/fork_test.cpp under ASan's LeakSanitizer: its
# scenarios wait with pidfd_open, which valgrind 3.19 does not know.)
for mode in return exit quick_exit static_destructor; do run "$b/tests/exit_helper" "$mode"; done
run "$b/tests/fuzz/ctx_fuzz_replay" tests/fuzz/corpus tests/fuzz/regressions
run "$b/tests/fuzz/ctx_propagation_fuzz_replay" tests/fuzz/corpus_propagation
# The examples of the core; those of the fd and process adapters (07, 08:
# real sockets against a 200 ms deadline, and pidfd_open, which valgrind 3.19
# does not know) are left to LeakSanitizer with the adapters' tests.
for e in "$b"/examples/example_0[1-6]_*; do run "$e"; done

wait
failed=0
[[ ! -e "$logs/failed" ]] || failed=1
echo "leaks: $([[ $failed -eq 0 ]] && echo 'OK: no leak, no memory error' || echo FAILED) in $(( $(date +%s) - start ))s"
exit $failed
