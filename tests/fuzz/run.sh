#!/usr/bin/env bash
# tests/fuzz/run.sh TARGET SECONDS SEEDS: runs one libFuzzer target for a bounded time from its seed corpus.
# New inputs go to a scratch folder (the first corpus folder is where libFuzzer writes), never into the tree;
# a crash is kept there and its path printed.
set -euo pipefail
target=$(realpath "$1") seconds=$2 seeds=$(realpath "$3")
scratch=$(mktemp -d)
cd "$scratch"
"$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$scratch" "$seeds"
rm -rf "$scratch"
