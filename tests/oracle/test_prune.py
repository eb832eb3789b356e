"""`prune: { method: realize }` (issue 17): channels a pruned model already zeroed are removed, exactly where
exact. The test derives the zeroed channels and which of them are exactly removable from the ONNX file itself
(all-zero filters; the constant act(b) each leaves; whether a zero-padded conv reads a non-zero one; what
reads them), independently of kiln, then holds kiln's removal, its parameter and MAC savings and its
outputs (onnxruntime on the original) to that."""
import json
import pathlib
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln_oracle import CORPUS, LOCAL_MODELS, kiln, run_artifact

ACTS = {
    "Relu": lambda x, n, i: np.maximum(x, 0),
    "Clip": lambda x, n, i: np.clip(x, i.get(n.input[1], -np.inf) if len(n.input) > 1 else -np.inf,
                                    i.get(n.input[2], np.inf) if len(n.input) > 2 else np.inf),
    "HardSwish": lambda x, n, i: x * np.clip(x / 6 + 0.5, 0, 1),
}


def analyse(path):
    """{conv name: (zeroed channels, exactly removable channels)} and the params and MACs the exact removal
    saves (every Conv/Gemm counted before and after, from its kept input and output channels), from the model
    alone. Handles what the shared digits models hold: Conv → activation → (depthwise Conv → activation) →
    Conv 1x1, and Conv → activation → GlobalAveragePool → Flatten → Gemm."""
    m = onnx.load(str(path))
    g = m.graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            init[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    scalars = {k: float(v) for k, v in init.items() if v.size == 1}
    readers = {}
    for n in g.node:
        for i, x in enumerate(n.input):
            readers.setdefault(x, []).append((n, i))
    outputs = {o.name for o in g.output}
    shapes = {}
    inferred = onnx.shape_inference.infer_shapes(m).graph
    for vi in list(inferred.value_info) + list(inferred.output) + list(inferred.input):
        shapes[vi.name] = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]

    def attr(n, name, default):
        for a in n.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def padded(n):
        return any(attr(n, "pads", [0])) or attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")

    def walk(v, k, c, touched):
        """Follow channel c's constant k from value v: (absorbable, exact); `touched` collects
        (node, "out" | "in") for the nodes that lose the channel."""
        if v in outputs:
            return False, True
        exact = True
        for n, slot in readers.get(v, []):
            if slot != 0:
                return False, True
            if n.op_type in ACTS:
                ok, ex = walk(n.output[0], ACTS[n.op_type](k, n, scalars), c, touched)
            elif n.op_type in ("GlobalAveragePool", "Flatten"):
                ok, ex = walk(n.output[0], k, c, touched)
            elif n.op_type == "Conv" and attr(n, "group", 1) > 1:
                w = init[n.input[1]]
                if attr(n, "group", 1) != w.shape[0]:
                    return False, True
                b = init[n.input[2]][c] if len(n.input) > 2 else 0.0
                touched.append((n.name, "out"))
                ok, ex2 = walk(n.output[0], k * w[c].sum() + b, c, touched)
                ex = (k == 0 or not padded(n)) and ex2
            elif n.op_type in ("Conv", "Gemm"):
                touched.append((n.name, "in"))
                ok, ex = True, n.op_type == "Gemm" or k == 0 or not padded(n)
            else:
                return False, True
            if not ok:
                return False, True
            exact = exact and ex
        return True, exact

    result = {}
    drop = {}  # node name -> {"out": set, "in": set}
    for n in g.node:
        if n.op_type != "Conv" or attr(n, "group", 1) != 1:
            continue
        w = init[n.input[1]]
        b = init[n.input[2]] if len(n.input) > 2 else np.zeros(w.shape[0])
        zero = [c for c in range(w.shape[0]) if not w[c].any()]
        removable = []
        for c in zero:
            touched = []
            ok, exact = walk(n.output[0], float(b[c]), c, touched)
            if ok and exact:
                removable.append(c)
                drop.setdefault(n.name, {"out": set(), "in": set()})["out"].add(c)
                for name, side in touched:
                    drop.setdefault(name, {"out": set(), "in": set()})[side].add(c)
        if zero:
            result[n.name] = (zero, removable)

    def cost(n, d):
        w = init[n.input[1]]
        has_b = len(n.input) > 2
        if n.op_type == "Gemm":
            o, i = (w.shape[0], w.shape[1]) if attr(n, "transB", 0) else (w.shape[1], w.shape[0])
            o, i = o - len(d["out"]), i - len(d["in"])
            return o * i + (o if has_b else 0), o * i
        out = shapes[n.output[0]]
        spatial = int(np.prod(w.shape[2:]))
        o = w.shape[0] - len(d["out"])
        if attr(n, "group", 1) > 1:  # depthwise: one input channel per output channel
            return o * spatial + (o if has_b else 0), o * spatial * out[2] * out[3]
        i = w.shape[1] - len(d["in"])
        return o * i * spatial + (o if has_b else 0), o * i * spatial * out[2] * out[3]

    saved = {"params": 0, "macs": 0}
    none = {"out": set(), "in": set()}
    for n in g.node:
        if n.op_type in ("Conv", "Gemm") and n.name in drop:
            (p0, m0), (p1, m1) = cost(n, none), cost(n, drop[n.name])
            saved["params"] += p0 - p1
            saved["macs"] += m0 - m1
    return result, saved


