#!/usr/bin/env bash
# `kiln build -j 1` against `-j 2` on a multi-target config (default: the four-device MobileNetV2
# example), cold each time (--force, fresh output folders, so both compute calibration), alternating,
# ROUNDS rounds; prints each wall time and checks that both wrote byte-identical artifacts.
#   scripts/bench_parallel.sh [CONFIG] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/examples/mobilenet_v2_devices.yaml}
ROUNDS=${2:-2}
KILN=${KILN_BIN:-target/release/kiln}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $(seq "$ROUNDS"); do
  for j in 1 2; do
    rm -rf "$tmp/j$j"
    start=$(date +%s.%N)
    "$KILN" build "$CONFIG" --out-dir "$tmp/j$j" -j "$j" -q
    end=$(date +%s.%N)
    python3 -c "print(f'round $r  -j $j  {$end - $start:.1f} s')"
  done
  python3 - "$tmp/j1/manifest.json" "$tmp/j2/manifest.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["artifacts"] for p in sys.argv[1:])
assert a == b, "artifacts differ between -j 1 and -j 2"
print(f"  artifacts identical ({len(a)} files)")
PY
done
