"""Load generator for OpenAI-compatible chat servers (mm serve, upstream's serve_openai_api.py):
N concurrent clients each stream chat completions for a fixed time; reports output tokens/s
(all clients together, counted as streamed content pieces, or from `usage` when the server
sends it) and time to first token (median and p90).

usage: serve_load.py BASE_URL MODEL --clients 1 4 16 32 [--seconds 60] [--max-tokens 128] [--tokenizer tokenizer.json]
Every client is a thread with its own HTTP connection (standard library). With --tokenizer
(needs the `tokenizers` package) output tokens are counted by encoding each reply's text, the
same way for every server: upstream's server streams words, not tokens, and sends no usage.
"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

PROMPTS = ["你好，请介绍一下你自己。", "解释一下什么是光合作用。", "写一首关于秋天的短诗。", "How do airplanes fly?"]


def one_request(url, model, prompt, max_tokens):
    """Streams one chat completion; returns (seconds to first content, content pieces, usage tokens or None, text)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
                       "max_tokens": max_tokens, "temperature": 0.7, "top_p": 0.92,
                       "stream_options": {"include_usage": True}})
    start = time.perf_counter()
    conn.request("POST", parts.path.rstrip("/") + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    first, pieces, usage, text = None, 0, None, []
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            usage = chunk["usage"].get("completion_tokens")
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content"):
                pieces += 1
                text.append((delta.get("reasoning_content") or "") + (delta.get("content") or ""))
                if first is None:
                    first = time.perf_counter() - start
    conn.close()
    return first, pieces, usage, "".join(text)


def run(url, model, clients, seconds, max_tokens, tokenizer=None):
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()
    ttft, tokens, requests, errors = [], [0], [0], []

    def client(i):
        k = i
        while time.perf_counter() < stop_at:
            try:
                first, pieces, usage, text = one_request(url, model, PROMPTS[k % len(PROMPTS)], max_tokens)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                with lock:
                    errors.append(str(e))
                return
            k += 1
            with lock:
                requests[0] += 1
                if tokenizer is not None:
                    tokens[0] += len(tokenizer.encode(text, add_special_tokens=False).ids)
                else:
                    tokens[0] += usage if usage is not None else pieces
                if first is not None:
                    ttft.append(first)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ttft.sort()
    p90 = ttft[int(0.9 * (len(ttft) - 1))] if ttft else float("nan")
    return {"clients": clients, "requests": requests[0], "output_tokens_per_s": tokens[0] / elapsed,
            "ttft_median_s": statistics.median(ttft) if ttft else float("nan"), "ttft_p90_s": p90,
            "seconds": elapsed, "errors": errors[:3]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("model")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--tokenizer", help="tokenizer.json to count output tokens with")
    a = ap.parse_args()
    tokenizer = None
    if a.tokenizer:
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(a.tokenizer)
    for n in a.clients:
        r = run(a.url, a.model, n, a.seconds, a.max_tokens, tokenizer)
        print(json.dumps(r, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
