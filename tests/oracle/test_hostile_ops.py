"""Hostile single-op models (hostile_ops.py: forbidden attributes and constant inputs, absurd sizes) through
every kiln command: inspect, dump, optimize, run, and build with onnx (fp32, fp16, int8), tflite (fp32, int8)
and npu targets. Each must end within 10 s with exit status 1 (never a panic's 101, never a hang), and the
error must name the node and the attribute or input at fault. Then data whose shape disagrees with the
model's declared static dims, through run, quantize and build (calibration and validation)."""
import json
import subprocess

import numpy as np
import pytest
import yaml

import hostile_ops
from kiln_oracle import KILN, LOCAL_MODELS, kiln

CASES = hostile_ops.cases()
TARGETS = [
    {"name": "o32", "backend": "onnx", "precision": "fp32"},
    {"name": "o16", "backend": "onnx", "precision": "fp16"},
    {"name": "o8", "backend": "onnx", "precision": "int8"},
    {"name": "t32", "backend": "tflite", "precision": "fp32"},
    {"name": "t8", "backend": "tflite", "precision": "int8"},
    {"name": "n8", "backend": "npu", "precision": "int8", "device": "edgetpu"},
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile_ops")
    return d, hostile_ops.write(d)


def _run(args):
    try:
        return subprocess.run([str(KILN), *map(str, args)], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"kiln {' '.join(map(str, args))} ran past 10 s")


def test_the_corpus_covers_every_class():
    assert len(CASES) >= 40
    ops = {m.graph.node[0].op_type for _, m, _ in CASES}
    for op in ["Conv", "MaxPool", "Slice", "Gather", "Transpose", "Split", "Concat", "Reshape", "Resize", "Pad",
               "Expand", "Tile", "ConstantOfShape", "Range"]:
        assert op in ops, op


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_every_command_refuses_it_clearly(case, corpus, tmp_path):
    d, meta = corpus
    model, word = d / f"{case}.onnx", meta[case]["word"]
    cfg = {
        "model": str(model),
        "calibration": {"tensors": str(d / f"{case}.npy")},
        "targets": TARGETS,
        "output": str(tmp_path / "out"),
    }
    (tmp_path / "kiln.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    commands = [
        ["inspect", model],
        ["dump", model],
        ["optimize", model, "-o", tmp_path / "o.onnx", "--passes", "cleanup,fuse"],
        ["run", model, "--input", f"{meta[case]['input']}={d / f'{case}.npy'}", "--output-dir", tmp_path / "r"],
        ["build", tmp_path / "kiln.yaml"],
    ]
    for args in commands:
        p = _run(args)
        what = f"kiln {args[0]} on {case}: exit {p.returncode}\n{p.stderr}"
        assert p.returncode == 1, what
        assert "panicked" not in p.stderr and "RUST_BACKTRACE" not in p.stderr, what
        assert "'bad'" in p.stderr and word in p.stderr, what
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "out").exists()


# Data that disagrees with a declared static dim (the batch dim symbolic): tiny_cnn declares
# [batch, 3, 64, 64]; 72×72 data must be refused wherever kiln feeds it, naming the input and both shapes.
TINY = LOCAL_MODELS / "tiny_cnn.onnx"
DECLARED = "[batch,3,64,64]"


def _wrong_tensors(path, n=4):
    np.save(path, np.random.default_rng(0).standard_normal([n, 3, 72, 72]).astype(np.float32))
    return path


def _wrong_images(folder, n=3):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, [72, 72, 3], dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _refused(p, *more):
    assert p.returncode == 1 and "panicked" not in p.stderr, p.stderr
    for word in ["'input'", DECLARED, "72"] + list(more):
        assert word in p.stderr, (word, p.stderr)


def test_run_refuses_data_that_does_not_fit(tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros([1, 3, 72, 72], np.float32))
    p = kiln("run", TINY, "--input", f"input={x}", "--output-dir", tmp_path / "o", check=False)
    _refused(p)
    assert not (tmp_path / "o").exists()


