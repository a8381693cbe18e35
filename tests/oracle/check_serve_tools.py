"""The openai SDK receives parsed `tool_calls` (whole and streamed) and `reasoning_content`
from `mm serve` running a tiny model that CI first trained on dataset/samples/serve_sample.jsonl
(a `<tool_call>` reply and a `<think>` reply) until it reproduces them greedily.

usage: check_serve_tools.py BASE_URL MODEL SAMPLES.jsonl
"""
import json
import sys

from openai import OpenAI

base, model, samples = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base.rstrip("/") + "/v1", api_key="unused")
rows = [json.loads(line) for line in open(samples, encoding="utf-8")]
tool_row = next(r for r in rows if r["conversations"][0].get("functions"))
think_row = next(r for r in rows if r["conversations"][-1]["content"].startswith("<think>"))

system, user, answer = tool_row["conversations"]
tools = system.pop("functions")
want_call = json.loads(answer["content"].split("<tool_call>")[1].split("</tool_call>")[0])
messages = [system, user]

whole = client.chat.completions.create(model=model, messages=messages, tools=tools, temperature=0, max_tokens=64)
choice = whole.choices[0]
assert choice.finish_reason == "tool_calls", choice
call = choice.message.tool_calls[0]
assert call.type == "function" and call.function.name == want_call["name"], call
assert json.loads(call.function.arguments) == want_call["arguments"], call.function.arguments

streamed = {}
finish = None
for chunk in client.chat.completions.create(model=model, messages=messages, tools=tools, temperature=0, max_tokens=64, stream=True):
    delta = chunk.choices[0].delta if chunk.choices else None
    for tc in (delta.tool_calls or []) if delta else []:
        entry = streamed.setdefault(tc.index, {"name": "", "arguments": ""})
        entry["name"] += tc.function.name or ""
        entry["arguments"] += tc.function.arguments or ""
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
assert finish == "tool_calls", finish
assert streamed[0]["name"] == want_call["name"] and json.loads(streamed[0]["arguments"]) == want_call["arguments"], streamed

user, answer = think_row["conversations"]
reasoning = answer["content"].split("<think>")[1].split("</think>")[0].strip("\n")
content = answer["content"].split("</think>")[1].strip()
whole = client.chat.completions.create(model=model, messages=[user], temperature=0, max_tokens=64)
msg = whole.choices[0].message
assert msg.reasoning_content == reasoning and msg.content == content, msg
parts = {"reasoning": "", "content": ""}
for chunk in client.chat.completions.create(model=model, messages=[user], temperature=0, max_tokens=64, stream=True):
    if chunk.choices:
        d = chunk.choices[0].delta
        parts["reasoning"] += getattr(d, "reasoning_content", None) or ""
        parts["content"] += d.content or ""
assert parts == {"reasoning": reasoning, "content": content}, parts
print("openai SDK: tool_calls (whole and streamed) and reasoning_content from a trained tiny model: ok")
