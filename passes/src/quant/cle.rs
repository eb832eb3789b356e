//! Cross-layer equalization (Nagel et al., "Data-Free Quantization", ICCV 2019) for Conv → activation →
//! Conv chains, depthwise convs included. For a channel c between layer 1 (output channel c) and layer 2
//! (input channel c), with ranges r1 = max|W1[c]| and r2 = max|W2[·, c]|, scaling W1[c] and b1[c] by 1/s and
//! W2[·, c] by s with s = √(r1 / r2) gives both the range √(r1·r2): per-tensor weight scales stop being set
//! by one outlier channel. Exact for ReLU and no activation (positively homogeneous).
//!
//! ReLU6 is respected: its clip at 6 is a scalar, so after scaling a channel by 1/s it would clip at 6·s
//! in the original units. A channel whose calibrated output reaches 6 (the clip is active) keeps s = 1; any
//! other channel gets s ≥ max_c / 6, so its scaled values stay below 6 and the clip stays inactive on the
//! calibration data, exactly as before. The per-channel maxima come from one tract pass over calibration
//! samples; a few sweeps over all pairs let chains (expand → depthwise → project) settle.
use std::collections::HashMap;

use kiln_compiler::eval::Evaluator;
use kiln_compiler::ir::{Act, DType, Graph, Model, NodeId, Op, TensorData, ValueId};
use kiln_compiler::Result;

/// (layer 1, layer 2) pairs: layer 1's output feeds only layer 2, as its data input.
fn pairs(g: &Graph) -> Result<Vec<(NodeId, NodeId)>> {
    let mut out = Vec::new();
    for id in g.topo_order()? {
        let n = &g.nodes[id];
        let ok_act = matches!(n.act, None | Some(Act::Relu))
            || matches!(n.act, Some(Act::Clip { min: Some(lo), .. }) if lo == 0.0);
        if !matches!(n.op, Op::Conv { .. }) || !ok_act {
            continue;
        }
        let Some(y) = n.output(0) else { continue };
        let c = g.consumers(y);
        if g.is_output(y)
            || c.len() != 1
            || c[0].1 != 0
            || !matches!(g.nodes[c[0].0].op, Op::Conv { .. })
        {
            continue;
        }
        if conv_weights(g, id).is_some() && conv_weights(g, c[0].0).is_some() {
            out.push((id, c[0].0));
        }
    }
    Ok(out)
}

fn weights(g: &Graph, id: NodeId) -> Option<(Vec<i64>, Vec<f32>)> {
    let d = g.const_data(g.nodes[id].input(1)?)?;
    (d.dtype == DType::F32 && d.dims.len() == 4).then_some(())?;
    Some((d.dims.clone(), d.to_f32_vec()?))
}

/// A Conv's float weights [O, I/groups, kh, kw] and bias, with channel-wise rescaling.
#[derive(Debug, Clone)]
pub struct ConvWeights {
    dims: Vec<i64>,
    w: Vec<f32>,
    bias: Option<Vec<f32>>,
    groups: usize,
}

impl ConvWeights {
    pub fn out_channels(&self) -> usize {
        self.dims[0] as usize
    }
    pub fn in_channels(&self) -> usize {
        self.dims[1] as usize * self.groups
    }
    fn per_out(&self) -> usize {
        self.w.len() / self.out_channels().max(1)
    }
    /// Indices of the weights reading input channel `c`.
    fn in_idx(&self, c: usize) -> impl Iterator<Item = usize> {
        let (co, ci) = (self.dims[0] as usize, self.dims[1] as usize);
        let k = (self.dims[2] * self.dims[3]) as usize;
        let opg = co / self.groups.max(1);
        let (gi, i) = (c / ci.max(1), c % ci.max(1));
        (gi * opg..(gi + 1) * opg).flat_map(move |o| ((o * ci + i) * k)..((o * ci + i) * k + k))
    }
    /// max |W[c]| over output channel `c`.
    pub fn out_range(&self, c: usize) -> f32 {
        let p = self.per_out();
        self.w[c * p..(c + 1) * p].iter().fold(0f32, |m, v| m.max(v.abs()))
    }
    /// max |W[·, c]| over the weights reading input channel `c`.
    pub fn in_range(&self, c: usize) -> f32 {
        self.in_idx(c).fold(0f32, |m, i| m.max(self.w[i].abs()))
    }
    /// Output channel `c` (weights and bias) times `f`.
    pub fn scale_out(&mut self, c: usize, f: f32) {
        let p = self.per_out();
        self.w[c * p..(c + 1) * p].iter_mut().for_each(|v| *v *= f);
        if let Some(b) = self.bias.as_mut() {
            b[c] *= f;
        }
    }
    /// Input channel `c` times `f`.
    pub fn scale_in(&mut self, c: usize, f: f32) {
        for i in self.in_idx(c).collect::<Vec<_>>() {
            self.w[i] *= f;
        }
    }
}

