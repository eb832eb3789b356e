"""Beyond classifiers (issue 13): the corpus scripts/export_zoo.py writes to tests/models/zoo (torchvision's
LR-ASPP and DeepLabV3 segmentation heads on a dilated MobileNetV3, SSDLite's backbone and heads, RegNetX's
grouped convolutions, a YOLOv8-style detector), each exported by PyTorch at opset 17, 12 and 11, built to
every backend at once and checked against independent runtimes:

- fp32 and fp16 TFLite in the ai-edge-litert interpreter against onnxruntime on the original model;
- int8 TFLite (tflite and npu targets) against its QDQ twin (model.qdq.onnx, the same quantization decisions)
  executed as written by onnxruntime with graph optimizations off;
- dense outputs (segmentation maps, box and score tensors, per-frame logits and the carried GRU state) by
  cosine and max error over the whole tensor, classifiers by top-1 agreement.
The speech model's state input is fed from `other_inputs:` (sample i with sample i of the frames).
"""
import json

import numpy as np
import pytest

from accuracy import cosine, top1_agreement
from kiln_oracle import ROOT, Project, run_artifact

ZOO = ROOT / "tests" / "models" / "zoo"
FAMILIES = ["seg_lraspp", "seg_deeplabv3", "det_ssdlite", "cls_regnet_x", "det_yolo", "speech_gru"]
# Models with inputs besides the data input: name → the .npy of their samples (`other_inputs:`).
OTHER_INPUTS = {"speech_gru": {"h0": ZOO / "speech_gru_state.npy"}}
CLASSIFIERS = {"cls_regnet_x"}
OPSETS = {17: "", 12: "_op12", 11: "_op11"}
TARGETS = [
    {"name": "onnx-fp32", "backend": "onnx", "precision": "fp32"},
    {"name": "onnx-int8", "backend": "onnx", "precision": "int8"},
    {"name": "tflite-fp32", "backend": "tflite", "precision": "fp32"},
    {"name": "tflite-fp16", "backend": "tflite", "precision": "fp16"},
    {"name": "tflite-int8", "backend": "tflite", "precision": "int8"},
    {"name": "edgetpu", "backend": "npu", "precision": "int8", "device": "edgetpu"},
    {"name": "nnapi", "backend": "npu", "precision": "int8", "device": "nnapi"},
]


def samples(family):
    x = np.load(ZOO / f"{family}_inputs.npy")
    if family == "speech_gru":
        h = np.load(OTHER_INPUTS[family]["h0"])
        return [{"frames": x[i : i + 1], "h0": h[i : i + 1]} for i in range(len(x))]
    return [{"image": x[i : i + 1]} for i in range(len(x))]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Build each (family, opset) once per module, to every target (a cache: name → output folder)."""
    done = {}

    def build(family, opset=17, targets=TARGETS):
        stem = family + OPSETS[opset]
        key = (stem, tuple(t["name"] for t in targets))
        if key not in done:
            p = Project(tmp_path_factory.mktemp(stem))
            p.build(
                {
                    "model": ZOO / f"{stem}.onnx",
                    "passes": ["cleanup", "fuse"],
                    "calibration": {"tensors": ZOO / f"{family}_inputs.npy", "method": "minmax", "other_inputs": OTHER_INPUTS.get(family, {})},
                    "targets": targets,
                    "output": "out",
                }
            )
            done[key] = p.root / "out"
        return done[key]

    return build


def per_output(runs):
    """[(all samples of output k flattened)] from run_artifact's per-sample output lists."""
    return [np.concatenate([r[k].ravel() for r in runs]).astype(np.float64) for k in range(len(runs[0]))]


def dense(ref_runs, got_runs):
    """Per output: (max |got − ref| / max |ref|, cosine) over every element of every sample."""
    out = []
    for r, g in zip(per_output(ref_runs), per_output(got_runs)):
        assert r.shape == g.shape
        out.append((np.abs(g - r).max() / max(np.abs(r).max(), 1e-12), cosine(r, g)))
    return out


