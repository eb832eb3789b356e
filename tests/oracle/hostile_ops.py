"""Hostile single-op models: attributes and constant inputs the ONNX spec forbids, and sizes no machine
should be asked to build. Each case is one node named `bad`, reading `x` (float32) and constant inputs
(initializers), writing `y`. The case says which word its error must name (the attribute or input at
fault). tests/oracle/test_hostile_ops.py runs every case through every kiln command.

    python tests/oracle/hostile_ops.py OUT_DIR     # writes OUT_DIR/<case>.onnx, <case>.npy and cases.json
"""
import json
import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

X4 = [1, 4, 8, 8]  # NCHW activation most cases read


def _model(op, attrs=None, consts=(), x_shape=X4, y_shape=None, opset=17, x_dtype=TensorProto.FLOAT):
    """One node `bad`: inputs x then the named constants (None leaves an optional input empty)."""
    inits, names = [], ["x"]
    for name, value in consts:
        if value is None:
            names.append("")
            continue
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        names.append(name)
    node = helper.make_node(op, names, ["y"], name="bad", **(attrs or {}))
    x = helper.make_tensor_value_info("x", x_dtype, x_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)
    g = helper.make_graph([node], f"hostile_{op}", [x], [y], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _conv(**attrs):
    w = np.ones([4, 4 // attrs.get("group", 1) if attrs.get("group", 1) > 0 else 4, 3, 3], np.float32)
    return _model("Conv", attrs, [("w", w)])


def _i64(v):
    return np.array(v, np.int64)


def cases():
    """(case name, model, the word its error must contain)."""
    big = 1 << 31
    c = [
        # Conv: zero or negative strides, dilations, kernels; groups; pads; attribute lengths.
        ("conv_stride_zero", _conv(kernel_shape=[3, 3], strides=[0, 1]), "strides"),
        ("conv_stride_negative", _conv(kernel_shape=[3, 3], strides=[-1, 1]), "strides"),
        ("conv_dilation_zero", _conv(kernel_shape=[3, 3], dilations=[0, 1]), "dilations"),
        ("conv_kernel_zero", _conv(kernel_shape=[0, 3]), "kernel_shape"),
        ("conv_group_zero", _model("Conv", {"group": 0}, [("w", np.ones([4, 4, 3, 3], np.float32))]), "group"),
        ("conv_group_not_dividing", _model("Conv", {"group": 3}, [("w", np.ones([3, 1, 3, 3], np.float32))]), "group"),
        ("conv_pads_negative", _conv(kernel_shape=[3, 3], pads=[-1, 0, 0, 0]), "pads"),
        ("conv_strides_wrong_length", _conv(kernel_shape=[3, 3], strides=[1, 1, 1]), "strides"),
        # Pools.
        ("maxpool_stride_zero", _model("MaxPool", {"kernel_shape": [2, 2], "strides": [0, 0]}), "strides"),
        ("maxpool_kernel_zero", _model("MaxPool", {"kernel_shape": [0, 2]}), "kernel_shape"),
        ("maxpool_kernel_huge", _model("MaxPool", {"kernel_shape": [(1 << 63) - 1, 2]}), "kernel_shape"),
        ("conv_kernel_past_the_input", _model("Conv", {}, [("w", np.ones([4, 4, 9, 9], np.float32))]), "kernel_shape"),
        ("maxpool_generic_pads_huge", _model("MaxPool", {"kernel_shape": [2, 2], "pads": [(1 << 63) - 1, 0, 0, 0], "axis": 0}), "pads"),
        ("maxpool_no_kernel", _model("MaxPool", {"strides": [1, 1]}), "kernel_shape"),
        ("maxpool_dilation_negative", _model("MaxPool", {"kernel_shape": [2, 2], "dilations": [-1, 1]}), "dilations"),
        ("avgpool_stride_zero", _model("AveragePool", {"kernel_shape": [2, 2], "strides": [1, 0]}), "strides"),
        ("avgpool_rank2_input", _model("AveragePool", {"kernel_shape": [2]}, x_shape=[4, 4]), "rank"),
        ("avgpool_kernel_empty", _empty_kernel(), "kernel_shape"),
        ("global_pool_rank2_input", _model("GlobalMaxPool", x_shape=[4, 4]), "rank"),
        ("avgpool_pads_negative", _model("AveragePool", {"kernel_shape": [2, 2], "pads": [0, -2, 0, 0]}), "pads"),
        # Slice.
        ("slice_step_zero", _model("Slice", consts=[("starts", _i64([0])), ("ends", _i64([4])), ("axes", _i64([1])), ("steps", _i64([0]))]), "steps"),
        ("slice_axis_out_of_range", _model("Slice", consts=[("starts", _i64([0])), ("ends", _i64([4])), ("axes", _i64([7]))]), "axes"),
        ("slice_axis_repeated", _model("Slice", consts=[("starts", _i64([0, 0])), ("ends", _i64([2, 2])), ("axes", _i64([1, 1]))]), "axes"),
        # Gather.
        ("gather_index_out_of_range", _model("Gather", {"axis": 1}, [("idx", _i64([0, 9]))]), "indices"),
        ("gather_negative_index_out_of_range", _model("Gather", {"axis": 1}, [("idx", _i64([-5]))]), "indices"),
        ("gather_axis_out_of_range", _model("Gather", {"axis": 4}, [("idx", _i64([0]))]), "axis"),
        ("gather_elements_axis_out_of_range", _model("GatherElements", {"axis": -5}, [("idx", np.zeros(X4, np.int64))]), "axis"),
        # Transpose.
        ("transpose_perm_repeated", _model("Transpose", {"perm": [0, 1, 1, 3]}), "perm"),
        ("transpose_generic_perm_repeated", _model("Transpose", {"perm": [0, 0, 0, 0], "shape": [1]}), "perm"),
        ("transpose_perm_out_of_range", _model("Transpose", {"perm": [0, 1, 2, 9]}), "perm"),
        ("transpose_perm_short", _model("Transpose", {"perm": [0, 1]}), "perm"),
        ("transpose_perm_negative", _model("Transpose", {"perm": [0, -1, 2, 3]}), "perm"),
        # Split.
        ("split_sizes_do_not_sum", _model("Split", {"axis": 1}, [("split", _i64([1, 1]))]), "split"),
        ("split_size_negative", _model("Split", {"axis": 1}, [("split", _i64([6, -2]))]), "split"),
        ("split_axis_out_of_range", _model("Split", {"axis": 6}, [("split", _i64([2, 2]))]), "axis"),
        # Concat.
        ("concat_axis_out_of_range", _model("Concat", {"axis": 4}), "axis"),
        ("concat_axis_negative_out_of_range", _model("Concat", {"axis": -9}), "axis"),
        # Reshape.
        ("reshape_two_unknown_dims", _model("Reshape", consts=[("shape", _i64([-1, -1]))]), "shape"),
        ("reshape_shape_missing", _model("Reshape", consts=[("shape", None), ("extra", _i64([4, 16]))]), "at most 2"),
        ("reshape_shape_not_1d", _model("Reshape", consts=[("shape", np.zeros([4, 0], np.int64))], x_shape=[1]), "shape"),
        ("reshape_wrong_element_count", _model("Reshape", consts=[("shape", _i64([3, 7]))]), "shape"),
        ("reshape_negative_dim", _model("Reshape", consts=[("shape", _i64([-4, 64]))]), "shape"),
        # Resize.
        ("resize_scale_zero", _model("Resize", {"mode": "nearest"}, [("roi", None), ("scales", np.array([1, 1, 0, 2], np.float32))]), "scales"),
        ("resize_scale_negative", _model("Resize", {"mode": "nearest"}, [("roi", None), ("scales", np.array([1, 1, -2, 2], np.float32))]), "scales"),
        ("resize_sizes_huge", _model("Resize", {"mode": "nearest"}, [("roi", None), ("scales", None), ("sizes", _i64([1, 4, big, big]))]), "sizes"),
        ("resize_scales_huge", _model("Resize", {"mode": "nearest"}, [("roi", None), ("scales", np.array([1, 1, 1e9, 1e9], np.float32))]), "scales"),
        ("resize_scales_vanishing", _model("Resize", {"mode": "nearest"}, [("roi", None), ("scales", np.array([1e-30, 1, 1e9, 2], np.float32))]), "scales"),
        # Pad.
        ("pad_huge", _model("Pad", consts=[("pads", _i64([0, 0, 0, 0, 0, 0, big, big]))]), "pads"),
        ("pad_huge_negative", _model("Pad", consts=[("pads", _i64([0, 0, -(1 << 62), 0, 0, 0, 0, 0]))]), "pads"),
        # Expand.
        ("expand_huge", _model("Expand", consts=[("shape", _i64([big, 4, big, 8]))]), "shape"),
        ("expand_negative", _model("Expand", consts=[("shape", _i64([1, 4, -8, 8]))]), "shape"),
        # Tile.
        ("tile_huge", _model("Tile", consts=[("repeats", _i64([1 << 15, 1 << 15, 1 << 15, 1 << 15]))]), "repeats"),
        ("tile_negative", _model("Tile", consts=[("repeats", _i64([1, -1, 1, 1]))]), "repeats"),
        ("tile_float_repeats", _model("Tile", consts=[("repeats", np.array([1, 2, 1, 1], np.float32))]), "repeats"),
        ("tile_wrong_length", _model("Tile", consts=[("repeats", _i64([2, 2]))]), "repeats"),
        # An empty input tiled 2^63 times (tract loops; found by the graph fuzz target).
        ("tile_empty_huge_repeats", _model("Tile", consts=[("repeats", _i64([1, 1, (1 << 63) - 1, (1 << 63) - 1]))], x_shape=[5, 0, 0, 0]), "repeats"),
        # One past the rank is valid only for ops that insert an axis (found by the graph fuzz target).
        ("layernorm_axis_one_past_rank", _model("LayerNormalization", {"axis": -5}, consts=[("scale", np.ones(8, np.float32))]), "axis"),
        # Depth within bound, but the indices times depth past it (found by the graph fuzz target).
        ("onehot_huge_output", _model("OneHot", consts=[("depth", np.array(1 << 25, np.int64)), ("values", np.array([0, 1], np.float32))], x_shape=[5, 6, 1, 2]), "depth"),
        # A transposed convolution whose stride asks for 2^31 elements (found by the graph fuzz target).
        ("conv_transpose_huge_stride", _model("ConvTranspose", {"strides": [1 << 26], "auto_pad": "SAME_LOWER"},
                                              consts=[("W", np.zeros((2, 3, 1), np.float32))], x_shape=[3, 2, 5]), "strides"),
        ("conv_transpose_huge_output_shape", _model("ConvTranspose", {"output_shape": [1 << 20, 1 << 20]},
                                                    consts=[("W", np.zeros((4, 2, 1, 1), np.float32))]), "output_shape"),
        # Empty result, but tiling axis by axis passes through 2^29 elements (found by the graph fuzz target).
        ("tile_zero_after_huge", _model("Tile", consts=[("repeats", _i64([1 << 21, 4, 0, 0]))], x_shape=[4, 4, 6, 3]), "repeats"),
        # ConstantOfShape (reads its shape from x: an int64 input here, made a constant).
        ("constant_of_shape_huge", _cos([big, big]), "shape"),
        ("constant_of_shape_negative", _cos([4, -1]), "shape"),
        # Range.
        ("range_delta_zero", _range(0.0, 10.0, 0.0), "delta"),
        ("range_huge", _range(0.0, 1e15, 1.0), "Range"),
        # Inputs the spec defines as one value.
        ("onehot_depth_empty", _model("OneHot", consts=[("depth", np.zeros([0], np.float32)), ("values", np.array([0, 1], np.float32))], x_shape=[5, 5, 3]), "depth"),
        ("topk_k_past_the_axis", _model("TopK", consts=[("K", _i64([9]))]), "K"),
        # Axes elsewhere.
        ("softmax_axis_out_of_range", _model("Softmax", {"axis": 4}), "axis"),
        ("flatten_axis_out_of_range", _model("Flatten", {"axis": 9}), "axis"),
        ("squeeze_axis_out_of_range", _model("Squeeze", consts=[("axes", _i64([5]))]), "axes"),
        ("unsqueeze_axis_repeated", _model("Unsqueeze", consts=[("axes", _i64([0, 0]))]), "axes"),
        ("reducemean_axis_out_of_range", _model("ReduceMean", {"axes": [8]}, opset=13), "axes"),
        ("layernorm_axis_huge", _model("LayerNormalization", {"axis": -(1 << 63)}, [("scale", np.ones([8], np.float32))]), "axis"),
        ("layernorm_scale_empty", _model("LayerNormalization", consts=[("scale", np.zeros([0, 0], np.float32))], x_shape=[3]), "Scale"),
        ("batchnorm_params_wrong_size", _model("BatchNormalization", consts=[(n, np.ones([3], np.float32)) for n in ["s", "b", "m", "v"]]), "scale"),
        ("mean_inputs_do_not_broadcast", _model("Mean", consts=[("a", np.zeros([0, 0], np.float32)), ("b", None)]), "broadcast"),
        ("div_inputs_do_not_broadcast", _model("Div", {"axes": [1]}, [("c", np.zeros([0, 3, 3, 2], np.float32))]), "broadcast"),
        ("axis_huge_after_nonzero", _nonzero_then("LayerNormalization", {"axis": (1 << 63) - 1}), "axis"),
        ("argmax_axis_out_of_range", _model("ArgMax", {"axis": 4}), "axis"),
        ("depth_to_space_blocksize_zero", _model("DepthToSpace", {"blocksize": 0}), "blocksize"),
        # Recurrent layers whose weights do not fit hidden_size (the unrolled TFLite lowering reads them).
        ("gru_weights_do_not_fit", _model("GRU", {"hidden_size": 5}, [("W", np.ones([1, 15, 3], np.float32)), ("R", np.ones([1, 15, 5], np.float32))], x_shape=[6, 1, 4]), "W"),
        ("lstm_hidden_size_zero", _model("LSTM", {"hidden_size": 0}, [("W", np.ones([1, 0, 4], np.float32)), ("R", np.ones([1, 0, 0], np.float32))], x_shape=[6, 1, 4]), "hidden"),
        ("convtranspose_stride_zero", _model("ConvTranspose", {"strides": [0, 1]}, [("w", np.ones([4, 2, 3, 3], np.float32))]), "strides"),
        ("resize_to_nothing", _model("Resize", consts=[("roi", None), ("scales", np.array([1, 1, 0.01, 0.01], np.float32))]), "scales"),
    ]
    return c


def _empty_kernel():
    """AveragePool with `kernel_shape = []` (onnx.helper cannot infer an empty list's type)."""
    m = _model("AveragePool", {"kernel_shape": [2, 2]})
    a = m.graph.node[0].attribute[0]
    del a.ints[:]
    return m


def _nonzero_then(op, attrs):
    """NonZero (a data-dependent output) feeding `op` (named `bad`): the rank is known, the dims are not."""
    nz = helper.make_node("NonZero", ["x"], ["nz"], name="nz")
    cast = helper.make_node("Cast", ["nz"], ["nzf"], name="cast", to=TensorProto.FLOAT)
    bad = helper.make_node(op, ["nzf", "scale"], ["y"], name="bad", **attrs)
    g = helper.make_graph([nz, cast, bad], f"hostile_{op}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(np.ones([1], np.float32), "scale")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _cos(shape):
    """ConstantOfShape of a constant `shape`, added to x so the graph keeps one float input."""
    shape_init = numpy_helper.from_array(np.array(shape, np.int64), "shape")
    cos = helper.make_node("ConstantOfShape", ["shape"], ["c"], name="bad",
                           value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    add = helper.make_node("Add", ["x", "c"], ["y"], name="add")
    g = helper.make_graph([cos, add], "hostile_ConstantOfShape",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[shape_init])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _range(start, limit, delta):
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
             [("start", start), ("limit", limit), ("delta", delta)]]
    r = helper.make_node("Range", ["start", "limit", "delta"], ["r"], name="bad")
    add = helper.make_node("Add", ["x", "r"], ["y"], name="add")
    g = helper.make_graph([r, add], "hostile_Range",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def write(out):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {}
    for name, model, word in cases():
        onnx.save(model, out / f"{name}.onnx")
        x = model.graph.input[0]
        dims = [d.dim_value for d in x.type.tensor_type.shape.dim]
        np.save(out / f"{name}.npy", np.random.default_rng(0).standard_normal(dims).astype(np.float32))
        meta[name] = {"word": word, "input": x.name, "dims": dims}
    (out / "cases.json").write_text(json.dumps(meta, indent=1))
    return meta


if __name__ == "__main__":
    meta = write(sys.argv[1] if len(sys.argv) > 1 else "hostile_ops")
    print(f"{len(meta)} cases")
