"""Every GGUF that CI exports, loaded in a live llama.cpp (shared/tools/llamacpp-live, its C API
in-process): the model loads (llama.cpp's own error text otherwise), tokenizes the chat-template
texts exactly as mm does, and decodes them to finite logits over the whole vocabulary; a greedy
continuation runs.

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
    out = ctx.greedy(ids, 8)
    assert len(out) > 0, path
    print(f"llama.cpp loads {path} ({model.meta('general.architecture')}): tokenization equal to mm's on {len(texts)} texts, "
          f"finite logits {logits.shape}, greedy {list(out)[:8]}")
