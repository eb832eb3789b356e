//! Quantization: ranges from calibration statistics and QDQ insertion.
pub mod bias_correction;
pub mod cle;
pub mod dead_channels;
pub mod fp16;
pub mod guard;
pub mod mixed;
pub mod params;
pub mod qdq;
pub mod ranges;
pub mod streams;
pub mod trial;

use kiln_compiler::backend::QuantRules;
use kiln_compiler::calib::Calibration;
use kiln_compiler::config::{CalibrationConfig, Target};
use kiln_compiler::ir::{DType, Model, Op, TensorData};
use kiln_compiler::pipeline::{
    Budget, Calibrate, Pass, PassContext, QuantizeJob, Quantized, Quantizer,
};
use kiln_compiler::{Error, Result};

/// Quantize `model` with `opts`, bias-correct, drop the float weights left behind.
pub fn build(
    model: &Model,
    calib: &Calibration,
    opts: &qdq::QdqOptions,
    bc: bool,
    input: &str,
    samples: &[TensorData],
) -> Result<(Model, qdq::QdqSummary, usize)> {
    build_impl(model, calib, opts, bc, &|q, f| bias_correction::correct(q, f, input, samples))
}

/// [`build`] with the bias-correction input means measured beforehand (see [`bias_correction::input_means`]).
pub fn build_with_means(
    model: &Model,
    calib: &Calibration,
    opts: &qdq::QdqOptions,
    means: Option<&bias_correction::InputMeans>,
) -> Result<(Model, qdq::QdqSummary, usize)> {
    match means {
        Some(mu) => {
            build_impl(model, calib, opts, true, &|q, f| bias_correction::correct_with(q, f, mu))
        }
        None => build_impl(model, calib, opts, false, &|_, _| Ok(0)),
    }
}

fn build_impl(
    model: &Model,
    calib: &Calibration,
    opts: &qdq::QdqOptions,
    bc: bool,
    correct: &dyn Fn(&mut Model, &Model) -> Result<usize>,
) -> Result<(Model, qdq::QdqSummary, usize)> {
    let mut m = model.clone();
    let qat = m.graph.nodes.node_weights().any(|n| matches!(n.op, Op::QuantizeLinear { .. }));
    let mut snapped = 0;
    if !qat {
        let (qmin, qmax) = qdq::act_range(opts);
        let params = qdq::activation_params(&m.graph, calib, opts);
        snapped = dead_channels::snap(&mut m.graph, &params, qmin, qmax)?;
    }
    let float = m.clone();
    let mut summary = qdq::quantize(&mut m, calib, opts)?;
    summary.snapped_channels = snapped;
    let mut corrected = 0;
    if bc && !summary.qat_kept {
        corrected = correct(&mut m, &float)?;
    }
    crate::cleanup::dce::Dce.run(&mut m, &mut PassContext::default())?;
    Ok((m, summary, corrected))
}

/// What [`equalize`] did.
#[derive(Debug, Clone, Default)]
pub struct Equalized {
    /// Residual streams rescaled (streams.rs).
    pub streams: usize,
    /// Conv pairs rescaled, counted per sweep (cle.rs).
    pub pairs: usize,
    /// max |Δ| / max |y| of the float model on calibration samples: equalization must be exact.
    pub drift: f64,
    /// Why equalization was dropped (default-on runs fall back to the unequalized model).
    pub skipped: Option<String>,
}

/// Equalization before quantization: residual streams, then conv pairs. Checks that the float model is
/// unchanged on a few calibration samples. When it is not, `required` (the user asked for it) refuses,
/// naming the drift; otherwise the original model is kept and `skipped` says why.
pub fn equalize(
    model: &Model,
    input: &str,
    samples: &[TensorData],
    required: bool,
) -> Result<(Model, Equalized)> {
    let mut m = model.clone();
    // One pass measures both: stream rescaling leaves the pairs' activations unchanged (a pair's first
    // conv never writes a stream, and stream consumers compensate exactly).
    let mut values = streams::stream_values(&m.graph)?;
    values.extend(cle::pair_outputs(&m.graph)?);
    let stats = cle::channel_stats(&m, &values, input, samples)?;
    let streams = streams::equalize(&mut m, &stats, 0.5)?;
    let pairs = cle::equalize(&mut m, &stats, 20)?;
    let drift = cle::max_rel_diff(model, &m, input, &samples[..samples.len().min(8)])?;
    if drift > 1e-3 {
        let reason = format!("equalized model differs from the original by {drift:.2e} (max rel)");
        if required {
            return Err(Error::Pass {
                pass: "cle".into(),
                reason: format!("{reason}; set `cle: false`"),
            });
        }
        return Ok((
            model.clone(),
            Equalized { drift, skipped: Some(reason), ..Default::default() },
        ));
    }
    Ok((m, Equalized { streams, pairs, drift, skipped: None }))
}

