"""lm-evaluation-harness tasks for a C-Eval-layout directory, written as lm-eval's own C-Eval task
is (`lm_eval/tasks/ceval/_default_ceval_yaml`: description, the options listed, `答案：`, the
letters as choices, few-shot examples the first K rows of `dev`), or with each option's text as
the choice (`loglikelihood`). Used by check_eval.py and benches/eval_vs_lm_eval.sh."""
import csv
import json
import os


def to_jsonl(path, out):
    """The CSV as JSONL with every field a string (the csv loader of `datasets` would turn
    numeric options into numbers); dev's `explanation` column is left out (one schema for
    both splits)."""
    with open(path, encoding="utf-8", newline="") as f, open(out, "w", encoding="utf-8") as g:
        for row in csv.DictReader(f):
            row = {k: row[k] for k in ("id", "question", "A", "B", "C", "D", "answer")}
            g.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_tasks(ceval, tasks_dir, method):
    """One lm-eval task per subject of the C-Eval-layout directory `ceval`, written to
    `tasks_dir`; returns the task names (`mm_<method>_<subject>`)."""
    os.makedirs(tasks_dir, exist_ok=True)
    mapping = json.load(open(os.path.join(ceval, "subject_mapping.json"), encoding="utf-8"))
    names = []
    for s in sorted(mapping):
        data = {}
        for split, sub in (("val", "val"), ("dev", "dev")):
            data[split] = os.path.join(tasks_dir, f"{s}_{split}.jsonl")
            to_jsonl(os.path.join(ceval, sub, f"{s}_{split}.csv"), data[split])
        name = f"mm_{method}_{s}"
        names.append(name)
        if method == "letter":
            text = "{{question.strip()}}\\nA. {{A}}\\nB. {{B}}\\nC. {{C}}\\nD. {{D}}\\n答案："
            choice = '["A", "B", "C", "D"]'
        else:
            text = "{{question.strip()}}\\n答案："
            choice = "{{[A, B, C, D]}}"
        description = f"以下是中国关于{mapping[s][1]}的单项选择题，请选出其中的正确答案。\\n\\n"
        with open(os.path.join(tasks_dir, f"{name}.yaml"), "w", encoding="utf-8") as f:
            f.write(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    val: {data["val"]}
    dev: {data["dev"]}
test_split: val
fewshot_split: dev
fewshot_config:
  sampler: first_n
output_type: multiple_choice
description: "{description}"
doc_to_text: "{text}"
doc_to_choice: '{choice}'
doc_to_target: "{{{{['A', 'B', 'C', 'D'].index(answer)}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    return names
