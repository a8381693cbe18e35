#!/usr/bin/env bash
# mm eval on CUDA against the same command on the CPU, on the GPU machine (CUDA mm from
# scripts/build-cuda.sh): MiniMind2-small (random weights), the C-Eval-layout sample (letter,
# 2-shot; loglikelihood) and perplexity of the pretrain and SFT samples. Per-option
# log-likelihoods within 1e-3 (CUDA's f32 matmuls sum in another order than the CPU engine),
# the same predictions, perplexity within 1e-4 relative.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work=$(mktemp -d /tmp/mm-eval.XXXXXX)
. scripts/cuda-binary.sh && cuda_binary "$work"
"$MM" init --preset small -o "$work/small" >/dev/null
run() { "$MM" eval "$work/small" --json --details --quiet "$@"; }
for dev in cpu cuda; do
  run --device $dev --task mc --data dataset/samples/ceval --shots 2 > "$work/mc-letter-$dev.json"
  run --device $dev --task mc --data dataset/samples/ceval --method loglikelihood > "$work/mc-ll-$dev.json"
  run --device $dev --task ppl --data dataset/samples/pretrain_sample.jsonl --max-seq-len 64 --stride 32 > "$work/ppl-pt-$dev.json"
  run --device $dev --task ppl --data dataset/samples/sft_sample.jsonl --max-seq-len 128 > "$work/ppl-sft-$dev.json"
done
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
load = lambda n: json.load(open(f"{w}/{n}.json"))
for t in ("mc-letter", "mc-ll"):
    a, b = load(f"{t}-cpu"), load(f"{t}-cuda")
    d = max(abs(x - y) for qa, qb in zip(a["per_question"], b["per_question"]) for x, y in zip(qa["loglikelihoods"], qb["loglikelihoods"]))
    same = sum(qa["prediction"] == qb["prediction"] for qa, qb in zip(a["per_question"], b["per_question"]))
    print(f"{t}: {a['questions']} questions, max |Δ loglikelihood| cuda vs cpu {d:.2e}, same prediction {same}/{a['questions']}, "
          f"cpu {a['questions_per_second']:.1f} q/s, cuda {b['questions_per_second']:.1f} q/s")
    assert d < 1e-3 and same == a["questions"], t
for t in ("ppl-pt", "ppl-sft"):
    a, b = load(f"{t}-cpu"), load(f"{t}-cuda")
    rel = abs(a["perplexity"] - b["perplexity"]) / a["perplexity"]
    print(f"{t}: ppl cpu {a['perplexity']:.4f} cuda {b['perplexity']:.4f} (rel {rel:.1e}); cpu {a['tokens_per_second']:.0f} tok/s, cuda {b['tokens_per_second']:.0f} tok/s")
    assert rel < 1e-4, t
print("mm eval on CUDA: ok")
PY
