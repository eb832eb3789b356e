"""What onnxruntime's default (fused integer) kernels do to a QDQ model, against its Q/DQ executed as
written, on this process's CPU: output SQNR (dB) of default vs exact and top-1 agreement.

    python host_kernels.py SAMPLES.npy MODEL.onnx [MODEL.onnx ...]     (prints one JSON object per model)

The tests run it natively (the host's kernel family) and under `qemu-x86_64 -cpu Haswell-noTSX`, an x86
CPU with AVX2 and no VNNI, whose u8×s8 kernels add pairs of products in 16 bits with saturation.
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def _session(path, exact):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if exact:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def measure(samples, path):
    a, b = _session(path, True), _session(path, False)
    name = a.get_inputs()[0].name
    e = np.concatenate([a.run(None, {name: samples[i : i + 1]})[0] for i in range(len(samples))]).astype(np.float64)
    d = np.concatenate([b.run(None, {name: samples[i : i + 1]})[0] for i in range(len(samples))]).astype(np.float64)
    noise = float(((e - d) ** 2).sum())
    return {"model": str(path), "sqnr_db": 10 * np.log10(float((e * e).sum()) / max(noise, 1e-30)), "top1_agreement": float((e.argmax(-1) == d.argmax(-1)).mean())}


if __name__ == "__main__":
    x = np.load(sys.argv[1]).astype(np.float32)
    for p in sys.argv[2:]:
        print(json.dumps(measure(x, p)), flush=True)
