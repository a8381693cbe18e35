"""Upstream PyTorch training throughput on the CPU, the peer of `mm bench --train`.

usage: MINIMIND_DIR=/path/to/minimind python train_torch.py PRESET BATCH SEQ STEPS THREADS

Imports upstream's own `model/model_minimind.py` (jingyaogong/minimind 5959396) from
MINIMIND_DIR and times what `train_pretrain.py` does per step on the CPU (fp32, no autocast):
forward, masked cross-entropy + aux loss, backward, clip_grad_norm_(1.0), AdamW.step(),
zero_grad — on random token batches, like mm's benchmark.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.environ["MINIMIND_DIR"])
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402

preset, batch, seq, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
shapes = {
    "small": dict(hidden_size=512, num_hidden_layers=8),
    "base": dict(hidden_size=768, num_hidden_layers=16),
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4),
}
torch.manual_seed(0)
model = MiniMindForCausalLM(MiniMindConfig(**shapes[preset]))
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
loss_fct = torch.nn.CrossEntropyLoss(reduction="none")
x = torch.randint(3, 6400, (batch, seq))
y = torch.randint(3, 6400, (batch, seq))
mask = torch.ones(batch, seq)
times = []
for step in range(steps + 1):
    start = time.perf_counter()
    res = model(x)
    loss = loss_fct(res.logits.view(-1, res.logits.size(-1)), y.view(-1)).view(y.size())
    loss = (loss * mask).sum() / mask.sum() + res.aux_loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if step > 0:
        times.append(time.perf_counter() - start)
times.sort()
median = times[len(times) // 2]
params = sum(p.numel() for p in model.parameters()) / 1e6
print(f"torch {torch.__version__} preset {preset} ({params:.2f}M), batch {batch}x{seq}, threads {threads}")
print(f"step        median {median:.3f} s over {len(times)} steps (after 1 warm-up)")
print(f"throughput  {batch * seq / median:.1f} tokens/s")
