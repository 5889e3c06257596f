#!/usr/bin/env bash
# Makes a virtual machine's memory cost what a real machine's does, for a benchmark run.
#
# Why (docs/BENCHMARKS.md, "Machine"): a guest with free page reporting (virtio-balloon) hands
# memory it has not used for a few seconds back to the host, and the next first touch of such a
# page costs a fault on the host: 6–10 µs per 4 KiB page on the benchmark machine instead of
# 1.5 µs. Every new page-cache page of a benchmark's writes pays it, by an amount that changes
# from one repetition to the next with whatever the host did meanwhile (64 KiB puts swung 1.9–4.3×
# within one run). `hold` stops the reporting and touches all free memory once, so that the host
# backs it again and keeps it; `release` lets the guest report again. Run as root, before the
# run (after `bench-fs.sh`) and after it:
#
#   scripts/bench-memory.sh hold       # before borgd-bench
#   scripts/bench-memory.sh release    # afterwards
#
# A machine without free page reporting needs neither (then `hold` says so and does nothing).
set -euo pipefail

param=/sys/module/page_reporting/parameters/page_reporting_order
saved=/run/borgd-bench-page-reporting-order
usage() { echo "usage: $0 hold | release" >&2; exit 2; }
[ $# -eq 1 ] || usage
[ "$(id -u)" = 0 ] || { echo "$0: needs root" >&2; exit 1; }

case $1 in
hold)
    if [ ! -w "$param" ]; then
        echo "$0: no free page reporting here ($param): nothing to hold"
        exit 0
    fi
    [ -e "$saved" ] || cat "$param" > "$saved"
    # an order above the largest free block's: no block is ever large enough to be reported
    if ! echo 11 > "$param" 2>/dev/null; then
        echo "$0: this kernel will not stop free page reporting ($param refuses 11)" >&2
        exit 1
    fi
    # touch every free page once: tmpfs pages are allocated and zeroed as they are written
    mnt=$(mktemp -d /run/borgd-bench-memory.XXXXXX)
    free_mib=$(awk '/^MemFree:/ { print int($2 / 1024) }' /proc/meminfo)
    size_mib=$((free_mib - 512))
    if [ "$size_mib" -gt 0 ]; then
        mount -t tmpfs -o size="${size_mib}m" borgd-bench-memory "$mnt"
        start=$(date +%s.%N)
        dd if=/dev/zero of="$mnt/touch" bs=1M count="$size_mib" status=none || true
        end=$(date +%s.%N)
        umount "$mnt"
        echo "free page reporting stopped (order $(cat "$saved") -> 11); touched ${size_mib} MiB in $(awk "BEGIN { printf \"%.1f\", $end - $start }") s"
    fi
    rmdir "$mnt"
    ;;
release)
    if [ -e "$saved" ]; then
        cat "$saved" > "$param"
        rm -f "$saved"
        echo "free page reporting resumed (order $(cat "$param"))"
    fi
    ;;
*) usage ;;
esac
