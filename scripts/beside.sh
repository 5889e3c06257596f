#!/usr/bin/env bash
# Runs a repository server on CPU 0 with a neighbour on CPU 1, for `borgd-bench compare run`.
#
# Why (docs/BENCHMARKS.md, "The client beside the server"): in `e2e` the real client runs beside
# the server on this 2-CPU machine and streams its data set through memory while the server
# works. A replay with a chosen neighbour shows what each kind of company costs a server, without
# the client. `compare run` starts each server as `EXECUTABLE serve [OPTIONS]`, so
#
#   --server "stream::scripts/beside.sh stream:64 target/release/borgd --fsync=never"
#
# runs `scripts/beside.sh serve stream:64 target/release/borgd --fsync=never`: this script gets
# `serve` first, then the neighbour, the server and its options. NEIGHBOUR is `none` or what
# `borgd-bench neighbour` takes: spin | stream:MIB | stream-nt:MIB. Give every label of a run the
# script (with `none` for the baseline), so that each pays the same few milliseconds of shell.
# The neighbour is started detached: its CPU time is not counted as the server's.
set -euo pipefail

usage() { echo "usage: $0 serve NEIGHBOUR SERVER [SERVE OPTIONS]  (NEIGHBOUR: none | spin | stream:MIB | stream-nt:MIB)" >&2; exit 2; }
[ $# -ge 3 ] && [ "$1" = serve ] || usage
kind=$2 server=$3
shift 3
bench=${BORGD_BENCH:-$(dirname "$0")/../target/release/borgd-bench}
pid=
stop() { [ -z "$pid" ] || kill -- -"$pid" 2>/dev/null || true; }
trap stop EXIT
if [ "$kind" != none ]; then
    # its own session and process group (setsid), and not our child once the command
    # substitution's shell exits: nobody waits for it, so its CPU time reaches nobody's rusage
    pid=$(setsid taskset -c 1 "$bench" neighbour "$kind" < /dev/null > /dev/null 2>&1 & echo $!)
    sleep 0.1
    # gone, or a zombie nobody has reaped yet: it refused its arguments
    case $(ps -o stat= -p "$pid" 2>/dev/null || true) in
    '' | Z*) echo "$0: neighbour $kind did not start (try: $bench neighbour $kind)" >&2; exit 2 ;;
    esac
fi
# not exec'd: the EXIT trap stops the neighbour; the script ends with the server's status
taskset -c 0 "$server" serve "$@"
