"""`kiln quantize` (issue 4, in progress): QDQ artifacts run in onnxruntime; accuracy against the fp32
original measured by onnxruntime on the shared validation data.

These floors are today's measured quality, kept as regression guards; the issue's targets (e.g. MobileNetV2
per-channel top-1 agreement ≥ 0.90) are not all met yet, see the issue notes."""
import onnx
import pytest

from accuracy import compare, feeds_and_labels
from kiln_oracle import CORPUS, DATA, LOCAL_MODELS, kiln, local_inputs

corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus tier: {CORPUS} is absent")


def quantize(src, out, calib, *extra):
    return kiln("quantize", src, "--calib", calib, "-o", out, *extra)


def count(path, op):
    return sum(n.op_type == op for n in onnx.load(str(path)).graph.node)


def test_local_cnn_quantizes_and_runs(tmp_path):
    src = LOCAL_MODELS / "tiny_cnn.onnx"
    out = tmp_path / "q.onnx"
    quantize(src, out, LOCAL_MODELS / "tiny_cnn_inputs.npy", "--method", "percentile")
    assert count(out, "QuantizeLinear") > 10 and count(out, "DequantizeLinear") > 10
    weights = [t for t in onnx.load(str(out)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 15, "conv weights should be int8 constants"
    r = compare(src, out, local_inputs(src))
    assert r["mean_cosine"] >= 0.99, r
    def init_bytes(p):
        return sum(len(t.raw_data) + 4 * len(t.float_data) for t in onnx.load(str(p)).graph.initializer)

    assert init_bytes(out) < 0.5 * init_bytes(src), (init_bytes(out), init_bytes(src))


def test_qat_model_keeps_its_scales(tmp_path):
    src = LOCAL_MODELS / "tiny_qat.onnx"
    out = tmp_path / "q.onnx"
    p = quantize(src, out, LOCAL_MODELS / "tiny_qat_inputs.npy")
    assert "quantization-aware" in p.stderr
    assert count(out, "QuantizeLinear") <= count(src, "QuantizeLinear")
    r = compare(src, out, local_inputs(src))
    assert r["top1_agreement"] == 1.0 and r["mean_cosine"] > 0.9999, r


@corpus
def test_digits_int8_accuracy_within_half_a_point(tmp_path):
    src = CORPUS / "digits_mobilenet.onnx"
    quantize(src, tmp_path / "q.onnx", DATA / "digits_calib.npy", "--method", "percentile")
    feeds, labels = feeds_and_labels("digits_mobilenet")
    r = compare(src, tmp_path / "q.onnx", feeds, labels)
    assert r["accuracy"] >= r["accuracy_fp32"] - 0.005, r


@corpus
def test_digits_qat_accuracy(tmp_path):
    src = CORPUS / "digits_mobilenet_qat.onnx"
    quantize(src, tmp_path / "q.onnx", DATA / "digits_calib.npy")
    feeds, labels = feeds_and_labels("digits_mobilenet_qat")
    r = compare(src, tmp_path / "q.onnx", feeds, labels)
    assert r["accuracy"] >= 0.984, r


@corpus
def test_mobilenet_v2_per_channel_regression_floor(tmp_path):
    src = CORPUS / "mobilenet_v2.onnx"
    quantize(src, tmp_path / "q.onnx", DATA / "images_calib", "--imagenet", "--method", "percentile")
    feeds, _ = feeds_and_labels("mobilenet_v2")
    r = compare(src, tmp_path / "q.onnx", feeds)
    assert r["mean_cosine"] >= 0.985 and r["top1_agreement"] >= 0.80, r
