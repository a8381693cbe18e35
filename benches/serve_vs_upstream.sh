#!/bin/bash
# mm serve (release) vs upstream serve_openai_api.py on the same MiniMind2-small weights
# (BENCHMARKS.md, issue 14). Needs: upstream's server already running on :8998 from a fetched
# checkout (not committed) with out/full_sft_512.pth = `mm init --preset small --format pth`,
# and UPSTREAM_PTH / Q4_GGUF pointing at that .pth and its `mm export gguf --quant q4_k_m`;
# PYTHON a python with the `tokenizers` package.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
L=$root/benches/serve_load.py
P=${PYTHON:-python3}
TOK=$root/assets/minimind2/tokenizer.json
echo "== upstream serve_openai_api.py (5959396), torch CPU, f32"
$P $L http://127.0.0.1:8998 minimind --clients 1 4 16 32 --seconds 30 --max-tokens 128 --tokenizer $TOK
pkill -f serve_openai_api.py
sleep 2
for model in "$UPSTREAM_PTH" "$Q4_GGUF"; do
  "$root/target/release/mm" serve "$model" --port 8999 --served-model-name minimind --threads 2 > "${TMPDIR:-/tmp}/mm-serve.out" 2> "${TMPDIR:-/tmp}/mm-serve.log" &
  pid=$!
  for i in $(seq 100); do grep -q http:// "${TMPDIR:-/tmp}/mm-serve.out" 2>/dev/null && break; sleep 0.2; done
  echo "== mm serve $model"
  $P $L http://127.0.0.1:8999 minimind --clients 1 4 16 32 --seconds 30 --max-tokens 128 --tokenizer $TOK
  kill -INT $pid; wait $pid
done