/// The float weights of Conv `id`, when they are constants with a consistent shape.
pub fn conv_weights(g: &Graph, id: NodeId) -> Option<ConvWeights> {
    let groups = match g.nodes[id].op {
        Op::Conv { group, .. } => group.unwrap_or(1).max(1) as usize,
        _ => return None,
    };
    let (dims, w) = weights(g, id)?;
    let co = dims[0] as usize;
    if co == 0 || !co.is_multiple_of(groups) || w.len() != dims.iter().product::<i64>() as usize {
        return None;
    }
    let bias = match g.nodes[id].input(2) {
        Some(b) => Some(g.const_data(b)?.to_f32_vec().filter(|v| v.len() == co)?),
        None => None,
    };
    Some(ConvWeights { dims, w, bias, groups })
}

/// Store rescaled weights (and bias) as new constants of Conv `id`.
pub fn set_weights(g: &mut Graph, id: NodeId, cw: &ConvWeights, tag: &str) -> Result<()> {
    let name = g.nodes[id].name.clone();
    let vw =
        g.add_const(&format!("{name}_{tag}_w"), TensorData::from_f32(cw.dims.clone(), &cw.w))?;
    let vb = match &cw.bias {
        Some(b) => Some(g.add_const(
            &format!("{name}_{tag}_b"),
            TensorData::from_f32(vec![b.len() as i64], b),
        )?),
        None => None,
    };
    if let Some(n) = g.node_mut(id) {
        n.inputs[1] = Some(vw);
        if vb.is_some() {
            n.inputs[2] = vb;
        }
    }
    Ok(())
}

/// Per-channel statistics of a 4-D value over calibration samples.
#[derive(Debug, Clone)]
pub struct ChannelStats {
    pub max: Vec<f32>,
    pub max_abs: Vec<f32>,
}

/// Per-channel max and max |x| of each value, over samples (one tract pass, on up to two threads).
pub fn channel_stats(
    m: &Model,
    values: &[ValueId],
    input: &str,
    samples: &[TensorData],
) -> Result<HashMap<ValueId, ChannelStats>> {
    let mut probe = m.clone();
    probe.graph.outputs = values.to_vec();
    let mut out: HashMap<ValueId, ChannelStats> = HashMap::new();
    let Some(first) = samples.first() else { return Ok(out) };
    if values.is_empty() {
        return Ok(out);
    }
    let ev = Evaluator::new(&probe, &[(input.to_string(), first.dtype, first.dims.clone())])?;
    let parts =
        ev.fold_samples(input, samples, HashMap::<ValueId, ChannelStats>::new, |acc, outs| {
            for (v, (_, t)) in values.iter().zip(outs) {
                let (Some(x), true) = (t.to_f32_vec(), t.dims.len() == 4) else { continue };
                let (c, inner) = (t.dims[1] as usize, (t.dims[2] * t.dims[3]) as usize);
                let e = acc.entry(*v).or_insert_with(|| ChannelStats {
                    max: vec![f32::MIN; c],
                    max_abs: vec![0.0; c],
                });
                if e.max.len() != c {
                    continue;
                }
                for (i, val) in x.iter().enumerate() {
                    let ch = (i / inner.max(1)) % c.max(1);
                    e.max[ch] = e.max[ch].max(*val);
                    e.max_abs[ch] = e.max_abs[ch].max(val.abs());
                }
            }
            Ok(())
        })?;
    for part in parts {
        for (v, st) in part {
            match out.get_mut(&v) {
                Some(e) if e.max.len() == st.max.len() => {
                    e.max.iter_mut().zip(&st.max).for_each(|(a, b)| *a = a.max(*b));
                    e.max_abs.iter_mut().zip(&st.max_abs).for_each(|(a, b)| *a = a.max(*b));
                }
                Some(_) => {}
                None => {
                    out.insert(v, st);
                }
            }
        }
    }
    Ok(out)
}

