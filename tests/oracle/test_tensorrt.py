"""The `tensorrt` backend (issue 16): bundles for a Jetson built off the device, checked without TensorRT:

- model.qdq.onnx follows TensorRT's explicit-quantization rules (trt_rules.py, written from the documented
  rules), runs in onnxruntime, and its fidelity with the Q/DQ executed as written is measured against
  onnxruntime on the original model and against kiln's `onnx` int8 artifact of the same model;
- dla/calib.cache parses with a reader written from the format (trt_cache.py), carries the header of the
  configured TensorRT version, names only values of dla/model.onnx, and its ranges agree with the tensors'
  observed ranges (onnxruntime on the calibration data);
- the DLA placement report names the rule for each layer on the GPU: one small model per DLA limit, and
  MobileNetV2's report kept as a snapshot (checked by hand once);
- build.sh passes `bash -n` and shellcheck, and uses only flags the named TensorRT version has.
"""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import trt_cache
import trt_rules
from accuracy import cosine, top1_agreement
from kiln_oracle import CORPUS, DATA, IMAGENET_PREPROCESS, LOCAL_MODELS, ROOT, Project, preprocess, run_artifact, session, validation_inputs

ZOO = LOCAL_MODELS / "zoo"
SNAPSHOTS = ROOT / "tests" / "snapshots"

# trtexec's flags per TensorRT version, from TensorRT's docs (trtexec --help of each release; "Migrating from
# 10.x to 11.x"): 11 dropped implicit quantization and every precision flag.
COMMON_FLAGS = {"--sparsity", "--onnx", "--saveEngine", "--timingCacheFile", "--memPoolSize", "--useDLACore", "--allowGPUFallback", "--shapes", "--minShapes", "--optShapes", "--maxShapes", "--verbose"}
TRT_FLAGS = {
    "8.6": COMMON_FLAGS | {"--int8", "--fp16", "--calib", "--precisionConstraints", "--layerPrecisions", "--best"},
    "10": COMMON_FLAGS | {"--int8", "--fp16", "--calib", "--precisionConstraints", "--layerPrecisions", "--best", "--stronglyTyped"},
    "11": COMMON_FLAGS | {"--stronglyTyped"},
}


def trtexec_flags(script):
    """Each trtexec command of build.sh as its list of flag names."""
    cmds, cur = [], None
    for ln in script.splitlines():
        s = ln.strip()
        if s.startswith('"$TRTEXEC" \\'):
            cur = []
            cmds.append(cur)
            continue
        if cur is not None:
            m = re.match(r"(--[A-Za-z0-9]+)", s)
            if m:
                cur.append(m.group(1))
            if not s.endswith("\\"):
                cur = None
    return cmds


def check_script(path, version):
    """bash -n, shellcheck (when installed), and the flags of `version` only; returns the commands' flags."""
    subprocess.run(["bash", "-n", str(path)], check=True)
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout
    allowed = TRT_FLAGS["11" if version.startswith("11") else "8.6" if version.startswith("8") else "10"]
    cmds = trtexec_flags(path.read_text())
    assert cmds, "no trtexec command"
    for c in cmds:
        assert set(c) <= allowed, f"flags not in TensorRT {version}: {set(c) - allowed}"
        assert "--onnx" in c and "--saveEngine" in c
    return cmds


def value_names(path):
    m = onnx.load(str(path))
    g = m.graph
    return {i.name for i in g.input} | {o for n in g.node for o in n.output}


def observed_absmax(path, feeds, names):
    """max |x| of each named value of the float model at `path` over `feeds` (onnxruntime, every value made
    an output)."""
    m = onnx.load(str(path))
    known = {o.name for o in m.graph.output}
    for n in sorted(names - known - {i.name for i in m.graph.input}):
        m.graph.output.append(helper.make_empty_tensor_value_info(n))
    tmp = path.parent / "all_outputs.onnx"
    onnx.save(m, str(tmp))
    s = session(tmp)
    outs = [o.name for o in s.get_outputs()]
    amax = {n: 0.0 for n in outs}
    for f in feeds:
        for n, v in zip(outs, s.run(None, f)):
            amax[n] = max(amax[n], float(np.abs(v).max()))
    inp = m.graph.input[0].name
    amax[inp] = max(float(np.abs(f[inp]).max()) for f in feeds)
    return amax


