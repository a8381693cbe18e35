"""A reward model written by mm, loaded by transformers as LlamaForSequenceClassification.

usage: check_reward_model.py MODEL_DIR CASES_JSON

CASES_JSON (written by tests/reward_model.rs): {"conversations": [[{role, content}, ...], ...],
"ids": [[mm's token ids], ...], "scores": [mm's score of each conversation]}.

Checks: the config says LlamaForSequenceClassification with one label and a pad id; AutoModel-
ForSequenceClassification loads the directory as LlamaForSequenceClassification with no missing or
unexpected weights; the tokenizer's chat template and tokenizer give mm's ids; the scores of each
conversation alone, and of all of them in one right-padded batch (transformers pools at the last
token that is not pad_token_id), are mm's within 1e-4. Prints the largest difference.
"""

import json
import sys

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

TOLERANCE = 1e-4


def main():
    model_dir, cases_path = sys.argv[1], sys.argv[2]
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)
    config = AutoConfig.from_pretrained(model_dir)
    assert config.architectures == ["LlamaForSequenceClassification"], config.architectures
    assert config.num_labels == 1, config.num_labels
    assert config.pad_token_id is not None, "config.json has no pad_token_id"

    model, info = AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True
    )
    assert type(model).__name__ == "LlamaForSequenceClassification", type(model).__name__
    missing = [k for k in info.get("missing_keys", [])]
    unexpected = [k for k in info.get("unexpected_keys", [])]
    assert not missing and not unexpected, f"missing {missing}, unexpected {unexpected}"
    assert tuple(model.score.weight.shape) == (1, config.hidden_size), model.score.weight.shape
    assert model.score.bias is None
    model.eval()

    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = [tok.apply_chat_template(c, tokenize=False) for c in cases["conversations"]]
    worst = 0.0
    with torch.no_grad():
        for i, (text, want_ids, want) in enumerate(zip(texts, cases["ids"], cases["scores"])):
            ids = tok(text)["input_ids"]
            assert ids == want_ids, f"conversation {i}: transformers tokenizes to {ids}, mm to {want_ids}"
            got = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
            worst = max(worst, abs(got - want))
            assert abs(got - want) <= TOLERANCE, f"conversation {i}: transformers {got}, mm {want}"
        tok.padding_side = "right"
        batch = tok(texts, padding=True, return_tensors="pt")
        assert (batch["input_ids"] == config.pad_token_id).any(), "the batch has no padding to pool past"
        got = model(**batch).logits[:, 0].tolist()
        for i, (g, want) in enumerate(zip(got, cases["scores"])):
            worst = max(worst, abs(g - want))
            assert abs(g - want) <= TOLERANCE, f"batched conversation {i}: transformers {g}, mm {want}"
    print(f"reward model parity: {len(texts)} conversations, alone and batched; max |transformers - mm| = {worst:.3e}")


if __name__ == "__main__":
    main()
