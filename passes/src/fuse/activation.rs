//! Activation fusion: a Conv or Gemm whose output is read only by an activation carries it in the IR
//! (`Node::act`); the activation node goes. Activations: Relu, Clip (constant bounds, i.e. ReLU6),
//! HardSwish, HardSigmoid, Sigmoid, Tanh, LeakyRelu, Gelu, and SiLU = x·σ(x) (Sigmoid + Mul reading the
//! same value). Standalone x·σ(x) pairs become one `Silu` activation node as well.
//! Guarantees: export writes the op followed by the activation's standard ONNX sequence, so the exported
//! graph computes exactly what the unfused one did.
use kiln_compiler::ir::{Act, BinOp, Graph, Model, Node, NodeId, Op, ValueId};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

use crate::util::{bypass, is_onnx_domain, scalar_const, single_consumer};

/// Activation fusion into Conv/Gemm.
pub struct FuseActivation;

/// The activation computed by node `n` as a pure function of its input 0, if it is one.
pub fn activation_of(g: &Graph, n: &Node) -> Option<Act> {
    if !is_onnx_domain(&n.domain) || n.act.is_some() {
        return None;
    }
    match &n.op {
        Op::Act(Act::Clip { min, max }) => {
            let lo = match n.input(1) {
                Some(v) => Some(scalar_const(g, Some(v))?),
                None => *min,
            };
            let hi = match n.input(2) {
                Some(v) => Some(scalar_const(g, Some(v))?),
                None => *max,
            };
            Some(Act::Clip { min: lo, max: hi })
        }
        Op::Act(a) => Some(a.clone()),
        _ => None,
    }
}

/// x·σ(x): `sig` is Sigmoid(x) read only by a Mul of x and it. Returns (mul node, mul output).
fn silu_at(g: &Graph, x: ValueId, sig: NodeId) -> Option<(NodeId, ValueId)> {
    let s = g.node(sig)?;
    if !matches!(s.op, Op::Act(Act::Sigmoid)) || s.input(0) != Some(x) || s.act.is_some() {
        return None;
    }
    let so = s.output(0)?;
    let (mul, _) = single_consumer(g, so)?;
    let m = g.node(mul)?;
    if !matches!(m.op, Op::Binary(BinOp::Mul)) || m.act.is_some() {
        return None;
    }
    let ins = (m.input(0)?, m.input(1)?);
    (ins == (x, so) || ins == (so, x)).then_some((mul, m.output(0)?))
}

/// Replace standalone Sigmoid+Mul pairs by one Silu node.
fn recognize_silu(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for id in g.topo_order()? {
        let Some(n) = g.node(id) else { continue };
        let Some(x) = n.input(0) else { continue };
        let Some((mul, y)) = silu_at(g, x, id) else { continue };
        if g.consumers(x).len() != 2 {
            continue;
        }
        let name = g.nodes[mul].name.clone();
        g.remove_node(mul);
        g.remove_node(id);
        g.add_node(Node::new(name, Op::Act(Act::Silu), vec![Some(x)], vec![Some(y)]))?;
        changed = true;
    }
    Ok(changed)
}

impl Pass for FuseActivation {
    fn name(&self) -> &'static str {
        "fuse_activation"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<bool> {
        let g = &mut model.graph;
        let mut changed = recognize_silu(g)?;
        for id in g.topo_order()? {
            let Some(n) = g.node(id) else { continue };
            if !matches!(n.op, Op::Conv { .. } | Op::Gemm { .. })
                || n.act.is_some()
                || !is_onnx_domain(&n.domain)
            {
                continue;
            }
            let Some(y) = n.output(0) else { continue };
            let Some((c, 0)) = single_consumer(g, y) else { continue };
            let Some(act) = g.node(c).and_then(|cn| activation_of(g, cn)) else { continue };
            let Some(out) = g.nodes[c].output(0) else { continue };
            let act_name = g.nodes[c].name.clone();
            if bypass(g, c, out, y)? {
                if let Some(n) = g.node_mut(id) {
                    n.act = Some(act);
                    // Kept so a backend that has to split the activation off again can name it as the model did.
                    n.metadata.push((kiln_compiler::ir::meta::FUSED_ACTIVATION.into(), act_name));
                }
                changed = true;
            }
        }
        Ok(changed)
    }
}
