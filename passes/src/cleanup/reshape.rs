//! Reshape simplification: a chain of reshape-like ops (Reshape, Flatten, Squeeze, Unsqueeze) whose
//! intermediate results have no other reader becomes one Reshape to the final static shape.
//! Guarantees: only fires when the final shape is static; graph outputs keep their names.
use kiln_compiler::ir::{Model, Node, Op, TensorData};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

use crate::util::{is_onnx_domain, single_consumer};

/// Reshape-chain merging.
pub struct SimplifyReshape;

fn reshape_like(n: &Node) -> bool {
    is_onnx_domain(&n.domain)
        && match &n.op {
            Op::Reshape { .. } | Op::Flatten { .. } => true,
            Op::Generic { op_type, .. } => op_type == "Squeeze" || op_type == "Unsqueeze",
            _ => false,
        }
}

impl Pass for SimplifyReshape {
    fn name(&self) -> &'static str {
        "simplify_reshape"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<bool> {
        let g = &mut model.graph;
        let mut changed = false;
        for id in g.topo_order()? {
            let Some(first) = g.node(id) else { continue };
            if !reshape_like(first) {
                continue;
            }
            let (Some(x), Some(mid)) = (first.input(0), first.output(0)) else { continue };
            let Some((next, 0)) = single_consumer(g, mid) else { continue };
            let Some(second) = g.node(next) else { continue };
            if !reshape_like(second) {
                continue;
            }
            let Some(y) = second.output(0) else { continue };
            let Some(shape) = g.value(y).static_shape() else { continue };
            let name = second.name.clone();
            let target = g.add_const(
                &format!("{}_shape", g.value(y).name),
                TensorData::from_i64(vec![shape.len() as i64], &shape),
            )?;
            let allowzero = shape.contains(&0).then_some(1);
            g.remove_node(next);
            g.remove_node(id);
            g.add_node(Node::new(
                name,
                Op::Reshape { allowzero },
                vec![Some(x), Some(target)],
                vec![Some(y)],
            ))?;
            changed = true;
        }
        Ok(changed)
    }
}
