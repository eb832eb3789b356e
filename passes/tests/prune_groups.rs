//! Channel-pruning dependency groups on a small graph with what real CNNs tie together: a residual Add,
//! a Concat on channels, a depthwise conv, global pooling, Flatten and a Gemm reading it. The groups are
//! checked against the ties written out by hand, and removing components keeps the graph valid and
//! runnable.
use std::collections::BTreeMap;

use kiln_compiler::ir::{Act, DType, Dim, Graph, Model, Node, Op, TensorData, Value, ValueId};
use kiln_compiler::{eval, shape};
use kiln_passes::prune::{groups, shrink};

fn value(g: &mut Graph, name: &str) -> ValueId {
    g.add_value(Value::new(name)).unwrap()
}

fn weights(g: &mut Graph, name: &str, dims: &[i64]) -> ValueId {
    let n: i64 = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 23) as f32 / 23.0) - 0.4).collect();
    g.add_const(name, TensorData::from_f32(dims.to_vec(), &v)).unwrap()
}

fn conv(g: &mut Graph, name: &str, x: ValueId, cin: i64, cout: i64, group: i64) -> ValueId {
    let w = weights(g, &format!("{name}_w"), &[cout, cin / group, 1, 1]);
    let b = weights(g, &format!("{name}_b"), &[cout]);
    let y = value(g, name);
    let mut n = Node::new(
        name,
        Op::Conv { window: Default::default(), group: Some(group) },
        vec![Some(x), Some(w), Some(b)],
        vec![Some(y)],
    );
    n.act = Some(Act::Relu);
    g.add_node(n).unwrap();
    y
}

fn node(g: &mut Graph, name: &str, op: Op, inputs: Vec<ValueId>) -> ValueId {
    let y = value(g, name);
    g.add_node(Node::new(name, op, inputs.into_iter().map(Some).collect(), vec![Some(y)])).unwrap();
    y
}

/// A graph with one float input `x` of `dims`.
fn with_input(dims: &[i64]) -> (Graph, ValueId) {
    let mut g = Graph::default();
    let mut x = Value::new("x");
    x.dtype = DType::F32;
    x.shape = Some(dims.iter().map(|d| Dim::Known(*d)).collect());
    let x = g.add_value(x).unwrap();
    g.inputs.push(x);
    (g, x)
}

/// `g` as an opset-17 model with shapes inferred.
fn finish(g: Graph) -> Model {
    let mut m = Model {
        ir_version: 8,
        opset_imports: vec![(String::new(), 17)],
        graph: g,
        ..Default::default()
    };
    shape::infer(&mut m, &Default::default()).unwrap();
    m
}

/// x[1,4,6,6] → a = conv(4→8) → b = conv(a, 8→8) → c = a + b → e = depthwise(c) → d = concat(e, f =
/// conv(c, 8→6)) → GlobalAveragePool → Flatten → Gemm(14→3).
fn sample() -> (Model, BTreeMap<&'static str, ValueId>) {
    let (mut g, x) = with_input(&[1, 4, 6, 6]);
    let a = conv(&mut g, "a", x, 4, 8, 1);
    let b = conv(&mut g, "b", a, 8, 8, 1);
    let c = node(&mut g, "c", Op::Binary(kiln_compiler::ir::BinOp::Add), vec![a, b]);
    let e = conv(&mut g, "e", c, 8, 8, 8);
    let f = conv(&mut g, "f", c, 8, 6, 1);
    let d = node(&mut g, "d", Op::Concat { axis: 1 }, vec![e, f]);
    let p = node(&mut g, "p", Op::GlobalAveragePool, vec![d]);
    let fl = node(&mut g, "fl", Op::Flatten { axis: Some(1) }, vec![p]);
    let w = weights(&mut g, "fc_w", &[3, 14]);
    let bias = weights(&mut g, "fc_b", &[3]);
    let y = value(&mut g, "y");
    g.add_node(Node::new(
        "fc",
        Op::Gemm { alpha: None, beta: None, trans_a: None, trans_b: Some(1) },
        vec![Some(fl), Some(w), Some(bias)],
        vec![Some(y)],
    ))
    .unwrap();
    g.outputs.push(y);
    let m = finish(g);
    let names =
        BTreeMap::from([("a", a), ("b", b), ("c", c), ("e", e), ("f", f), ("d", d), ("fl", fl)]);
    (m, names)
}

#[test]
fn groups_follow_residuals_concat_depthwise_and_flatten() {
    let (m, v) = sample();
    let gr = groups::build(&m.graph).unwrap();
    // 8 residual channels (a, b, c, e, and d's first 8, its pooled and flattened features) and 6 of f
    // (d's last 6); x and y are blocked.
    assert_eq!(gr.comps.len(), 14, "{:?}", gr.comps);
    let of = |val: ValueId, k: usize| gr.comps.iter().position(|c| c.contains(&(val, k)));
    for k in 0..8 {
        let c = of(v["a"], k).unwrap();
        for name in ["b", "c", "e", "d", "fl"] {
            assert_eq!(of(v[name], k), Some(c), "{name}[{k}]");
        }
    }
    for j in 0..6 {
        let c = of(v["f"], j).unwrap();
        assert_eq!(of(v["d"], 8 + j), Some(c));
        assert_eq!(of(v["fl"], 8 + j), Some(c));
        assert_ne!(of(v["a"], 0), Some(c));
    }
}

