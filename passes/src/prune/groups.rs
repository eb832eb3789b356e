//! Dependency groups for structured pruning, built on the IR at the level of single channels.
//!
//! Every value with a known channel axis (axis 1) has one *slot* per channel. Nodes tie slots together
//! where removing a channel of one value forces removing a channel of another:
//! - element-wise ops (activations, BatchNorm, pooling, ReduceMean over spatial axes, binary ops between
//!   equally wide tensors, a squeeze-excite gate multiplying a map) tie channel c of every input to
//!   channel c of the output;
//! - a depthwise conv ties its input and output channel c;
//! - a Concat on the channel axis ties input k's channel j to output channel `offset_k + j`;
//! - a Flatten (or a flattening Reshape) of `[N, C, S...]` ties channel c to features `c·S .. (c+1)·S`.
//!
//! A group-1 Conv or a Gemm *reads* its input's channels (their weights' input axis shrinks) and
//! *produces* free output channels. Anything else (Reshape and Transpose of a channel shuffle, Split,
//! Slice, grouped convs, MatMul, graph inputs and outputs, subgraph captures) blocks the slots it touches.
//! A connected set of slots (a component) can be removed as a whole exactly when none of its slots is
//! blocked: it then holds at least one producer's output channel, and removing it keeps every node's
//! shapes consistent.
use std::collections::{BTreeMap, BTreeSet};

use kiln_compiler::groups::Groups as UnionFind;
use kiln_compiler::ir::{AttrValue, BinOp, DType, Graph, NodeId, Op, ValueId};
use kiln_compiler::Result;

/// What a node does with channels.
#[derive(Clone, Debug, PartialEq)]
pub enum Role {
    /// Group-1 Conv (rank 3 or 4) or Gemm: reads its input's channels, produces free output channels.
    Linear,
    /// Depthwise conv (group = channels, one filter per channel).
    Depthwise,
    /// Channel c in, channel c out (activations, pools, BatchNorm, binary ops, Concat, Flatten).
    Tie,
    /// A flattening Reshape whose shape constant must follow the new feature count.
    FlattenReshape,
}

/// The dependency structure of a graph.
pub struct Groups {
    /// First slot of each value with a channel axis.
    pub base: BTreeMap<ValueId, (usize, usize)>,
    /// Every node that takes part, with its role.
    pub roles: BTreeMap<NodeId, Role>,
    /// Prunable components: each a list of (value, channel).
    pub comps: Vec<Vec<(ValueId, usize)>>,
    /// Components that were blocked (count, for the report).
    pub blocked: usize,
}

/// Channels (axis 1) of a value, when its rank is at least 2 and the axis is known.
pub fn channels(g: &Graph, v: ValueId) -> Option<usize> {
    let s = g.value(v).shape.as_ref()?;
    if s.len() < 2 {
        return None;
    }
    usize::try_from(s[1].known()?).ok()
}

fn rank(g: &Graph, v: ValueId) -> Option<usize> {
    g.value(v).shape.as_ref().map(Vec::len)
}

fn dims(g: &Graph, v: ValueId) -> Option<Vec<i64>> {
    g.value(v).shape.as_ref()?.iter().map(|d| d.known()).collect()
}

fn is_const(g: &Graph, v: ValueId) -> bool {
    g.const_data(v).is_some()
}

fn f32_const(g: &Graph, v: Option<ValueId>) -> bool {
    v.and_then(|v| g.const_data(v)).is_some_and(|d| d.dtype == DType::F32)
}

/// The axis of input `r`-ranked tensor aligned (numpy broadcasting) with axis 1 of a rank-`out` output.
pub fn aligned_axis(r: usize, out: usize) -> Option<usize> {
    (1 + r).checked_sub(out).filter(|a| *a < r)
}

