"""TFLite lowerings op by op (issue 13): small generated models, each a 1x1 convolution (so the tensor under
test is channel-last, as in a real CNN) followed by the op in one of its attribute variants, built to
`tflite` fp32 (and int8 for a subset) and run in the ai-edge-litert interpreter against onnxruntime on the
ONNX model. A variant TFLite cannot express is refused by name, never emitted wrong."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from accuracy import cosine
from kiln_oracle import Project, run_artifact

RNG = np.random.default_rng(3)
F = TensorProto.FLOAT


def const(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def model(path, nodes, inits, x_shape, y_shape, y_type=F, opset=17, stem=True):
    """x → [1x1 conv "stem" → s] → nodes (reading `s`, or `x` when stem=False) → y."""
    c = x_shape[1]
    inits = list(inits)
    pre = []
    if stem:
        k = len(x_shape) - 2
        inits += [const("stem_w", (RNG.standard_normal((c, c) + (1,) * k) * 0.5).astype(np.float32)), const("stem_b", (RNG.standard_normal(c) * 0.1).astype(np.float32))]
        pre = [helper.make_node("Conv", ["x", "stem_w", "stem_b"], ["s"], name="stem")]
    g = helper.make_graph(pre + nodes, "op", [helper.make_tensor_value_info("x", F, x_shape)], [helper.make_tensor_value_info("y", y_type, y_shape or None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    if y_shape:
        onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    # Samples along a new axis 0, each [1, ...] (or the whole x shape for time-major sequences, stem=False).
    np.save(path.with_suffix(".npy"), RNG.standard_normal((8, *(x_shape[1:] if stem else x_shape))).astype(np.float32))


def resize(mode, coord, nearest="round_prefer_floor", scales=None, sizes=None, out=None):
    ins = ["s", "", "scales" if scales else "", "sizes" if sizes else ""]
    while ins[-1] == "":
        ins.pop()
    inits = ([const("scales", np.array(scales, np.float32))] if scales else []) + ([const("sizes", np.array(sizes, np.int64))] if sizes else [])
    n = helper.make_node("Resize", ins, ["y"], mode=mode, coordinate_transformation_mode=coord, nearest_mode=nearest)
    return [n], inits, [1, 4, 8, 6], out


def pad(mode, pads, value=None):
    ins = ["s", "pads"] + (["value"] if value is not None else [])
    inits = [const("pads", np.array(pads, np.int64))] + ([const("value", np.array(value, np.float32))] if value is not None else [])
    out = [1, 4, 8 + pads[2] + pads[6], 6 + pads[3] + pads[7]]
    return [helper.make_node("Pad", ins, ["y"], mode=mode)], inits, [1, 4, 8, 6], out


def conv_t(**attrs):
    w = const("tw", (RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32))
    b = const("tb", (RNG.standard_normal(3) * 0.1).astype(np.float32))
    return [helper.make_node("ConvTranspose", ["s", "tw", "tb"], ["y"], kernel_shape=[3, 3], **attrs)], [w, b], [1, 4, 5, 6], None


def reduce(op, keep=1, axes=None, **attrs):
    ins = ["s"] + (["axes"] if axes is not None and op == "ReduceSum" else [])
    inits = [const("axes", np.array(axes, np.int64))] if axes is not None and op == "ReduceSum" else []
    if axes is not None and op != "ReduceSum":
        attrs["axes"] = axes
    return [helper.make_node(op, ins, ["y"], keepdims=keep, **attrs)], inits, [1, 4, 8, 6], None


def softmax(axis):
    return [helper.make_node("Softmax", ["s"], ["y"], axis=axis)], [], [1, 4, 8, 6], [1, 4, 8, 6]


CASES = {
    # PyTorch's nn.Upsample(scale_factor=2) (nearest, asymmetric, floor) and F.interpolate variants.
    "resize_nearest_x2": resize("nearest", "asymmetric", "floor", scales=[1, 1, 2, 2], out=[1, 4, 16, 12]),
    "resize_nearest_half_pixel_down": resize("nearest", "half_pixel", scales=[1, 1, 0.5, 0.5], out=[1, 4, 4, 3]),
    "resize_nearest_ceil_gathered": resize("nearest", "half_pixel", "ceil", scales=[1, 1, 2, 2], out=[1, 4, 16, 12]),
    "resize_bilinear_half_pixel": resize("linear", "half_pixel", scales=[1, 1, 2, 2], out=[1, 4, 16, 12]),
    "resize_bilinear_pytorch": resize("linear", "pytorch_half_pixel", sizes=[1, 4, 13, 11], out=[1, 4, 13, 11]),
    "resize_bilinear_align_corners": resize("linear", "align_corners", sizes=[1, 4, 15, 9], out=[1, 4, 15, 9]),
    "resize_bilinear_asymmetric": resize("linear", "asymmetric", scales=[1, 1, 2, 2], out=[1, 4, 16, 12]),
    "pad_zeros": pad("constant", [0, 0, 1, 2, 0, 0, 2, 1]),
    "pad_value": pad("constant", [0, 0, 1, 2, 0, 0, 2, 1], 1.5),
    "pad_reflect": pad("reflect", [0, 0, 2, 1, 0, 0, 1, 2]),
    "pad_edge": pad("edge", [0, 0, 2, 1, 0, 0, 1, 2]),
    "conv_transpose_s2_p1_op1": conv_t(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    "conv_transpose_same": conv_t(strides=[2, 2], auto_pad="SAME_UPPER"),
    "conv_transpose_valid": conv_t(strides=[1, 1]),
    "softmax_channels": softmax(1),
    "softmax_height": softmax(2),
    "softmax_last": softmax(-1),
    "reduce_max_hw": reduce("ReduceMax", 1, [2, 3]),
    "reduce_min_h_dropped": reduce("ReduceMin", 0, [2]),
    "reduce_sum_c_dropped": reduce("ReduceSum", 0, [1]),
    "tile": ([helper.make_node("Tile", ["s", "reps"], ["y"])], [const("reps", np.array([1, 1, 2, 3], np.int64))], [1, 4, 8, 6], [1, 4, 16, 18]),
    "expand": ([helper.make_node("GlobalAveragePool", ["s"], ["g"]), helper.make_node("Expand", ["g", "shape"], ["y"])], [const("shape", np.array([1, 4, 8, 6], np.int64))], [1, 4, 8, 6], [1, 4, 8, 6]),
    "where_leaky": (
        [helper.make_node("Greater", ["s", "zero"], ["pos"]), helper.make_node("Mul", ["s", "tenth"], ["neg"]), helper.make_node("Where", ["pos", "s", "neg"], ["y"])],
        [const("zero", np.array(0, np.float32)), const("tenth", np.array(0.1, np.float32))],
        [1, 4, 8, 6],
        [1, 4, 8, 6],
    ),
    "cast_round_trip": ([helper.make_node("Cast", ["s"], ["i"], to=TensorProto.INT32), helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT)], [], [1, 4, 8, 6], [1, 4, 8, 6]),
    "avgpool_asymmetric": ([helper.make_node("AveragePool", ["s"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0])], [], [1, 4, 8, 6], None),
    "avgpool_include_pad": ([helper.make_node("AveragePool", ["s"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)], [], [1, 4, 8, 6], None),
    "slice_negative_steps": ([helper.make_node("Slice", ["s", "st", "en", "ax", "sp"], ["y"])], [const(n, np.array(v, np.int64)) for n, v in [("st", [-1, 0]), ("en", [-1000, 8]), ("ax", [3, 2]), ("sp", [-1, 2])]], [1, 4, 8, 6], [1, 4, 4, 6]),
    "grouped_conv": ([helper.make_node("Conv", ["s", "gw"], ["y"], group=2, pads=[1, 1, 1, 1], kernel_shape=[3, 3])], [const("gw", (RNG.standard_normal((6, 2, 3, 3)) * 0.3).astype(np.float32))], [1, 4, 8, 6], [1, 6, 8, 6]),
    "conv1d": (
        [
            helper.make_node("Conv", ["s", "w1", "b1"], ["c1"], pads=[1, 1], kernel_shape=[3]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2"], ["y"], strides=[2], kernel_shape=[3]),
        ],
        [const("w1", (RNG.standard_normal((6, 4, 3)) * 0.3).astype(np.float32)), const("b1", np.zeros(6, np.float32)), const("w2", (RNG.standard_normal((5, 6, 3)) * 0.3).astype(np.float32))],
        [1, 4, 16],
        [1, 5, 7],
    ),
    "argmax_keepdims": ([helper.make_node("ArgMax", ["s"], ["y"], axis=1, keepdims=1)], [], [1, 4, 8, 6], [1, 1, 8, 6]),
}
def rnn(op, direction="forward", state=True, out="Y", **attrs):
    """A recurrent layer over x [T=6, B=1, I=4] (no stem): a non-zero initial state forces the unrolled
    lowering; `out` picks the output the graph returns (Y, Y_h or Y_c)."""
    d = 2 if direction == "bidirectional" else 1
    g, h = (4 if op == "LSTM" else 3), 5
    inits = [const("W", (RNG.standard_normal((d, g * h, 4)) * 0.4).astype(np.float32)), const("R", (RNG.standard_normal((d, g * h, h)) * 0.4).astype(np.float32)), const("B", (RNG.standard_normal((d, 2 * g * h)) * 0.1).astype(np.float32))]
    ins = ["x", "W", "R", "B", ""]
    if state:
        inits.append(const("h0", (RNG.standard_normal((d, 1, h)) * 0.5).astype(np.float32)))
        ins.append("h0")
        if op == "LSTM":
            inits.append(const("c0", (RNG.standard_normal((d, 1, h)) * 0.5).astype(np.float32)))
            ins.append("c0")
    outs = {"Y": ["y", "", ""], "Y_h": ["", "y", ""], "Y_c": ["", "", "y"]}[out][: 3 if op == "LSTM" else 2]
    shape = [6, d, 1, h] if out == "Y" else [d, 1, h]
    return [helper.make_node(op, ins, outs, hidden_size=h, direction=direction, **attrs)], inits, [6, 1, 4], shape


CASES.update({
    "gru_state_y": rnn("GRU", linear_before_reset=1),
    "gru_lbr0_reverse_yh": rnn("GRU", "reverse", out="Y_h"),
    "gru_bidirectional": rnn("GRU", "bidirectional", linear_before_reset=1),
    "lstm_state_y": rnn("LSTM"),
    "lstm_yc": rnn("LSTM", out="Y_c"),
    "lstm_bidirectional_yh": rnn("LSTM", "bidirectional", out="Y_h"),
})
# Detection heads on a channel-last map: torchvision's RetinaNet/FCOS/SSD view(N, A, K, H, W)
# .permute(0, 3, 4, 1, 2).reshape(N, -1, K) (no transpose left), and YOLOv5's view(N, A, K, H, W)
# .permute(0, 1, 3, 4, 2) (the model's transpose, composed).
def head(perm, out):
    shape5 = [1, 2, 2, 8, 6]
    nodes = [helper.make_node("Reshape", ["s", "v5"], ["h5"]), helper.make_node("Transpose", ["h5"], ["hp"], perm=perm), helper.make_node("Reshape", ["hp", "vout"], ["y"])]
    return nodes, [const("v5", np.array(shape5, np.int64)), const("vout", np.array(out, np.int64))], [1, 4, 8, 6], out


CASES.update({
    "retinanet_head": head([0, 3, 4, 1, 2], [1, 96, 2]),
    "yolov5_head": head([0, 1, 3, 4, 2], [1, 96, 2]),
})
# Pre-11 upsampling (asymmetric coordinates; nearest truncates when enlarging): Upsample at opset 9, Resize at 10.
CASES.update({
    "upsample_opset9_nearest": ([helper.make_node("Upsample", ["s", "scales"], ["y"], mode="nearest")], [const("scales", np.array([1, 1, 2, 3], np.float32))], [1, 4, 8, 6], [1, 4, 16, 18]),
    "upsample_opset9_linear": ([helper.make_node("Upsample", ["s", "scales"], ["y"], mode="linear")], [const("scales", np.array([1, 1, 2, 2], np.float32))], [1, 4, 8, 6], [1, 4, 16, 12]),
    "resize_opset10_nearest": ([helper.make_node("Resize", ["s", "scales"], ["y"], mode="nearest")], [const("scales", np.array([1, 1, 2, 2], np.float32))], [1, 4, 8, 6], [1, 4, 16, 12]),
})
OPSET = {"upsample_opset9_nearest": 9, "upsample_opset9_linear": 9, "resize_opset10_nearest": 10}
NO_STEM = {k for k in CASES if k.startswith(("gru_", "lstm_"))}
INT_OUTPUT = {"argmax_keepdims"}
# int8 builds (QDQ twin vs LiteRT) for the ops whose int8 rules matter.
INT8 = {"resize_nearest_x2", "resize_bilinear_half_pixel", "pad_zeros", "pad_reflect", "tile", "grouped_conv", "conv1d", "softmax_channels"}


def infer_out(path):
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    return [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_lowers_and_matches_onnxruntime(tmp_path, case):
    nodes, inits, x_shape, y_shape = CASES[case]
    path = tmp_path / f"{case}.onnx"
    y_type = TensorProto.INT64 if case in INT_OUTPUT else F
    stem = case not in NO_STEM
    opset = OPSET.get(case, 17)
    model(path, nodes, inits, x_shape, y_shape, y_type, opset=opset, stem=stem)
    if y_shape is None:  # let onnx infer the output shape, then write it
        model(path, nodes, inits, x_shape, infer_out(path), y_type, opset=opset, stem=stem)
    p = Project(tmp_path / "w")
    targets = [{"name": "fp32", "backend": "tflite", "precision": "fp32"}]
    if case in INT8:
        targets.append({"name": "int8", "backend": "tflite", "precision": "int8"})
    p.build({"model": path, "passes": ["cleanup", "fuse"], "calibration": {"tensors": path.with_suffix(".npy"), "method": "minmax"}, "targets": targets, "output": "out"})
    x = np.load(path.with_suffix(".npy"))
    feeds = [{"x": x[i : i + 1] if stem else x[i]} for i in range(len(x))]
    ref = [r[0] for r in run_artifact(path, feeds, exact=False)]
    got = [g[0] for g in run_artifact(p.root / "out" / "fp32" / "model.tflite", feeds)]
    for r, g in zip(ref, got):
        assert r.shape == g.shape, (r.shape, g.shape)
        if case in INT_OUTPUT:
            assert np.array_equal(r, g)
        else:
            assert np.abs(r - g).max() <= 1e-4 * max(np.abs(r).max(), 1e-6), (case, np.abs(r - g).max())
    if case in INT8:
        twin = [t[0] for t in run_artifact(p.root / "out" / "int8" / "model.qdq.onnx", feeds, exact=True)]
        q = [g[0] for g in run_artifact(p.root / "out" / "int8" / "model.tflite", feeds)]
        c = cosine(np.concatenate([t.ravel() for t in twin]), np.concatenate([v.ravel() for v in q]))
        assert c >= 0.99, (case, c)


def test_unexpressible_resize_is_refused_by_name(tmp_path):
    """Cubic sampling has no TFLite op: the tflite target fails naming the node and the mode; onnx builds."""
    nodes = [helper.make_node("Resize", ["s", "", "scales"], ["y"], name="the_cubic_resize", mode="cubic")]
    path = tmp_path / "cubic.onnx"
    model(path, nodes, [const("scales", np.array([1, 1, 2, 2], np.float32))], [1, 4, 8, 6], [1, 4, 16, 12])
    p = Project(tmp_path / "w")
    r = p.build({"model": path, "targets": [{"name": "t", "backend": "tflite", "precision": "fp32"}, {"name": "o", "backend": "onnx", "precision": "fp32"}], "output": "out"}, check=False)
    assert r.returncode != 0 and "the_cubic_resize" in r.stderr and "cubic" in r.stderr, r.stderr
    assert (p.root / "out" / "o" / "model.onnx").exists() and not (p.root / "out" / "t" / "model.tflite").exists()


@pytest.mark.parametrize("case,transposes", [("retinanet_head", 0), ("yolov5_head", 1)])
def test_detection_heads_keep_the_map_channel_last(tmp_path, case, transposes):
    """The split of a channel-last map's channels becomes a RESHAPE: RetinaNet/FCOS/SSD heads need no
    TRANSPOSE at all, YOLOv5's keeps only its own (composed with the layout)."""
    from tflite_oracle import op_names

    nodes, inits, x_shape, y_shape = CASES[case]
    path = tmp_path / f"{case}.onnx"
    model(path, nodes, inits, x_shape, y_shape)
    p = Project(tmp_path / "w")
    p.build({"model": path, "passes": ["cleanup", "fuse"], "targets": [{"name": "fp32", "backend": "tflite", "precision": "fp32"}], "output": "out"})
    assert op_names(p.root / "out" / "fp32" / "model.tflite").count("TRANSPOSE") == transposes


