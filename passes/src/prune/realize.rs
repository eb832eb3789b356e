//! `prune: { method: realize }`: remove the channels a pruned model already zeroed.
//!
//! torch.nn.utils.prune zeroes whole filters, but the exported model keeps them, and BatchNorm folding
//! turns each into a filter of zeros with a bias: a *constant* channel `act(b)`, not a dead one. This pass
//! finds, for every Conv (group 1) and Gemm, the output channels whose weights are all zero, follows each
//! channel's constant through what passes it on unchanged in shape (activations, GlobalAveragePool,
//! Flatten, depthwise convs) to the layers that read it (Conv with group 1, Gemm), folds the constant's
//! contribution into those layers' biases, and removes the channel everywhere: from the producer, the
//! depthwise convs on the way, and the readers' weights.
//!
//! Exact where no zero padding sees the constant: a reader without padding, or a constant of 0. Where a
//! padded conv reads a non-zero constant, its border outputs would see the padding instead: the channel is
//! kept and listed, unless `approximate: true`, which folds the interior value (the driver then measures
//! the model against the original). Channels read by anything else (a residual Add, a Concat, a gate's Mul,
//! a graph output) are kept and listed with the reason. Removing every channel of a layer is never done.
use std::collections::BTreeMap;

use kiln_compiler::ir::{Act, DType, Graph, Model, NodeId, Op, TensorData, ValueId};
use kiln_compiler::pipeline::{Pass, PassContext};
use kiln_compiler::Result;

use crate::util::scalar_const;

pub struct Realize {
    pub approximate: bool,
}

/// How a node on a constant channel's way treats it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    /// Element-wise activation node: the constant passes through the activation.
    Act,
    /// GlobalAveragePool, Flatten of [N, C, 1, 1]: passes unchanged.
    Same,
    /// Depthwise conv: channel c of its output is a new constant; the channel is removed from it.
    Depthwise,
    /// Conv with group 1 or Gemm reading the channel: folds it into its bias, drops the input channel.
    Reader,
}

/// A node on the way, with the value feeding it.
#[derive(Clone, Debug)]
struct Touch {
    node: NodeId,
    role: Role,
}

pub(super) fn f32_const(g: &Graph, v: Option<ValueId>) -> Option<(Vec<i64>, Vec<f64>)> {
    let d = g.const_data(v?)?;
    (d.dtype == DType::F32).then_some(())?;
    Some((d.dims.clone(), d.to_f64_vec()?))
}

/// y = act(x) for the activations kiln fuses (None for ones it does not evaluate here).
fn act(a: &Act, x: f64) -> Option<f64> {
    Some(match a {
        Act::Relu => x.max(0.0),
        Act::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Act::Tanh => x.tanh(),
        Act::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
        Act::Clip { min, max } => x
            .max(min.map_or(f64::NEG_INFINITY, f64::from))
            .min(max.map_or(f64::INFINITY, f64::from)),
        Act::HardSigmoid { alpha, beta } => {
            (f64::from(alpha.unwrap_or(0.2)) * x + f64::from(beta.unwrap_or(0.5))).clamp(0.0, 1.0)
        }
        Act::LeakyRelu { alpha } => {
            if x >= 0.0 {
                x
            } else {
                f64::from(alpha.unwrap_or(0.01)) * x
            }
        }
        Act::Silu => x / (1.0 + (-x).exp()),
        Act::Gelu { .. } => return None,
    })
}

/// A standalone activation node as a function (Clip's bounds may be inputs).
fn node_act(g: &Graph, id: NodeId) -> Option<Act> {
    let n = &g.nodes[id];
    match &n.op {
        Op::Act(Act::Clip { min, max }) => Some(Act::Clip {
            min: min.or_else(|| scalar_const(g, n.input(1))),
            max: max.or_else(|| scalar_const(g, n.input(2))),
        }),
        Op::Act(a) => Some(a.clone()),
        _ => None,
    }
}

fn padded(op: &Op) -> bool {
    let Op::Conv { window, .. } = op else { return false };
    let auto = window.auto_pad.as_deref().unwrap_or("NOTSET");
    (auto != "NOTSET" && auto != "VALID")
        || window.pads.as_ref().is_some_and(|p| p.iter().any(|x| *x != 0))
}

