#!/bin/sh
# Packs what the Multi-core benchmark needs on a machine without a toolchain (the 16-CPU
# "device" machine of DEVELOPERS.md: no network, no iproute2, bpffs mounted): the release
# apifw-bench (which embeds the firewall and the test programs) and the dynamic loader and
# libraries it links, run there through that loader so no library of the other machine is mixed
# in. Usage: bench/device/prepare.sh DIR [OTHER_BENCH_BINARY]
#   DIR                 a folder ignored by git (list it in .git/info/exclude), carried to the
#                       machine; the binary built from this checkout goes in as apifw-bench-after
#   OTHER_BENCH_BINARY  optional: an apifw-bench built from another commit (the comparison), as
#                       apifw-bench-before
set -eu
dir=$1
cargo build --release -p apifw-bench
mkdir -p "$dir"
cp target/release/apifw-bench "$dir/apifw-bench-after"
if [ $# -ge 2 ]; then
    cp "$2" "$dir/apifw-bench-before"
fi
for binary in "$dir"/apifw-bench-*; do
    ldd "$binary" | awk '/=>/ { print $3 } /ld-linux/ { print $1 }'
done | sort -u | while read -r lib; do
    cp -L "$lib" "$dir/"
done
ls -l "$dir"
