"""External oracle: transformers (no torch) and safetensors read an `mm export hf` directory.

Usage: python check_hf_export.py DIR {llama|qwen2-moe} REFERENCE_DIR CASES_JSONL

- AutoConfig parses config.json into the expected class with MiniMind's shape (for qwen2-moe:
  4 experts, top-2, renormalised, one shared expert as wide as the routed ones, every layer
  sparse, q/k/v bias on, tied embeddings, no sliding window);
- GenerationConfig has bos 1 / eos 2 / pad 0;
- every safetensors file carries {"format": "pt"} and the index (if any) covers every tensor;
- llama: every tensor is bit-identical to REFERENCE_DIR (the fixture's hf-llama);
  qwen2-moe: against REFERENCE_DIR (the fixture's hf-minimind MoE) the shared expert's
  down_proj is exactly ×2, shared_expert_gate and q/k/v biases are exactly 0, and every
  other tensor is bit-identical under its Qwen2-MoE name;
- AutoTokenizer loads and apply_chat_template renders every case of CASES_JSONL exactly
  (text and ids) as transformers did with the upstream tokenizer.
"""
import json
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def load_tensors(d):
    index = os.path.join(d, "model.safetensors.index.json")
    files = sorted({*json.load(open(index))["weight_map"].values()}) if os.path.exists(index) else ["model.safetensors"]
    out = {}
    for f in files:
        with safe_open(os.path.join(d, f), framework="numpy") as h:
            assert h.metadata() == {"format": "pt"}, (f, h.metadata())
        part = load_file(os.path.join(d, f))
        assert not set(part) & set(out), f"tensor in two shards: {set(part) & set(out)}"
        out.update(part)
    if os.path.exists(index):
        idx = json.load(open(index))
        assert set(idx["weight_map"]) == set(out), set(idx["weight_map"]) ^ set(out)
        assert idx["metadata"]["total_size"] == sum(v.nbytes for v in out.values())
    return out, files


def bits(a):
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a.view(np.uint32)


def check_config(d, layout):
    from transformers import AutoConfig, GenerationConfig

    c = AutoConfig.from_pretrained(d)
    raw = json.load(open(os.path.join(d, "config.json")))
    rope = getattr(c, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(c, "rope_theta", None))
    assert theta == 1e6, theta
    assert c.tie_word_embeddings is True
    assert c.vocab_size == 6400 and c.rms_norm_eps == 1e-5 and c.hidden_act == "silu"
    assert c.bos_token_id == 1 and c.eos_token_id == 2
    assert raw.get("dtype") in ("float16", "bfloat16", "float32")
    if layout == "llama":
        assert c.model_type == "llama" and raw["architectures"] == ["LlamaForCausalLM"]
        assert c.head_dim * c.num_attention_heads == c.hidden_size
        assert not c.attention_bias and not c.mlp_bias
    else:
        assert c.model_type == "qwen2_moe" and raw["architectures"] == ["Qwen2MoeForCausalLM"]
        assert (c.num_experts, c.num_experts_per_tok, c.norm_topk_prob) == (4, 2, True)
        assert c.moe_intermediate_size == c.shared_expert_intermediate_size == c.intermediate_size
        assert c.decoder_sparse_step == 1 and list(c.mlp_only_layers) == []
        assert c.qkv_bias is True and c.use_sliding_window is False
        layer_types = getattr(c, "layer_types", None)
        assert layer_types is None or set(layer_types) == {"full_attention"}, layer_types
    g = GenerationConfig.from_pretrained(d)
    assert (g.bos_token_id, g.eos_token_id, g.pad_token_id) == (1, 2, 0), g
    return c


def check_weights(d, layout, ref_dir, c):
    ours, files = load_tensors(d)
    ref, _ = load_tensors(ref_dir)
    if layout == "llama":
        assert sorted(ours) == sorted(ref), set(ours) ^ set(ref)
        for name, value in ref.items():
            assert ours[name].dtype == value.dtype and ours[name].shape == value.shape, name
            assert np.array_equal(bits(ours[name]), bits(value)), name
        return len(ours), files
    seen = set()
    for name, value in ours.items():
        if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) or name.endswith("shared_expert_gate.weight"):
            assert not np.any(value.astype(np.float32)), f"{name} is not zero"
            if "gate" in name:
                assert value.shape == (1, c.hidden_size), (name, value.shape)
            continue
        src = name.replace(".mlp.shared_expert.", ".mlp.shared_experts.0.")
        assert src in ref, f"{name} ({src}) not in the reference"
        seen.add(src)
        r = ref[src]
        assert value.dtype == r.dtype and value.shape == r.shape, name
        if name.endswith("shared_expert.down_proj.weight"):
            assert np.array_equal(value.astype(np.float32), 2 * r.astype(np.float32)), name
            assert np.array_equal(bits((value.astype(np.float32) / 2).astype(value.dtype)), bits(r)), name
        else:
            assert np.array_equal(bits(value), bits(r)), name
    assert seen == set(ref), set(ref) - seen
    n_layers = c.num_hidden_layers
    assert sum(k.endswith("shared_expert_gate.weight") for k in ours) == n_layers
    assert sum(k.endswith("_proj.bias") for k in ours) == 3 * n_layers
    return len(ours), files


def check_tokenizer(d, cases_path):
    from transformers import AutoTokenizer

    tc = json.load(open(os.path.join(d, "tokenizer_config.json")))
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast", tc["tokenizer_class"]
    assert isinstance(tc.get("chat_template"), str), "chat template not inline"
    assert not isinstance(tc.get("extra_special_tokens"), list), "list-valued extra_special_tokens breaks transformers 4.x"
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.bos_token_id == 1 and tok.pad_token_id == 0
    n = 0
    for line in open(cases_path):
        case = json.loads(line)
        kwargs = {}
        if case["enable_thinking"] is not None:
            kwargs["enable_thinking"] = case["enable_thinking"]
        text = tok.apply_chat_template(
            case["messages"], tools=case["tools"], tokenize=False,
            add_generation_prompt=case["add_generation_prompt"], **kwargs,
        )
        assert text == case["expected"], (case["name"], text, case["expected"])
        assert tok(text, add_special_tokens=False).input_ids == case["expected_ids"], case["name"]
        n += 1
    return n


def main():
    d, layout, ref_dir, cases = sys.argv[1:5]
    assert layout in ("llama", "qwen2-moe"), layout
    c = check_config(d, layout)
    n_tensors, files = check_weights(d, layout, ref_dir, c)
    n_cases = check_tokenizer(d, cases)
    print(f"ok: {d} ({layout}) config/generation_config/tokenizer load in transformers; "
          f"{n_tensors} tensors in {len(files)} file(s) match the reference; {n_cases} chat cases render exactly")


if __name__ == "__main__":
    main()
