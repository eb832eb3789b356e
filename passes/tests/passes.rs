//! Pass unit tests on tiny graphs (each checks the rewrite and, through tract, that results are
//! unchanged), plus a golden IR dump of tests/models/tiny_cnn.onnx after cleanup+fuse.
//! Regenerate the golden file with `KILN_BLESS=1 cargo test -p kiln-passes`.
use std::path::Path;

use kiln_compiler::config::PassSpec;
use kiln_compiler::ir::{
    Act, AttrValue, Attribute, BinOp, DType, Dim, Graph, Model, Node, Op, TensorData, Value,
    ValueId, Window,
};
use kiln_compiler::pipeline::PassContext;
use kiln_compiler::{eval, onnx, shape};

fn input(g: &mut Graph, name: &str, dims: &[i64]) -> ValueId {
    let mut v = Value::new(name);
    v.dtype = DType::F32;
    v.shape = Some(dims.iter().map(|d| Dim::Known(*d)).collect());
    let id = g.add_value(v).unwrap();
    g.inputs.push(id);
    id
}

fn val(g: &mut Graph, name: &str) -> ValueId {
    g.add_value(Value::new(name)).unwrap()
}

fn model(g: Graph) -> Model {
    let mut m = Model {
        ir_version: 8,
        opset_imports: vec![(String::new(), 17)],
        graph: g,
        ..Default::default()
    };
    shape::infer(&mut m, &Default::default()).unwrap();
    m
}

fn run_passes(m: &mut Model, names: &str) {
    let mut cx = PassContext { verify: true, ..Default::default() };
    for n in names.split(',') {
        let p = kiln_passes::make(&PassSpec::Name(n.into())).unwrap();
        kiln_compiler::driver::run_passes(m, &[p], &mut cx).unwrap();
    }
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919 % 97) as f32 / 97.0 - 0.5) * scale).collect()
}

/// Outputs before and after `passes` agree (tract), and the rewritten model re-imports.
fn same_results(m: &Model, passes: &str, x: &[(&str, Vec<i64>)]) -> Model {
    let inputs: Vec<(String, TensorData)> = x
        .iter()
        .map(|(n, d)| {
            (
                n.to_string(),
                TensorData::from_f32(d.clone(), &ramp(d.iter().product::<i64>() as usize, 4.0)),
            )
        })
        .collect();
    let before = eval::run(m, &inputs).unwrap();
    let mut m2 = m.clone();
    run_passes(&mut m2, passes);
    let after = eval::run(&m2, &inputs).unwrap();
    for ((_, a), (_, b)) in before.iter().zip(&after) {
        let (a, b) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * scale.max(1.0), "{x} vs {y}");
        }
    }
    let bytes = onnx::to_bytes(&m2, &Default::default()).unwrap();
    onnx::load_bytes(&bytes, None, Path::new("rt")).unwrap();
    m2
}

fn ops(m: &Model) -> Vec<String> {
    let mut v: Vec<String> =
        m.graph.nodes.node_weights().map(|n| n.op.op_type().to_string()).collect();
    v.sort();
    v
}

#[test]
fn constants_and_shapes_fold() {
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[2, 6]);
    let c = val(&mut g, "c");
    let s = val(&mut g, "s");
    let c2 = val(&mut g, "c2");
    let y = val(&mut g, "y");
    let t = TensorData::from_i64(vec![2], &[3, 4]);
    g.add_node(Node::new(
        "k",
        Op::Generic {
            op_type: "Constant".into(),
            attrs: vec![Attribute::new("value", AttrValue::Tensor(t))],
        },
        vec![],
        vec![Some(c)],
    ))
    .unwrap();
    g.add_node(Node::new(
        "shape",
        Op::Generic { op_type: "Shape".into(), attrs: vec![] },
        vec![Some(x)],
        vec![Some(s)],
    ))
    .unwrap();
    // c2 = c * 1 (both constant) → folded by tract; y = Reshape(x, [3, 4]).
    let one = g.add_const("one", TensorData::from_i64(vec![1], &[1])).unwrap();
    g.add_node(Node::new("mul", Op::Binary(BinOp::Mul), vec![Some(c), Some(one)], vec![Some(c2)]))
        .unwrap();
    g.add_node(Node::new(
        "reshape",
        Op::Reshape { allowzero: None },
        vec![Some(x), Some(c2)],
        vec![Some(y)],
    ))
    .unwrap();
    g.outputs.push(y);
    let m = model(g);
    let m2 = same_results(&m, "cleanup", &[("x", vec![2, 6])]);
    assert_eq!(ops(&m2), ["Reshape"]);
    assert_eq!(m2.graph.value(m2.graph.find("y").unwrap()).static_shape(), Some(vec![3, 4]));
}

