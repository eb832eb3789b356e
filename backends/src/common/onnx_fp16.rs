//! `precision: fp16` for the onnx backend: float16 weights *and* activations (what GPU and NPU runtimes
//! execute in half precision), with float32 where it is needed:
//! - the graph's float inputs and outputs stay float32 (a Cast after each input, before each output), so
//!   callers feed and read the same tensors as with the fp32 artifact;
//! - islands: a layer the build keeps in float32 (`fp32_layers:`, or the fp16 error search —
//!   `Node::keeps_fp32_weights`) reads float32 (Casts before its float inputs, after its outputs) and keeps
//!   its constants float32;
//! - ops whose float output type is not set by their inputs (Q/DQ, ConstantOfShape, random ops) are
//!   islands too, and inputs ONNX types as float32 whatever the data (Resize `scales`) stay float32;
//! - a Cast to float inside the graph casts to float16 instead.
//!
//! Every other float32 constant is stored as float16 and every float32 value becomes float16.
use std::collections::{HashMap, HashSet};

use kiln_compiler::ir::{
    AttrValue, DType, Graph, Model, Node, NodeId, Op, TensorData, Value, ValueId,
};
use kiln_compiler::{Error, Result};

use kiln_compiler::ir::half::{CAST_FLOAT as FLOAT, CAST_FLOAT16 as FLOAT16};

fn op_type(n: &Node) -> &str {
    n.op.op_type()
}

/// Ops that must run in float32 whatever their neighbours: their float output type is fixed by an
/// attribute or by float32 parameters.
fn fixed_float_op(n: &Node) -> bool {
    matches!(
        op_type(n),
        "QuantizeLinear"
            | "DequantizeLinear"
            | "ConstantOfShape"
            | "RandomNormal"
            | "RandomUniform"
            | "RandomNormalLike"
            | "RandomUniformLike"
            | "EyeLike"
            | "DynamicQuantizeLinear"
    )
}

/// Inputs that ONNX types as float32 regardless of the data type.
fn float32_slot(n: &Node, slot: usize) -> bool {
    matches!((op_type(n), slot), ("Resize", 2) | ("Upsample", 1))
}

fn cast_node(g: &mut Graph, base: &str, from: ValueId, to: ValueId, code: i64) -> Result<()> {
    let name = g.fresh_node_name(base);
    kiln_compiler::ir::half::add_cast(g, &name, from, to, code)?;
    Ok(())
}

fn new_value(g: &mut Graph, like: ValueId, suffix: &str, dtype: DType) -> Result<ValueId> {
    let base = format!("{}{suffix}", g.value(like).name);
    let mut v = Value::new(g.fresh_name(&base));
    v.dtype = dtype;
    v.shape = g.value(like).shape.clone();
    g.add_value(v)
}

fn to_half(d: &TensorData) -> Option<TensorData> {
    Some(TensorData::from_f32_as_f16(d.dims.clone(), &d.to_f32_vec()?))
}

