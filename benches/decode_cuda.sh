#!/usr/bin/env bash
# GPU decoding speed, mm next to upstream PyTorch in the same run, on the GPU machine:
#
#   MINIMIND_DIR=<dir with minimind@5959396's model/> [PYTHON=python3] benches/decode_cuda.sh
#
# mm: `mm bench --device cuda --dtype D` (binary from scripts/build-cuda.sh), prefill 256, 128
# greedy decode steps, batched decode of 1/4/16 sequences; PyTorch: benches/decode_torch_cuda.py
# (upstream's model and transformers' generate, as eval_llm.py runs it: f32; also f16).
# MiniMind2-small and MiniMind2 (104M), random weights.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
. scripts/cuda-binary.sh && cuda_binary "$(mktemp -d /tmp/mm-bench.XXXXXX)"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for dtype in f32 f16; do
  for preset in small base; do
    echo "== $preset $dtype: mm"
    "$MM" bench --device cuda --dtype "$dtype" --preset "$preset" --prefill 256 --decode 128 --repeat 3 --batches 1,4,16
    echo "== $preset $dtype: upstream PyTorch"
    "$PYTHON" benches/decode_torch_cuda.py "$preset" --dtype "$dtype"
  done
done
