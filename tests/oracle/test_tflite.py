"""The `tflite` backend (issue 5): every model converts, and the ai-edge-litert interpreter (LiteRT with
XNNPACK) reproduces onnxruntime on the original ONNX model: fp32 within 1e-4·max|ref|, fp16 within
1e-2·max|ref|. Q/DQ (QAT) models are compared with onnxruntime with graph optimizations off (the model
executed as written, kiln_oracle.exact_session; the default session's fused int8 kernels give results that
depend on the CPU), by top-1 and a bound counted in quantization steps: one rounding tie resolved the other
way in a fake-quantizer moves the output by a whole step, so no float implementation matches another to 1e-4
there (kiln_oracle.QDQ_FLIP_ELEMENTS, qdq_tolerance)."""
import json
import re

import numpy as np
import pytest

from accuracy import compare, first, max_abs_diff, top1_agreement
from kiln_oracle import (
    CORPUS, DATA, LOCAL_MODELS, QDQ_MODELS, Project, assert_same_top1, data_source, local_inputs, local_models, qdq_tolerance, run_artifact,
    session, validation_config, validation_inputs,
)
from tflite_oracle import interpreter, max_rel_diff, op_names, paired_outputs


# kiln measures on 16 (images) or 64 validation samples; half the 1e-2 bound leaves room for the samples it did not see.
F16 = {"fp16_max_error": 0.005}


def build_config(tmp_path, model, config):
    """Copy `model` (and its external data) into tmp_path/w, write `model: …` + `config` + `output: out` as the
    config, run kiln build; returns the output folder."""
    return Project(tmp_path / "w").build_model(model, config)


def build(tmp_path, model, targets, pins=None, validation=True):
    """kiln build with the given tflite targets ((name, precision, extra target options) triples) after
    cleanup and fuse; `pins`: the `inputs:` section. Returns the output folder."""
    config = {"inputs": pins} if pins else {}
    config["passes"] = ["cleanup", "fuse"]
    if validation and any(p == "fp16" for _, p, _ in targets):
        config["validation"] = validation_config(model)
    config["targets"] = [{"name": n, "backend": "tflite", "precision": p, **(extra or {})} for n, p, extra in targets]
    return build_config(tmp_path, model, config)


def check(model, out, feeds, stem):
    if stem in QDQ_MODELS:
        pairs = paired_outputs(model, out / "f32" / "model.tflite", feeds)
        ref = np.concatenate([r[0].reshape(1, -1) for r, _ in pairs])
        got = np.concatenate([o[0].reshape(1, -1) for _, o in pairs]).astype(np.float64)
        tol = qdq_tolerance(model, np.abs(ref).max())
        assert max_abs_diff(ref, got) <= tol, (max_abs_diff(ref, got), tol)
        assert_same_top1(got, ref, tol)
        return
    assert max_rel_diff(model, out / "f32" / "model.tflite", feeds) <= 1e-4
    assert max_rel_diff(model, out / "f16" / "model.tflite", feeds) <= 1e-2


LOCAL = [p for p in local_models() if p.stem != "tiny_cnn_dynamo"] + [LOCAL_MODELS / "tiny_cnn_dynamo.onnx"]


@pytest.mark.parametrize("path", LOCAL, ids=[p.stem for p in LOCAL])
def test_local_model_fp32_fp16_match_onnxruntime(tmp_path, path):
    sess = session(path)
    inp = sess.get_inputs()[0]
    dims = [d if isinstance(d, int) else 1 for d in inp.shape]
    out = build(tmp_path, path, [("f32", "fp32", None), ("f16", "fp16", F16)], pins={inp.name: dims})
    check(path, out, local_inputs(path), path.stem.replace("_dynamo", ""))


def test_cnn_is_channel_last_without_transposes(tmp_path):
    out = build(tmp_path, LOCAL_MODELS / "tiny_cnn.onnx", [("f32", "fp32", None)], pins={"input": [1, 3, 64, 64]})
    ops = op_names(out / "f32" / "model.tflite")
    assert "TRANSPOSE" not in ops, ops
    it = interpreter(out / "f32" / "model.tflite")
    assert list(it.get_input_details()[0]["shape"]) == [1, 64, 64, 3]


