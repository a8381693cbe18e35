#!/usr/bin/env bash
# GRPO rollouts + update, mm next to upstream's train_grpo.py in the same run, on one GPU (default)
# or on the CPU (DEVICE=cpu):
#
#   MINIMIND_DIR=<minimind@5959396 with model/ trainer/ dataset/> [PYTHON=python3] [DEVICE=cuda|cpu] \
#     benches/grpo.sh [STEPS] [MAX_GEN_LEN]
#
# MiniMind2-small, random weights written by the PyTorch side and read by mm, batch 2 prompts x 8
# generations (upstream's defaults), dataset/samples/rlaif_sample.jsonl, the rule reward
# (upstream's reasoning format/tag reward; its reward-model score stubbed to 0), fp32 on both
# sides (upstream's epoch loop never enters its autocast). One warm-up step; samples/s over the
# rest. On CUDA mm is the binary from scripts/build-cuda.sh (dist/cuda); on the CPU a release build.
set -eu
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
STEPS="${1:-8}"
GEN="${2:-256}"
work=$(mktemp -d /tmp/mm-grpo.XXXXXX)
trap 'rm -rf "$work"' EXIT
case "$DEVICE" in
  cuda)
    . scripts/cuda-binary.sh && cuda_binary "$work"
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    torch_device=cuda:0 ;;
  cpu)
    cargo build --release --bin mm
    MM=target/release/mm
    echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    torch_device=cpu ;;
  *) echo "DEVICE=$DEVICE: cuda or cpu" >&2; exit 2 ;;
esac
"$PYTHON" benches/grpo_torch.py dataset/samples/rlaif_sample.jsonl "$work/reason_512.pth" --steps "$STEPS" \
  --max-gen-len "$GEN" --device "$torch_device"
"$MM" train grpo --data dataset/samples/rlaif_sample.jsonl --from "$work/reason_512.pth" --reward rule:reasoning \
  --batch-size 2 --num-generations 8 --max-gen-len "$GEN" --max-steps $((STEPS + 1)) --dtype f32 --device "$DEVICE" \
  --save-every 1000 --out "$work/out" --quiet
"$PYTHON" - "$work/out/grpo_512.metrics.jsonl" "$STEPS" "$DEVICE" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steps = int(sys.argv[2])
dt = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
n = steps * 2 * 8
print(f"mm train grpo (fp32, {sys.argv[3]}): {steps} steps after the first: {dt:.2f} s, {n / dt:.2f} samples/s; "
      f"mean reward {sum(r['reward'] for r in rows) / len(rows):.3f}, mean response length {sum(r['resp_len'] for r in rows) / len(rows):.1f}")
PY
