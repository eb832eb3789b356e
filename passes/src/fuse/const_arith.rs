//! Constant arithmetic folded into weights: a Conv or Gemm (no fused activation yet) whose output is
//! read only by Add/Sub/Mul/Div with a per-output-channel (or scalar) f32 constant absorbs it — Add/Sub
//! into the bias, Mul/Div into weights and bias.
//! Guarantees: only the forms that are exact (the Conv/Gemm output is the left operand of Sub/Div); new
//! constants for new weights (shared weights untouched); graph outputs keep their names.
use kiln_compiler::ir::{BinOp, DType, Graph, Model, NodeId, Op, TensorData, ValueId};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

use crate::util::{bypass, is_onnx_domain, single_consumer};

/// Add/Sub/Mul/Div-by-constant folding into Conv/Gemm.
pub struct FoldConstArith;

/// Per-channel values of constant `c` for an output of rank `rank` with `ch` channels on axis `axis`.
fn per_channel(g: &Graph, c: ValueId, ch: usize, rank: usize, axis: usize) -> Option<Vec<f64>> {
    let d = g.const_data(c)?;
    if d.dtype != DType::F32 || d.dims.len() > rank {
        return None;
    }
    let v = d.to_f64_vec()?;
    if v.len() == 1 {
        return Some(vec![v[0]; ch]);
    }
    // Right-aligned broadcast: every dim 1 except the channel axis, which is `ch`.
    let off = rank - d.dims.len();
    for (i, &dim) in d.dims.iter().enumerate() {
        let want = if i + off == axis { ch as i64 } else { 1 };
        if dim != want {
            return None;
        }
    }
    Some(v)
}

fn weights(g: &Graph, v: Option<ValueId>) -> Option<(Vec<i64>, Vec<f64>)> {
    let d = g.const_data(v?)?;
    (d.dtype == DType::F32).then_some(())?;
    Some((d.dims.clone(), d.to_f64_vec()?))
}

fn fold_one(g: &mut Graph, id: NodeId) -> Result<bool> {
    let n = g.nodes[id].clone();
    if n.act.is_some() || !is_onnx_domain(&n.domain) {
        return Ok(false);
    }
    let Some(y) = n.output(0) else { return Ok(false) };
    let Some((c_id, slot)) = single_consumer(g, y) else { return Ok(false) };
    let cn = g.nodes[c_id].clone();
    let Op::Binary(op) = cn.op else { return Ok(false) };
    if cn.act.is_some()
        || matches!(op, BinOp::Pow)
        || (slot != 0 && matches!(op, BinOp::Sub | BinOp::Div))
    {
        return Ok(false);
    }
    let Some(k) = cn.input(1 - slot) else { return Ok(false) };
    let Some(rank) = g.value(y).shape.as_ref().map(|s| s.len()) else { return Ok(false) };
    let Some((wd, w)) = weights(g, n.input(1)) else { return Ok(false) };
    // Output channel count and, per weight element, its output channel.
    let (ch, chan_of): (usize, Box<dyn Fn(usize) -> usize>) = match &n.op {
        Op::Conv { .. } => {
            let Some(&c) = wd.first() else { return Ok(false) };
            let per = w.len() / (c as usize).max(1);
            (c as usize, Box::new(move |i| i / per.max(1)))
        }
        Op::Gemm { trans_b, alpha, .. } => {
            if wd.len() != 2 || alpha.is_some_and(|a| a != 1.0) {
                return Ok(false);
            }
            let cols = wd[1] as usize;
            if trans_b.unwrap_or(0) != 0 {
                (wd[0] as usize, Box::new(move |i| i / cols.max(1)))
            } else {
                (cols, Box::new(move |i| i % cols.max(1)))
            }
        }
        _ => return Ok(false),
    };
    let Some(cv) = per_channel(g, k, ch, rank, 1) else { return Ok(false) };
    let mut b: Vec<f64> = match n.input(2) {
        Some(bv) => match weights(g, Some(bv)) {
            Some((_, b)) if b.len() == ch => b,
            Some((_, b)) if b.len() == 1 => vec![b[0]; ch],
            _ => return Ok(false),
        },
        None => vec![0.0; ch],
    };
    if let Op::Gemm { beta, .. } = &n.op {
        let bt = beta.unwrap_or(1.0) as f64;
        b.iter_mut().for_each(|x| *x *= bt);
    }
    let mut w2 = w.clone();
    match op {
        BinOp::Add => (0..ch).for_each(|i| b[i] += cv[i]),
        BinOp::Sub => (0..ch).for_each(|i| b[i] -= cv[i]),
        BinOp::Mul | BinOp::Div => {
            let f: Vec<f64> =
                cv.iter().map(|c| if op == BinOp::Mul { *c } else { 1.0 / c }).collect();
            if f.iter().any(|x| !x.is_finite()) {
                return Ok(false);
            }
            w2.iter_mut().enumerate().for_each(|(i, x)| *x *= f[chan_of(i)]);
            (0..ch).for_each(|i| b[i] *= f[i]);
        }
        BinOp::Pow => return Ok(false),
    }
    let to32 = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<_>>();
    let wv = g.add_const(&format!("{}_w", n.name), TensorData::from_f32(wd, &to32(&w2)))?;
    let bv =
        g.add_const(&format!("{}_b", n.name), TensorData::from_f32(vec![ch as i64], &to32(&b)))?;
    let Some(out) = cn.output(0) else { return Ok(false) };
    if !bypass(g, c_id, out, y)? {
        return Ok(false);
    }
    if let Some(node) = g.node_mut(id) {
        node.inputs.resize(3, None);
        node.inputs[1] = Some(wv);
        node.inputs[2] = Some(bv);
        if let Op::Gemm { beta, .. } = &mut node.op {
            *beta = None;
        }
    }
    g.rebuild_edges();
    Ok(true)
}

impl Pass for FoldConstArith {
    fn name(&self) -> &'static str {
        "fold_const_arith"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<bool> {
        let g = &mut model.graph;
        let mut changed = false;
        for id in g.topo_order()? {
            if matches!(g.node(id).map(|n| &n.op), Some(Op::Conv { .. } | Op::Gemm { .. })) {
                changed |= fold_one(g, id)?;
            }
        }
        Ok(changed)
    }
}
