#!/usr/bin/env bash
# On the GPU machine: `mm train pretrain` replaying its step as CUDA graphs (the default on one
# CUDA device) must train exactly as the eager loop (MM_CUDA_GRAPH=0) does, bit for bit:
#
#   scripts/gpu-graph-check.sh        # logs to $OUT or /tmp/mm-graph-check
#
# One epoch of dataset/samples/pretrain_sample.jsonl (110 rows, batch 4: 27 full batches and a
# short last one, which runs eagerly), bf16, gradient accumulation 4, so updates and
# half-accumulated gradients both cross the graphs. Three runs: eager; graphs; graphs stopped
# after 10 steps (a save mid-accumulation) and resumed. Their per-step losses and final
# weights must be identical.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOGDIR="${OUT:-/tmp/mm-graph-check}"
WORK="$(mktemp -d /tmp/mm-graph-check.XXXXXX)"
mkdir -p "$LOGDIR"
. scripts/cuda-binary.sh && cuda_binary "$WORK"
TRAIN=(train pretrain --data dataset/samples/pretrain_sample.jsonl --init small --batch-size 4 --max-seq-len 256
       --accumulation-steps 4 --log-every 1 --save-every 10 --seed 42 --quiet --device cuda --dtype bf16)
set -x
MM_CUDA_GRAPH=0 "$MM" "${TRAIN[@]}" --out "$WORK/eager" || exit 1
"$MM" "${TRAIN[@]}" --out "$WORK/graph" || exit 1
"$MM" "${TRAIN[@]}" --max-steps 10 --out "$WORK/split" || exit 1
"$MM" "${TRAIN[@]}" --resume --out "$WORK/split" || exit 1
set +x
python3 - "$WORK" <<'PY' | tee "$LOGDIR/graph-check.log"
import hashlib, json, sys
w = sys.argv[1]
def losses(run):
    rows = {}
    for line in open(f"{w}/{run}/pretrain_512.metrics.jsonl"):
        r = json.loads(line)
        rows[r["step"]] = r["loss"]  # a resumed run's lines supersede
    return rows
def digest(run):
    return hashlib.sha256(open(f"{w}/{run}/pretrain_512.pth", "rb").read()).hexdigest()[:16]
eager, graph, split = losses("eager"), losses("graph"), losses("split")
ok = True
for name, other in [("graph", graph), ("graph resumed at 10", split)]:
    same = len(other) == len(eager) and all(other[s] == eager[s] for s in eager)
    worst = max(abs(other.get(s, float("nan")) - eager[s]) for s in eager)
    print(f"{name}: {len(other)} steps vs eager {len(eager)}; losses identical: {same} (max |diff| {worst:.3e}); "
          f"weights {digest(name.split()[0] if name == 'graph' else 'split')} vs eager {digest('eager')}")
    ok &= same and digest("graph" if name == "graph" else "split") == digest("eager")
print("graph-check:", "passed" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
rc=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$rc"