/// Outputs of the first conv of every pair: the activations whose per-channel maxima the ReLU6 rule needs.
pub fn pair_outputs(g: &Graph) -> Result<Vec<ValueId>> {
    Ok(pairs(g)?.iter().filter_map(|(a, _)| g.nodes[*a].output(0)).collect())
}

/// Equalize every pair; returns how many pairs changed. Sweeps stop early once no channel moves by more
/// than 1 %.
/// `stats` holds the per-channel maxima of [`pair_outputs`] (see [`channel_stats`]).
pub fn equalize(
    m: &mut Model,
    stats: &HashMap<ValueId, ChannelStats>,
    sweeps: usize,
) -> Result<usize> {
    let ps = pairs(&m.graph)?;
    let mut maxes: HashMap<ValueId, Vec<f32>> =
        stats.iter().map(|(k, v)| (*k, v.max.clone())).collect();
    let mut changed = 0;
    for _ in 0..sweeps {
        let mut moved = false;
        for (a, b) in &ps {
            let g = &mut m.graph;
            let (Some(mut w1), Some(mut w2), Some(y)) =
                (conv_weights(g, *a), conv_weights(g, *b), g.nodes[*a].output(0))
            else {
                continue;
            };
            let c1 = w1.out_channels();
            if w2.in_channels() != c1 {
                continue;
            }
            let clip = match &g.nodes[*a].act {
                Some(Act::Clip { max, .. }) => *max,
                _ => None,
            };
            let mx = maxes.get(&y).cloned().unwrap_or_default();
            let mut scales = vec![1f32; c1];
            for (c, s) in scales.iter_mut().enumerate() {
                let (r1, r2) = (w1.out_range(c), w2.in_range(c));
                if r1 <= 0.0 || r2 <= 0.0 {
                    continue;
                }
                let mut v = (r1 / r2).sqrt();
                if let Some(hi) = clip {
                    let m = mx.get(c).copied().unwrap_or(hi);
                    if m >= hi * 0.999 {
                        continue; // the clip is active: only s = 1 keeps it exact
                    }
                    v = v.max(m.max(0.0) / hi);
                }
                if v.is_finite() && v > 0.0 && (v - 1.0).abs() > 1e-3 {
                    *s = v;
                    moved |= (v - 1.0).abs() > 1e-2;
                }
            }
            if scales.iter().all(|s| *s == 1.0) {
                continue;
            }
            for (c, s) in scales.iter().enumerate() {
                w1.scale_out(c, 1.0 / s);
                w2.scale_in(c, *s);
            }
            if let Some(e) = maxes.get_mut(&y) {
                e.iter_mut().zip(&scales).for_each(|(m, s)| *m /= s);
            }
            set_weights(g, *a, &w1, "cle")?;
            set_weights(g, *b, &w2, "cle")?;
            changed += 1;
        }
        if !moved {
            break;
        }
    }
    m.graph.rebuild_edges();
    kiln_compiler::pipeline::Pass::run(
        &crate::cleanup::dce::Dce,
        m,
        &mut kiln_compiler::pipeline::PassContext::default(),
    )?;
    Ok(changed)
}

/// max |y_b − y_a| / max |y_a| over samples and outputs: equalization must not change the float model.
pub fn max_rel_diff(a: &Model, b: &Model, input: &str, samples: &[TensorData]) -> Result<f64> {
    let Some(first) = samples.first() else { return Ok(0.0) };
    let fact = [(input.to_string(), first.dtype, first.dims.clone())];
    // Both models prepared at once, then the samples on both cores.
    let (ea, eb) = std::thread::scope(|sc| {
        let h = sc.spawn(|| Evaluator::new(b, &fact));
        (Evaluator::new(a, &fact), h.join())
    });
    let eb =
        eb.map_err(|_| kiln_compiler::Error::Eval("an evaluation thread panicked".into()))??;
    let ea = ea?;
    let per = kiln_compiler::eval::par_map(samples.len(), |i| {
        let feed = [(input.to_string(), samples[i].clone())];
        let mut worst = 0f64;
        for ((_, x), (_, y)) in ea.run(&feed)?.iter().zip(eb.run(&feed)?.iter()) {
            let (x, y) = (x.to_f64_vec().unwrap_or_default(), y.to_f64_vec().unwrap_or_default());
            let scale = x.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
            worst =
                worst.max(x.iter().zip(&y).fold(0f64, |m, (p, q)| m.max((p - q).abs())) / scale);
        }
        Ok(worst)
    })?;
    Ok(per.into_iter().fold(0f64, f64::max))
}