def test_grouped_conv_split_for_the_edge_tpu_resnext_style(tmp_path):
    """A ResNeXt-style bottleneck (1x1, 3x3 with 4 groups, 1x1) for the Edge TPU, whose compiler has no
    grouped CONV_2D: the grouped conv goes group by group, everything maps to the TPU, and the int8 artifact
    matches the QDQ twin it was lowered from, executed as written."""
    from tflite_oracle import op_names

    w = lambda *s: (RNG.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["s", "w1"], ["a"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "w2", "b2"], ["g"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=4),
        helper.make_node("Relu", ["g"], ["gr"]),
        helper.make_node("Conv", ["gr", "w3"], ["y"], kernel_shape=[1, 1]),
    ]
    inits = [const("w1", w(16, 4, 1, 1)), const("w2", w(16, 4, 3, 3)), const("b2", w(16)), const("w3", w(4, 16, 1, 1))]
    path = tmp_path / "resnext.onnx"
    model(path, nodes, inits, [1, 4, 8, 6], [1, 4, 8, 6])
    p = Project(tmp_path / "w")
    targets = [{"name": "tpu", "backend": "npu", "precision": "int8", "device": "edgetpu"}, {"name": "int8", "backend": "tflite", "precision": "int8"}]
    p.build({"model": path, "passes": ["cleanup", "fuse"], "calibration": {"tensors": path.with_suffix(".npy"), "method": "minmax"}, "targets": targets, "output": "out"})
    out = p.root / "out"
    r = json.loads((out / "tpu" / "partition.json").read_text())
    assert r["ops_on_npu"] == r["ops_total"], r["fallback_point"]
    assert op_names(out / "tpu" / "model.tflite").count("CONV_2D") == 3 + 4  # stem, two 1x1, four groups
    x = np.load(path.with_suffix(".npy"))
    feeds = [{"x": x[i : i + 1]} for i in range(len(x))]
    twin = np.concatenate([t[0].ravel() for t in run_artifact(out / "int8" / "model.qdq.onnx", feeds, exact=True)])
    got = np.concatenate([g[0].ravel() for g in run_artifact(out / "tpu" / "model.tflite", feeds)])
    assert cosine(twin, got) >= 0.99, cosine(twin, got)
