"""MobileNetV2 int8 artifacts under onnxruntime's integer kernels, natively and on an emulated x86 CPU
without VNNI, against the same artifacts with their Q/DQ executed as written.

    .venv/bin/python scripts/bench_int8_kernels.py [--images 100] [--out DIR]

Builds two artifacts with `kiln quantize` (8-bit weights, the default; and `--reduce-range`, 7-bit weights),
then for each prints top-1 agreement / mean cosine / SQNR against the fp32 original on images_val:
  exact     onnxruntime with graph optimizations off (Q/DQ as written: the same on every CPU)
  host      onnxruntime's default session on this CPU (its fused int8 kernels)
  haswell   the default session under `qemu-x86_64 -cpu Haswell-noTSX` (AVX2, no VNNI: u8×s8 pair sums
            saturate at 16 bits), when qemu-user is installed. Slow: minutes per artifact.
"""
import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "oracle"))

CHILD = r"""
import json, sys, numpy as np, onnxruntime as ort
sys.path.insert(0, sys.argv[1])
from kiln_oracle import validation_inputs
def sess(p, exact):
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.log_severity_level = 3
    if exact: so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
feeds = validation_inputs("mobilenet_v2", int(sys.argv[3]))
ref = [sess(sys.argv[2], False).run(None, f)[0].ravel().astype(np.float64) for f in feeds]
for spec in sys.argv[4:]:
    path, exact = spec.rsplit(":", 1)
    s = sess(path, exact == "exact")
    out = [s.run(None, f)[0].ravel().astype(np.float64) for f in feeds]
    agree = float(np.mean([a.argmax() == b.argmax() for a, b in zip(ref, out)]))
    cos = float(np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(ref, out)]))
    sqnr = 10 * np.log10(sum((a * a).sum() for a in ref) / sum(((a - b) ** 2).sum() for a, b in zip(ref, out)))
    print(json.dumps({"artifact": path, "mode": exact, "top1_agreement": agree, "mean_cosine": cos, "sqnr_db": float(sqnr)}), flush=True)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--out", type=pathlib.Path, default=None)
    args = ap.parse_args()
    shared = ROOT.parent / "shared"
    src, calib = shared / "models" / "mobilenet_v2.onnx", shared / "data" / "images_calib"
    out = args.out or pathlib.Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    kiln = ROOT / "target" / "release" / "kiln"
    arts = {"8-bit": out / "q8.onnx", "7-bit (reduce_range)": out / "q7.onnx"}
    for name, p in arts.items():
        extra = ["--reduce-range"] if "7" in name else []
        subprocess.run([str(kiln), "quantize", str(src), "--calib", str(calib), "--imagenet", "-o", str(p), *extra], check=True, capture_output=True)
    child = out / "child.py"
    child.write_text(CHILD)
    base = [sys.executable, str(child), str(ROOT / "tests" / "oracle"), str(src), str(args.images)]
    runs = [("native", base + [f"{p}:{m}" for p in arts.values() for m in ("exact", "default")])]
    if shutil.which("qemu-x86_64"):
        runs.append(("haswell", ["qemu-x86_64", "-cpu", "Haswell-noTSX"] + base + [f"{p}:default" for p in arts.values()]))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"# {args.images} images_val crops; host CPU: {cpu}")
    names = {str(p): n for n, p in arts.items()}
    for where, cmd in runs:
        p = subprocess.run(cmd, capture_output=True, text=True)
        for line in p.stdout.splitlines():
            r = json.loads(line)
            mode = "exact (Q/DQ as written)" if r["mode"] == "exact" else ("default, host kernels" if where == "native" else "default, emulated Haswell (AVX2, no VNNI)")
            print(f"| {names[r['artifact']]} | {mode} | {r['top1_agreement']:.2f} | {r['mean_cosine']:.4f} | {r['sqnr_db']:.1f} |")
        if p.returncode != 0:
            print(p.stderr[-2000:], file=sys.stderr)


if __name__ == "__main__":
    main()
