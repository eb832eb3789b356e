//! The `Pass` and `Quantizer` traits and the records the pass manager produces (the backend surface is
//! in `backend.rs`).
use serde::Serialize;

use crate::config::Target;
use crate::error::Result;
use crate::ir::Model;

/// A graph transformation.
pub trait Pass {
    fn name(&self) -> &'static str;
    /// Transform the model; return whether anything changed.
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<bool>;
    /// Does the pass read calibration data (`PassContext::calibration`)? The driver then loads the
    /// build's calibration samples before the passes run.
    fn needs_calibration(&self) -> bool {
        false
    }
}

/// Calibration samples handed to passes that rank or refit on data (`prune: { method: channel }`).
pub struct CalibrationSamples {
    /// The data input the samples feed.
    pub input: String,
    pub samples: Vec<crate::ir::TensorData>,
}

/// Shared state while passes run.
#[derive(Default)]
pub struct PassContext {
    pub records: Vec<PassRecord>,
    /// Verify the graph after every pass even in release builds (tests, `--verify`).
    pub verify: bool,
    /// Dump the IR after every run of the pass with this name (`--dump-ir`).
    pub dump_after: Option<String>,
    /// IR dumps taken, as (pass, text).
    pub dumps: Vec<(String, String)>,
    /// What passes noticed and left alone (a constant the evaluator could not fold, ...), for the log.
    pub warnings: Vec<String>,
    /// Structured reports of passes, by pass (`prune`: channels removed and kept), for report.json.
    pub reports: Vec<(String, serde_json::Value)>,
    /// Changes that do not keep the model's function exactly (`prune` with `approximate: true`): the
    /// driver then measures the optimized model against the original.
    pub inexact: Vec<String>,
    /// What passes measured, for the build log (`prune` with `method: channel`: MACs and fidelity).
    pub notes: Vec<String>,
    /// The build's calibration samples, when a pass asked for them.
    pub calibration: Option<std::sync::Arc<CalibrationSamples>>,
}

/// Before/after statistics of one pass run.
#[derive(Clone, Debug, Serialize)]
pub struct PassRecord {
    pub pass: String,
    pub wall_ms: f64,
    pub nodes: (usize, usize),
    pub params: (u64, u64),
    pub param_bytes: (u64, u64),
    pub macs: (u64, u64),
}

/// Run one pass: re-infer shapes when it changed something, verify (debug builds, or
/// `PassContext::verify`), take the `--dump-ir` dump when asked, and record its statistics. `parent` is the
/// pipeline running it, if any (records are named `parent/pass`). Shared by the driver and the pass manager.
pub fn run_pass(
    p: &dyn Pass,
    model: &mut Model,
    cx: &mut PassContext,
    parent: Option<&str>,
) -> Result<bool> {
    use crate::stats::model_stats;
    let before = model_stats(model);
    let t0 = std::time::Instant::now();
    let changed = p.run(model, cx)?;
    if changed {
        let opset = model.opset();
        crate::shape::infer_graph(&mut model.graph, opset)?;
        if cfg!(debug_assertions) || cx.verify {
            crate::ir::verify::verify(&model.graph).map_err(|e| crate::Error::Pass {
                pass: p.name().into(),
                reason: format!("left an invalid graph: {e}"),
            })?;
        }
    }
    let after = if changed { model_stats(model) } else { before.clone() };
    let full = match parent {
        Some(parent) => format!("{parent}/{}", p.name()),
        None => p.name().to_string(),
    };
    if cx.dump_after.as_deref().is_some_and(|d| d == p.name() || d == full) {
        cx.dumps.push((full.clone(), crate::ir::dump::dump_model(model)));
    }
    cx.records.push(PassRecord {
        pass: full,
        wall_ms: t0.elapsed().as_secs_f64() * 1e3,
        nodes: (before.nodes, after.nodes),
        params: (before.params, after.params),
        param_bytes: (before.param_bytes, after.param_bytes),
        macs: (before.macs, after.macs),
    });
    Ok(changed)
}

/// Checks a candidate model against the accuracy budget: (meets it, measured metrics).
pub type Budget<'a> = &'a dyn Fn(&Model) -> Result<(bool, crate::accuracy::Metrics)>;

/// Turns the optimized fp32 model into a quantized one for a target (the binary wires in kiln-passes).
/// Calibration statistics of a model over the build's calibration samples.
pub type Calibrate<'a> = dyn Fn(&Model) -> Result<crate::calib::Calibration> + 'a;

pub trait Quantizer: Send + Sync {
    /// For float16 targets: mark layers whose weights must stay float32 for the output error (max |Δy| /
    /// max |y|) to stay under `bound`. The default keeps every layer float16.
    /// `half_activations`: the backend computes in float16 too (so the search simulates activations in it).
    fn fp16_islands(
        &self,
        model: &Model,
        _input: &str,
        _samples: &[crate::ir::TensorData],
        _bound: f64,
        _half_activations: bool,
    ) -> Result<(Model, serde_json::Value)> {
        Ok((model.clone(), serde_json::Value::Null))
    }
    /// Returns the quantized model, a summary for the report, and the float model it quantized when that
    /// differs from `job.model` (equalization rescales channels: per-layer comparisons need that one).
    /// `job.calibrate` gives the statistics of whichever model the quantizer ends up quantizing (the driver
    /// caches them). With a budget, layers may be kept in float (mixed precision) until the candidate meets it.
    fn quantize(&self, job: &QuantizeJob) -> Result<Quantized>;
}

/// One quantization: the optimized float model, the target's settings and rules, the calibration data.
pub struct QuantizeJob<'a> {
    pub model: &'a Model,
    pub target: &'a Target,
    pub rules: &'a crate::backend::QuantRules,
    pub calibrate: &'a Calibrate<'a>,
    pub calibration: &'a crate::config::CalibrationConfig,
    pub input: &'a str,
    pub samples: &'a [crate::ir::TensorData],
    pub budget: Option<Budget<'a>>,
}

/// A quantizer's result: the model, its summary for the report (serialized from the quantizer's typed
/// summary), and the float model it quantized when different.
#[derive(Clone)]
pub struct Quantized {
    pub model: Model,
    pub summary: serde_json::Value,
    pub reference: Option<Model>,
}
