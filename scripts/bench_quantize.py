"""Entropy calibration + quantization of MobileNetV2 on the 48 calibration images: kiln vs onnxruntime's
quantize_static(calibrate_method=Entropy), same machine, same run, whole-process wall time.

    .venv/bin/python scripts/bench_quantize.py [--rounds 3]
"""
import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

ORT_SCRIPT = r'''
import sys, pathlib, numpy as np
sys.path.insert(0, sys.argv[3])
from kiln_oracle import preprocess
from onnxruntime.quantization import quantize_static, CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
files = sorted(pathlib.Path(sys.argv[2]).glob("*.jpg"))
class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter([{"input": preprocess(f)} for f in files])
    def get_next(self):
        return next(self.it, None)
quantize_static(sys.argv[1], sys.argv[4], Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Entropy)
'''


def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model = SHARED / "models" / "mobilenet_v2.onnx"
    calib = SHARED / "data" / "images_calib"
    kiln = ROOT / "target" / "release" / "kiln"
    with tempfile.TemporaryDirectory() as tmp:
        # Like for like: onnxruntime neither equalizes, bias-corrects nor refines ranges. kiln's default run (all
        # three on) is timed too.
        k_cmd = [str(kiln), "quantize", str(model), "--calib", str(calib), "--imagenet", "--method", "entropy", "--bias-correction", "0", "--cle", "off", "--refine-ranges", "off", "-o", f"{tmp}/k.onnx"]
        kd_cmd = [str(kiln), "quantize", str(model), "--calib", str(calib), "--imagenet", "--method", "entropy", "-o", f"{tmp}/kd.onnx"]
        o_cmd = [sys.executable, "-c", ORT_SCRIPT, str(model), str(calib), str(ROOT / "tests" / "oracle"), f"{tmp}/o.onnx"]
        kt, ot, kd = [], [], []
        for _ in range(args.rounds):
            kt.append(timed(k_cmd))
            ot.append(timed(o_cmd))
            kd.append(timed(kd_cmd))
        k, o = statistics.median(kt), statistics.median(ot)
        print(f"kiln quantize (entropy, per-channel, 48 images): median {k:.2f} s  {['%.2f' % x for x in kt]}")
        print(f"onnxruntime quantize_static (Entropy, per-channel, 48 images): median {o:.2f} s  {['%.2f' % x for x in ot]}")
        print(f"ratio kiln/onnxruntime: {k / o:.3f}")
        d = statistics.median(kd)
        print(f"kiln quantize defaults (+ equalization, bias correction, range refinement): median {d:.2f} s  {['%.2f' % x for x in kd]}, ratio {d / o:.3f}")


if __name__ == "__main__":
    main()