def test_zoo_is_complete_and_small():
    for f in FAMILIES:
        for suffix in OPSETS.values():
            p = ZOO / f"{f}{suffix}.onnx"
            assert p.is_file() and p.stat().st_size < 2 << 20, p
        assert (ZOO / f"{f}_inputs.npy").is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_backend_builds_and_matches_its_oracle(builds, family):
    out = builds(family)
    feeds = samples(family)
    ref = run_artifact(ZOO / f"{family}.onnx", feeds, exact=False)
    for name, bound in [("onnx-fp32", 1e-5), ("tflite-fp32", 1e-4), ("tflite-fp16", 1e-2)]:
        got = run_artifact(out / name / ("model.onnx" if name.startswith("onnx") else "model.tflite"), feeds)
        for rel, _ in dense(ref, got):
            assert rel <= bound, (family, name, rel)
    # int8: each TFLite artifact against the QDQ twin it was lowered from, executed as written.
    for name in ["tflite-int8", "edgetpu", "nnapi"]:
        # The npu targets share the tflite target's quantization; only `tflite` writes the twin.
        twin_path = out / name / "model.qdq.onnx"
        twin = run_artifact(twin_path if twin_path.exists() else out / "tflite-int8" / "model.qdq.onnx", feeds, exact=True)
        got = run_artifact(out / name / "model.tflite", feeds)
        if family in CLASSIFIERS:
            agree = top1_agreement([t[0] for t in twin], [g[0] for g in got])
            assert agree >= 0.98, (family, name, agree)
        for rel, cos in dense(twin, got):
            # Dense outputs: cosine over the whole map (or box/score tensor), and the largest error.
            assert cos >= 0.99 and rel <= 0.1, (family, name, cos, rel)
    # The QDQ ONNX itself stays close to the original.
    q = run_artifact(out / "onnx-int8" / "model.onnx", feeds, exact=True)
    for _, cos in dense(ref, q):
        assert cos >= 0.99, (family, cos)
    # The NPU reports say what runs where, with a reason for everything left to the CPU.
    for name in ["edgetpu", "nnapi"]:
        r = json.loads((out / name / "partition.json").read_text())
        assert r["ops_total"] == len(r["ops"]) and r["ops_on_npu"] <= r["ops_total"]
        assert all(o["npu"] or o["reason"] for o in r["ops"]), name


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("opset", [11, 12])
def test_old_opsets_are_upgraded_and_quantize_per_channel(builds, family, opset):
    """PyTorch 1.x-style exports (opset 11/12) are upgraded to 13 inside kiln: per-channel Q/DQ, with the
    fidelity of the opset-17 export; the report says so."""
    import onnx

    targets = [t for t in TARGETS if t["name"] in ("onnx-int8", "tflite-fp32", "tflite-int8")]
    old, new = builds(family, opset, targets), builds(family, 17, targets)
    report = json.loads((old / "report.json").read_text())
    up = report["pass_reports"]["upgrade"]
    assert up["from"] == opset and up["to"] == 13, up
    m = onnx.load(str(old / "onnx-int8" / "model.onnx"))
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 13
    inits = {i.name: i for i in m.graph.initializer}
    per_channel = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1]
    assert per_channel, "no per-channel weight scales"
    feeds = samples(family)
    ref = run_artifact(ZOO / f"{family}.onnx", feeds, exact=False)
    fid = lambda out: min(c for _, c in dense(ref, run_artifact(out / "onnx-int8" / "model.onnx", feeds, exact=True)))
    assert abs(fid(old) - fid(new)) <= 0.01, (fid(old), fid(new))
    # And the TFLite lowering of the upgraded graph is the original function.
    for rel, _ in dense(ref, run_artifact(old / "tflite-fp32" / "model.tflite", feeds)):
        assert rel <= 1e-4


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "det_yolo"])
def test_no_layout_transposes_at_op_boundaries(builds, family):
    """Channel-last end to end: the TFLite artifacts hold no more TRANSPOSE ops than the model writes
    Transposes (report.json's layout_transposes is the excess): a detection head's view+permute becomes a
    RESHAPE of the channel-last map, and 1-D convolutions' layout changes fold into the model's own."""
    import onnx

    out = builds(family)
    written = sum(n.op_type == "Transpose" for n in onnx.load(str(ZOO / f"{family}.onnx")).graph.node)
    report = json.loads((out / "report.json").read_text())
    for name in ["tflite-fp32", "tflite-int8", "edgetpu", "nnapi"]:
        assert report["backend"][name]["layout_transposes"] == 0, (name, report["backend"][name])
    for name in ["tflite-fp32", "tflite-int8"]:
        from tflite_oracle import op_names

        assert op_names(out / name / "model.tflite").count("TRANSPOSE") <= written, name