#[test]
fn removing_components_keeps_the_graph_valid() {
    let (m, v) = sample();
    let gr = groups::build(&m.graph).unwrap();
    let of = |val: ValueId, k: usize| gr.comps.iter().position(|c| c.contains(&(val, k))).unwrap();
    let chosen = [of(v["a"], 1), of(v["a"], 5), of(v["f"], 2)];
    let mut removed: BTreeMap<ValueId, Vec<usize>> = BTreeMap::new();
    for c in chosen {
        for (val, k) in &gr.comps[c] {
            removed.entry(*val).or_default().push(*k);
        }
    }
    removed.values_mut().for_each(|x| x.sort_unstable());
    let mut pruned = m.clone();
    shrink::apply(&mut pruned.graph, &gr, &removed).unwrap();
    shape::infer_graph(&mut pruned.graph, 17).unwrap();
    kiln_compiler::ir::verify::verify(&pruned.graph).unwrap();
    let ch = |val: ValueId| pruned.graph.value(val).shape.as_ref().unwrap()[1].known();
    assert_eq!(ch(v["c"]), Some(6));
    assert_eq!(ch(v["f"]), Some(5));
    assert_eq!(ch(v["d"]), Some(11));
    assert_eq!(ch(v["fl"]), Some(11));
    let e = pruned.graph.value(v["e"]).producer.unwrap().0;
    assert!(matches!(pruned.graph.nodes[e].op, Op::Conv { group: Some(6), .. }));
    let x = TensorData::from_f32(vec![1, 4, 6, 6], &vec![0.5; 144]);
    let out = eval::run(&pruned, &[("x".into(), x)]).unwrap();
    assert_eq!(out[0].1.dims, vec![1, 3]);
}

/// Every component of `m` can be removed alone: shapes infer, the graph verifies, the evaluator runs.
fn every_component_is_removable(m: &Model, feed: (&str, Vec<i64>)) {
    let gr = groups::build(&m.graph).unwrap();
    assert!(!gr.comps.is_empty());
    let n: i64 = feed.1.iter().product();
    let x = TensorData::from_f32(feed.1.clone(), &vec![0.25; n as usize]);
    for (i, comp) in gr.comps.iter().enumerate() {
        let mut removed: BTreeMap<ValueId, Vec<usize>> = BTreeMap::new();
        for (val, k) in comp {
            removed.entry(*val).or_default().push(*k);
        }
        let mut pruned = m.clone();
        shrink::apply(&mut pruned.graph, &gr, &removed).unwrap();
        let opset = pruned.opset();
        shape::infer_graph(&mut pruned.graph, opset)
            .unwrap_or_else(|e| panic!("component {i}: {e}"));
        kiln_compiler::ir::verify::verify(&pruned.graph).unwrap();
        eval::run(&pruned, &[(feed.0.into(), x.clone())]).unwrap();
    }
}

#[test]
fn every_component_of_the_sample_is_removable() {
    let (m, _) = sample();
    every_component_is_removable(&m, ("x", vec![1, 4, 6, 6]));
}

/// A lower-rank computed operand of a binary op ([8, 1, 1] from a Relu of an initializer, left by an
/// export without `cleanup`) and an unrelated conv: no slot of one may be tied to the other.
#[test]
fn lower_rank_operands_and_constant_inputs_do_not_tie_wrong_slots() {
    let (mut g, x) = with_input(&[1, 4, 6, 6]);
    let a = conv(&mut g, "a", x, 4, 8, 1);
    let q = conv(&mut g, "q", x, 4, 8, 1);
    let z = weights(&mut g, "z", &[8, 1, 1]);
    let zi = node(&mut g, "zi", Op::Identity, vec![z]);
    let zr = node(&mut g, "zr", Op::Act(Act::Relu), vec![zi]);
    let s = node(&mut g, "s", Op::Binary(kiln_compiler::ir::BinOp::Add), vec![a, zr]);
    let t = node(&mut g, "t", Op::Binary(kiln_compiler::ir::BinOp::Add), vec![s, q]);
    let y = conv(&mut g, "y", t, 8, 3, 1);
    g.outputs.push(y);
    let m = finish(g);
    let gr = groups::build(&m.graph).unwrap();
    // The computed [8, 1, 1] operand cannot shrink with the channels it is added to: the whole group
    // (a, q, s, t) stays, and nothing else is tied to it.
    assert!(gr.comps.is_empty(), "{:?}", gr.comps);
    assert!(gr.comps.iter().flatten().all(|(v, _)| *v != zr));
}

#[test]
fn every_component_of_the_shipped_models_is_removable() {
    use kiln_compiler::config::PassSpec;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models");
    for (file, dims) in
        [("tiny_cnn.onnx", vec![1, 3, 64, 64]), ("digits_se.onnx", vec![1, 1, 16, 16])]
    {
        let mut m = kiln_compiler::onnx::load(&root.join(file)).unwrap();
        let pins: shape::Pins = [("input".to_string(), dims.clone())].into_iter().collect();
        shape::infer(&mut m, &pins).unwrap();
        let mut cx = kiln_compiler::pipeline::PassContext::default();
        let passes: Vec<_> = ["cleanup", "fuse"]
            .iter()
            .map(|n| kiln_passes::make(&PassSpec::Name((*n).into())).unwrap())
            .collect();
        kiln_compiler::driver::run_passes(&mut m, &passes, &mut cx).unwrap();
        every_component_is_removable(&m, ("input", dims));
    }
}
