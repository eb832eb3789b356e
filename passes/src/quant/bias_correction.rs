//! Empirical bias correction: weight rounding shifts every quantized layer's output mean by
//! δ_o = Σ (W_q − W)[o, i, k] · E[x_i], where E[x_i] is the mean of input channel i measured by running the
//! float model on calibration samples. Each Conv/Gemm's bias absorbs −δ (the int32 bias is re-derived
//! with its scale). Measured per layer on float inputs, so corrections do not compound through the
//! network (correcting every layer against end-to-end drift at once would count upstream drift twice).
use std::collections::HashMap;

use kiln_compiler::eval::Evaluator;
use kiln_compiler::ir::{DType, Graph, Model, NodeId, Op, TensorData, ValueId};
use kiln_compiler::Result;

/// Maps a weight element's flat index to its (output channel, input channel).
type ChannelOf = Box<dyn Fn(usize) -> (usize, usize)>;

/// Per-channel (axis 1) mean of a tensor.
fn channel_means(t: &TensorData) -> Option<Vec<f64>> {
    let v = t.to_f64_vec()?;
    let dims = &t.dims;
    if dims.len() < 2 {
        return None;
    }
    let c = dims[1] as usize;
    let inner: usize = dims[2..].iter().product::<i64>() as usize;
    let outer = dims[0] as usize;
    let mut m = vec![0.0; c];
    for o in 0..outer {
        for (ch, acc) in m.iter_mut().enumerate() {
            let base = (o * c + ch) * inner;
            *acc += v.get(base..base + inner)?.iter().sum::<f64>();
        }
    }
    let n = (outer * inner).max(1) as f64;
    Some(m.into_iter().map(|x| x / n).collect())
}

/// Constant behind a DequantizeLinear: (quantized values, per-channel or scalar scale).
fn dq_parts(g: &Graph, v: ValueId) -> Option<(ValueId, Vec<f64>, Vec<f64>)> {
    let (p, _) = g.value(v).producer?;
    let n = g.node(p)?;
    if !matches!(n.op, Op::DequantizeLinear { .. }) {
        return None;
    }
    let q = n.input(0)?;
    let vals = g.const_data(q)?.to_f64_vec()?;
    let scales = g.const_data(n.input(1)?)?.to_f64_vec()?;
    Some((q, vals, scales))
}

/// Mean of every input channel of every Conv/Gemm of a float model on calibration samples, by the
/// input value's name: what [`correct_with`] needs. Computing it once lets callers that quantize one
/// model many ways (ranges.rs) skip the float run.
#[derive(Debug, Clone, Default)]
pub struct InputMeans(HashMap<String, Vec<f64>>);

/// Per-channel means of the data inputs of every Conv/Gemm of `f`.
pub fn input_means(f: &Model, input: &str, samples: &[TensorData]) -> Result<InputMeans> {
    let Some(first) = samples.first() else { return Ok(InputMeans::default()) };
    let mut probe = f.clone();
    let mut outs: Vec<ValueId> = Vec::new();
    for id in f.graph.topo_order()? {
        let n = &f.graph.nodes[id];
        if matches!(n.op, Op::Conv { .. } | Op::Gemm { .. }) {
            if let Some(x) = n.input(0).filter(|x| !outs.contains(x)) {
                outs.push(x);
            }
        }
    }
    if outs.is_empty() {
        return Ok(InputMeans::default());
    }
    probe.graph.outputs = outs.clone();
    let ev = Evaluator::new(&probe, &[(input.to_string(), first.dtype, first.dims.clone())])?;
    // Per sample on two threads, summed in sample order.
    let per = kiln_compiler::eval::par_map(samples.len(), |i| {
        let outs = ev.run(&[(input.to_string(), samples[i].clone())])?;
        Ok(outs.iter().map(|(_, t)| channel_means(t)).collect::<Vec<_>>())
    })?;
    let mut means: Vec<Vec<f64>> = vec![Vec::new(); outs.len()];
    for sample in per {
        for (m, acc) in sample.into_iter().zip(means.iter_mut()) {
            if let Some(m) = m {
                if acc.is_empty() {
                    *acc = vec![0.0; m.len()];
                }
                acc.iter_mut().zip(m).for_each(|(a, b)| *a += b / samples.len() as f64);
            }
        }
    }
    Ok(InputMeans(outs.iter().map(|v| f.graph.value(*v).name.clone()).zip(means).collect()))
}

/// Correct biases of `q` (the quantized model) using its float source `f`. Returns layers corrected.
pub fn correct(q: &mut Model, f: &Model, input: &str, samples: &[TensorData]) -> Result<usize> {
    let means = input_means(f, input, samples)?;
    correct_with(q, f, &means)
}

