#!/usr/bin/env bash
# Copies what scripts/gpu-check.sh needs from the shared fixtures into gpucheck-train/
# (gitignored locally; pass it to the device tool's `carry` with dist/cuda). The GPU machine
# gets no shared/ and has no xz-aware Rust test runner, so the weights travel unpacked.
#
#   MM_SHARED=../shared scripts/stage-gpu-fixtures.sh     # -> gpucheck-train/ (~36 MB)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SHARED="${MM_SHARED:-../shared}"
SRC="$SHARED/fixtures/minimind2"
DEST=gpucheck-train
[ -f "$SRC/inputs.json" ] || { echo "no $SRC/inputs.json (set MM_SHARED)" >&2; exit 1; }
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp/fixtures/minimind2/dense" "$DEST.tmp/fixtures/minimind2/moe"
cp "$SRC/inputs.json" "$DEST.tmp/fixtures/minimind2/"
cp "$SRC/dense/expected.json" "$SRC/dense/train_step1.safetensors" "$DEST.tmp/fixtures/minimind2/dense/"
cp "$SRC/moe/expected.json" "$SRC/moe/train_step1_partial.safetensors" "$DEST.tmp/fixtures/minimind2/moe/"
for cfg in dense moe; do
  mkdir -p "$DEST.tmp/models/$cfg"
  tar -xJf "$SRC/$cfg/weights.tar.xz" -C "$DEST.tmp/models/$cfg" hf-minimind
done
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
du -sh "$DEST"
