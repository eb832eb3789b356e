//! Pad folding: a constant-mode Pad with zero fill and zero padding on the batch and channel axes, read
//! only by a Conv (explicit or default padding), becomes part of the Conv's `pads`.
//! Guarantees: only zero fill (what Conv's own padding adds); the Pad's pads must be constant.
use kiln_compiler::ir::{AttrValue, Model, Op};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

use crate::util::{is_onnx_domain, scalar_const, single_consumer};

/// Pad → Conv folding.
pub struct FoldPad;

impl Pass for FoldPad {
    fn name(&self) -> &'static str {
        "fold_pad"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<bool> {
        let opset = model.opset();
        let g = &mut model.graph;
        let mut changed = false;
        for id in g.topo_order()? {
            let Some(n) = g.node(id) else { continue };
            if n.op.op_type() != "Pad" || !is_onnx_domain(&n.domain) {
                continue;
            }
            let mode = match n.op.attr("mode") {
                Some(AttrValue::String(s)) => String::from_utf8_lossy(&s).into_owned(),
                _ => "constant".into(),
            };
            let pads = if opset >= 11 {
                n.input(1).and_then(|v| g.const_data(v)).and_then(|d| d.to_i64_vec())
            } else {
                n.op.attr_ints("pads")
            };
            let fill_zero = match (opset >= 11, n.input(2)) {
                (true, Some(v)) => scalar_const(g, Some(v)) == Some(0.0),
                (true, None) => true,
                (false, _) => n.op.attr_float("value").unwrap_or(0.0) == 0.0,
            };
            let axes_given = n.input(3).is_some();
            let (Some(x), Some(y), Some(pads)) = (n.input(0), n.output(0), pads) else { continue };
            if mode != "constant" || !fill_zero || axes_given {
                continue;
            }
            let rank = pads.len() / 2;
            if rank < 3
                || pads.len() != 2 * rank
                || pads[0] != 0
                || pads[1] != 0
                || pads[rank] != 0
                || pads[rank + 1] != 0
                || pads.iter().any(|p| *p < 0)
            {
                continue;
            }
            let Some((cid, 0)) = single_consumer(g, y) else { continue };
            let Some(Op::Conv { window, .. }) = g.node(cid).map(|c| &c.op) else { continue };
            if window.auto_pad.as_deref().is_some_and(|a| a != "NOTSET") {
                continue;
            }
            let nsp = rank - 2;
            let mut cp = window.pads.clone().unwrap_or_else(|| vec![0; 2 * nsp]);
            if cp.len() != 2 * nsp {
                continue;
            }
            for i in 0..nsp {
                cp[i] += pads[2 + i];
                cp[nsp + i] += pads[rank + 2 + i];
            }
            if let Some(Op::Conv { window, .. }) = g.node_mut(cid).map(|c| &mut c.op) {
                window.pads = Some(cp);
            }
            g.remove_node(id);
            g.replace_uses(y, x);
            changed = true;
        }
        Ok(changed)
    }
}
