//! Mixed precision under an accuracy budget. Quantization points are the weighted layers (weights and
//! inputs) and the activation tensors (their Q/DQ). Each point's sensitivity is measured alone: quantize
//! only it, run on calibration samples, and take the SQNR of the model output against fp32. Then keep the
//! most sensitive activations in float — 1, 2, 4, 8, … of them — and, only if all of them in float are not
//! enough, the most sensitive layers too, until the candidate meets the budget on the validation data.
//! Activations first because they cost no bytes in float; layers' weights do. The report names every
//! point kept, with its SQNR.
use std::collections::HashSet;

use kiln_compiler::accuracy::{compare, Metrics};
use kiln_compiler::calib::Calibration;
use kiln_compiler::ir::{Model, Op, TensorData};
use kiln_compiler::pipeline::Budget;
use kiln_compiler::{Error, Result};

use super::qdq::QdqOptions;

/// Search for the smallest float set meeting the budget. Returns (model, report, layers bias-corrected).
pub fn search(
    inputs: &super::Inputs,
    opts: &QdqOptions,
    check: Budget,
    first: Metrics,
) -> Result<(Model, serde_json::Value, usize)> {
    let super::Inputs { model, calib, bc, input, samples } = *inputs;
    let probe: Vec<TensorData> = samples.iter().take(16).cloned().collect();
    let mut sens = sensitivity(model, calib, opts, input, &probe, true)?;
    sens.sort_by(|a, b| a.2.partial_cmp(&b.2).unwrap_or(std::cmp::Ordering::Equal));
    // Activations cost no bytes to keep in float, weights do: first keep activations (most sensitive
    // first), and only if every activation in float still misses the budget, add layers as well.
    let acts: Vec<&(&str, String, f64)> = sens.iter().filter(|p| p.0 == "activation").collect();
    let lays: Vec<&(&str, String, f64)> = sens.iter().filter(|p| p.0 == "layer").collect();
    let mut plans: Vec<Vec<&(&str, String, f64)>> = Vec::new();
    let mut k = 1;
    while k <= acts.len() {
        plans.push(acts[..k].to_vec());
        k = if k == acts.len() { k + 1 } else { (k * 2).min(acts.len()) };
    }
    let mut k = 1;
    while k <= lays.len() {
        let mut p = acts.clone();
        p.extend(lays[..k].iter().copied());
        plans.push(p);
        k = if k == lays.len() { k + 1 } else { (k * 2).min(lays.len()) };
    }
    let mut tried = vec![
        serde_json::json!({"kept_float": 0, "top1_agreement": first.top1_agreement, "mean_cosine": first.mean_cosine}),
    ];
    let mut progress = kiln_compiler::progress::stage("mixed precision: plans", plans.len());
    for plan in plans {
        progress.inc();
        let mut o = opts.clone();
        o.keep_float = plan
            .iter()
            .filter(|p| p.0 == "layer")
            .map(|p| p.1.clone())
            .collect::<HashSet<String>>();
        o.keep_float_values = plan
            .iter()
            .filter(|p| p.0 == "activation")
            .map(|p| p.1.clone())
            .collect::<HashSet<String>>();
        let (m, _, corrected) = super::build(model, calib, &o, bc, input, samples)?;
        let (ok, met) = check(&m)?;
        tried.push(serde_json::json!({"kept_float": plan.len(), "layers_kept": o.keep_float.len(), "top1_agreement": met.top1_agreement, "mean_cosine": met.mean_cosine}));
        if ok {
            let kept: Vec<serde_json::Value> = plan
                .iter()
                .map(|(kind, n, s)| serde_json::json!({"kind": kind, "name": n, "sqnr_db_when_quantized_alone": s, "why": "most sensitive first (activations before layers, which cost bytes), until the accuracy budget held"}))
                .collect();
            let report =
                serde_json::json!({"kept_float": kept, "search": tried, "points": sens.len()});
            return Ok((m, report, corrected));
        }
    }
    Err(Error::Pass {
        pass: "mixed_precision".into(),
        reason: format!(
            "the accuracy budget is not met even with every layer in float (search: {})",
            serde_json::Value::Array(tried)
        ),
    })
}

/// The model's quantization points: weighted layers (node names) and calibrated activation values that are
/// not graph outputs.
pub fn points(model: &Model, calib: &Calibration) -> Result<(Vec<String>, Vec<String>)> {
    let layers: Vec<String> = model
        .graph
        .topo_order()?
        .into_iter()
        .filter(|id| {
            matches!(model.graph.nodes[*id].op, Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul)
        })
        .map(|id| model.graph.nodes[id].name.clone())
        .collect();
    let values: Vec<String> = calib
        .stats
        .keys()
        .filter(|v| model.graph.find(v).is_some_and(|id| !model.graph.is_output(id)))
        .cloned()
        .collect();
    Ok((layers, values))
}

/// Sensitivity of each quantization point measured alone: quantize only that point (a layer's weights and
/// input, or one activation's Q/DQ), run `probe`, and take the SQNR of the output against `model`. Points
/// with nothing to quantize are left out. Layers are measured only with `with_layers`. Unsorted.
pub fn sensitivity(
    model: &Model,
    calib: &Calibration,
    opts: &QdqOptions,
    input: &str,
    probe: &[TensorData],
    with_layers: bool,
) -> Result<Vec<(&'static str, String, f64)>> {
    let (layers, values) = points(model, calib)?;
    let points: Vec<(&'static str, String)> = layers
        .iter()
        .filter(|_| with_layers)
        .map(|l| ("layer", l.clone()))
        .chain(values.iter().map(|v| ("activation", v.clone())))
        .collect();
    let only = |kind: &str, name: &str| -> QdqOptions {
        let mut o = opts.clone();
        o.keep_float =
            layers.iter().filter(|l| !(kind == "layer" && *l == name)).cloned().collect();
        o.keep_float_values =
            values.iter().filter(|v| !(kind == "activation" && *v == name)).cloned().collect();
        o
    };
    let mut sens = Vec::new();
    let mut progress = kiln_compiler::progress::stage("mixed precision: sensitivity", points.len());
    for (kind, name) in points {
        progress.inc();
        let (m, s, _) = super::build(model, calib, &only(kind, &name), false, input, probe)?;
        if s.weights + s.activations == 0 {
            continue; // nothing to quantize at this point (e.g. a value no quantized op reads)
        }
        let met = compare(model, &m, input, probe, None)?;
        sens.push((kind, name, met.sqnr_db));
    }
    Ok(sens)
}
