"""`kiln quantize` and int8 `kiln build` targets: QDQ artifacts run in onnxruntime with their Q/DQ executed as
written (accuracy.compare: graph optimizations off), so no assertion depends on the host's int8 kernels;
accuracy against the fp32 original on the shared validation data. What the host's fused kernels do is
measured separately (test_quant_guard.py, docs/TESTING.md)."""
import numpy as np
import onnx
import pytest

from accuracy import compare, feeds_and_labels, sqnr_db
from kiln_oracle import CORPUS, DATA, IMAGENET_PREPROCESS, LOCAL_MODELS, kiln, local_inputs, run_artifact


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


@pytest.mark.corpus
def test_digits_int8_accuracy_within_half_a_point(tmp_path):
    src = CORPUS / "digits_mobilenet.onnx"
    quantize(src, tmp_path / "q.onnx", DATA / "digits_calib.npy", "--method", "percentile")
    feeds, labels = feeds_and_labels("digits_mobilenet")
    r = compare(src, tmp_path / "q.onnx", feeds, labels)
    assert r["accuracy"] >= r["accuracy_fp32"] - 0.005, r


@pytest.mark.corpus
def test_digits_pruned_int8_within_one_point(tmp_path):
    # Pruned channels are constants; kiln moves them onto the activation grid (quant/dead_channels.rs).
    # Without that, BN-folded depthwise weights (L1 ~600) amplify their rounding: accuracy 0.32.
    src = CORPUS / "digits_mobilenet_pruned.onnx"
    p = quantize(src, tmp_path / "q.onnx", DATA / "digits_calib.npy", "--method", "percentile")
    assert "262 dead channels snapped" in p.stderr, p.stderr
    feeds, labels = feeds_and_labels("digits_mobilenet_pruned")
    r = compare(src, tmp_path / "q.onnx", feeds, labels)
    assert r["accuracy"] >= r["accuracy_fp32"] - 0.01, r


@pytest.mark.corpus
def test_digits_qat_accuracy(tmp_path):
    src = CORPUS / "digits_mobilenet_qat.onnx"
    quantize(src, tmp_path / "q.onnx", DATA / "digits_calib.npy")
    feeds, labels = feeds_and_labels("digits_mobilenet_qat")
    r = compare(src, tmp_path / "q.onnx", feeds, labels)
    assert r["accuracy"] >= 0.984, r


@pytest.mark.corpus
def test_mobilenet_v2_per_channel(tmp_path):
    # Issue 4 line 1: >= 0.90 agreement and >= 0.985 cosine with per-channel weights. Measured 0.93 / 0.9955 /
    # 20.7 dB in onnxruntime: equalization (residual streams + conv pairs) and range refinement (the stage-6
    # stream narrowed to 0.25 of its calibrated range, chosen on the calibration images), both on by default.
    # Without refinement 0.89 / 0.9937 / 19.2 dB; without either 0.79 / 0.986 / 15.7 dB; onnxruntime's own
    # quantizer 0.82 / 0.964.
    src = CORPUS / "mobilenet_v2.onnx"
    p = quantize(src, tmp_path / "q.onnx", DATA / "images_calib", "--imagenet", "--method", "percentile")
    assert "range refinement: 5 residual streams" in p.stderr, p.stderr
    feeds, _ = feeds_and_labels("mobilenet_v2")
    r = compare(src, tmp_path / "q.onnx", feeds)
    assert r["mean_cosine"] >= 0.985 and r["top1_agreement"] >= 0.90 and r["sqnr_db"] >= 20.0, r


