//! Constant and shape folding.
//!
//! Matches: `Constant` nodes (become initializers); `Shape` of a value whose shape is static (becomes an
//! int64 initializer — this is what turns PyTorch's Shape→Gather→Unsqueeze→Concat→Reshape chains static
//! once input dims are pinned); and any default-domain op whose inputs are all constant (evaluated with
//! tract in one batch, per node on failure), including the weight-scale arithmetic QAT exports compute at
//! run time. QuantizeLinear of a constant folds to the integer constant; DequantizeLinear is kept, so
//! quantization structure survives.
//! Guarantees: graph outputs stay produced by nodes; nothing with subgraphs, side effects or randomness is
//! evaluated; a fold that would grow the model by more than 1 MiB per tensor is skipped.
use std::collections::HashSet;

use kiln_compiler::eval::Evaluator;
use kiln_compiler::ir::{AttrValue, DType, Graph, Model, NodeId, TensorData, ValueId};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

use crate::util::is_onnx_domain;

/// Constant and shape folding.
pub struct FoldConstants;

const NEVER_FOLD: &[&str] = &[
    "DequantizeLinear",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
    "Constant",
    "SequenceConstruct",
    "SequenceEmpty",
    "Optional",
];
const GROW_LIMIT: usize = 1 << 20;

/// No node whose outputs (by their inferred shapes) pass this many bytes is evaluated for folding, so a
/// model asking for an enormous constant costs nothing (`KILN_FOLD_LIMIT_MB`, default 64).
fn fold_limit_bytes() -> u64 {
    std::env::var("KILN_FOLD_LIMIT_MB").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(64) << 20
}

/// Bytes of `v` by its inferred shape, when static.
fn static_bytes(g: &Graph, v: ValueId) -> Option<u64> {
    let val = g.value(v);
    let dims: Option<Vec<i64>> = val.shape.as_ref()?.iter().map(|d| d.known()).collect();
    let n = dims?.iter().try_fold(1u64, |acc, d| acc.checked_mul(u64::try_from(*d).ok()?))?;
    n.checked_mul(val.dtype.size().unwrap_or(1) as u64)
}

impl Pass for FoldConstants {
    fn name(&self) -> &'static str {
        "fold_constants"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<bool> {
        let mut changed = constants_to_initializers(&mut model.graph)?;
        changed |= fold_shapes(&mut model.graph)?;
        changed |= fold_evaluable(model, cx)?;
        Ok(changed)
    }
}

fn set_const(g: &mut Graph, v: ValueId, data: TensorData) {
    let val = g.value_mut(v);
    val.dtype = data.dtype;
    val.shape = Some(data.dims.iter().map(|d| kiln_compiler::ir::Dim::Known(*d)).collect());
    val.data = Some(data);
    if !g.initializers.contains(&v) {
        g.initializers.push(v);
    }
}

fn constant_value(op: &kiln_compiler::ir::Op) -> Option<TensorData> {
    match op.attr("value") {
        Some(AttrValue::Tensor(t)) => return Some(t),
        Some(_) => return None,
        None => {}
    }
    if let Some(v) = op.attr_float("value_float") {
        return Some(TensorData::from_f32(vec![], &[v]));
    }
    if let Some(AttrValue::Floats(v)) = op.attr("value_floats") {
        return Some(TensorData::from_f32(vec![v.len() as i64], &v));
    }
    if let Some(v) = op.attr_int("value_int") {
        return Some(TensorData::from_i64(vec![], &[v]));
    }
    if let Some(v) = op.attr_ints("value_ints") {
        return Some(TensorData::from_i64(vec![v.len() as i64], &v));
    }
    None
}

fn constants_to_initializers(g: &mut Graph) -> Result<bool> {
    let ids: Vec<NodeId> = g.nodes.node_indices().collect();
    let mut changed = false;
    for id in ids {
        let n = &g.nodes[id];
        if n.op.op_type() != "Constant" || !is_onnx_domain(&n.domain) {
            continue;
        }
        let Some(out) = n.output(0) else { continue };
        if g.is_output(out) {
            continue;
        }
        let Some(data) = constant_value(&n.op) else { continue };
        g.remove_node(id);
        set_const(g, out, data);
        changed = true;
    }
    Ok(changed)
}

fn fold_shapes(g: &mut Graph) -> Result<bool> {
    let ids: Vec<NodeId> = g.nodes.node_indices().collect();
    let mut changed = false;
    for id in ids {
        let n = &g.nodes[id];
        if n.op.op_type() != "Shape" || !is_onnx_domain(&n.domain) {
            continue;
        }
        let (Some(x), Some(out)) = (n.input(0), n.output(0)) else { continue };
        if g.is_output(out) {
            continue;
        }
        let Some(shape) = g.value(x).static_shape() else { continue };
        let r = shape.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let start = clamp(n.op.attr_int("start").unwrap_or(0));
        let end = clamp(n.op.attr_int("end").unwrap_or(r));
        let sel: Vec<i64> = if start < end { shape[start..end].to_vec() } else { vec![] };
        g.remove_node(id);
        set_const(g, out, TensorData::from_i64(vec![sel.len() as i64], &sel));
        changed = true;
    }
    Ok(changed)
}

