"""The metrics of the oracle tests, in one place: relative difference, top-1 agreement, label accuracy,
cosine and SQNR (dB) between two executions, and `compare`, which runs an original model and a candidate
artifact (kiln_oracle.run_artifact: .onnx in onnxruntime, .tflite in LiteRT) on the same feeds and reports them.

Each metric takes the two executions' outputs as `refs` (the reference: onnxruntime on the original) and `gots`
(the candidate), one array per sample, in float64. `first(runs)` picks each feed's first output out of
run_artifact's result.

compare runs both models with onnxruntime's graph optimizations off by default (kiln_oracle.exact_session), so a
Q/DQ candidate is judged as written — DequantizeLinear → float op → QuantizeLinear — and not by onnxruntime's
fused int8 kernels, whose results depend on the host CPU (16-bit saturating u8×s8 sums on x86 without VNNI).
The fp32 original is the same model either way. `exact=False` measures the host's default kernels instead;
`exact=None` picks per model (exact when it holds Q/DQ nodes: kiln_oracle.oracle_session).

    python accuracy.py ORIGINAL.onnx CANDIDATE.onnx STEM [--host-kernels]
    (STEM picks the validation data, as in kiln_oracle; --host-kernels: onnxruntime's default session)
"""
import pathlib
import sys

import numpy as np

from kiln_oracle import DATA, local_inputs, run_artifact, validation_inputs


def first(runs):
    """Each feed's first output, out of run_artifact's [outputs per feed]."""
    return [outs[0] for outs in runs]


def _f64(a):
    return np.asarray(a, np.float64)


def max_abs_diff(ref, got):
    """max |got − ref| over every element."""
    return float(np.abs(_f64(got) - _f64(ref)).max())


def rel_diff(ref, got):
    """max |got − ref| / max |ref| (a zero reference divides by 1e-30)."""
    return float(max_abs_diff(ref, got) / max(float(np.abs(_f64(ref)).max()), 1e-30))


def max_rel_diff(refs, gots):
    """The largest rel_diff over pairs of arrays (0 when there are none; a NaN difference is passed over)."""
    worst = 0.0
    for r, g in zip(refs, gots):
        worst = max(worst, rel_diff(r, g))
    return worst


def top1_agreement(refs, gots):
    """Fraction of samples whose (flattened) output has the same argmax in both executions."""
    return sum(int(_f64(r).ravel().argmax() == _f64(g).ravel().argmax()) for r, g in zip(refs, gots)) / len(refs)


def label_accuracy(outs, labels):
    """Fraction of samples whose (flattened) output's argmax is the label."""
    return sum(int(_f64(o).ravel().argmax() == labels[i]) for i, o in enumerate(outs)) / len(outs)


def cosine(ref, got):
    """Cosine between the flattened outputs."""
    x, y = _f64(ref).ravel(), _f64(got).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30))


def mean_cosine(refs, gots):
    return float(np.mean([cosine(r, g) for r, g in zip(refs, gots)]))


def sqnr_db(refs, gots):
    """Signal-to-quantization-noise ratio in dB, signal and noise energies summed over every sample:
    10·log10(Σ|ref|² / Σ|got − ref|²) (noise floored at 1e-30)."""
    sig = noise = 0.0
    for r, g in zip(refs, gots):
        x, y = _f64(r).ravel(), _f64(g).ravel()
        sig += float(x @ x)
        noise += float((x - y) @ (x - y))
    return float(10 * np.log10(sig / max(noise, 1e-30)))


def compare_outputs(refs, gots, labels=None):
    """Every metric of candidate outputs `gots` against reference outputs `refs` (one array per sample)."""
    n = len(refs)
    out = {
        "n": n,
        "top1_agreement": top1_agreement(refs, gots),
        "mean_cosine": mean_cosine(refs, gots),
        "sqnr_db": sqnr_db(refs, gots),
        "max_rel_diff": max_rel_diff([_f64(r).ravel() for r in refs], [_f64(g).ravel() for g in gots]),
    }
    if labels is not None:
        out["accuracy_fp32"] = label_accuracy(refs, labels)
        out["accuracy"] = label_accuracy(gots, labels)
    return out


def compare(orig, cand, feeds, labels=None, exact=True, layout="nhwc"):
    """compare_outputs of the candidate artifact `cand` (.onnx or .tflite) against the original model `orig`,
    their first outputs on `feeds`; `exact` picks the onnxruntime session of both (see the module doc),
    `layout` the TFLite I/O layout."""
    refs = first(run_artifact(orig, feeds, exact, layout))
    gots = first(run_artifact(cand, feeds, exact, layout))
    return compare_outputs(refs, gots, labels)


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
