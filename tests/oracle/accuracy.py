"""Accuracy of a (quantized) model against the fp32 original in onnxruntime: top-1 agreement, mean cosine,
SQNR (dB) of the first output, and label accuracy when labels exist.

Both models run with onnxruntime's graph optimizations off (kiln_oracle.exact_session), so a Q/DQ candidate
is judged as written — DequantizeLinear → float op → QuantizeLinear — and not by onnxruntime's fused int8
kernels, whose results depend on the host CPU (16-bit saturating u8×s8 sums on x86 without VNNI). The fp32
original is the same model either way. `exact=False` measures the host's default kernels instead.

    python accuracy.py ORIGINAL.onnx CANDIDATE.onnx STEM [--host-kernels]
    (STEM picks the validation data, as in kiln_oracle; --host-kernels: onnxruntime's default session)
"""
import pathlib
import sys

import numpy as np

from kiln_oracle import session, validation_inputs, local_inputs, DATA


def compare(orig, cand, feeds, labels=None, exact=True):
    a, b = session(orig, exact=exact), session(cand, exact=exact)
    agree, cos, sig, noise, correct_a, correct_b = 0, [], 0.0, 0.0, 0, 0
    for i, f in enumerate(feeds):
        x = a.run(None, f)[0].astype(np.float64).ravel()
        y = b.run(None, f)[0].astype(np.float64).ravel()
        agree += int(x.argmax() == y.argmax())
        cos.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30)))
        sig += float(x @ x)
        noise += float((x - y) @ (x - y))
        if labels is not None:
            correct_a += int(x.argmax() == labels[i])
            correct_b += int(y.argmax() == labels[i])
    n = len(feeds)
    out = {"n": n, "top1_agreement": agree / n, "mean_cosine": float(np.mean(cos)), "sqnr_db": 10 * np.log10(sig / max(noise, 1e-30))}
    if labels is not None:
        out["accuracy_fp32"] = correct_a / n
        out["accuracy"] = correct_b / n
    return out


def feeds_and_labels(stem, path=None):
    if stem.startswith("digits"):
        return validation_inputs(stem), np.load(DATA / "digits_val_labels.npy")
    if path is not None and stem.startswith("tiny"):
        return local_inputs(pathlib.Path(path)), None
    return validation_inputs(stem), None


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--host-kernels"]
    orig, cand, stem = args[:3]
    feeds, labels = feeds_and_labels(stem, orig)
    print(compare(orig, cand, feeds, labels, exact="--host-kernels" not in sys.argv[1:]))