def check_cache(target_dir, version, feeds):
    """The cache's rules; returns the parsed scales."""
    text = (target_dir / "dla" / "calib.cache").read_text()
    number, algo, scales = trt_cache.parse(text)
    assert number == trt_cache.version_number(version) and algo == "EntropyCalibration2"
    assert trt_cache.write(number, scales) == text, "cache does not round-trip"
    names = value_names(target_dir / "dla" / "model.onnx")
    assert set(scales) <= names, f"names not in dla/model.onnx: {sorted(set(scales) - names)[:5]}"
    assert all(0 < s < 1e6 for s in scales.values())
    # The ranges are the data's: a threshold is at most the tensor's max |x| (entropy clips outliers), but
    # where the DLA needs ranges equal (pooling in/out, elementwise inputs) the group's largest is used.
    obs = observed_absmax(target_dir / "dla" / "model.onnx", feeds, set(scales))
    ratios = np.array([127 * s / obs[n] for n, s in scales.items() if obs.get(n, 0) > 0])
    assert len(ratios) >= 0.9 * len(scales)
    # (observed on a subset of the calibration data, so a little below the full set's maxima)
    assert 0.2 < np.median(ratios) <= 1.25, np.median(ratios)
    assert (ratios > 0.02).all(), ratios.min()
    return scales


# ---------------------------------------------------------------- in-repo models (no ../shared needed)

LOCAL = {
    "tiny_cnn": (LOCAL_MODELS / "tiny_cnn.onnx", LOCAL_MODELS / "tiny_cnn_inputs.npy", "input"),
    "det_yolo": (ZOO / "det_yolo.onnx", ZOO / "det_yolo_inputs.npy", "image"),
    "cls_regnet_x": (ZOO / "cls_regnet_x.onnx", ZOO / "cls_regnet_x_inputs.npy", "image"),
    "seg_lraspp": (ZOO / "seg_lraspp.onnx", ZOO / "seg_lraspp_inputs.npy", "image"),
}


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_local_int8_bundle(tmp_path, name):
    """Detector, segmenter, grouped-conv classifier and the tiny CNN: the QDQ model follows TensorRT's rules,
    runs in onnxruntime and stays close to the float model and to kiln's onnx int8 artifact; the DLA files
    and build.sh are well-formed."""
    model, data, inp = LOCAL[name]
    p = Project(tmp_path)
    p.build(
        {
            "model": model,
            "passes": ["cleanup", "fuse"],
            "calibration": {"tensors": data},
            "targets": [
                {"name": "onnx", "backend": "onnx", "precision": "int8"},
                {"name": "trt", "backend": "tensorrt", "precision": "int8", "device": "agx-orin", "dla": True},
            ],
            "output": "out",
        }
    )
    out = tmp_path / "out"
    qdq = out / "trt" / "model.qdq.onnx"
    assert trt_rules.check(qdq) == []
    q, dq, w = trt_rules.counts(qdq)
    assert q > 0 and dq >= w // 2
    x = np.load(data).astype(np.float32)
    feeds = [{inp: x[i : i + 1]} for i in range(len(x))]
    ref = run_artifact(model, feeds, exact=False)
    trt = run_artifact(qdq, feeds)
    onx = run_artifact(out / "onnx" / "model.onnx", feeds)
    for k in range(len(ref[0])):
        r = np.concatenate([o[k].ravel() for o in ref])
        c_trt = cosine(r, np.concatenate([o[k].ravel() for o in trt]))
        c_onnx = cosine(r, np.concatenate([o[k].ravel() for o in onx]))
        assert c_trt > 0.98 and c_trt > c_onnx - 0.02, (k, c_trt, c_onnx)
    check_cache(out / "trt", "10.3", feeds)
    check_script(out / "trt" / "build.sh", "10.3")
    placement = json.loads((out / "trt" / "placement.json").read_text())
    assert placement["layers_total"] == len(placement["layers"]) > 0
    report = json.loads((out / "report.json").read_text())
    assert report["backend"]["trt"]["dla"]["layers_on_dla"] == placement["layers_on_dla"]


