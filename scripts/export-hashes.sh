#!/usr/bin/env bash
# sha256 of every export of the shared fixtures (GGUF at each quantization, HF in each
# architecture, converted checkpoints, MNN), for checking that a refactor changes no byte:
#
#   scripts/export-hashes.sh [MM] > tests/export_hashes.sha256     # record
#   scripts/export-hashes.sh [MM] | diff tests/export_hashes.sha256 -   # check (CI)
#
# MM defaults to target/debug/mm; MM_SHARED to ../shared. Files that record the time or the
# tool version would not compare; none of these do.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MM="${1:-target/debug/mm}"
SHARED="${MM_SHARED:-$(cd .. && pwd)/shared}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xJf "$SHARED/fixtures/minimind2/dense/weights.tar.xz" -C "$work"
mkdir -p "$work/moe" && tar -xJf "$SHARED/fixtures/minimind2/moe/weights.tar.xz" -C "$work/moe"
out="$work/out"
mkdir -p "$out"
q() { "$MM" "$@" >/dev/null 2>&1 || { echo "failed: mm $*" >&2; exit 1; }; }
for quant in f32 f16 bf16 q8_0 q6_k q5_k_m q4_k_m q4_0; do
  q export gguf "$work/hf-llama" --quant "$quant" -o "$out/dense-$quant.gguf"
done
q export gguf "$work/moe/hf-minimind" --quant q4_k_m -o "$out/moe-q4_k_m.gguf"
q export gguf "$work/moe/hf-minimind" --quant f16 -o "$out/moe-f16.gguf"
q export hf "$work/hf-minimind" --arch llama -o "$out/hf-llama"
q export hf "$work/hf-minimind" --arch minimind -o "$out/hf-minimind"
q export hf "$work/moe/hf-minimind" --arch qwen2-moe -o "$out/hf-qwen2-moe"
q export hf "$work/moe/hf-minimind" --arch qwen2-moe --max-shard-size 4MB -o "$out/hf-qwen2-moe-sharded"
q convert "$work/model.pth" --heads 4 --to hf -o "$out/conv-hf"
q convert "$work/model.pth" --heads 4 --to hf-llama -o "$out/conv-hf-llama"
q convert "$work/hf-llama" --to pth -o "$out/conv.pth"
q convert "$work/moe/hf-minimind" --to hf-qwen2-moe -o "$out/conv-qwen2-moe"
q convert "$out/dense-f16.gguf" --to hf -o "$out/conv-from-gguf"
q export mnn "$work/hf-llama" -o "$out/mnn-q4"
q export mnn "$work/hf-llama" --quant-bit 8 --hqq -o "$out/mnn-q8-hqq"
q export ollama "$work/hf-llama" --quant q4_k_m -o "$out/ollama"
(cd "$out" && find . -type f | LC_ALL=C sort | xargs sha256sum)
