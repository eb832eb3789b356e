"""Shared helpers for the oracle tests: where things are, how to feed each model, how to run
onnxruntime (the independent oracle) and the kiln binary."""
import json
import os
import pathlib
import subprocess

import numpy as np
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parents[2]
KILN = pathlib.Path(os.environ.get("KILN_BIN", ROOT / "target" / "release" / "kiln"))
SHARED = pathlib.Path(os.environ.get("KILN_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "models"
DATA = SHARED / "data"
LOCAL_MODELS = ROOT / "tests" / "models"

IMAGE_MODELS = {"mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x1_0", "squeezenet1_1"}
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def kiln(*args, check=True, cwd=None):
    """Run the kiln binary; returns CompletedProcess (text)."""
    p = subprocess.run([str(KILN), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"kiln {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


def inspect_json(model, *extra):
    return json.loads(kiln("inspect", model, "--json", *extra).stdout)


def preprocess(path):
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((256, 256), Image.BILINEAR)
    a = np.asarray(img, np.float32)[16:240, 16:240] / 255.0
    a = (a - MEAN) / STD
    return a.transpose(2, 0, 1)[None].astype(np.float32)


def validation_inputs(stem, limit=None):
    """List of input feeds ({name: array}) from ../shared/data for a corpus model."""
    if stem in IMAGE_MODELS:
        files = sorted((DATA / "images_val").glob("*.jpg"))[:limit]
        return [{"input": preprocess(f)} for f in files]
    if stem.startswith("digits"):
        x = np.load(DATA / "digits_val.npy").astype(np.float32)[:limit]
        return [{"input": x[i : i + 1]} for i in range(len(x))]
    if stem == "tiny_encoder":
        x = np.load(DATA / "tokens_calib.npy").astype(np.int64)[:limit]
        return [{"ids": x[i : i + 1]} for i in range(len(x))]
    if stem == "kws_lstm":
        x = np.load(DATA / "kws_calib.npy").astype(np.float32)[:limit]
        return [{"features": x[i : i + 1]} for i in range(len(x))]
    raise KeyError(stem)


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run(sess, feed):
    return sess.run(None, feed)


def corpus_models():
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.glob("*.onnx"))


def local_models():
    return sorted(LOCAL_MODELS.glob("*.onnx"))


def local_inputs(path, limit=None):
    """Feeds for a model shipped in tests/models: `<stem>_inputs.npy` (the dynamo twin shares its
    torchscript sibling's inputs), one sample per feed."""
    stem = path.stem.replace("_dynamo", "")
    x = np.load(LOCAL_MODELS / f"{stem}_inputs.npy")[:limit]
    sess = session(path)
    name = sess.get_inputs()[0].name
    return [{name: x[i : i + 1]} for i in range(len(x))]


def independent_macs(path, pins):
    """MACs from onnx's own shape inference (independent of kiln's) for Conv/Gemm/MatMul/LSTM."""
    import onnx
    from onnx import shape_inference

    m = onnx.load(str(path))
    for i in m.graph.input:
        if i.name in pins:
            for d, v in zip(i.type.tensor_type.shape.dim, pins[i.name]):
                d.ClearField("dim_param")
                d.dim_value = v
    m = shape_inference.infer_shapes(m, data_prop=True)
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)
    total = 0
    for n in m.graph.node:
        if n.op_type == "Conv":
            total += int(np.prod(shapes[n.output[0]])) * int(np.prod(shapes[n.input[1]][1:]))
        elif n.op_type == "Gemm":
            ta = next((a.i for a in n.attribute if a.name == "transA"), 0)
            a = shapes[n.input[0]]
            total += int(np.prod(shapes[n.output[0]])) * (a[0] if ta else a[1])
        elif n.op_type == "MatMul":
            total += int(np.prod(shapes[n.output[0]])) * shapes[n.input[0]][-1]
        elif n.op_type == "LSTM":
            x, w, r = shapes[n.input[0]], shapes[n.input[1]], shapes[n.input[2]]
            total += x[0] * x[1] * (int(np.prod(w)) + int(np.prod(r)))
    return total
