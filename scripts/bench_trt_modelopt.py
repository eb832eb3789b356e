"""Wall time of NVIDIA TensorRT Model Optimizer's ONNX int8 post-training quantization (nvidia-modelopt,
`modelopt.onnx.quantization.quantize`) on the CPU, for comparison with `kiln quantize`.

    /tmp/torchvenv/bin/python scripts/bench_trt_modelopt.py --model M.onnx --calib-dir DIR --out OUT.onnx
        [--samples 48] [--high-precision-dtype fp16|fp32]

1. Calibration data: the first --samples (48) images of DIR (.jpg/.jpeg/.png, sorted by name, as kiln lists
   them), preprocessed by the test suite's kiln_oracle.preprocess (resize to 256x256 bilinear, center crop 224,
   /255, ImageNet mean/std, NCHW float32), stacked and saved as OUT's stem + ".calib.npy" (N x 3 x 224 x 224).
2. ModelOpt's defaults except calibration_eps=["cpu"] (its default ["cpu", "cuda:0", "trt"] asks for the CUDA
   and TensorRT execution providers; with "cpu" alone neither cupy nor tensorrt is needed). What the int8
   defaults do (nvidia-modelopt 0.47.0, modelopt/onnx/quantization/{quantize,int8,graph_utils,ort_utils}.py):
   - entropy calibration: onnxruntime's Entropy calibrator, one image per run (a dynamic batch dim becomes 1);
   - symmetric int8 activations per tensor, per-channel int8 weights kept as Q->DQ pairs on float weights,
     float biases, no Q/DQ on op outputs. Placement follows TensorRT's fusions: Q/DQ on the inputs of Conv,
     Gemm/MatMul, pools, and on the residual input of an Add (not on the Conv-fed one); Clip/Relu after a Conv
     and Concat/Reshape/etc. get none; "concat_elimination" gives a Concat's inputs one shared scale;
   - excluded: Convs with < 16 in/out channels unless TensorRT has int8 kernels for them (group 1 with a
     channel count % 8 == 0 and a square kernel; grouped with out % 8 == 0 and kernel >= 3), MatMul/Gemm that
     are GEMVs at the calibration shape (MobileNetV2's classifier Gemm at batch 1), MHA MatMuls if seq > 512;
   - high_precision_dtype="fp16": every float left (weights, biases, Q/DQ scales, unquantized ops) becomes
     float16, with Casts at the graph input and output (fp32 I/O kept); the output opset is raised to >= 19.
   Caveat: onnxruntime's CPU QuantizeLinear truncates float16 inputs toward zero instead of rounding
   (microsoft/onnxruntime#18576, #22741; fixed by PR #32452), so the default fp16 output scores far below
   what TensorRT would run on onnxruntime CPU; --high-precision-dtype fp32 gives a model onnxruntime runs right.
3. Prints one JSON line: seconds spent in the quantize() call alone (preprocessing, the .npy and copying the
   model into a writable work folder are outside it; writing the output model is inside it), versions, the
   output path. ModelOpt writes intermediate files beside its input model and copies the whole source folder
   to a temp dir when that folder is read-only (as ../shared/models is); the copy here keeps that out of the time.
"""
import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "oracle"))
from kiln_oracle import preprocess  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=pathlib.Path)
    ap.add_argument("--calib-dir", required=True, type=pathlib.Path)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--high-precision-dtype", default="fp16", choices=["fp16", "fp32"], help="ModelOpt's default: fp16")
    a = ap.parse_args()

    files = sorted(p for p in a.calib_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: a.samples]
    calib = np.concatenate([preprocess(f) for f in files])
    out = a.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    npy = out.with_name(out.stem + ".calib.npy")
    np.save(npy, calib)

    import onnxruntime
    import torch
    import modelopt
    from modelopt.onnx.quantization import quantize

    with tempfile.TemporaryDirectory(prefix="modelopt-") as work:
        for f in a.model.parent.glob(a.model.name + "*"):  # the model and its external data
            shutil.copy(f, work)
        src = str(pathlib.Path(work) / a.model.name)
        data = np.load(npy)
        t = time.perf_counter()
        quantize(src, quantize_mode="int8", calibration_data=data, calibration_eps=["cpu"], output_path=str(out),
                 high_precision_dtype=a.high_precision_dtype)
        seconds = time.perf_counter() - t
    print(json.dumps({"quantize_s": round(seconds, 3), "samples": len(files), "calibration_eps": ["cpu"],
                      "high_precision_dtype": a.high_precision_dtype,
                      "modelopt": modelopt.__version__, "torch": torch.__version__,
                      "onnxruntime": onnxruntime.__version__, "calib_npy": str(npy), "output": str(out)}))


if __name__ == "__main__":
    main()
