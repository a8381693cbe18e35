"""External oracle: the `gguf` Python package (llama.cpp's gguf-py) reads what mm exports.

usage: check_gguf.py OURS.gguf [REFERENCE.gguf]

Checks that gguf-py parses the file, that the architecture keys have the types llama.cpp's
loader insists on, and that gguf-py's own dequantizers accept every tensor. With a
reference file (made by llama.cpp), tensor names, types, shapes and bytes must be equal.
"""
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

ours = GGUFReader(sys.argv[1])
fields = ours.fields
arch = bytes(fields["general.architecture"].parts[-1]).decode()
assert arch in ("llama", "ernie4_5-moe"), arch
u32_keys = ["block_count", "context_length", "embedding_length", "feed_forward_length",
            "attention.head_count", "attention.head_count_kv", "rope.dimension_count"]
for k in u32_keys:
    f = fields[f"{arch}.{k}"]
    assert f.types == [GGUFValueType.UINT32], (k, f.types)
for k in ["rope.freq_base", "attention.layer_norm_rms_epsilon"]:
    assert fields[f"{arch}.{k}"].types == [GGUFValueType.FLOAT32], k
assert fields["tokenizer.ggml.token_type"].types == [GGUFValueType.ARRAY, GGUFValueType.INT32]
assert bytes(fields["tokenizer.ggml.pre"].parts[-1]).decode() == "gpt-2"
n_tokens = len(fields["tokenizer.ggml.tokens"].data)
embd = next(t for t in ours.tensors if t.name == "token_embd.weight")
assert int(embd.shape[1]) == n_tokens, (embd.shape, n_tokens)

counts = {}
for t in ours.tensors:
    values = dequantize(t.data, t.tensor_type)
    assert np.isfinite(values).all(), t.name
    assert values.size == int(np.prod(t.shape)), t.name
    counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
print(f"gguf-py read {sys.argv[1]}: arch {arch}, {len(ours.tensors)} tensors {counts}, {n_tokens} tokens")

if len(sys.argv) > 2:
    ref = GGUFReader(sys.argv[2])
    mine = {t.name: t for t in ours.tensors}
    assert sorted(mine) == sorted(t.name for t in ref.tensors)
    for t in ref.tensors:
        m = mine[t.name]
        assert m.tensor_type == t.tensor_type, (t.name, m.tensor_type, t.tensor_type)
        assert list(m.shape) == list(t.shape), t.name
        assert bytes(m.data) == bytes(t.data), f"{t.name}: bytes differ"
    print(f"  all {len(ref.tensors)} tensors equal to {sys.argv[2]} (type, shape, bytes)")
