"""Corpus tier: every model in ../shared/models, checked against onnxruntime on the original model (with
graph optimizations off for the Q/DQ model, digits_mobilenet_qat, so that it executes as written:
kiln_oracle.session(exact=True)).

Skipped as a whole, with a message saying so, when ../shared/models is absent."""
import numpy as np
import onnx
import pytest

from accuracy import max_abs_diff, rel_diff
from kiln_oracle import CORPUS, Project, assert_same_top1, corpus_models, inspect_json, kiln, output_names, qdq_tolerance, run_artifact, validation_inputs

pytestmark = pytest.mark.corpus

MODELS = [p.stem for p in corpus_models()] or ["<absent>"]


def test_mobilenet_v2_inspect_numbers():
    d = inspect_json(CORPUS / "mobilenet_v2.onnx")
    assert abs(d["params"] - 3_487_816) <= 0.001 * 3_487_816, d["params"]
    assert abs(d["macs"] - 300.8e6) <= 0.02 * 300.8e6, d["macs"]
    assert d["macs_by_op"]["Conv"] > 0 and d["macs_by_op"]["Gemm"] == 1280 * 1000
    assert d["op_types"]["Conv"] == 52 and d["nodes"] == 170
    for key in ("nodes", "op_types", "params", "param_bytes", "macs", "macs_by_op"):
        assert key in d


@pytest.mark.parametrize("stem", MODELS)
def test_inspect_every_model(stem):
    d = inspect_json(CORPUS / f"{stem}.onnx")
    m = onnx.load(str(CORPUS / f"{stem}.onnx"), load_external_data=False)
    assert d["nodes"] == len(m.graph.node)
    assert d["macs"] > 0 and not d["macs_unknown"], d["macs_unknown"]
    params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    assert d["params"] == params
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer):
        assert d["external_data"], "external data files not reported"


def build_onnx(tmp_path, model_path, target_opts=None):
    """The model (symlinked, its external data copied) built to one fp32 ONNX target with no passes."""
    work = Project(tmp_path / "w")
    work.copy_model(model_path, link=True)
    target = {"name": "ref", "backend": "onnx", "precision": "fp32", **(target_opts or {})}
    cfg = work.write({"model": model_path.name, "passes": [], "targets": [target], "output": "out/"}, name="kiln.yaml")
    kiln("build", cfg)
    return work.root / "out" / "ref" / "model.onnx", cfg


@pytest.mark.parametrize("stem", MODELS)
def test_build_passes_empty_is_bit_identical(tmp_path, stem):
    src = CORPUS / f"{stem}.onnx"
    out, _ = build_onnx(tmp_path, src)
    feeds = validation_inputs(stem)
    assert len(feeds) >= 32
    for ra, rb in zip(run_artifact(src, feeds, exact=None), run_artifact(out, feeds, exact=None)):
        for x, y in zip(ra, rb):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert np.array_equal(x, y), f"{stem}: max diff {np.abs(x - y).max()}"


@pytest.mark.parametrize("stem", MODELS)
def test_kiln_run_matches_onnxruntime(tmp_path, stem):
    src = CORPUS / f"{stem}.onnx"
    feeds = validation_inputs(stem, limit=3)
    names = output_names(src)
    for i, (feed, refs) in enumerate(zip(feeds, run_artifact(src, feeds, exact=None))):
        args = []
        for name, arr in feed.items():
            np.save(tmp_path / f"{name}_{i}.npy", arr)
            args += ["--input", f"{name}={tmp_path / f'{name}_{i}.npy'}"]
        outdir = tmp_path / f"out{i}"
        kiln("run", src, *args, "--output-dir", outdir)
        for name, ref in zip(names, refs):
            got = np.load(outdir / f"{name}.npy")
            assert got.shape == ref.shape
            if stem.endswith("_qat"):
                # Tie flips, counted in quantization steps (kiln_oracle.QDQ_FLIP_ELEMENTS).
                err, tol = max_abs_diff(ref, got), qdq_tolerance(src, np.abs(ref).max())
                assert err <= tol, (stem, err, tol)
                assert_same_top1(got, ref, tol)
            else:
                assert rel_diff(ref, got) <= 1e-4, (stem, rel_diff(ref, got))


