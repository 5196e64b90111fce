#!/usr/bin/env bash
# Go's context on the operations of ctx_bench. Usage: run.sh [benchtime]; needs `go` (Debian: golang-go).
# Offline: standard library only; caches under /tmp.
set -euo pipefail
cd "$(dirname "$0")"
command -v go >/dev/null || { echo "run.sh: go not found (apt-get install golang-go)" >&2; exit 2; }
export GOFLAGS=-mod=mod GOCACHE=${GOCACHE:-/tmp/ctx-go-cache} GOPATH=${GOPATH:-/tmp/ctx-go-path} GOPROXY=off GOTOOLCHAIN=local
bt=${1:-300ms}
go test -run '^$' -bench 'PendingTimeouts1M' -benchmem -benchtime 2x -count 1 .
go test -run '^$' -bench 'Wake$' -benchmem -benchtime 2000x -count 1 .
go test -run '^$' -bench 'Live$|With|Miss|Fanout' -benchmem -benchtime "$bt" -count 1 .