#[test]
fn identity_removal_keeps_output_names() {
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[4]);
    let a = val(&mut g, "a");
    let y = val(&mut g, "y");
    g.add_node(Node::new("relu", Op::Act(Act::Relu), vec![Some(x)], vec![Some(a)])).unwrap();
    g.add_node(Node::new("id", Op::Identity, vec![Some(a)], vec![Some(y)])).unwrap();
    g.outputs.push(y);
    let m2 = same_results(&model(g), "cleanup", &[("x", vec![4])]);
    assert_eq!(ops(&m2), ["Relu"]);
    assert_eq!(m2.graph.value(m2.graph.outputs[0]).name, "y");
}

#[test]
fn cse_merges_duplicates() {
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[4]);
    let (a, b, y) = (val(&mut g, "a"), val(&mut g, "b"), val(&mut g, "y"));
    g.add_node(Node::new("r1", Op::Act(Act::Sigmoid), vec![Some(x)], vec![Some(a)])).unwrap();
    g.add_node(Node::new("r2", Op::Act(Act::Sigmoid), vec![Some(x)], vec![Some(b)])).unwrap();
    g.add_node(Node::new("add", Op::Binary(BinOp::Add), vec![Some(a), Some(b)], vec![Some(y)]))
        .unwrap();
    g.outputs.push(y);
    let m2 = same_results(&model(g), "cleanup", &[("x", vec![4])]);
    assert_eq!(ops(&m2), ["Add", "Sigmoid"]);
}

/// x → Conv(2→3, 3x3, pad 1) → BN → Mul(per-channel) → Clip(0, 6) → y
fn conv_bn_mul_clip() -> Model {
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[1, 2, 5, 5]);
    let w = g.add_const("w", TensorData::from_f32(vec![3, 2, 3, 3], &ramp(54, 1.0))).unwrap();
    let bn: Vec<ValueId> = [
        (vec![1.5f32, 0.5, 2.0]),
        vec![0.1, -0.2, 0.3],
        vec![0.05, 0.0, -0.1],
        vec![1.0, 2.0, 0.5],
    ]
    .into_iter()
    .enumerate()
    .map(|(i, v)| g.add_const(&format!("bn{i}"), TensorData::from_f32(vec![3], &v)).unwrap())
    .collect();
    let k = g.add_const("k", TensorData::from_f32(vec![3, 1, 1], &[2.0, -1.0, 0.5])).unwrap();
    let lo = g.add_const("lo", TensorData::from_f32(vec![], &[0.0])).unwrap();
    let hi = g.add_const("hi", TensorData::from_f32(vec![], &[6.0])).unwrap();
    let (c, b, mm, y) = (val(&mut g, "c"), val(&mut g, "b"), val(&mut g, "m"), val(&mut g, "y"));
    let window = Window { pads: Some(vec![1, 1, 1, 1]), ..Default::default() };
    g.add_node(Node::new(
        "conv",
        Op::Conv { window, group: None },
        vec![Some(x), Some(w)],
        vec![Some(c)],
    ))
    .unwrap();
    g.add_node(Node::new(
        "bn",
        Op::BatchNorm { epsilon: Some(1e-3), momentum: None, training_mode: None },
        vec![Some(c), Some(bn[0]), Some(bn[1]), Some(bn[2]), Some(bn[3])],
        vec![Some(b)],
    ))
    .unwrap();
    g.add_node(Node::new("mul", Op::Binary(BinOp::Mul), vec![Some(b), Some(k)], vec![Some(mm)]))
        .unwrap();
    g.add_node(Node::new(
        "clip",
        Op::Act(Act::Clip { min: None, max: None }),
        vec![Some(mm), Some(lo), Some(hi)],
        vec![Some(y)],
    ))
    .unwrap();
    g.outputs.push(y);
    model(g)
}

#[test]
fn batchnorm_mul_and_clip_fuse_into_conv() {
    let m2 = same_results(&conv_bn_mul_clip(), "fuse", &[("x", vec![1, 2, 5, 5])]);
    assert_eq!(ops(&m2), ["Conv"]);
    let conv = m2.graph.nodes.node_weights().next().unwrap();
    assert_eq!(conv.act, Some(Act::Clip { min: Some(0.0), max: Some(6.0) }));
    assert_eq!(m2.graph.value(conv.output(0).unwrap()).name, "y");
    // Export writes the activation back as a standard op.
    let p = onnx::to_bytes(&m2, &Default::default()).unwrap();
    let back = onnx::load_bytes(&p, None, Path::new("rt")).unwrap();
    assert_eq!(ops(&back), ["Clip", "Conv"]);
}

