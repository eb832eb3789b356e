//! Pattern recognition: multi-op idioms become one IR op.
//!
//! - GELU, erf form: 0.5·x·(1 + erf(x/√2)) (Div by √2 or Mul by 1/√2; the three products in any order).
//! - GELU, tanh form: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
//! - HardSwish: x·HardSigmoid(x; α=1/6, β=0.5).
//! - LayerNorm over the last axis: (x − mean)/√(var + ε)·γ + β spelled with ReduceMean/Sub/Pow/ReduceMean/
//!   Add/Sqrt/Div/Mul/Add (how exporters write it before opset 17); becomes LayerNormalization, which
//!   export writes back as the same decomposition when the model's opset predates it.
//! - Attention: MatMul(q, kᵀ) → (Mul/Div by a scalar) → Softmax(last axis) → MatMul(·, v), with scalar
//!   pre-scaling of q and kᵀ absorbed (the form PyTorch's scaled_dot_product_attention exports).
//!
//! Guarantees: every intermediate is read only inside the pattern; constants must match to 1e-4.
use kiln_compiler::ir::{Act, BinOp, Graph, Model, Node, NodeId, Op, ValueId};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

use crate::util::{close, other_input, scalar_const, single_consumer};

/// GELU, HardSwish and attention recognition.
pub struct RecognizePatterns;

fn binop(g: &Graph, id: NodeId, op: BinOp) -> bool {
    matches!(g.node(id).map(|n| &n.op), Some(Op::Binary(b)) if *b == op)
        && g.node(id).is_some_and(|n| n.act.is_none())
}

/// Follow a chain of single-consumer Muls from `v`, collecting the other operands, until `x` and a 0.5
/// constant have both been multiplied in. Returns (nodes, final output).
fn half_x_products(g: &Graph, mut v: ValueId, x: ValueId) -> Option<(Vec<NodeId>, ValueId)> {
    let (mut saw_x, mut saw_half, mut nodes) = (false, false, Vec::new());
    for _ in 0..2 {
        let (m, _) = single_consumer(g, v)?;
        if !binop(g, m, BinOp::Mul) {
            return None;
        }
        let other = other_input(g.node(m)?, v)?;
        if other == x && !saw_x {
            saw_x = true;
        } else if scalar_const(g, Some(other)).is_some_and(|c| close(c, 0.5)) && !saw_half {
            saw_half = true;
        } else {
            return None;
        }
        nodes.push(m);
        v = g.node(m)?.output(0)?;
    }
    (saw_x && saw_half).then_some((nodes, v))
}

/// Matches `inner` = erf(x/√2) or tanh(...) at node `t`; returns x and the nodes before `t`.
fn gelu_core(g: &Graph, t: NodeId) -> Option<(ValueId, Vec<NodeId>, Option<String>)> {
    let n = g.node(t)?;
    let d = n.input(0)?;
    let (dp, _) = g.value(d).producer?;
    let dn = g.node(dp)?;
    single_consumer(g, d)?;
    match &n.op {
        Op::Generic { op_type, .. } if op_type == "Erf" => {
            let x = dn.input(0)?;
            let c = scalar_const(g, dn.input(1))?;
            let ok = (binop(g, dp, BinOp::Div) && close(c, std::f32::consts::SQRT_2))
                || (binop(g, dp, BinOp::Mul) && close(c, std::f32::consts::FRAC_1_SQRT_2));
            ok.then(|| (x, vec![dp], None))
        }
        Op::Act(Act::Tanh) => {
            // k = (x + 0.044715·x³)·√(2/π)
            if !binop(g, dp, BinOp::Mul)
                || !close(
                    scalar_const(g, dn.input(1)).or_else(|| scalar_const(g, dn.input(0)))?,
                    (2.0f32 / std::f32::consts::PI).sqrt(),
                )
            {
                return None;
            }
            let sum =
                if scalar_const(g, dn.input(1)).is_some() { dn.input(0)? } else { dn.input(1)? };
            single_consumer(g, sum)?;
            let (sp, _) = g.value(sum).producer?;
            if !binop(g, sp, BinOp::Add) {
                return None;
            }
            let sn = g.node(sp)?;
            for (x, cube_term) in [(sn.input(0)?, sn.input(1)?), (sn.input(1)?, sn.input(0)?)] {
                let Some((mp, _)) = g.value(cube_term).producer else { continue };
                if !binop(g, mp, BinOp::Mul) || single_consumer(g, cube_term).is_none() {
                    continue;
                }
                let mn = g.node(mp)?;
                let (cube, c) = if scalar_const(g, mn.input(1)).is_some() {
                    (mn.input(0)?, scalar_const(g, mn.input(1))?)
                } else {
                    (mn.input(1)?, scalar_const(g, mn.input(0))?)
                };
                if !close(c, 0.044715) || single_consumer(g, cube).is_none() {
                    continue;
                }
                let (pp, _) = g.value(cube).producer?;
                let pn = g.node(pp)?;
                if binop(g, pp, BinOp::Pow)
                    && pn.input(0) == Some(x)
                    && scalar_const(g, pn.input(1)).is_some_and(|e| close(e, 3.0))
                {
                    return Some((x, vec![dp, sp, mp, pp], Some("tanh".into())));
                }
                // x·(x·x), as PyTorch spells x³.
                if binop(g, pp, BinOp::Mul) {
                    let sq = other_input(pn, x)?;
                    let (qp, _) = g.value(sq).producer?;
                    let qn = g.node(qp)?;
                    if binop(g, qp, BinOp::Mul)
                        && qn.input(0) == Some(x)
                        && qn.input(1) == Some(x)
                        && single_consumer(g, sq).is_some()
                    {
                        return Some((x, vec![dp, sp, mp, pp, qp], Some("tanh".into())));
                    }
                }
            }
            None
        }
        _ => None,
    }
}

