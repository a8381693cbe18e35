#!/usr/bin/env bash
# GRPO rollouts + update on the CPU, mm next to upstream's train_grpo.py in the same run (the
# CPU counterpart of benches/grpo_cuda.sh, same settings and peer script):
#
#   MINIMIND_DIR=<minimind@5959396 with model/ trainer/ dataset/> [PYTHON=python3] benches/grpo_cpu.sh [STEPS] [MAX_GEN_LEN]
#
# MiniMind2-small, random weights written by the PyTorch side and read by mm, batch 2 prompts x 8
# generations (upstream's defaults), dataset/samples/rlaif_sample.jsonl, the rule reward
# (upstream's reasoning format/tag reward; its reward-model score stubbed to 0), fp32, all cores
# on both sides. One warm-up step; samples/s over the rest.
set -eu
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
STEPS="${1:-3}"
GEN="${2:-64}"
work=$(mktemp -d /tmp/mm-grpo-cpu.XXXXXX)
trap 'rm -rf "$work"' EXIT
cargo build --release --bin mm
echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$PYTHON" benches/grpo_torch_cuda.py dataset/samples/rlaif_sample.jsonl "$work/reason_512.pth" --steps "$STEPS" \
  --max-gen-len "$GEN" --device cpu
target/release/mm train grpo --data dataset/samples/rlaif_sample.jsonl --from "$work/reason_512.pth" --reward rule:reasoning \
  --batch-size 2 --num-generations 8 --max-gen-len "$GEN" --max-steps $((STEPS + 1)) --dtype f32 --device cpu \
  --save-every 1000 --out "$work/out" --quiet
"$PYTHON" - "$work/out/grpo_512.metrics.jsonl" "$STEPS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steps = int(sys.argv[2])
dt = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
n = steps * 2 * 8
print(f"mm train grpo (fp32, cpu): {steps} steps after the first: {dt:.2f} s, {n / dt:.2f} samples/s; "
      f"mean reward {sum(r['reward'] for r in rows) / len(rows):.3f}, mean response length {sum(r['resp_len'] for r in rows) / len(rows):.1f}")
PY
