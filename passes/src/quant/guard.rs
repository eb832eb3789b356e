//! The quality guard: kiln never writes a catastrophic quantized model silently.
//!
//! Every quantized model is run on up to [`PROBE_SAMPLES`] calibration samples (evenly spaced) beside the
//! float model it was quantized from, and the median over samples of its output SQNR is compared with a floor (the target's
//! `min_calibration_sqnr_db`, default [`DEFAULT_FLOOR_DB`]). Below the floor the guard repairs, in order:
//! 1. **per-tensor range fallback**: each activation takes whichever of its method's range, the 99.99th
//!    percentile and min/max has the smallest expected error on its own histogram (clipping + rounding),
//!    so a range that clipped away the signal is widened;
//! 2. **keeping activations in float**: the most sensitive ones first (output SQNR with only that tensor
//!    quantized), 1, 2, 4, … of them, up to a quarter of all activations (they cost no bytes; keeping more,
//!    or weights, is what a `validation:` budget's mixed-precision search is for).
//!
//! If neither reaches the floor, quantization fails with an error naming the worst tensors and their SQNR;
//! the build then fails that target alone. The report says what was measured and repaired.
use std::collections::BTreeMap;

use kiln_compiler::accuracy::argmax;
use kiln_compiler::calib::{Calibration, TensorStats, BINS};
use kiln_compiler::eval::Evaluator;
use kiln_compiler::ir::{Model, TensorData};
use kiln_compiler::{Error, Result};

use super::params::{threshold, Method, FALLBACK_PERCENTILE};
use super::qdq::{method_for, QdqOptions};

/// Default floor on the output SQNR (dB, median over samples) of a quantized model on calibration samples.
/// Healthy int8 models of the corpus measure 14–42 dB (ShuffleNetV2 the lowest, digits and SqueezeNet the
/// highest); MobileNetV3-small, whose int8 output is noise, 1.8–2.6 dB, and collapsed ranges below 0 dB.
/// 4 dB sits between them: output noise at 40 % of the signal's power.
pub const DEFAULT_FLOOR_DB: f64 = 4.0;

/// Calibration samples the guard scores on (evenly spaced over the set).
pub const PROBE_SAMPLES: usize = 16;

/// What the guard measured and did, for the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Guarded {
    pub floor_db: f64,
    pub samples: usize,
    /// Output SQNR (dB) and top-1 agreement on the probe samples of the model as first quantized.
    pub sqnr_db: f64,
    pub top1_agreement: f64,
    /// `none`, `range_fallback` or `kept_float`: what brought the model over the floor.
    pub repair: String,
    /// After the repair (equal to the first figures when none was needed).
    pub sqnr_db_after: f64,
    pub top1_agreement_after: f64,
    /// Tensors whose range method was replaced (value → method) by the repair.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub range_fallbacks: BTreeMap<String, String>,
    /// Activations kept in float by the repair, with their SQNR when quantized alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_float: Vec<(String, f64)>,
}

/// Reference outputs computed once, against which candidates are scored: output SQNR and top-1 agreement
/// (argmax over the last axis of the first output).
pub struct Reference<'a> {
    input: &'a str,
    probe: Vec<TensorData>,
    want: Vec<Vec<f64>>,
    classes: usize,
}

impl<'a> Reference<'a> {
    /// The float model's outputs on the probe samples (compute it while the quantized model is built).
    pub fn new(model: &Model, input: &'a str, samples: &[TensorData]) -> Result<Self> {
        let n = samples.len().min(PROBE_SAMPLES);
        let probe: Vec<TensorData> =
            (0..n).filter_map(|i| samples.get(i * samples.len() / n.max(1)).cloned()).collect();
        let first = probe.first().ok_or_else(|| Error::Input {
            name: input.into(),
            reason: "no calibration samples".into(),
        })?;
        let ev = Evaluator::new(model, &[(input.to_string(), first.dtype, first.dims.clone())])?;
        let classes = ev
            .run(&[(input.to_string(), first.clone())])?
            .first()
            .and_then(|(_, t)| t.dims.last().copied())
            .unwrap_or(1)
            .max(1) as usize;
        let want = outputs(&ev, input, &probe)?;
        Ok(Reference { input, probe, want, classes })
    }

