#!/usr/bin/env python3
"""Check a tokenizer directory written by `mm train-tokenizer` against HF Python.

Usage: check_trained_tokenizer.py DIR MM_BINARY

Loads DIR/tokenizer.json with `tokenizers.Tokenizer.from_file` and DIR with
`transformers.PreTrainedTokenizerFast.from_pretrained`, encodes a list of texts with both,
and compares with the ids `MM_BINARY tokenize --model DIR TEXT` prints (a JSON list).
Also checks the special token ids, decoding round trips and the chat template.
"""

import json
import subprocess
import sys

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

TEXTS = [
    "Hello, world!",
    "你好，世界！今天天气很好。",
    "Byte-level BPE 分词器 learns merges from 语料.",
    "  two leading spaces and trailing  ",
    "tabs\tand\nnew lines\n\n",
    "emoji 🌧️🐱 and numbers 3.14159, 2024",
    "<|im_start|>user\n一加一等于几？<|im_end|>\n<|im_start|>assistant\n二。<|im_end|>",
    "<|endoftext|>",
    "don't, can't, we'll — “quotes” ‘single’",
]


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    model_dir, mm_bin = sys.argv[1], sys.argv[2]
    raw = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    fast = PreTrainedTokenizerFast.from_pretrained(model_dir)
    failures = 0

    for i, tok in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]):
        if raw.token_to_id(tok) != i or fast.convert_tokens_to_ids(tok) != i:
            print(f"FAIL special {tok}: tokenizers {raw.token_to_id(tok)}, transformers {fast.convert_tokens_to_ids(tok)}, want {i}")
            failures += 1

    for text in TEXTS:
        want = raw.encode(text).ids
        hf = fast.encode(text, add_special_tokens=False)
        out = subprocess.run([mm_bin, "tokenize", "--model", model_dir, text], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"FAIL mm tokenize {text!r}: {out.stderr.strip()}")
            failures += 1
            continue
        got = json.loads(out.stdout)
        ok = got == want == hf and raw.decode(want, skip_special_tokens=False) == text
        print(f"{'ok  ' if ok else 'FAIL'} {len(got):3d} ids  {text!r}")
        if not ok:
            print(f"     mm:           {got}\n     tokenizers:   {want}\n     transformers: {hf}")
            print(f"     decoded: {raw.decode(want, skip_special_tokens=False)!r}")
            failures += 1

    msgs = [{"role": "user", "content": "你好"}]
    rendered = fast.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if "<|im_start|>user\n你好<|im_end|>" not in rendered or not rendered.endswith("<|im_start|>assistant\n"):
        print(f"FAIL chat template: {rendered!r}")
        failures += 1

    print(f"vocab size {raw.get_vocab_size()}; {len(TEXTS)} texts; {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
