//! Loss-aware range refinement for residual streams.
//!
//! Calibration picks each activation's range from that tensor alone (min/max, a percentile, KL, local MSE).
//! For most tensors that is the right trade between clipping and rounding. Residual streams (streams.rs)
//! are different: every block adds its rounding noise to the stream and the stream carries it to the end
//! of the stage, so the stream's step size matters more than the rare values a tighter range clips. The
//! stream's tensors also share one distribution (an `Add` chain), so one factor per stream is enough.
//!
//! For each stream in turn, this tries factors on the calibrated range of all its tensors ([`FIRST`], then
//! two more around the best) and keeps the one that maximizes the SQNR of the model's outputs against the
//! float model on the calibration samples (at most [`MAX_SAMPLES`], evenly spaced) — never the validation
//! data. One scalar per stream cannot fit the samples' noise: it only trades clipping against rounding where
//! the network, not the tensor, pays for them (the idea of loss-aware PTQ, Nahshan et al. 2019). A factor
//! is kept only if it beats the current choice by [`MIN_GAIN_DB`]. If a candidate cannot be built or run,
//! refinement stops and says so (`skipped`); the calibrated ranges stay.
use kiln_compiler::calib::Calibration;
use std::collections::BTreeSet;

use kiln_compiler::eval::Evaluator;
use kiln_compiler::ir::{Model, Op, TensorData, ValueId};
use kiln_compiler::Result;

use super::params::{amax, Method};
use super::qdq::QdqOptions;
use super::trial::Feeds;

/// First factors tried on a stream's calibrated range (1.0, the calibrated range itself, is the start);
/// then the two between the best of the three and its neighbours ([`second_round`]).
pub const FIRST: [f32; 2] = [0.25, 0.5];

/// Second-round factors around the best of 1.0 and [`FIRST`].
fn second_round(best: f32) -> [f32; 2] {
    if best <= 0.25 {
        [0.15, 0.35]
    } else if best <= 0.5 {
        [0.35, 0.7]
    } else {
        [0.7, 0.85]
    }
}
/// Smallest output-SQNR gain (dB) that moves a stream off its calibrated range.
pub const MIN_GAIN_DB: f64 = 0.05;

/// What [`refine`] chose.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Refined {
    /// One row per stream: its first tensor, how many tensors it has, the factor kept and the SQNR (dB) of
    /// the outputs on calibration samples before and after.
    pub streams: Vec<StreamChoice>,
    /// Candidate quantizations evaluated.
    pub evaluated: usize,
    /// Why refinement did not run to the end (the calibrated ranges are kept): a candidate that could not be
    /// built or run. Quantization itself does not depend on it, so this is not an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamChoice {
    pub first: String,
    pub tensors: usize,
    pub factor: f32,
    pub sqnr_db_before: f64,
    pub sqnr_db_after: f64,
}

/// Output SQNR of the runs `got` (one Vec per sample, all outputs flattened) against `want`.
fn sqnr(got: &[Vec<f64>], want: &[Vec<f64>]) -> f64 {
    let (mut sig, mut noise) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        if g.len() != w.len() {
            return f64::NEG_INFINITY;
        }
        sig += w.iter().map(|v| v * v).sum::<f64>();
        noise += w.iter().zip(g).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
    }
    10.0 * (sig / noise.max(1e-30)).log10()
}

/// `calib` with each value's range already clipped by its method (graph outputs and what they pool, which
/// always take min/max, left alone): candidates then quantize with min/max and the same result, without searching entropy or
/// MSE thresholds again for every tensor of every candidate.
pub fn pin(model: &Model, calib: &Calibration, opts: &QdqOptions) -> Calibration {
    let mut c = calib.clone();
    let full = super::qdq::full_range_values(&model.graph);
    for (name, s) in c.stats.iter_mut() {
        if model.graph.find(name).is_some_and(|v| full.contains(&v)) {
            continue;
        }
        let t = amax(s, super::qdq::method_for(opts, name));
        s.min = s.min.max(-t);
        s.max = s.max.min(t);
    }
    c
}

/// At most this many calibration samples score each candidate (evenly spaced over the set).
pub const MAX_SAMPLES: usize = 32;

