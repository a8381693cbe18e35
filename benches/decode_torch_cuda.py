"""Upstream PyTorch decoding speed on a CUDA GPU, the peer of `mm bench --device cuda`.

usage: MINIMIND_DIR=/path/to/minimind python decode_torch_cuda.py PRESET [--dtype f32|f16|bf16]
       [--prefill 256] [--decode 128] [--batches 1,4,16]

The path upstream's eval_llm.py runs (jingyaogong/minimind 5959396): its own MiniMindForCausalLM
(model/model_minimind.py), `.eval()` on the GPU (f32 as eval_llm.py leaves it; --dtype casts),
and transformers' `generate` with the KV cache, here greedy with exactly the asked number of new
tokens (do_sample=False, min_new_tokens = max_new_tokens). Prompt ids as `mm bench`:
3 + (i * 7919) % (V - 3). Prefill = generate(max_new_tokens=1); decode tokens/s =
(generate(P, D+1) - generate(P, 1)) / D; best of 3 after a warm-up. Batched: the prompt repeated
as a batch of N rows, aggregate tokens/s. Prints lines in mm bench's format.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.environ["MINIMIND_DIR"])
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("preset")
ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
ap.add_argument("--prefill", type=int, default=256)
ap.add_argument("--decode", type=int, default=128)
ap.add_argument("--batches", default="1,4,16")
a = ap.parse_args()
shapes = {"small": dict(hidden_size=512, num_hidden_layers=8), "base": dict(hidden_size=768, num_hidden_layers=16)}
torch.manual_seed(0)
dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
model = MiniMindForCausalLM(MiniMindConfig(**shapes[a.preset])).to(dtype).eval().cuda()
V = model.config.vocab_size
prompt = torch.tensor([[3 + (i * 7919) % (V - 3) for i in range(a.prefill)]], device="cuda")


def timed(n_new, batch=1):
    ids = prompt.repeat(batch, 1)
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                             min_new_tokens=n_new, do_sample=False, pad_token_id=0, use_cache=True)
    torch.cuda.synchronize()
    assert out.shape == (batch, a.prefill + n_new), out.shape
    return time.perf_counter() - t


timed(8)
prefill = min(timed(1) for _ in range(3))
decode = min(timed(a.decode + 1) for _ in range(3)) - prefill
print(f"model       upstream MiniMindForCausalLM {a.preset}, {a.dtype}, {torch.cuda.get_device_name()}")
print(f"prefill     {a.prefill} tokens in {prefill:.3f} s = {a.prefill / prefill:.1f} tokens/s")
print(f"decode      {a.decode} tokens in {decode:.3f} s = {a.decode / decode:.1f} tokens/s")
for n in [int(b) for b in a.batches.split(",") if b]:
    first = min(timed(1, n) for _ in range(2))
    total = min(timed(a.decode + 1, n) for _ in range(2)) - first
    print(f"batched {n:<3} {n * a.decode} tokens ({n} sequences x {a.decode}) in {total:.3f} s = {n * a.decode / total:.1f} tokens/s")
