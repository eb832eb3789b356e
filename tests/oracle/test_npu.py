"""The `npu` backend (issue 5): full-int8 TFLite per device profile with a partition report, checked in the
ai-edge-litert interpreter; and for qualcomm-htp the QDQ ONNX (uint8 activations, static shapes) checked in
onnxruntime with graph optimizations off (kiln_oracle.exact_session: Q/DQ executed as written, not by the
host's int8 kernels, which on x86 without VNNI saturate u8×s8 pair sums at 16 bits)."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from accuracy import compare, first, label_accuracy, top1_agreement
from kiln_oracle import CORPUS, DATA, IMAGENET_PREPROCESS, run_artifact, validation_inputs
from tflite_oracle import interpreter, op_names


def leaky_cnn(path):
    """A small CNN with a LeakyRelu in the middle: TFLite and NNAPI take it, the Edge TPU does not."""
    rng = np.random.default_rng(0)
    w = lambda *s: numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32))
    inits = [w(8, 3, 3, 3), w(8), w(16, 8, 3, 3), w(16), w(10, 16), w(10)]
    for t, n in zip(inits, ["w1", "b1", "w2", "b2", "fc_w", "fc_b"]):
        t.name = n
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("LeakyRelu", ["c2"], ["l2"], name="the_leaky_relu", alpha=0.1),
        helper.make_node("GlobalAveragePool", ["l2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    g = helper.make_graph(nodes, "leaky", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    np.save(path.with_suffix(".npy"), rng.standard_normal((32, 3, 16, 16)).astype(np.float32))


def build(project, model, calib, targets):
    """Build `model` (a name in the project folder or an absolute path) to npu targets ((name, device) pairs),
    calibrating on `calib` (a data source) with percentile ranges; returns the output folder."""
    project.build(
        {
            "model": model,
            "passes": ["cleanup", "fuse"],
            "calibration": {**calib, "method": "percentile"},
            "targets": [{"name": n, "backend": "npu", "precision": "int8", "device": d} for n, d in targets],
            "output": "out",
        }
    )
    return project.root / "out"


def test_edgetpu_names_the_op_it_lacks_and_the_fallback_point(tmp_path, project):
    leaky_cnn(tmp_path / "leaky.onnx")
    out = build(project, "leaky.onnx", {"tensors": "leaky.npy"}, [("coral", "edgetpu"), ("android", "nnapi")])
    r = json.loads((out / "coral" / "partition.json").read_text())
    assert r["fallback_point"]["op"] == "LEAKY_RELU" and r["fallback_point"]["node"] == "the_leaky_relu", r["fallback_point"]
    assert "not supported by edgetpu" in r["fallback_point"]["reason"]
    # The Edge TPU compiler partitions once: the convs after the LeakyRelu stay on the CPU too.
    after = [o for o in r["ops"] if o["index"] > r["fallback_point"]["index"]]
    assert after and all(not o["npu"] for o in after)
    assert any("partitions once" in o["reason"] for o in after)
    assert len(r["partitions"]) == 1 and 0 < r["npu_mac_share"] < 1
    text = (out / "coral" / "partition.txt").read_text()
    assert "LEAKY_RELU" in text and "the_leaky_relu" in text
    # NNAPI has LEAKY_RELU: everything on the NPU.
    a = json.loads((out / "android" / "partition.json").read_text())
    assert a["ops_on_npu"] == a["ops_total"] and len(a["partitions"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["backend"]["coral"]["partitions"] == 1 and report["backend"]["android"]["npu_mac_share"] == 1.0
    # The artifact itself runs, integer in and out, close to the float model.
    it = interpreter(out / "coral" / "model.tflite")
    assert it.get_input_details()[0]["dtype"] == np.int8
    x = np.load(tmp_path / "leaky.npy")
    cos = compare(tmp_path / "leaky.onnx", out / "coral" / "model.tflite", [{"x": x[i : i + 1]} for i in range(8)], exact=None)["mean_cosine"]
    assert cos > 0.98, cos


def test_unknown_device_is_a_clear_error(tmp_path, project):
    leaky_cnn(tmp_path / "leaky.onnx")
    config = {
        "model": "leaky.onnx",
        "calibration": {"tensors": "leaky.npy"},
        "targets": [{"name": "n", "backend": "npu", "precision": "int8", "device": "tpu9000"}],
        "output": "out",
    }
    p = project.build(config, check=False)
    assert p.returncode == 1 and "tpu9000" in p.stderr and "edgetpu" in p.stderr and "panicked" not in p.stderr


@pytest.mark.corpus
def test_mobilenet_v2_edgetpu_one_partition_and_htp_qdq_runs(project):
    calib = {"images": DATA / "images_calib", "preprocess": IMAGENET_PREPROCESS}
    out = build(project, CORPUS / "mobilenet_v2.onnx", calib, [("coral", "edgetpu"), ("htp", "qualcomm-htp")])
    r = json.loads((out / "coral" / "partition.json").read_text())
    assert r["ops_on_npu"] == r["ops_total"] and len(r["partitions"]) == 1 and r["fallback_point"] is None
    assert r["macs_total"] == 300774272 and r["npu_mac_share"] == 1.0
    assert "QUANTIZE" not in op_names(out / "coral" / "model.tflite")
    feeds = validation_inputs("mobilenet_v2")
    ref = first(run_artifact(CORPUS / "mobilenet_v2.onnx", feeds, exact=False))
    a_tpu = top1_agreement(ref, first(run_artifact(out / "coral" / "model.tflite", feeds)))
    # qualcomm-htp: the QDQ ONNX for onnxruntime's QNN provider, uint8 activations, static shapes.
    m = onnx.load(out / "htp" / "model.qdq.onnx")
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 224, 224]
    zps = [t for t in m.graph.initializer if t.data_type == TensorProto.UINT8]
    assert len(zps) > 50
    a_htp = top1_agreement(ref, first(run_artifact(out / "htp" / "model.qdq.onnx", feeds)))  # exact: Q/DQ as written
    assert a_htp >= 0.80 and a_tpu >= 0.80 and abs(a_htp - a_tpu) <= 0.05, (a_htp, a_tpu)


@pytest.mark.corpus
def test_digits_htp_qdq_within_one_point(project):
    out = build(project, CORPUS / "digits_mobilenet.onnx", {"tensors": DATA / "digits_calib.npy"}, [("htp", "qualcomm-htp")])
    labels = np.load(DATA / "digits_val_labels.npy")
    feeds = validation_inputs("digits_mobilenet")
    fp32 = label_accuracy(first(run_artifact(CORPUS / "digits_mobilenet.onnx", feeds, exact=False)), labels)
    acc = label_accuracy(first(run_artifact(out / "htp" / "model.qdq.onnx", feeds)), labels)  # exact: Q/DQ as written
    acc_tfl = label_accuracy(first(run_artifact(out / "htp" / "model.tflite", feeds)), labels)
    assert acc >= fp32 - 0.01 and acc_tfl >= fp32 - 0.01, (acc, acc_tfl, fp32)
