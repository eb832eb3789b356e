"""kiln's `tensorrt` int8 target side by side with NVIDIA TensorRT Model Optimizer's ONNX PTQ, in one run, on
the same model and the same calibration images (issue 16, docs/BENCHMARKS.md):

    .venv/bin/python scripts/bench_tensorrt.py [--model ../shared/models/mobilenet_v2.onnx]
        [--modelopt-python /tmp/torchvenv/bin/python] [--samples 48] [--kiln-option refine_ranges=false ...]

1. kiln: `kiln build` of a config with one `tensorrt` int8 target (device agx-orin, entropy: kiln's default,
   as ModelOpt's, `dla: true`) on the first --samples images of images_calib; wall time of the whole build
   process (import, calibration, quantization, writing the bundle; no validation section, so nothing else).
   Its dla/calib.cache is read back by ModelOpt's own cache reader
   (modelopt.onnx.quantization.calib_utils.import_scales_from_calib_cache) and by tests/oracle/trt_cache.py,
   and the two must give the same scale, bit for bit, for every tensor.
2. ModelOpt: scripts/bench_trt_modelopt.py in the venv that has nvidia-modelopt (see its docstring: CPU
   calibration, defaults otherwise), once with its default fp16 high-precision dtype (timed) and once with
   fp32 (what onnxruntime's CPU kernels run right: its float16 QuantizeLinear truncates; timed too).
3. Fidelity of each QDQ model against the fp32 original on images_val: top-1 agreement and mean cosine in
   onnxruntime with graph optimizations off (Q/DQ executed as written), the suite's oracle.
Prints a table and one JSON line.
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "oracle"))
from accuracy import cosine, top1_agreement  # noqa: E402
from kiln_oracle import DATA, IMAGENET_PREPROCESS, KILN, preprocess, session  # noqa: E402


def fidelity(model, candidate, feeds):
    ref = session(model)
    got = session(candidate, exact=True)
    r = [ref.run(None, f)[0] for f in feeds]
    g = [got.run(None, f)[0] for f in feeds]
    return top1_agreement(r, g), float(np.mean([cosine(a, b) for a, b in zip(r, g)]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=pathlib.Path, default=ROOT.parent / "shared" / "models" / "mobilenet_v2.onnx")
    ap.add_argument("--modelopt-python", default="/tmp/torchvenv/bin/python")
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--kiln-option", action="append", default=[], help="KEY=VALUE added to the kiln target (YAML value)")
    a = ap.parse_args()
    model = a.model.resolve()
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-trt-"))
    calib = work / "calib"
    calib.mkdir()
    files = sorted(p for p in (DATA / "images_calib").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: a.samples]
    for f in files:
        (calib / f.name).symlink_to(f)
    target = {"name": "trt", "backend": "tensorrt", "precision": "int8", "device": "agx-orin", "dla": True}
    for kv in a.kiln_option:
        k, v = kv.split("=", 1)
        target[k] = yaml.safe_load(v)
    cfg = {
        "model": str(model),
        "inputs": {"input": [1, 3, 224, 224]},
        "passes": ["cleanup", "fuse"],
        "calibration": {"images": str(calib), "preprocess": IMAGENET_PREPROCESS, "samples": a.samples},
        "targets": [target],
        "output": str(work / "kiln"),
    }
    (work / "k.yaml").write_text(yaml.safe_dump(cfg))
    t = time.perf_counter()
    subprocess.run([str(KILN), "build", "-q", str(work / "k.yaml")], check=True)
    kiln_s = time.perf_counter() - t
    kiln_qdq = work / "kiln" / "trt" / "model.qdq.onnx"

    cache = work / "kiln" / "trt" / "dla" / "calib.cache"
    import trt_cache

    _, _, ours = trt_cache.parse(cache.read_text())
    r = subprocess.run(
        [a.modelopt_python, "-c", "import json, sys; from modelopt.onnx.quantization.calib_utils import import_scales_from_calib_cache as f; "
         "print(json.dumps(f(sys.argv[1])))", str(cache)],
        check=True, capture_output=True, text=True,
    )
    theirs = {k.removesuffix("_scale"): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    cache_agrees = theirs.keys() == ours.keys() and all(np.float32(theirs[k]) == np.float32(ours[k]) for k in ours)
    print(f"calib.cache: {len(ours)} tensors; ModelOpt's reader agrees with trt_cache.py: {cache_agrees}")

    mo = {}
    for dtype in ("fp16", "fp32"):
        out = work / f"modelopt.{dtype}.onnx"
        r = subprocess.run(
            [a.modelopt_python, str(ROOT / "scripts" / "bench_trt_modelopt.py"), "--model", str(model), "--calib-dir", str(calib),
             "--out", str(out), "--samples", str(a.samples), "--high-precision-dtype", dtype],
            check=True, capture_output=True, text=True,
        )
        mo[dtype] = json.loads(r.stdout.strip().splitlines()[-1])

    feeds = [{"input": preprocess(f)} for f in sorted((DATA / "images_val").glob("*.jpg"))]
    rows = [("kiln tensorrt int8", kiln_s, *fidelity(model, kiln_qdq, feeds))]
    for dtype in ("fp16", "fp32"):
        rows.append((f"ModelOpt int8 ({dtype} elsewhere)", mo[dtype]["quantize_s"], *fidelity(model, mo[dtype]["output"], feeds)))
    print(f"{'':36} {'time s':>8} {'top-1 agr':>9} {'cosine':>8}")
    for name, s, agr, cos in rows:
        print(f"{name:36} {s:8.2f} {agr:9.3f} {cos:8.4f}")
    best_mo = max(mo[d]["quantize_s"] for d in mo)
    print(json.dumps({
        "model": model.name, "samples": a.samples, "val_samples": len(feeds), "kiln_options": a.kiln_option,
        "cache_tensors": len(ours), "cache_read_by_modelopt_agrees": cache_agrees,
        "rows": [dict(zip(("tool", "seconds", "top1_agreement", "mean_cosine"), r)) for r in rows],
        "kiln_over_modelopt_time": kiln_s / min(mo[d]["quantize_s"] for d in mo), "modelopt_max_s": best_mo,
        "modelopt": mo["fp16"]["modelopt"], "torch": mo["fp16"]["torch"], "onnxruntime_modelopt": mo["fp16"]["onnxruntime"],
    }))


if __name__ == "__main__":
    main()