@pytest.mark.corpus
def test_mobilenet_v2_x86_option_holds_under_default_kernels(tmp_path):
    # Issue 11 line 5, second half: `--reduce-range` (7-bit weights) is the artifact for x86 servers without
    # VNNI. It must meet 0.90 / 0.985 both with its Q/DQ as written and under onnxruntime's default session on
    # whatever CPU runs this (its fused kernels cannot saturate: 2·255·64 < 2^15). Measured (entropy, the
    # default method): 0.90 / 0.9925 / 18.6 dB exact, 0.90 / 0.9923 default on AVX-512 VNNI; under qemu's
    # AVX2-only Haswell the default kernels reproduce the exact outputs (see docs/BENCHMARKS.md).
    from kiln_oracle import host_int8_kernel

    src = CORPUS / "mobilenet_v2.onnx"
    q = tmp_path / "q.onnx"
    p = quantize(src, q, DATA / "images_calib", "--imagenet", "--reduce-range")
    assert "x86 without VNNI (7-bit weights" in p.stderr, p.stderr
    feeds, _ = feeds_and_labels("mobilenet_v2")
    exact = compare(src, q, feeds)
    default = compare(src, q, feeds, exact=False)
    print(f"host kernels {host_int8_kernel()}: exact {exact}, default {default}")
    for r in (exact, default):
        assert r["top1_agreement"] >= 0.90 and r["mean_cosine"] >= 0.985, (exact, default)
    assert abs(default["sqnr_db"] - exact["sqnr_db"]) < 0.5, (exact, default)


TINY_CNN_CALIBRATION = {"tensors": "tiny_cnn_inputs.npy", "method": "percentile"}


def tiny_cnn_project(project, targets):
    """tiny_cnn and its samples copied into the project folder, and a config calibrating on them for `targets`
    (dicts); returns the config's path."""
    project.copy(LOCAL_MODELS / "tiny_cnn.onnx", LOCAL_MODELS / "tiny_cnn_inputs.npy")
    return project.write(
        {"model": "tiny_cnn.onnx", "passes": ["cleanup", "fuse"], "calibration": TINY_CNN_CALIBRATION, "targets": targets, "output": "out"}
    )


def test_build_int8_target_from_yaml(tmp_path, project):
    import json

    cfg = tiny_cnn_project(project, [{"name": "q", "backend": "onnx", "precision": "int8"}, {"name": "f", "backend": "onnx", "precision": "fp32"}])
    kiln("build", cfg)
    art = tmp_path / "out" / "q" / "model.onnx"
    first = art.read_bytes()
    r = compare(tmp_path / "tiny_cnn.onnx", art, local_inputs(LOCAL_MODELS / "tiny_cnn.onnx"))
    assert r["mean_cosine"] >= 0.99, r
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "calibration" in {i["role"] for i in manifest["inputs"]}
    assert {a["precision"] for a in manifest["artifacts"]} == {"int8", "fp32"}
    kiln("build", cfg, "--force")
    assert art.read_bytes() == first, "int8 artifact not byte-identical across builds"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["calibration"]["cached"] is True
    assert report["quantization"]["q"]["quantized_weights"] >= 15
    table = report["layer_sqnr"]["q"]
    assert len(table) >= 15 and all(row["sqnr_db"] > 10 for row in table), table
    # The first row, recomputed independently with onnxruntime (Q/DQ as written) on the same samples.
    name = table[0]["layer"]

    def expose(path, to):
        """The model with the layer's output added as its last graph output."""
        m = onnx.load(str(path))
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        onnx.save(m, str(to))
        return to

    feeds = local_inputs(LOCAL_MODELS / "tiny_cnn.onnx")[:16]
    fp = [outs[-1] for outs in run_artifact(expose(tmp_path / "out" / "f" / "model.onnx", tmp_path / "f_exposed.onnx"), feeds)]
    q = [outs[-1] for outs in run_artifact(expose(art, tmp_path / "q_exposed.onnx"), feeds)]
    sqnr = sqnr_db(fp, q)
    assert abs(sqnr - table[0]["sqnr_db"]) < 3.0, (sqnr, table[0])


def test_int8_without_calibration_is_a_config_error(project):
    import shutil

    shutil.copy(LOCAL_MODELS / "tiny_cnn.onnx", project.root / "m.onnx")
    p = project.build({"model": "m.onnx", "targets": [{"name": "q", "backend": "onnx", "precision": "int8"}], "output": "out"}, check=False)
    assert p.returncode == 1 and "needs a `calibration:` section" in p.stderr