fn recognize_gelu(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for t in g.topo_order()? {
        let Some((x, mut nodes, approximate)) = gelu_core(g, t) else { continue };
        let Some(e) = g.node(t).and_then(|n| n.output(0)) else { continue };
        let Some((a, _)) = single_consumer(g, e) else { continue };
        if !binop(g, a, BinOp::Add)
            || !g
                .node(a)
                .and_then(|n| other_input(n, e))
                .is_some_and(|o| scalar_const(g, Some(o)).is_some_and(|c| close(c, 1.0)))
        {
            continue;
        }
        let Some(ao) = g.node(a).and_then(|n| n.output(0)) else { continue };
        let Some((muls, y)) = half_x_products(g, ao, x) else { continue };
        nodes.extend([t, a]);
        nodes.extend(muls.iter().copied());
        let name = g.nodes[*muls.last().unwrap_or(&t)].name.clone();
        for n in nodes {
            g.remove_node(n);
        }
        g.add_node(Node::new(
            name,
            Op::Act(Act::Gelu { approximate }),
            vec![Some(x)],
            vec![Some(y)],
        ))?;
        changed = true;
    }
    Ok(changed)
}

fn recognize_hardswish(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for id in g.topo_order()? {
        let Some(n) = g.node(id) else { continue };
        let Op::Act(Act::HardSigmoid { alpha, beta }) = &n.op else { continue };
        if !close(alpha.unwrap_or(0.2), 1.0 / 6.0)
            || !close(beta.unwrap_or(0.5), 0.5)
            || n.act.is_some()
        {
            continue;
        }
        let (Some(x), Some(h)) = (n.input(0), n.output(0)) else { continue };
        let Some((m, _)) = single_consumer(g, h) else { continue };
        if !binop(g, m, BinOp::Mul) || g.node(m).and_then(|mn| other_input(mn, h)) != Some(x) {
            continue;
        }
        let Some(y) = g.nodes[m].output(0) else { continue };
        let name = g.nodes[m].name.clone();
        g.remove_node(m);
        g.remove_node(id);
        g.add_node(Node::new(name, Op::Act(Act::HardSwish), vec![Some(x)], vec![Some(y)]))?;
        changed = true;
    }
    Ok(changed)
}

/// If `v` is produced by a single-consumer Mul/Div by a scalar constant, the unscaled input and factor.
fn unscale(g: &Graph, v: ValueId) -> Option<(ValueId, f32, NodeId)> {
    let (p, _) = g.value(v).producer?;
    single_consumer(g, v)?;
    let n = g.node(p)?;
    if binop(g, p, BinOp::Mul) {
        if let Some(c) = scalar_const(g, n.input(1)) {
            return Some((n.input(0)?, c, p));
        }
        if let Some(c) = scalar_const(g, n.input(0)) {
            return Some((n.input(1)?, c, p));
        }
    }
    if binop(g, p, BinOp::Div) {
        let c = scalar_const(g, n.input(1))?;
        return (c != 0.0).then(|| (n.input(0), 1.0 / c, p)).and_then(|(x, f, p)| Some((x?, f, p)));
    }
    None
}