/// Which integer kernels an artifact quantized with `opts` is sound on. kiln validates Q/DQ as written (exact
/// semantics), which VNNI (x86 AVX-512/AVX-VNNI) and ARM dot-product kernels reproduce; x86 kernels without
/// VNNI add pairs of u8×s8 products in 16 bits, which 8-bit weights can saturate (`reduce_range` avoids it).
pub fn kernel_family(opts: &qdq::QdqOptions) -> &'static str {
    if opts.weight_qmax <= 64 {
        "any: exact Q/DQ, VNNI and ARM dot-product kernels, and x86 without VNNI (7-bit weights keep u8×s8 pair sums within 16 bits)"
    } else {
        "exact Q/DQ, VNNI (x86) and ARM dot-product kernels; x86 without VNNI may saturate 16-bit pair sums (use reduce_range)"
    }
}

/// What one quantization works from: the float model, its calibration statistics, whether biases are
/// corrected, and the calibration samples fed to `input`.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub model: &'a Model,
    pub calib: &'a Calibration,
    pub bc: bool,
    pub input: &'a str,
    pub samples: &'a [TensorData],
}

/// How to quantize: what `kiln build` reads from a target (and its backend's rules) and `kiln quantize`
/// from its flags.
#[derive(Clone, Debug)]
pub struct Settings {
    pub method: params::Method,
    pub per_channel: bool,
    pub activations: DType,
    /// Cross-layer equalization: `None` on unless it moves the float model, `Some(true)` required.
    pub cle: Option<bool>,
    pub bias_correction: bool,
    pub refine_ranges: bool,
    pub reduce_range: bool,
    /// The quality guard's floor (dB).
    pub floor_db: f64,
    pub rules: QuantRules,
}

impl Settings {
    /// A `kiln build` target's settings.
    pub fn from_target(t: &Target, rules: &QuantRules, cfg: &CalibrationConfig) -> Result<Self> {
        let method =
            params::Method::parse(cfg.method.as_deref().unwrap_or("entropy"), cfg.percentile)
                .ok_or_else(|| Error::Pass {
                    pass: "quantize".into(),
                    reason: "unknown calibration method".into(),
                })?;
        Ok(Settings {
            method,
            per_channel: t.weights.as_deref() != Some("per_tensor"),
            activations: if t.activations.as_deref() == Some("uint8") {
                DType::U8
            } else {
                DType::I8
            },
            cle: t.cle,
            bias_correction: t.bias_correction.unwrap_or(true),
            refine_ranges: t.refine_ranges.unwrap_or(true),
            reduce_range: t.reduce_range == Some(true),
            floor_db: t.min_calibration_sqnr_db.unwrap_or(guard::DEFAULT_FLOOR_DB),
            rules: *rules,
        })
    }

    fn qdq_options(&self) -> qdq::QdqOptions {
        qdq::QdqOptions {
            per_channel: self.per_channel,
            activations: self.activations,
            method: self.method,
            // Full-integer backends need every tensor's scale, outputs included.
            quantize_outputs: self.rules.full_integer,
            weight_qmax: if self.reduce_range { 64 } else { 127 },
            symmetric: self.rules.symmetric_activations,
            placement: self.rules.placement,
            int32_bias: self.rules.int32_bias,
            shared_scales: self.rules.shared_scales,
            ..Default::default()
        }
    }
}

/// What [`quantize`] did: the build report's `quantization` entry for a target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub method: String,
    pub weights: &'static str,
    pub qat_scales_kept: bool,
    pub quantized_weights: usize,
    pub quantized_biases: usize,
    pub quantized_activations: usize,
    pub bias_corrected_layers: usize,
    pub cle_pairs_equalized: usize,
    pub cle_streams_equalized: usize,
    pub cle_float_max_rel_diff: f64,
    pub cle_skipped: Option<String>,
    pub dead_channels_snapped: usize,
    pub range_refinement: ranges::Refined,
    pub kept_float: Vec<String>,
    pub mixed_precision: serde_json::Value,
    pub range_fallbacks: std::collections::BTreeMap<String, params::Fallback>,
    pub quality_guard: guard::Guarded,
    pub weight_bits: u8,
    pub kernel_family: &'static str,
    /// Wall seconds of each stage, in order: where a quantization's time went.
    pub seconds: Seconds,
}

/// Wall seconds of the stages of [`quantize`] (0 for a stage that did not run).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Seconds {
    pub equalization: f64,
    pub calibration: f64,
    pub range_refinement: f64,
    /// Q/DQ insertion with bias correction, and the float reference of the quality guard.
    pub build: f64,
    pub mixed_precision: f64,
    pub quality_guard: f64,
}

