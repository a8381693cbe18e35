"""`mm eval --task mc` next to lm-evaluation-harness's `hf` backend (transformers on torch, CPU)
on the same HF export and the same questions, in one run: questions per second.

usage: eval_vs_lm_eval.py MM_BIN HF_EXPORT_DIR CEVAL_DIR WORK_DIR [--shots 0,5] [--rounds 2]

Both sides score the letter method (lm-eval's C-Eval task as tests/oracle/ceval_tasks.py writes
it). Evaluation time excludes model loading on both sides: lm-eval's model is built once with
its Python API (HFLM, float32, batch 8) and `simple_evaluate` is timed; mm's is the `seconds` of
its JSON (after load). The whole command's wall time (load included) is printed too. Best of
`--rounds`. Accuracies must agree (the same model and prompts).
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "oracle"))
from ceval_tasks import write_tasks  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("mm")
ap.add_argument("export_dir")
ap.add_argument("ceval")
ap.add_argument("work")
ap.add_argument("--shots", default="0,5")
ap.add_argument("--rounds", type=int, default=2)
a = ap.parse_args()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

names = write_tasks(a.ceval, os.path.join(a.work, "tasks"), "letter")
tm = TaskManager(include_path=os.path.join(a.work, "tasks"))
t0 = time.perf_counter()
lm = HFLM(pretrained=a.export_dir, dtype="float32", batch_size=8, device="cpu")
lm_load = time.perf_counter() - t0
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; lm-eval model load {lm_load:.1f} s")

for shots in [int(s) for s in a.shots.split(",")]:
    lm_best, lm_acc = float("inf"), None
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        res = simple_evaluate(model=lm, tasks=names, num_fewshot=shots, task_manager=tm, log_samples=False)
        lm_best = min(lm_best, time.perf_counter() - t0)
        lm_acc = sum(res["results"][n]["acc,none"] for n in names) / len(names)
    mm_best, mm_wall, mm_acc, n = float("inf"), float("inf"), None, 0
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        out = subprocess.run([a.mm, "eval", a.export_dir, "--task", "mc", "--data", a.ceval, "--shots", str(shots),
                              "--json", "--quiet"], check=True, capture_output=True, text=True)
        mm_wall = min(mm_wall, time.perf_counter() - t0)
        r = json.loads(out.stdout)
        mm_best, n = min(mm_best, r["seconds"]), r["questions"]
        mm_acc = sum(s["acc"] for s in r["subjects"]) / len(r["subjects"])
    assert abs(mm_acc - lm_acc) < 1e-9, (mm_acc, lm_acc)
    print(f"{shots}-shot letter, {n} questions: lm-eval hf {n / lm_best:.1f} q/s ({lm_best:.2f} s), "
          f"mm {n / mm_best:.1f} q/s ({mm_best:.2f} s; whole command {mm_wall:.2f} s) -> {lm_best / mm_best:.1f}x; "
          f"mean subject acc {mm_acc:.4f} both")