    /// (SQNR dB, top-1 agreement) of `cand`. The SQNR is the median over samples of each sample's output
    /// SQNR: pooled over samples, a few samples with large outputs decide it (MobileNetV3-small's int8 model
    /// pooled 19 dB on calibration samples while the median sample's output was noise, 1.8 dB).
    fn score(&self, cand: &Model) -> Result<(f64, f64)> {
        let Some(first) = self.probe.first() else {
            return Ok((f64::INFINITY, 1.0));
        };
        // The evaluator folds weight Q/DQ and lowers activation Q/DQ to float ops itself (eval/qdq.rs).
        let ev =
            Evaluator::new(cand, &[(self.input.to_string(), first.dtype, first.dims.clone())])?;
        let (mut per, mut agree, mut rows) = (Vec::with_capacity(self.probe.len()), 0usize, 0usize);
        let got_all = outputs(&ev, self.input, &self.probe)?;
        for (got, w) in got_all.iter().zip(&self.want) {
            if got.len() != w.len() {
                return Err(Error::Eval(format!(
                    "quantized model output has {} values, float {}",
                    got.len(),
                    w.len()
                )));
            }
            let sig = w.iter().map(|v| v * v).sum::<f64>();
            let noise = w.iter().zip(got).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
            per.push(10.0 * (sig.max(1e-30) / noise.max(1e-30)).log10());
            // Top-1 per row of the first output (its leading `rows * classes` values).
            let c = self.classes;
            if c > 1 {
                for (a, b) in w.chunks(c).zip(got.chunks(c)).take(w.len() / c) {
                    agree += usize::from(argmax(a) == argmax(b));
                    rows += 1;
                }
            }
        }
        per.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let sqnr = per.get(per.len() / 2).copied().unwrap_or(f64::INFINITY);
        Ok((sqnr, if rows == 0 { 1.0 } else { agree as f64 / rows as f64 }))
    }
}

/// Every output of `ev` on each of `probe`, flattened per sample, in sample order (two threads).
pub(super) fn outputs(ev: &Evaluator, input: &str, probe: &[TensorData]) -> Result<Vec<Vec<f64>>> {
    let parts = ev.fold_samples(input, probe, Vec::new, |acc: &mut Vec<Vec<f64>>, outs| {
        acc.push(outs.iter().flat_map(|(_, t)| t.to_f64_vec().unwrap_or_default()).collect());
        Ok(())
    })?;
    Ok(parts.into_iter().flatten().collect())
}

/// Expected squared error of quantizing |x| (the histogram) with threshold `t` on 255 steps over [0, t]
/// (a tensor with no negative values) or [−t, t]: values above `t` lose x − t, the rest a uniform rounding
/// error of step²/12. In units of bins², summed over elements.
pub fn histogram_error(s: &TensorStats, t: f32) -> f64 {
    if s.hist_max <= 0.0 || s.hist.len() != BINS {
        return 0.0;
    }
    let w = (s.hist_max / BINS as f32) as f64;
    let t = t as f64 / w;
    let step = if s.min >= 0.0 { t / 255.0 } else { 2.0 * t / 255.0 };
    s.hist
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(j, c)| {
            let x = j as f64 + 0.5;
            let e2 = if x > t { (x - t) * (x - t) } else { step * step / 12.0 };
            *c as f64 * e2
        })
        .sum()
}

/// For every activation, the method among its own, the 99.99th percentile and min/max with the smallest
/// [`histogram_error`]; returns the tensors whose method changes.
fn range_repair(
    calib: &Calibration,
    opts: &QdqOptions,
    values: &[String],
) -> BTreeMap<String, Method> {
    let mut out = BTreeMap::new();
    for v in values {
        let Some(s) = calib.stats.get(v) else {
            continue;
        };
        let own = method_for(opts, v);
        let err = |m: Method| histogram_error(s, threshold(s, m).0);
        let (mut best, mut best_err) = (own, err(own));
        for m in [Method::Percentile(FALLBACK_PERCENTILE), Method::MinMax] {
            let e = err(m);
            if e < best_err * 0.999 {
                (best, best_err) = (m, e);
            }
        }
        if best != own {
            out.insert(v.clone(), best);
        }
    }
    out
}