def test_quantize_refuses_calibration_that_does_not_fit(tmp_path):
    out = tmp_path / "q.onnx"
    p = kiln("quantize", TINY, "--calib", _wrong_tensors(tmp_path / "c.npy"), "-o", out, check=False)
    _refused(p, "--calib")
    p = kiln("quantize", TINY, "--calib", _wrong_images(tmp_path / "imgs"), "-o", out, check=False)
    _refused(p, "--imagenet")
    assert not out.exists()


@pytest.mark.parametrize("section", ["calibration", "validation"])
@pytest.mark.parametrize("kind", ["tensors", "images"])
def test_build_refuses_data_that_does_not_fit(project, tmp_path, section, kind):
    good = {"tensors": str(LOCAL_MODELS / "tiny_cnn_inputs.npy")}
    bad = (
        {"tensors": str(_wrong_tensors(tmp_path / "bad.npy"))}
        if kind == "tensors"
        else {"images": str(_wrong_images(tmp_path / "imgs"))}
    )
    cfg = {
        "model": str(TINY),
        "calibration": bad if section == "calibration" else good,
        "validation": bad if section == "validation" else good,
        "targets": [{"name": "q", "backend": "onnx", "precision": "int8"}],
        "output": str(tmp_path / "out"),
    }
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    p = kiln("build", tmp_path / "k.yaml", check=False)
    _refused(p, f"`{section}:`", *(["preprocess"] if kind == "images" else []))
    assert not (tmp_path / "out" / "q").exists()


def test_a_panic_inside_the_evaluator_is_an_error(tmp_path):
    """Gather indices that arrive at run time cannot be checked beforehand, and tract panics on one out of
    range: kiln must report it as its own error (exit 1), not crash."""
    from onnx import TensorProto, helper
    import onnx

    n = helper.make_node("Gather", ["x", "idx"], ["y"], name="g", axis=0)
    g = helper.make_graph(
        [n], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3]), helper.make_tensor_value_info("idx", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "g.onnx")
    np.save(tmp_path / "x.npy", np.ones([4, 3], np.float32))
    np.save(tmp_path / "idx.npy", np.array([0, 9], np.int64))
    p = kiln("run", tmp_path / "g.onnx", "--input", f"x={tmp_path / 'x.npy'}", "--input", f"idx={tmp_path / 'idx.npy'}",
             "--output-dir", tmp_path / "o", check=False)
    assert p.returncode == 1 and "the evaluator failed" in p.stderr, p.stderr
    assert "panicked" not in p.stderr and "RUST_BACKTRACE" not in p.stderr, p.stderr
    # In range, the same model runs.
    np.save(tmp_path / "idx.npy", np.array([0, 3], np.int64))
    kiln("run", tmp_path / "g.onnx", "--input", f"x={tmp_path / 'x.npy'}", "--input", f"idx={tmp_path / 'idx.npy'}",
         "--output-dir", tmp_path / "o")
    assert np.load(tmp_path / "o" / "y.npy").shape == (2, 3)


def test_pow_on_an_empty_tensor_is_refused_not_a_segfault(tmp_path):
    """tract segfaults computing Pow on an empty tensor (found by fuzz/fuzz_targets/graph.rs; its model is
    tests/fuzz_regressions/graph-pow-empty.onnx): kiln must refuse it before tract sees it."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx

    c = numpy_helper.from_array(np.zeros([4, 0], np.float32), "c")
    n = helper.make_node("Pow", ["x", "c"], ["y"], name="p")
    g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[c])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "p.onnx")
    np.save(tmp_path / "x.npy", np.full([1], 0.5, np.float32))
    p = kiln("run", tmp_path / "p.onnx", "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", tmp_path / "o", check=False)
    assert p.returncode == 1 and "'p' (Pow)" in p.stderr and "empty" in p.stderr, (p.returncode, p.stderr)