fn recognize_attention(g: &mut Graph, opset: i64) -> Result<bool> {
    if opset < 13 {
        return Ok(false); // older Softmax flattens to 2-D: a different function
    }
    let mut changed = false;
    for sm in g.topo_order()? {
        let Some(n) = g.node(sm) else { continue };
        let Op::Softmax { axis } = &n.op else { continue };
        let (Some(s), Some(p)) = (n.input(0), n.output(0)) else { continue };
        let rank = g.value(s).shape.as_ref().map(|s| s.len() as i64).unwrap_or(0);
        let ax = axis.unwrap_or(-1);
        if rank < 2 || (ax != -1 && ax != rank - 1) || n.act.is_some() {
            continue;
        }
        let mut remove = vec![sm];
        let mut scale = 1.0f32;
        let mut scores = s;
        if let Some((inner, f, node)) = unscale(g, scores) {
            scores = inner;
            scale *= f;
            remove.push(node);
        }
        let Some((mm1, _)) = g.value(scores).producer else { continue };
        if !matches!(g.node(mm1).map(|n| &n.op), Some(Op::MatMul))
            || single_consumer(g, scores).is_none()
        {
            continue;
        }
        remove.push(mm1);
        let (Some(mut q), Some(mut k)) = (g.nodes[mm1].input(0), g.nodes[mm1].input(1)) else {
            continue;
        };
        if let Some((inner, f, node)) = unscale(g, q) {
            q = inner;
            scale *= f;
            remove.push(node);
        }
        if let Some((inner, f, node)) = unscale(g, k) {
            k = inner;
            scale *= f;
            remove.push(node);
        }
        let Some((mm2, 0)) = single_consumer(g, p) else { continue };
        if !matches!(g.node(mm2).map(|n| &n.op), Some(Op::MatMul)) {
            continue;
        }
        let (Some(v), Some(y)) = (g.nodes[mm2].input(1), g.nodes[mm2].output(0)) else { continue };
        let name = g.nodes[mm2].name.clone();
        remove.push(mm2);
        for r in remove {
            g.remove_node(r);
        }
        g.add_node(Node::new(
            name,
            Op::Attention { scale },
            vec![Some(q), Some(k), Some(v)],
            vec![Some(y)],
        ))?;
        changed = true;
    }
    Ok(changed)
}

/// Axes of a Reduce* node (attribute, or constant input from opset 18).
fn reduce_axes(g: &Graph, n: &Node) -> Option<Vec<i64>> {
    n.op.attr_ints("axes")
        .or_else(|| n.input(1).and_then(|v| g.const_data(v)).and_then(|d| d.to_i64_vec()))
}

fn is_last_axis_mean(g: &Graph, id: NodeId, rank: usize) -> bool {
    let Some(n) = g.node(id) else { return false };
    n.op.op_type() == "ReduceMean"
        && n.op.attr_int("keepdims").unwrap_or(1) == 1
        && reduce_axes(g, n)
            .is_some_and(|a| a.len() == 1 && (a[0] == -1 || a[0] == rank as i64 - 1))
}