/// A ReduceMean/ReduceMax/... keeping axis 1 (with axes from the attribute or a constant input).
fn spatial_reduce(g: &Graph, id: NodeId) -> bool {
    let n = &g.nodes[id];
    let Op::Generic { op_type, attrs } = &n.op else { return false };
    if !matches!(op_type.as_str(), "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceSum") {
        return false;
    }
    let Some(r) = n.input(0).and_then(|x| rank(g, x)) else { return false };
    let mut axes = attrs.iter().find(|a| a.name == "axes").and_then(|a| match &a.value {
        AttrValue::Ints(v) => Some(v.clone()),
        _ => None,
    });
    if axes.is_none() {
        axes = n.input(1).and_then(|a| g.const_data(a)).and_then(|d| d.to_i64_vec());
    }
    // No axes: every axis is reduced (the channel axis too).
    let Some(axes) = axes else { return false };
    !axes.is_empty() && axes.iter().all(|a| (if *a < 0 { a + r as i64 } else { *a }) >= 2)
}

/// The role of `id`, or None when it blocks.
fn classify(g: &Graph, id: NodeId) -> Option<Role> {
    let n = &g.nodes[id];
    let x = n.input(0)?;
    let y = n.output(0)?;
    // A constant data input (an Identity of a shared weight, left when `cleanup` did not run) has no
    // channel slots to tie.
    if n.outputs.iter().flatten().count() != 1 || is_const(g, x) {
        return None;
    }
    match &n.op {
        Op::Conv { group, .. } => {
            let r = rank(g, x)?;
            if !(3..=4).contains(&r) || !f32_const(g, n.input(1)) {
                return None;
            }
            if n.input(2).is_some() && !f32_const(g, n.input(2)) {
                return None;
            }
            let (c, wd) = (channels(g, x)?, &g.const_data(n.input(1)?)?.dims);
            match group.unwrap_or(1) {
                1 => Some(Role::Linear),
                k if k as usize == c && wd.first() == Some(&k) && c > 1 => Some(Role::Depthwise),
                _ => None,
            }
        }
        Op::Gemm { trans_a, .. } => {
            let ok = trans_a.unwrap_or(0) == 0
                && rank(g, x) == Some(2)
                && f32_const(g, n.input(1))
                && n.input(2).is_none_or(|b| f32_const(g, Some(b)));
            ok.then_some(Role::Linear)
        }
        Op::Act(_) | Op::GlobalAveragePool | Op::Identity => Some(Role::Tie),
        Op::Pool { .. } => Some(Role::Tie),
        Op::BatchNorm { .. } => {
            (1..5).all(|i| f32_const(g, n.input(i)) && n.input(i).is_some()).then_some(Role::Tie)
        }
        Op::Binary(BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div) => Some(Role::Tie),
        Op::Concat { axis } => {
            let r = rank(g, y)? as i64;
            let axis = if *axis < 0 { axis + r } else { *axis };
            let consts = n.inputs.iter().flatten().any(|v| is_const(g, *v));
            (axis == 1 && !consts).then_some(Role::Tie)
        }
        Op::Flatten { axis } => {
            (axis.unwrap_or(1) == 1 && dims(g, x).is_some() && rank(g, y) == Some(2))
                .then_some(Role::Tie)
        }
        Op::Reshape { .. } => {
            let (xd, yd) = (dims(g, x)?, dims(g, y)?);
            let flat = xd.len() >= 2
                && yd.len() == 2
                && xd[0] == yd[0]
                && xd[1..].iter().product::<i64>() == yd[1]
                && n.input(1).is_some_and(|s| is_const(g, s));
            flat.then_some(Role::FlattenReshape)
        }
        Op::Generic { .. } if spatial_reduce(g, id) => Some(Role::Tie),
        _ => None,
    }
}

