//! fp32 islands for float16 targets. A float16 artifact stores weights in half precision; on most models
//! that moves the output by well under 1 %, but in deep or BN-folded networks a few layers dominate (the
//! depthwise convs after MobileNetV2's stem, the huge-gain convs of a pruned model). kiln simulates the
//! rounding in the IR (every float constant of rank ≥ 2, what the backends store as float16), measures
//! max |y − y_fp32| / max |y_fp32| on validation samples with tract, and when that exceeds the target's
//! bound keeps the most sensitive layers' weights in float32 — 1, 2, 4, … of them, ranked by the error
//! each causes alone — until the bound holds. Kept layers are marked in node metadata
//! (`kiln.weights = fp32`), which the backends honour.
use std::collections::HashSet;

use kiln_compiler::eval::Evaluator;
use kiln_compiler::ir::{DType, Model, NodeId, Op, TensorData, ValueId};
use kiln_compiler::Result;

use kiln_compiler::ir::meta;

fn layers(m: &Model) -> Result<Vec<NodeId>> {
    Ok(m.graph
        .topo_order()?
        .into_iter()
        .filter(|id| {
            matches!(m.graph.nodes[*id].op, Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul)
        })
        .collect())
}

/// Float constants of rank ≥ 2 read by node `id`.
fn weights_of(m: &Model, id: NodeId) -> Vec<ValueId> {
    m.graph.nodes[id]
        .inputs
        .iter()
        .flatten()
        .copied()
        .filter(|v| {
            m.graph.const_data(*v).is_some_and(|d| d.dtype == DType::F32 && d.dims.len() >= 2)
        })
        .collect()
}

/// `m` with every rank ≥ 2 float constant rounded to float16, except those only read by `keep`.
fn rounded(m: &Model, keep: &HashSet<NodeId>) -> Result<Model> {
    let mut out = m.clone();
    let kept: HashSet<ValueId> = keep.iter().flat_map(|id| weights_of(m, *id)).collect();
    for i in 0..m.graph.values.len() {
        let v = ValueId(i as u32);
        if kept.contains(&v) {
            continue;
        }
        let Some(d) = m.graph.const_data(v).filter(|d| d.dtype == DType::F32 && d.dims.len() >= 2)
        else {
            continue;
        };
        let Some(vals) = d.to_f32_vec() else { continue };
        let r: Vec<f32> = vals.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect();
        out.graph.value_mut(v).data = Some(TensorData::from_f32(d.dims.clone(), &r));
    }
    Ok(out)
}

/// `m` with every float activation rounded through float16 (a Cast to float16 and back after each value,
/// the graph input included), as a float16-compute artifact (the onnx backend's fp16) stores them. Values
/// a kept layer writes and only kept layers read stay float32, as they do in that artifact.
fn half_activations(m: &Model, keep: &HashSet<NodeId>) -> Result<Model> {
    use kiln_compiler::ir::half::{add_cast, stays_fp32, CAST_FLOAT, CAST_FLOAT16};
    use kiln_compiler::ir::Value;
    let mut out = m.clone();
    let g = &mut out.graph;
    let data_inputs: HashSet<ValueId> =
        g.inputs.iter().copied().filter(|v| !g.initializers.contains(v)).collect();
    let values: Vec<ValueId> = (0..g.values.len())
        .map(|i| ValueId(i as u32))
        .filter(|v| {
            g.value(*v).dtype == DType::F32
                && g.const_data(*v).is_none()
                && (g.value(*v).producer.is_some() || data_inputs.contains(v))
        })
        .collect();
    for v in values {
        if stays_fp32(g, v, keep) {
            continue;
        }
        let users = g.consumers(v);
        let base = g.value(v).name.clone();
        let mut h = Value::new(format!("{base}__f16sim"));
        h.dtype = DType::F16;
        h.shape = g.value(v).shape.clone();
        let h = g.add_value(h)?;
        let mut r = Value::new(format!("{base}__f16sim_r"));
        r.dtype = DType::F32;
        r.shape = g.value(v).shape.clone();
        let r = g.add_value(r)?;
        for (c, slot) in users {
            if let Some(n) = g.node_mut(c) {
                n.inputs[slot] = Some(r);
            }
        }
        add_cast(g, &format!("{base}__to_f16sim"), v, h, CAST_FLOAT16)?;
        add_cast(g, &format!("{base}__from_f16sim"), h, r, CAST_FLOAT)?;
        for o in g.outputs.iter_mut().filter(|o| **o == v) {
            *o = r;
        }
    }
    g.rebuild_edges();
    Ok(out)
}