@pytest.mark.parametrize("version", ["8.6.1", "10.3", "10.14.1", "11.0"])
def test_versions_flags_and_cache_header(tmp_path, version):
    """build.sh's trtexec flags exist in the TensorRT version it names (11: strongly typed, no implicit int8,
    so no DLA int8 either), and the cache header carries that version's number."""
    model, data, _ = LOCAL["tiny_cnn"]
    dla = not version.startswith("11")
    p = Project(tmp_path)
    p.build(
        {
            "model": model,
            "passes": ["cleanup", "fuse"],
            "calibration": {"tensors": data},
            "targets": [
                {"name": "int8", "backend": "tensorrt", "precision": "int8", "device": "agx-orin", "dla": dla, "trt_version": version},
                {"name": "fp16", "backend": "tensorrt", "precision": "fp16", "device": "orin-nano", "trt_version": version},
                {"name": "fp32", "backend": "tensorrt", "precision": "fp32", "device": "orin-nano", "trt_version": version},
            ],
            "output": "out",
        }
    )
    out = tmp_path / "out"
    cmds = check_script(out / "int8" / "build.sh", version)
    assert len(cmds) == (2 if dla else 1)
    if version.startswith("11"):
        assert not (out / "int8" / "dla").exists()
        # Strongly typed: the fp16 model is float16.
        m = onnx.load(str(out / "fp16" / "model.onnx"))
        assert any(t.data_type == TensorProto.FLOAT16 for t in m.graph.initializer)
    else:
        assert "--int8" in cmds[0] and "--calib" in cmds[1] and "--useDLACore" in cmds[1]
        number, _, _ = trt_cache.parse((out / "int8" / "dla" / "calib.cache").read_text())
        assert number == trt_cache.version_number(version)
        assert "--fp16" in check_script(out / "fp16" / "build.sh", version)[0]
    check_script(out / "fp32" / "build.sh", version)


