//! MatMul + Add → Gemm: a rank-2 MatMul with a constant right operand, read only by an Add of a constant
//! bias broadcastable to its output ([N], [1, N] or [M, N]), becomes one Gemm.
//! Guarantees: rank-2 only (Gemm's domain); graph outputs keep their names.
use kiln_compiler::ir::{BinOp, Model, Node, Op};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

use crate::util::{is_onnx_domain, other_input, single_consumer};

/// MatMul + Add → Gemm.
pub struct MatMulAddToGemm;

impl Pass for MatMulAddToGemm {
    fn name(&self) -> &'static str {
        "matmul_add_to_gemm"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<bool> {
        let g = &mut model.graph;
        let mut changed = false;
        for id in g.topo_order()? {
            let Some(n) = g.node(id) else { continue };
            if !matches!(n.op, Op::MatMul) || n.act.is_some() || !is_onnx_domain(&n.domain) {
                continue;
            }
            let (Some(a), Some(b), Some(y)) = (n.input(0), n.input(1), n.output(0)) else {
                continue;
            };
            let (Some(ash), Some(bsh), Some(ysh)) = (
                g.value(a).static_shape(),
                g.const_data(b).map(|d| d.dims.clone()),
                g.value(y).static_shape(),
            ) else {
                continue;
            };
            if ash.len() != 2 || bsh.len() != 2 || !g.value(a).dtype.is_float() {
                continue;
            }
            let Some((add, _)) = single_consumer(g, y) else { continue };
            let an = &g.nodes[add];
            if !matches!(an.op, Op::Binary(BinOp::Add)) || an.act.is_some() {
                continue;
            }
            let Some(c) = other_input(an, y) else { continue };
            let Some(cd) = g.const_data(c) else { continue };
            let ok = cd.dims == vec![ysh[1]] || cd.dims == vec![1, ysh[1]] || cd.dims == ysh;
            let Some(out) = an.output(0) else { continue };
            if !ok || cd.dtype != g.value(a).dtype {
                continue;
            }
            let name = an.name.clone();
            g.remove_node(add);
            g.remove_node(id);
            g.add_node(Node::new(
                name,
                Op::Gemm { alpha: None, beta: None, trans_a: None, trans_b: None },
                vec![Some(a), Some(b), Some(c)],
                vec![Some(out)],
            ))?;
            changed = true;
        }
        Ok(changed)
    }
}
