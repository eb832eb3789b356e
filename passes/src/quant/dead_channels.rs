//! Exact constants for dead channels. A Conv output channel whose weights are all zero (what
//! `torch.nn.utils.prune` leaves) is the constant k = act(b) everywhere. Quantized per tensor, k is
//! rounded by up to s/2, and when the next layer is a BN-folded depthwise conv — BatchNorm of an
//! almost-constant channel has variance ≈ 0, so its folded weights reach an L1 norm of ~600 — that rounding
//! becomes an output error of several units and the pruned model's accuracy collapses.
//!
//! The fix is exact in float: move the channel's constant onto the quantization grid. Pick t, a value the
//! output's (scale, zero point) represents exactly (the grid point nearest k, never 0), set the channel's
//! bias so that act(b') = t, and scale the input-channel-c weights of every consumer by k/t. The float
//! model computes the same function; the quantized one no longer rounds the constant at all.
//!
//! Applies when every consumer of the output is a Conv reading it as data with constant float weights,
//! and the activation is one we can invert (none, Relu, Clip, HardSwish).
use std::collections::BTreeMap;

use kiln_compiler::ir::{Act, DType, Graph, NodeId, Op, TensorData, ValueId};
use kiln_compiler::Result;

/// act(x) for the activations this rewrite inverts.
fn act(a: &Option<Act>, x: f32) -> Option<f32> {
    Some(match a {
        None => x,
        Some(Act::Relu) => x.max(0.0),
        Some(Act::Clip { min, max }) => x.max(min.unwrap_or(f32::MIN)).min(max.unwrap_or(f32::MAX)),
        Some(Act::HardSwish) => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        _ => return None,
    })
}

/// Some x with act(x) = t, if there is one.
fn inverse(a: &Option<Act>, t: f32) -> Option<f32> {
    let x = match a {
        None => t,
        Some(Act::Relu) if t > 0.0 => t,
        Some(Act::Clip { min, max })
            if t > min.unwrap_or(f32::MIN) && t < max.unwrap_or(f32::MAX) =>
        {
            t
        }
        // x(x+3)/6 = t on the increasing branch x ≥ −1.5 (t ≥ −0.375); identity from x = 3.
        Some(Act::HardSwish) if t >= 3.0 => t,
        Some(Act::HardSwish) if t > -0.375 => (-3.0 + (9.0 + 24.0 * t).sqrt()) / 2.0,
        _ => return None,
    };
    // Accept only when it lands on t (to float precision).
    act(a, x).filter(|y| (y - t).abs() <= 1e-6 * t.abs().max(1e-3)).map(|_| x)
}

/// Does Conv `id` have an output channel whose weights are all zero?
pub fn has_dead_channels(g: &Graph, id: NodeId) -> bool {
    let n = &g.nodes[id];
    let Some((wd, w)) = f32_const(g, n.input(1)).filter(|_| matches!(n.op, Op::Conv { .. })) else {
        return false;
    };
    let cout = wd.first().copied().unwrap_or(0) as usize;
    cout > 0
        && w.len() >= cout
        && w.len() % cout == 0
        && w.chunks(w.len() / cout).any(|c| c.iter().all(|x| *x == 0.0))
}

fn f32_const(g: &Graph, v: Option<ValueId>) -> Option<(Vec<i64>, Vec<f32>)> {
    let d = g.const_data(v?)?;
    (d.dtype == DType::F32).then_some(())?;
    Some((d.dims.clone(), d.to_f32_vec()?))
}

