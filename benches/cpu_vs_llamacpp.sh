#!/usr/bin/env bash
# CPU inference, mm next to a live llama.cpp on the very same GGUF files, same run (issue 15):
#
#   benches/cpu_vs_llamacpp.sh [WORK_DIR]        # default /tmp/mm-cpu-bench
#
# Builds target/release/mm, makes a llama.cpp venv (../shared/tools/llamacpp-live/setup.sh, seconds),
# then runs its bench_vs_mm.py (alternating rounds, each engine in a fresh process, median of
# rounds; prefill 256 tokens with last-position logits, 128 greedy single-token steps) at 2 threads
# and at 1 thread on MiniMind2-small Q4_K_M / F16 / Q8_0 and MiniMind2 (104M) Q4_K_M, random
# weights from `mm init --preset small|base` + `mm export gguf`. Then mm's batched decode at
# 1/4/16 sequences (`mm bench --batches`) for small F16, Q4_K_M and f32. Quiet the machine first:
# the load average is printed with each round.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SHARED="${MM_SHARED:-$(cd .. && pwd)/shared}"
WORK="$(realpath -m "${1:-/tmp/mm-cpu-bench}")"  # absolute: setup.sh needs it
mkdir -p "$WORK"
cargo build --release --bin mm
[ -x "$WORK/lcvenv/bin/python" ] || sh "$SHARED/tools/llamacpp-live/setup.sh" "$WORK/lcvenv" >/dev/null
lscpu | grep -m1 "Model name"
files=small-q4_k_m,small-f16,small-q8_0,base-q4_k_m
for threads in 2 1; do
  echo "== $threads thread(s)"
  PYTHONPATH="$SHARED/tools/llamacpp-live" "$WORK/lcvenv/bin/python" "$SHARED/tools/llamacpp-live/bench_vs_mm.py" \
    --mm target/release/mm --work "$WORK" --rounds 3 --threads "$threads" --files "$files" \
    --json "$WORK/results_${threads}t.json" | tail -7
done
echo "== batched decode, 2 threads (aggregate tokens/s; 32-token prompts, 128 steps)"
for f in small-f16 small-q4_k_m; do
  target/release/mm bench "$WORK/out/$f.gguf" --threads 2 --repeat 3 --batches 1,4,16 | grep -E "^(model|decode|batched)"
done
target/release/mm bench --preset small --threads 2 --repeat 3 --batches 1,4,16 | grep -E "^(model|decode|batched)"
