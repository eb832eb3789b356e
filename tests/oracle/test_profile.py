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

# Held-out MobileNetV2 estimates measured within 1-12 % of the published figures (docs/BENCHMARKS.md).
ESTIMATE_TOLERANCE = 0.20


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


def profiled_build(root, profile, env=None):
    import subprocess

    from kiln_oracle import KILN
    p = Project(root)
    p.copy_model(LOCAL_MODELS / "tiny_cnn.onnx")
    cfg = p.write({
        "model": "tiny_cnn.onnx",
        "passes": ["cleanup", "fuse"],
        "calibration": {"tensors": LOCAL_MODELS / "tiny_cnn_inputs.npy"},
        "targets": [{"name": "ref", "backend": "onnx", "precision": "fp32"},
                    {"name": "q", "backend": "onnx", "precision": "int8"},
                    {"name": "tfl", "backend": "tflite", "precision": "fp32", "device": "pixel-3"},
                    {"name": "vk", "backend": "vulkan", "precision": "fp32"}],
        "output": "out",
        "profile": profile,
    })
    r = subprocess.run([str(KILN), "build", str(cfg)], capture_output=True, text=True, env=env)
    return r, p.root / "out"


def test_build_profile_measures_every_stage_and_artifact(tmp_path):
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("KILN_LITERT_BENCHMARK", None)
    r, out = profiled_build(tmp_path, True, env)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    rows = {row["stage"]: row for row in rep["profile"]}
    assert list(rows) == ["original", "optimized", "ref", "q", "tfl", "vk"]
    for s in ["original", "optimized", "ref", "q"]:
        assert rows[s]["runtime"] == "tract" and rows[s]["latency_ms"] > 0, rows[s]
    assert rows["tfl"]["runtime"] == "litert" and rows["tfl"]["latency_ms"] > 0
    from vulkan_oracle import lavapipe
    if lavapipe() is None:
        # The system's Vulkan driver (lavapipe here) through kiln's runtime.
        assert rows["vk"]["runtime"] == "kiln-vk" and rows["vk"]["latency_ms"] > 0, rows["vk"]
    else:
        assert rows["vk"]["latency_ms"] is None and "Vulkan" in rows["vk"]["note"], rows["vk"]
    assert rows["q"]["bytes"] == (out / "q" / "model.onnx").stat().st_size
    # The tflite target names its phone: an estimate there, from the cost model, beside the measurement.
    assert rows["tfl"]["device"] == "pixel-3" and rows["tfl"]["estimated_ms"] > 0, rows["tfl"]
    est = rows["tfl"]["estimate"]
    assert abs(sum(l["ms"] for l in est["layers"]) - rows["tfl"]["estimated_ms"]) < 1e-9
    assert all("estimated_ms" not in rows[s] for s in ["original", "optimized", "ref", "q", "vk"])
    assert "ESTIMATED" in r.stderr and "on pixel-3" in r.stderr, r.stderr
    html = (out / "report.html").read_text()
    assert html.count('class="profile"') == 6 and "Latency on this host" in html
    assert "ms on pixel-3" in html
    assert rep["timings"]["profile"] > 0


def test_build_profile_without_litert_notes_it_unless_required(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    env.pop("KILN_LITERT_BENCHMARK", None)
    r, out = profiled_build(tmp_path / "on", True, env)
    assert r.returncode == 0, r.stderr
    rows = {row["stage"]: row for row in json.loads((out / "report.json").read_text())["profile"]}
    assert rows["tfl"]["latency_ms"] is None and "ai-edge-litert" in rows["tfl"]["note"]
    r, out = profiled_build(tmp_path / "req", "required", env)
    assert r.returncode != 0 and "ai-edge-litert" in r.stderr and "panicked" not in r.stderr, r.stderr
    r, _ = profiled_build(tmp_path / "bad", "sometimes", env)
    assert r.returncode != 0 and "profile" in r.stderr and "required" in r.stderr, r.stderr


def test_vulkan_profile_names_every_dispatch_by_its_node(tmp_path):
    """`kiln profile` of a Vulkan bundle on lavapipe: every step of plan.txt is in the table under its IR node,
    with GPU time, and the whole-plan median is measured."""
    import subprocess

    from kiln_oracle import KILN
    from vulkan_oracle import env, lavapipe

    why = lavapipe()
    if why:
        pytest.skip(why)
    r, out = profiled_build(tmp_path, False)
    assert r.returncode == 0, r.stderr
    p = subprocess.run([str(KILN), "profile", str(out / "vk"), "--runs", "5", "--warmup", "1",
                        "--json", str(tmp_path / "v.json")], capture_output=True, text=True, env=env(validation=False))
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "v.json").read_text())
    plan = (out / "vk" / "plan.txt").read_text().splitlines()[1:]
    nodes = {line.split()[-1] for line in plan if line.strip()}
    rows = {row["node"]: row for row in rep["layers"]}
    assert set(rows) == nodes, (set(rows) ^ nodes)
    assert sum(row["dispatches"] for row in rep["layers"]) == len([x for x in plan if x.strip()])
    assert rep["end_to_end_ms"] > 0 and all(row["ms"] >= 0 for row in rep["layers"])