/// Post-training quantization, the stages `kiln build` and `kiln quantize` share: equalization, the
/// statistics of the model actually quantized (`calibrate`), activations split off where the target's
/// integer kernels cannot fuse them, range refinement, Q/DQ with bias correction, mixed precision under
/// a budget, and the quality guard. Returns the model, the summary, and the float model quantized when
/// equalization changed it.
pub fn quantize(
    model: &Model,
    s: &Settings,
    calibrate: &Calibrate,
    input: &str,
    samples: &[TensorData],
    budget: Option<Budget>,
) -> Result<(Model, Summary, Option<Model>)> {
    let opts = s.qdq_options();
    let bc = s.bias_correction;
    let mut secs = Seconds::default();
    let mut clock = std::time::Instant::now();
    let mut lap = || {
        let t = clock.elapsed().as_secs_f64();
        clock = std::time::Instant::now();
        t
    };
    // Equalization (on by default), then the statistics of the model actually quantized.
    let (equalized, calibration);
    let mut reference = None;
    let (model, calib, eq) = if s.cle.unwrap_or(true) {
        let (m, eq) = equalize(model, input, samples, s.cle == Some(true))?;
        if eq.skipped.is_none() {
            reference = Some(m.clone());
        }
        secs.equalization = lap();
        calibration = calibrate(&m)?;
        equalized = m;
        (&equalized, &calibration, eq)
    } else {
        calibration = calibrate(model)?;
        (model, &calibration, Equalized::default())
    };
    // Full-integer targets quantize what their runtime cannot fuse: the tensor before such an
    // activation becomes a quantization point (calibration measured it as `<output>__preact`).
    let unfused;
    let model = if s.rules.full_integer {
        let mut m = model.clone();
        // A conv with dead (pruned) channels keeps its activation: its constant channels are snapped onto
        // the output grid (dead_channels.rs), which needs act(b) computed exactly, i.e. in float.
        let fused = s.rules.fused_activation;
        let keep = |g: &kiln_compiler::ir::Graph, id: kiln_compiler::ir::NodeId| {
            let fusable = g.nodes[id].act.as_ref().is_some_and(fused);
            fusable || dead_channels::has_dead_channels(g, id)
        };
        kiln_compiler::calib::stats::unfuse_activations(&mut m, &keep)?;
        let opset = m.opset();
        kiln_compiler::shape::infer_graph(&mut m.graph, opset)?;
        unfused = m;
        &unfused
    } else {
        model
    };
    secs.calibration = lap();
    let (opts, refined) = if s.refine_ranges {
        ranges::refine(model, calib, &opts, bc, input, samples)
    } else {
        (opts, ranges::Refined::default())
    };
    secs.range_refinement = lap();
    let ((mut m, summary, mut corrected), probe) =
        guard::build_with_reference(model, calib, &opts, bc, input, samples)?;
    secs.build = lap();
    let inputs = Inputs { model, calib, bc, input, samples };
    let mut mixed = serde_json::Value::Null;
    if let Some(check) = budget {
        let (ok, metrics) = check(&m)?;
        if !ok && !summary.qat_kept {
            let (mm, report, c) = mixed::search(&inputs, &opts, check, metrics)?;
            m = mm;
            mixed = report;
            corrected = c;
        }
    }
    secs.mixed_precision = lap();
    let (m, _, guarded) = guard::check(&probe, &inputs, &opts, m, s.floor_db, summary.qat_kept)?;
    secs.quality_guard = lap();
    let summary = Summary {
        method: format!("{:?}", s.method),
        weights: if opts.per_channel { "per_channel" } else { "per_tensor" },
        qat_scales_kept: summary.qat_kept,
        quantized_weights: summary.weights,
        quantized_biases: summary.biases,
        quantized_activations: summary.activations,
        bias_corrected_layers: corrected,
        cle_pairs_equalized: eq.pairs,
        cle_streams_equalized: eq.streams,
        cle_float_max_rel_diff: eq.drift,
        cle_skipped: eq.skipped,
        dead_channels_snapped: summary.snapped_channels,
        range_refinement: refined,
        kept_float: summary.kept_float,
        mixed_precision: mixed,
        range_fallbacks: summary.range_fallbacks,
        quality_guard: guarded,
        weight_bits: if opts.weight_qmax <= 64 { 7 } else { 8 },
        kernel_family: kernel_family(&opts),
        seconds: secs,
    };
    Ok((m, summary, reference))
}

/// Post-training quantization for `kiln build` targets with `precision: int8`.
pub struct Ptq;

impl Quantizer for Ptq {
    fn fp16_islands(
        &self,
        model: &Model,
        input: &str,
        samples: &[TensorData],
        bound: f64,
        half_activations: bool,
    ) -> Result<(Model, serde_json::Value)> {
        fp16::islands(model, input, samples, bound, half_activations)
    }

    fn quantize(&self, job: &QuantizeJob) -> Result<Quantized> {
        let s = Settings::from_target(job.target, job.rules, job.calibration)?;
        let (model, summary, reference) =
            quantize(job.model, &s, job.calibrate, job.input, job.samples, job.budget)?;
        let summary = serde_json::to_value(&summary).map_err(|e| Error::invalid(e.to_string()))?;
        Ok(Quantized { model, summary, reference })
    }
}