#[test]
fn silu_gelu_and_attention_are_recognized() {
    let mut g = Graph::default();
    let q = input(&mut g, "q", &[1, 2, 4, 8]);
    let kt = input(&mut g, "kt", &[1, 2, 8, 4]);
    let v = input(&mut g, "v", &[1, 2, 4, 8]);
    let (s, sc, p, o) = (val(&mut g, "s"), val(&mut g, "sc"), val(&mut g, "p"), val(&mut g, "o"));
    let scale = g.add_const("scale", TensorData::from_f32(vec![], &[0.35])).unwrap();
    g.add_node(Node::new("mm1", Op::MatMul, vec![Some(q), Some(kt)], vec![Some(s)])).unwrap();
    g.add_node(Node::new(
        "scale",
        Op::Binary(BinOp::Mul),
        vec![Some(s), Some(scale)],
        vec![Some(sc)],
    ))
    .unwrap();
    g.add_node(Node::new("sm", Op::Softmax { axis: Some(-1) }, vec![Some(sc)], vec![Some(p)]))
        .unwrap();
    g.add_node(Node::new("mm2", Op::MatMul, vec![Some(p), Some(v)], vec![Some(o)])).unwrap();
    // GELU (erf form) then SiLU on the attention output.
    let c2 =
        g.add_const("sqrt2", TensorData::from_f32(vec![], &[std::f32::consts::SQRT_2])).unwrap();
    let c1 = g.add_const("one", TensorData::from_f32(vec![], &[1.0])).unwrap();
    let ch = g.add_const("half", TensorData::from_f32(vec![], &[0.5])).unwrap();
    let names = ["d", "e", "a", "m1", "gelu", "sig", "y"];
    let ids: Vec<ValueId> = names.iter().map(|n| val(&mut g, n)).collect();
    let [d, e, a, m1, gl, sg, y] = ids[..] else { unreachable!() };
    g.add_node(Node::new("div", Op::Binary(BinOp::Div), vec![Some(o), Some(c2)], vec![Some(d)]))
        .unwrap();
    g.add_node(Node::new(
        "erf",
        Op::Generic { op_type: "Erf".into(), attrs: vec![] },
        vec![Some(d)],
        vec![Some(e)],
    ))
    .unwrap();
    g.add_node(Node::new("add1", Op::Binary(BinOp::Add), vec![Some(e), Some(c1)], vec![Some(a)]))
        .unwrap();
    g.add_node(Node::new("mulx", Op::Binary(BinOp::Mul), vec![Some(o), Some(a)], vec![Some(m1)]))
        .unwrap();
    g.add_node(Node::new("mulh", Op::Binary(BinOp::Mul), vec![Some(m1), Some(ch)], vec![Some(gl)]))
        .unwrap();
    g.add_node(Node::new("sigm", Op::Act(Act::Sigmoid), vec![Some(gl)], vec![Some(sg)])).unwrap();
    g.add_node(Node::new("silu", Op::Binary(BinOp::Mul), vec![Some(gl), Some(sg)], vec![Some(y)]))
        .unwrap();
    g.outputs.push(y);
    let m2 = same_results(
        &model(g),
        "fuse",
        &[("q", vec![1, 2, 4, 8]), ("kt", vec![1, 2, 8, 4]), ("v", vec![1, 2, 4, 8])],
    );
    assert_eq!(ops(&m2), ["Attention", "Gelu", "Silu"]);
    // The recognized attention keeps the MAC count of the two MatMuls it replaced (batch 1: 2·4·4·8 each).
    assert_eq!(kiln_compiler::stats::model_stats(&m2).macs, 2 * (2 * 4 * 4 * 8));
}

#[test]
fn matmul_add_becomes_gemm() {
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[3, 4]);
    let w = g.add_const("w", TensorData::from_f32(vec![4, 5], &ramp(20, 1.0))).unwrap();
    let b = g.add_const("b", TensorData::from_f32(vec![5], &ramp(5, 1.0))).unwrap();
    let (m, y) = (val(&mut g, "m"), val(&mut g, "y"));
    g.add_node(Node::new("mm", Op::MatMul, vec![Some(x), Some(w)], vec![Some(m)])).unwrap();
    g.add_node(Node::new("add", Op::Binary(BinOp::Add), vec![Some(m), Some(b)], vec![Some(y)]))
        .unwrap();
    g.outputs.push(y);
    let m2 = same_results(&model(g), "fuse", &[("x", vec![3, 4])]);
    assert_eq!(ops(&m2), ["Gemm"]);
}

