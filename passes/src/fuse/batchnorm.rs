//! BatchNormalization folding.
//!
//! Matches: Conv → BN and Gemm → BN (the producer's output read only by the BN), folding
//! `scale = γ/√(σ²+ε)` into the weights and `(b − μ)·scale + β` into the bias; otherwise BN → Conv when the
//! BN output is read only by an unpadded Conv (the shift then folds exactly into the Conv bias).
//! Guarantees: inference-mode BN only (no training outputs); f32 constants only; folded weights are new
//! constants (shared weights stay intact); graph outputs keep their names.
use kiln_compiler::ir::{DType, Graph, Model, Node, NodeId, Op, TensorData, ValueId};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

use crate::util::{bypass, single_consumer};

/// BatchNormalization folding into neighbouring Conv/Gemm.
pub struct FoldBatchNorm;

struct Bn {
    scale: Vec<f64>,
    shift: Vec<f64>,
}

/// Per-channel y = x·scale + shift of an inference-mode BN with constant parameters.
fn bn_params(g: &Graph, n: &Node) -> Option<Bn> {
    let Op::BatchNorm { epsilon, training_mode, .. } = &n.op else { return None };
    if training_mode.unwrap_or(0) != 0 || n.outputs.iter().skip(1).flatten().next().is_some() {
        return None;
    }
    let get = |i: usize| {
        n.input(i)
            .and_then(|v| g.const_data(v))
            .filter(|d| d.dtype == DType::F32)
            .and_then(|d| d.to_f64_vec())
    };
    let (gamma, beta, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
    let c = gamma.len();
    if beta.len() != c || mean.len() != c || var.len() != c {
        return None;
    }
    let eps = epsilon.unwrap_or(1e-5) as f64;
    let scale: Vec<f64> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
    let shift = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
    Some(Bn { scale, shift })
}

fn f32s(g: &Graph, v: Option<ValueId>) -> Option<(Vec<i64>, Vec<f64>)> {
    let d = g.const_data(v?)?;
    (d.dtype == DType::F32).then_some(())?;
    Some((d.dims.clone(), d.to_f64_vec()?))
}

fn to_tensor(dims: Vec<i64>, v: &[f64]) -> TensorData {
    TensorData::from_f32(dims, &v.iter().map(|x| *x as f32).collect::<Vec<_>>())
}

/// Conv/Gemm → BN.
fn fold_into_producer(g: &mut Graph, bn_id: NodeId) -> Result<bool> {
    let bn = &g.nodes[bn_id];
    let (Some(x), Some(y)) = (bn.input(0), bn.output(0)) else { return Ok(false) };
    let Some(p) = bn_params(g, bn) else { return Ok(false) };
    let Some((prod, 0)) = g.value(x).producer else { return Ok(false) };
    if single_consumer(g, x) != Some((bn_id, 0)) {
        return Ok(false);
    }
    let c = p.scale.len();
    let pn = g.nodes[prod].clone();
    let (new_w, new_b, extra) = match &pn.op {
        Op::Conv { .. } => {
            let Some((wd, w)) = f32s(g, pn.input(1)) else { return Ok(false) };
            if wd.first() != Some(&(c as i64)) || w.is_empty() {
                return Ok(false);
            }
            let per = w.len() / c;
            let w2: Vec<f64> = w.iter().enumerate().map(|(i, v)| v * p.scale[i / per]).collect();
            let b = match pn.input(2) {
                Some(b) => match f32s(g, Some(b)) {
                    Some((_, b)) if b.len() == c => b,
                    _ => return Ok(false),
                },
                None => vec![0.0; c],
            };
            let b2: Vec<f64> = (0..c).map(|i| b[i] * p.scale[i] + p.shift[i]).collect();
            (to_tensor(wd, &w2), to_tensor(vec![c as i64], &b2), None)
        }
        Op::Gemm { alpha, beta, trans_b, .. } => {
            let Some((bd, bw)) = f32s(g, pn.input(1)) else { return Ok(false) };
            if bd.len() != 2 {
                return Ok(false);
            }
            let tb = trans_b.unwrap_or(0) != 0;
            let n_out = if tb { bd[0] } else { bd[1] } as usize;
            if n_out != c {
                return Ok(false);
            }
            let cols = bd[1] as usize;
            let w2: Vec<f64> = bw
                .iter()
                .enumerate()
                .map(|(i, v)| v * p.scale[if tb { i / cols } else { i % cols }])
                .collect();
            let gb = beta.unwrap_or(1.0) as f64;
            let cb = match pn.input(2) {
                Some(b) => match f32s(g, Some(b)) {
                    Some((_, b)) if b.len() == c => b.iter().map(|x| x * gb).collect(),
                    Some((_, b)) if b.len() == 1 => vec![b[0] * gb; c],
                    _ => return Ok(false),
                },
                None => vec![0.0; c],
            };
            let b2: Vec<f64> = (0..c).map(|i| cb[i] * p.scale[i] + p.shift[i]).collect();
            let _ = alpha;
            (to_tensor(bd, &w2), to_tensor(vec![c as i64], &b2), Some(()))
        }
        _ => return Ok(false),
    };
    let wname = format!("{}_bnfold_w", pn.name);
    let bname = format!("{}_bnfold_b", pn.name);
    let w = g.add_const(&wname, new_w)?;
    let b = g.add_const(&bname, new_b)?;
    let node = g.node_mut(prod).ok_or_else(|| kiln_compiler::Error::invalid("node vanished"))?;
    node.inputs.resize(3, None);
    node.inputs[1] = Some(w);
    node.inputs[2] = Some(b);
    if extra.is_some() {
        if let Op::Gemm { beta, .. } = &mut node.op {
            *beta = None;
        }
    }
    g.rebuild_edges();
    bypass(g, bn_id, y, x)
}

/// BN → unpadded Conv: conv(x·s + t) = conv'(x) with W'[o,i] = W[o,i]·s[i], b'[o] = b[o] + Σ W[o,i]·t[i].
fn fold_into_consumer(g: &mut Graph, bn_id: NodeId) -> Result<bool> {
    let bn = &g.nodes[bn_id];
    let (Some(x), Some(y)) = (bn.input(0), bn.output(0)) else { return Ok(false) };
    let Some(p) = bn_params(g, bn) else { return Ok(false) };
    let Some((conv, 0)) = single_consumer(g, y) else { return Ok(false) };
    let cn = g.nodes[conv].clone();
    let Op::Conv { window, group } = &cn.op else { return Ok(false) };
    let padded = window.pads.as_ref().is_some_and(|p| p.iter().any(|v| *v != 0))
        || window.auto_pad.as_deref().is_some_and(|a| a.starts_with("SAME"));
    if padded || group.unwrap_or(1) != 1 {
        return Ok(false);
    }
    let Some((wd, w)) = f32s(g, cn.input(1)) else { return Ok(false) };
    let cin = p.scale.len();
    if wd.len() < 2 || wd[1] as usize != cin {
        return Ok(false);
    }
    let cout = wd[0] as usize;
    let k = w.len() / (cout * cin).max(1);
    let mut b: Vec<f64> = match cn.input(2) {
        Some(bv) => match f32s(g, Some(bv)) {
            Some((_, b)) if b.len() == cout => b,
            _ => return Ok(false),
        },
        None => vec![0.0; cout],
    };
    let mut w2 = w.clone();
    for (o, bo) in b.iter_mut().enumerate() {
        for i in 0..cin {
            for j in 0..k {
                let idx = (o * cin + i) * k + j;
                *bo += w[idx] * p.shift[i];
                w2[idx] = w[idx] * p.scale[i];
            }
        }
    }
    let wv = g.add_const(&format!("{}_bnfold_w", cn.name), to_tensor(wd, &w2))?;
    let bv = g.add_const(&format!("{}_bnfold_b", cn.name), to_tensor(vec![cout as i64], &b))?;
    let node = g.node_mut(conv).ok_or_else(|| kiln_compiler::Error::invalid("node vanished"))?;
    node.inputs.resize(3, None);
    node.inputs[1] = Some(wv);
    node.inputs[2] = Some(bv);
    g.rebuild_edges();
    bypass(g, bn_id, y, x)
}

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        "fold_batchnorm"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<bool> {
        let g = &mut model.graph;
        let mut changed = false;
        for id in g.topo_order()? {
            if !matches!(g.node(id).map(|n| &n.op), Some(Op::BatchNorm { .. })) {
                continue;
            }
            if fold_into_producer(g, id)? || fold_into_consumer(g, id)? {
                changed = true;
            }
        }
        Ok(changed)
    }
}
