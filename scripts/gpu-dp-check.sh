#!/usr/bin/env bash
# Data-parallel checks on a host with 2+ GPUs (the device tool's nvidia-h200-x2), with the
# CUDA+NCCL binary from scripts/build-cuda.sh carried along (dist/cuda):
#
#   scripts/gpu-dp-check.sh          # logs to $OUT or /tmp/mm-dp-check
#
# 1. correctness (f32): 1 GPU with batch 8 against 2 GPUs with batch 4 each (the same global
#    batch), 24 micro-steps with accumulation 2: per-step losses compared;
# 2. resume across world sizes: 2 GPUs stop mid-accumulation at step 13, 1 GPU resumes to
#    step 24; its losses compared with the uninterrupted 1-GPU run;
# 3. speed (bf16, MiniMind2-small, 32 x 512 per GPU): tokens/s of 1 GPU and of 2 GPUs.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOGDIR="${OUT:-/tmp/mm-dp-check}"
WORK="$(mktemp -d /tmp/mm-dp-check.XXXXXX)"
mkdir -p "$LOGDIR"
. scripts/cuda-binary.sh && cuda_binary "$WORK"
failed=()
nvidia-smi --query-gpu=index,name,memory.total --format=csv

# Longer documents than the samples (pretraining rows of 512 tokens are mostly full): each
# line joins 8 sample texts; 4000 lines, so that 2 GPUs x 32 rows still run 60 full steps
# (a short last batch in the measured window would understate the rate).
python3 - dataset/samples/pretrain_sample.jsonl "$WORK/long.jsonl" <<'PY'
import json, random, sys
texts = [json.loads(l)["text"] for l in open(sys.argv[1])]
rng = random.Random(0)
with open(sys.argv[2], "w") as f:
    for _ in range(4000):
        f.write(json.dumps({"text": "".join(rng.choice(texts) for _ in range(8))}, ensure_ascii=False) + "\n")
PY

run() { # run NAME CMD...
  local name="$1"; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout 300 "$@" > "$LOGDIR/$name.log" 2>&1
  local rc=$?
  tail -3 "$LOGDIR/$name.log"
  echo "--- $name: exit $rc in $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

COMMON=(train pretrain --data dataset/samples/pretrain_sample.jsonl --init small --max-seq-len 256 --epochs 3
        --accumulation-steps 2 --log-every 1 --seed 7 --quiet --dtype f32)
run one-gpu "$MM" "${COMMON[@]}" --device cuda:0 --batch-size 8 --max-steps 24 --save-every 1000 --out "$WORK/one"
run two-gpus "$MM" "${COMMON[@]}" --gpus 2 --batch-size 4 --max-steps 24 --save-every 1000 --out "$WORK/two"
run two-then-one-a "$MM" "${COMMON[@]}" --gpus 2 --batch-size 4 --max-steps 13 --save-every 13 --out "$WORK/resume"
run two-then-one-b "$MM" "${COMMON[@]}" --device cuda:0 --batch-size 8 --max-steps 24 --save-every 1000 --resume --out "$WORK/resume"
python3 - "$WORK/one/pretrain_512.metrics.jsonl" "$WORK/two/pretrain_512.metrics.jsonl" "$WORK/resume/pretrain_512.metrics.jsonl" <<'PY' > "$LOGDIR/compare.log" 2>&1 || failed+=(compare)
import json, sys
one, two, res = ([json.loads(l) for l in open(p)] for p in sys.argv[1:4])
def cmp(a, b, what):
    d = [abs(x["loss"] - y["loss"]) for x, y in zip(a, b)]
    print(f"{what}: {len(d)} steps, max |dloss| {max(d):.2e}; losses {a[0]['loss']:.5f} .. {a[-1]['loss']:.5f}")
    return len(d), max(d)
n1, d1 = cmp(one, two, "1 GPU x 8 vs 2 GPUs x 4")
n2, d2 = cmp(one, res, "1 GPU x 8 vs (2 GPUs to step 13, resumed on 1 GPU to 24)")
print("steps", [r["step"] for r in res][:3], "...", [r["step"] for r in res][-3:])
# Float noise (different summation groupings) grows through AdamW; the bound is well under
# bf16 noise, which gpu-check.sh measures as ~5e-3 on this data (bf16 vs f32, 50 steps).
sys.exit(0 if n1 == 24 and n2 == 24 and d1 < 1e-3 and d2 < 1e-3 else 1)
PY
cat "$LOGDIR/compare.log"

SPEED=(train pretrain --data "$WORK/long.jsonl" --init small --max-seq-len 513 --batch-size 32 --accumulation-steps 1
       --log-every 20 --save-every 100000 --seed 1 --quiet --dtype bf16 --max-steps 60)
run speed-one "$MM" "${SPEED[@]}" --device cuda:0 --out "$WORK/s1"
run speed-two "$MM" "${SPEED[@]}" --gpus 2 --out "$WORK/s2"
python3 - "$WORK/s1/pretrain_512.metrics.jsonl" "$WORK/s2/pretrain_512.metrics.jsonl" <<'PY' > "$LOGDIR/speed.log" 2>&1 || failed+=(speed)
import json, sys
rates = []
for p in sys.argv[1:3]:
    rows = [json.loads(l) for l in open(p)]
    rates.append(rows[-1]["tokens_per_s"])  # the last log window (steps 41-60), warm
print(f"loss tokens/s: 1 GPU {rates[0]:.0f}, 2 GPUs {rates[1]:.0f}, ratio {rates[1]/rates[0]:.2f}")
PY
cat "$LOGDIR/speed.log"
cp -r "$WORK"/one/*.jsonl "$LOGDIR/one.metrics.jsonl" 2>/dev/null
rm -rf "$WORK"
if [ ${#failed[@]} -eq 0 ]; then echo "dp-check: all passed"; else echo "dp-check: FAILED: ${failed[*]}"; exit 1; fi
