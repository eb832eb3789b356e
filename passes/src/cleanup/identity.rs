//! Removes ops that pass their input through unchanged at inference: Identity, Dropout (inference mode,
//! mask output unused), Cast to the type the value already has, and Reshape/Flatten/Squeeze/Unsqueeze
//! whose static output shape equals the input's.
//! Guarantees: graph output names are kept (see `util::bypass`).
use kiln_compiler::ir::{Model, NodeId, Op};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

use crate::util::{bypass, is_onnx_domain};

/// Identity-like op removal.
pub struct RemoveIdentity;

impl Pass for RemoveIdentity {
    fn name(&self) -> &'static str {
        "remove_identity"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<bool> {
        let g = &mut model.graph;
        let mut changed = false;
        let ids: Vec<NodeId> = g.nodes.node_indices().collect();
        for id in ids {
            let Some(n) = g.node(id) else { continue };
            if !is_onnx_domain(&n.domain) {
                continue;
            }
            let (Some(x), Some(y)) = (n.input(0), n.output(0)) else { continue };
            let same_shape = || {
                let (a, b) = (g.value(x).static_shape(), g.value(y).static_shape());
                a.is_some() && a == b && g.value(x).dtype == g.value(y).dtype
            };
            let passthrough = match &n.op {
                Op::Identity => true,
                Op::Generic { op_type, .. } if op_type == "Dropout" => {
                    let mask_unused = n
                        .output(1)
                        .map(|m| g.consumers(m).is_empty() && !g.is_output(m))
                        .unwrap_or(true);
                    let training = n
                        .input(2)
                        .and_then(|t| g.const_data(t))
                        .and_then(|d| d.to_i64_vec())
                        .map(|v| v.first() == Some(&1));
                    mask_unused && (n.inputs.len() <= 2 || training == Some(false))
                }
                Op::Generic { op_type, .. } if op_type == "Cast" => {
                    n.op.attr_int("to").map(|t| t as i32) == Some(g.value(x).dtype.to_onnx())
                        && g.value(x).dtype == g.value(y).dtype
                }
                Op::Reshape { .. } | Op::Flatten { .. } => same_shape(),
                Op::Generic { op_type, .. } if op_type == "Squeeze" || op_type == "Unsqueeze" => {
                    same_shape()
                }
                _ => false,
            };
            if passthrough && bypass(g, id, y, x)? {
                changed = true;
            }
        }
        Ok(changed)
    }
}
