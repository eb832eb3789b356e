"""kiln optimize --passes cleanup vs onnxslim on every corpus model, same pinned shapes, same run:
wall time of each whole process (median of N, alternating) and node counts of both outputs.

    python3 -m venv /tmp/slimvenv && /tmp/slimvenv/bin/pip install onnxslim==0.1.98 onnxruntime==1.23.2
    .venv/bin/python scripts/bench_optimize.py [--onnxslim /tmp/slimvenv/bin/onnxslim] [--rounds 3]
"""
import argparse
import pathlib
import statistics
import subprocess
import tempfile
import time

import onnx

ROOT = pathlib.Path(__file__).resolve().parents[1]


def pins(path):
    m = onnx.load(str(path), load_external_data=False)
    init = {t.name for t in m.graph.initializer}
    out = {}
    for i in m.graph.input:
        if i.name not in init:
            out[i.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in i.type.tensor_type.shape.dim]
    return out


def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnxslim", default="/tmp/slimvenv/bin/onnxslim")
    ap.add_argument("--kiln", default=str(ROOT / "target" / "release" / "kiln"))
    ap.add_argument("--models", default=str(ROOT.parent / "shared" / "models"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"| model | nodes | kiln cleanup nodes | onnxslim nodes | kiln wall (s) | onnxslim wall (s) | ratio |")
    print(f"|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(pathlib.Path(args.models).glob("*.onnx")):
            p = pins(path)
            kin = sum((["--input", f"{k}={','.join(map(str, v))}"] for k, v in p.items()), [])
            sin = [f"{k}:{','.join(map(str, v))}" for k, v in p.items()]
            k_out, s_out = f"{tmp}/k.onnx", f"{tmp}/s.onnx"
            kcmd = [args.kiln, "optimize", str(path), "-o", k_out, "--passes", "cleanup", *kin]
            scmd = [args.onnxslim, str(path), s_out, "--input-shapes", *sin]
            kt, st = [], []
            for _ in range(args.rounds):
                kt.append(timed(kcmd))
                st.append(timed(scmd))
            kn = len(onnx.load(k_out, load_external_data=False).graph.node)
            sn = len(onnx.load(s_out, load_external_data=False).graph.node)
            n0 = len(onnx.load(str(path), load_external_data=False).graph.node)
            km, sm = statistics.median(kt), statistics.median(st)
            print(f"| {path.stem} | {n0} | {kn} | {sn} | {km:.3f} | {sm:.3f} | {km / sm:.3f} |")


if __name__ == "__main__":
    main()
