"""GPU-machine check: transformers' AutoModelForCausalLM on `mm export hf` directories
reproduces the PyTorch reference logits of the MiniMind2 fixtures (fp32).

Needs torch, transformers (4.x or 5.x), safetensors, numpy. Self-contained: no mm code.

Usage (the exports are plain data; make them wherever mm runs and copy them over):
  mkdir -p x/dense x/moe
  tar -xJf shared/fixtures/minimind2/dense/weights.tar.xz -C x/dense
  tar -xJf shared/fixtures/minimind2/moe/weights.tar.xz -C x/moe
  mm export hf x/dense/hf-minimind --arch llama -o x/dense-llama
  mm export hf x/moe/hf-minimind --arch qwen2-moe -o x/moe-qwen2
  python tests/gpu/check_hf_logits.py --dense x/dense-llama --moe x/moe-qwen2 \
      --fixtures shared/fixtures/minimind2 [--device cpu,cuda] [--tol 1e-4]

For each model and device: full logits of `prompt0_zh` against `<cfg>/logits.safetensors`
`prompt0_zh.logits` (inputs from `inputs.json`), plus the last-8-position logits of the
other prompts and of `random300`. Prints max |Δ| per sequence; exits 1 if any exceeds --tol.
TF32 is switched off so CUDA matmuls are true fp32.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file


def load_model(path, device):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except TypeError:  # transformers 4.x before the `dtype` rename
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    return model.to(device).eval()


def sequences(inputs):
    out = [(p["name"], p["input_ids"]) for p in inputs["prompts"]]
    out.append(("random300", inputs["random300"]["input_ids"]))
    return out


def check(name, path, fixture_dir, inputs, device, tol):
    ref = load_file(os.path.join(fixture_dir, "logits.safetensors"))
    model = load_model(path, device)
    arch = model.config.architectures
    worst = 0.0
    rows = []
    for seq_name, ids in sequences(inputs):
        with torch.no_grad():
            logits = model(torch.tensor([ids], device=device)).logits[0].float().cpu().numpy()
        if seq_name == "prompt0_zh":
            full = ref["prompt0_zh.logits"]
            assert logits.shape == full.shape, (logits.shape, full.shape)
            d = float(np.max(np.abs(logits - full)))
            rows.append((f"{seq_name}.logits {list(full.shape)}", d))
            worst = max(worst, d)
        key = f"{seq_name}.logits_last8"
        if key in ref:
            d = float(np.max(np.abs(logits[-8:] - ref[key])))
            rows.append((f"{key} [8, {ref[key].shape[1]}]", d))
            worst = max(worst, d)
        argmax_key = f"{seq_name}.argmax"
        if argmax_key in ref:
            same = int(np.sum(logits.argmax(-1) == ref[argmax_key]))
            rows.append((f"{seq_name}.argmax agree {same}/{len(ids)}", None))
    print(f"== {name}: {path} ({arch}) on {device}")
    for label, d in rows:
        print(f"   {label:44s}" + ("" if d is None else f" max|Δ| = {d:.3e}"))
    ok = worst <= tol
    print(f"   worst max|Δ| = {worst:.3e} -> {'OK' if ok else 'FAIL'} (tol {tol:g})")
    return ok, worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", help="mm export hf --arch llama output of the dense fixture")
    ap.add_argument("--moe", help="mm export hf --arch qwen2-moe output of the MoE fixture")
    ap.add_argument("--fixtures", required=True, help="shared/fixtures/minimind2")
    ap.add_argument("--device", default="cpu,cuda", help="comma list; cuda is skipped when unavailable")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    inputs = json.load(open(os.path.join(a.fixtures, "inputs.json")))
    devices = [d for d in a.device.split(",") if d and (d != "cuda" or torch.cuda.is_available())]
    results = []
    for name, path in (("dense", a.dense), ("moe", a.moe)):
        if not path:
            continue
        for device in devices:
            results.append(check(name, path, os.path.join(a.fixtures, name), inputs, device, a.tol))
    if not results:
        sys.exit("nothing to check: pass --dense and/or --moe")
    sys.exit(0 if all(ok for ok, _ in results) else 1)


if __name__ == "__main__":
    main()
