#!/usr/bin/env bash
# Gives a benchmark run a file system of its own: a fresh ext4 image (no journal, like this
# machine's root file system) mounted at MOUNTPOINT through a loop device doing direct I/O (so
# nothing is cached twice). Run it before every `borgd-bench` run, as root; `--unmount` removes
# it afterwards.
#
# Why (docs/BENCHMARKS.md, "Machine"): on ext4 without a journal, creating files is several times
# more expensive for minutes after many files were deleted, and a benchmark run leaves millions of
# files. In an image of its own no run ever sees another's deletions: the previous run's trees go
# away with one file.
#
#   scripts/bench-fs.sh 24 /mnt/borgd-bench           # 24 GB, empty, at /mnt/borgd-bench
#   scripts/bench-fs.sh --unmount /mnt/borgd-bench    # unmount, detach, delete the image
set -euo pipefail

usage() { echo "usage: $0 SIZE_GB MOUNTPOINT | $0 --unmount MOUNTPOINT" >&2; exit 2; }
[ $# -eq 2 ] || usage
image_dir=${BORGD_BENCH_IMAGE_DIR:-/var/tmp}

unmount() {
    local mnt=$1 image
    image="$image_dir/borgd-bench-$(basename "$mnt").img"
    if mountpoint -q "$mnt"; then umount "$mnt"; fi
    for dev in $(losetup -j "$image" | cut -d: -f1); do losetup -d "$dev"; done
    rm -f "$image"
}

if [ "$1" = --unmount ]; then
    unmount "$2"
    exit 0
fi
size=$1 mnt=$2
case $size in ''|*[!0-9]*) usage ;; esac
[ "$(id -u)" = 0 ] || { echo "$0: needs root (losetup, mount)" >&2; exit 1; }
unmount "$mnt"
image="$image_dir/borgd-bench-$(basename "$mnt").img"
avail=$(df --output=avail -B1G "$image_dir" | tail -1 | tr -d ' ')
if [ "$avail" -le "$size" ]; then
    echo "$0: $image_dir has ${avail} GB free, the image needs up to ${size} GB" >&2
    exit 1
fi
truncate -s "${size}G" "$image"
# one inode per 4 KiB: a run creates about as many files and directories as blocks it fills
mkfs.ext4 -q -F -i 4096 -O ^has_journal "$image"
dev=$(losetup -f --show --direct-io=on "$image")
mkdir -p "$mnt"
mount "$dev" "$mnt"
echo "$mnt: fresh ext4 of ${size} GB on $dev (image $image)"
