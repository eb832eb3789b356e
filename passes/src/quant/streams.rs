//! Residual-stream equalization: the activation-side twin of cross-layer equalization (cle.rs).
//!
//! In a residual network the tensors joined by `Add`s form one *stream* (MobileNetV2: a stage's projection
//! outputs and the sums between them). CLE cannot touch a stream, because each of its tensors feeds several
//! layers, yet streams carry the widest activation ranges of the network: a few channels reach 30 while
//! most stay near 2, and one per-tensor activation scale serves them all. Scaling stream channel c by 1/s_c
//! everywhere at once is exact: every producer (a Conv without activation) divides its output channel c and
//! bias by s_c, every `Add` is linear, and every consumer Conv multiplies its input channel c by s_c.
//!
//! With a_c the calibrated max |x_c| over the stream's tensors and w_c the largest consumer weight reading
//! channel c, s_c = a_c^α / w_c^(1−α) (α = 0.5: both end at √(a_c·w_c), the SmoothQuant balance) moves range
//! from the activations, quantized per tensor, into the weights, whose producers are rescaled per output
//! channel. A stream is left alone when any tensor in it is a graph output or feeds anything other than
//! an Add of the same stream or a Conv's data input, or when a producer is not an activation-free Conv.
use std::collections::{BTreeMap, HashMap};

use kiln_compiler::ir::op::BinOp;
use kiln_compiler::ir::{Graph, Model, NodeId, Op, ValueId};
use kiln_compiler::Result;

use super::cle::{conv_weights, set_weights, ChannelStats};

/// One stream: its tensors, the convs writing it and the convs reading it.
#[derive(Debug)]
pub struct Stream {
    pub values: Vec<ValueId>,
    producers: Vec<NodeId>,
    consumers: Vec<NodeId>,
}

fn is_add(g: &Graph, id: NodeId) -> bool {
    let n = &g.nodes[id];
    matches!(n.op, Op::Binary(BinOp::Add))
        && n.act.is_none()
        && n.inputs.len() == 2
        && n.inputs.iter().flatten().all(|v| g.const_data(*v).is_none())
}

fn find(parent: &mut BTreeMap<ValueId, ValueId>, v: ValueId) -> ValueId {
    let mut r = v;
    while let Some(p) = parent.get(&r).copied().filter(|p| *p != r) {
        r = p;
    }
    parent.insert(v, r);
    r
}

/// Streams of `g` that can be equalized exactly.
pub fn streams(g: &Graph) -> Result<Vec<Stream>> {
    let mut parent: BTreeMap<ValueId, ValueId> = BTreeMap::new();
    let adds: Vec<NodeId> = g.topo_order()?.into_iter().filter(|id| is_add(g, *id)).collect();
    for id in &adds {
        let n = &g.nodes[*id];
        let Some(y) = n.output(0) else { continue };
        for x in n.inputs.iter().flatten() {
            let (a, b) = (find(&mut parent, *x), find(&mut parent, y));
            parent.insert(a, b);
        }
    }
    let mut groups: BTreeMap<ValueId, Vec<ValueId>> = BTreeMap::new();
    for v in parent.keys().copied().collect::<Vec<_>>() {
        let r = find(&mut parent, v);
        groups.entry(r).or_default().push(v);
    }
    let mut out = Vec::new();
    'group: for (_, values) in groups {
        let (mut producers, mut consumers) = (Vec::new(), Vec::new());
        for v in &values {
            if g.is_output(*v) {
                continue 'group;
            }
            let Some((p, _)) = g.value(*v).producer else { continue 'group };
            if !is_add(g, p) {
                let pn = &g.nodes[p];
                if !matches!(pn.op, Op::Conv { .. })
                    || pn.act.is_some()
                    || conv_weights(g, p).is_none()
                {
                    continue 'group;
                }
                producers.push(p);
            }
            for (c, slot) in g.consumers(*v) {
                if is_add(g, c) && g.nodes[c].output(0).is_some_and(|y| values.contains(&y)) {
                    continue;
                }
                if slot != 0
                    || !matches!(g.nodes[c].op, Op::Conv { .. })
                    || conv_weights(g, c).is_none()
                {
                    continue 'group;
                }
                consumers.push(c);
            }
        }
        if !producers.is_empty() && !consumers.is_empty() {
            consumers.sort();
            consumers.dedup();
            out.push(Stream { values, producers, consumers });
        }
    }
    Ok(out)
}

/// Every value of every stream: what [`equalize`] needs per-channel maxima of.
pub fn stream_values(g: &Graph) -> Result<Vec<ValueId>> {
    Ok(streams(g)?.into_iter().flat_map(|s| s.values).collect())
}

/// Equalize every stream of `m` (see the module doc) given the per-channel statistics of
/// [`stream_values`]; returns how many were rescaled. Leaves the replaced weights for the caller's DCE.
pub fn equalize(
    m: &mut Model,
    stats: &HashMap<ValueId, ChannelStats>,
    alpha: f32,
) -> Result<usize> {
    let ss = streams(&m.graph)?;
    let mut changed = 0;
    for s in &ss {
        let g = &mut m.graph;
        // a_c: max |x_c| over the stream.
        let mut a: Vec<f32> = Vec::new();
        for v in &s.values {
            let Some(st) = stats.get(v) else { continue };
            if a.is_empty() {
                a = vec![0.0; st.max_abs.len()];
            }
            if st.max_abs.len() != a.len() {
                a.clear();
                break;
            }
            a.iter_mut().zip(&st.max_abs).for_each(|(x, y)| *x = x.max(*y));
        }
        let c = a.len();
        // w_c: largest consumer weight reading channel c.
        let mut w = vec![0f32; c];
        let mut ok = c > 0;
        for id in &s.consumers {
            match conv_weights(g, *id) {
                Some(cw) if cw.in_channels() == c => {
                    (0..c).for_each(|ch| w[ch] = w[ch].max(cw.in_range(ch)))
                }
                _ => ok = false,
            }
        }
        for id in &s.producers {
            ok &= conv_weights(g, *id).is_some_and(|pw| pw.out_channels() == c);
        }
        if !ok {
            continue;
        }
        let mut sc: Vec<f32> = a
            .iter()
            .zip(&w)
            .map(
                |(a, w)| {
                    if *a > 0.0 && *w > 0.0 {
                        a.powf(alpha) / w.powf(1.0 - alpha)
                    } else {
                        1.0
                    }
                },
            )
            .collect();
        // Only relative scales matter to the quantizer; centre them on 1 to keep biases and weights in range.
        let centre = (sc.iter().map(|v| f64::from(v.ln())).sum::<f64>() / c as f64).exp() as f32;
        sc.iter_mut().for_each(|v| *v /= centre);
        if sc.iter().any(|v| !v.is_finite() || *v <= 0.0)
            || sc.iter().all(|v| (v - 1.0).abs() < 1e-3)
        {
            continue;
        }
        for id in &s.producers {
            let Some(mut pw) = conv_weights(g, *id) else { continue };
            for (ch, v) in sc.iter().enumerate() {
                pw.scale_out(ch, 1.0 / v);
            }
            set_weights(g, *id, &pw, "stream")?;
        }
        for id in &s.consumers {
            let Some(mut cw) = conv_weights(g, *id) else { continue };
            for (ch, v) in sc.iter().enumerate() {
                cw.scale_in(ch, *v);
            }
            set_weights(g, *id, &cw, "stream")?;
        }
        changed += 1;
    }
    m.graph.rebuild_edges();
    Ok(changed)
}
