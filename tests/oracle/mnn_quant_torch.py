"""External oracle: torch recomputes MNN llmexport's weight quantization and compares bytes.

usage: mnn_quant_torch.py DIR [cpu|cuda]

DIR is what `ORACLE_DIR=DIR cargo test -p mm-export --test mnn_quant_oracle -- --ignored`
writes: meta.txt (`i oc ic` per matrix), w{i}.f32 (row-major f32) and q{i}_{bits}_{hqq}.bin
(mm's packed values followed by fp16 (zero, scale) pairs). This script implements the
formulas of docs/mnn.md §5a/§5c/§5e with torch tensor ops, as llmexport 3.6.1 runs them
(including Python-scalar semantics such as `15 / t` being `t.reciprocal() * 15`), and prints
per matrix how many packed bytes and alpha values differ. Checked on torch 2.11 CPU (x86-64):
all zero. On CUDA, min/max alpha differs in a few ulps (GPU division), so llmexport run on a
GPU machine is not byte-reproducible.
"""
import sys

import numpy as np
import torch


def effective_block(ic, block):
    while ic % block:
        block //= 2
    return block


def pack(q, bits):
    if bits == 8:
        return q
    q = q.reshape(-1, 2)
    return (q[:, 0] << 4) | q[:, 1]


def min_max(w, bits, block):
    oc, ic = w.shape
    offset = 1 << (bits - 1)
    lo, hi = -offset, offset - 1
    wb = w.reshape(oc, ic // block, block)
    mx = wb.max(-1, keepdim=True)[0]
    mn = wb.min(-1, keepdim=True)[0]
    scale = (mx - mn) / (hi - lo)
    q = torch.round((wb - mn) / scale) + lo
    zero = mn - scale * lo
    q = (torch.clamp(q.flatten(), lo, hi) + offset).to(torch.uint8)
    return q, torch.stack([zero.flatten(), scale.flatten()], -1).flatten()


def shrink(x):
    out = torch.abs(x)
    t = out.pow(0.7 - 1)
    t.mul_(1.0 / 10.0)
    out.sub_(t).clamp_min_(0.0)
    out.mul_(torch.sign(x))
    return out


def hqq(w, bits, block):
    W = w.float().reshape(-1, block)
    mn = W.min(1, keepdim=True)[0]
    mx = W.max(1, keepdim=True)[0]
    qmax = round(2**bits - 1)
    denom = mx - mn
    s = qmax / denom
    s = torch.where(denom.abs() <= 1e-4, torch.full_like(s, 1.0), s).clamp(max=2e4)
    z = torch.round(-mn * s)
    best = torch.tensor(float("inf"), device=W.device)
    best_z = z.clone()
    steps = 0
    for _ in range(20):
        steps += 1
        Wq = torch.round(W * s + z).clamp(0, qmax)
        Wr = (Wq - z) / torch.where(s.abs() < 1e-8, torch.full_like(s, 1e-8), s)
        We = shrink(W - Wr)
        Wr = Wq - (W - We) * s
        z = torch.mean(Wr, axis=1, keepdim=True)
        err = torch.abs(W - Wr).mean().float()
        if torch.isnan(err) or torch.any(torch.isnan(z)):
            z = best_z.clone()
            break
        if err < best:
            best = err
            best_z = z.clone()
        else:
            z = best_z.clone()
            break
    Wq = torch.round(W * s + z).clamp(0, qmax)
    scale = 1.0 / s
    zero = scale * (1 << (bits - 1)) - scale * z
    return Wq.to(torch.uint8).flatten(), torch.stack([zero.flatten(), scale.flatten()], -1).flatten(), steps


def main():
    d = sys.argv[1]
    dev = sys.argv[2] if len(sys.argv) > 2 else "cpu"
    print("torch", torch.__version__, "on", dev)
    bad = 0
    for line in open(f"{d}/meta.txt"):
        i, oc, ic = map(int, line.split())
        w = torch.from_numpy(np.fromfile(f"{d}/w{i}.f32", dtype=np.float32).reshape(oc, ic)).to(dev)
        block = effective_block(ic, 64)
        for bits in (4, 8):
            for h in (0, 1):
                steps = ""
                if h:
                    q, alpha, steps = hqq(w, bits, block)
                else:
                    q, alpha = min_max(w, bits, block)
                packed = pack(q, bits).cpu().numpy().tobytes()
                alpha16 = alpha.cpu().numpy().astype(np.float16)
                mm = open(f"{d}/q{i}_{bits}_{h}.bin", "rb").read()
                if len(mm) != len(packed) + 2 * alpha16.size:
                    print(f"mat{i}: length {len(mm)} vs {len(packed) + 2 * alpha16.size}")
                    bad += 1
                    continue
                mm = np.frombuffer(mm, np.uint8)
                dq = int((mm[: len(packed)] != np.frombuffer(packed, np.uint8)).sum())
                da = int((mm[len(packed):].view(np.uint16) != alpha16.view(np.uint16)).sum())
                bad += dq + da
                print(f"mat{i} {oc}x{ic} {bits}-bit hqq={h} steps={steps}: {dq}/{len(packed)} bytes, {da}/{alpha16.size} alpha differ")
    print("identical" if bad == 0 else f"{bad} differences")
    sys.exit(0 if bad == 0 else 1)


if __name__ == "__main__":
    main()
