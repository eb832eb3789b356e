#!/usr/bin/env python3
"""Build a fixed set of configs and print every artifact's sha256 (from each build's manifest.json).

Used to show that a restructuring changes no artifact: run it before and after, and diff.

    .venv/bin/python scripts/artifact_hashes.py [--kiln target/release/kiln] [--shared ../shared] > hashes.txt

Covers the example configs, every model under tests/models, and (when ../shared exists) every shared model,
through every backend and precision that applies (onnx fp32/fp16/int8 with its options, tflite fp32/fp16/int8,
npu on every device profile). Calibration uses few samples so the sweep stays a few minutes.
"""
import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMAGE_PRE = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def image_targets():
    return [
        {"name": "onnx-fp32", "backend": "onnx", "precision": "fp32"},
        {"name": "onnx-fp16", "backend": "onnx", "precision": "fp16"},
        {"name": "onnx-int8", "backend": "onnx", "precision": "int8"},
        {"name": "onnx-int8-rr", "backend": "onnx", "precision": "int8", "reduce_range": True},
        {"name": "onnx-int8-pt", "backend": "onnx", "precision": "int8", "weights": "per_tensor"},
        {"name": "tflite-fp32", "backend": "tflite", "precision": "fp32"},
        {"name": "tflite-fp16", "backend": "tflite", "precision": "fp16"},
        {"name": "tflite-int8", "backend": "tflite", "precision": "int8", "min_calibration_sqnr_db": -100},
        {"name": "tflite-int8-nchw", "backend": "tflite", "precision": "int8", "io_layout": "nchw", "io_dtype": "int8", "min_calibration_sqnr_db": -100},
    ] + [
        {"name": f"npu-{d}", "backend": "npu", "precision": "int8", "device": d, "min_calibration_sqnr_db": -100}
        for d in ["edgetpu", "nnapi", "qualcomm-htp", "ethos-u55"]
    ]


def seq_targets():
    return [
        {"name": "onnx-fp32", "backend": "onnx", "precision": "fp32"},
        {"name": "onnx-fp16", "backend": "onnx", "precision": "fp16"},
        {"name": "onnx-int8", "backend": "onnx", "precision": "int8", "min_calibration_sqnr_db": -100},
        {"name": "tflite-fp32", "backend": "tflite", "precision": "fp32"},
    ]


def configs(shared):
    tm = ROOT / "tests" / "models"
    out = {}
    for name, inputs, targets, extra in [
        ("tiny_cnn", {"input": [1, 3, 64, 64]}, image_targets(), {}),
        ("tiny_cnn_dynamo", {}, image_targets(), {}),
        ("digits_se", {"input": [1, 1, 16, 16]}, image_targets(), {
            "validation": {"tensors": str(tm / "digits_se_val.npy"), "labels": str(tm / "digits_se_val_labels.npy"), "samples": 100, "max_accuracy_drop": 0.02}}),
        ("tiny_qat", {"input": [1, 1, 16, 16]}, image_targets(), {}),
        ("tiny_mlp_op14", {"input": [1, 24]}, seq_targets(), {}),
        ("tiny_lstm", {}, seq_targets(), {}),
        ("tiny_encoder", {}, seq_targets()[:2], {}),
    ]:
        cfg = {"model": str(tm / f"{name}.onnx"), "inputs": inputs, "passes": ["cleanup", "fuse"], "targets": targets}
        if any(t["precision"] == "int8" for t in targets):
            cfg["calibration"] = {"tensors": str(tm / f"{name.replace('_dynamo', '')}_inputs.npy"), "method": "percentile", "samples": 32}
        cfg.update(extra)
        out[name] = cfg
    if shared is not None and (shared / "models").is_dir():
        sm, sd = shared / "models", shared / "data"
        for name in ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_1", "shufflenet_v2_x1_0"]:
            out[name] = {
                "model": str(sm / f"{name}.onnx"), "inputs": {"input": [1, 3, 224, 224]}, "passes": ["cleanup", "fuse"],
                "calibration": {"images": str(sd / "images_calib"), "preprocess": IMAGE_PRE, "method": "entropy", "samples": 8},
                "targets": image_targets(),
            }
        for name in ["digits_mobilenet", "digits_mobilenet_pruned", "digits_mobilenet_qat"]:
            out[name] = {
                "model": str(sm / f"{name}.onnx"), "inputs": {"input": [1, 1, 32, 32]}, "passes": ["cleanup", "fuse"],
                "calibration": {"tensors": str(sd / "digits_calib.npy"), "method": "minmax", "samples": 64},
                "validation": {"tensors": str(sd / "digits_val.npy"), "labels": str(sd / "digits_val_labels.npy"), "samples": 200, "max_accuracy_drop": 0.01},
                "targets": image_targets(),
            }
        out["kws_lstm"] = {"model": str(sm / "kws_lstm.onnx"), "passes": ["cleanup", "fuse"], "targets": seq_targets(),
                           "calibration": {"tensors": str(sd / "kws_calib.npy"), "method": "mse", "samples": 32}}
        out["tiny_encoder_shared"] = {"model": str(sm / "tiny_encoder.onnx"), "passes": ["cleanup", "fuse"], "targets": seq_targets()[:2]}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=str(ROOT / "target" / "release" / "kiln"))
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    shared = pathlib.Path(a.shared)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-hashes-"))
    builds = []
    for ex in sorted((ROOT / "configs" / "examples").glob("*.yaml")):
        if "shared" in ex.read_text() and not shared.is_dir():
            continue
        builds.append((f"example:{ex.stem}", ex, None))
    for name, cfg in configs(shared if shared.is_dir() else None).items():
        cfg["output"] = str(tmp / name / "out")
        p = tmp / name / "kiln.yaml"
        p.parent.mkdir(parents=True)
        p.write_text(yaml.safe_dump(cfg, sort_keys=False))
        builds.append((name, p, tmp / name / "out"))
    try:
        for label, cfg_path, out in builds:
            if a.only and a.only not in label:
                continue
            r = subprocess.run([a.kiln, "build", "--force", str(cfg_path)], capture_output=True, text=True)
            if out is None:
                out = (cfg_path.parent / yaml.safe_load(cfg_path.read_text())["output"]).resolve()
            man = out / "manifest.json"
            if not man.exists():
                print(f"{label} NO-MANIFEST rc={r.returncode} {r.stderr.strip().splitlines()[-1:]}")
                continue
            for art in json.loads(man.read_text())["artifacts"]:
                print(f"{label} {art['path']} {art['sha256']}")
            rep = json.loads((out / "report.json").read_text())
            for t, why in sorted(rep.get("failed", {}).items()):
                print(f"{label} FAILED {t}: {why.splitlines()[0][:120]}")
            sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