def test_accuracy_budget_is_enforced(tmp_path, project):
    project.copy(LOCAL_MODELS / "tiny_cnn.onnx", LOCAL_MODELS / "tiny_cnn_inputs.npy")
    base = {
        "model": "tiny_cnn.onnx",
        "passes": ["cleanup", "fuse"],
        "calibration": TINY_CNN_CALIBRATION,
        "targets": [{"name": "q", "backend": "onnx", "precision": "int8"}],
        "output": "out",
    }
    project.build({**base, "validation": {"tensors": "tiny_cnn_inputs.npy", "min_cosine": 0.99}}, name="ok.yaml")
    import json

    acc = json.loads((tmp_path / "out" / "report.json").read_text())["accuracy"]["q"]
    r = compare(tmp_path / "tiny_cnn.onnx", tmp_path / "out" / "q" / "model.onnx", local_inputs(LOCAL_MODELS / "tiny_cnn.onnx"))
    # kiln's own measurement (tract) agrees with onnxruntime's.
    assert abs(acc["mean_cosine"] - r["mean_cosine"]) < 0.01, (acc, r)
    # A budget nothing can meet (cosine ≤ 1): mixed precision exhausts its search and the build fails.
    strict = {**base, "output": "out2", "validation": {"tensors": "tiny_cnn_inputs.npy", "min_cosine": 1.01}}
    p = project.build(strict, name="strict.yaml", check=False)
    assert p.returncode == 1 and "accuracy budget is not met even with every layer in float" in p.stderr, p.stderr
    assert not (tmp_path / "out2" / "manifest.json").exists()


@pytest.mark.corpus
def test_digits_budget_with_labels(tmp_path, project):
    project.build(
        {
            "model": CORPUS / "digits_mobilenet.onnx",
            "passes": ["cleanup", "fuse"],
            "calibration": {"tensors": DATA / "digits_calib.npy", "method": "percentile"},
            "validation": {"tensors": DATA / "digits_val.npy", "labels": DATA / "digits_val_labels.npy", "max_accuracy_drop": 0.005},
            "targets": [{"name": "q", "backend": "onnx", "precision": "int8"}],
            "output": "out",
        }
    )
    import json

    acc = json.loads((tmp_path / "out" / "report.json").read_text())["accuracy"]["q"]
    assert acc["accuracy"] >= acc["accuracy_reference"] - 0.005, acc


def test_mixed_precision_meets_a_tight_budget(tmp_path, project):
    """Full int8 of tiny_cnn reaches cosine ~0.99996; a 0.99999 budget forces layers/activations to stay
    float, and the report names them with their measured sensitivity."""
    import json

    project.copy(LOCAL_MODELS / "tiny_cnn.onnx", LOCAL_MODELS / "tiny_cnn_inputs.npy")
    project.build(
        {
            "model": "tiny_cnn.onnx",
            "passes": ["cleanup", "fuse"],
            "calibration": TINY_CNN_CALIBRATION,
            "validation": {"tensors": "tiny_cnn_inputs.npy", "min_cosine": 0.99999},
            "targets": [{"name": "q", "backend": "onnx", "precision": "int8"}],
            "output": "out",
        }
    )
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    kept = r["quantization"]["q"]["mixed_precision"]["kept_float"]
    assert 1 <= len(kept) and sum(k["kind"] == "layer" for k in kept) <= 2, kept
    assert all("sqnr_db_when_quantized_alone" in k and k["kind"] in ("layer", "activation") for k in kept)
    assert r["accuracy"]["q"]["mean_cosine"] >= 0.99999
    ort = compare(tmp_path / "tiny_cnn.onnx", tmp_path / "out" / "q" / "model.onnx", local_inputs(LOCAL_MODELS / "tiny_cnn.onnx"))
    assert ort["mean_cosine"] >= 0.9999, ort


@pytest.mark.corpus
def test_mobilenet_v3_meets_budget_through_mixed_precision(tmp_path, project):
    """Done-when 3 (MobileNetV3-small half): top-1 agreement ≥ 0.95 with the artifact ≤ 50 % of fp32 bytes,
    checked in onnxruntime; the report names what stayed float."""
    import json

    pre = IMAGENET_PREPROCESS
    src = CORPUS / "mobilenet_v3_small.onnx"
    project.build(
        {
            "model": src,
            "inputs": {"input": [1, 3, 224, 224]},
            "passes": ["cleanup", "fuse"],
            "calibration": {"images": DATA / "images_calib", "preprocess": pre, "method": "percentile"},
            "validation": {"images": DATA / "images_val", "preprocess": pre, "min_top1_agreement": 0.95},
            "targets": [{"name": "q", "backend": "onnx", "precision": "int8"}],
            "output": "out",
        }
    )
    art = tmp_path / "out" / "q" / "model.onnx"
    assert art.stat().st_size <= 0.5 * src.stat().st_size
    feeds, _ = feeds_and_labels("mobilenet_v3_small")
    r = compare(src, art, feeds)
    assert r["top1_agreement"] >= 0.95, r
    rep = json.loads((tmp_path / "out" / "report.json").read_text())["quantization"]["q"]["mixed_precision"]
    assert rep["kept_float"] and all("why" in k for k in rep["kept_float"])


