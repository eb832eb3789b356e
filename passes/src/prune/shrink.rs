//! Physically remove channels chosen by structured pruning, and write reconstructed weights.
//!
//! `removed` maps every value of the chosen components to the channels it loses (sorted). Each node that
//! takes part in the dependency groups shrinks accordingly: producers lose weight rows and bias entries,
//! readers lose weight columns, depthwise convs lose filters (and their `group` follows), BatchNorm and
//! per-channel constants of binary ops lose entries, and a flattening Reshape's shape constant follows the
//! new feature count. Shapes are re-inferred by the pass manager afterwards.
use std::collections::BTreeMap;

use kiln_compiler::ir::{Graph, NodeId, Op, TensorData, ValueId};
use kiln_compiler::{Error, Result};

use super::groups::{aligned_axis, Groups, Role};
use super::realize::{f32_const, set_const, tensor, without};
use super::recon::{Kind, Reader};

fn invalid(what: &str) -> Error {
    Error::Pass { pass: "prune".into(), reason: format!("channel: {what}") }
}

/// Remove `removed` (value → channels) from every node of `groups`.
pub fn apply(
    g: &mut Graph,
    groups: &Groups,
    removed: &BTreeMap<ValueId, Vec<usize>>,
) -> Result<()> {
    let none: Vec<usize> = Vec::new();
    let lost = |v: Option<ValueId>| v.and_then(|v| removed.get(&v)).unwrap_or(&none);
    for (&id, role) in &groups.roles {
        let n = g.nodes[id].clone();
        let (dx, dy) = (lost(n.input(0)), lost(n.output(0)));
        if dx.is_empty() && dy.is_empty() {
            continue;
        }
        match role {
            Role::Linear => {
                let (wd, w) = f32_const(g, n.input(1)).ok_or_else(|| invalid("weights"))?;
                let (in_axis, out_axis) = match &n.op {
                    Op::Gemm { trans_b, .. } if trans_b.unwrap_or(0) != 0 => (1, 0),
                    Op::Gemm { .. } => (0, 1),
                    _ => (1, 0),
                };
                let (d, w) = without(&wd, &w, in_axis, dx);
                let (d, w) = without(&d, &w, out_axis, dy);
                set_const(g, id, 1, "pruned_w", tensor(d, &w))?;
                if !dy.is_empty() {
                    // The bias follows the output channels only where its last axis has them (a
                    // broadcast bias such as a Gemm's [M, 1] or a scalar stays).
                    let outs = n.output(0).and_then(|y| groups.base.get(&y)).map(|b| b.1);
                    if let Some((bd, b)) = f32_const(g, n.input(2)) {
                        let axis = bd.len().saturating_sub(1);
                        if !bd.is_empty() && Some(bd[axis] as usize) == outs && b.len() > 1 {
                            let (d, b) = without(&bd, &b, axis, dy);
                            set_const(g, id, 2, "pruned_b", tensor(d, &b))?;
                        }
                    }
                }
            }
            Role::Depthwise => {
                let (wd, w) =
                    f32_const(g, n.input(1)).ok_or_else(|| invalid("depthwise weights"))?;
                let (d, w) = without(&wd, &w, 0, dy);
                let left = d[0];
                set_const(g, id, 1, "pruned_w", tensor(d, &w))?;
                if let Some((bd, b)) = f32_const(g, n.input(2)) {
                    let (d, b) = without(&bd, &b, 0, dy);
                    set_const(g, id, 2, "pruned_b", tensor(d, &b))?;
                }
                if let Some(Op::Conv { group, .. }) = g.node_mut(id).map(|n| &mut n.op) {
                    *group = Some(left);
                }
            }
            Role::Tie => match &n.op {
                Op::BatchNorm { .. } => {
                    for slot in 1..5 {
                        let (bd, b) =
                            f32_const(g, n.input(slot)).ok_or_else(|| invalid("BatchNorm"))?;
                        let (d, b) = without(&bd, &b, 0, dy);
                        set_const(g, id, slot, "pruned", tensor(d, &b))?;
                    }
                }
                Op::Binary(_) => {
                    let out_rank = n
                        .output(0)
                        .and_then(|y| g.value(y).shape.as_ref().map(Vec::len))
                        .unwrap_or(0);
                    let width = n.output(0).and_then(|y| groups.base.get(&y)).map(|b| b.1);
                    for (slot, v) in n.inputs.iter().enumerate() {
                        let Some(v) = *v else { continue };
                        let Some(d) = g.const_data(v).map(|d| d.dims.clone()) else { continue };
                        let Some(a) = aligned_axis(d.len(), out_rank) else { continue };
                        if Some(d[a] as usize) != width || d[a] == 1 {
                            continue;
                        }
                        let data = g.const_data(v).ok_or_else(|| invalid("constant"))?;
                        let half = data.dtype == kiln_compiler::ir::DType::F16;
                        let vals = data.to_f64_vec().ok_or_else(|| invalid("constant type"))?;
                        let (nd, nv) = without(&d, &vals, a, dy);
                        let t = if half {
                            let f: Vec<f32> = nv.iter().map(|x| *x as f32).collect();
                            TensorData::from_f32_as_f16(nd, &f)
                        } else {
                            tensor(nd, &nv)
                        };
                        set_const(g, id, slot, "pruned", t)?;
                    }
                }
                _ => {}
            },
            Role::FlattenReshape => {
                let s = n.input(1).and_then(|s| g.const_data(s)).and_then(|d| d.to_i64_vec());
                let mut s = s.ok_or_else(|| invalid("Reshape shape"))?;
                if s.len() == 2 && s[1] != -1 && s[1] != 0 {
                    s[1] -= dy.len() as i64;
                    set_const(g, id, 1, "pruned_shape", TensorData::from_i64(vec![2], &s))?;
                }
            }
        }
    }
    Ok(())
}

