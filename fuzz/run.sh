#!/usr/bin/env bash
# Runs one fuzz target with the settings used for the recorded runs (README.md):
#   fuzz/run.sh TARGET [extra libFuzzer flags, e.g. -runs=1000000 or -max_total_time=60]
# The growing corpus is fuzz/corpus/TARGET (git-ignored), seeded from fuzz/seeds/TARGET
# (committed, read only); crashes land in fuzz/artifacts/TARGET/. One process, one core.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET [libFuzzer flags]}
shift
mkdir -p "corpus/$target" "artifacts/$target"
export RUSTC_BOOTSTRAP=1   # only needed for a sanitizer (-Z flags); harmless with --sanitizer none
exec cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
  -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="artifacts/$target/" "$@"
