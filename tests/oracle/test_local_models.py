"""Local tier: the small PyTorch-exported models shipped in tests/models (no ../shared needed), checked
against onnxruntime and onnx's own shape inference."""
import shutil

import numpy as np
import pytest

from kiln_oracle import independent_macs, inspect_json, kiln, local_inputs, local_models, session

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
    work = tmp_path / "w"
    work.mkdir()
    for f in path.parent.glob(path.name + "*"):
        shutil.copy(f, work / f.name)
    (work / "k.yaml").write_text(f"model: {path.name}\npasses: []\ntargets:\n  - {{ name: t, backend: onnx, precision: fp32 }}\noutput: out\n")
    kiln("build", work / "k.yaml")
    a, b = session(path), session(work / "out" / "t" / "model.onnx")
    for feed in local_inputs(path):
        for x, y in zip(a.run(None, feed), b.run(None, feed)):
            assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize("path", MODELS, ids=IDS)
def test_kiln_run_matches_onnxruntime(tmp_path, path):
    sess = session(path)
    for i, feed in enumerate(local_inputs(path, limit=3)):
        (name, arr), = feed.items()
        np.save(tmp_path / f"x{i}.npy", arr)
        kiln("run", path, "--input", f"{name}={tmp_path / f'x{i}.npy'}", "--output-dir", tmp_path / f"o{i}")
        ref = sess.run(None, feed)[0]
        got = np.load(tmp_path / f"o{i}" / f"{sess.get_outputs()[0].name}.npy")
        tol = 5e-2 if "qat" in path.stem else 1e-4
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max(), (path.stem, np.abs(got - ref).max())
        assert (got.argmax(-1) == ref.argmax(-1)).all()
