//! Small helpers shared by passes: consumer queries, bypassing a node, constant access.
use kiln_compiler::ir::{Graph, NodeId, ValueId};
use kiln_compiler::Result;

/// The only consumer of `v` (node, slot), when `v` is read exactly once and is not a graph output.
pub fn single_consumer(g: &Graph, v: ValueId) -> Option<(NodeId, usize)> {
    if g.is_output(v) {
        return None;
    }
    let c = g.consumers(v);
    let captured = g.nodes.node_weights().any(|n| n.captures.contains(&v));
    if c.len() == 1 && !captured {
        Some(c[0])
    } else {
        None
    }
}

/// Remove `node`, whose output `out` carries the same tensor as `inp`: readers of `out` read `inp`.
/// When `out` is a graph output its name is kept (it moves to `inp`) unless `inp` is itself a graph
/// input, initializer or output, in which case the node stays and `Ok(false)` is returned.
pub fn bypass(g: &mut Graph, node: NodeId, out: ValueId, inp: ValueId) -> Result<bool> {
    if g.is_output(out) {
        let inp_fixed = g.inputs.contains(&inp)
            || g.initializers.contains(&inp)
            || g.is_output(inp)
            || g.value(inp).outer;
        if inp_fixed {
            return Ok(false);
        }
        let out_name = g.value(out).name.clone();
        let dead = g.fresh_name(&format!("{out_name}__bypassed"));
        g.remove_node(node);
        g.rename_value(out, &dead)?;
        g.rename_value(inp, &out_name)?;
        let (dt, shape, doc) =
            (g.value(out).dtype, g.value(out).shape.clone(), g.value(out).doc.clone());
        let v = g.value_mut(inp);
        if v.shape.is_none() {
            v.shape = shape;
        }
        if v.dtype == kiln_compiler::ir::DType::Undefined {
            v.dtype = dt;
        }
        if v.doc.is_empty() {
            v.doc = doc;
        }
        g.replace_uses(out, inp);
        return Ok(true);
    }
    g.remove_node(node);
    g.replace_uses(out, inp);
    Ok(true)
}

/// True for the default ONNX domain.
pub fn is_onnx_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

/// A scalar f32 constant (any shape with one element).
pub fn scalar_const(g: &Graph, v: Option<ValueId>) -> Option<f32> {
    let d = g.const_data(v?)?;
    if d.len() != 1 || !d.dtype.is_float() {
        return None;
    }
    d.to_f32_vec()?.first().copied()
}

/// The other input of a binary node, given one of them.
pub fn other_input(n: &kiln_compiler::ir::Node, v: ValueId) -> Option<ValueId> {
    match (n.input(0), n.input(1)) {
        (Some(a), Some(b)) if a == v => Some(b),
        (Some(a), Some(b)) if b == v => Some(a),
        _ => None,
    }
}

pub fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 * b.abs().max(1.0)
}
