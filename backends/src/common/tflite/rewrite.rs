//! Graph rewrites the TFLite lowering applies to its own copy of the model first.
//!
//! - A 1-D convolution (input [N, C, L]) becomes Unsqueeze(axis 2) → 2-D convolution over [N, C, 1, L]
//!   with a [1, k] kernel → Squeeze(axis 2), so CONV_2D / DEPTHWISE_CONV_2D and the channel-last layout
//!   serve it (TFLite has no 1-D convolution). The weights, or the quantized weights behind a
//!   DequantizeLinear, get the extra unit dimension in place when nothing else reads them.
use kiln_compiler::ir::{Graph, Model, Node, NodeId, Op, TensorData, ValueId, Window};
use kiln_compiler::{Error, Result};

fn is_conv1d(g: &Graph, n: &Node) -> bool {
    matches!(n.op, Op::Conv { .. })
        && n.input(0).and_then(|x| g.value(x).shape.as_ref().map(|s| s.len())) == Some(3)
}

/// Does `m` have anything to rewrite?
pub fn needed(m: &Model) -> bool {
    m.graph.nodes.node_weights().any(|n| is_conv1d(&m.graph, n))
}

/// Apply every rewrite; returns whether the graph changed.
pub fn rewrite(m: &mut Model) -> Result<bool> {
    let ids: Vec<NodeId> = m.graph.nodes.node_indices().collect();
    let mut changed = false;
    for id in ids {
        if is_conv1d(&m.graph, &m.graph.nodes[id]) {
            conv1d(&mut m.graph, id)?;
            changed = true;
        }
    }
    if changed {
        m.graph.rebuild_edges();
        let opset = m.opset();
        kiln_compiler::shape::infer_graph(&mut m.graph, opset)?;
    }
    Ok(changed)
}

/// One more unit dim at position 2 of a constant's dims.
fn unsqueezed(d: &TensorData) -> TensorData {
    let mut dims = d.dims.clone();
    dims.insert(2.min(dims.len()), 1);
    let mut t = d.clone();
    t.dims = dims;
    t
}

/// Give the weight `w` of conv `id` a unit dim at 2: the constant itself, or the constant behind a
/// DequantizeLinear, when only this path reads it; otherwise a copy.
fn weight_2d(g: &mut Graph, w: ValueId) -> Result<ValueId> {
    if let Some(d) = g.const_data(w).cloned() {
        let name = g.value(w).name.clone();
        return g.add_const(&format!("{name}_2d"), unsqueezed(&d));
    }
    let Some((p, _)) = g.value(w).producer else {
        return Err(Error::invalid(format!(
            "1-D convolution weight '{}' is not constant",
            g.value(w).name
        )));
    };
    let dq = g.nodes[p].clone();
    if !matches!(dq.op, Op::DequantizeLinear { .. }) {
        return Err(Error::invalid(format!(
            "1-D convolution weight '{}' is not constant",
            g.value(w).name
        )));
    }
    let q = dq.input(0).and_then(|q| g.const_data(q).cloned()).ok_or_else(|| {
        Error::invalid(format!("1-D convolution weight '{}' is not constant", g.value(w).name))
    })?;
    let name = g.value(w).name.clone();
    let q2 = g.add_const(&format!("{name}_q2d"), unsqueezed(&q))?;
    let w2 = g.add_temp(&format!("{name}_2d"), g.value(w).dtype, None)?;
    let mut n = dq.clone();
    n.name = g.fresh_node_name(&format!("{}_2d", dq.name));
    n.inputs[0] = Some(q2);
    n.outputs = vec![Some(w2)];
    g.add_node(n)?;
    Ok(w2)
}

fn conv1d(g: &mut Graph, id: NodeId) -> Result<()> {
    let node = g.nodes[id].clone();
    let Op::Conv { window, group } = &node.op else { return Ok(()) };
    let (x, w, y) = match (node.input(0), node.input(1), node.output(0)) {
        (Some(x), Some(w), Some(y)) => (x, w, y),
        _ => {
            return Err(Error::invalid(format!(
                "convolution '{}' lacks an input or output",
                node.name
            )))
        }
    };
    let w2 = weight_2d(g, w)?;
    let two =
        |v: &Option<Vec<i64>>, unit: i64| v.as_ref().map(|v| [vec![unit], v.clone()].concat());
    let pads = window.pads.as_ref().map(|p| match p.as_slice() {
        [a, b] => vec![0, *a, 0, *b],
        other => other.to_vec(),
    });
    let w2d = Window {
        auto_pad: window.auto_pad.clone(),
        kernel_shape: two(&window.kernel_shape, 1),
        pads,
        strides: two(&window.strides, 1),
        dilations: two(&window.dilations, 1),
    };
    let dtype = g.value(x).dtype;
    let axes = g.add_const(&format!("{}_axis", node.name), TensorData::from_i64(vec![1], &[2]))?;
    let x4 = g.add_temp(&format!("{}_2d_in", node.name), dtype, None)?;
    let y4 = g.add_temp(&format!("{}_2d_out", node.name), g.value(y).dtype, None)?;
    g.remove_node(id);
    let un = Node::new(
        g.fresh_node_name(&format!("{}_unsqueeze", node.name)),
        Op::from_onnx("", "Unsqueeze", vec![]),
        vec![Some(x), Some(axes)],
        vec![Some(x4)],
    );
    g.add_node(un)?;
    let mut conv = node.clone();
    conv.op = Op::Conv { window: w2d, group: *group };
    conv.inputs[0] = Some(x4);
    conv.inputs[1] = Some(w2);
    conv.outputs = vec![Some(y4)];
    g.add_node(conv)?;
    let sq = Node::new(
        g.fresh_node_name(&format!("{}_squeeze", node.name)),
        Op::from_onnx("", "Squeeze", vec![]),
        vec![Some(y4), Some(axes)],
        vec![Some(y)],
    );
    g.add_node(sq)?;
    Ok(())
}