@pytest.mark.parametrize(
    "target, message",
    [
        ({"device": "orin-nano", "dla": True, "precision": "int8"}, "has no DLA"),
        ({"device": "agx-orin", "dla": True, "precision": "fp32"}, "fp16 and int8 only"),
        ({"device": "agx-orin", "dla": True, "precision": "int8", "trt_version": "11.0"}, "removed implicit quantization"),
        ({"device": "agx-orin", "precision": "int8", "sparsity": "1:2"}, "structured sparsity is \"2:4\""),
        ({"device": "agx-orin", "precision": "int8", "trt_version": "9.x"}, "trt_version '9.x'"),
        ({"device": "agx-orin", "precision": "int8", "activations": "uint8"}, "symmetric int8"),
        ({"device": "jetson-tx1", "precision": "int8"}, "unknown device 'jetson-tx1'"),
        ({"precision": "int8"}, "`device:` is required"),
        ({"device": "agx-orin", "dla": True, "dla_core": 2, "precision": "int8"}, "dla_core 2"),
    ],
)
def test_config_errors(tmp_path, target, message):
    """Impossible TensorRT targets fail at config load with the reason and the config location, before any work."""
    model, data, _ = LOCAL["tiny_cnn"]
    p = Project(tmp_path)
    r = p.build(
        {
            "model": model,
            "calibration": {"tensors": data},
            "targets": [{"name": "t", "backend": "tensorrt", **target}],
            "output": "out",
        },
        check=False,
    )
    assert r.returncode != 0
    assert message in r.stderr and "k.yaml:" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_sparsity_2_4(tmp_path):
    """`sparsity: "2:4"` asks trtexec for sparse kernels when the weights are 2:4 (after the prune pass), and
    fails that target, saying how to get there, when none is."""
    model, data, _ = LOCAL["tiny_cnn"]
    p = Project(tmp_path)
    base = {"model": model, "calibration": {"tensors": data}, "output": "out"}
    t = {"name": "sparse", "backend": "tensorrt", "precision": "int8", "device": "agx-orin", "sparsity": "2:4"}
    r = p.build({**base, "passes": ["cleanup", "fuse"], "targets": [t]}, check=False)
    assert r.returncode != 0 and "is 2:4 sparse" in r.stderr and "sparse_2_4" in r.stderr, r.stderr
    # One-shot 2:4 breaks this untrained model; a budget that accepts it lets the build go on (a real model is
    # fine-tuned with its mask first).
    loose = {"validation": {"tensors": data, "min_cosine": 0.0}}
    p.build({**base, **loose, "passes": ["cleanup", "fuse", {"prune": {"method": "sparse_2_4"}}], "targets": [t]})
    cmds = check_script(tmp_path / "out" / "sparse" / "build.sh", "10.3")
    assert "--sparsity" in cmds[0]
    s = json.loads((tmp_path / "out" / "report.json").read_text())["backend"]["sparse"]["sparse_2_4_layers"]
    assert 0 < s["sparse"] <= s["eligible"]
    # The int8 weights are 2:4 as TensorRT reads them: in every run of 4 input channels, 2 zeros.
    m = onnx.load(str(tmp_path / "out" / "sparse" / "model.qdq.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    checked = 0
    for n in m.graph.node:
        if n.op_type != "Conv" or n.input[1] not in producer:
            continue
        w = inits[producer[n.input[1]].input[0]]
        if w.shape[1] % 4:
            continue
        runs = w.transpose(0, 2, 3, 1).reshape(-1, 4)
        if (runs == 0).sum(axis=1).min() >= 2:
            checked += 1
    assert 1 <= checked <= s["sparse"]


# ---------------------------------------------------------------- DLA limits, one model each


def conv(name, x, y, cin, cout, k, **attrs):
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.1, (cout, cin // attrs.get("group", 1), *k)).astype(np.float32), name + "_w")
    return helper.make_node("Conv", [x, w.name], [y], name=name, kernel_shape=list(k), **attrs), [w]


def limit_model(path, body, c=4, hw=(40, 40), cout=None):
    """X → Conv 3×3 ('head', a DLA layer) → body(h) → Y: `body` returns (nodes, initializers, output, channels)."""
    n0, w0 = conv("head", "X", "h", 3, c, (3, 3), pads=[1, 1, 1, 1])
    nodes, inits, out = body("h")
    g = helper.make_graph([n0, *nodes], "limit", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, *hw])], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], [*w0, *inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(m, str(path))


def one(node_fn):
    def body(h):
        n, w = node_fn(h)
        return [n], w, "Y"

    return body


LIMITS = {
    "kernel33": (one(lambda h: conv("bad", h, "Y", 4, 4, (33, 33))), "kernel 33 outside 1..32"),
    "stride9": (one(lambda h: conv("bad", h, "Y", 4, 4, (3, 3), strides=[9, 9])), "stride 9 outside 1..8"),
    "pad_not_below_kernel": (one(lambda h: conv("bad", h, "Y", 4, 4, (3, 3), pads=[3, 3, 3, 3])), "not smaller than the kernel"),
    "dilation33": (one(lambda h: conv("bad", h, "Y", 4, 4, (2, 2), dilations=[33, 33])), "dilation 33 outside 1..32"),
    "channels8200": (one(lambda h: conv("bad", h, "Y", 4, 8200, (1, 1))), "8200 channels, more than 8192"),
    "pool_window9": (one(lambda h: (helper.make_node("MaxPool", [h], ["Y"], name="bad", kernel_shape=[9, 9]), [])), "MaxPool window 9 outside 1..8"),
    "pool_stride17": (one(lambda h: (helper.make_node("AveragePool", [h], ["Y"], name="bad", kernel_shape=[2, 2], strides=[17, 17]), [])), "AveragePool stride 17 outside 1..16"),
    "unsupported_op": (one(lambda h: (helper.make_node("Exp", [h], ["Y"], name="bad"), [])), "Exp is not a DLA layer"),
    "hardswish": (one(lambda h: (helper.make_node("HardSwish", [h], ["Y"], name="bad"), [])), "HardSwish is not a DLA activation"),
    "concat_width": (one(lambda h: (helper.make_node("Concat", [h, h], ["Y"], name="bad", axis=3), [])), "Concat on axis 3"),
    "softmax_9000": (None, "Softmax over 9000 values"),
    "resize_1_5": (None, "Resize by a non-integer scale"),
    "loadables17": (None, "more than 16 DLA loadables per core"),
}


def special(path, case):
    if case == "softmax_9000":
        # 9000 channels of 1×1, softmax over the channels.
        def body(h):
            n, w = conv("wide", h, "w", 4, 9000, (1, 1))
            return [n, helper.make_node("Softmax", ["w"], ["Y"], name="bad", axis=1)], w, "Y"

        limit_model(path, body, hw=(1, 1))
    elif case == "resize_1_5":
        scales = numpy_helper.from_array(np.array([1, 1, 1.5, 1.5], np.float32), "scales")

        def body(h):
            return [helper.make_node("Resize", [h, "", "scales"], ["Y"], name="bad", mode="nearest")], [scales], "Y"

        limit_model(path, body)
    elif case == "loadables17":
        # 17 DLA islands: Conv then Exp (GPU), 17 times.
        def body(h):
            nodes, inits, x = [], [], h
            for i in range(17):
                n, w = conv(f"c{i}", x, f"a{i}", 4, 4, (1, 1))
                nodes += [n, helper.make_node("Exp", [f"a{i}"], [f"e{i}"], name=f"exp{i}")]
                inits += w
                x = f"e{i}"
            nodes.append(helper.make_node("Identity", [x], ["Y"], name="bad_out"))
            return nodes, inits, "Y"

        limit_model(path, body, hw=(8, 8))


@pytest.mark.parametrize("case", sorted(LIMITS))
def test_dla_limit_falls_back_with_rule(tmp_path, case):
    """Each DLA limit sends its layer to the GPU with that rule named; the conv before it stays on the DLA."""
    body, rule = LIMITS[case]
    model = tmp_path / f"{case}.onnx"
    if body is None:
        special(model, case)
    else:
        limit_model(model, body)
    p = Project(tmp_path)
    p.build(
        {
            "model": model,
            "passes": [],
            "targets": [{"name": "dla", "backend": "tensorrt", "precision": "fp16", "device": "agx-orin", "dla": True}],
            "output": "out",
        }
    )
    pl = json.loads((tmp_path / "out" / "dla" / "placement.json").read_text())
    layers = {l["name"]: l for l in pl["layers"]}
    assert layers["head"]["device"] == "DLA", layers["head"]
    if case == "loadables17":
        assert pl["loadables"] == 16
        assert layers["c16"]["device"] == "GPU" and rule in layers["c16"]["rule"]
        assert all(layers[f"c{i}"]["device"] == "DLA" for i in range(1, 16))
        assert pl["transitions"] == 16 + 15  # c_i → exp_i for the 16 DLA convs, exp_i → c_{i+1} for 15
    else:
        bad = layers["bad"]
        assert bad["device"] == "GPU" and rule in bad["rule"], bad
        assert pl["fallbacks_by_rule"][bad["rule"]] >= 1
    text = (tmp_path / "out" / "dla" / "placement.txt").read_text()
    assert rule in text
    # The DLA model is what onnxruntime runs too (static shapes, no Q/DQ).
    run_artifact(tmp_path / "out" / "dla" / "dla" / "model.onnx", [{"X": np.zeros((1, 3, *((1, 1) if case == "softmax_9000" else (8, 8) if case == "loadables17" else (40, 40))), np.float32)}])


def test_qat_model_dla_cache_carries_its_trained_scales(tmp_path):
    """A QAT export keeps its trained Q/DQ: model.qdq.onnx follows TensorRT's rules, and the DLA cache holds
    exactly the trained activation scales (what NVIDIA's qdq-translator writes), read from the original ONNX."""
    model = LOCAL_MODELS / "tiny_qat.onnx"
    p = Project(tmp_path)
    p.build(
        {
            "model": model,
            "passes": ["cleanup", "fuse"],
            "calibration": {"tensors": LOCAL_MODELS / "tiny_qat_inputs.npy"},
            "targets": [{"name": "dla", "backend": "tensorrt", "precision": "int8", "device": "agx-orin", "dla": True}],
            "output": "out",
        }
    )
    out = tmp_path / "out" / "dla"
    assert trt_rules.check(out / "model.qdq.onnx") == []
    _, _, scales = trt_cache.parse((out / "dla" / "calib.cache").read_text())
    # The trained scales as onnxruntime computes them from the original file (some are computed by Casts).
    m = onnx.load(str(model))
    inits = {t.name for t in m.graph.initializer}
    pairs = [(n.input[0], n.input[1]) for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    for _, sname in pairs:
        m.graph.output.append(helper.make_empty_tensor_value_info(sname))
    probe = tmp_path / "scales.onnx"
    onnx.save(m, str(probe))
    sess = session(probe)
    x = np.load(LOCAL_MODELS / "tiny_qat_inputs.npy")[:1].astype(np.float32)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    trained = {xname: float(got[sname]) for xname, sname in pairs}
    assert scales and set(scales) <= value_names(out / "dla" / "model.onnx")
    # Fusion renames some tensors (a Conv+Relu output keeps the Conv's name), so match by value: every range
    # is one of the trained scales, the graph input's by name too.
    values = {np.float32(v) for v in trained.values()}
    assert all(np.float32(s) in values for s in scales.values()), (scales, trained)
    inp = m.graph.input[0].name
    assert np.float32(scales[inp]) == np.float32(trained[inp])


def test_dla_fp16_islands_run_on_the_gpu(tmp_path):
    """A layer the build keeps in float32 (an fp16 island) cannot run on the DLA (fp16/int8 only): the
    placement puts it on the GPU saying so, and build.sh tells TensorRT (--layerPrecisions ...:fp32)."""
    model, data, _ = LOCAL["tiny_cnn"]
    p = Project(tmp_path)
    island = "/blocks/blocks.0/dw/dw.0/Conv"
    p.build(
        {
            "model": model,
            "passes": ["cleanup", "fuse"],
            "targets": [{"name": "dla", "backend": "tensorrt", "precision": "fp16", "device": "agx-orin", "dla": True, "fp32_layers": [island]}],
            "output": "out",
        }
    )
    pl = json.loads((tmp_path / "out" / "dla" / "placement.json").read_text())
    layer = next(l for l in pl["layers"] if l["name"] == island)
    assert layer["device"] == "GPU" and "fp16 island" in layer["rule"]
    cmds = check_script(tmp_path / "out" / "dla" / "build.sh", "10.3")
    script = (tmp_path / "out" / "dla" / "build.sh").read_text()
    assert all("--layerPrecisions" in c and "--precisionConstraints" in c for c in cmds)
    assert f"--layerPrecisions={island}:fp32" in script


def test_dla_loadables_are_not_reentered(tmp_path):
    """A squeeze-excite block whose pooling falls back to the GPU: the DLA work after it cannot join the
    loadable before it (a path leaves that loadable through the GPU and comes back), so there are two
    loadables and the excite branch, the Mul and what follows form the second."""

    def body(h):
        n1, w1 = conv("se_reduce", "p", "r", 4, 4, (1, 1))
        n2, w2 = conv("tail", "m", "Y", 4, 4, (1, 1))
        return [
            helper.make_node("GlobalAveragePool", [h], ["p"], name="squeeze"),
            n1,
            helper.make_node("Sigmoid", ["r"], ["s"], name="gate"),
            helper.make_node("Mul", [h, "s"], ["m"], name="excite"),
            n2,
        ], [*w1, *w2], "Y"

    model = tmp_path / "se.onnx"
    limit_model(model, body)
    p = Project(tmp_path)
    p.build({"model": model, "passes": [], "targets": [{"name": "dla", "backend": "tensorrt", "precision": "fp16", "device": "agx-orin", "dla": True}], "output": "out"})
    pl = json.loads((tmp_path / "out" / "dla" / "placement.json").read_text())
    layers = {l["name"]: l for l in pl["layers"]}
    assert layers["squeeze"]["device"] == "GPU"
    assert pl["loadables"] == 2
    assert layers["head"]["loadable"] == 0
    assert {layers[n]["loadable"] for n in ("se_reduce", "gate", "excite", "tail")} == {1}
    # GPU<->DLA: head → squeeze (to the GPU), squeeze → se_reduce (back); head → excite goes between two
    # loadables, not between devices.
    assert pl["transitions"] == 2


# ---------------------------------------------------------------- the shared corpus (skipped without it)

CORPUS_TRT = ["mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x1_0"]


@pytest.mark.parametrize("stem", CORPUS_TRT)
def test_corpus_int8_fidelity(tmp_path, stem):
    """MobileNetV2, EfficientNet-B0, ShuffleNetV2: tensorrt int8 (entropy, the default) against onnxruntime on
    the original model with the Q/DQ executed as written, next to kiln's onnx int8 artifact of the same
    model; the rules, the cache and the script as for every bundle."""
    model = CORPUS / f"{stem}.onnx"
    if not model.exists():
        pytest.skip(f"corpus absent: {model}")
    p = Project(tmp_path)
    p.build(
        {
            "model": model,
            "inputs": {"input": [1, 3, 224, 224]},
            "passes": ["cleanup", "fuse"],
            "calibration": {"images": DATA / "images_calib", "preprocess": IMAGENET_PREPROCESS},
            "targets": [
                {"name": "onnx", "backend": "onnx", "precision": "int8"},
                {"name": "trt", "backend": "tensorrt", "precision": "int8", "device": "agx-orin", "dla": True},
            ],
            "validation": {"images": DATA / "images_val", "preprocess": IMAGENET_PREPROCESS},
            "output": "out",
        }
    )
    out = tmp_path / "out"
    qdq = out / "trt" / "model.qdq.onnx"
    assert trt_rules.check(qdq) == []
    feeds = validation_inputs(stem)
    ref = [o[0] for o in run_artifact(model, feeds, exact=False)]
    trt = [o[0] for o in run_artifact(qdq, feeds)]
    onx = [o[0] for o in run_artifact(out / "onnx" / "model.onnx", feeds)]
    a_trt, a_onnx = top1_agreement(ref, trt), top1_agreement(ref, onx)
    c_trt = float(np.mean([cosine(r, g) for r, g in zip(ref, trt)]))
    c_onnx = float(np.mean([cosine(r, g) for r, g in zip(ref, onx)]))
    print(f"{stem}: tensorrt int8 top-1 agreement {a_trt:.3f} cosine {c_trt:.4f}; onnx int8 {a_onnx:.3f} {c_onnx:.4f}")
    # Symmetric activations (TensorRT's rule) give a non-negative tensor 7 bits where the onnx artifact's
    # asymmetric ones give 8: the bound is the measured cost of that, not parity (docs/BENCHMARKS.md).
    assert a_trt >= a_onnx - 0.10 and c_trt >= c_onnx - 0.01, (a_trt, a_onnx, c_trt, c_onnx)
    report = json.loads((out / "report.json").read_text())
    # kiln's own measurement (tract, on the optimized float model) agrees with onnxruntime's: mean cosine
    # (top-1 agreement flips on near-ties between the two runtimes' float kernels: 0.84 vs 0.88 measured).
    assert abs(report["accuracy"]["trt"]["mean_cosine"] - c_trt) <= 0.005, (report["accuracy"]["trt"], c_trt)
    calib = [{"input": preprocess(f)} for f in sorted((DATA / "images_calib").glob("*.jpg"))[:16]]
    check_cache(out / "trt", "10.3", calib)
    check_script(out / "trt" / "build.sh", "10.3")
    if stem == "mobilenet_v2":
        got = (out / "trt" / "placement.txt").read_text()
        snap = SNAPSHOTS / "tensorrt_mobilenet_v2_placement.txt"
        if os.environ.get("KILN_BLESS") == "1":
            snap.write_text(got)
        assert got == snap.read_text(), "placement changed: review and update tests/snapshots/tensorrt_mobilenet_v2_placement.txt"