/// tests/models/tiny_cnn.onnx after `cleanup,fuse`, input pinned to 1×3×64×64.
fn tiny_cnn_fused() -> Model {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut m = onnx::load(&root.join("../tests/models/tiny_cnn.onnx")).unwrap();
    shape::infer(&mut m, &[("input".to_string(), vec![1, 3, 64, 64])].into_iter().collect())
        .unwrap();
    run_passes(&mut m, "cleanup,fuse");
    m
}

#[test]
fn golden_tiny_cnn_after_fuse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let m = tiny_cnn_fused();
    let text = kiln_compiler::ir::dump::dump_model(&m);
    let path = root.join("tests/golden/tiny_cnn_fused.txt");
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == text,
        "differs from {} (regenerate with KILN_BLESS=1):\n{text}",
        path.display()
    );
    assert!(!text.contains("BatchNormalization"));
}

#[test]
fn pad_folds_into_conv() {
    let mut g = Graph::default();
    let x = input(&mut g, "x", &[1, 2, 5, 5]);
    let pads =
        g.add_const("pads", TensorData::from_i64(vec![8], &[0, 0, 1, 2, 0, 0, 1, 0])).unwrap();
    let w = g.add_const("w", TensorData::from_f32(vec![3, 2, 3, 3], &ramp(54, 1.0))).unwrap();
    let (p, y) = (val(&mut g, "p"), val(&mut g, "y"));
    g.add_node(Node::new(
        "pad",
        Op::Generic { op_type: "Pad".into(), attrs: vec![] },
        vec![Some(x), Some(pads)],
        vec![Some(p)],
    ))
    .unwrap();
    let window = Window { pads: Some(vec![1, 0, 0, 1]), ..Default::default() };
    g.add_node(Node::new(
        "conv",
        Op::Conv { window, group: None },
        vec![Some(p), Some(w)],
        vec![Some(y)],
    ))
    .unwrap();
    g.outputs.push(y);
    let m2 = same_results(&model(g), "cleanup", &[("x", vec![1, 2, 5, 5])]);
    assert_eq!(ops(&m2), ["Conv"]);
    let conv = m2.graph.nodes.node_weights().next().unwrap();
    assert_eq!(conv.op.attr_ints("pads"), Some(vec![2, 2, 1, 1]));
}