/// [`super::build`] and the guard's [`Reference`] for `model`, computed side by side.
pub fn build_with_reference<'a>(
    model: &Model,
    calib: &Calibration,
    opts: &QdqOptions,
    bc: bool,
    input: &'a str,
    samples: &[TensorData],
) -> Result<((Model, super::qdq::QdqSummary, usize), Reference<'a>)> {
    let (built, reference) = std::thread::scope(|s| {
        let h = s.spawn(|| Reference::new(model, input, samples));
        let b = super::build(model, calib, opts, bc, input, samples);
        (b, h.join())
    });
    let reference = reference
        .map_err(|_| Error::Eval("the quality guard's reference thread panicked".into()))??;
    Ok((built?, reference))
}

/// Check `quantized` (built from `model` with `opts`) against the floor, scored against `scorer` (the float
/// model's outputs, [`Reference::new`]) and repair it when it falls below.
/// Returns the model to ship, the options it was built with, and the report; an error when no repair
/// reaches the floor. `qat`: the model's scales come from training and are not kiln's to repair.
pub fn check(
    scorer: &Reference,
    inputs: &super::Inputs,
    opts: &QdqOptions,
    quantized: Model,
    floor: f64,
    qat: bool,
) -> Result<(Model, QdqOptions, Guarded)> {
    let super::Inputs { model, calib, bc, input, samples } = *inputs;
    let (sqnr, top1) = scorer.score(&quantized)?;
    let mut report = Guarded {
        floor_db: floor,
        samples: scorer.probe.len(),
        sqnr_db: sqnr,
        top1_agreement: top1,
        repair: "none".into(),
        sqnr_db_after: sqnr,
        top1_agreement_after: top1,
        ..Default::default()
    };
    if sqnr >= floor || qat {
        return Ok((quantized, opts.clone(), report));
    }
    let mut tried = vec![format!("as calibrated {sqnr:.2} dB")];
    // 1. Per-tensor range fallback.
    let (_, values) = super::mixed::points(model, calib)?;
    let fix = range_repair(calib, opts, &values);
    let mut best = (sqnr, top1, quantized, opts.clone());
    if !fix.is_empty() {
        let mut o = opts.clone();
        o.method_override.extend(fix.iter().map(|(k, v)| (k.clone(), *v)));
        let (m, _, _) = super::build(model, calib, &o, bc, input, samples)?;
        let (s, a) = scorer.score(&m)?;
        tried.push(format!("range fallback on {} tensors {s:.2} dB", fix.len()));
        if s > best.0 {
            best = (s, a, m, o);
            report.range_fallbacks = fix.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        }
        if s >= floor {
            report.repair = "range_fallback".into();
            (report.sqnr_db_after, report.top1_agreement_after) = (s, a);
            return Ok((best.2, best.3, report));
        }
    }
    // 2. Keep the most sensitive activations in float.
    let base = best.3.clone();
    let probe = scorer.probe.clone();
    let mut sens = super::mixed::sensitivity(model, calib, &base, input, &probe, false)?;
    sens.sort_by(|a, b| a.2.partial_cmp(&b.2).unwrap_or(std::cmp::Ordering::Equal));
    let cap = (sens.len() / 4).max(1).min(sens.len());
    let mut k = 1;
    while k <= cap {
        let mut o = base.clone();
        o.keep_float_values.extend(sens[..k].iter().map(|p| p.1.clone()));
        let (m, _, _) = super::build(model, calib, &o, bc, input, samples)?;
        let (s, a) = scorer.score(&m)?;
        tried.push(format!("{k} activations in float {s:.2} dB"));
        if s >= floor {
            report.repair = "kept_float".into();
            report.kept_float = sens[..k].iter().map(|p| (p.1.clone(), p.2)).collect();
            (report.sqnr_db_after, report.top1_agreement_after) = (s, a);
            return Ok((m, o, report));
        }
        k = if k == cap { cap + 1 } else { (k * 2).min(cap) };
    }
    let worst: Vec<String> =
        sens.iter().take(5).map(|p| format!("{} ({:.1} dB)", p.1, p.2)).collect();
    Err(Error::Guard(format!(
        "int8 output SQNR (median of {} calibration samples) is {sqnr:.2} dB (top-1 agreement {top1:.2}), below the floor of {floor} dB \
         (min_calibration_sqnr_db). Worst tensors, each quantized alone: {}. Tried: {}. Keep layers in float with a \
         `validation:` accuracy budget (mixed precision), try another calibration method, or lower min_calibration_sqnr_db",
        report.samples,
        if worst.is_empty() { "none measurable".to_string() } else { worst.join(", ") },
        tried.join("; ")
    )))
}