/// Snap dead channels of every eligible Conv onto the grid of `params` (scale, zero point by value),
/// with quantized range [qmin, qmax]. Returns how many channels moved.
pub fn snap(
    g: &mut Graph,
    params: &BTreeMap<ValueId, (f32, i64)>,
    qmin: i64,
    qmax: i64,
) -> Result<usize> {
    let mut moved = 0;
    for id in g.topo_order()? {
        let n = &g.nodes[id];
        if !matches!(n.op, Op::Conv { .. }) {
            continue;
        }
        let Some(y) = n.output(0) else { continue };
        let Some(&(s, zp)) = params.get(&y) else { continue };
        let (Some((wd, w)), Some((_, b))) = (f32_const(g, n.input(1)), f32_const(g, n.input(2)))
        else {
            continue;
        };
        let cout = wd.first().copied().unwrap_or(0) as usize;
        if cout == 0 || b.len() != cout || w.len() % cout != 0 {
            continue;
        }
        let per = w.len() / cout;
        let dead: Vec<usize> =
            (0..cout).filter(|c| w[c * per..(c + 1) * per].iter().all(|x| *x == 0.0)).collect();
        if dead.is_empty() || g.is_output(y) {
            continue;
        }
        // Every consumer: a Conv reading y at slot 0 with constant float weights.
        let consumers = g.consumers(y);
        let ok = consumers.iter().all(|(c, slot)| {
            *slot == 0
                && matches!(g.nodes[*c].op, Op::Conv { .. })
                && g.nodes[*c].input(1) != Some(y)
                && f32_const(g, g.nodes[*c].input(1)).is_some()
        });
        if consumers.is_empty() || !ok {
            continue;
        }
        let a = n.act.clone();
        let mut bias = b.clone();
        // (channel, k/t) for each moved channel.
        let mut factors: Vec<(usize, f32)> = Vec::new();
        for c in dead {
            let Some(k) = act(&a, b[c]) else { break };
            let on_grid = (k / s + zp as f32 - (k / s + zp as f32).round()).abs() < 1e-3;
            if k == 0.0 || on_grid {
                continue;
            }
            // Grid points near k, nearest first, never 0; either sign (the consumer weight absorbs it).
            let q0 = ((k / s).round() as i64 + zp).clamp(qmin, qmax);
            let cands = [q0, q0 + 1, q0 - 1, zp + 1, zp - 1, qmax, qmin];
            let pick =
                cands.iter().filter(|q| **q != zp && (qmin..=qmax).contains(*q)).find_map(|q| {
                    let t = (*q - zp) as f32 * s;
                    inverse(&a, t).map(|x| (t, x))
                });
            let Some((t, x)) = pick else { continue };
            bias[c] = x;
            factors.push((c, k / t));
        }
        if factors.is_empty() {
            continue;
        }
        let cin = cout;
        for (cid, _) in consumers {
            let cn = &g.nodes[cid];
            let Op::Conv { group, .. } = &cn.op else { continue };
            let Some((cd, mut cw)) = f32_const(g, cn.input(1)) else { continue };
            let groups = group.unwrap_or(1).max(1) as usize;
            let (co, cpg) = (cd[0] as usize, cd.get(1).copied().unwrap_or(1) as usize);
            let k: usize = cd[2..].iter().product::<i64>() as usize;
            if cpg * groups != cin || co % groups != 0 {
                continue;
            }
            let opg = co / groups;
            for (c, f) in &factors {
                let (gi, i) = (c / cpg, c % cpg);
                for o in gi * opg..(gi + 1) * opg {
                    let base = (o * cpg + i) * k;
                    cw[base..base + k].iter_mut().for_each(|x| *x *= f);
                }
            }
            let name = format!("{}_dead_snapped_w", cn.name);
            let wv = g.add_const(&name, TensorData::from_f32(cd, &cw))?;
            set_input(g, cid, 1, wv);
        }
        let name = format!("{}_dead_snapped_b", g.nodes[id].name);
        let bv = g.add_const(&name, TensorData::from_f32(vec![cout as i64], &bias))?;
        set_input(g, id, 2, bv);
        moved += factors.len();
    }
    g.rebuild_edges();
    Ok(moved)
}

fn set_input(g: &mut Graph, id: NodeId, slot: usize, v: ValueId) {
    if let Some(n) = g.node_mut(id) {
        n.inputs[slot] = Some(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_lands_on_target() {
        for a in [
            None,
            Some(Act::Relu),
            Some(Act::Clip { min: Some(0.0), max: Some(6.0) }),
            Some(Act::HardSwish),
        ] {
            for t in [0.02f32, 0.3, 2.9, 4.0] {
                let x = inverse(&a, t).expect("invertible");
                assert!((act(&a, x).unwrap() - t).abs() < 1e-5, "{a:?} {t}");
            }
        }
        assert!(inverse(&Some(Act::Relu), -0.1).is_none());
        assert!(inverse(&Some(Act::Clip { min: Some(0.0), max: Some(6.0) }), 6.5).is_none());
        assert!(
            (act(&Some(Act::HardSwish), inverse(&Some(Act::HardSwish), -0.2).unwrap()).unwrap()
                + 0.2)
                .abs()
                < 1e-5
        );
    }
}
