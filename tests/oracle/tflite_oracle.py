"""Run kiln's TFLite artifacts in the ai-edge-litert interpreter (the independent oracle) and compare them
with onnxruntime on the original ONNX model (kiln_oracle.oracle_session: Q/DQ models with graph
optimizations off, executed as written)."""
import numpy as np

from kiln_oracle import oracle_session


def interpreter(path, threads=1):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


def to_tflite_layout(a, layout):
    return a.transpose(0, 2, 3, 1) if layout == "nhwc" and a.ndim == 4 else a


def from_tflite_layout(a, layout):
    return a.transpose(0, 3, 1, 2) if layout == "nhwc" and a.ndim == 4 else a


def tflite_run(it, feed, layout="nhwc"):
    """Run one feed ({name: NCHW array}) and return outputs in ONNX layout, in the model's output order."""
    ins = it.get_input_details()
    for d, (name, a) in zip(ins, feed.items()):
        x = to_tflite_layout(a, layout)
        if d["dtype"] in (np.int8, np.uint8) and a.dtype.kind == "f":
            # An integer-I/O model: quantize with the input tensor's own parameters.
            s, z = d["quantization"]
            info = np.iinfo(d["dtype"])
            x = np.clip(np.round(x / s) + z, info.min, info.max)
        it.set_tensor(d["index"], x.astype(d["dtype"]))
    it.invoke()
    outs = []
    for d in it.get_output_details():
        y = it.get_tensor(d["index"])
        if d["dtype"] in (np.int8, np.uint8):
            s, z = d["quantization"]
            y = (y.astype(np.float32) - z) * s
        outs.append(from_tflite_layout(y, layout))
    return outs


def paired_outputs(onnx_path, tflite_path, feeds, layout="nhwc"):
    """[(onnxruntime outputs, interpreter outputs)] for each feed."""
    sess = oracle_session(onnx_path)
    it = interpreter(tflite_path)
    pairs = []
    for f in feeds:
        refs, outs = sess.run(None, f), tflite_run(it, f, layout)
        for r, o in zip(refs, outs):
            assert r.shape == o.shape, (r.shape, o.shape)
        pairs.append((refs, outs))
    return pairs


def max_rel_diff(onnx_path, tflite_path, feeds, layout="nhwc"):
    """max |tflite − ort| / max |ort| over every feed and output."""
    worst = 0.0
    for refs, outs in paired_outputs(onnx_path, tflite_path, feeds, layout):
        for r, o in zip(refs, outs):
            worst = max(worst, float(np.abs(o.astype(np.float64) - r).max() / (np.abs(r).max() + 1e-30)))
    return worst


def mean_cosine(onnx_path, it, feeds, layout="nhwc"):
    """Mean cosine between onnxruntime's first output and the interpreter's, over the feeds."""
    sess = oracle_session(onnx_path)
    cos = []
    for f in feeds:
        r, t = sess.run(None, f)[0].ravel().astype(np.float64), tflite_run(it, f, layout)[0].ravel().astype(np.float64)
        cos.append(float(r @ t / (np.linalg.norm(r) * np.linalg.norm(t))))
    return float(np.mean(cos))


def op_names(tflite_path):
    it = interpreter(tflite_path)
    return [d["op_name"] for d in it._get_ops_details()]