def test_io_layout_nchw_keeps_onnx_order(tmp_path):
    path = LOCAL_MODELS / "tiny_cnn.onnx"
    out = build(tmp_path, path, [("f32", "fp32", {"io_layout": "nchw"})], pins={"input": [1, 3, 64, 64]})
    tfl = out / "f32" / "model.tflite"
    assert list(interpreter(tfl).get_input_details()[0]["shape"]) == [1, 3, 64, 64]
    assert max_rel_diff(path, tfl, local_inputs(path), layout="nchw") <= 1e-4


def test_fp16_halves_the_weights(tmp_path):
    out = build(tmp_path, LOCAL_MODELS / "tiny_cnn.onnx", [("f32", "fp32", None), ("f16", "fp16", None)], pins={"input": [1, 3, 64, 64]})
    a, b = ((out / t / "model.tflite").stat().st_size for t in ("f32", "f16"))
    assert b < 0.65 * a, (a, b)
    assert "DEQUANTIZE" in op_names(out / "f16" / "model.tflite")


CORPUS_MODELS = sorted(CORPUS.glob("*.onnx")) if CORPUS.is_dir() else []


@pytest.mark.corpus
@pytest.mark.parametrize("path", CORPUS_MODELS, ids=[p.stem for p in CORPUS_MODELS])
def test_corpus_model_fp32_fp16_match_onnxruntime(tmp_path, path):
    out = build(tmp_path, path, [("f32", "fp32", None), ("f16", "fp16", F16)])
    limit = 20 if path.stem in {"efficientnet_b0", "shufflenet_v2_x1_0"} else None
    check(path, out, validation_inputs(path.stem, limit=limit), path.stem)


