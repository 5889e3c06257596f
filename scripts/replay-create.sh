#!/usr/bin/env bash
# Replays one real `borg create` session into servers, to compare server builds on the same
# requests without the client's own CPU and pace in the measurement (docs/BENCHMARKS.md, "Large
# puts streamed from 512 KiB"). The client's request stream is recorded once (through borgd);
# each replay feeds it from the file through a pipe into a server, into a fresh copy of the
# repository before the backup; `borgd-bench measure` reads the server's CPU time, peak memory and
# waits (voluntary context switches). Needs target/release/{borgd,borgd-bench} (cargo build).
#
#   scripts/replay-create.sh record DIR BORG SOURCE...        # a new repository, one backup
#   scripts/replay-create.sh run DIR REPS [--gap-us N | --paced] LABEL::SERVER...
#
# With --gap-us N the stream is fed one request at a time, each N µs after the one before (as a
# client that works between messages; docs/BENCHMARKS.md, "A live session's waits"); with
# --paced in the pieces and at the moments the client had sent it (recorded beside the stream,
# `create.stream.pace`); without either, as fast as the server reads.
#
# SERVER is the executable the client would start (`SERVER serve` is run, with any further words
# of SERVER after `serve`). Put DIR on a file system of its own (scripts/bench-fs.sh): replays
# leave their repositories behind (renamed aside, never deleted: see "Machine" there).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bench=$here/target/release/borgd-bench
borgd=$here/target/release/borgd

usage() { sed -n '9,10p' "$0" | sed 's/^#  */usage: /' >&2; exit 2; }

objects() { find "$1/data" -type f 2>/dev/null | wc -l; }

built() { [ -x "$bench" ] && [ -x "$borgd" ] || { echo "$0: build first: cargo build --release" >&2; exit 1; }; }

record() {
    [ $# -ge 3 ] || usage
    built
    mkdir -p "$1"
    local dir borg=$2
    dir=$(cd "$1" && pwd)
    shift 2
    [ ! -e "$dir/repo-before" ] || { echo "$0: $dir already holds a recording" >&2; exit 1; }
    # the client starts this as its server; with RECORD set it keeps a copy of its input
    cat > "$dir/remote" <<EOF
#!/bin/sh
[ -z "\${RECORD:-}" ] && exec '$borgd' "\$@"
'$bench' tap "\$RECORD" | '$borgd' "\$@"
EOF
    chmod +x "$dir/remote"
    export BORG_RSH=$here/tests/support/rsh-shim BORG_REMOTE_PATH=$dir/remote BORG_BASE_DIR=$dir/base \
        BORG_PASSPHRASE=replay BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
    "$borg" -r "ssh://localhost/$dir/repo" repo-create -e none
    cp -a "$dir/repo" "$dir/repo-before"
    RECORD=$dir/create.stream "$borg" -r "ssh://localhost/$dir/repo" create replay "$@"
    mv "$dir/repo" "$dir/repo-recorded"
    echo "$dir/create.stream: $(stat -c %s "$dir/create.stream") bytes, $(objects "$dir/repo-recorded") objects"
}

run() {
    [ $# -ge 3 ] || usage
    built
    local dir reps=$2 rep spec label want got out gap=
    dir=$(cd "$1" && pwd)
    shift 2
    if [ "${1:-}" = --gap-us ]; then
        [ $# -ge 3 ] || usage
        gap=$2
        shift 2
    elif [ "${1:-}" = --paced ]; then
        [ $# -ge 2 ] || usage
        gap=paced
        shift
    fi
    [ -s "$dir/create.stream" ] && [ -d "$dir/repo-before" ] || { echo "$0: nothing recorded in $dir" >&2; exit 1; }
    want=$(objects "$dir/repo-recorded")
    for spec in "$@"; do rm -f "$dir/${spec%%::*}.jsonl"; done
    # two rounds first that are not counted: the first replays after a fresh file system or a
    # cache drop were up to 60% dearer
    for rep in $(seq -1 "$reps"); do
        for spec in "$@"; do
            label=${spec%%::*}
            out=$dir/$label.jsonl
            [ "$rep" -gt 0 ] || out=$dir/warm-up.jsonl
            read -r -a cmd <<<"${spec#*::}"
            [ ! -e "$dir/repo" ] || mv "$dir/repo" "$dir/replayed-$(date +%s%N)"
            cp -a "$dir/repo-before" "$dir/repo"
            sync
            stream "$dir/create.stream" "$gap" | "$bench" measure --out "$out" -- "${cmd[0]}" serve "${cmd[@]:1}" >/dev/null ||
                { echo "$0: $label, replay $rep: the server failed" >&2; exit 1; }
            got=$(objects "$dir/repo")
            [ "$got" = "$want" ] || { echo "$0: $label, replay $rep: $got objects stored, the recording has $want" >&2; exit 1; }
        done
    done
    for spec in "$@"; do
        label=${spec%%::*}
        printf '%s: server CPU %s s, peak memory %s KiB, %s waits (medians of %s replays)\n' "$label" \
            "$(field cpu_s "$dir/$label.jsonl")" "$(field peak_rss_kib "$dir/$label.jsonl")" \
            "$(field waits "$dir/$label.jsonl")" "$reps"
    done
}

# The recorded stream FILE on stdout: whole, one request every GAP µs, or at its pace (GAP paced).
stream() {
    case $2 in
        '') cat "$1" ;;
        paced) "$bench" feed --paced "$1" ;;
        *) "$bench" feed --gap-us "$2" "$1" ;;
    esac
}

# The median (min-max) of one field of `measure`'s JSON lines.
field() {
    grep -o "\"$1\": [0-9.]*" "$2" | awk '{print $2}' | sort -n |
        awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%s (%s-%s)", m, v[1], v[NR] }'
}

case ${1:-} in
    record) shift; record "$@" ;;
    run) shift; run "$@" ;;
    *) usage ;;
esac
