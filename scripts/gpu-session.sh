#!/usr/bin/env bash
# The GPU-machine measurements of issues 16 and 19 in two calls of the device tool (each under
# its 10-minute limit), carrying dist/ (dist/cuda/mm.gz, and dist/cuda-before/mm.gz: a build of
# the commit to compare against, optional), gpucheck-train/ and .upstream/:
#
#   scripts/gpu-session.sh train     # fused-kernel selftest; --phases of base and small (before and
#                                    # after); benches/train_throughput_cuda.sh (mm vs PyTorch)
#   scripts/gpu-session.sh checks    # gpu-graph-check.sh, gpu-check.sh, benches/grpo.sh 8 256
#
# Logs go to $OUT (the device tool's folder) or /tmp/mm-gpu-session; the tail of each part is
# printed last.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OUT="${OUT:-/tmp/mm-gpu-session}"
mkdir -p "$OUT"
bin="$(mktemp -d /tmp/mm-session.XXXXXX)"
gzip -dc dist/cuda/mm.gz > "$bin/mm-after" && chmod +x "$bin/mm-after"
[ -e dist/cuda-before/mm.gz ] && gzip -dc dist/cuda-before/mm.gz > "$bin/mm-before" && chmod +x "$bin/mm-before"
export MM="$bin/mm-after" MINIMIND_DIR=.upstream/minimind
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case "${1:-}" in
  train)
    timeout 90 "$MM" selftest-fused --device cuda > "$OUT/selftest-fused.log" 2>&1; echo "selftest-fused: exit $?"
    grep -iE "fail|causal|max" "$OUT/selftest-fused.log" | head -12
    for p in base small; do
      for v in before after; do
        [ -x "$bin/mm-$v" ] || continue
        echo "== phases $p $v"
        timeout 60 "$bin/mm-$v" bench train --device cuda --preset "$p" --batch-size 32 --seq-len 512 --steps 10 --dtype bf16 --phases 2>&1 |
          grep -E "^(step|throughput|phases|memory)"
      done
    done
    timeout 420 benches/train_throughput_cuda.sh 2>&1 | grep -v -i warn | tee "$OUT/train_throughput.log" | tail -40 ;;
  checks)
    timeout 150 scripts/gpu-graph-check.sh 2>&1 | tail -4
    STEP_TIMEOUT=60 timeout 260 scripts/gpu-check.sh > "$OUT/gpu-check.txt" 2>&1; echo "gpu-check: exit $?"
    grep -E "^--- |max \|diff\||FAIL|passed" "$OUT/gpu-check.txt" | head -30
    timeout 150 benches/grpo.sh 8 256 2>&1 | grep -v -i warn | tail -4 ;;
  *) echo "usage: scripts/gpu-session.sh train|checks" >&2; exit 2 ;;
esac
rm -rf "$bin"
