//! A deterministic text dump of the IR, for golden tests and `--dump-ir`.
//!
//! One line per value declaration and per node in topological order:
//! `%out = Conv[group=1, strides=[2,2]](%x, %w, %b) : f32[1,32,112,112]  # node_name`.
use std::fmt::Write;

use super::{AttrValue, Graph, Model, ValueId};

/// Dump a whole model.
pub fn dump_model(m: &Model) -> String {
    let mut s = String::new();
    let ops: Vec<String> = m
        .opset_imports
        .iter()
        .map(|(d, v)| format!("{}:{v}", if d.is_empty() { "ai.onnx" } else { d }))
        .collect();
    let _ = writeln!(
        s,
        "model ir_version={} opsets=[{}] producer=\"{} {}\"",
        m.ir_version,
        ops.join(", "),
        m.producer_name,
        m.producer_version
    );
    dump_graph(&m.graph, 0, &mut s);
    s
}

fn ty(g: &Graph, v: ValueId) -> String {
    let val = g.value(v);
    match &val.shape {
        Some(dims) => {
            let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("{}[{}]", val.dtype, d.join(","))
        }
        None => format!("{}[..]", val.dtype),
    }
}

fn attr_text(v: &AttrValue) -> String {
    match v {
        AttrValue::Float(f) => format!("{f}"),
        AttrValue::Int(i) => format!("{i}"),
        AttrValue::String(b) => format!("{:?}", String::from_utf8_lossy(b)),
        AttrValue::Tensor(t) => format!("tensor<{}{:?}>", t.dtype, t.dims),
        AttrValue::Graph(g) => format!("graph<{}, {} nodes>", g.name, g.node_count()),
        AttrValue::Floats(f) => format!("{f:?}"),
        AttrValue::Ints(i) => format!("{i:?}").replace(' ', ""),
        AttrValue::Strings(s) => format!(
            "{:?}",
            s.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>()
        ),
        AttrValue::Tensors(t) => format!("tensors<{}>", t.len()),
        AttrValue::Graphs(g) => format!("graphs<{}>", g.len()),
        AttrValue::Opaque(b) => format!("opaque<{} bytes>", b.len()),
    }
}

/// A fused activation as text, e.g. `Clip(0,6)`.
pub fn act_text(a: &super::Act) -> String {
    use super::Act;
    let f = |v: &Option<f32>| v.map(|x| x.to_string()).unwrap_or_else(|| "_".into());
    match a {
        Act::Clip { min, max } => format!("Clip({},{})", f(min), f(max)),
        Act::HardSigmoid { alpha, beta } => format!("HardSigmoid({},{})", f(alpha), f(beta)),
        Act::LeakyRelu { alpha } => format!("LeakyRelu({})", f(alpha)),
        Act::Gelu { approximate } => {
            format!("Gelu({})", approximate.clone().unwrap_or_else(|| "none".into()))
        }
        other => format!("{other:?}"),
    }
}

fn dump_graph(g: &Graph, depth: usize, s: &mut String) {
    let pad = "  ".repeat(depth);
    let _ = writeln!(s, "{pad}graph {:?} {{", g.name);
    for v in &g.inputs {
        let _ = writeln!(s, "{pad}  input %{}: {}", g.value(*v).name, ty(g, *v));
    }
    for v in &g.initializers {
        let d = g.value(*v).data.as_ref().map(|d| d.byte_len()).unwrap_or(0);
        let _ = writeln!(s, "{pad}  const %{}: {} ({d} B)", g.value(*v).name, ty(g, *v));
    }
    let order = g.topo_order().unwrap_or_else(|_| g.nodes.node_indices().collect());
    for id in order {
        let n = &g.nodes[id];
        let outs: Vec<String> = n
            .outputs
            .iter()
            .map(|o| o.map(|o| format!("%{}", g.value(o).name)).unwrap_or_else(|| "_".into()))
            .collect();
        let ins: Vec<String> = n
            .inputs
            .iter()
            .map(|i| i.map(|i| format!("%{}", g.value(i).name)).unwrap_or_else(|| "_".into()))
            .collect();
        let attrs: Vec<String> =
            n.op.attributes()
                .iter()
                .map(|a| format!("{}={}", a.name, attr_text(&a.value)))
                .collect();
        let attrs =
            if attrs.is_empty() { String::new() } else { format!("[{}]", attrs.join(", ")) };
        let tys: Vec<String> = n.outputs.iter().flatten().map(|o| ty(g, *o)).collect();
        let dom = if n.domain.is_empty() { String::new() } else { format!("{}.", n.domain) };
        let attrs = match &n.act {
            Some(a) => format!("{attrs}+{}", act_text(a)),
            None => attrs,
        };
        let _ = writeln!(
            s,
            "{pad}  {} = {dom}{}{attrs}({}) : {}  # {}",
            outs.join(", "),
            n.op.op_type(),
            ins.join(", "),
            tys.join(", "),
            n.name
        );
        for sub in n.op.subgraphs() {
            dump_graph(sub, depth + 2, s);
        }
    }
    for v in &g.outputs {
        let _ = writeln!(s, "{pad}  output %{}: {}", g.value(*v).name, ty(g, *v));
    }
    let _ = writeln!(s, "{pad}}}");
}