def test_kiln_run_qat_top1_on_many_inputs(tmp_path):
    """Q/DQ model: same top-1 as onnxruntime exact on every validation input (run as one batch), logits
    within the tie-flip bound (kiln_oracle.QDQ_FLIP_ELEMENTS: every quantized fc input one step off)."""
    src = CORPUS / "digits_mobilenet_qat.onnx"
    x = np.load(CORPUS.parent / "data" / "digits_val.npy").astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    kiln("run", src, "--input", f"input={tmp_path / 'x.npy'}", "--output-dir", tmp_path / "o")
    got = np.load(tmp_path / "o" / "logits.npy")
    ref = run_artifact(src, [{"input": x}])[0][0]  # exact: Q/DQ as written
    tol = qdq_tolerance(src, np.abs(ref).max())
    assert_same_top1(got, ref, tol)
    assert max_abs_diff(ref, got) <= tol, (max_abs_diff(ref, got), tol)


def test_symbolic_dim_expressions_in_value_info(tmp_path):
    """Exporters write dim expressions such as floor(height/2 - 1/2) + 1; such models load and run."""
    m = onnx.load(str(CORPUS / "mobilenet_v2.onnx"))
    exprs = ["floor(height/2 - 1/2) + 1", "floor(width/2 - 1/2) + 1"]
    for n in m.graph.node[:6]:
        if n.op_type == "Conv":
            vi = onnx.helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, ["batch", None, *exprs])
            m.graph.value_info.append(vi)
    inp = m.graph.input[0].type.tensor_type.shape.dim
    inp[2].dim_param, inp[3].dim_param = "height", "width"
    path = tmp_path / "sym.onnx"
    onnx.save(m, str(path))
    feed = validation_inputs("mobilenet_v2", limit=1)[0]
    np.save(tmp_path / "x.npy", feed["input"])
    kiln("run", path, "--input", f"input={tmp_path / 'x.npy'}", "--output-dir", tmp_path / "o")
    got = np.load(tmp_path / "o" / "logits.npy")
    ref = run_artifact(path, [feed], exact=False)[0][0]
    assert rel_diff(ref, got) <= 1e-4
    d = inspect_json(path, "--input", "input=1,3,224,224")
    assert abs(d["macs"] - 300.8e6) <= 0.02 * 300.8e6


def test_build_is_incremental_and_deterministic(tmp_path):
    src = CORPUS / "efficientnet_b0.onnx"
    out, cfg = build_onnx(tmp_path, src)
    first = out.read_bytes()
    manifest = (out.parent.parent / "manifest.json").read_text()
    again = kiln("build", cfg)
    assert "up to date" in again.stdout
    kiln("build", cfg, "--force")
    assert out.read_bytes() == first
    assert (out.parent.parent / "manifest.json").read_text() == manifest
    import json

    m = json.loads(manifest)
    roles = sorted(i["role"] for i in m["inputs"])
    assert roles == ["config", "external_data", "model"], roles
    art = m["artifacts"][0]
    assert art["target"] == "ref" and art["backend"] == "onnx" and art["precision"] == "fp32"
    import hashlib

    assert art["sha256"] == hashlib.sha256(first).hexdigest() and art["bytes"] == len(first)
    assert m["kiln_version"]


def test_external_data_export_runs(tmp_path):
    src = CORPUS / "shufflenet_v2_x1_0.onnx"
    out, _ = build_onnx(tmp_path, src, target_opts={"external_data": "always"})
    assert (out.parent / "model.onnx.data").exists()
    feed = validation_inputs("shufflenet_v2_x1_0", limit=2)
    for ra, rb in zip(run_artifact(src, feed, exact=False), run_artifact(out, feed, exact=False)):
        assert np.array_equal(ra[0], rb[0])