/// max |y − ref| / max |ref| over samples and outputs (samples on both cores).
fn error(
    ev: &Evaluator,
    refs: &[Vec<Vec<f64>>],
    input: &str,
    samples: &[TensorData],
) -> Result<f64> {
    let per = kiln_compiler::eval::par_map(samples.len().min(refs.len()), |i| {
        let mut worst = 0f64;
        for ((_, t), rv) in ev.run(&[(input.to_string(), samples[i].clone())])?.iter().zip(&refs[i])
        {
            let y = t.to_f64_vec().unwrap_or_default();
            let scale = rv.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
            let d = y.iter().zip(rv).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            worst = worst.max(d / scale);
        }
        Ok(worst)
    })?;
    Ok(per.into_iter().fold(0f64, f64::max))
}

/// Float16's largest finite value is 65504; a value whose measured |x| passes half of it (headroom for
/// inputs the samples did not show) would overflow to infinity in a float16 activation.
const OVERFLOW: f32 = 32768.0;

/// Nodes that read or write a value past [`OVERFLOW`] on `samples`, with that value's max |x|: they run in
/// float32 (the values between two such nodes stay float32 in a float16 graph).
fn overflow_nodes(
    model: &Model,
    input: &str,
    samples: &[TensorData],
) -> Result<Vec<(NodeId, String, f32)>> {
    let stats = kiln_compiler::calib::collect_with(model, input, samples, false)?;
    let g = &model.graph;
    let mut out = Vec::new();
    for id in g.topo_order()? {
        let n = &g.nodes[id];
        let big = n
            .inputs
            .iter()
            .chain(n.outputs.iter())
            .flatten()
            .filter(|v| g.const_data(**v).is_none())
            .filter_map(|v| {
                let name = &g.value(*v).name;
                stats
                    .stats
                    .get(name)
                    .map(|s| (name.clone(), s.absmax()))
                    .filter(|(_, a)| *a > OVERFLOW)
            });
        if let Some((name, a)) =
            big.fold(
                None,
                |m: Option<(String, f32)>, x| {
                    if m.as_ref().is_some_and(|m| m.1 >= x.1) {
                        m
                    } else {
                        Some(x)
                    }
                },
            )
        {
            out.push((id, name, a));
        }
    }
    Ok(out)
}