/// The float16 form of `model` (see the module doc). Returns the model and how many nodes stayed float32.
pub fn to_fp16(model: &Model) -> Result<(Model, usize)> {
    let mut m = model.clone();
    let g = &mut m.graph;
    let order = g.topo_order()?;
    let islands: HashSet<NodeId> = order
        .iter()
        .copied()
        .filter(|id| g.nodes[*id].keeps_fp32_weights() || fixed_float_op(&g.nodes[*id]))
        .collect();
    if order.iter().any(|id| !g.nodes[*id].op.subgraphs().is_empty()) {
        return Err(Error::Backend {
            backend: "onnx".into(),
            target: String::new(),
            reason: "fp16: models with subgraphs (If/Loop/Scan) are not converted".into(),
        });
    }
    let is_const = |g: &Graph, v: ValueId| g.const_data(v).is_some();
    let float_values: Vec<ValueId> = (0..g.values.len())
        .map(|i| ValueId(i as u32))
        .filter(|v| g.value(*v).dtype == DType::F32 && !is_const(g, *v))
        .collect();

    // 1. Constants: a float16 copy for every use outside islands and float32-typed slots.
    let mut half_of: HashMap<ValueId, ValueId> = HashMap::new();
    for id in &order {
        let island = islands.contains(id);
        for slot in 0..g.nodes[*id].inputs.len() {
            let Some(v) = g.nodes[*id].inputs[slot] else { continue };
            let Some(d) = g.const_data(v).filter(|d| d.dtype == DType::F32) else { continue };
            if island || float32_slot(&g.nodes[*id], slot) {
                continue;
            }
            let h = match half_of.get(&v) {
                Some(h) => *h,
                None => {
                    let data = to_half(d).ok_or_else(|| {
                        Error::invalid(format!(
                            "fp16: constant '{}' is not readable as float",
                            g.value(v).name
                        ))
                    })?;
                    let base = format!("{}_fp16", g.value(v).name);
                    let h = g.add_const(&base, data)?;
                    half_of.insert(v, h);
                    h
                }
            };
            if let Some(n) = g.node_mut(*id) {
                n.inputs[slot] = Some(h);
            }
        }
    }
    // 2. Every non-constant float32 value becomes float16, except between islands: a value an island
    //    writes and only islands read stays float32 (an activation too large for float16 passes through).
    let keep32: HashSet<ValueId> = float_values
        .iter()
        .copied()
        .filter(|v| kiln_compiler::ir::half::stays_fp32(g, *v, &islands))
        .collect();
    for v in float_values.iter().filter(|v| !keep32.contains(v)) {
        g.value_mut(*v).dtype = DType::F16;
    }
    // 3. Casts to float inside the graph cast to float16.
    for id in &order {
        if islands.contains(id) || op_type(&g.nodes[*id]) != "Cast" {
            continue;
        }
        if let Some(n) = g.node_mut(*id) {
            if let Op::Generic { attrs, .. } = &mut n.op {
                for a in attrs.iter_mut().filter(|a| a.name == "to") {
                    if matches!(a.value, AttrValue::Int(FLOAT)) {
                        a.value = AttrValue::Int(FLOAT16);
                    }
                }
            }
        }
    }
    // 4. Islands read and write float32.
    for id in &order {
        if !islands.contains(id) {
            continue;
        }
        let name = g.nodes[*id].name.clone();
        for slot in 0..g.nodes[*id].inputs.len() {
            let Some(v) = g.nodes[*id].inputs[slot] else { continue };
            if g.value(v).dtype != DType::F16 || is_const(g, v) {
                continue;
            }
            let v32 = new_value(g, v, "_fp32", DType::F32)?;
            cast_node(g, &format!("{name}_in{slot}_to_fp32"), v, v32, FLOAT)?;
            if let Some(n) = g.node_mut(*id) {
                n.inputs[slot] = Some(v32);
            }
        }
        for slot in 0..g.nodes[*id].outputs.len() {
            let Some(o) = g.nodes[*id].outputs[slot] else { continue };
            if g.value(o).dtype != DType::F16 {
                continue;
            }
            let o32 = new_value(g, o, "_fp32", DType::F32)?;
            g.value_mut(o).producer = None;
            if let Some(n) = g.node_mut(*id) {
                n.outputs[slot] = Some(o32);
            }
            g.value_mut(o32).producer = Some((*id, slot));
            cast_node(g, &format!("{name}_out{slot}_to_fp16"), o32, o, FLOAT16)?;
        }
    }
    // 5. Graph inputs and outputs stay float32.
    let data_inputs: Vec<ValueId> =
        g.inputs.iter().copied().filter(|v| !g.initializers.contains(v)).collect();
    for x in data_inputs {
        if g.value(x).dtype != DType::F16 {
            continue;
        }
        g.value_mut(x).dtype = DType::F32;
        let x16 = new_value(g, x, "_fp16", DType::F16)?;
        let users = g.consumers(x);
        for (c, slot) in users {
            if let Some(n) = g.node_mut(c) {
                n.inputs[slot] = Some(x16);
            }
        }
        cast_node(g, &format!("{}_to_fp16", g.value(x).name), x, x16, FLOAT16)?;
    }
    for k in 0..g.outputs.len() {
        let y = g.outputs[k];
        if g.value(y).dtype != DType::F16 {
            continue;
        }
        let y16 = new_value(g, y, "_fp16", DType::F16)?;
        if let Some((p, slot)) = g.value(y).producer {
            if let Some(n) = g.node_mut(p) {
                n.outputs[slot] = Some(y16);
            }
            g.value_mut(y16).producer = Some((p, slot));
        }
        g.value_mut(y).producer = None;
        let users = g.consumers(y);
        for (c, slot) in users {
            if let Some(n) = g.node_mut(c) {
                n.inputs[slot] = Some(y16);
            }
        }
        g.value_mut(y).dtype = DType::F32;
        cast_node(g, &format!("{}_to_fp32", g.value(y).name), y16, y, FLOAT)?;
    }
    // The float32 originals that no node reads any more are not written.
    let orphans: HashSet<ValueId> = half_of
        .keys()
        .copied()
        .filter(|v| g.consumers(*v).is_empty() && !g.is_output(*v))
        .collect();
    g.initializers.retain(|v| !orphans.contains(v));
    for v in &orphans {
        g.value_mut(*v).data = None;
    }
    g.rebuild_edges();
    kiln_compiler::ir::verify::verify(g)?;
    Ok((m, islands.len()))
}
