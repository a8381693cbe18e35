#!/usr/bin/env bash
# First checks of a CUDA `mm` on the GPU machine. Run from the repo root there, with the binary
# built by scripts/build-cuda.sh carried along (dist/cuda/mm):
#
#   scripts/gpu-check.sh            # logs to $OUT (the device tool's folder) or /tmp/mm-gpu-check
#
# The binary is dist/cuda/mm, or dist/cuda/mm.gz unpacked to a temp dir; MM=path overrides.
#
# 1. nvidia-smi and how the binary's libraries resolve;
# 2. a tiny inference bench on CUDA (the first kernel launch: a PTX-JIT problem shows here);
# 3. `mm bench --train` on CUDA, MiniMind2-small, batch 32 x 512, bf16 then f32;
# 4. correctness: 5 steps of `mm train pretrain` on dataset/samples on CUDA and on the CPU
#    (same seed, f32, accumulation 1); the per-step losses should agree to ~1e-4;
#    then a CUDA resume to step 7 and a short greedy `mm generate --device cuda`;
# 5. the upstream training fixture (one AdamW step, dense and MoE) on CUDA in f32 with the
#    fixture README's tolerances, when gpucheck-train/ was carried (scripts/stage-gpu-fixtures.sh);
# 6. bf16 against f32 over 50 steps of `mm train pretrain` on the sample data (|Δloss| <= 1e-2).
# Every step runs even if an earlier one failed; the exit status says whether any failed.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOGDIR="${OUT:-/tmp/mm-gpu-check}"
WORK="$(mktemp -d /tmp/mm-gpu-check.XXXXXX)"
mkdir -p "$LOGDIR"
. scripts/cuda-binary.sh && cuda_binary "$WORK"
LIMIT="${STEP_TIMEOUT:-120}"
failed=()