def realize_build(project, model, approximate=False, targets=None, **extra):
    project.copy_model(model)
    cfg = {
        "model": model.name,
        "inputs": {"input": [1] + [d.dim_value for d in onnx.load(str(model)).graph.input[0].type.tensor_type.shape.dim[1:]]},
        "passes": ["cleanup", "fuse", {"prune": {"method": "realize", "approximate": approximate}}],
        "targets": targets or [{"name": "fp32", "backend": "onnx", "precision": "fp32"}],
        "output": "out",
        **extra,
    }
    kiln("build", project.write(cfg), "-q")
    return project.root / "out", json.loads((project.root / "out" / "report.json").read_text())


def pruned_local_model(path):
    """A small network with what the trap needs: zeroed filters whose constant is 0 (negative bias under
    ReLU: removable through a padded depthwise conv), non-zero (kept: the padding sees the difference),
    and zeroed head filters read by GlobalAveragePool → Flatten → Gemm (removable, constant folded)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(8, 3, 1, 1)).astype(np.float32)
    b1 = rng.normal(size=8).astype(np.float32)
    w1[[1, 4]] = 0
    b1[1], b1[4] = -0.5, 0.7  # channel 1: relu(-0.5) = 0 (exact); channel 4: 0.7 (padding: kept)
    dw = rng.normal(size=(8, 1, 3, 3)).astype(np.float32)
    dwb = rng.normal(size=8).astype(np.float32)
    w2 = rng.normal(size=(16, 8, 1, 1)).astype(np.float32)
    b2 = rng.normal(size=16).astype(np.float32)
    w2[[2, 3, 9]] = 0
    fc = rng.normal(size=(5, 16)).astype(np.float32)
    fcb = rng.normal(size=5).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["a"], name="expand"),
        helper.make_node("Relu", ["a"], ["ar"], name="expand_relu"),
        helper.make_node("Conv", ["ar", "dw", "dwb"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["dr"], name="dw_relu"),
        helper.make_node("Conv", ["dr", "w2", "b2"], ["h"], name="head"),
        helper.make_node("HardSwish", ["h"], ["hs"], name="head_act"),
        helper.make_node("GlobalAveragePool", ["hs"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="fc", transB=1),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in
             [("w1", w1), ("b1", b1), ("dw", dw), ("dwb", dwb), ("w2", w2), ("b2", b2), ("fc", fc), ("fcb", fcb)]]
    g = helper.make_graph(nodes, "pruned", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 12, 12])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], initializer=inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def check_realized(project, model, feeds):
    expected, saved = analyse(model)
    out, report = realize_build(project, model)
    pr = report["pass_reports"]["prune"]
    got = {r["node"]: sorted(r["channels"]) for r in pr["removed"]}
    for node, (zero, removable) in expected.items():
        assert got.get(node, []) == removable, (node, got.get(node), removable, zero)
    assert set(got) <= set(expected)
    before, after = report["model"], report["optimized"]
    # The passes before prune change nothing in parameters here (no BatchNorm): the savings are prune's.
    rec = next(p for p in report["passes"] if p["pass"] == "prune")
    print(f"{model.name}: params {rec['params'][0]} -> {rec['params'][1]} (analytic saving {saved['params']}), "
          f"MACs {rec['macs'][0]} -> {rec['macs'][1]} (analytic saving {saved['macs']})")
    assert rec["params"][0] - rec["params"][1] == saved["params"]
    assert rec["macs"][0] - rec["macs"][1] == saved["macs"]
    assert after["params"] < before["params"]
    worst = 0.0
    for ref, got_ in zip(run_artifact(model, feeds, exact=None), run_artifact(out / "fp32" / "model.onnx", feeds, exact=None)):
        for r, o in zip(ref, got_):
            worst = max(worst, float(np.abs(r - o).max() / np.abs(r).max()))
    assert worst <= 1e-4, worst
    return report


def test_realize_local_model_removes_exactly_the_removable_channels(project, tmp_path):
    (tmp_path / "src").mkdir()
    model = pruned_local_model(tmp_path / "src" / "pruned.onnx")
    x = np.random.default_rng(1).normal(size=(8, 1, 3, 12, 12)).astype(np.float32)
    report = check_realized(project, model, [{"input": s} for s in x])
    kept = report["pass_reports"]["prune"]["kept"]
    assert any(k["node"] == "expand" and k["channels"] == [4] and "padded" in k["why"] for k in kept), kept
    removed = {r["node"]: r["channels"] for r in report["pass_reports"]["prune"]["removed"]}
    assert removed == {"expand": [1], "head": [2, 3, 9]}


@pytest.mark.corpus
def test_realize_digits_mobilenet_pruned(project):
    model = CORPUS / "digits_mobilenet_pruned.onnx"
    if not model.exists():
        pytest.skip("corpus absent")
    from kiln_oracle import DATA
    x = np.load(DATA / "digits_val.npy")[:100].astype(np.float32)
    check_realized(project, model, [{"input": x[i:i + 1]} for i in range(len(x))])


@pytest.mark.corpus
def test_realized_digits_int8_tflite_is_smaller_and_as_accurate(project):
    model = CORPUS / "digits_mobilenet_pruned.onnx"
    if not model.exists():
        pytest.skip("corpus absent")
    from kiln_oracle import DATA
    from tflite_oracle import interpreter, tflite_run

    x = np.load(DATA / "digits_val.npy").astype(np.float32)
    y = np.load(DATA / "digits_val_labels.npy")
    target = [{"name": "phone", "backend": "tflite", "precision": "int8"}]
    calib = {"calibration": {"tensors": str(DATA / "digits_calib.npy")}}
    out, _ = realize_build(project, model, targets=target, **calib)
    realized = (out / "phone" / "model.tflite").read_bytes()
    plain_cfg = project.write({"model": model.name, "inputs": {"input": [1, 1, 32, 32]}, "passes": ["cleanup", "fuse"],
                               "targets": target, "output": "plain", **calib}, name="plain.yaml")
    kiln("build", plain_cfg, "-q")
    plain = (project.root / "plain" / "phone" / "model.tflite").read_bytes()
    fp32 = np.concatenate([o[0] for o in run_artifact(model, [{"input": x[i:i + 1]} for i in range(len(x))], exact=None)])
    it = interpreter(out / "phone" / "model.tflite")
    q = np.concatenate([tflite_run(it, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    acc32, acc8 = (fp32.argmax(1) == y).mean(), (q.argmax(1) == y).mean()
    print(f"int8 TFLite: realized {len(realized)} B vs {len(plain)} B unrealized; digits accuracy {acc8:.4f} (fp32 {acc32:.4f})")
    assert len(realized) < len(plain)
    assert acc8 >= acc32 - 0.01


@pytest.mark.corpus
def test_realize_approximate_is_measured_and_reported(project):
    # approximate: true also removes channels whose constant a zero-padded depthwise conv reads; kiln
    # measures the optimized model against the imported one, and onnxruntime agrees with its figure.
    model = CORPUS / "digits_mobilenet_pruned.onnx"
    if not model.exists():
        pytest.skip("corpus absent")
    from kiln_oracle import DATA

    x = np.load(DATA / "digits_val.npy").astype(np.float32)
    y = np.load(DATA / "digits_val_labels.npy")
    np.save(project.root / "val.npy", x[:300])
    np.save(project.root / "labels.npy", y[:300])
    out, report = realize_build(project, model, approximate=True,
                                validation={"tensors": "val.npy", "labels": "labels.npy"})
    pr = report["pass_reports"]["prune"]
    assert pr["channels_removed_approximately"] > 0
    fid = report["passes_fidelity"]
    feeds = [{"input": x[i:i + 1]} for i in range(300)]
    a = np.concatenate([o[0] for o in run_artifact(model, feeds, exact=None)])
    b = np.concatenate([o[0] for o in run_artifact(out / "fp32" / "model.onnx", feeds, exact=None)])
    agreement = (a.argmax(1) == b.argmax(1)).mean()
    acc_a, acc_b = (a.argmax(1) == y[:300]).mean(), (b.argmax(1) == y[:300]).mean()
    print(f"approximate realize: {pr['channels_removed']} channels removed ({pr['channels_removed_approximately']} "
          f"approximately); digits accuracy {acc_b:.4f} vs {acc_a:.4f}; agreement {agreement:.3f} "
          f"(kiln reports {fid['top1_agreement']:.3f})")
    assert abs(agreement - fid["top1_agreement"]) <= 0.01
    assert abs(fid["accuracy"] - acc_b) <= 0.01 and abs(fid["accuracy_reference"] - acc_a) <= 0.01


def polygraphy_sparsity(model):
    """`polygraphy inspect sparsity` (NVIDIA's checker, PyPI): (eligible tensors, tensors it found sparse,
    whether it passed)."""
    import subprocess
    import sys

    exe = pathlib.Path(sys.executable).parent / "polygraphy"
    p = subprocess.run([str(exe), "inspect", "sparsity", str(model)], capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    eligible = int(re.search(r"Found: (\d+) weight tensor\(s\) eligible", out).group(1))
    return eligible, out.count("Found sparse tensor"), "Found non-sparse tensor" not in out and p.returncode == 0


def sparse_build(project, model, pins, budget=True, data=None):
    project.copy_model(model)
    cfg = {
        "model": model.name,
        "inputs": {"input": pins},
        "passes": ["cleanup", "fuse", {"prune": {"method": "sparse_2_4"}}],
        "targets": [{"name": "fp32", "backend": "onnx", "precision": "fp32"}],
        "output": "out",
        **(data or {}),
    }
    if budget:
        cfg.setdefault("validation", {})["min_cosine"] = -1.0  # any measured loss is accepted
    return kiln("build", project.write(cfg), check=False)


def test_sparse_2_4_pattern_holds_under_polygraphy(project):
    model = LOCAL_MODELS / "tiny_cnn.onnx"
    p = sparse_build(project, model, [1, 3, 64, 64],
                     data={"validation": {"tensors": str(LOCAL_MODELS / "tiny_cnn_inputs.npy")}})
    assert p.returncode == 0, p.stderr
    out = project.root / "out"
    report = json.loads((out / "report.json").read_text())
    pr = report["pass_reports"]["prune"]
    eligible, sparse, ok = polygraphy_sparsity(out / "fp32" / "model.onnx")
    assert ok and eligible == sparse == len(pr["sparse"]) > 0, (eligible, sparse, pr)
    # Every weight left dense is listed with its reason (depthwise convs: one input channel).
    assert all("not a multiple of 4" in s["why"] for s in pr["skipped"])
    # The cost is measured against the imported model and stated.
    assert report["passes_fidelity"]["samples"] > 0 and "sqnr_db" in report["passes_fidelity"]


@pytest.mark.corpus
def test_sparse_2_4_mobilenet_v2_is_measured_and_refused_without_a_budget(project):
    model = CORPUS / "mobilenet_v2.onnx"
    if not model.exists():
        pytest.skip("corpus absent")
    from kiln_oracle import DATA

    val = {"validation": {"images": str(DATA / "images_val"), "samples": 32,
                          "preprocess": {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406],
                                         "std": [0.229, 0.224, 0.225]}}}
    # One-shot 2:4 without fine-tuning breaks MobileNetV2: without a budget kiln refuses it, saying why.
    p = sparse_build(project, model, [1, 3, 224, 224], budget=False, data=val)
    assert p.returncode == 1 and "sparse_2_4" in p.stderr and "broken" in p.stderr, p.stderr
    assert not (project.root / "out" / "fp32").exists()
    # With a budget that accepts the loss, the artifact is written, 2:4 on every eligible weight.
    p = sparse_build(project, model, [1, 3, 224, 224], data=val)
    assert p.returncode == 0, p.stderr
    report = json.loads((project.root / "out" / "report.json").read_text())
    eligible, sparse, ok = polygraphy_sparsity(project.root / "out" / "fp32" / "model.onnx")
    fid = report["passes_fidelity"]
    print(f"MobileNetV2 2:4 (no fine-tuning): {sparse}/{eligible} weights sparse per polygraphy; against fp32: "
          f"top-1 agreement {fid['top1_agreement']:.3f}, cosine {fid['mean_cosine']:.4f}, SQNR {fid['sqnr_db']:.1f} dB")
    assert ok and eligible == sparse == len(report["pass_reports"]["prune"]["sparse"])
