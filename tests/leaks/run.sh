#!/usr/bin/env bash
# Runs every test program of the dev build under valgrind memcheck and fails
# on any leak (definite, indirect or possible) or memory error.
#
#   tests/leaks/run.sh            configure and build the dev preset, then check
#
# Only glibc's thread-local storage of cached or still-running threads is
# suppressed (tests/leaks/valgrind.supp). Real-time bounds do not hold under
# valgrind's ~50x slowdown, so the tests tagged [real] that assert a timing
# bound are left to the other builds (see SKIP below); the soak test runs
# 100 000 iterations instead of 10 million (and does not assert its RSS
# bound), the stress test 1 s instead of 2.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)

cmake --preset dev >/dev/null
cmake --build --preset dev -j2 >/dev/null

# [real] tests asserting a latency bound, which valgrind's slowdown breaks.
SKIP='~"a real deadline fires on time, within a generous bound"'

vg=(valgrind -q --leak-check=full --show-leak-kinds=definite,indirect,possible
    --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=99
    --suppressions=tests/leaks/valgrind.supp --fair-sched=yes
    --max-threads=1200)  # io_test blocks 1,000 threads on one context
# The two-process tests: B's query may stop up to 2 s after A's deadline (A runs under valgrind).
export CTX_SOAK_COUNT=100000 CTX_STRESS_MS=1000 CTX_WIRE_MARGIN_MS=2000

failed=0
launch=()  # a command that runs valgrind: pg_fixture for programs that need a PostgreSQL server
run() {
  local t0=$(date +%s) rc=0
  # valgrind 3.19 (Debian 12) does not know pidfd_open (syscall 434), so under
  # it <ctx/process.hpp> reports ENOSYS, as documented for old kernels; these
  # two run under ASan's LeakSanitizer instead.
  case "$1" in */process_test | */example_08_process)
    echo "leaks: skipped (valgrind lacks pidfd_open): $1"
    return ;;
  esac
  "${launch[@]}" "${vg[@]}" "$@" >/tmp/ctx_leaks.$$.log 2>&1 || rc=$?
  if [[ $rc -eq 77 ]]; then
    echo "leaks: skipped (its engine is not installed): $*"
  elif [[ $rc -ne 0 ]]; then
    failed=1
    echo "leaks: FAIL (exit $rc): $*"
    tail -n 60 /tmp/ctx_leaks.$$.log
  else
    echo "leaks: ok ($(( $(date +%s) - t0 ))s): $*"
  fi
  rm -f /tmp/ctx_leaks.$$.log
}

b=build/dev
for t in "$b"/tests/*_test; do
  if [[ "$t" == */context_test ]]; then
    eval run "$t" "$SKIP"
  elif [[ "$t" == */sqlite_test || "$t" == */postgres_test ]]; then
    run "$t" "~[real]"  # every test there that asserts a real-time bound is tagged [real]
  else
    run "$t"
  fi
done
# (A forked child cannot free the parent's timer thread state, 32 bytes owned
# by a thread that does not exist in the child: suppressed in valgrind.supp.)
for mode in return exit quick_exit static_destructor fork fork_while_firing; do run "$b/tests/exit_helper" "$mode"; done
run "$b/tests/fuzz/ctx_fuzz_replay" tests/fuzz/corpus
run "$b/tests/fuzz/ctx_propagation_fuzz_replay" tests/fuzz/corpus_propagation
for e in "$b"/examples/example_*; do
  case "$e" in
    */example_10_postgres | */example_11_pool) launch=("$b/tests/pg_fixture" run /nonexistent --) ;;
    *) launch=() ;;
  esac
  run "$e"
done

echo "leaks: $([[ $failed -eq 0 ]] && echo 'OK: no leak, no memory error' || echo FAILED) in $(( $(date +%s) - start ))s"
exit $failed
