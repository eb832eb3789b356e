//! Mixed precision under an accuracy budget. Quantization points are the weighted layers (weights and
//! inputs) and the activation tensors (their Q/DQ). Each point's sensitivity is measured alone: quantize
//! only it, run on calibration samples, and take the SQNR of the model output against fp32. Activations
//! share one model whose Q/DQ parameters are inputs (trial.rs): a point is a run, not a model to build
//! and prepare; layers are built one by one. Then keep the
//! most sensitive activations in float — 1, 2, 4, 8, … of them — and, only if all of them in float are not
//! enough, the most sensitive layers too, until the candidate meets the budget on the validation data.
//! Activations first because they cost no bytes in float; layers' weights do. The report names every
//! point kept, with its SQNR.
use std::collections::{BTreeSet, HashSet};

use kiln_compiler::accuracy::{compare_with, metrics, reference_outputs, Metrics};
use kiln_compiler::calib::Calibration;
use kiln_compiler::ir::{Model, Op, TensorData};
use kiln_compiler::pipeline::Budget;
use kiln_compiler::{Error, Result};

use super::qdq::QdqOptions;

/// Calibration samples each point's sensitivity is measured on. The ranking only orders the plans: each
/// plan is checked on the validation data, so fewer samples can cost kept points, never the budget.
pub const SENSITIVITY_SAMPLES: usize = 8;

/// Search for the smallest float set meeting the budget. Returns (model, report, layers bias-corrected).
pub fn search(
    inputs: &super::Inputs,
    opts: &QdqOptions,
    check: Budget,
    first: Metrics,
) -> Result<(Model, serde_json::Value, usize)> {
    let super::Inputs { model, calib, bc, input, samples } = *inputs;
    let probe: Vec<TensorData> = samples.iter().take(SENSITIVITY_SAMPLES).cloned().collect();
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
    let opts_for = |plan: &[&(&str, String, f64)]| -> QdqOptions {
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
        o
    };
    // Bias correction reads the float model's input means; unless dead channels are snapped (which moves
    // the float model per plan), they are the same for every plan: measured once.
    let dead = model
        .graph
        .nodes
        .node_indices()
        .any(|id| super::dead_channels::has_dead_channels(&model.graph, id));
    let means = if bc && !dead {
        Some(super::bias_correction::input_means(model, input, samples)?)
    } else {
        None
    };
    let build_plan = |plan: &[&(&str, String, f64)]| match &means {
        Some(mu) => super::build_with_means(model, calib, &opts_for(plan), Some(mu)),
        None => super::build(model, calib, &opts_for(plan), bc, input, samples),
    };
    // Plans are tried in order and the first that meets the budget wins; the next plan is built on the
    // other core while this one is checked (wasted only when this one wins), so the outcome is the same.
    let mut next = plans.first().map(|p| build_plan(p));
    for (i, plan) in plans.iter().enumerate() {
        progress.inc();
        let o = opts_for(plan);
        let built = next.take().unwrap_or_else(|| build_plan(plan));
        let (checked, following) = std::thread::scope(|sc| {
            let h = plans.get(i + 1).map(|p| sc.spawn(move || build_plan(p)));
            let checked = built.and_then(|(m, _, c)| check(&m).map(|r| (m, c, r)));
            (checked, h.map(|h| h.join()))
        });
        next = following.map(|r| {
            r.unwrap_or_else(|_| {
                Err(Error::Pass {
                    pass: "mixed_precision".into(),
                    reason: "a plan-building thread panicked".into(),
                })
            })
        });
        let (m, corrected, (ok, met)) = checked?;
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
    // The float model's outputs once.
    let refs = reference_outputs(model, input, probe)?;
    let progress = std::sync::Mutex::new(kiln_compiler::progress::stage(
        "mixed precision: sensitivity",
        points.len(),
    ));
    let tick = || {
        if let Ok(mut p) = progress.lock() {
            p.inc();
        }
    };
    // Activations: one model with every activation quantized and no layer, lowered once with the
    // activations' parameters as inputs (trial.rs); a point is one run with its own parameters fed in and
    // every other pair passing its input through. The runs use both cores.
    let mut acts_only = opts.clone();
    acts_only.keep_float = layers.iter().cloned().collect();
    acts_only.keep_float_values = HashSet::new();
    let (built, _, _) = super::build(model, calib, &acts_only, false, input, probe)?;
    let pm = super::trial::ParamModel::new(model, calib, &built, input)?;
    let (real, ident) = (pm.feeds(&acts_only), pm.identity());
    let all: BTreeSet<String> = ident.keys().cloned().collect();
    let stage = pm.stage(&all, &ident, probe)?;
    let mut measured: Vec<Option<Option<f64>>> = vec![None; points.len()];
    for (slot, (kind, name)) in measured.iter_mut().zip(&points) {
        let Some(names) = pm.params_of(name).filter(|_| *kind == "activation") else { continue };
        let mut f = ident.clone();
        for n in names {
            if let Some(x) = real.get(&n) {
                f.insert(n, *x);
            }
        }
        let outs = pm.first_outputs(&stage, &f, probe)?;
        *slot = Some(Some(metrics(&refs, &outs, None)?.sqnr_db));
        tick();
    }
    drop(stage);
    // Layers (and any activation the shared model could not parameterize): built alone, on both cores.
    // Each result lands in its point's slot, so the order (and the search after it) does not depend on
    // timing.
    let one = |(kind, name): &(&'static str, String)| -> Result<Option<f64>> {
        let (m, s, _) = super::build(model, calib, &only(kind, name), false, input, probe)?;
        tick();
        if s.weights + s.activations == 0 {
            return Ok(None); // nothing to quantize at this point (e.g. a value no quantized op reads)
        }
        Ok(Some(compare_with(&refs, &m, input, probe, None)?.sqnr_db))
    };
    let rest: Vec<usize> = (0..points.len()).filter(|i| measured[*i].is_none()).collect();
    let half = rest.len().div_ceil(2);
    let run = |ix: &[usize]| -> Result<Vec<(usize, Option<f64>)>> {
        ix.iter().map(|i| Ok((*i, one(&points[*i])?))).collect()
    };
    let (a, b) = std::thread::scope(|sc| {
        let h = sc.spawn(|| run(&rest[half..]));
        let a = run(&rest[..half]);
        (a, h.join())
    });
    let b = b.map_err(|_| Error::Pass {
        pass: "mixed_precision".into(),
        reason: "a sensitivity thread panicked".into(),
    })??;
    for (i, s) in a?.into_iter().chain(b) {
        measured[i] = Some(s);
    }
    let mut sens = Vec::new();
    for ((kind, name), s) in points.iter().zip(measured) {
        if let Some(Some(s)) = s {
            sens.push((*kind, name.clone(), s));
        }
    }
    Ok(sens)
}