/// Channels of `g.value(v)` (dim 1), when known.
fn channels(g: &Graph, v: ValueId) -> Option<i64> {
    g.value(v).shape.as_ref()?.get(1)?.known()
}

/// Every node a constant channel of `v` reaches, in order, or why it cannot be removed.
fn reach(g: &Graph, v: ValueId, out: &mut Vec<Touch>) -> std::result::Result<(), String> {
    let name = |id: NodeId| format!("{} '{}'", g.nodes[id].op.op_type(), g.nodes[id].name);
    if g.is_output(v) {
        return Err(format!("'{}' is a graph output", g.value(v).name));
    }
    if g.nodes.node_weights().any(|n| n.captures.contains(&v)) {
        return Err(format!("'{}' is read by a subgraph", g.value(v).name));
    }
    let c = channels(g, v)
        .ok_or_else(|| format!("'{}' has no known channel count", g.value(v).name))?;
    for (id, slot) in g.consumers(v) {
        let n = &g.nodes[id];
        let Some(o) = n.output(0) else { return Err(format!("{} has no output", name(id))) };
        if slot != 0 {
            return Err(format!("read by {} as input {slot}", name(id)));
        }
        let role = match &n.op {
            Op::Act(a) if n.act.is_none() => {
                let a = node_act(g, id).unwrap_or_else(|| a.clone());
                act(&a, 0.0).ok_or_else(|| format!("read by {} (not evaluated here)", name(id)))?;
                Role::Act
            }
            Op::GlobalAveragePool => Role::Same,
            Op::Flatten { axis } if axis.unwrap_or(1) == 1 => {
                let spatial = g
                    .value(v)
                    .shape
                    .as_ref()
                    .map(|s| s.iter().skip(2).all(|d| d.known() == Some(1)));
                if spatial != Some(true) {
                    return Err(format!("read by {} of a tensor with spatial extent", name(id)));
                }
                Role::Same
            }
            Op::Conv { group, .. } => {
                let (wd, _) = f32_const(g, n.input(1))
                    .ok_or_else(|| format!("read by {} with non-constant weights", name(id)))?;
                if n.input(2).is_some() && f32_const(g, n.input(2)).is_none() {
                    return Err(format!("read by {} with a non-constant bias", name(id)));
                }
                let group = group.unwrap_or(1);
                if group == 1 {
                    Role::Reader
                } else if group == c && wd.first() == Some(&c) {
                    Role::Depthwise
                } else {
                    return Err(format!("read by {} (grouped, {group} groups)", name(id)));
                }
            }
            Op::Gemm { trans_a, .. } if trans_a.unwrap_or(0) == 0 => {
                let (bd, _) = f32_const(g, n.input(1))
                    .ok_or_else(|| format!("read by {} with non-constant weights", name(id)))?;
                let rows = g.value(v).shape.as_ref().map(|s| s.len());
                if bd.len() != 2 || rows != Some(2) {
                    return Err(format!(
                        "read by {} of a rank-{} input",
                        name(id),
                        rows.unwrap_or(0)
                    ));
                }
                if n.input(2).is_some() && f32_const(g, n.input(2)).is_none() {
                    return Err(format!("read by {} with a non-constant bias", name(id)));
                }
                Role::Reader
            }
            _ => return Err(format!("read by {}", name(id))),
        };
        out.push(Touch { node: id, role });
        if role != Role::Reader {
            reach(g, o, out)?;
        }
    }
    Ok(())
}