/// Choose a range factor per residual stream of `model` (float, equalized) and return `opts` with them in
/// `range_scale`. With `bc`, candidates are bias-corrected like the final model (input means measured
/// once), so the choice sees what ships.
pub fn refine(
    model: &Model,
    calib: &Calibration,
    opts: &QdqOptions,
    bc: bool,
    input: &str,
    samples: &[TensorData],
) -> (QdqOptions, Refined) {
    match search(model, calib, opts, bc, input, samples) {
        Ok(r) => r,
        Err(e) => (opts.clone(), Refined { skipped: Some(e.to_string()), ..Default::default() }),
    }
}

fn search(
    model: &Model,
    calib: &Calibration,
    opts: &QdqOptions,
    bc: bool,
    input: &str,
    samples: &[TensorData],
) -> Result<(QdqOptions, Refined)> {
    let mut out = opts.clone();
    let mut report = Refined::default();
    if model.graph.nodes.node_weights().any(|n| matches!(n.op, Op::QuantizeLinear { .. })) {
        return Ok((out, report)); // QAT scales are kept as trained
    }
    let mut streams: Vec<Vec<ValueId>> =
        super::streams::streams(&model.graph)?.into_iter().map(|s| s.values).collect();
    streams.iter_mut().for_each(|v| v.sort());
    streams.sort();
    let streams: Vec<Vec<String>> = streams
        .into_iter()
        .map(|s| {
            s.iter()
                .map(|v| model.graph.value(*v).name.clone())
                .filter(|n| calib.stats.contains_key(n) && !opts.keep_float_values.contains(n))
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .collect();
    if streams.is_empty() || samples.is_empty() {
        return Ok((out, report));
    }
    let n = samples.len().min(MAX_SAMPLES);
    let probe: Vec<TensorData> =
        (0..n).filter_map(|i| samples.get(i * samples.len() / n).cloned()).collect();
    let ev = Evaluator::new(model, &[(input.to_string(), probe[0].dtype, probe[0].dims.clone())])?;
    let want = super::guard::outputs(&ev, input, &probe)?;
    let means =
        if bc { Some(super::bias_correction::input_means(model, input, &probe)?) } else { None };
    let pinned = pin(model, calib, opts);
    // One Q/DQ model, its activation parameters as inputs (trial.rs); candidates only feed new values.
    let minmax = |o: &QdqOptions| QdqOptions {
        method: Method::MinMax,
        method_override: Default::default(),
        ..o.clone()
    };
    let (built, _, _) = super::build_with_means(model, &pinned, &minmax(&out), means.as_ref())?;
    let pm = super::trial::ParamModel::new(model, &pinned, &built, input)?;
    let mut current = pm.feeds(&out);
    // The score to beat: the current parameters, measured through the first stage (its cut upstream
    // part computes exactly what the whole model would).
    let mut best = f64::NAN;
    let mut progress = kiln_compiler::progress::stage("range refinement", streams.len());
    for values in streams {
        progress.inc();
        let with = |o: &QdqOptions, f: f32| {
            let mut o = o.clone();
            values.iter().for_each(|v| {
                o.range_scale.insert(v.clone(), f);
            });
            o
        };
        // The parameters this stream's factor moves, and the part of the model that reads them.
        let probe_feeds = pm.feeds(&with(&out, 0.5));
        let changed: BTreeSet<String> = probe_feeds
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        if changed.is_empty() {
            continue;
        }
        let stage = pm.stage(&changed, &current, &probe)?;
        if best.is_nan() {
            best = sqnr(&pm.outputs(&stage, &current, &probe)?, &want);
            report.evaluated += 1;
        }
        let before = best;
        let score = |f: f32| -> Result<(f64, Feeds)> {
            let feeds = pm.feeds(&with(&out, f));
            Ok((sqnr(&pm.outputs(&stage, &feeds, &probe)?, &want), feeds))
        };
        let mut keep = (1.0f32, current.clone());
        let mut round = FIRST;
        for r in 0..2 {
            // Each candidate is one run of the stage per probe sample (two samples at a time).
            let (a, b) = (score(round[0]), score(round[1]));
            report.evaluated += 2;
            for (f, (db, feeds)) in round.iter().zip([a?, b?]) {
                if db > best + MIN_GAIN_DB {
                    best = db;
                    keep = (*f, feeds);
                }
            }
            if r == 0 {
                round = second_round(keep.0);
            }
        }
        if keep.0 != 1.0 {
            for v in &values {
                out.range_scale.insert(v.clone(), keep.0);
            }
            current = keep.1;
        }
        report.streams.push(StreamChoice {
            first: values[0].clone(),
            tensors: values.len(),
            factor: keep.0,
            sqnr_db_before: before,
            sqnr_db_after: best,
        });
    }
    Ok((out, report))
}
