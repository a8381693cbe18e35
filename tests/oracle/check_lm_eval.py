"""lm-evaluation-harness against `mm serve`: a 30-question multiple-choice task scored by
loglikelihood through `local-completions` (the server's /v1/completions with echo + logprobs)
must give per-choice loglikelihoods within 1e-4 of lm-eval's own `hf` backend (transformers,
float32) on the `mm export hf` directory of the same model, and the same accuracy; a
generate_until task must run and give the hf backend's greedy generations.

usage: check_lm_eval.py LM_EVAL_BIN HF_EXPORT_DIR SERVER_URL SERVED_MODEL WORK_DIR
"""
import glob
import json
import os
import subprocess
import sys

lm_eval, export_dir, server, served, work = sys.argv[1:6]
here = os.path.dirname(os.path.abspath(__file__))
tasks = os.path.join(work, "tasks")
os.makedirs(tasks, exist_ok=True)
with open(os.path.join(tasks, "mm_mc.yaml"), "w") as f:
    f.write(f"""task: mm_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {os.path.join(here, "lm_eval", "mc.jsonl")}
test_split: test
output_type: multiple_choice
doc_to_text: "问题：{{{{question}}}}\\n答案："
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
""")
with open(os.path.join(tasks, "mm_gen.yaml"), "w") as f:
    f.write(f"""task: mm_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {os.path.join(here, "lm_eval", "gen.jsonl")}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 12
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
""")


def run(name, model, model_args):
    out = os.path.join(work, name)
    cmd = [lm_eval, "--model", model, "--model_args", model_args, "--tasks", "mm_mc,mm_gen", "--include_path", tasks,
           "--batch_size", "4", "--log_samples", "--output_path", out, "--device", "cpu"]
    subprocess.run(cmd, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
    samples = {}
    for task in ("mm_mc", "mm_gen"):
        path = glob.glob(os.path.join(out, "**", f"samples_{task}_*.jsonl"), recursive=True)
        assert path, f"{name}: no samples for {task}"
        samples[task] = sorted((json.loads(l) for l in open(path[0], encoding="utf-8")), key=lambda s: s["doc_id"])
    return samples


hf = run("hf", "hf", f"pretrained={export_dir},dtype=float32")
mm = run("mm", "local-completions",
         f"model={served},base_url={server}/v1/completions,tokenizer={export_dir},tokenizer_backend=huggingface,"
         "tokenized_requests=True,num_concurrent=4,max_retries=1")

worst, hf_correct, mm_correct = 0.0, 0, 0
for a, b in zip(hf["mm_mc"], mm["mm_mc"]):
    la = [float(r[0]) for r in a["filtered_resps"]]
    lb = [float(r[0]) for r in b["filtered_resps"]]
    assert len(la) == len(lb) == 4, (a, b)
    worst = max(worst, max(abs(x - y) for x, y in zip(la, lb)))
    hf_correct += a["acc"]
    mm_correct += b["acc"]
assert len(hf["mm_mc"]) == len(mm["mm_mc"]) == 30
assert worst < 1e-4, f"per-choice loglikelihoods differ by up to {worst}"
assert hf_correct == mm_correct, (hf_correct, mm_correct)
gen_hf = [s["filtered_resps"][0] for s in hf["mm_gen"]]
gen_mm = [s["filtered_resps"][0] for s in mm["mm_gen"]]
assert gen_hf == gen_mm, (gen_hf, gen_mm)
print(f"lm-eval: 30 questions x 4 choices, max |Δ loglikelihood| vs the hf backend {worst:.2e}, "
      f"accuracy {mm_correct}/30 both; generate_until identical on {len(gen_mm)} prompts: ok")
