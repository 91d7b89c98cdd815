#!/bin/sh
# The Multi-core section (bench/src/multicore.rs) on a machine with many CPUs, with the folder
# bench/device/prepare.sh packed. Run as root from the repository root:
#   sh bench/device/multicore.sh DIR OUT
# Writes OUT/BENCHMARKS-<name>.md (the report with its Multi-core section measured there, for
# each packed binary: after, and before if packed), OUT/<name>.log, and the machine's facts.
set -u
dir=$1
out=$2
mkdir -p "$out"
loader=$(ls "$dir"/ld-linux-*.so.* | head -n 1)
{
    uname -a
    echo "online CPUs: $(cat /sys/devices/system/cpu/online)"
    grep -m1 'model name' /proc/cpuinfo
    grep MemTotal /proc/meminfo
    mount | grep -c bpf
} > "$out/machine.txt" 2>&1
status=0
for name in before after; do
    binary="$dir/apifw-bench-$name"
    [ -x "$binary" ] || continue
    cp docs/BENCHMARKS.md "$out/BENCHMARKS-$name.md"
    if ! "$loader" --library-path "$dir" "$binary" --only multicore --runs "${RUNS:-5}" \
        --out "$out/BENCHMARKS-$name.md" > "$out/$name.log" 2>&1; then
        echo "apifw-bench-$name failed, see $name.log" >> "$out/errors.txt"
        status=1
    fi
done
exit $status
