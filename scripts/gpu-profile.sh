#!/usr/bin/env bash
# Per-kernel GPU time of `mm bench train` (warm-up step + one timed step) under Nsight Compute,
# on the GPU machine; the CSV goes to $OUT (or /tmp) for scripts/profile-summary.py:
#
#   PRESET=small|base [DTYPE=bf16] [MM_BENCH_ARGS=--no-graph] scripts/gpu-profile.sh
#
# ncu serialises the kernels and times each alone (--clock-control none: the card's own clocks),
# so the sum is the GPU time of the step without launch gaps; compare it with the step time of
# benches/train_throughput_cuda.sh to see how much of the step the host's launches cost.
set -eu
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/cuda-binary.sh && cuda_binary "$(mktemp -d /tmp/mm-prof.XXXXXX)"
PRESET="${PRESET:-small}"
NCU="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)"
out="${OUT:-/tmp}/ncu-$PRESET.csv"
"$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --log-file "$out" \
  "$MM" bench train --device cuda --preset "$PRESET" --batch-size 32 --seq-len 512 --steps 1 --dtype "${DTYPE:-bf16}" ${MM_BENCH_ARGS:-}
echo "wrote $out ($(wc -l < "$out") lines)"
