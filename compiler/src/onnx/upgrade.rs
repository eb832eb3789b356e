//! Opset upgrade: a model written at opset 11 or 12 (PyTorch 1.x's TorchScript exporter, paddle2onnx) is
//! rewritten to opset 13 before passes run, so every model gets per-channel Q/DQ (an `axis` on
//! Quantize/DequantizeLinear needs 13) and one set of op semantics downstream.
//!
//! The ops whose meaning or signature changed from 11/12 to 13 are the ones the ONNX version converter
//! rewrites (onnx/version_converter/adapters):
//! - `Split`'s `split`, `Squeeze`/`Unsqueeze`'s `axes` and `ReduceSum`'s `axes` attributes become inputs;
//! - `Softmax`, `LogSoftmax` and `Hardmax` before 13 flatten the input to 2-D at `axis` (default 1) and
//!   normalize over the whole trailing block; from 13 they normalize over the one axis (default -1). Where the
//!   axis is the last one the two agree and only the attribute is written; elsewhere the op is wrapped in
//!   Reshape to `[-1, trailing]` and back to the input's shape, which is exactly the old semantics.
//!
//! Every other op of the default domain has the same meaning at 11, 12 and 13 (13 only widened their
//! types). Subgraphs (If/Loop/Scan bodies) are rewritten by the same rules. Models below opset 11 are left
//! alone: the quantizer then says per-channel needs 13.
use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::ir::{AttrValue, Dim, Graph, Model, Node, NodeId, Op, TensorData};

/// The opset models are upgraded to.
pub const TARGET: i64 = 13;
/// The oldest opset the upgrade rewrites.
pub const OLDEST: i64 = 11;

/// What [`upgrade`] did: the opset it started from and the nodes it rewrote, by op type.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Upgrade {
    pub from: i64,
    pub to: i64,
    pub rewritten: BTreeMap<String, usize>,
}

/// Rewrite `m` to opset 13 when it is at 11 or 12. `None` when there was nothing to do (13 or newer, or
/// older than 11).
pub fn upgrade(m: &mut Model) -> Result<Option<Upgrade>> {
    let from = m.opset();
    if !(OLDEST..TARGET).contains(&from) {
        return Ok(None);
    }
    let mut rewritten = BTreeMap::new();
    upgrade_graph(&mut m.graph, &mut rewritten)?;
    for (d, v) in m.opset_imports.iter_mut() {
        if d.is_empty() || d == "ai.onnx" {
            *v = TARGET;
        }
    }
    Ok(Some(Upgrade { from, to: TARGET, rewritten }))
}

fn default_domain(n: &Node) -> bool {
    n.domain.is_empty() || n.domain == "ai.onnx"
}

