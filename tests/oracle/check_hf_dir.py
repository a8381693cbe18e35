"""External oracle: HF transformers and safetensors read an mm-written model directory.

Usage: python check_hf_dir.py DIR {llama|minimind} REFERENCE_DIR
Checks that transformers parses config.json (Llama layout) and loads the tokenizer, that
the tokenizer encodes like the reference tokenizer, and that safetensors (numpy) reads
every tensor with {"format": "pt"} metadata and bit-identical values to the reference.
"""
import json
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def main() -> None:
    out_dir, layout, ref_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    from transformers import AutoConfig, AutoTokenizer

    cfg = json.load(open(f"{out_dir}/config.json"))
    if layout == "llama":
        config = AutoConfig.from_pretrained(out_dir)
        assert config.model_type == "llama", config.model_type
        assert config.tie_word_embeddings, "expected tied embeddings"
        assert config.head_dim * config.num_attention_heads == config.hidden_size
    else:
        assert cfg["model_type"] == "minimind" and cfg["architectures"] == ["MiniMindForCausalLM"]

    with safe_open(f"{out_dir}/model.safetensors", framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}, f.metadata()
    ours = load_file(f"{out_dir}/model.safetensors")
    ref = load_file(f"{ref_dir}/model.safetensors")
    assert sorted(ours) == sorted(ref), set(ours) ^ set(ref)
    for name, value in ref.items():
        assert ours[name].dtype == value.dtype and ours[name].shape == value.shape, name
        assert np.array_equal(ours[name].view(np.uint16), value.view(np.uint16)), name

    # The MiniMind layout names remote model code in auto_map; the tokenizer needs none of it.
    from transformers import PreTrainedTokenizerFast
    loader = AutoTokenizer if layout == "llama" else PreTrainedTokenizerFast
    tok = loader.from_pretrained(out_dir)
    ref_tok = loader.from_pretrained(ref_dir)
    text = "<|im_start|>user\n你好，MiniMind! 3.14159 tokens<|im_end|>\n"
    assert tok(text).input_ids == ref_tok(text).input_ids
    messages = [{"role": "user", "content": "hello"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    print(f"ok: {out_dir} ({layout}) read by transformers and safetensors, {len(ours)} tensors identical")


if __name__ == "__main__":
    main()
