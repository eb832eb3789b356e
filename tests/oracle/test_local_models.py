"""Local tier: the small PyTorch-exported models shipped in tests/models (no ../shared needed), checked
against onnxruntime (graph optimizations off for the Q/DQ model tiny_qat, so that it executes as written)
and onnx's own shape inference."""
import json

import numpy as np
import pytest

from accuracy import max_abs_diff
from kiln_oracle import ROOT, Project, assert_same_top1, independent_macs, inspect_json, kiln, local_inputs, local_models, output_names, qdq_tolerance, run_artifact, session

MODELS = local_models()
IDS = [p.stem for p in MODELS]


def test_local_models_present():
    assert {"tiny_cnn", "tiny_cnn_dynamo", "tiny_encoder", "tiny_lstm", "tiny_qat"} <= set(IDS)
    for p in MODELS:
        assert p.stat().st_size < 2 << 20


@pytest.mark.parametrize("path", MODELS, ids=IDS)
def test_inspect_matches_onnx_shape_inference(path):
    sess = session(path)
    inp = sess.get_inputs()[0]
    dims = [d if isinstance(d, int) else 1 for d in inp.shape]
    d = inspect_json(path, "--input", f"{inp.name}={','.join(map(str, dims))}")
    assert d["macs"] == independent_macs(path, {inp.name: dims}) and d["macs"] > 0
    assert d["nodes"] > 0 and sum(d["op_types"].values()) == d["nodes"]


@pytest.mark.parametrize("path", MODELS, ids=IDS)
def test_build_passes_empty_is_bit_identical(tmp_path, path):
    work = Project(tmp_path / "w")
    work.copy_model(path)
    work.build({"model": path.name, "passes": [], "targets": [{"name": "t", "backend": "onnx", "precision": "fp32"}], "output": "out"})
    feeds = local_inputs(path)
    for ra, rb in zip(run_artifact(path, feeds, exact=None), run_artifact(work.root / "out" / "t" / "model.onnx", feeds, exact=None)):
        for x, y in zip(ra, rb):
            assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize("path", MODELS, ids=IDS)
def test_kiln_run_matches_onnxruntime(tmp_path, path):
    feeds = local_inputs(path, limit=3)
    output = output_names(path)[0]
    for i, (feed, refs) in enumerate(zip(feeds, run_artifact(path, feeds, exact=None))):
        (name, arr), = feed.items()
        np.save(tmp_path / f"x{i}.npy", arr)
        kiln("run", path, "--input", f"{name}={tmp_path / f'x{i}.npy'}", "--output-dir", tmp_path / f"o{i}")
        ref = refs[0]
        got = np.load(tmp_path / f"o{i}" / f"{output}.npy")
        # Q/DQ: tie flips, counted in quantization steps (kiln_oracle.QDQ_FLIP_ELEMENTS).
        tol = qdq_tolerance(path, np.abs(ref).max()) if "qat" in path.stem else 1e-4 * np.abs(ref).max()
        assert got.shape == ref.shape
        assert max_abs_diff(ref, got) <= tol, (path.stem, max_abs_diff(ref, got), tol)
        assert_same_top1(got, ref, tol)


def test_example_build_reports_where_the_time_goes(tmp_path):
    """configs/examples/tiny_cnn.yaml (the README's first command): report.json has each stage's time, per
    target, and the build prints the same summary."""
    import shutil

    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "examples" / "tiny_cnn.yaml").read_text())
    cfg["model"] = str(ROOT / "tests" / "models" / "tiny_cnn.onnx")
    cfg["calibration"]["tensors"] = str(ROOT / "tests" / "models" / "tiny_cnn_inputs.npy")
    cfg["output"] = str(tmp_path / "out")
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # One target at a time, the stages add up to the total; in parallel (below) they overlap.
    p = kiln("build", tmp_path / "k.yaml", "-j", "1")
    t = json.loads((tmp_path / "out" / "report.json").read_text())["timings"]
    names = [x["name"] for x in cfg["targets"]]
    assert sorted(t["targets"]) == sorted(names), t
    assert all(t[k] >= 0 for k in ["import", "passes", "calibration", "reference"]) and t["calibration"] > 0, t
    def spent(v):
        return v["prepare"] + v["validate"] + v["emit"]

    stages = t["import"] + t["passes"] + t["calibration"] + t["reference"] + sum(spent(v) for v in t["targets"].values())
    assert 0 < stages <= t["total"] * 1.01 + 1e-3, (stages, t)
    # int8 targets spend their time quantizing; float targets do not prepare anything.
    assert t["targets"]["int8-qdq"]["prepare"] > t["targets"]["reference"]["prepare"], t
    # The quantization's own stages, inside `prepare` (whose time excludes the shared calibration).
    q = t["targets"]["int8-qdq"]["stages"]
    assert {"equalization", "calibration", "range_refinement", "build", "quality_guard"} <= set(q), q
    assert 0 < sum(q.values()) - q["calibration"] <= t["targets"]["int8-qdq"]["prepare"] * 1.01 + 1e-3, (q, t)
    assert "stages" not in t["targets"]["reference"], t
    assert "quantization, calibration included:" in p.stdout, p.stdout
    assert "time: import" in p.stdout and "total" in p.stdout and all(n in p.stdout for n in names), p.stdout
    shutil.rmtree(tmp_path / "out")
    kiln("build", tmp_path / "k.yaml", "-j", "2")
    t = json.loads((tmp_path / "out" / "report.json").read_text())["timings"]
    assert all(spent(v) <= t["total"] * 1.01 + 1e-3 for v in t["targets"].values()), t
    shutil.rmtree(tmp_path / "out")
