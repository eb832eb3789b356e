"""The vulkan backend (issue 14) on Mesa lavapipe with the Khronos validation layer on (vulkan_oracle):

- every SPIR-V module of every bundle passes `spirv-val --target-env vulkan1.1`;
- per-op conformance against onnxruntime on generated single-op models with awkward shapes (channel counts not
  multiples of 4, odd spatial sizes, batch 2, every stride/pad/group/dilation the shared CNNs use): fp32 within
  1e-4 × max|ref|; fp16 within 1e-2 × max|ref| of onnxruntime run with fp16-rounded weights and inputs;
- an op without a kernel fails the target by name;
- the bundle's memory plan: arena ≤ 1.25 × the peak of simultaneously live activations (report.json).
Whole shared models are in test_vulkan_models.py."""
import json
import pathlib
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln_oracle import Project, session
from vulkan_oracle import lavapipe, spirv_val, vk_run

pytestmark = pytest.mark.skipif(lavapipe() is not None, reason=f"vulkan tier: {lavapipe()}")

RNG = np.random.default_rng(14)
F = TensorProto.FLOAT


def c(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def w(*shape, s=0.3):
    return (RNG.standard_normal(shape) * s).astype(np.float32)


def conv(x, cout, k, cin=None, group=1, bias=True, **attrs):
    """(shape of x, nodes, inits) for one Conv."""
    cin = cin or x[1]
    ks = [k] * (len(x) - 2)
    inits = [c("W", w(cout, cin // group, *ks))] + ([c("B", w(cout, s=0.1))] if bias else [])
    node = helper.make_node("Conv", ["x", "W"] + (["B"] if bias else []), ["y"], kernel_shape=ks, group=group, **attrs)
    return x, [node], inits


def op(x, op_type, inputs=(), inits=(), x_dtype=F, **attrs):
    node = helper.make_node(op_type, ["x", *inputs], ["y"], **attrs)
    return x, [node], list(inits)


def two(x, y_shape, op_type):
    """Binary op with a constant second operand of y_shape (broadcast)."""
    return op(x, op_type, ["b"], [c("b", w(*y_shape, s=1.0) + (2.0 if op_type in ("Div", "Pow") else 0.0))])


CASES = {
    # Convolutions: the shared CNNs' strides, pads, groups, dilations, with awkward shapes and batch 2.
    "conv3x3_s1_p1": conv([2, 3, 9, 7], 5, 3, pads=[1, 1, 1, 1]),
    "conv3x3_s2_p1_odd": conv([2, 5, 11, 9], 7, 3, strides=[2, 2], pads=[1, 1, 1, 1]),
    "conv1x1_nobias": conv([2, 7, 5, 3], 11, 1, bias=False),
    "conv1x1_vec4_pixels": conv([2, 7, 4, 6], 11, 1),
    # Planes large enough for the workgroup-mapped kernels (pointwise by 8 channels, depthwise rows).
    "conv1x1_large_plane": conv([2, 9, 20, 21], 13, 1),
    "conv_depthwise_large_plane": conv([2, 5, 33, 40], 5, 3, group=5, pads=[1, 1, 1, 1]),
    "conv1x1_vec4_residual": (
        [1, 6, 4, 4],
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[1, 1]), helper.make_node("Add", ["c", "x"], ["y"])],
        [c("W", w(6, 6, 1, 1)), c("B", w(6, s=0.1))],
    ),
    "conv_depthwise_s2": conv([2, 6, 9, 9], 6, 3, group=6, strides=[2, 2], pads=[1, 1, 1, 1]),
    "conv_depthwise5x5": conv([1, 10, 9, 7], 10, 5, group=10, pads=[2, 2, 2, 2]),
    "conv_depthwise_mult2": conv([1, 3, 7, 7], 6, 3, group=3, pads=[1, 1, 1, 1]),
    "conv_grouped": conv([2, 6, 7, 9], 9, 3, group=3, pads=[1, 1, 1, 1]),
    "conv_dilated": conv([1, 5, 13, 11], 3, 3, dilations=[2, 2], pads=[2, 2, 2, 2]),
    "conv_asym_pads": conv([1, 3, 8, 8], 5, 3, strides=[2, 2], pads=[0, 0, 1, 1]),
    "conv_same_upper": conv([1, 3, 9, 10], 5, 3, strides=[2, 2], auto_pad="SAME_UPPER"),
    "conv7x7_s2_p3": conv([1, 3, 23, 21], 8, 7, strides=[2, 2], pads=[3, 3, 3, 3]),
    "conv1d": conv([2, 5, 17], 6, 3, strides=[2], pads=[1, 1]),
    "conv_grouped_blocked": conv([1, 8, 7, 5], 16, 3, group=2, pads=[1, 1, 1, 1]),
    # A residual Add fused into the convolution's kernel, its Relu after the sum.
    "conv_residual_add_relu": (
        [2, 6, 5, 7],
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
        [c("W", w(6, 6, 3, 3)), c("B", w(6, s=0.1))],
    ),
    # Matrix products.
    "gemm_transb_bias": op([2, 13], "Gemm", ["W", "B"], [c("W", w(7, 13)), c("B", w(7))], transB=1),
    "gemm_alpha_beta": op([3, 5], "Gemm", ["W", "B"], [c("W", w(5, 9)), c("B", w(3, 9))], alpha=0.5, beta=2.0),
    "gemm_transa": op([5, 3], "Gemm", ["W"], [c("W", w(5, 6))], transA=1),
    "matmul_3d_2d": op([2, 5, 12], "MatMul", ["W"], [c("W", w(12, 10))]),
    "matmul_1d": op([7], "MatMul", ["W"], [c("W", w(7, 3))]),
    # Pools.
    "maxpool_s2_p1": op([2, 5, 9, 11], "MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "maxpool_ceil": op([1, 3, 14, 13], "MaxPool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "avgpool_pad_excl": op([1, 5, 7, 9], "AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "avgpool_pad_incl": op([1, 5, 7, 9], "AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
    "global_avgpool": op([2, 7, 5, 3], "GlobalAveragePool"),
    "global_maxpool": op([2, 7, 5, 3], "GlobalMaxPool"),
    # Element-wise, broadcasting, activations.
    "add_channel_bcast": two([2, 5, 4, 3], [5, 1, 1], "Add"),
    "mul_se_bcast": two([2, 5, 4, 3], [2, 5, 1, 1], "Mul"),
    "sub_row_bcast": two([3, 7], [7], "Sub"),
    "div": two([2, 3, 5], [3, 1], "Div"),
    "relu": op([2, 5, 3, 3], "Relu"),
    "clip6": op([2, 5, 3, 3], "Clip", ["lo", "hi"], [c("lo", np.float32(0)), c("hi", np.float32(6))]),
    "sigmoid": op([2, 5, 3, 3], "Sigmoid"),
    "tanh": op([2, 5, 3, 3], "Tanh"),
    "hardswish": op([2, 5, 3, 3], "HardSwish"),
    "hardsigmoid": op([2, 5, 3, 3], "HardSigmoid", alpha=1 / 6, beta=0.5),
    "leakyrelu": op([2, 5, 3, 3], "LeakyRelu", alpha=0.1),
    "erf": op([3, 11], "Erf"),
    "exp": op([3, 11], "Exp"),
    "neg": op([3, 11], "Neg"),
    # Data movement.
    "concat3": (([1, 3, 5, 7]), [helper.make_node("Concat", ["x", "k1", "x"], ["y"], axis=1)], [c("k1", w(1, 2, 5, 7))]),
    "transpose_nhwc": op([2, 3, 5, 7], "Transpose", perm=[0, 2, 3, 1]),
    "channel_shuffle": (
        [1, 6, 3, 5],
        [
            helper.make_node("Reshape", ["x", "s1"], ["r1"]),
            helper.make_node("Transpose", ["r1"], ["t"], perm=[0, 2, 1, 3, 4]),
            helper.make_node("Reshape", ["t", "s2"], ["y"]),
        ],
        [c("s1", np.array([1, 2, 3, 3, 5], np.int64)), c("s2", np.array([1, 6, 3, 5], np.int64))],
    ),
    "flatten": op([2, 3, 5, 7], "Flatten", axis=1),
    # ShuffleNet's unit: a Split whose pieces are views, a branch written straight into the Concat's
    # output, the other piece copied there, then the channel shuffle.
    "split_branch_concat_shuffle": (
        [1, 6, 4, 4],
        [
            helper.make_node("Split", ["x", "sp"], ["a", "b"], axis=1),
            helper.make_node("Conv", ["b", "W", "B"], ["cb"], kernel_shape=[1, 1]),
            helper.make_node("Relu", ["cb"], ["r"]),
            helper.make_node("Conv", ["r", "W2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=3),
            helper.make_node("Concat", ["a", "c2"], ["cat"], axis=1),
            helper.make_node("Reshape", ["cat", "s1"], ["r1"]),
            helper.make_node("Transpose", ["r1"], ["t"], perm=[0, 2, 1, 3, 4]),
            helper.make_node("Reshape", ["t", "s2"], ["y"]),
        ],
        [c("sp", np.array([3, 3], np.int64)), c("W", w(3, 3, 1, 1)), c("B", w(3, s=0.1)), c("W2", w(3, 1, 3, 3)), c("s1", np.array([1, 2, 3, 4, 4], np.int64)), c("s2", np.array([1, 6, 4, 4], np.int64))],
    ),
    "split": ([2, 7, 5], [helper.make_node("Split", ["x", "sp"], ["y", "z"], axis=1)], [c("sp", np.array([3, 4], np.int64))]),
    "slice_steps": op([2, 9, 11], "Slice", ["st", "en", "ax", "sp"], [c("st", np.array([1, -2], np.int64)), c("en", np.array([9, 0], np.int64)), c("ax", np.array([1, 2], np.int64)), c("sp", np.array([2, -3], np.int64))]),
    "pad_constant": op([1, 3, 5, 7], "Pad", ["p", "v"], [c("p", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)), c("v", np.float32(0.5))]),
    "pad_reflect": op([1, 3, 5, 7], "Pad", ["p"], [c("p", np.array([0, 0, 2, 1, 0, 0, 1, 2], np.int64))], mode="reflect"),
    "pad_edge": op([1, 3, 5, 7], "Pad", ["p"], [c("p", np.array([0, 0, 2, 1, 0, 0, 1, 2], np.int64))], mode="edge"),
    "resize_nearest_x2": op([1, 3, 5, 7], "Resize", ["", "sc"], [c("sc", np.array([1, 1, 2, 2], np.float32))], mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    "resize_bilinear_half_pixel": op([1, 3, 5, 7], "Resize", ["", "sc"], [c("sc", np.array([1, 1, 2, 2], np.float32))], mode="linear", coordinate_transformation_mode="half_pixel"),
    "resize_bilinear_align_corners": op([1, 3, 5, 7], "Resize", ["", "", "sz"], [c("sz", np.array([1, 3, 9, 12], np.int64))], mode="linear", coordinate_transformation_mode="align_corners"),
    "resize_nearest_pytorch_sizes": op([1, 3, 6, 6], "Resize", ["", "", "sz"], [c("sz", np.array([1, 3, 9, 15], np.int64))], mode="nearest", coordinate_transformation_mode="pytorch_half_pixel", nearest_mode="round_prefer_ceil"),
    # Normalization, softmax, reductions, gather.
    "softmax_last": op([2, 3, 7], "Softmax", axis=-1),
    "softmax_axis1": op([2, 5, 3], "Softmax", axis=1),
    "layernorm": op([2, 5, 12], "LayerNormalization", ["g", "b"], [c("g", w(12, s=1.0)), c("b", w(12))], axis=-1, epsilon=1e-5),
    "reduce_mean_hw": op([2, 5, 7, 3], "ReduceMean", ["ax"], [c("ax", np.array([2, 3], np.int64))], keepdims=1),
    "reduce_mean_last": op([2, 5, 9], "ReduceMean", ["ax"], [c("ax", np.array([-1], np.int64))], keepdims=0),
    "batchnorm": op([2, 5, 3, 3], "BatchNormalization", ["s", "b", "m", "v"], [c("s", w(5, s=1.0)), c("b", w(5)), c("m", w(5)), c("v", np.abs(w(5, s=1.0)) + 0.5)]),
}

OUT_SHAPES = {}


def make_model(path, name):
    x_shape, nodes, inits = CASES[name]
    outs = [o for n in nodes for o in n.output if o in ("y", "z")]
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", F, x_shape)], [helper.make_tensor_value_info(o, F, None) for o in outs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return x_shape


def fp16_rounded(path, out):
    """The model with every float initializer rounded to fp16 (the fp16 reference's weights)."""
    m = onnx.load(path)
    for t in m.graph.initializer:
        if t.data_type == F:
            a = numpy_helper.to_array(t).astype(np.float16).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    onnx.save(m, out)


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_conformance(project, name):
    model = project.root / f"{name}.onnx"
    x_shape = make_model(model, name)
    project.build({"model": model.name, "output": "out", "targets": [{"name": "vk32", "backend": "vulkan", "precision": "fp32"}, {"name": "vk16", "backend": "vulkan", "precision": "fp16"}]})
    feeds = [{"x": RNG.standard_normal(x_shape).astype(np.float32)} for _ in range(2)]
    if name in ("exp",):
        feeds = [{"x": f["x"] * 0.5} for f in feeds]
    ref = [session(model).run(None, f) for f in feeds]
    if shutil.which("spirv-val"):
        for t in ("vk32", "vk16"):
            spirv_val(project.root / "out" / t / "model.kvk")
    got, log = vk_run(project.root / "out" / "vk32", feeds)
    assert "validation: 0 error(s)" in log
    for r, g in zip(ref, got):
        for a, b in zip(r, g):
            assert a.shape == b.shape, f"{name}: shape {b.shape} vs onnxruntime {a.shape}"
            tol = 1e-4 * max(np.abs(a).max(), 1e-6)
            err = np.abs(a - b).max()
            assert err <= tol, f"{name} fp32: max error {err:.3g} > {tol:.3g}"
    # fp16: against onnxruntime with fp16-rounded weights and inputs.
    m16 = project.root / f"{name}_w16.onnx"
    fp16_rounded(model, m16)
    feeds16 = [{"x": f["x"].astype(np.float16).astype(np.float32)} for f in feeds]
    ref16 = [session(m16).run(None, f) for f in feeds16]
    got16, _ = vk_run(project.root / "out" / "vk16", feeds16)
    for r, g in zip(ref16, got16):
        for a, b in zip(r, g):
            tol = 1e-2 * max(np.abs(a).max(), 1e-6)
            err = np.abs(a - b).max()
            assert err <= tol, f"{name} fp16: max error {err:.3g} > {tol:.3g}"


def test_gather_runtime_indices(project):
    """Embedding lookup: int64 token ids (carried as f32 in the bundle) into a constant table."""
    table = w(11, 6, s=1.0)
    g = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])], [helper.make_tensor_value_info("y", F, [2, 5, 6])], [c("table", table)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.save(m, project.root / "g.onnx")
    project.build({"model": "g.onnx", "output": "out", "targets": [{"name": "vk", "backend": "vulkan"}]})
    ids = np.array([[0, 3, 10, -1, 5], [1, 1, 2, -11, 9]], np.int64)
    got, _ = vk_run(project.root / "out" / "vk", [{"ids": ids}])
    np.testing.assert_array_equal(got[0][0], table[ids])


def test_quantize_ties_match_onnxruntime_exactly(project):
    """QuantizeLinear → DequantizeLinear where half the inputs are the f32 nearest a rounding tie s·(k + ½):
    onnxruntime rounds the correctly rounded quotient half to even; the kernel must pick the same integer
    for every element, whatever the device's division and fma precision (int8 and uint8)."""
    for zp in (np.uint8(128), np.int8(-3)):
        s = np.float32(0.0372)
        g = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "q", [helper.make_tensor_value_info("x", F, [1, 4096])], [helper.make_tensor_value_info("y", F, [1, 4096])], [c("s", s), c("z", zp)])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), project.root / "q.onnx")
        project.build({"model": "q.onnx", "output": "out", "targets": [{"name": "vk", "backend": "vulkan"}]})
        k = RNG.integers(-140, 140, 4096).astype(np.float32)
        x = np.where(RNG.random(4096) < 0.5, (k + 0.5) * s, RNG.standard_normal(4096).astype(np.float32) * 3).astype(np.float32)[None]
        ref = session(project.root / "q.onnx", exact=True).run(None, {"x": x})[0]
        got = vk_run(project.root / "out" / "vk", [{"x": x}])[0][0][0].reshape(ref.shape)
        assert (ref != got).sum() == 0, f"zero point {zp!r}: {(ref != got).sum()} of 4096 elements differ"


def test_unsupported_op_fails_target_by_name(project):
    g = helper.make_graph([helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,jk->ik")], "e", [helper.make_tensor_value_info("x", F, [3, 3])], [helper.make_tensor_value_info("y", F, [3, 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), project.root / "e.onnx")
    r = project.build({"model": "e.onnx", "output": "out", "targets": [{"name": "vk", "backend": "vulkan"}]}, check=False)
    assert r.returncode != 0
    assert "no kernel for Einsum" in r.stderr
    assert not (project.root / "out" / "vk" / "model.kvk").exists()


def test_profile_names_every_step(project):
    """KILN_VK_PROFILE=1 kiln run: one line per dispatch (kernel, op, node) and per kernel, times > 0."""
    import os

    from kiln_oracle import KILN
    from vulkan_oracle import env

    model = project.root / "m.onnx"
    make_model(model, "conv_residual_add_relu")
    project.build({"model": "m.onnx", "output": "out", "targets": [{"name": "vk", "backend": "vulkan"}]})
    np.save(project.root / "x.npy", RNG.standard_normal([2, 6, 5, 7]).astype(np.float32))
    e = env()
    e["KILN_VK_PROFILE"] = "1"
    r = subprocess.run([str(KILN), "run", str(project.root / "out" / "vk"), "--input", f"x={project.root / 'x.npy'}", "--output-dir", str(project.root / "o")], env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    steps = json.loads((project.root / "out" / "report.json").read_text())
    lines = [ln for ln in r.stderr.splitlines() if " ms " in ln and "Conv" in ln and "kernel" not in ln]
    assert len(lines) >= 1 and all(float(ln.split()[0]) > 0 for ln in lines), r.stderr
    assert any(ln.strip().startswith("kernel ") for ln in r.stderr.splitlines()), r.stderr
    assert os.path.exists(project.root / "o" / "y.npy")
    assert steps


def test_memory_plan_within_bound_and_reported(project):
    model = project.root / "m.onnx"
    make_model(model, "conv3x3_s1_p1")
    project.build({"model": "m.onnx", "output": "out", "targets": [{"name": "vk", "backend": "vulkan"}]})
    rep = json.loads((project.root / "out" / "report.json").read_text())
    s = json.dumps(rep)
    assert "arena_bytes" in s and "peak_live_bytes" in s