def test_estimate_on_a_device_names_layers_and_adds_up(tiny, tmp_path):
    """`kiln profile --device`: kiln's cost-model estimate, per kiln node, marked as an estimate."""
    model = tiny / "fp32" / "model.onnx"
    r = kiln("profile", tiny / "fp32", "--device", "pixel-3", "--no-measure", "--json", tmp_path / "e.json")
    assert "ESTIMATED" in r.stdout and "not measured" in r.stdout
    e = json.loads((tmp_path / "e.json").read_text())["estimate"]
    assert e["device"] == "pixel-3" and e["precision"] == "fp32" and e["threads"] == 4
    rows = {l["name"]: l for l in e["layers"]}
    g = onnx.load(str(model)).graph
    for n in g.node:
        if n.op_type in ("Conv", "Gemm"):
            assert n.name in rows and rows[n.name]["kind"] in ("conv", "depthwise", "fully_connected"), n.name
    assert abs(sum(l["ms"] for l in e["layers"]) - e["total_ms"]) < 1e-9
    x = np.load(LOCAL_MODELS / "tiny_cnn_inputs.npy")[:1]
    assert sum(l["macs"] for l in e["layers"]) == independent_macs(model, {"input": list(x.shape)})
    # Every layer costs at least its memory traffic at the profile's bandwidth (29.9 GB/s).
    assert all(l["ms"] >= l["bytes"] / 29.9e9 * 1e3 - 1e-12 for l in e["layers"])
    # A lower precision moves fewer bytes and has a higher peak: never slower.
    i8 = kiln("profile", tiny / "fp32", "--device", "pixel-3", "--precision", "int8", "--no-measure",
              "--json", tmp_path / "i.json")
    assert json.loads((tmp_path / "i.json").read_text())["estimate"]["total_ms"] <= e["total_ms"], i8.stdout
    # Measured and estimated together.
    kiln("profile", tiny / "fp32", "--device", "pixel-3", "--runs", "3", "--json", tmp_path / "both.json")
    both = json.loads((tmp_path / "both.json").read_text())
    assert both["end_to_end_ms"] > 0 and both["estimate"]["total_ms"] == e["total_ms"]


def test_estimate_refuses_what_it_cannot_estimate(tiny, tmp_path):
    r = kiln("profile", tiny / "fp32", "--device", "no-such-phone", "--no-measure", check=False)
    assert r.returncode != 0 and "unknown device" in r.stderr and "pixel-3" in r.stderr, r.stderr
    r = kiln("profile", tiny / "tfl", "--device", "pixel-3", "--no-measure", check=False)
    assert r.returncode != 0 and "ONNX" in r.stderr, r.stderr
    r = kiln("profile", tiny / "fp32", "--device", "pixel-3a", "--precision", "int8", "--no-measure", check=False)
    assert r.returncode != 0 and "int8" in r.stderr and "panicked" not in r.stderr, r.stderr
    bad = tmp_path / "phone.yaml"
    bad.write_text("name: phone\ncost:\n  threads: 4\n  bandwidth_gbs: 10\n")
    r = kiln("profile", tiny / "fp32", "--device", bad, "--no-measure", check=False)
    assert r.returncode != 0 and "cost" in r.stderr and "panicked" not in r.stderr, r.stderr
    # A tflite target's device must have a cost model: named at load, before any work.
    p = Project(tmp_path / "cfg")
    p.copy_model(LOCAL_MODELS / "tiny_cnn.onnx")
    cfg = p.write({"model": "tiny_cnn.onnx", "output": "out",
                   "targets": [{"name": "t", "backend": "tflite", "precision": "fp32", "device": "edgetpu"}]})
    r = kiln("build", cfg, check=False)
    assert r.returncode != 0 and "device" in r.stderr and "edgetpu" in r.stderr, r.stderr
    assert not (p.root / "out").exists()


@pytest.mark.corpus
def test_estimates_hold_against_published_latencies(tmp_path):
    """Held-out models (never fitted on) against published latencies: MobileNetV2 on the Pixel 3
    (TFLite's hosted-models table, CPU 4 threads: 17.5 ms fp32, 12 ms int8), the Pixel 3a (XNNPACK's
    README, 1 thread: 55 ms) and the Jetson AGX Xavier (torch2trt's table, TensorRT fp16: 1.67 ms).
    scripts/bench_cost_model.py runs the whole table."""
    from kiln_oracle import CORPUS
    fused = tmp_path / "mv2.onnx"
    kiln("optimize", CORPUS / "mobilenet_v2.onnx", "-o", fused, "--passes", "cleanup,fuse")
    for device, precision, published in [("pixel-3", "fp32", 17.5), ("pixel-3", "int8", 12.0),
                                         ("pixel-3a", "fp32", 55.0), ("jetson-agx-xavier", "fp16", 1.67)]:
        out = tmp_path / f"{device}-{precision}.json"
        kiln("profile", fused, "--device", device, "--precision", precision, "--no-measure", "--json", out)
        est = json.loads(out.read_text())["estimate"]["total_ms"]
        assert abs(est - published) / published <= ESTIMATE_TOLERANCE, (device, precision, est, published)