/// Range refinement scores candidates with min/max on statistics pre-clipped by the calibration method
/// (`quant::ranges::pin`): that must give every tensor the same (scale, zero point) as the method itself.
#[test]
fn pinned_statistics_reproduce_every_method() {
    use kiln_passes::quant::{params::Method, qdq, ranges};
    let m = tiny_cnn_fused();
    // Deterministic, heavy-tailed samples (a cubed LCG), so methods disagree.
    let mut state = 12345u64;
    let samples: Vec<TensorData> = (0..6)
        .map(|_| {
            let v: Vec<f32> = (0..3 * 64 * 64)
                .map(|_| {
                    state =
                        state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let u = (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                    u * u * u * 4.0
                })
                .collect();
            TensorData::from_f32(vec![1, 3, 64, 64], &v)
        })
        .collect();
    let calib = kiln_compiler::calib::collect_with(&m, "input", &samples, false).unwrap();
    for method in [Method::Percentile(99.0), Method::Entropy, Method::Mse, Method::MinMax] {
        let opts = qdq::QdqOptions { method, ..Default::default() };
        let want = qdq::activation_params(&m.graph, &calib, &opts);
        let pinned = ranges::pin(&m, &calib, &opts);
        let got = qdq::activation_params(
            &m.graph,
            &pinned,
            &qdq::QdqOptions { method: Method::MinMax, ..Default::default() },
        );
        assert!(want.len() > 5 && want == got, "{method:?}: {want:?} vs {got:?}");
    }
    // and the methods did differ on this data
    let a = qdq::activation_params(
        &m.graph,
        &calib,
        &qdq::QdqOptions { method: Method::Percentile(99.0), ..Default::default() },
    );
    let b = qdq::activation_params(&m.graph, &calib, &qdq::QdqOptions::default());
    assert_ne!(a, b);
}

/// The evaluator lowers Q/DQ to float ops (compiler/src/eval/qdq.rs): its outputs must equal tract's own
/// Q/DQ bit for bit, for int8 and uint8 activations, on inputs full of rounding ties, and the lowering must
/// have happened (the lowered model runs faster; here: the QuantizeLinear nodes are gone from its plan).
#[test]
fn lowered_qdq_evaluation_is_bit_identical() {
    use kiln_compiler::ir::{DType, Op};
    use kiln_passes::quant::{self, qdq};
    let m = tiny_cnn_fused();
    let mut state = 99u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let samples: Vec<TensorData> = (0..4)
        .map(|_| {
            let v: Vec<f32> = (0..3 * 64 * 64)
                .map(|i| {
                    // Half the inputs sit on multiples of 1/64 (exact ties for power-of-two scales).
                    let u = next() * 4.0 - 2.0;
                    if i % 2 == 0 {
                        (u * 64.0).round() / 64.0 + 1.0 / 128.0
                    } else {
                        u
                    }
                })
                .collect();
            TensorData::from_f32(vec![1, 3, 64, 64], &v)
        })
        .collect();
    let calib = kiln_compiler::calib::collect_with(&m, "input", &samples, false).unwrap();
    for activations in [DType::I8, DType::U8] {
        let opts = qdq::QdqOptions { activations, ..Default::default() };
        let (q, summary, _) = quant::build(&m, &calib, &opts, false, "input", &samples).unwrap();
        assert!(summary.activations > 3);
        assert!(q.graph.nodes.node_weights().any(|n| matches!(n.op, Op::QuantizeLinear { .. })));
        let facts = [("input".to_string(), DType::F32, vec![1, 3, 64, 64])];
        let fast = eval::Evaluator::new(&q, &facts).unwrap();
        let written = eval::Evaluator::as_written(&q, &facts).unwrap();
        assert!(
            fast.lowered_qdq_pairs() >= summary.activations && written.lowered_qdq_pairs() == 0
        );
        for s in &samples {
            let a = fast.run(&[("input".to_string(), s.clone())]).unwrap();
            let b = written.run(&[("input".to_string(), s.clone())]).unwrap();
            let (a, b) = (a[0].1.to_f32_vec().unwrap(), b[0].1.to_f32_vec().unwrap());
            assert_eq!(a.len(), b.len());
            let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            assert_eq!(differ, 0, "{activations:?}: {differ} outputs differ");
        }
    }
}

/// Before opset 11 Clip takes its bounds as attributes: the lowering clips with Max then Min instead (so the
/// bounds stay constants a caller can feed). Bit-identical to tract's own Q/DQ there too, int8 and uint8.
#[test]
fn lowered_qdq_before_opset_11_is_bit_identical() {
    use kiln_compiler::ir::{Node, Op};
    for (dt, zp) in [(DType::I8, 3u8), (DType::U8, 128u8)] {
        let mut g = Graph::default();
        let x = input(&mut g, "x", &[1, 4, 8, 8]);
        let s = g.add_const("s", TensorData::from_f32(vec![], &[0.05])).unwrap();
        let z = g.add_const("z", TensorData::from_bytes(dt, vec![], vec![zp])).unwrap();
        let q = val(&mut g, "q");
        let y = val(&mut g, "y");
        g.add_node(Node::new(
            "quant",
            Op::QuantizeLinear { axis: None, saturate: None },
            vec![Some(x), Some(s), Some(z)],
            vec![Some(q)],
        ))
        .unwrap();
        g.add_node(Node::new(
            "dequant",
            Op::DequantizeLinear { axis: None },
            vec![Some(q), Some(s), Some(z)],
            vec![Some(y)],
        ))
        .unwrap();
        g.outputs.push(y);
        let mut m = model(g);
        m.opset_imports = vec![(String::new(), 10)];
        let facts = [("x".to_string(), DType::F32, vec![1, 4, 8, 8])];
        let fast = eval::Evaluator::new(&m, &facts).unwrap();
        let written = eval::Evaluator::as_written(&m, &facts).unwrap();
        assert_eq!((fast.lowered_qdq_pairs(), written.lowered_qdq_pairs()), (1, 0));
        // Ties (k·0.05 + 0.025), saturation on both sides, and plain values.
        let v: Vec<f32> = (0..256)
            .map(|i| match i % 3 {
                0 => (i as f32 - 128.0) * 0.05 + 0.025,
                1 => (i as f32 - 128.0) * 0.2,
                _ => (i as f32).sin() * 3.0,
            })
            .collect();
        let t = TensorData::from_f32(vec![1, 4, 8, 8], &v);
        let a = fast.run(&[("x".to_string(), t.clone())]).unwrap()[0].1.to_f32_vec().unwrap();
        let b = written.run(&[("x".to_string(), t)]).unwrap()[0].1.to_f32_vec().unwrap();
        let differ = a.iter().zip(&b).filter(|(p, q)| p.to_bits() != q.to_bits()).count();
        assert_eq!(differ, 0, "{dt:?}: {differ} of {} differ", a.len());
    }
}
