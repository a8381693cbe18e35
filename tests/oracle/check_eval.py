"""`mm eval` against lm-evaluation-harness and transformers on the same model.

Multiple choice: the C-Eval-layout sample (dataset/samples/ceval) through lm-eval's `hf`
backend (transformers, float32, CPU) on the `mm export hf` directory, as local YAML tasks
written the way lm-eval's own C-Eval task is (description, options listed, `答案：`, letters
as choices, the first K dev rows as few-shot examples), and through `mm eval --task mc` on the
CSV files themselves: every option's log-likelihood within 1e-4, the same acc and acc_norm per
subject. Also the `loglikelihood` method (each option's text as the continuation).

Perplexity: `mm eval --task ppl --details` on pretrain and SFT jsonl with sliding windows,
recomputed by transformers' LlamaForCausalLM on the same ids with the windows built here
(windows of at most max_len input tokens every stride tokens, each token after the first
scored once by the first window that predicts it): total NLL and perplexity within 1e-4 relative.
For pretrain text the ids must also equal the HF tokenizer's encoding of each text.

usage: check_eval.py MM_BIN LM_EVAL_BIN HF_EXPORT_DIR CEVAL_DIR PRETRAIN_JSONL SFT_JSONL WORK_DIR
"""
import glob
import json
import math
import os
import subprocess
import sys

mm, lm_eval, export_dir, ceval, pretrain, sft, work = sys.argv[1:8]
os.makedirs(work, exist_ok=True)
env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def mm_eval(*args):
    out = subprocess.run([mm, "eval", export_dir, "--json", "--details", "--quiet", *args],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# ---------------------------------------------------------------- multiple choice
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ceval_tasks import write_tasks  # noqa: E402

mapping = json.load(open(os.path.join(ceval, "subject_mapping.json"), encoding="utf-8"))
subjects = sorted(mapping)
tasks_dir = os.path.join(work, "tasks")


def lm_eval_run(tag, names, shots):
    out = os.path.join(work, tag)
    subprocess.run([lm_eval, "--model", "hf", "--model_args", f"pretrained={export_dir},dtype=float32",
                    "--tasks", ",".join(names), "--include_path", tasks_dir, "--num_fewshot", str(shots),
                    "--batch_size", "8", "--log_samples", "--output_path", out, "--device", "cpu"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    samples = {}
    for name in names:
        path = glob.glob(os.path.join(out, "**", f"samples_{name}_*.jsonl"), recursive=True)
        assert path, f"{tag}: no samples for {name}"
        samples[name] = sorted((json.loads(l) for l in open(path[0], encoding="utf-8")), key=lambda s: s["doc_id"])
    return samples


for method, shots in (("letter", 0), ("letter", 3), ("loglikelihood", 0)):
    names = write_tasks(ceval, tasks_dir, method)
    ref = lm_eval_run(f"lm-{method}-{shots}", names, shots)
    got = mm_eval("--task", "mc", "--data", ceval, "--method", method, "--shots", str(shots))
    per_q = {}
    for q in got["per_question"]:
        per_q.setdefault(q["subject"], []).append(q)
    worst = 0.0
    for s, name in zip(subjects, names):
        r, m = ref[name], per_q[s]
        assert len(r) == len(m) == 20, (s, len(r), len(m))
        acc_r = sum(x["acc"] for x in r)
        norm_r = sum(x["acc_norm"] for x in r)
        acc_m = sum(q["correct"] for q in m)
        norm_m = sum(q["correct_norm"] for q in m)
        for a, b in zip(r, m):
            assert a["doc"]["id"] == b["id"], (a["doc"]["id"], b["id"])
            la = [float(x[0]) for x in a["filtered_resps"]]
            worst = max(worst, max(abs(x - y) for x, y in zip(la, b["loglikelihoods"])))
        assert acc_r == acc_m and norm_r == norm_m, (method, shots, s, acc_r, acc_m, norm_r, norm_m)
    assert worst < 1e-4, f"{method} {shots}-shot: log-likelihoods differ from lm-eval's by up to {worst}"
    print(f"mc {method} {shots}-shot: {len(subjects)} subjects x 20 questions, max |Δ loglikelihood| vs lm-eval hf "
          f"{worst:.2e}, accuracy {got['correct']}/{got['questions']} on both: ok")

# ---------------------------------------------------------------- perplexity
import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402

torch.set_grad_enabled(False)
model = LlamaForCausalLM.from_pretrained(export_dir, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(export_dir)


def windows(n, max_len, stride):
    out, begin, prev_end = [], 0, 0
    while n >= 2:
        end = min(begin + max_len + 1, n)
        out.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n:
            break
        begin += stride
    return out


for path, max_len, stride in ((pretrain, 64, 32), (sft, 128, 48)):
    got = mm_eval("--task", "ppl", "--data", path, "--max-seq-len", str(max_len), "--stride", str(stride))
    lines = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
    total, count = 0.0, 0
    for t in got["per_text"]:
        ids, scored = t["ids"], set(t["scored_positions"])
        if got["format"] == "pretrain":
            text = lines[t["line"] - 1]["text"]
            assert ids == tok(text)["input_ids"], f"line {t['line']}: mm's ids differ from the HF tokenizer's"
            assert scored == {p for p in range(1, len(ids)) if ids[p] != tok.pad_token_id}
        for begin, end, first in windows(len(ids), max_len, stride):
            want = [p for p in range(first, end) if p in scored]
            if not want:
                continue
            logits = model(torch.tensor([ids[begin:end - 1]])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            for p in want:
                total -= logp[p - 1 - begin, ids[p]].item()
                count += 1
    assert count == got["tokens_scored"], (count, got["tokens_scored"])
    ppl = math.exp(total / count)
    rel = max(abs(got["nll"] - total) / total, abs(got["perplexity"] - ppl) / ppl)
    assert rel < 1e-4, f"{path}: mm nll {got['nll']} ppl {got['perplexity']} vs transformers {total} {ppl}"
    print(f"ppl {got['format']} (windows {max_len}/{stride}): {count} tokens, mm {got['perplexity']:.4f} vs "
          f"transformers {ppl:.4f}, relative difference {rel:.1e}: ok")
