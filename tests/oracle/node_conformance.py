"""Round-trip the ONNX backend node tests through kiln's IR and compare onnxruntime outputs.

For each case: `kiln optimize model.onnx -o rt.onnx` (import → IR → export, no passes), then run the
original and the round-tripped model in onnxruntime on the case's inputs and require identical outputs
(NaN equal to NaN). Where onnxruntime cannot run the original, the round trip is checked structurally
instead: same nodes, attributes, inputs/outputs and initializer values (onnx.checker must also accept it).

Usage: python node_conformance.py [--cases DIR] [--json OUT]   (prints one line per non-passing case)
"""
import argparse
import glob
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from kiln_oracle import KILN  # noqa: E402

DEFAULT_CASES = "/usr/share/libonnx-testdata/data/node"


def load_inputs(case_dir, model):
    ds = sorted(glob.glob(os.path.join(case_dir, "test_data_set_*")))
    if not ds:
        return None
    feeds = {}
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    files = sorted(glob.glob(os.path.join(ds[0], "input_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3]))
    for name, f in zip(names, files):
        t = onnx.TensorProto()
        with open(f, "rb") as fh:
            t.ParseFromString(fh.read())
        if not t.data_type:  # sequence/optional/map inputs: not TensorProto
            return None
        try:
            feeds[name] = numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001 - a sequence/optional proto that happened to parse
            return None
    return feeds


def canon_attr(a):
    a2 = onnx.AttributeProto()
    a2.CopyFrom(a)
    if a2.HasField("g"):
        a2.g.CopyFrom(canon_graph(a2.g))
    for i, g in enumerate(a2.graphs):
        a2.graphs[i].CopyFrom(canon_graph(g))
    if a2.HasField("t"):
        a2.t.CopyFrom(canon_tensor(a2.t))
    return a2


def canon_tensor(t):
    arr = numpy_helper.to_array(t) if t.data_type not in (0,) else None
    t2 = numpy_helper.from_array(arr, t.name) if arr is not None and arr.dtype != object and t.data_type not in (16, 17, 18, 19, 20, 21, 22, 23) else t
    return t2


def canon_graph(g):
    g2 = onnx.GraphProto()
    g2.CopyFrom(g)
    del g2.initializer[:]
    for t in sorted(g.initializer, key=lambda t: t.name):
        g2.initializer.append(canon_tensor(t))
    for n in g2.node:
        attrs = sorted((canon_attr(a) for a in n.attribute), key=lambda a: a.name)
        del n.attribute[:]
        n.attribute.extend(attrs)
    return g2


def drop_defaults(msg):
    """Clear explicitly-set default scalars (proto2 presence), which carry no meaning in ONNX."""
    for fd, val in list(msg.ListFields()):
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        if fd.type == fd.TYPE_MESSAGE:
            if repeated:
                for v in val:
                    drop_defaults(v)
            else:
                drop_defaults(val)
        elif not repeated and val == fd.default_value:
            msg.ClearField(fd.name)
    return msg


def same_structure(a, b):
    ga, gb = drop_defaults(canon_graph(a.graph)), drop_defaults(canon_graph(b.graph))
    ops = lambda m: sorted((o.domain, o.version) for o in m.opset_import)  # noqa: E731
    return ga.SerializeToString(deterministic=True) == gb.SerializeToString(deterministic=True) and ops(a) == ops(b)


def equal(x, y):
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if x.dtype.kind in "fc":
        return bool(np.array_equal(x, y, equal_nan=True))
    return bool(np.array_equal(x, y))


def check_case(case_dir, tmp):
    import onnxruntime as ort

    src = os.path.join(case_dir, "model.onnx")
    rt = os.path.join(tmp, os.path.basename(case_dir) + ".onnx")
    p = subprocess.run([str(KILN), "optimize", src, "-o", rt, "--passes", "none"], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        return "kiln-error", p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
    try:
        rtm = onnx.load(rt)
        onnx.checker.check_model(rtm)
    except Exception as e:  # noqa: BLE001
        return "invalid-output", str(e).splitlines()[0]
    orig = onnx.load(src)
    feeds = load_inputs(case_dir, orig)
    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 4
        a = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        if feeds is None:
            raise RuntimeError("non-tensor inputs")
        ra = a.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        if same_structure(orig, rtm):
            return "pass-structural", f"onnxruntime cannot run the original ({str(e).splitlines()[0][:80]}); structure identical"
        return "structure-differs", "onnxruntime cannot run the original and the round trip differs structurally"
    try:
        b = ort.InferenceSession(rt, so, providers=["CPUExecutionProvider"])
        rb = b.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        return "rt-fails", str(e).splitlines()[0][:160]
    if len(ra) != len(rb) or not all(equal(x, y) for x, y in zip(ra, rb)):
        return "outputs-differ", "onnxruntime outputs differ"
    return "pass", ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=os.environ.get("ONNX_NODE_CASES", DEFAULT_CASES))
    ap.add_argument("--json")
    args = ap.parse_args()
    cases = sorted(d for d in glob.glob(os.path.join(args.cases, "*")) if os.path.exists(os.path.join(d, "model.onnx")))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for c in cases:
            status, why = check_case(c, tmp)
            results[os.path.basename(c)] = {"status": status, "why": why}
            if not status.startswith("pass"):
                print(f"{os.path.basename(c)}: {status}: {why}")
    n = len(results)
    ok = sum(r["status"].startswith("pass") for r in results.values())
    structural = sum(r["status"] == "pass-structural" for r in results.values())
    print(f"node tests: {ok}/{n} round-trip ({ok / max(n, 1):.2%}); {structural} of them checked structurally (onnxruntime cannot run the original)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
