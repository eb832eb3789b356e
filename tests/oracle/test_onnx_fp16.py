"""`backend: onnx, precision: fp16`: float16 weights and activations, float32 I/O, float32 islands.
Oracle: onnxruntime on the original model, and onnx's own checker (full shape/type inference)."""
import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from accuracy import compare
from kiln_oracle import CORPUS, LOCAL_MODELS, QDQ_MODELS, Project, local_inputs, session, validation_config, validation_inputs

# Float16 activations carry 11 bits: expect ~1e-3 relative per op, more through deep or BN-folded nets.
BOUND = 2e-2


def build_fp16(tmp_path, model, pins=None, extra=None):
    """`model` built (in tmp_path/w) to an fp32 and an fp16 ONNX target (`extra`: more fp16 target options),
    measured on its validation data; `pins`: the `inputs:` section. Returns the output folder."""
    targets = [{"name": "f32", "backend": "onnx", "precision": "fp32"}, {"name": "f16", "backend": "onnx", "precision": "fp16", **(extra or {})}]
    config = {**({"inputs": pins} if pins else {}), "passes": ["cleanup", "fuse"], "validation": validation_config(model), "targets": targets}
    return Project(tmp_path / "w").build_model(model, config)


def rel_diff_and_agreement(model, cand, feeds):
    """Worst relative difference and top-1 agreement of the first output, both in onnxruntime's default session."""
    r = compare(model, cand, feeds, exact=False)
    return r["max_rel_diff"], r["top1_agreement"]


def check(model, out, feeds):
    art = out / "f16" / "model.onnx"
    m = onnx.load(str(art))
    onnx.checker.check_model(m, full_check=True)
    # Float32 at the edges, float16 inside: every float initializer of rank >= 2 outside islands is half.
    assert all(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in list(m.graph.input) + list(m.graph.output))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    # Weights outside islands are stored in half: b16 = island weights + half of the rest.
    def float_bytes(mm, dtype):
        return sum(onnx.numpy_helper.to_array(t).nbytes for t in mm.graph.initializer if t.data_type == dtype and len(t.dims) >= 2)

    b32 = float_bytes(onnx.load(str(out / "f32" / "model.onnx")), onnx.TensorProto.FLOAT)
    island, half = float_bytes(m, onnx.TensorProto.FLOAT), float_bytes(m, onnx.TensorProto.FLOAT16)
    assert abs(half - (b32 - island) / 2) <= 0.01 * b32 and half > 0, (b32, island, half)
    worst, agree = rel_diff_and_agreement(model, art, feeds)
    return worst, agree


LOCAL = [p for p in sorted(LOCAL_MODELS.glob("*.onnx")) if p.stem not in {"tiny_qat"}]


@pytest.mark.parametrize("path", LOCAL, ids=[p.stem for p in LOCAL])
def test_local_model_fp16_onnx_matches_onnxruntime(tmp_path, path):
    sess = session(path)
    inp = sess.get_inputs()[0]
    dims = [d if isinstance(d, int) else 1 for d in inp.shape]
    out = build_fp16(tmp_path, path, pins={inp.name: dims})
    worst, _ = check(path, out, local_inputs(path))
    assert worst <= BOUND, worst


CORPUS_MODELS = [p for p in sorted(CORPUS.glob("*.onnx")) if p.stem not in QDQ_MODELS] if CORPUS.is_dir() else []


@pytest.mark.corpus
@pytest.mark.parametrize("path", CORPUS_MODELS, ids=[p.stem for p in CORPUS_MODELS])
def test_corpus_model_fp16_onnx_matches_onnxruntime(tmp_path, path):
    # The search bound sits below the checked one: it sees 16-64 validation samples, the check all of them.
    out = build_fp16(tmp_path, path, extra={"fp16_max_error": 0.005})
    limit = 20 if path.stem in {"efficientnet_b0", "shufflenet_v2_x1_0"} else None
    worst, agree = check(path, out, validation_inputs(path.stem, limit=limit))
    print(path.stem, worst, agree)
    assert worst <= BOUND and agree >= 0.95, (worst, agree)


def test_activation_past_float16_range_stays_float32(tmp_path, project):
    """A conv whose output reaches ~1e5 (float16 tops out at 65504) feeding one that scales it back: kiln
    sees the range on the validation data, keeps both convs float32 and the value between them float32."""
    import json

    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w1 = (rng.normal(size=(8, 4, 1, 1)) * 3e4).astype(np.float32)
    w2 = (rng.normal(size=(4, 8, 1, 1)) * 3e-5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["big"], name="blow_up"), helper.make_node("Relu", ["big"], ["r"], name="relu"), helper.make_node("Conv", ["r", "w2"], ["y"], name="scale_down")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "big.onnx"))
    x = rng.normal(size=(16, 4, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    project.build(
        {
            "model": "big.onnx",
            "passes": ["cleanup", "fuse"],
            "validation": {"tensors": "x.npy"},
            "targets": [{"name": "f16", "backend": "onnx", "precision": "fp16"}],
            "output": "out",
        }
    )
    rep = json.loads((tmp_path / "out" / "report.json").read_text())["quantization"]["f16"]
    assert {o["node"] for o in rep["overflow_fp32"]} >= {"blow_up"} and all(o["max_abs"] > 65504 for o in rep["overflow_fp32"]), rep
    art = tmp_path / "out" / "f16" / "model.onnx"
    onnx.checker.check_model(onnx.load(str(art)), full_check=True)
    worst, _ = rel_diff_and_agreement(tmp_path / "big.onnx", art, [{"x": s[None]} for s in x])
    assert np.isfinite(worst) and worst <= 1e-3, worst
