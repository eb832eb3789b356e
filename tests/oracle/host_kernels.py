"""What onnxruntime's default (fused integer) kernels do to a QDQ model, against its Q/DQ executed as
written, on this process's CPU: output SQNR (dB) of default vs exact and top-1 agreement.

    python host_kernels.py SAMPLES.npy MODEL.onnx [MODEL.onnx ...]     (prints one JSON object per model)

The tests run it natively (the host's kernel family) and under `qemu-x86_64 -cpu Haswell-noTSX`, an x86
CPU with AVX2 and no VNNI, whose u8×s8 kernels add pairs of products in 16 bits with saturation.
"""
import json
import sys

import numpy as np

from accuracy import sqnr_db, top1_agreement
from kiln_oracle import session


def measure(samples, path):
    # The same model in two onnxruntime sessions: exact (its Q/DQ as written) and the default one, whose fused
    # int8 kernels are what is measured here.
    a, b = session(path, exact=True), session(path, exact=False)
    name = a.get_inputs()[0].name
    e = [a.run(None, {name: samples[i : i + 1]})[0] for i in range(len(samples))]
    d = [b.run(None, {name: samples[i : i + 1]})[0] for i in range(len(samples))]
    return {"model": str(path), "sqnr_db": sqnr_db(e, d), "top1_agreement": top1_agreement(e, d)}


if __name__ == "__main__":
    x = np.load(sys.argv[1]).astype(np.float32)
    for p in sys.argv[2:]:
        print(json.dumps(measure(x, p)), flush=True)
