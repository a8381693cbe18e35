"""Runs an `mm export mnn` directory in MNN itself (pymnn 3.6.1) and compares it with mm.

Called by tests/mnn_export.rs with a case file the test wrote:

    {"prompt_ids": [...], "decode_ids": [8 ids], "vocab": V,
     "reference": "<f32 little-endian file of (len(prompt_ids) + 8) × V logits>",
     "texts": [{"text": "...", "ids": [...]}, ...]}

Checks, printing what it measured:
  * logits: prefill (all rows, `all_logits`) and 8 decode steps fed mm's greedy ids through
    MNN's KV cache, and the prefill's last row without `all_logits` (the runtime's default
    `logits_index` −1), runtime `precision: high, memory: high`, against mm's forward on the
    dequantized weights (max |Δ| ≤ --tolerance);
  * tokenizer: `tokenizer_encode(text)` equals mm's ids for every text;
  * greedy `response('你好')` runs;
  * with --json-dir: MNN's converter (its C++ entry point, not the `mnnconvert` console
    script, which installs and uploads telemetry) dumps `llm.mnn` to JSON, converts
    `llm.mnn.json` to a FlatBuffer (`from_json.mnn`, read back by the Rust test) and dumps
    that too; the two dumps must be equal, and our `llm.mnn.json` must equal the dump of our
    `llm.mnn` (keys, order, values; floats to the dump's six decimals).

The last line is `RESULT <json>`; the exit code is 0 only when every check passed.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

CONVERTER = "import sys, _tools; _tools.mnnconvert(['MNNConvert', *sys.argv[1:]])"


def convert(*args):
    """Runs MNNConvert; its return value means nothing, so callers check the output file."""
    out = subprocess.run([sys.executable, "-c", CONVERTER, *args], capture_output=True, text=True)
    return out.stdout + out.stderr


def fresh_output(path, *args):
    if os.path.exists(path):
        os.remove(path)
    log = convert(*args)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise SystemExit(f"MNNConvert {' '.join(args)} wrote no {path}:\n{log}")


def json_vs_flatbuffer(model_dir, work):
    dump_fb = os.path.join(work, "dump_of_llm_mnn.json")
    from_json = os.path.join(work, "from_json.mnn")
    dump_json = os.path.join(work, "dump_of_from_json.json")
    fresh_output(dump_fb, "-f", "MNN", "--modelFile", os.path.join(model_dir, "llm.mnn"), "--JsonFile", dump_fb)
    fresh_output(from_json, "-f", "JSON", "--modelFile", os.path.join(model_dir, "llm.mnn.json"), "--MNNModel", from_json)
    fresh_output(dump_json, "-f", "MNN", "--modelFile", from_json, "--JsonFile", dump_json)
    a = json.load(open(dump_fb))
    b = json.load(open(dump_json))
    ops = len(a.get("oplists", []))
    # Our llm.mnn.json against MNN's dump of our llm.mnn: same keys in the same order, same
    # values, floats to the dump's six decimals.
    differences = []
    same(load_ordered(os.path.join(model_dir, "llm.mnn.json")), load_ordered(dump_fb), "", differences)
    return {"dumps_equal": a == b, "ops": ops, "from_json": from_json,
            "json_equals_dump": not differences, "json_differences": differences[:5]}


class Obj(list):
    """A JSON object as its (key, value) pairs, in file order."""


def load_ordered(path):
    return json.load(open(path), object_pairs_hook=Obj)


def same(a, b, path, out):
    """Appends to `out` where two JSON values differ (floats: to 6 decimals)."""
    if isinstance(a, Obj) or isinstance(b, Obj):
        keys = lambda o: [k for k, _ in o] if isinstance(o, Obj) else type(o).__name__
        if keys(a) != keys(b):
            out.append(f"{path}: keys {keys(a)} vs {keys(b)}")
            return
        for (k, x), (_, y) in zip(a, b):
            same(x, y, f"{path}.{k}", out)
    elif isinstance(a, list) or isinstance(b, list):
        if not (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)):
            out.append(f"{path}: {a!r:.80} vs {b!r:.80}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float) or isinstance(b, float):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        if not (numbers and abs(a - b) <= 5e-7 + 1e-6 * abs(a)):
            out.append(f"{path}: {a!r} vs {b!r}")
    elif a != b or type(a) is not type(b):
        out.append(f"{path}: {a!r} vs {b!r}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--case", required=True)
    p.add_argument("--tolerance", type=float, default=1e-3)
    p.add_argument("--json-dir", help="work directory for the JSON-vs-FlatBuffer check")
    a = p.parse_args()

    import MNN.llm as mnn_llm

    case = json.load(open(a.case))
    vocab = case["vocab"]
    prompt, decode = case["prompt_ids"], case["decode_ids"]
    ref = np.fromfile(case["reference"], dtype="<f4").reshape(len(prompt) + len(decode), vocab)

    llm = mnn_llm.create(os.path.join(a.dir, "config.json"))
    llm.set_config({"all_logits": True, "precision": "high", "memory": "high", "thread_num": 1,
                    "sampler_type": "greedy", "max_new_tokens": 16})
    if not llm._c_obj.load():
        raise SystemExit(f"MNN could not load {a.dir}")

    got = np.array(llm.forward(prompt).read(), dtype=np.float32).reshape(-1, vocab)
    if got.shape[0] != len(prompt):
        raise SystemExit(f"prefill gave {got.shape[0]} rows for {len(prompt)} tokens")
    prefill = float(np.abs(got - ref[: len(prompt)]).max())
    decode_max, argmax_agree = 0.0, int(got[-1].argmax() == ref[len(prompt) - 1].argmax())
    for step, token in enumerate(decode):
        row = np.array(llm.forward([token]).read(), dtype=np.float32).reshape(-1, vocab)[-1]
        want = ref[len(prompt) + step]
        decode_max = max(decode_max, float(np.abs(row - want).max()))
        argmax_agree += int(row.argmax() == want.argmax())

    # The runtime's default path (`all_logits` off: logits_index −1, the last row only).
    last = mnn_llm.create(os.path.join(a.dir, "config.json"))
    last.set_config({"precision": "high", "memory": "high", "thread_num": 1})
    if not last._c_obj.load():
        raise SystemExit(f"MNN could not load {a.dir}")
    row = np.array(last.forward(prompt).read(), dtype=np.float32).reshape(-1, vocab)
    if row.shape[0] != 1:
        raise SystemExit(f"last-row prefill gave {row.shape[0]} rows")
    last_row = float(np.abs(row[0] - ref[len(prompt) - 1]).max())
    del last

    texts = case["texts"]
    mismatches = []
    for t in texts:
        ids = list(llm.tokenizer_encode(t["text"]))
        if ids != t["ids"]:
            mismatches.append({"text": t["text"][:80], "mnn": ids[:40], "mm": t["ids"][:40]})

    llm.reset()
    answer = llm.response("你好", False)
    answer_ok = isinstance(answer, str)

    result = {
        "reference_max_abs": float(np.abs(ref).max()),
        "prefill_rows": len(prompt),
        "prefill_max_abs": prefill,
        "last_row_max_abs": last_row,
        "decode_steps": len(decode),
        "decode_max_abs": decode_max,
        "argmax_agree": argmax_agree,
        "argmax_total": len(decode) + 1,
        "texts": len(texts),
        "texts_equal": len(texts) - len(mismatches),
        "token_mismatches": mismatches[:3],
        "response_ok": answer_ok,
        "response_chars": len(answer) if answer_ok else None,
    }
    ok = max(prefill, decode_max, last_row) <= a.tolerance and not mismatches and answer_ok
    if a.json_dir:
        result["json_vs_flatbuffer"] = json_vs_flatbuffer(a.dir, a.json_dir)
        ok = ok and result["json_vs_flatbuffer"]["dumps_equal"] and result["json_vs_flatbuffer"]["json_equals_dump"]
    result["ok"] = ok
    print("RESULT " + json.dumps(result, ensure_ascii=False))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