/// Write reconstructed weights `wt` ([kept features + 1, cout], bias last) into reader `r`'s node, whose
/// input kept `keep.len()` channels and whose output lost `dy`.
pub fn write_reader(
    g: &mut Graph,
    r: &Reader,
    keep: usize,
    wt: &ndarray::Array2<f64>,
) -> Result<()> {
    let id: NodeId = r.node;
    let n = g.nodes[id].clone();
    let f = keep * r.per;
    let cout = wt.ncols();
    let (wd, _) = f32_const(g, n.input(1)).ok_or_else(|| invalid("reader weights"))?;
    let bias: Vec<f64> = (0..cout).map(|m| wt[[f, m]]).collect();
    match (&r.kind, &n.op) {
        (Kind::Conv { .. }, Op::Conv { .. }) => {
            let mut w = vec![0.0; cout * f];
            for m in 0..cout {
                for q in 0..f {
                    w[m * f + q] = wt[[q, m]];
                }
            }
            let mut d = wd.clone();
            d[0] = cout as i64;
            d[1] = keep as i64;
            set_const(g, id, 1, "reconstructed_w", tensor(d, &w))?;
            set_const(g, id, 2, "reconstructed_b", tensor(vec![cout as i64], &bias))?;
        }
        (Kind::Gemm | Kind::Pooled { .. }, Op::Gemm { trans_b, .. }) => {
            let tb = trans_b.unwrap_or(0) != 0;
            let mut w = vec![0.0; cout * f];
            for m in 0..cout {
                for q in 0..f {
                    w[if tb { m * f + q } else { q * cout + m }] = wt[[q, m]];
                }
            }
            let d = if tb { vec![cout as i64, f as i64] } else { vec![f as i64, cout as i64] };
            set_const(g, id, 1, "reconstructed_w", tensor(d, &w))?;
            set_const(g, id, 2, "reconstructed_b", tensor(vec![cout as i64], &bias))?;
            if let Some(Op::Gemm { alpha, beta, .. }) = g.node_mut(id).map(|n| &mut n.op) {
                *alpha = None;
                *beta = None;
            }
        }
        _ => return Err(invalid("reader kind")),
    }
    Ok(())
}