fn recognize_layernorm(g: &mut Graph) -> Result<bool> {
    let mut changed = false;
    for id in g.topo_order()? {
        let Some(n) = g.node(id) else { continue };
        let (Some(x), Some(mean)) = (n.input(0), n.output(0)) else { continue };
        let Some(rank) = g.value(x).shape.as_ref().map(|s| s.len()) else { continue };
        if !is_last_axis_mean(g, id, rank) {
            continue;
        }
        let Some((sub, 1)) = single_consumer(g, mean) else { continue };
        if !binop(g, sub, BinOp::Sub) || g.nodes[sub].input(0) != Some(x) {
            continue;
        }
        let Some(d) = g.nodes[sub].output(0) else { continue };
        // d is read by the squaring (Pow(d, 2) or Mul(d, d)) and by the Div.
        let users = g.consumers(d);
        let sq = users.iter().map(|(u, _)| *u).find(|u| {
            (binop(g, *u, BinOp::Pow)
                && scalar_const(g, g.nodes[*u].input(1)).is_some_and(|e| close(e, 2.0)))
                || (binop(g, *u, BinOp::Mul)
                    && g.nodes[*u].input(0) == Some(d)
                    && g.nodes[*u].input(1) == Some(d))
        });
        let div = users
            .iter()
            .map(|(u, _)| *u)
            .find(|u| binop(g, *u, BinOp::Div) && g.nodes[*u].input(0) == Some(d));
        let (Some(sq), Some(div)) = (sq, div) else { continue };
        let distinct: std::collections::HashSet<NodeId> = users.iter().map(|(u, _)| *u).collect();
        if distinct.len() != 2 || g.is_output(d) {
            continue;
        }
        let Some(sqo) = g.nodes[sq].output(0) else { continue };
        let Some((var, 0)) = single_consumer(g, sqo) else { continue };
        if !is_last_axis_mean(g, var, rank) {
            continue;
        }
        let Some(vo) = g.nodes[var].output(0) else { continue };
        let Some((add_eps, _)) = single_consumer(g, vo) else { continue };
        let Some(eps) = g
            .node(add_eps)
            .filter(|_| binop(g, add_eps, BinOp::Add))
            .and_then(|a| other_input(a, vo))
            .and_then(|e| scalar_const(g, Some(e)))
        else {
            continue;
        };
        let Some(ao) = g.nodes[add_eps].output(0) else { continue };
        let Some((sqrt, 0)) = single_consumer(g, ao) else { continue };
        if g.nodes[sqrt].op.op_type() != "Sqrt" {
            continue;
        }
        let Some(so) = g.nodes[sqrt].output(0) else { continue };
        if single_consumer(g, so) != Some((div, 1)) {
            continue;
        }
        let Some(no) = g.nodes[div].output(0) else { continue };
        // Optional affine: Mul by γ then Add β (constants over the last axis).
        let mut nodes = vec![id, sub, sq, var, add_eps, sqrt, div];
        let mut y = no;
        let mut gamma = None;
        let mut beta = None;
        if let Some((m, _)) = single_consumer(g, no) {
            if binop(g, m, BinOp::Mul) {
                if let Some(gm) = g
                    .node(m)
                    .and_then(|mn| other_input(mn, no))
                    .filter(|v| g.const_data(*v).is_some())
                {
                    gamma = Some(gm);
                    nodes.push(m);
                    y = g.nodes[m].output(0).unwrap_or(y);
                    if let Some((a, _)) = single_consumer(g, y) {
                        if binop(g, a, BinOp::Add) {
                            if let Some(bt) = g
                                .node(a)
                                .and_then(|an| other_input(an, y))
                                .filter(|v| g.const_data(*v).is_some())
                            {
                                beta = Some(bt);
                                nodes.push(a);
                                y = g.nodes[a].output(0).unwrap_or(y);
                            }
                        }
                    }
                }
            }
        }
        let last = g.value(x).shape.as_ref().and_then(|s| s.last()).and_then(|d| d.known());
        let fits = |v: Option<ValueId>| {
            v.map(|v| g.const_data(v).is_some_and(|d| d.dims.len() == 1 && Some(d.dims[0]) == last))
                .unwrap_or(true)
        };
        let Some(c) = last else { continue };
        if !fits(gamma) || !fits(beta) || !g.value(x).dtype.is_float() {
            continue;
        }
        let gamma = match gamma {
            Some(gm) => gm,
            None => g.add_const(
                "layernorm_gamma",
                kiln_compiler::ir::TensorData::from_f32(vec![c], &vec![1.0; c as usize]),
            )?,
        };
        let name = g.nodes[*nodes.last().unwrap_or(&id)].name.clone();
        for n in nodes {
            g.remove_node(n);
        }
        let attrs = vec![
            kiln_compiler::ir::Attribute::int("axis", -1),
            kiln_compiler::ir::Attribute::float("epsilon", eps),
        ];
        let mut inputs = vec![Some(x), Some(gamma)];
        if beta.is_some() {
            inputs.push(beta);
        }
        g.add_node(Node::new(
            name,
            Op::Generic { op_type: "LayerNormalization".into(), attrs },
            inputs,
            vec![Some(y)],
        ))?;
        changed = true;
    }
    Ok(changed)
}

impl Pass for RecognizePatterns {
    fn name(&self) -> &'static str {
        "recognize_patterns"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<bool> {
        let opset = model.opset();
        let g = &mut model.graph;
        let mut changed = recognize_gelu(g)?;
        changed |= recognize_hardswish(g)?;
        changed |= recognize_layernorm(g)?;
        changed |= recognize_attention(g, opset)?;
        Ok(changed)
    }
}
