//! Shape and dtype inference for every value of a graph, with input dims pinned by the caller.
//!
//! Walks nodes in topological order. Small integer tensors computed from shapes (PyTorch's
//! Shape→Gather→Unsqueeze→Concat→Reshape chains) are evaluated on the side so reshapes get static
//! shapes; nothing in the graph is rewritten (folding is the cleanup pass's job). Ops kiln does not
//! know keep whatever type the model declared for their outputs.
mod check;
mod ops;

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::ir::{DType, Dim, Graph, Model, NodeId, TensorData, ValueId};

/// Dims pinned per input name.
pub type Pins = HashMap<String, Vec<i64>>;

/// What inference knows about a value while walking the graph.
#[derive(Clone, Debug)]
pub struct Fact {
    pub dtype: DType,
    pub shape: Option<Vec<Dim>>,
    /// Known constant value (initializers and small computed tensors).
    pub konst: Option<TensorData>,
}

/// Pin input dims, then infer every value's dtype and shape. Unpinned symbolic dims stay symbolic.
pub fn infer(model: &mut Model, pins: &Pins) -> Result<()> {
    let opset = model.opset();
    let g = &mut model.graph;
    for (name, dims) in pins {
        let id = g.inputs.iter().copied().find(|v| &g.value(*v).name == name).ok_or_else(|| {
            Error::Input {
                name: name.clone(),
                reason: format!(
                    "the model has no input of that name (inputs: {})",
                    g.inputs
                        .iter()
                        .map(|v| g.value(*v).name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        })?;
        let v = g.value_mut(id);
        if let Some(shape) = &v.shape {
            if shape.len() != dims.len() {
                return Err(Error::Input {
                    name: name.clone(),
                    reason: format!(
                        "rank {} given, the model declares rank {}",
                        dims.len(),
                        shape.len()
                    ),
                });
            }
            for (d, p) in shape.iter().zip(dims) {
                if let Dim::Known(k) = d {
                    if k != p {
                        return Err(Error::Input {
                            name: name.clone(),
                            reason: format!(
                                "dims {dims:?} conflict with the model's {}",
                                fmt_shape(shape)
                            ),
                        });
                    }
                }
            }
        }
        v.shape = Some(dims.iter().map(|d| Dim::Known(*d)).collect());
    }
    infer_graph(g, opset)?;
    // Inferred types can expose inconsistencies the declared ones hid (a Cast feeding a float op, say).
    crate::ir::verify::verify(g)
}

pub fn fmt_shape(s: &[Dim]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
}

/// Infer shapes within one graph (subgraph bodies are left as declared).
pub fn infer_graph(g: &mut Graph, opset: i64) -> Result<()> {
    let order = g.topo_order()?;
    let mut facts: HashMap<ValueId, Fact> = HashMap::new();
    let fact_of = |g: &Graph, facts: &HashMap<ValueId, Fact>, v: ValueId| -> Fact {
        facts.get(&v).cloned().unwrap_or_else(|| {
            let val = g.value(v);
            Fact { dtype: val.dtype, shape: val.shape.clone(), konst: val.data.clone() }
        })
    };
    for id in order {
        let n = &g.nodes[id];
        let ins: Vec<Option<Fact>> =
            n.inputs.iter().map(|v| v.map(|v| fact_of(g, &facts, v))).collect();
        // A typed op kept generic for a stray attribute is checked and inferred as the op it
        // evaluates as (evaluators ignore the stray attribute): its shape then reaches the checks
        // downstream (an out-of-range axis after it hangs tract otherwise; found by the graph fuzz
        // target).
        let typed = n.op.typed_ignoring_unknown().map(|op| crate::ir::Node { op, ..n.clone() });
        let n = typed.as_ref().unwrap_or(n);
        check::node(n, &ins).map_err(|reason| shape_err(g, id, reason))?;
        let outs = ops::infer_node(n, &ins, opset).map_err(|reason| shape_err(g, id, reason))?;
        check::outputs(&outs).map_err(|reason| shape_err(g, id, reason))?;
        let outputs = n.outputs.clone();
        for (slot, o) in outputs.iter().enumerate() {
            let (Some(o), Some(f)) = (o, outs.get(slot)) else { continue };
            let val = g.value_mut(*o);
            if f.dtype != DType::Undefined {
                val.dtype = f.dtype;
            }
            if let Some(s) = &f.shape {
                // A negative extent can only come from contradictory input: treat it as unknown.
                let s: Vec<Dim> = s
                    .iter()
                    .map(|d| {
                        if matches!(d, Dim::Known(k) if *k < 0) {
                            Dim::Unknown
                        } else {
                            d.clone()
                        }
                    })
                    .collect();
                let s = &s;
                // Keep the model's symbolic names where inference only knows "unknown".
                let merged = match &val.shape {
                    Some(old) if old.len() == s.len() => s
                        .iter()
                        .zip(old)
                        .map(
                            |(new, old)| {
                                if *new == Dim::Unknown {
                                    old.clone()
                                } else {
                                    new.clone()
                                }
                            },
                        )
                        .collect(),
                    _ => s.clone(),
                };
                val.shape = Some(merged);
            }
            facts.insert(
                *o,
                Fact { dtype: val.dtype, shape: val.shape.clone(), konst: f.konst.clone() },
            );
        }
    }
    Ok(())
}

fn shape_err(g: &Graph, id: NodeId, reason: String) -> Error {
    let n = &g.nodes[id];
    Error::Shape { node: n.name.clone(), op: n.op.op_type().to_string(), reason }
}
