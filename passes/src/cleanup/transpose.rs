//! Transpose cancellation: Transpose(Transpose(x, p), q) becomes one Transpose with the composed
//! permutation, or nothing when the composition is the identity.
//! Guarantees: only when the inner result has no other reader; graph outputs keep their names.
use kiln_compiler::ir::{Model, Node, Op};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

use crate::util::{bypass, is_onnx_domain, single_consumer};

/// Transpose composition and cancellation.
pub struct CancelTranspose;

fn perm_of(n: &Node, rank: usize) -> Option<Vec<usize>> {
    match &n.op {
        Op::Transpose { perm } if is_onnx_domain(&n.domain) => {
            let p: Vec<i64> = perm.clone().unwrap_or_else(|| (0..rank as i64).rev().collect());
            let p: Option<Vec<usize>> =
                p.iter().map(|&x| usize::try_from(x).ok().filter(|x| *x < rank)).collect();
            p.filter(|p| p.len() == rank)
        }
        _ => None,
    }
}

impl Pass for CancelTranspose {
    fn name(&self) -> &'static str {
        "cancel_transpose"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<bool> {
        let g = &mut model.graph;
        let mut changed = false;
        for id in g.topo_order()? {
            let Some(first) = g.node(id) else { continue };
            let (Some(x), Some(mid)) = (first.input(0), first.output(0)) else { continue };
            let Some(rank) = g.value(x).shape.as_ref().map(|s| s.len()) else { continue };
            let Some(p) = perm_of(first, rank) else { continue };
            let Some((next, 0)) = single_consumer(g, mid) else { continue };
            let Some(second) = g.node(next) else { continue };
            let Some(q) = perm_of(second, rank) else { continue };
            let Some(y) = second.output(0) else { continue };
            // out[i] = mid[q[i]] = x[p[q[i]]]
            let composed: Vec<usize> = q.iter().map(|&i| p[i]).collect();
            let name = second.name.clone();
            if composed.iter().enumerate().all(|(i, &c)| i == c) {
                let fixed = g.inputs.contains(&x)
                    || g.initializers.contains(&x)
                    || g.is_output(x)
                    || g.value(x).outer;
                if g.is_output(y) && fixed {
                    continue;
                }
                g.remove_node(id);
                bypass(g, next, y, x)?;
            } else {
                g.remove_node(next);
                g.remove_node(id);
                let perm = Some(composed.iter().map(|&c| c as i64).collect());
                g.add_node(Node::new(name, Op::Transpose { perm }, vec![Some(x)], vec![Some(y)]))?;
            }
            changed = true;
        }
        Ok(changed)
    }
}
