"""Upstream PyTorch training throughput on a CUDA GPU, the peer of `mm bench train --device cuda`.

usage: MINIMIND_DIR=/path/to/minimind python train_torch_cuda.py PRESET [--no-empty-cache] [--compile]

Imports upstream's own `model/model_minimind.py` (jingyaogong/minimind 5959396) and times what
`trainer/train_pretrain.py::train_epoch` does per step (docs/torch_baseline.md §1): forward
under `torch.autocast("cuda", dtype=torch.bfloat16)`, masked cross-entropy + aux loss,
backward through a disabled GradScaler, clip_grad_norm_(1.0), AdamW(5e-4) (CUDA default
foreach path), zero_grad(set_to_none=True) and, as upstream does, torch.cuda.empty_cache()
every step (`--no-empty-cache` drops it). Batch 32 x 512 of random ids from 8 pinned CPU
batches copied to the GPU each step; 10 warm-up steps, then 60 timed. `--compile` wraps the
model in `torch.compile` (default mode; its compilation happens in the warm-up).
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.environ["MINIMIND_DIR"])
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402

preset = sys.argv[1]
empty_cache = "--no-empty-cache" not in sys.argv
compiled = "--compile" in sys.argv
shapes = {"small": dict(hidden_size=512, num_hidden_layers=8), "base": dict(hidden_size=768, num_hidden_layers=16)}
torch.manual_seed(0)
dev = torch.device("cuda")
model = MiniMindForCausalLM(MiniMindConfig(**shapes[preset])).to(dev)
model.train()
forward = torch.compile(model) if compiled else model
opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
scaler = torch.amp.GradScaler("cuda", enabled=False)
loss_fct = torch.nn.CrossEntropyLoss(reduction="none")
batches = [torch.randint(3, 6400, (32, 513)).pin_memory() for _ in range(8)]
mask = torch.ones(32, 512, device=dev)


def step(i):
    data = batches[i % len(batches)].to(dev, non_blocking=True)
    x, y = data[:, :-1], data[:, 1:]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        res = forward(x)
        loss = loss_fct(res.logits.view(-1, res.logits.size(-1)), y.reshape(-1)).view(y.size())
        loss = (loss * mask).sum() / mask.sum() + res.aux_loss
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    if empty_cache:
        torch.cuda.empty_cache()


for i in range(10):
    step(i)
torch.cuda.synchronize()
start = time.perf_counter()
for i in range(60):
    step(i)
torch.cuda.synchronize()
ms = (time.perf_counter() - start) / 60 * 1e3
print(f"torch {torch.__version__} {preset} empty_cache={empty_cache} compile={compiled}: {ms:.2f} ms/step, {32 * 512 / ms * 1e3:.0f} tokens/s, "
      f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
