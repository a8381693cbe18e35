"""Upstream GRPO timed on a GPU or the CPU, the peer of `mm train grpo` (benches/grpo.sh).

usage: MINIMIND_DIR=<minimind@5959396 with model/ trainer/ dataset/> python grpo_torch.py \
         DATA.jsonl WEIGHTS_OUT.pth [--steps 8] [--batch-size 2] [--num-generations 8] [--max-gen-len 256]

Runs upstream's own `grpo_train_epoch` (trainer/train_grpo.py): `generate` with sampling,
per-token log-probs of policy and reference, rewards, the loss, AdamW and the cosine schedule,
`empty_cache` and `gc.collect` every step, fp32 as the script runs it (its autocast context is
never entered in the epoch loop). One crash of upstream's attention on unpadded prompt batches is
worked around without changing any result (see `_sdpa_fixed`). The reward is upstream's rule part (`--reasoning 1`: format
and tag counts) with the reward model's score stubbed to 0, so both sides compute the same
rule reward and no 1.8B reward model is needed. MiniMind2-small with random weights (seed 42),
written fp16 to WEIGHTS_OUT for mm to start from the same weights; the policy here uses the
fp16-rounded values too. One warm-up step, then `--steps` timed; prints samples/s
(prompts x generations per second).
"""
import argparse
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, Subset

root = os.environ["MINIMIND_DIR"]
sys.path.insert(0, root)
from transformers import AutoTokenizer  # noqa: E402

from dataset.lm_dataset import RLAIFDataset  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
import model.model_minimind as mm_upstream  # noqa: E402
import trainer.train_grpo as tg  # noqa: E402

# Upstream's attention passes an all-ones padding mask *and* is_causal=True to SDPA when a batch
# of prompts needs no padding, which torch rejects ("Explicit attn_mask should not be set when
# is_causal=True"). An all-true mask changes nothing, so it is dropped there; nothing else of
# upstream's code is touched.
_sdpa = mm_upstream.F.scaled_dot_product_attention


def _sdpa_fixed(q, k, v, attn_mask=None, is_causal=False, **kw):
    if attn_mask is not None and is_causal and bool(attn_mask.all()):
        attn_mask = None
    return _sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)


mm_upstream.F = SimpleNamespace(**{n: getattr(torch.nn.functional, n) for n in dir(torch.nn.functional) if not n.startswith("__")})
mm_upstream.F.scaled_dot_product_attention = _sdpa_fixed

ap = argparse.ArgumentParser()
ap.add_argument("data")
ap.add_argument("weights_out")
ap.add_argument("--steps", type=int, default=8)
ap.add_argument("--batch-size", type=int, default=2)
ap.add_argument("--num-generations", type=int, default=8)
ap.add_argument("--max-gen-len", type=int, default=256)
ap.add_argument("--max-seq-len", type=int, default=66)
ap.add_argument("--device", default="cuda:0")
a = ap.parse_args()

torch.manual_seed(42)
cfg = MiniMindConfig(hidden_size=512, num_hidden_layers=8, max_seq_len=a.max_seq_len + a.max_gen_len)
model = MiniMindForCausalLM(cfg)
half = {k: v.half() for k, v in model.state_dict().items()}
torch.save(half, a.weights_out)
model.load_state_dict({k: v.float() for k, v in half.items()}, strict=False)
model = model.to(a.device)
ref = MiniMindForCausalLM(cfg)
ref.load_state_dict({k: v.float() for k, v in half.items()}, strict=False)
ref = ref.to(a.device).eval().requires_grad_(False)
tok = AutoTokenizer.from_pretrained(os.path.join(root, "model"))


class RuleOnly:
    """The reward model's place: a score of 0, so only upstream's rule reward counts."""

    def get_score(self, tokenizer, chat):
        return 0.0


out = tempfile.mkdtemp()
tg.args = SimpleNamespace(device=a.device, max_seq_len=a.max_seq_len, max_gen_len=a.max_gen_len,
                          num_generations=a.num_generations, beta=0.02, reasoning=1, accumulation_steps=1,
                          grad_clip=1.0, log_interval=10**9, save_interval=10**9, save_dir=out, save_weight="grpo")
tg.lm_config = cfg
tg.model, tg.tokenizer = model, tok
tg.optimizer = torch.optim.AdamW(model.parameters(), lr=8e-8)
tg.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(tg.optimizer, T_max=1000, eta_min=8e-9)
ds = RLAIFDataset(a.data, tok, max_length=cfg.max_seq_len)
b = a.batch_size


def run(first, steps):
    loader = DataLoader(Subset(ds, range(first * b, (first + steps) * b)), batch_size=b, shuffle=False)
    # `iters` far beyond the steps run: upstream saves at `step == iters - 1`.
    tg.grpo_train_epoch(0, loader, 10**9, ref, RuleOnly(), None)
    if torch.cuda.is_available():
        torch.cuda.synchronize()


run(0, 1)
t0 = time.perf_counter()
run(1, a.steps)
dt = time.perf_counter() - t0
n = a.steps * b * a.num_generations
device = torch.cuda.get_device_name() if "cuda" in a.device else "cpu"
print(f"upstream train_grpo.py (fp32, {device}): {a.steps} steps x {b} prompts x "
      f"{a.num_generations} generations, max_gen_len {a.max_gen_len}: {dt:.2f} s, {n / dt:.2f} samples/s")
