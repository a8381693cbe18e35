#!/usr/bin/env bash
# Training tokens/s on the CPU: mm vs upstream PyTorch, same shapes, same run.
#   MINIMIND_DIR=<minimind checkout at 5959396> PYTHON=<python with torch> benches/train_throughput.sh
# mm is taken from target/release/mm (cargo build --release first).
set -euo pipefail
cd "$(dirname "$0")/.."
MM=${MM:-target/release/mm}
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-2}
STEPS=${STEPS:-5}
for spec in "tiny 8 256" "small 4 256"; do
  set -- $spec
  echo "== $1, batch $2 x $3, $THREADS threads"
  RAYON_NUM_THREADS=$THREADS "$MM" bench --train --preset "$1" --batch-size "$2" --seq-len "$3" --steps "$STEPS" --threads "$THREADS"
  "$PYTHON" benches/train_torch.py "$1" "$2" "$3" "$STEPS" "$THREADS"
done
