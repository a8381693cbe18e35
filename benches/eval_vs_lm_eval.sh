#!/usr/bin/env bash
# Questions per second of `mm eval --task mc` vs lm-evaluation-harness's hf backend on the
# same MiniMind2-small (random weights, `mm export hf`) and the C-Eval-layout sample, same run:
#
#   [LM_EVAL_VENV=.ci/lmvenv] benches/eval_vs_lm_eval.sh [--shots 0,5] [--rounds 2]
#
# The venv gets lm-eval[hf], torch and transformers from PyPI when it lacks them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
V="${LM_EVAL_VENV:-.ci/lmvenv}"
if [ ! -x "$V/bin/lm_eval" ]; then
  python3 -m venv "$V"
  "$V/bin/pip" install --quiet 'lm-eval[hf,api]' torch transformers
fi
cargo build --release --bin mm --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/mm init --preset small -o "$work/small" >/dev/null
target/release/mm export hf "$work/small" --arch llama -o "$work/small-hf" >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
"$V/bin/python" benches/eval_vs_lm_eval.py target/release/mm "$work/small-hf" dataset/samples/ceval "$work" "$@" 2>/dev/null
