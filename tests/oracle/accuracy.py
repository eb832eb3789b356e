"""Accuracy of a (quantized) model against the fp32 original in onnxruntime: top-1 agreement, mean cosine,
SQNR (dB) of the first output, and label accuracy when labels exist.

    python accuracy.py ORIGINAL.onnx CANDIDATE.onnx STEM   (STEM picks the validation data, as in kiln_oracle)
"""
import sys

import numpy as np

from kiln_oracle import session, validation_inputs, local_inputs, DATA


def compare(orig, cand, feeds, labels=None):
    a, b = session(orig), session(cand)
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
        return local_inputs(path), None
    return validation_inputs(stem), None


if __name__ == "__main__":
    orig, cand, stem = sys.argv[1:4]
    feeds, labels = feeds_and_labels(stem, orig)
    print(compare(orig, cand, feeds, labels))
