"""Does channel pruning pay on the device? MobileNetV2 (real weights) unpruned and pruned by
`prune: { method: channel, macs: M }`, each as fp32 and int8 TFLite, timed in LiteRT (ai-edge-litert,
XNNPACK, 2 threads, batch 1) in one run, in alternating blocks (issue 17). Also prints sizes, MACs and
the pruned models' top-1 agreement with the unpruned fp32 model on images_val (onnxruntime).

    .venv/bin/python scripts/bench_prune.py [--macs 0.8] [--runs 200]
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "tests" / "oracle"))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_tflite import latencies, litert  # noqa: E402
from kiln_oracle import KILN, preprocess  # noqa: E402

IMAGENET = "preprocess: { resize: 256, crop: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }"


def build(work, name, passes):
    model = SHARED / "models" / "mobilenet_v2.onnx"
    cfg = work / f"{name}.yaml"
    cfg.write_text(
        f"model: {model}\ninputs: {{ input: [1, 3, 224, 224] }}\npasses: {passes}\n"
        f"calibration: {{ images: {SHARED / 'data' / 'images_calib'}, {IMAGENET}, method: percentile }}\n"
        "targets:\n  - { name: onnx, backend: onnx, precision: fp32 }\n"
        "  - { name: f32, backend: tflite, precision: fp32 }\n  - { name: i8, backend: tflite, precision: int8 }\n"
        f"output: {name}\n"
        f"validation: {{ images: {SHARED / 'data' / 'images_val'}, {IMAGENET}, min_top1_agreement: 0.0 }}\n"
    )
    subprocess.run([str(KILN), "build", str(cfg), "--force", "-q"], check=True, capture_output=True)
    return work / name, json.loads((work / name / "report.json").read_text())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--macs", type=float, default=0.8)
    ap.add_argument("--runs", type=int, default=200)
    a = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="kiln-bench-prune-"))
    base, rb = build(work, "base", "[cleanup, fuse]")
    pruned, rp = build(work, "pruned", f"[cleanup, fuse, {{ prune: {{ method: channel, macs: {a.macs} }} }}]")
    files = sorted((SHARED / "data" / "images_val").glob("*.jpg"))
    x = preprocess(files[0])
    fns = {
        "fp32 unpruned": litert(base / "f32" / "model.tflite", x),
        f"fp32 pruned {a.macs:.0%}": litert(pruned / "f32" / "model.tflite", x),
        "int8 unpruned": litert(base / "i8" / "model.tflite", x),
        f"int8 pruned {a.macs:.0%}": litert(pruned / "i8" / "model.tflite", x),
    }
    rows = latencies(fns, a.runs)
    import onnxruntime as ort

    def top1(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [int(np.argmax(s.run(None, {"input": preprocess(f)})[0])) for f in files]

    ref = top1(SHARED / "models" / "mobilenet_v2.onnx")
    agree = np.mean([r == p for r, p in zip(ref, top1(pruned / "onnx" / "model.onnx"))])
    macs = (rb["optimized"]["macs"], rp["optimized"]["macs"])
    print(f"MobileNetV2, LiteRT (XNNPACK), batch 1, 2 threads, median of {a.runs} runs in alternating blocks of 25")
    print(f"MACs {macs[0]} -> {macs[1]} ({macs[1] / macs[0]:.3f}); pruned fp32 top-1 agreement with the original "
          f"on {len(files)} images_val images: {agree:.3f}")
    for prec in ["fp32", "int8"]:
        u = rows[f"{prec} unpruned"]
        p = rows[f"{prec} pruned {a.macs:.0%}"]
        d = "f32" if prec == "fp32" else "i8"
        su = (base / d / "model.tflite").stat().st_size
        sp = (pruned / d / "model.tflite").stat().st_size
        print(f"  {prec}: unpruned {u * 1e3:7.2f} ms ({su} B), pruned {p * 1e3:7.2f} ms ({sp} B): {p / u:.3f}x latency")


if __name__ == "__main__":
    main()