fn foldable(g: &Graph, id: NodeId, constant: &HashSet<ValueId>) -> bool {
    let n = &g.nodes[id];
    if !is_onnx_domain(&n.domain)
        || NEVER_FOLD.contains(&n.op.op_type())
        || !n.captures.is_empty()
        || !n.op.subgraphs().is_empty()
    {
        return false;
    }
    if n.inputs.iter().flatten().next().is_none() {
        return false;
    }
    if n.outputs.iter().flatten().any(|o| g.is_output(*o)) {
        return false;
    }
    let limit = fold_limit_bytes();
    if n.outputs.iter().flatten().any(|o| static_bytes(g, *o).is_some_and(|b| b > limit)) {
        return false;
    }
    n.inputs.iter().flatten().all(|v| constant.contains(v))
}

fn fold_evaluable(model: &mut Model, cx: &mut PassContext) -> Result<bool> {
    let g = &model.graph;
    let mut constant: HashSet<ValueId> =
        (0..g.values.len() as u32).map(ValueId).filter(|v| g.const_data(*v).is_some()).collect();
    let mut batch = Vec::new();
    for id in g.topo_order()? {
        if foldable(g, id, &constant) {
            batch.push(id);
            constant.extend(g.nodes[id].outputs.iter().flatten().copied());
        }
    }
    if batch.is_empty() {
        return Ok(false);
    }
    let results = match evaluate(model, &batch) {
        Ok(r) => r,
        Err(_) => {
            // One op tract cannot evaluate should not stop the rest: go node by node, in order, and
            // keep only folds whose inputs are still constant.
            let mut out = Vec::new();
            for id in &batch {
                let ready = model.graph.nodes[*id]
                    .inputs
                    .iter()
                    .flatten()
                    .all(|v| model.graph.const_data(*v).is_some());
                if !ready {
                    continue;
                }
                match evaluate(model, &[*id]) {
                    Ok(r) => {
                        apply(&mut model.graph, &r);
                        out.extend(r);
                    }
                    Err(e) => {
                        let n = &model.graph.nodes[*id];
                        cx.warnings.push(format!(
                            "fold_constants: node '{}' ({}) left unfolded: {e}",
                            n.name,
                            n.op.op_type()
                        ));
                    }
                }
            }
            return Ok(!out.is_empty());
        }
    };
    apply(&mut model.graph, &results);
    Ok(!results.is_empty())
}

type Folded = Vec<(NodeId, Vec<(ValueId, TensorData)>)>;

fn apply(g: &mut Graph, results: &Folded) {
    for (id, outs) in results {
        let in_bytes: usize = g.nodes[*id]
            .inputs
            .iter()
            .flatten()
            .filter_map(|v| g.const_data(*v))
            .map(|d| d.byte_len())
            .sum();
        let out_bytes: usize = outs.iter().map(|(_, d)| d.byte_len()).sum();
        if out_bytes > in_bytes + GROW_LIMIT {
            continue;
        }
        g.remove_node(*id);
        for (v, d) in outs {
            set_const(g, *v, d.clone());
        }
    }
}

/// Evaluate `nodes` (in topological order, inputs constant or produced within) in one tract run.
fn evaluate(model: &Model, nodes: &[NodeId]) -> Result<Folded> {
    let g = &model.graph;
    let mut sub = Graph::default();
    let mut map = std::collections::HashMap::new();
    let mut get = |sub: &mut Graph, v: ValueId| -> Result<ValueId> {
        if let Some(x) = map.get(&v) {
            return Ok(*x);
        }
        let val = g.value(v);
        let mut nv = kiln_compiler::ir::Value::new(val.name.clone());
        nv.dtype = val.dtype;
        nv.shape = val.shape.clone();
        nv.data = g.const_data(v).cloned();
        let id = sub.add_value(nv)?;
        if g.const_data(v).is_some() {
            sub.initializers.push(id);
        }
        map.insert(v, id);
        Ok(id)
    };
    let mut outputs = Vec::new();
    for id in nodes {
        let n = &g.nodes[*id];
        let mut nn = n.clone();
        nn.inputs = n
            .inputs
            .iter()
            .map(|v| v.map(|v| get(&mut sub, v)).transpose())
            .collect::<Result<_>>()?;
        nn.outputs = n
            .outputs
            .iter()
            .map(|v| v.map(|v| get(&mut sub, v)).transpose())
            .collect::<Result<_>>()?;
        for (o, so) in n.outputs.iter().zip(&nn.outputs) {
            if let (Some(o), Some(so)) = (o, so) {
                outputs.push((*id, *o, *so));
            }
        }
        sub.add_node(nn)?;
    }
    sub.rebuild_edges();
    sub.outputs = outputs.iter().map(|(_, _, so)| *so).collect();
    let m = Model {
        ir_version: model.ir_version,
        opset_imports: model.opset_imports.clone(),
        graph: sub,
        ..Default::default()
    };
    let ev = Evaluator::new(&m, &[])?;
    let vals = ev.run(&[])?;
    let mut res: Folded = Vec::new();
    for ((id, o, _), (_, t)) in outputs.iter().zip(vals) {
        if g.value(*o).dtype != DType::Undefined && g.value(*o).dtype != t.dtype {
            return Err(kiln_compiler::Error::Pass {
                pass: "fold_constants".into(),
                reason: format!(
                    "'{}' evaluated to {} but is declared {}",
                    g.value(*o).name,
                    t.dtype,
                    g.value(*o).dtype
                ),
            });
        }
        match res.last_mut() {
            Some((last, v)) if last == id => v.push((*o, t)),
            _ => res.push((*id, vec![(*o, t)])),
        }
    }
    Ok(res)
}
