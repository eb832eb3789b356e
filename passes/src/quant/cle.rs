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
        let ok_act = matches!(n.act, None | Some(Act::Relu)) || matches!(n.act, Some(Act::Clip { min: Some(lo), .. }) if lo == 0.0);
        if !matches!(n.op, Op::Conv { .. }) || !ok_act {
            continue;
        }
        let Some(y) = n.output(0) else { continue };
        let c = g.consumers(y);
        if g.is_output(y) || c.len() != 1 || c[0].1 != 0 || !matches!(g.nodes[c[0].0].op, Op::Conv { .. }) {
            continue;
        }
        if weights(g, id).is_some() && weights(g, c[0].0).is_some() {
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

/// Per-channel max of each value, over samples.
fn channel_max(m: &Model, values: &[ValueId], input: &str, samples: &[TensorData]) -> Result<HashMap<ValueId, Vec<f32>>> {
    let mut probe = m.clone();
    probe.graph.outputs = values.to_vec();
    let mut out: HashMap<ValueId, Vec<f32>> = HashMap::new();
    let Some(first) = samples.first() else { return Ok(out) };
    let ev = Evaluator::new(&probe, &[(input.to_string(), first.dtype, first.dims.clone())])?;
    for s in samples {
        for (v, (_, t)) in values.iter().zip(ev.run(&[(input.to_string(), s.clone())])?) {
            let (Some(x), true) = (t.to_f32_vec(), t.dims.len() == 4) else { continue };
            let (c, inner) = (t.dims[1] as usize, (t.dims[2] * t.dims[3]) as usize);
            let e = out.entry(*v).or_insert_with(|| vec![f32::MIN; c]);
            for (i, val) in x.iter().enumerate() {
                let ch = (i / inner.max(1)) % c.max(1);
                e[ch] = e[ch].max(*val);
            }
        }
    }
    Ok(out)
}

/// Equalize every pair; returns how many pairs changed.
pub fn equalize(m: &mut Model, input: &str, samples: &[TensorData], sweeps: usize) -> Result<usize> {
    let ps = pairs(&m.graph)?;
    let ys: Vec<ValueId> = ps.iter().filter_map(|(a, _)| m.graph.nodes[*a].output(0)).collect();
    let mut maxes = channel_max(m, &ys, input, samples)?;
    let mut changed = 0;
    for _ in 0..sweeps {
        for (a, b) in &ps {
            let g = &mut m.graph;
            let (Some((wd1, mut w1)), Some((wd2, mut w2)), Some(y)) = (weights(g, *a), weights(g, *b), g.nodes[*a].output(0)) else { continue };
            let c1 = wd1[0] as usize;
            let per1 = w1.len() / c1.max(1);
            let groups = match g.nodes[*b].op {
                Op::Conv { group, .. } => group.unwrap_or(1).max(1) as usize,
                _ => continue,
            };
            let (co2, ci2) = (wd2[0] as usize, wd2[1] as usize);
            let k2: usize = (wd2[2] * wd2[3]) as usize;
            if ci2 * groups != c1 || co2 % groups != 0 {
                continue;
            }
            let opg = co2 / groups;
            // Layer-2 weights reading input channel c.
            let idx2 = |c: usize| -> Vec<usize> {
                let (gi, i) = (c / ci2, c % ci2);
                (gi * opg..(gi + 1) * opg).flat_map(|o| ((o * ci2 + i) * k2)..((o * ci2 + i) * k2 + k2)).collect()
            };
            let clip = match &g.nodes[*a].act {
                Some(Act::Clip { max, .. }) => *max,
                _ => None,
            };
            let mx = maxes.get(&y).cloned().unwrap_or_default();
            let mut bias = match g.nodes[*a].input(2).and_then(|b| g.const_data(b)).and_then(|d| d.to_f32_vec()) {
                Some(b) if b.len() == c1 => Some(b),
                _ => None,
            };
            let mut scales = vec![1f32; c1];
            for (c, s) in scales.iter_mut().enumerate() {
                let r1 = w1[c * per1..(c + 1) * per1].iter().fold(0f32, |m, v| m.max(v.abs()));
                let r2 = idx2(c).iter().fold(0f32, |m, i| m.max(w2[*i].abs()));
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
                }
            }
            if scales.iter().all(|s| *s == 1.0) {
                continue;
            }
            for (c, s) in scales.iter().enumerate() {
                w1[c * per1..(c + 1) * per1].iter_mut().for_each(|v| *v /= s);
                if let Some(b) = bias.as_mut() {
                    b[c] /= s;
                }
                for i in idx2(c) {
                    w2[i] *= s;
                }
            }
            if let Some(e) = maxes.get_mut(&y) {
                e.iter_mut().zip(&scales).for_each(|(m, s)| *m /= s);
            }
            let n1 = format!("{}_cle_w", g.nodes[*a].name);
            let v1 = g.add_const(&n1, TensorData::from_f32(wd1, &w1))?;
            let n2 = format!("{}_cle_w", g.nodes[*b].name);
            let v2 = g.add_const(&n2, TensorData::from_f32(wd2, &w2))?;
            let vb = match bias {
                Some(b) => Some(g.add_const(&format!("{}_cle_b", g.nodes[*a].name), TensorData::from_f32(vec![c1 as i64], &b))?),
                None => None,
            };
            if let Some(n) = g.node_mut(*a) {
                n.inputs[1] = Some(v1);
                if vb.is_some() {
                    n.inputs[2] = vb;
                }
            }
            if let Some(n) = g.node_mut(*b) {
                n.inputs[1] = Some(v2);
            }
            changed += 1;
        }
    }
    m.graph.rebuild_edges();
    kiln_compiler::pipeline::Pass::run(&crate::cleanup::dce::Dce, m, &mut kiln_compiler::pipeline::PassContext::default())?;
    Ok(changed)
}

/// max |y_b − y_a| / max |y_a| over samples and outputs: equalization must not change the float model.
pub fn max_rel_diff(a: &Model, b: &Model, input: &str, samples: &[TensorData]) -> Result<f64> {
    let Some(first) = samples.first() else { return Ok(0.0) };
    let fact = [(input.to_string(), first.dtype, first.dims.clone())];
    let (ea, eb) = (Evaluator::new(a, &fact)?, Evaluator::new(b, &fact)?);
    let mut worst = 0f64;
    for s in samples {
        let feed = [(input.to_string(), s.clone())];
        for ((_, x), (_, y)) in ea.run(&feed)?.iter().zip(eb.run(&feed)?.iter()) {
            let (x, y) = (x.to_f64_vec().unwrap_or_default(), y.to_f64_vec().unwrap_or_default());
            let scale = x.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
            worst = worst.max(x.iter().zip(&y).fold(0f64, |m, (p, q)| m.max((p - q).abs())) / scale);
        }
    }
    Ok(worst)
}