/// Mark the fewest layers whose fp32 weights keep the float16 error under `bound`. Returns the model and
/// a JSON summary (error before and after, each kept layer with the error it causes alone).
/// With `half_acts`, activations are simulated in float16 too (the onnx backend's fp16 computes in it;
/// TFLite's fp16 stores only weights in it).
pub fn islands(
    model: &Model,
    input: &str,
    samples: &[TensorData],
    bound: f64,
    half_acts: bool,
) -> Result<(Model, serde_json::Value)> {
    let Some(first) = samples.first() else { return Ok((model.clone(), serde_json::Value::Null)) };
    let fact = [(input.to_string(), first.dtype, first.dims.clone())];
    let reference = Evaluator::new(model, &fact)?;
    let refs = kiln_compiler::eval::par_map(samples.len(), |i| {
        Ok(reference
            .run(&[(input.to_string(), samples[i].clone())])?
            .into_iter()
            .map(|(_, t)| t.to_f64_vec().unwrap_or_default())
            .collect::<Vec<_>>())
    })?;
    // Activations that would overflow float16 keep their nodes float32.
    let overflow = overflow_nodes(model, input, samples)?;
    let mut model = model.clone();
    for (id, _, _) in &overflow {
        if let Some(n) = model.graph.node_mut(*id) {
            if !n.keeps_fp32_weights() {
                n.metadata.push((meta::WEIGHTS.into(), meta::FP32.into()));
            }
        }
    }
    let model = &model;
    let overflow_json: Vec<serde_json::Value> = overflow.iter().map(|(id, v, a)| serde_json::json!({ "node": model.graph.nodes[*id].name, "value": v, "max_abs": a, "why": "float16 overflows past 65504" })).collect();
    // Layers the config already keeps float32 (and the overflow nodes).
    let fixed: HashSet<NodeId> = model
        .graph
        .nodes
        .node_indices()
        .filter(|id| model.graph.nodes[*id].keeps_fp32_weights())
        .collect();
    let eval = |keep: &HashSet<NodeId>, n: usize| -> Result<f64> {
        let keep: HashSet<NodeId> = keep.union(&fixed).copied().collect();
        let r = rounded(model, &keep)?;
        let r = if half_acts { half_activations(&r, &keep)? } else { r };
        error(&Evaluator::new(&r, &fact)?, &refs[..n], input, &samples[..n])
    };
    let all = eval(&HashSet::new(), samples.len())?;
    let mut summary = serde_json::json!({ "bound": bound, "activations_fp16": half_acts, "max_rel_error_all_fp16": all, "samples": samples.len(), "overflow_fp32": overflow_json });
    if all <= bound {
        summary["fp32_layers"] = serde_json::json!([]);
        summary["max_rel_error"] = serde_json::json!(all);
        return Ok((model.clone(), summary));
    }
    // Sensitivity: each layer alone in float16 (all others float32), on a few samples.
    let ids = layers(model)?;
    let probe = samples.len().min(4);
    let everyone: HashSet<NodeId> = ids.iter().copied().collect();
    // Layers on both cores (each result in its layer's slot: the order does not depend on timing).
    let progress =
        std::sync::Mutex::new(kiln_compiler::progress::stage("float16 islands", ids.len()));
    let one = |id: &NodeId| -> Result<(NodeId, f64)> {
        let mut keep = everyone.clone();
        keep.remove(id);
        let e = eval(&keep, probe)?;
        if let Ok(mut p) = progress.lock() {
            p.inc();
        }
        Ok((*id, e))
    };
    let half = ids.len().div_ceil(2);
    let (a, b) = std::thread::scope(|sc| {
        let h = sc.spawn(|| ids[half..].iter().map(one).collect::<Result<Vec<_>>>());
        (ids[..half].iter().map(one).collect::<Result<Vec<_>>>(), h.join())
    });
    let b =
        b.map_err(|_| kiln_compiler::Error::Eval("a float16 island thread panicked".into()))??;
    let mut sens: Vec<(NodeId, f64)> = a?;
    sens.extend(b);
    sens.sort_by(|a, b| b.1.total_cmp(&a.1));
    // Keep 1, 2, 4, … layers until the bound holds. With float16 activations, when a doubling buys less
    // than 10 % of the error, the error is not in layers this search can keep (it is spread over the
    // activations): stop there with the last set that helped, and report the bound as missed. (Weights
    // alone, as TFLite stores them, always improve as layers are kept.)
    let mut k = 1;
    let (mut keep, mut err) = (HashSet::new(), all);
    while k <= sens.len() {
        let cand: HashSet<NodeId> = sens[..k].iter().map(|(id, _)| *id).collect();
        let e = eval(&cand, samples.len())?;
        if half_acts && e > 0.9 * err {
            summary["search_stopped"] = serde_json::json!(format!("keeping {k} layers float32 left the error at {e:.2e}: the rest is spread over float16 activations"));
            break;
        }
        (keep, err) = (cand, e);
        if err <= bound {
            break;
        }
        k *= 2;
    }
    let mut out = model.clone();
    for id in &keep {
        if let Some(n) = out.graph.node_mut(*id) {
            n.metadata.push((meta::WEIGHTS.into(), meta::FP32.into()));
        }
    }
    let kept: Vec<serde_json::Value> = sens.iter().filter(|(id, _)| keep.contains(id)).map(|(id, e)| serde_json::json!({ "layer": model.graph.nodes[*id].name, "max_rel_error_alone": e })).collect();
    summary["fp32_layers"] = serde_json::json!(kept);
    summary["max_rel_error"] = serde_json::json!(err);
    summary["bound_met"] = serde_json::json!(err <= bound);
    Ok((out, summary))
}
