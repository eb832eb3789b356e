"""Run kiln's TFLite artifacts in the ai-edge-litert interpreter (the independent oracle; kiln_oracle.run_artifact
runs .tflite files through tflite_run) and compare them with onnxruntime on the original ONNX model
(kiln_oracle.oracle_session: Q/DQ models with graph optimizations off, executed as written). The metrics are
accuracy.py's."""
import numpy as np

from accuracy import max_rel_diff as _max_rel_diff
from kiln_oracle import run_artifact


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
    """[(onnxruntime outputs, interpreter outputs)] for each feed, every output of the same shape on both."""
    pairs = list(zip(run_artifact(onnx_path, feeds, exact=None), run_artifact(tflite_path, feeds, layout=layout)))
    for refs, outs in pairs:
        for r, o in zip(refs, outs):
            assert r.shape == o.shape, (r.shape, o.shape)
    return pairs


def max_rel_diff(onnx_path, tflite_path, feeds, layout="nhwc"):
    """max |tflite − ort| / max |ort| (accuracy.rel_diff) over every feed and output."""
    pairs = [(r, o) for refs, outs in paired_outputs(onnx_path, tflite_path, feeds, layout) for r, o in zip(refs, outs)]
    return _max_rel_diff([r for r, _ in pairs], [o for _, o in pairs])


def op_names(tflite_path):
    it = interpreter(tflite_path)
    return [d["op_name"] for d in it._get_ops_details()]