/// Channel `c`'s constant at every touched node's input (the producer outputs `k0` there), and whether
/// folding it is exact.
fn follow(
    g: &Graph,
    touches: &[Touch],
    producer: NodeId,
    c: usize,
    k0: f64,
) -> Option<(BTreeMap<NodeId, f64>, bool)> {
    let mut on: BTreeMap<ValueId, f64> = BTreeMap::new();
    on.insert(g.nodes[producer].output(0)?, k0);
    let mut at = BTreeMap::new();
    let mut exact = true;
    for t in touches {
        let n = &g.nodes[t.node];
        let k = *on.get(&n.input(0)?)?;
        at.insert(t.node, k);
        let out = match t.role {
            Role::Act => act(&node_act(g, t.node)?, k)?,
            Role::Same => k,
            Role::Depthwise => {
                // Away from the borders, channel c is k · Σ w[c] + b[c].
                let (wd, w) = f32_const(g, n.input(1))?;
                let per = (w.len() / usize::try_from(*wd.first()?).ok()?.max(1)).max(1);
                let sum: f64 = w.get(c * per..(c + 1) * per)?.iter().sum();
                let bias = match n.input(2) {
                    Some(b) => *f32_const(g, Some(b))?.1.get(c)?,
                    None => 0.0,
                };
                if k != 0.0 && padded(&n.op) {
                    // Near the borders the window covers padding: only the interior is this value.
                    exact = false;
                }
                let y = k * sum + bias;
                match &n.act {
                    Some(a) => act(a, y)?,
                    None => y,
                }
            }
            Role::Reader => {
                if k != 0.0 && padded(&n.op) {
                    exact = false;
                }
                continue;
            }
        };
        on.insert(n.output(0)?, out);
    }
    Some((at, exact))
}

/// A producer's output channels whose weights are all zero, each with its constant output `act(b)`.
fn zero_channels(g: &Graph, id: NodeId) -> Option<Vec<(usize, f64)>> {
    let n = &g.nodes[id];
    let (wd, w) = f32_const(g, n.input(1))?;
    let (outs, row): (usize, Box<dyn Fn(usize) -> Vec<f64>>) = match &n.op {
        Op::Conv { group, .. } if group.unwrap_or(1) == 1 => {
            let o = usize::try_from(*wd.first()?).ok()?;
            let per = w.len() / o.max(1);
            let w = w.clone();
            (o, Box::new(move |c| w[c * per..(c + 1) * per].to_vec()))
        }
        Op::Gemm { trans_a, trans_b, .. } if trans_a.unwrap_or(0) == 0 && wd.len() == 2 => {
            let (r, cols) = (usize::try_from(wd[0]).ok()?, usize::try_from(wd[1]).ok()?);
            let w = w.clone();
            if trans_b.unwrap_or(0) != 0 {
                (r, Box::new(move |c| w[c * cols..(c + 1) * cols].to_vec()))
            } else {
                (cols, Box::new(move |c| (0..r).map(|i| w[i * cols + c]).collect()))
            }
        }
        _ => return None,
    };
    let bias: Vec<f64> = match n.input(2) {
        Some(b) => {
            let (_, b) = f32_const(g, Some(b))?;
            match b.len() {
                l if l == outs => b,
                1 => vec![b[0]; outs],
                _ => return None,
            }
        }
        None => vec![0.0; outs],
    };
    let gemm_beta = match &n.op {
        Op::Gemm { beta, .. } => f64::from(beta.unwrap_or(1.0)),
        _ => 1.0,
    };
    let mut zero = Vec::new();
    for (c, b) in bias.iter().enumerate() {
        if row(c).iter().all(|x| *x == 0.0) {
            let y = gemm_beta * b;
            let k = match &n.act {
                Some(a) => act(a, y)?,
                None => y,
            };
            zero.push((c, k));
        }
    }
    Some(zero)
}

pub(super) fn tensor(dims: Vec<i64>, v: &[f64]) -> TensorData {
    TensorData::from_f32(dims, &v.iter().map(|x| *x as f32).collect::<Vec<_>>())
}

/// `data` (with `dims`) without the indices `drop` along `axis`.
pub(super) fn without(
    dims: &[i64],
    data: &[f64],
    axis: usize,
    drop: &[usize],
) -> (Vec<i64>, Vec<f64>) {
    let outer: usize = dims[..axis].iter().product::<i64>() as usize;
    let n = dims[axis] as usize;
    let inner: usize = dims[axis + 1..].iter().product::<i64>() as usize;
    let mut out = Vec::with_capacity(data.len());
    for o in 0..outer {
        for c in (0..n).filter(|c| !drop.contains(c)) {
            let at = (o * n + c) * inner;
            out.extend_from_slice(&data[at..at + inner]);
        }
    }
    let mut d = dims.to_vec();
    d[axis] = (n - drop.iter().filter(|c| **c < n).count()) as i64;
    (d, out)
}

