"""MobileNetV2 latency, batch 1, 2 threads, in one run on one machine:
  - kiln's int8 TFLite and fp32 TFLite in LiteRT (ai-edge-litert, XNNPACK delegate),
  - onnxruntime fp32 on the original ONNX (CPU EP, 2 intra-op threads),
  - onnx2tf's fp32 TFLite in LiteRT, when `--onnx2tf PYTHON` names a Python with onnx2tf installed.
It also records kiln's conversion wall time (kiln build of the tflite targets, calibration included for
int8) beside onnx2tf's.

    .venv/bin/python scripts/bench_tflite.py [--runs 200] [--onnx2tf /path/to/venv/bin/python]
"""
import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "tests" / "oracle"))
from kiln_oracle import KILN, preprocess  # noqa: E402

IMAGENET = "preprocess: { resize: 256, crop: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }"


def latencies(fns, runs, block=25):
    """Median latency of each function, timed in alternating blocks of `block` runs so every candidate sees
    the same machine load (single runs round-robin would let one runtime's spinning threads slow the next)."""
    ts = {k: [] for k in fns}
    for _ in range(max(1, runs // block)):
        for k, f in fns.items():
            for _ in range(3):
                f()
            for _ in range(block):
                t = time.perf_counter()
                f()
                ts[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in ts.items()}


def litert(path, x_nchw):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=2)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    x = x_nchw.transpose(0, 2, 3, 1) if list(d["shape"]) != list(x_nchw.shape) else x_nchw
    it.set_tensor(d["index"], x.astype(np.float32))
    return it.invoke


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--onnx2tf", help="a Python interpreter with onnx2tf (and TensorFlow) installed")
    a = ap.parse_args()
    model = SHARED / "models" / "mobilenet_v2.onnx"
    x = preprocess(sorted((SHARED / "data" / "images_val").glob("*.jpg"))[0])
    work = pathlib.Path(tempfile.mkdtemp(prefix="kiln-bench-tflite-"))
    (work / "k.yaml").write_text(
        f"model: {model}\ninputs: {{ input: [1, 3, 224, 224] }}\npasses: [cleanup, fuse]\n"
        f"calibration: {{ images: {SHARED / 'data' / 'images_calib'}, {IMAGENET}, method: percentile }}\n"
        "targets:\n  - { name: f32, backend: tflite, precision: fp32 }\n  - { name: i8, backend: tflite, precision: int8 }\n"
        "output: out\n"
    )
    t = time.perf_counter()
    subprocess.run([str(KILN), "build", str(work / "k.yaml"), "--force"], check=True, capture_output=True)
    kiln_build = time.perf_counter() - t
    (work / "f.yaml").write_text(f"model: {model}\ninputs: {{ input: [1, 3, 224, 224] }}\npasses: [cleanup, fuse]\ntargets:\n  - {{ name: f32, backend: tflite, precision: fp32 }}\noutput: outf\n")
    t = time.perf_counter()
    subprocess.run([str(KILN), "build", str(work / "f.yaml"), "--force"], check=True, capture_output=True)
    kiln_fp32_build = time.perf_counter() - t

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    fns = {
        "onnxruntime fp32 (original ONNX)": lambda: sess.run(None, {"input": x}),
        "kiln fp32 TFLite (LiteRT/XNNPACK)": litert(work / "out" / "f32" / "model.tflite", x),
        "kiln int8 TFLite (LiteRT/XNNPACK)": litert(work / "out" / "i8" / "model.tflite", x),
    }
    o2t_time = None
    if a.onnx2tf:
        t = time.perf_counter()
        p = subprocess.run([a.onnx2tf, "-m", "onnx2tf", "-i", str(model), "-o", str(work / "o2t"), "-ois", "input:1,3,224,224"], capture_output=True, text=True)
        o2t_time = time.perf_counter() - t
        tfl = sorted((work / "o2t").glob("*float32.tflite"))
        if p.returncode == 0 and tfl:
            fns["onnx2tf fp32 TFLite (LiteRT/XNNPACK)"] = litert(tfl[0], x)
        else:
            print("onnx2tf failed:", p.stderr[-2000:], file=sys.stderr)
    rows = latencies(fns, a.runs)
    base = rows["onnxruntime fp32 (original ONNX)"]
    print(f"MobileNetV2, batch 1, 2 threads, median of {a.runs} runs in alternating blocks of 25")
    for k, v in rows.items():
        print(f"  {k:40s} {v * 1e3:8.2f} ms   {v / base:5.2f}x onnxruntime fp32")
    print(f"  kiln build fp32 TFLite (import, passes, lowering): {kiln_fp32_build:.2f} s")
    print(f"  kiln build fp32 + int8 TFLite (calibration on 48 images included): {kiln_build:.2f} s")
    if o2t_time is not None:
        print(f"  onnx2tf conversion: {o2t_time:.2f} s")


if __name__ == "__main__":
    main()