@pytest.mark.corpus
def test_cle_lifts_per_tensor_mobilenet_v2(tmp_path, project):
    # Equalization (residual streams + conv pairs, on by default) with per-tensor weights on MobileNetV2.
    # Issue 4 line 1 asks >= 0.85 agreement and >= 0.97 cosine; measured without 0.77 / 0.976 / 13.4 dB,
    # with 0.88 / 0.988 / 17.0 dB (range refinement on, as by default).
    import json

    res = {}
    for cle in ("false", "true"):
        config = {
            "model": CORPUS / "mobilenet_v2.onnx",
            "inputs": {"input": [1, 3, 224, 224]},
            "passes": ["cleanup", "fuse"],
            "calibration": {"images": DATA / "images_calib", "preprocess": IMAGENET_PREPROCESS, "method": "percentile"},
            "targets": [{"name": "pt", "backend": "onnx", "precision": "int8", "weights": "per_tensor", "cle": cle == "true"}],
            "output": f"out_{cle}",
        }
        project.build(config, name=f"{cle}.yaml")
        q = json.loads((tmp_path / f"out_{cle}" / "report.json").read_text())["quantization"]["pt"]
        feeds, _ = feeds_and_labels("mobilenet_v2")
        res[cle] = (q, compare(CORPUS / "mobilenet_v2.onnx", tmp_path / f"out_{cle}" / "pt" / "model.onnx", feeds))
    q, r = res["true"]
    assert q["cle_pairs_equalized"] > 50 and q["cle_streams_equalized"] == 5 and q["cle_float_max_rel_diff"] < 1e-4, q
    assert r["mean_cosine"] >= 0.97 and r["sqnr_db"] >= res["false"][1]["sqnr_db"] + 2.0, (r, res["false"][1])
    assert r["top1_agreement"] >= 0.85, r


def test_quantize_cli_cle_is_exact_in_float_and_runs(tmp_path):
    src = LOCAL_MODELS / "tiny_cnn.onnx"
    out = tmp_path / "q.onnx"
    p = quantize(src, out, LOCAL_MODELS / "tiny_cnn_inputs.npy", "--method", "percentile", "--per-tensor")
    line = next(l for l in p.stderr.splitlines() if "equalization:" in l)
    assert int(line.split("streams, ")[1].split()[0]) > 0 and float(line.split("moved ")[1].rstrip(")")) < 1e-4, line
    r = compare(src, out, local_inputs(src))
    assert r["mean_cosine"] >= 0.98, r
    bad = kiln("quantize", src, "--calib", LOCAL_MODELS / "tiny_cnn_inputs.npy", "-o", tmp_path / "x.onnx", "--cle", "maybe", check=False)
    assert bad.returncode != 0 and "--cle" in bad.stderr and not (tmp_path / "x.onnx").exists()