fn upgrade_graph(g: &mut Graph, done: &mut BTreeMap<String, usize>) -> Result<()> {
    let ids: Vec<NodeId> = g.nodes.node_indices().collect();
    for id in ids {
        // Subgraphs first: they are values of this node's attributes.
        if let Op::Generic { attrs, .. } = &mut g.nodes[id].op {
            for a in attrs.iter_mut() {
                match &mut a.value {
                    AttrValue::Graph(sub) => upgrade_graph(sub, done)?,
                    AttrValue::Graphs(subs) => {
                        for sub in subs.iter_mut() {
                            upgrade_graph(sub, done)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        if !default_domain(&g.nodes[id]) {
            continue;
        }
        let op_type = g.nodes[id].op.op_type().to_string();
        let changed = match op_type.as_str() {
            "Split" => attr_to_input(g, id, "split", 1)?,
            "Squeeze" | "Unsqueeze" | "ReduceSum" => attr_to_input(g, id, "axes", 1)?,
            "Softmax" | "LogSoftmax" | "Hardmax" => coerced_softmax(g, id)?,
            _ => false,
        };
        if changed {
            *done.entry(op_type).or_default() += 1;
        }
    }
    g.rebuild_edges();
    Ok(())
}

/// Move the ints attribute `name` of node `id` to input `slot` as an int64 constant.
fn attr_to_input(g: &mut Graph, id: NodeId, name: &str, slot: usize) -> Result<bool> {
    let node = &mut g.nodes[id];
    let Op::Generic { attrs, .. } = &mut node.op else {
        return Ok(false);
    };
    let Some(pos) = attrs.iter().position(|a| a.name == name) else {
        return Ok(false);
    };
    let values = match &attrs[pos].value {
        AttrValue::Ints(v) => v.clone(),
        _ => {
            return Err(Error::Node {
                node: node.name.clone(),
                op: node.op.op_type().into(),
                reason: format!("attribute '{name}' is not a list of integers"),
            })
        }
    };
    attrs.remove(pos);
    let base = format!("{}_{name}", node.name);
    let c = g.add_const(&base, TensorData::from_i64(vec![values.len() as i64], &values))?;
    let node = &mut g.nodes[id];
    if node.inputs.len() <= slot {
        node.inputs.resize(slot + 1, None);
    }
    node.inputs[slot] = Some(c);
    Ok(true)
}

/// Softmax-family op at opset < 13: `axis` (default 1) flattens the input to 2-D.
fn coerced_softmax(g: &mut Graph, id: NodeId) -> Result<bool> {
    let node = g.nodes[id].clone();
    let axis = match &node.op {
        Op::Softmax { axis } => *axis,
        other => other.attr_int("axis"),
    }
    .unwrap_or(1);
    let err = |reason: String| Error::Node {
        node: node.name.clone(),
        op: node.op.op_type().into(),
        reason,
    };
    let x = node.input(0).ok_or_else(|| err("no input".into()))?;
    let y = node.output(0).ok_or_else(|| err("no output".into()))?;
    let shape = g.value(x).shape.clone().ok_or_else(|| {
        err(format!(
            "upgrading to opset {TARGET} needs the input's rank (axis {axis} flattens it before 13)"
        ))
    })?;
    let rank = shape.len() as i64;
    let a = if axis < 0 { axis + rank } else { axis };
    if !(0..rank.max(1)).contains(&a) {
        return Err(err(format!("axis {axis} is out of range for rank {rank}")));
    }
    if a == rank - 1 || rank == 0 {
        set_axis(&mut g.nodes[id].op, -1);
        return Ok(true);
    }
    // Normalize over the whole trailing block: Reshape [-1, prod(dims[a..])] → op(-1) → Reshape back.
    let trailing: Option<i64> = shape[a as usize..].iter().map(Dim::known).product();
    let trailing = trailing.ok_or_else(|| {
        err(format!(
            "upgrading to opset {TARGET} needs the sizes of the axes from {axis} on (it normalizes over all of them)"
        ))
    })?;
    let dtype = g.value(x).dtype;
    let flat_shape = g.add_const(
        &format!("{}_flat_shape", node.name),
        TensorData::from_i64(vec![2], &[-1, trailing]),
    )?;
    let flat = g.add_temp(&format!("{}_flat", node.name), dtype, None)?;
    let normed = g.add_temp(&format!("{}_normalized", node.name), dtype, None)?;
    let back_shape = g.add_temp(&format!("{}_shape", node.name), crate::ir::DType::I64, None)?;
    let reshape = |name: String, inputs: Vec<Option<crate::ir::ValueId>>, out| {
        Node::new(name, Op::from_onnx("", "Reshape", vec![]), inputs, vec![Some(out)])
    };
    // The op itself moves between the two Reshapes: remove it first so `y` can get its new producer.
    let mut op = node.op.clone();
    set_axis(&mut op, -1);
    g.remove_node(id);
    let base = node.name.clone();
    let n = reshape(
        g.fresh_node_name(&format!("{base}_flatten")),
        vec![Some(x), Some(flat_shape)],
        flat,
    );
    g.add_node(n)?;
    let mut inner = node.clone();
    inner.op = op;
    inner.inputs[0] = Some(flat);
    inner.outputs[0] = Some(normed);
    g.add_node(inner)?;
    let n = Node::new(
        g.fresh_node_name(&format!("{base}_shape")),
        Op::from_onnx("", "Shape", vec![]),
        vec![Some(x)],
        vec![Some(back_shape)],
    );
    g.add_node(n)?;
    let n = reshape(
        g.fresh_node_name(&format!("{base}_unflatten")),
        vec![Some(normed), Some(back_shape)],
        y,
    );
    g.add_node(n)?;
    Ok(true)
}

fn set_axis(op: &mut Op, axis: i64) {
    match op {
        Op::Softmax { axis: a } => *a = Some(axis),
        Op::Generic { attrs, .. } => {
            attrs.retain(|a| a.name != "axis");
            attrs.push(crate::ir::Attribute::int("axis", axis));
        }
        _ => {}
    }
}