def test_unlowerable_op_is_named_and_other_targets_build(tmp_path, project):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Round", ["r"], ["y"], name="the_round")], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    config = {
        "model": "m.onnx",
        "passes": ["cleanup"],
        "targets": [{"name": "ref", "backend": "onnx", "precision": "fp32"}, {"name": "phone", "backend": "tflite", "precision": "fp32"}],
        "output": "out",
    }
    p = project.build(config, check=False)
    assert p.returncode == 1 and "panicked" not in p.stderr
    assert "the_round" in p.stderr and "Round" in p.stderr and "phone" in p.stderr, p.stderr
    assert (tmp_path / "out" / "ref" / "model.onnx").is_file()
    assert not (tmp_path / "out" / "phone").exists()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "Round" in report["failed"]["phone"]
    assert [a["target"] for a in json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"]] == ["ref"]


# ---- int8 (full integer, from the quantizer's QDQ model) ----

def build_int8(tmp_path, model, pins=None, target_opts=None):
    """kiln build to one full-int8 tflite target `i8` (`target_opts`: more of its options), calibrated with
    percentile ranges on the model's calibration data; `pins`: the `inputs:` section. Returns the output folder."""
    config = {"inputs": pins} if pins else {}
    config["passes"] = ["cleanup", "fuse"]
    config["calibration"] = {**data_source(model, "calib"), "method": "percentile"}
    config["targets"] = [{"name": "i8", "backend": "tflite", "precision": "int8", **(target_opts or {})}]
    return build_config(tmp_path, model, config)


def test_local_cnn_int8_is_integer_and_close(tmp_path):
    path = LOCAL_MODELS / "tiny_cnn.onnx"
    out = build_int8(tmp_path, path, pins={"input": [1, 3, 64, 64]})
    tfl = out / "i8" / "model.tflite"
    it = interpreter(tfl)
    kinds = {d["dtype"].__name__ for d in it.get_tensor_details()}
    assert "int8" in kinds and "int32" in kinds
    cos = compare(path, tfl, local_inputs(path), exact=None)["mean_cosine"]
    assert cos >= 0.98, cos


@pytest.mark.corpus
@pytest.mark.parametrize("stem", ["digits_mobilenet", "digits_mobilenet_pruned", "digits_mobilenet_qat"])
def test_digits_int8_tflite_within_one_point(tmp_path, stem):
    path = CORPUS / f"{stem}.onnx"
    out = build_int8(tmp_path, path)
    labels = np.load(DATA / "digits_val_labels.npy")
    feeds = validation_inputs(stem)
    # exact=None: digits_mobilenet_qat's accuracy as written, not by the host's int8 kernels
    r = compare(path, out / "i8" / "model.tflite", feeds, labels, exact=None)
    acc, fp32 = r["accuracy"], r["accuracy_fp32"]
    assert acc >= fp32 - 0.01, (acc, fp32)


@pytest.mark.corpus
def test_mobilenet_v2_int8_tflite_all_integer_and_matches_its_qdq_twin(tmp_path):
    path = CORPUS / "mobilenet_v2.onnx"
    out = build_int8(tmp_path, path)
    tfl = out / "i8" / "model.tflite"
    ops = op_names(tfl)
    # Float in, float out: one QUANTIZE and one DEQUANTIZE at the edges, every other op integer.
    assert ops.count("QUANTIZE") == 1 and ops.count("DEQUANTIZE") == 1, ops
    assert "TRANSPOSE" not in ops
    feeds = validation_inputs("mobilenet_v2")
    ref = first(run_artifact(path, feeds, exact=False))  # a float model: onnxruntime's default session
    a_tfl = top1_agreement(ref, first(run_artifact(tfl, feeds)))
    a_qdq = top1_agreement(ref, first(run_artifact(out / "i8" / "model.qdq.onnx", feeds)))  # exact: Q/DQ as written
    # Within 0.02, i.e. two images of 100 (counted, not compared as floats).
    assert abs(round(a_tfl * len(feeds)) - round(a_qdq * len(feeds))) <= 2, (a_tfl, a_qdq)
    assert (tfl.stat().st_size) < 0.3 * path.stat().st_size


@pytest.mark.corpus
@pytest.mark.parametrize("stem", ["squeezenet1_1", "efficientnet_b0", "tiny_encoder", "kws_lstm", "shufflenet_v2_x1_0", "mobilenet_v3_small"])
def test_corpus_int8_tflite_loads_and_runs(tmp_path, stem):
    path = CORPUS / f"{stem}.onnx"
    opts, out = None, None
    if stem == "mobilenet_v3_small":
        # Its full-integer model is noise (median output SQNR on calibration samples 3 dB, top-1 agreement
        # 0.25: random-init logits nearly tied), so by default the quality guard must repair it (keeping its
        # most sensitive tensors float until the 4 dB floor holds, and saying so in the report) or fail the
        # target naming the floor: never ship it as it is. Which of the two depends on how close the repair
        # gets (4.6 dB in the run of 2026-11-30). This test is about lowering and loading: after a failure it
        # lowers the floor on purpose. (A `validation:` budget is the way to a useful artifact.)
        (tmp_path / "default").mkdir()
        try:
            out = build_int8(tmp_path / "default", path)
        except AssertionError as e:
            assert re.search(r"target i8: FAILED: quality guard: .* below the floor of 4 dB", str(e)), e
            opts = {"min_calibration_sqnr_db": -100}
        else:
            g = json.loads((out / "report.json").read_text())["quantization"]["i8"]["quality_guard"]
            assert g["sqnr_db"] < g["floor_db"] <= g["sqnr_db_after"] and g["repair"] and g["kept_float"], g
    if opts is not None or out is None:
        out = build_int8(tmp_path, path, target_opts=opts)
    feeds = validation_inputs(stem, limit=4)
    for r, t in zip(first(run_artifact(path, feeds, exact=False)), first(run_artifact(out / "i8" / "model.tflite", feeds))):
        assert r.shape == t.shape and np.isfinite(t).all()


def test_dynamic_range_int8_weights_float_activations(tmp_path):
    path = LOCAL_MODELS / "tiny_cnn.onnx"
    out = build(tmp_path, path, [("f32", "fp32", None), ("dyn", "dynamic", None)], pins={"input": [1, 3, 64, 64]})
    tfl = out / "dyn" / "model.tflite"
    it = interpreter(tfl)
    assert it.get_input_details()[0]["dtype"] == np.float32
    int8_filters = [d for d in it.get_tensor_details() if d["dtype"] == np.int8]
    assert len(int8_filters) >= 10, "conv/fc filters should be int8"
    assert tfl.stat().st_size < 0.55 * (out / "f32" / "model.tflite").stat().st_size  # tiny: names and structure weigh
    cos = compare(path, tfl, local_inputs(path), exact=None)["mean_cosine"]
    assert cos >= 0.98, cos
