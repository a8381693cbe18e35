"""The official openai SDK against a running `mm serve`: models, chat whole and streamed
(role-first chunks, include_usage), n=2, logprobs, text completions with echo + logprobs,
and errors raised as the SDK's typed exceptions.

usage: check_serve_openai.py BASE_URL MODEL
"""
import sys

import openai
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base.rstrip("/") + "/v1", api_key="unused")
messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "你好"}]

ids = [m.id for m in client.models.list()]
assert ids == [model], ids

whole = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=16)
choice = whole.choices[0]
assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
assert choice.finish_reason in ("stop", "length"), choice.finish_reason
assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

chunks = list(client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=16, stream=True,
    stream_options={"include_usage": True}))
assert chunks[0].choices[0].delta.role == "assistant"
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == choice.message.content, (text, choice.message.content)
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
assert finishes == [choice.finish_reason], finishes
assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

two = client.chat.completions.create(model=model, messages=messages, n=2, max_tokens=8, seed=7)
assert [c.index for c in two.choices] == [0, 1]

lp = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)
entries = lp.choices[0].logprobs.content
assert entries and all(len(e.top_logprobs) == 3 and e.top_logprobs[0].logprob == e.logprob for e in entries)

cmpl = client.completions.create(model=model, prompt=[[1, 320, 1450, 271]], max_tokens=1, logprobs=1, echo=True, temperature=0)
tl = cmpl.choices[0].logprobs.token_logprobs
assert tl[0] is None and len(tl) == 5 and all(isinstance(x, float) for x in tl[1:]), tl

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError:
    pass
try:
    client.chat.completions.create(model=model, messages=[])
    raise AssertionError("empty messages were accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "messages", e.body
print(f"openai {openai.__version__} against mm serve: models, chat (whole, streamed, n=2, logprobs), completions with echo, typed errors: ok")
