"""Every GGUF that CI exports, loaded in a live llama.cpp (shared/tools/llamacpp-live, its C API
in-process): the model loads (llama.cpp's own error text otherwise), tokenizes the chat-template
texts exactly as mm does, and decodes them to finite logits over the whole vocabulary; a greedy
continuation runs. mm's own logits on the same file (`mm logits`, its CPU engine) must match
llama.cpp's at every position within the bounds of shared/fixtures/llamacpp/README.md ("How a
Rust test should compare", 3.): float files 3e-3 abs / 1e-4 logsumexp (llama.cpp rounds
activations and its KV cache to f16), quantized files 0.1 abs / 2e-3 logsumexp.

usage: check_gguf_live.py MM_BINARY GGUF...
"""
import json
import subprocess
import sys

import numpy as np

import lc

mm, paths = sys.argv[1], sys.argv[2:]
texts = [
    "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n你好，介绍一下你自己<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over 13 lazy dogs; 3.14159 != 2.71828.",
    "中文、English 和 数字 12345 混合的一句话。",
]
for path in paths:
    model = lc.Model(path)
    ctx = lc.Context(model, n_ctx=512, n_threads=2)
    for text in texts:
        ours = json.loads(subprocess.run([mm, "tokenize", text, "--model", path], check=True, capture_output=True, text=True).stdout)
        theirs = list(model.tokenize(text))
        assert theirs == ours, f"{path}: llama.cpp tokenizes {text!r} as {theirs}, mm as {ours}"
    ids = model.tokenize(texts[0])
    logits = ctx.decode(ids, all_logits=True)
    assert logits.shape == (len(ids), 6400) and np.isfinite(logits).all(), (path, logits.shape)
    ours = json.loads(subprocess.run([mm, "logits", path, "--ids", json.dumps(list(ids))], check=True,
                                     capture_output=True, text=True).stdout)
    mine = np.array(ours["logits"], dtype=np.float64)
    assert ours["ids"] == list(ids) and mine.shape == logits.shape, (path, mine.shape)
    def lse(x):
        top = x.max(axis=1, keepdims=True)
        return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]
    d_abs = float(np.abs(mine - logits).max())
    d_lse = float(np.abs(lse(mine) - lse(logits.astype(np.float64))).max())
    ftype = model.meta("general.file_type")
    is_float = str(ftype) in ("0", "1", "32")  # ggml file types ALL_F32, MOSTLY_F16, MOSTLY_BF16
    bound_abs, bound_lse = (3e-3, 1e-4) if is_float else (0.1, 2e-3)
    assert d_abs <= bound_abs and d_lse <= bound_lse, \
        f"{path}: mm's logits differ from llama.cpp's by {d_abs:.3g} abs, {d_lse:.3g} lse (bounds {bound_abs}, {bound_lse})"
    out = ctx.greedy(ids, 8)
    assert len(out) > 0, path
    print(f"llama.cpp loads {path} ({model.meta('general.architecture')}): tokenization equal to mm's on {len(texts)} texts, "
          f"finite logits {logits.shape}, mm's logits within {d_abs:.2e} abs / {d_lse:.2e} lse, greedy {list(out)[:8]}")