step() { # step NAME CMD...: run with a time limit, log to $LOGDIR/NAME.log, echo it too
  local name="$1"; shift
  echo
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$LIMIT" "$@" 2>&1 | tee "$LOGDIR/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "--- $name: exit $rc in $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

echo "=== host"
uname -a
nvidia-smi || failed+=(nvidia-smi)
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
[ -x "$MM" ] || { echo "no executable $MM (carry dist/cuda; build it with scripts/build-cuda.sh)"; exit 1; }
ls -l "$MM"
ldd "$MM" | tee "$LOGDIR/ldd.log"
grep -q "not found" "$LOGDIR/ldd.log" && failed+=(ldd)

step version "$MM" --version
step infer-smoke "$MM" bench --device cuda --preset small --prefill 64 --decode 16 --repeat 2
step bench-train-bf16 "$MM" bench train --device cuda --preset small --batch-size 32 --seq-len 512 --steps 10 --dtype bf16 --phases
step bench-train-f32 "$MM" bench train --device cuda --preset small --batch-size 32 --seq-len 512 --steps 10 --dtype f32
step bench-train-base-bf16 "$MM" bench train --device cuda --preset base --batch-size 32 --seq-len 512 --steps 10 --dtype bf16

TRAIN=(train pretrain --data dataset/samples/pretrain_sample.jsonl --init small --batch-size 4 --max-seq-len 256
       --accumulation-steps 1 --log-every 1 --save-every 100 --seed 42 --quiet)
step train-cuda "$MM" "${TRAIN[@]}" --device cuda --max-steps 5 --out "$WORK/cuda"
step train-cpu "$MM" "${TRAIN[@]}" --device cpu --max-steps 5 --out "$WORK/cpu"
echo
echo "=== per-step loss, cuda vs cpu (f32)"
python3 - "$WORK/cuda/pretrain_512.metrics.jsonl" "$WORK/cpu/pretrain_512.metrics.jsonl" <<'PY' > "$LOGDIR/loss-compare.log" 2>&1 || failed+=(loss-compare)
import json, sys
rows = [[json.loads(l) for l in open(p)] for p in sys.argv[1:3]]
worst = 0.0
for a, b in zip(*rows):
    d = abs(a["loss"] - b["loss"])
    worst = max(worst, d)
    print(f"step {a['step']}: cuda {a['loss']:.6f}  cpu {b['loss']:.6f}  |diff| {d:.2e}  ({a['tokens_per_s']:.0f} vs {b['tokens_per_s']:.0f} tok/s)")
print(f"max |diff| {worst:.2e} over {min(map(len, rows))} steps")
sys.exit(0 if rows[0] and worst < 1e-3 else 1)
PY
cat "$LOGDIR/loss-compare.log"
step train-cuda-resume "$MM" "${TRAIN[@]}" --device cuda --max-steps 7 --resume --out "$WORK/cuda"
step generate-cuda "$MM" generate "$WORK/cuda/pretrain_512.pth" --device cuda --raw --greedy --max-new-tokens 16 -p "hello"

if [ -d gpucheck-train ]; then
  for cfg in dense moe; do
    step "fixture-step-$cfg" "$MM" selftest-train-step --device cuda --cfg "$cfg" \
      --fixtures gpucheck-train/fixtures/minimind2 --model-root "gpucheck-train/models/$cfg"
  done
else
  echo "=== fixture steps skipped: no gpucheck-train/ (scripts/stage-gpu-fixtures.sh, then carry it)"
fi

LONG=(train pretrain --data dataset/samples/pretrain_sample.jsonl --init small --batch-size 4 --max-seq-len 256
      --accumulation-steps 1 --epochs 2 --max-steps 50 --log-every 10 --save-every 1000 --seed 42 --quiet --device cuda)
step train-50-f32 "$MM" "${LONG[@]}" --dtype f32 --out "$WORK/f32"
step train-50-bf16 "$MM" "${LONG[@]}" --dtype bf16 --out "$WORK/bf16"
echo
echo "=== bf16 vs f32 over 50 steps"
python3 - "$WORK/f32/pretrain_512.metrics.jsonl" "$WORK/bf16/pretrain_512.metrics.jsonl" <<'PY' > "$LOGDIR/bf16-vs-f32.log" 2>&1 || failed+=(bf16-vs-f32)
import json, sys
f32, bf16 = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
n = min(len(f32), len(bf16))
diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(f32, bf16)]
for a, b, d in zip(f32, bf16, diffs):
    if a["step"] % 10 == 0 or a["step"] == 1:
        print(f"step {a['step']}: f32 {a['loss']:.5f}  bf16 {b['loss']:.5f}  |diff| {d:.2e}")
print(f"{n} steps; max |diff| {max(diffs):.2e}, mean {sum(diffs)/n:.2e}; f32 {f32[0]['loss']:.4f} -> {f32[-1]['loss']:.4f}")
sys.exit(0 if n == 50 and max(diffs) <= 1e-2 else 1)
PY
cat "$LOGDIR/bf16-vs-f32.log"
cp "$WORK"/f32/pretrain_512.metrics.jsonl "$LOGDIR/pretrain_512.f32-50.metrics.jsonl" 2>/dev/null
cp "$WORK"/bf16/pretrain_512.metrics.jsonl "$LOGDIR/pretrain_512.bf16-50.metrics.jsonl" 2>/dev/null
cp "$WORK"/cuda/*.metrics.jsonl "$LOGDIR/" 2>/dev/null
mv "$WORK/cpu/pretrain_512.metrics.jsonl" "$LOGDIR/pretrain_512.cpu.metrics.jsonl" 2>/dev/null
rm -rf "$WORK"

echo
if [ ${#failed[@]} -eq 0 ]; then
  echo "gpu-check: all steps passed (logs in $LOGDIR)"
else
  echo "gpu-check: FAILED: ${failed[*]} (logs in $LOGDIR)"
  exit 1
fi