def _residual_stream_model(path):
    """conv → (conv → relu → conv) → add → conv: one residual stream whose channels span 100×, built here
    so the test does not depend on the corpus."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    spread = np.geomspace(0.05, 5.0, 8).astype(np.float32)  # stream channel c ranges ~spread[c]
    w = {
        "w0": rng.normal(size=(8, 4, 1, 1)).astype(np.float32) * spread[:, None, None, None],
        "w1": rng.normal(size=(16, 8, 1, 1)).astype(np.float32) * 0.3,
        "w2": rng.normal(size=(8, 16, 1, 1)).astype(np.float32) * 0.3 * spread[:, None, None, None],
        "w3": rng.normal(size=(6, 8, 1, 1)).astype(np.float32) / spread[None, :, None, None] * 0.2,
    }
    b = {f"b{i}": rng.normal(size=(w[f"w{i}"].shape[0],)).astype(np.float32) * 0.1 for i in range(4)}
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["s1"]),
        helper.make_node("Conv", ["s1", "w1", "b1"], ["e"]),
        helper.make_node("Relu", ["e"], ["r"]),
        helper.make_node("Conv", ["r", "w2", "b2"], ["s2"]),
        helper.make_node("Add", ["s1", "s2"], ["s3"]),
        helper.make_node("Conv", ["s3", "w3", "b3"], ["y"]),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in {**w, **b}.items()]
    g = helper.make_graph(nodes, "stream", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    np.save(path.with_suffix(".npy"), rng.normal(size=(32, 4, 8, 8)).astype(np.float32))


def test_residual_stream_equalization_is_exact_and_helps(tmp_path):
    src = tmp_path / "stream.onnx"
    _residual_stream_model(src)
    feeds = [{"x": x[None]} for x in np.load(src.with_suffix(".npy"))]
    res = {}
    for cle in ("off", "auto"):
        out = tmp_path / f"q_{cle}.onnx"
        p = quantize(src, out, src.with_suffix(".npy"), "--method", "minmax", "--cle", cle)
        res[cle] = (p.stderr, compare(src, out, feeds))
    line = next(l for l in res["auto"][0].splitlines() if "equalization:" in l)
    assert "1 residual streams" in line and float(line.split("moved ")[1].rstrip(")")) < 1e-4, line
    off, on = res["off"][1], res["auto"][1]
    assert on["sqnr_db"] >= off["sqnr_db"] + 3.0, (off, on)


def _act_scale(path, value):
    m = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == value)
    return float(inits[q.input[1]])


def test_range_refinement_narrows_a_heavy_tailed_stream(tmp_path):
    # Heavy-tailed (Student t, 2 dof) calibration data and min/max ranges: the stream's range is set by rare
    # values. Refinement (on by default) tries narrower ranges for the stream and keeps one only if the model
    # output improves on the calibration samples; onnxruntime must confirm that gain on those samples.
    src = tmp_path / "stream.onnx"
    _residual_stream_model(src)
    calib = tmp_path / "t2.npy"
    x = np.random.default_rng(11).standard_t(2, size=(32, 4, 8, 8)).astype(np.float32)
    np.save(calib, x)
    feeds = [{"x": s[None]} for s in x]
    res = {}
    for ref in ("off", "on"):
        out = tmp_path / f"q_{ref}.onnx"
        p = quantize(src, out, calib, "--method", "minmax", "--cle", "off", "--refine-ranges", ref)
        res[ref] = (p.stderr, out, compare(src, out, feeds))
    line = next(l for l in res["on"][0].splitlines() if "range refinement:" in l)
    assert "1 residual streams, 1 narrowed [s1 ×" in line, line
    factor = float(line.split("×")[1].split("]")[0])
    before, after = (float(v) for v in line.split("samples ")[1].split(" dB")[0].split(" → "))
    assert 0.1 < factor < 1.0 and after > before + 0.05, line
    assert "range refinement" not in res["off"][0]
    for v in ("s1", "s2", "s3"):  # every tensor of the stream moves by the factor; others do not
        assert abs(_act_scale(res["on"][1], v) / _act_scale(res["off"][1], v) - factor) < 0.02, v
    assert abs(_act_scale(res["on"][1], "e") / _act_scale(res["off"][1], "e") - 1.0) < 1e-6
    off, on = res["off"][2], res["on"][2]
    assert on["sqnr_db"] > off["sqnr_db"], (off, on)


def test_calibration_is_done_once_per_model_quantized_and_cached(tmp_path, project):
    # An equalized target calibrates the equalized model (through the cache); a `cle: false` target the
    # optimized one; a tflite target with the same equalization reuses the first. A rebuild reads all three.
    import json

    cfg = tiny_cnn_project(
        project,
        [
            {"name": "a", "backend": "onnx", "precision": "int8"},
            {"name": "b", "backend": "onnx", "precision": "int8", "cle": False},
            {"name": "c", "backend": "tflite", "precision": "int8"},
        ],
    )
    first = kiln("build", cfg).stderr
    assert first.count("calibrated on") == 2 and first.count("statistics: cached") == 1, first
    assert len(list((tmp_path / "out" / ".kiln-cache").glob("calibration-*.json"))) == 2
    again = kiln("build", cfg, "--force").stderr
    assert "calibrated on" not in again and again.count("statistics: cached") == 3, again
    rep = json.loads((tmp_path / "out" / "report.json").read_text())["calibration"]
    assert rep["cached"] is True and rep["lookups"] == 3, rep


# Issue 11 line 2: no calibration method may be catastrophically worse than min/max on any shared model.
# Each model is quantized with every method (range refinement off: it only ever accepts gains on the
# calibration samples, so this is the stricter test of the methods themselves) and judged in onnxruntime
# with its Q/DQ executed as written. The metric: digits accuracy for the digits models, top-1 agreement
# for the image models, mean cosine for the others; "2 points" is 0.02 on each.
METHODS = ("minmax", "percentile", "entropy", "mse")
IMAGE_VAL = 100  # validation crops per image model


def _calib_args(stem):
    from kiln_oracle import IMAGE_MODELS

    if stem in IMAGE_MODELS:
        return [DATA / "images_calib", "--imagenet"]
    if stem.startswith("digits"):
        return [DATA / "digits_calib.npy"]
    return [DATA / {"tiny_encoder": "tokens_calib.npy", "kws_lstm": "kws_calib.npy"}[stem]]


def _metric(stem, r):
    if stem.startswith("digits"):
        return "accuracy", r["accuracy"]
    if "top1_agreement" in r and stem not in ("tiny_encoder", "kws_lstm"):
        return "top1_agreement", r["top1_agreement"]
    return "mean_cosine", r["mean_cosine"]


def method_sweep(stem, tmp_path, extra=()):
    from kiln_oracle import IMAGE_MODELS, validation_inputs

    src = CORPUS / f"{stem}.onnx"
    feeds, labels = feeds_and_labels(stem)
    if stem in IMAGE_MODELS:
        feeds = validation_inputs(stem, IMAGE_VAL)
    out = {}
    for m in METHODS:
        q = tmp_path / f"{m}.onnx"
        p = quantize(src, q, *_calib_args(stem), "--method", m, "--refine-ranges", "off", *extra)
        r = compare(src, q, feeds, labels)
        out[m] = (_metric(stem, r)[1], r, p.stderr)
    return out


SWEEP_MODELS = ["digits_mobilenet", "digits_mobilenet_pruned", "digits_mobilenet_qat", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x1_0", "squeezenet1_1", "tiny_encoder", "kws_lstm"]


# Random-init image models (../shared/models/README.md: "their predictions mean nothing"). Their logits are
# nearly tied, so top-1 agreement is decided by noise: MobileNetV3-small's logits have a median std of 0.004
# and a median top-2 margin of 0.002; EfficientNet-B0's MSE artifact has a higher SQNR and cosine than
# min/max's (11.2 vs 10.6 dB, 0.982 vs 0.975) and a lower agreement (0.80 vs 0.85); ShuffleNetV2's percentile
# artifact went from 0.58 to 0.71 agreement between 32 and 48 calibration images at the same SQNR. For these
# the test asserts what is stable: cosine within 2 points of min/max's and SQNR no more than 3 dB below it
# (noise power at most doubled); agreement is printed.
NEAR_TIED_LOGITS = {"mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x1_0"}


@pytest.mark.corpus
@pytest.mark.parametrize("stem", SWEEP_MODELS)
def test_every_calibration_method_is_within_two_points_of_minmax(tmp_path, stem):
    res = method_sweep(stem, tmp_path)
    base = res["minmax"]
    table = {m: (round(v[0], 4), round(v[1]["mean_cosine"], 4), round(v[1]["sqnr_db"], 2)) for m, v in res.items()}
    print(stem, "(metric, cosine, SQNR dB):", table)
    for m, (v, r, err) in res.items():
        if stem in NEAR_TIED_LOGITS:
            assert r["mean_cosine"] >= base[1]["mean_cosine"] - 0.02 and r["sqnr_db"] >= base[1]["sqnr_db"] - 3.0, (stem, m, table, err[-2000:])
        else:
            assert v >= base[0] - 0.02, (stem, m, table, r, err[-2000:])