/// Replace input `slot` of `id` by a new constant.
pub(super) fn set_const(
    g: &mut Graph,
    id: NodeId,
    slot: usize,
    what: &str,
    data: TensorData,
) -> Result<()> {
    let name = format!("{}_{what}", g.nodes[id].name);
    let v = g.add_const(&name, data)?;
    let n = g.node_mut(id).ok_or_else(|| kiln_compiler::Error::invalid("node vanished"))?;
    if n.inputs.len() <= slot {
        n.inputs.resize(slot + 1, None);
    }
    n.inputs[slot] = Some(v);
    Ok(())
}

/// Remove channels `drop` (sorted) of `producer` and of every node on their way; readers fold each
/// channel's constant (`consts[c][reader]`) into their bias.
fn apply(
    g: &mut Graph,
    producer: NodeId,
    touches: &[Touch],
    drop: &[usize],
    consts: &BTreeMap<usize, BTreeMap<NodeId, f64>>,
) -> Result<()> {
    let invalid = |what: &str| kiln_compiler::Error::invalid(format!("prune: {what}"));
    // The producer: weight rows (Conv: axis 0; Gemm: the output axis of B) and bias entries.
    let n = g.nodes[producer].clone();
    let (wd, w) = f32_const(g, n.input(1)).ok_or_else(|| invalid("producer weights"))?;
    let axis = match &n.op {
        Op::Gemm { trans_b, .. } if trans_b.unwrap_or(0) == 0 => 1,
        _ => 0,
    };
    let outs = wd[axis] as usize;
    let (d, w2) = without(&wd, &w, axis, drop);
    set_const(g, producer, 1, "realized_w", tensor(d, &w2))?;
    if let Some((bd, b)) = f32_const(g, n.input(2)) {
        if b.len() == outs {
            let (d, b2) = without(&[outs as i64], &b, 0, drop);
            let d = if bd.len() == 2 { vec![1, d[0]] } else { d };
            set_const(g, producer, 2, "realized_b", tensor(d, &b2))?;
        }
    }
    for t in touches {
        let n = g.nodes[t.node].clone();
        match t.role {
            Role::Act | Role::Same => {}
            Role::Depthwise => {
                let (wd, w) =
                    f32_const(g, n.input(1)).ok_or_else(|| invalid("depthwise weights"))?;
                let (d, w2) = without(&wd, &w, 0, drop);
                let left = d[0];
                set_const(g, t.node, 1, "realized_w", tensor(d, &w2))?;
                if let Some((_, b)) = f32_const(g, n.input(2)) {
                    let (d, b2) = without(&[b.len() as i64], &b, 0, drop);
                    set_const(g, t.node, 2, "realized_b", tensor(d, &b2))?;
                }
                if let Some(node) = g.node_mut(t.node) {
                    if let Op::Conv { group, .. } = &mut node.op {
                        *group = Some(left);
                    }
                }
            }
            Role::Reader => {
                let (wd, w) = f32_const(g, n.input(1)).ok_or_else(|| invalid("reader weights"))?;
                // Output channels m, input axis of the channel, and the weight elements per (m, c).
                let (m_count, in_axis) = match &n.op {
                    Op::Gemm { trans_b, .. } if trans_b.unwrap_or(0) != 0 => (wd[0] as usize, 1),
                    Op::Gemm { .. } => (wd[1] as usize, 0),
                    _ => (wd[0] as usize, 1),
                };
                let scale = match &n.op {
                    Op::Gemm { alpha, beta, .. } => {
                        let beta = f64::from(beta.unwrap_or(1.0));
                        if beta == 0.0 {
                            return Err(invalid("a Gemm with beta 0 cannot take a bias"));
                        }
                        f64::from(alpha.unwrap_or(1.0)) / beta
                    }
                    _ => 1.0,
                };
                let mut bias: Vec<f64> = match f32_const(g, n.input(2)) {
                    Some((_, b)) if b.len() == m_count => b,
                    Some((_, b)) if b.len() == 1 => vec![b[0]; m_count],
                    Some(_) => return Err(invalid("reader bias shape")),
                    None => vec![0.0; m_count],
                };
                let c_count = wd[in_axis] as usize;
                let spatial: usize = wd.iter().skip(2).product::<i64>().max(1) as usize;
                for &c in drop {
                    let k = consts.get(&c).and_then(|m| m.get(&t.node)).copied().unwrap_or(0.0);
                    if k == 0.0 {
                        continue;
                    }
                    for (m, b) in bias.iter_mut().enumerate() {
                        let sum: f64 = match (&n.op, in_axis) {
                            (Op::Gemm { .. }, 1) => w[m * c_count + c],
                            (Op::Gemm { .. }, _) => w[c * m_count + m],
                            _ => {
                                let at = (m * c_count + c) * spatial;
                                w[at..at + spatial].iter().sum()
                            }
                        };
                        *b += scale * k * sum;
                    }
                }
                let (d, w2) = without(&wd, &w, in_axis, drop);
                set_const(g, t.node, 1, "realized_w", tensor(d, &w2))?;
                let bd = match &n.op {
                    Op::Gemm { .. } => vec![m_count as i64],
                    _ => vec![m_count as i64],
                };
                set_const(g, t.node, 2, "realized_b", tensor(bd, &bias))?;
            }
        }
    }
    Ok(())
}

