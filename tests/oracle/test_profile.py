"""`kiln profile` (issue 19): per-layer latency of an artifact on this host, named by kiln IR node.

The mapping is checked against the ONNX file itself (every Conv/Gemm node of the artifact, read with the
onnx package, must appear in the table with its name and MACs from onnx's own shape inference), the
per-layer sum against the uninstrumented end-to-end median, and the TFLite path against LiteRT's own
benchmark tool (present in the test venv) and its absence."""
import json
import os
import pathlib
import sys

import numpy as np
import onnx
import pytest

from kiln_oracle import LOCAL_MODELS, Project, independent_macs, kiln


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    p = Project(tmp_path_factory.mktemp("profile"))
    p.copy_model(LOCAL_MODELS / "tiny_cnn.onnx")
    p.build({
        "model": "tiny_cnn.onnx",
        "passes": ["cleanup", "fuse"],
        "targets": [{"name": "fp32", "backend": "onnx", "precision": "fp32"},
                    {"name": "tfl", "backend": "tflite", "precision": "fp32"}],
        "output": "out",
    }, "-q")
    return p.root / "out"


def test_onnx_profile_names_every_layer_by_its_node(tiny, tmp_path):
    model = tiny / "fp32" / "model.onnx"
    x = np.load(LOCAL_MODELS / "tiny_cnn_inputs.npy")[:1]
    np.save(tmp_path / "x.npy", x)
    r = kiln("profile", tiny / "fp32", "--input", f"input={tmp_path / 'x.npy'}", "--runs", "30",
             "--json", tmp_path / "p.json")
    print(r.stdout)
    rep = json.loads((tmp_path / "p.json").read_text())
    rows = {row["node"]: row for row in rep["layers"]}
    g = onnx.load(str(model)).graph
    heavy = [n for n in g.node if n.op_type in ("Conv", "Gemm")]
    assert heavy
    for n in heavy:
        assert n.name in rows, (n.name, sorted(rows))
        assert rows[n.name]["op"].startswith(n.op_type)
        assert n.name in r.stdout
    # MACs per layer add up to onnx's own count of the model.
    total = sum(row["macs"] or 0 for row in rep["layers"])
    assert total == independent_macs(model, {"input": list(x.shape)})
    # Every evaluator node belongs to a kiln node, and the table adds up to the end-to-end median.
    assert rep["unmapped_ms"] <= 0.05 * rep["sum_of_layers_ms"] + 1e-3
    ratio = rep["sum_of_layers_ms"] / rep["end_to_end_ms"]
    assert 0.85 <= ratio <= 1.15, ratio
    assert abs(sum(row["share"] for row in rep["layers"]) - 1.0) < 0.05


def test_tflite_profile_uses_litert_or_says_how_to_get_it(tiny, tmp_path):
    venv_bin = pathlib.Path(sys.executable).parent
    env_path = os.environ.get("PATH", "")
    bare = {**os.environ, "PATH": "/usr/bin:/bin"}
    bare.pop("KILN_LITERT_BENCHMARK", None)
    import subprocess

    from kiln_oracle import KILN
    r = subprocess.run([str(KILN), "profile", str(tiny / "tfl"), "--runs", "5"], capture_output=True, text=True, env=bare)
    assert r.returncode != 0 and "ai-edge-litert" in r.stderr and "panicked" not in r.stderr, r.stderr
    tool = venv_bin / "litert-benchmark"
    if not tool.exists():
        pytest.skip(f"litert-benchmark not in {venv_bin} ({env_path})")
    r = subprocess.run([str(KILN), "profile", str(tiny / "tfl"), "--runs", "20", "--json", str(tmp_path / "t.json")],
                       capture_output=True, text=True, env={**bare, "KILN_LITERT_BENCHMARK": str(tool)})
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "t.json").read_text())
    assert rep["runtime"] == "litert" and rep["end_to_end_ms"] > 0


def test_profile_refuses_what_it_cannot_profile(tmp_path):
    r = kiln("profile", tmp_path / "missing.onnx", check=False)
    assert r.returncode != 0 and "no such file" in r.stderr
    r = kiln("profile", tmp_path, check=False)
    assert r.returncode != 0 and "no model.onnx" in r.stderr