def test_grouped_convolutions_split_for_a_device_without_them(builds):
    """The Edge TPU compiler has no grouped CONV_2D: RegNetX's grouped convolutions go group by group
    (SPLIT, CONV_2D per group, CONCATENATION), so the whole model maps to the TPU; NNAPI, which has grouped
    convolution, keeps one CONV_2D each. Both stay equal to the QDQ twin (checked above)."""
    from tflite_oracle import op_names

    out = builds("cls_regnet_x")
    r = json.loads((out / "edgetpu" / "partition.json").read_text())
    assert r["ops_on_npu"] == r["ops_total"] and r["fallback_point"] is None, r["fallback_point"]
    tpu, nnapi = op_names(out / "edgetpu" / "model.tflite"), op_names(out / "nnapi" / "model.tflite")
    assert tpu.count("SPLIT") > 0 and tpu.count("CONV_2D") > nnapi.count("CONV_2D")
    assert "SPLIT" not in nnapi


def test_other_inputs_are_checked(project):
    """`other_inputs:` must name the model's other inputs, with samples of their declared shape; a state
    missing altogether is named too."""
    base = {"model": ZOO / "speech_gru.onnx", "targets": [{"name": "q", "backend": "onnx", "precision": "int8"}], "output": "out"}
    calib = {"tensors": ZOO / "speech_gru_inputs.npy", "method": "minmax"}
    r = project.build({**base, "calibration": {**calib, "other_inputs": {"h1": OTHER_INPUTS["speech_gru"]["h0"]}}}, check=False)
    assert r.returncode == 1 and "other_inputs: h1" in r.stderr and "(h0)" in r.stderr, r.stderr
    r = project.build({**base, "calibration": {**calib, "other_inputs": {"h0": ZOO / "speech_gru_inputs.npy"}}}, check=False)
    assert r.returncode == 1 and "other_inputs: h0" in r.stderr and "[1,1,32]" in r.stderr, r.stderr
    r = project.build({**base, "calibration": calib}, check=False)
    assert r.returncode == 1 and "'h0'" in r.stderr and "other_inputs" in r.stderr, r.stderr
    assert not (project.root / "out" / "q" / "model.onnx").exists()


def test_kiln_quantize_takes_other_inputs(tmp_path):
    """`kiln quantize --other-input h0=...` quantizes the stateful model; without it, the missing input is named."""
    from kiln_oracle import kiln

    out = tmp_path / "q.onnx"
    kiln("quantize", ZOO / "speech_gru.onnx", "--calib", ZOO / "speech_gru_inputs.npy", "--method", "minmax", "--other-input", f"h0={OTHER_INPUTS['speech_gru']['h0']}", "-o", out)
    feeds = samples("speech_gru")
    ref = run_artifact(ZOO / "speech_gru.onnx", feeds, exact=False)
    for _, cos in dense(ref, run_artifact(out, feeds, exact=True)):
        assert cos >= 0.99, cos
    r = kiln("quantize", ZOO / "speech_gru.onnx", "--calib", ZOO / "speech_gru_inputs.npy", "-o", tmp_path / "no.onnx", check=False)
    assert r.returncode == 1 and "'h0'" in r.stderr and "--other-input" in r.stderr and not (tmp_path / "no.onnx").exists(), r.stderr


def test_yolo_head_transposes_once_beyond_its_own(builds):
    """YOLOv8's head flattens each channel-last level to [N, C, H·W], concatenates, and ends channel-first
    ([N, 4 + classes, anchors]) after a DFL on [N, 16, 4, A]. The per-level layout changes are hoisted past
    the level concatenation into one, and the model's own Transpose absorbs the DFL's: one TRANSPOSE beyond
    the model's (the class branch is channel-last where the box branch is not; the output needs both in one
    order)."""
    out = builds("det_yolo")
    report = json.loads((out / "report.json").read_text())
    for name in ["tflite-fp32", "tflite-int8", "edgetpu", "nnapi"]:
        assert report["backend"][name]["layout_transposes"] <= 1, (name, report["backend"][name])