impl Pass for Realize {
    fn name(&self) -> &'static str {
        "prune"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<bool> {
        let g = &mut model.graph;
        let producers: Vec<NodeId> = g
            .topo_order()?
            .into_iter()
            .filter(|id| match &g.nodes[*id].op {
                Op::Conv { group, .. } => group.unwrap_or(1) == 1,
                Op::Gemm { .. } => true,
                _ => false,
            })
            .collect();
        let (mut removed, mut kept) = (Vec::new(), Vec::new());
        let mut approximate = 0usize;
        for p in producers {
            let Some(zero) = zero_channels(g, p) else { continue };
            let Some(v) = g.nodes[p].output(0) else { continue };
            if zero.is_empty() {
                continue;
            }
            let name = g.nodes[p].name.clone();
            let all: Vec<usize> = zero.iter().map(|z| z.0).collect();
            let mut touches = Vec::new();
            if let Err(why) = reach(g, v, &mut touches) {
                kept.push(serde_json::json!({ "node": name, "channels": all, "why": why }));
                continue;
            }
            let total = match &g.nodes[p].op {
                Op::Gemm { .. } => g.value(v).shape.as_ref().and_then(|s| s.last()?.known()),
                _ => channels(g, v),
            };
            let mut drop = Vec::new();
            let mut consts = BTreeMap::new();
            let (mut padding, mut inexact) = (Vec::new(), Vec::new());
            for (c, k0) in zero {
                let Some((at, exact)) = follow(g, &touches, p, c, k0) else {
                    kept.push(serde_json::json!({ "node": name, "channels": [c], "why": "an activation on its way is not evaluated here" }));
                    continue;
                };
                if !exact && !self.approximate {
                    padding.push(c);
                    continue;
                }
                if !exact {
                    inexact.push(c);
                }
                drop.push(c);
                consts.insert(c, at);
            }
            if !padding.is_empty() {
                kept.push(serde_json::json!({ "node": name, "channels": padding, "why": "a zero-padded conv reads its non-zero constant: removal is exact only away from the borders (approximate: true removes it)" }));
            }
            if total.is_some_and(|t| drop.len() as i64 >= t) {
                if let Some(c) = drop.pop() {
                    inexact.retain(|x| *x != c);
                    kept.push(serde_json::json!({ "node": name, "channels": [c], "why": "the last channel of a layer stays" }));
                }
            }
            if drop.is_empty() {
                continue;
            }
            apply(g, p, &touches, &drop, &consts)?;
            approximate += inexact.len();
            let through: Vec<String> =
                touches.iter().map(|t| g.nodes[t.node].name.clone()).collect();
            removed.push(serde_json::json!({
                "node": name,
                "channels": drop,
                "of": total,
                "approximate": inexact,
                "through": through,
            }));
        }
        let changed = !removed.is_empty();
        if changed {
            // The replaced weights are dead now.
            crate::cleanup::dce::Dce.run(model, cx)?;
        }
        let count: usize =
            removed.iter().filter_map(|r| r["channels"].as_array().map(Vec::len)).sum();
        cx.reports.push((
            "prune".into(),
            serde_json::json!({ "method": "realize", "approximate": self.approximate, "channels_removed": count, "channels_removed_approximately": approximate, "removed": removed, "kept": kept }),
        ));
        if approximate > 0 {
            cx.inexact.push(format!("prune realize: {approximate} channel(s) removed approximately (their constant folded as its interior value)"));
        }
        Ok(changed)
    }
}