/// Build the groups of `g`.
pub fn build(g: &Graph) -> Result<Groups> {
    let order = g.topo_order()?;
    let mut base = BTreeMap::new();
    let mut total = 0usize;
    let mut slot_of = |v: ValueId, base: &mut BTreeMap<ValueId, (usize, usize)>| {
        if let Some(b) = base.get(&v) {
            return Some(*b);
        }
        let c = channels(g, v)?;
        let b = (total, c);
        total += c;
        base.insert(v, b);
        Some(b)
    };
    // Pass 1: slots for every value that a participating node touches; roles.
    let mut roles = BTreeMap::new();
    let mut blocked_values: BTreeSet<ValueId> = BTreeSet::new();
    for &id in &order {
        let n = &g.nodes[id];
        let role = classify(g, id);
        let data: Vec<ValueId> = n
            .inputs
            .iter()
            .flatten()
            .chain(n.outputs.iter().flatten())
            .copied()
            .filter(|v| !is_const(g, *v))
            .collect();
        let ok = role.is_some() && data.iter().all(|v| slot_of(*v, &mut base).is_some());
        match (ok, role) {
            (true, Some(r)) => {
                roles.insert(id, r);
            }
            _ => blocked_values.extend(data),
        }
    }
    for v in g.inputs.iter().chain(&g.outputs) {
        blocked_values.insert(*v);
    }
    for n in g.nodes.node_weights() {
        blocked_values.extend(n.captures.iter().copied());
    }
    // Pass 2: ties.
    let mut uf: UnionFind<usize> = UnionFind::default();
    for s in 0..total {
        uf.root(s);
    }
    for (&id, role) in &roles {
        let n = &g.nodes[id];
        let (Some(x), Some(y)) = (n.input(0), n.output(0)) else { continue };
        let (Some(&(yb, yc)), Some(&(xb, xc))) = (base.get(&y), base.get(&x)) else {
            blocked_values.extend([x, y]);
            continue;
        };
        match role {
            Role::Linear => {}
            Role::Depthwise => (0..yc.min(xc)).for_each(|c| uf.union(xb + c, yb + c)),
            Role::Tie | Role::FlattenReshape => match &n.op {
                Op::Concat { .. } => {
                    let mut off = 0;
                    for v in n.inputs.iter().flatten() {
                        let Some(&(b, c)) = base.get(v) else { continue };
                        (0..c).for_each(|j| uf.union(b + j, yb + off + j));
                        off += c;
                    }
                }
                Op::Flatten { .. } | Op::Reshape { .. } => {
                    let s = yc / xc.max(1);
                    for c in 0..xc {
                        (0..s).for_each(|k| uf.union(xb + c, yb + c * s + k));
                    }
                }
                Op::Binary(_) => {
                    let out_rank = rank(g, y).unwrap_or(0);
                    for v in n.inputs.iter().flatten() {
                        if is_const(g, *v) {
                            continue;
                        }
                        let r = rank(g, *v).unwrap_or(0);
                        let width = aligned_axis(r, out_rank)
                            .and_then(|a| dims(g, *v).and_then(|d| d.get(a).copied()));
                        match width {
                            // Slots follow axis 1: only an operand of the output's rank lines up.
                            Some(w) if w as usize == yc && r == out_rank => {
                                if let Some(&(b, _)) = base.get(v) {
                                    (0..yc).for_each(|c| uf.union(b + c, yb + c));
                                }
                            }
                            // Broadcast along channels: not tied.
                            Some(1) => {}
                            _ => blocked_values.extend([*v, y]),
                        }
                    }
                }
                _ => (0..yc.min(xc)).for_each(|c| uf.union(xb + c, yb + c)),
            },
        }
    }
    // Binary const operands must broadcast along channels or match them.
    for (&id, role) in &roles {
        let n = &g.nodes[id];
        if *role != Role::Tie || !matches!(n.op, Op::Binary(_)) {
            continue;
        }
        let Some(y) = n.output(0) else { continue };
        let Some(&(_, yc)) = base.get(&y) else { continue };
        let out_rank = rank(g, y).unwrap_or(0);
        for v in n.inputs.iter().flatten().filter(|v| is_const(g, **v)) {
            let d = &g.const_data(*v).map(|d| d.dims.clone()).unwrap_or_default();
            let ok = match aligned_axis(d.len(), out_rank) {
                Some(a) => d[a] == 1 || d[a] as usize == yc,
                None => d.len() < out_rank,
            };
            if !ok {
                blocked_values.insert(y);
            }
        }
    }
    // Components.
    let mut members: BTreeMap<usize, Vec<(ValueId, usize)>> = BTreeMap::new();
    let mut bad: BTreeSet<usize> = BTreeSet::new();
    for (&v, &(b, c)) in &base {
        for k in 0..c {
            let r = uf.root(b + k);
            members.entry(r).or_default().push((v, k));
            if blocked_values.contains(&v) {
                bad.insert(r);
            }
        }
    }
    let blocked = bad.len();
    let comps = members.into_iter().filter(|(r, _)| !bad.contains(r)).map(|(_, m)| m).collect();
    Ok(Groups { base, roles, comps, blocked })
}
