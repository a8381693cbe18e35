#!/usr/bin/env bash
# GPU training throughput, mm next to upstream PyTorch in the same run, on the GPU machine:
#
#   MINIMIND_DIR=<dir with minimind@5959396's model/> [PYTHON=python3] benches/train_throughput_cuda.sh
#
# mm: `mm bench train --device cuda` (binary from scripts/build-cuda.sh: dist/cuda/mm or .gz),
# MiniMind2-small and MiniMind2 (104M), batch 32 x 512, bf16 compute over f32 master weights,
# the step replayed as CUDA graphs as `mm train` runs it (then, for comparison, `--no-graph`);
# PyTorch: benches/train_torch_cuda.py (upstream's model and per-step loop, bf16 autocast), as
# upstream ships it (empty_cache every step), without that, and without it under torch.compile.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
. scripts/cuda-binary.sh && cuda_binary "$(mktemp -d /tmp/mm-bench.XXXXXX)"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for preset in small base; do
  echo "== $preset"
  "$MM" bench train --device cuda --preset "$preset" --batch-size 32 --seq-len 512 --steps 20 --dtype bf16
  "$MM" bench train --device cuda --preset "$preset" --batch-size 32 --seq-len 512 --steps 20 --dtype bf16 --no-graph | tail -3
  "$PYTHON" benches/train_torch_cuda.py "$preset"
  "$PYTHON" benches/train_torch_cuda.py "$preset" --no-empty-cache
  "$PYTHON" benches/train_torch_cuda.py "$preset" --no-empty-cache --compile
done
