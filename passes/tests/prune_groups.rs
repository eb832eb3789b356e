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

/// x[1,4,6,6] → a = conv(4→8) → b = conv(a, 8→8) → c = a + b → e = depthwise(c) → d = concat(e, f =
/// conv(c, 8→6)) → GlobalAveragePool → Flatten → Gemm(14→3).
fn sample() -> (Model, BTreeMap<&'static str, ValueId>) {
    let mut g = Graph::default();
    let mut x = Value::new("x");
    x.dtype = DType::F32;
    x.shape = Some([1, 4, 6, 6].iter().map(|d| Dim::Known(*d)).collect());
    let x = g.add_value(x).unwrap();
    g.inputs.push(x);
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
    let mut m = Model {
        ir_version: 8,
        opset_imports: vec![(String::new(), 17)],
        graph: g,
        ..Default::default()
    };
    shape::infer(&mut m, &Default::default()).unwrap();
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
