#!/usr/bin/env bash
# Import -> export of a model with external data: kiln vs Python onnx.load + onnx.save, same run, same
# machine, alternating, N rounds. Prints peak RSS and wall time per round (GNU time -v) and the medians.
#   scripts/bench_import_export.sh [MODEL] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-../shared/models/efficientnet_b0.onnx}
N=${2:-5}
KILN=${KILN_BIN:-target/release/kiln}
PY=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bytes=$(cat "$MODEL" "$MODEL".data 2>/dev/null | wc -c)
echo "model $MODEL: $bytes bytes (model + external data)"
measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -v "$@" 2>"$tmp/time.txt" >/dev/null
  local rss wall
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tmp/time.txt")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$tmp/time.txt")
  echo "$label rss_kb=$rss wall=$wall"
}
for i in $(seq "$N"); do
  measure kiln "$KILN" optimize "$MODEL" -o "$tmp/k.onnx" --external-data --passes none
  measure python "$PY" -c "import onnx,sys; m=onnx.load(sys.argv[1]); onnx.save(m, sys.argv[2], save_as_external_data=True, location='p.onnx.data')" "$MODEL" "$tmp/p.onnx"
done | tee "$tmp/results.txt"
"$PY" - "$tmp/results.txt" "$bytes" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
def secs(w):
    parts = [float(x) for x in w.split(':')]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
model_bytes = int(sys.argv[2])
for label in ("kiln", "python"):
    rss = [int(r[1].split('=')[1]) for r in rows if r[0] == label]
    wall = [secs(r[2].split('=')[1]) for r in rows if r[0] == label]
    print(f"{label:7} median peak RSS {statistics.median(rss)/1024:7.1f} MiB   median wall {statistics.median(wall):6.3f} s")
k = statistics.median(secs(r[2].split('=')[1]) for r in rows if r[0] == "kiln")
p = statistics.median(secs(r[2].split('=')[1]) for r in rows if r[0] == "python")
krss = statistics.median(int(r[1].split('=')[1]) for r in rows if r[0] == "kiln") * 1024
limit = 2 * model_bytes + 100 * 2**20
print(f"kiln/python wall ratio {k/p:.2f}; kiln peak RSS {krss/2**20:.1f} MiB vs limit 2x model + 100 MB = {limit/2**20:.1f} MiB")
PY