/// [`correct`] with the input means already measured (on `f` or on a model with the same values).
pub fn correct_with(q: &mut Model, f: &Model, means: &InputMeans) -> Result<usize> {
    let mut work: Vec<(NodeId, String)> = Vec::new();
    for id in q.graph.topo_order()? {
        let n = &q.graph.nodes[id];
        if !matches!(n.op, Op::Conv { .. } | Op::Gemm { .. }) {
            continue;
        }
        let Some(fnode) = f.graph.nodes.node_weights().find(|m| m.name == n.name) else { continue };
        let Some(x) = fnode.input(0) else { continue };
        work.push((id, f.graph.value(x).name.clone()));
    }
    let mut corrected = 0;
    for (id, x) in work {
        let Some(mu) = means.0.get(&x) else { continue };
        let g = &q.graph;
        let n = &g.nodes[id];
        let Some(fnode) = f.graph.nodes.node_weights().find(|m| m.name == n.name) else { continue };
        let Some(wf) = fnode
            .input(1)
            .and_then(|w| f.graph.const_data(w))
            .and_then(|d| d.to_f64_vec().map(|v| (d.dims.clone(), v)))
        else {
            continue;
        };
        // An int32 bias behind its DequantizeLinear, or a float bias (targets that add it in float).
        let float_bias = |b: ValueId| {
            let d = g.const_data(b).filter(|d| d.dtype == DType::F32)?;
            Some((b, d.to_f64_vec()?, vec![1.0]))
        };
        let (Some(wq), Some(bq)) = (
            n.input(1).and_then(|w| dq_parts(g, w)),
            n.input(2).and_then(|b| dq_parts(g, b).or_else(|| float_bias(b))),
        ) else {
            continue;
        };
        let (wdims, w) = wf;
        let (_, wqv, ws) = wq;
        let (bq_id, bvals, bs) = bq;
        let bias_dtype = g.const_data(bq_id).map(|d| d.dtype);
        if wqv.len() != w.len()
            || wdims.len() < 2
            || !matches!(bias_dtype, Some(DType::I32 | DType::F32))
        {
            continue;
        }
        // Output channel and input channel of every weight element.
        let (cout, chan): (usize, ChannelOf) = match &n.op {
            Op::Conv { group, .. } => {
                let (co, ci_g) = (wdims[0] as usize, wdims[1] as usize);
                let k: usize = wdims[2..].iter().product::<i64>() as usize;
                let groups = group.unwrap_or(1).max(1) as usize;
                let per_group_out = (co / groups).max(1);
                (
                    co,
                    Box::new(move |i| {
                        let o = i / (ci_g * k).max(1);
                        let ii = (i / k.max(1)) % ci_g.max(1);
                        (o, (o / per_group_out) * ci_g + ii)
                    }),
                )
            }
            Op::Gemm { trans_b, .. } => {
                let (r, c) = (wdims[0] as usize, wdims[1] as usize);
                if trans_b.unwrap_or(0) != 0 {
                    (r, Box::new(move |i| (i / c.max(1), i % c.max(1))))
                } else {
                    (c, Box::new(move |i| (i % c.max(1), i / c.max(1))))
                }
            }
            _ => continue,
        };
        if bvals.len() != cout {
            continue;
        }
        let wscale =
            |o: usize| if ws.len() == 1 { ws[0] } else { ws.get(o).copied().unwrap_or(ws[0]) };
        let mut delta = vec![0.0f64; cout];
        for (i, (qv, fv)) in wqv.iter().zip(&w).enumerate() {
            let (o, ci) = chan(i);
            let Some(m) = mu.get(ci) else { continue };
            delta[o] += (qv * wscale(o) - fv) * m;
        }
        let data = if bias_dtype == Some(DType::F32) {
            let new: Vec<f32> = (0..cout).map(|o| (bvals[o] - delta[o]) as f32).collect();
            TensorData::from_f32(vec![cout as i64], &new)
        } else {
            let new: Vec<u8> = (0..cout)
                .flat_map(|o| {
                    let s = if bs.len() == 1 { bs[0] } else { bs[o] };
                    ((bvals[o] - delta[o] / s).round().clamp(i32::MIN as f64, i32::MAX as f64)
                        as i32)
                        .to_le_bytes()
                })
                .collect();
            TensorData::from_bytes(DType::I32, vec![cout as i64], new)
        };
        q.graph.value_mut(bq_id).data = Some(data);
        corrected += 1;
    }
    Ok(corrected)
}
