//! Latency measured on this host, for `kiln profile` and a build's `profile: true`: ONNX models through
//! kiln's evaluator (tract), TFLite files through LiteRT's benchmark tool (`litert-benchmark`, from the
//! `ai-edge-litert` wheel, found on PATH or named by `KILN_LITERT_BENCHMARK`). kiln itself needs no
//! Python: without the tool a TFLite artifact is reported as not measured, with how to get it.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ir::{DType, Model, TensorData};

/// A build's `profile:` setting: `true`, `false` or `required` (an artifact that cannot be measured here
/// then fails the build).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub enum Mode {
    #[default]
    Off,
    On,
    Required,
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(false) => Ok(Mode::Off),
            Raw::Bool(true) => Ok(Mode::On),
            Raw::Word(w) if w == "required" => Ok(Mode::Required),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "profile: expected true, false or required, got '{w}'"
            ))),
        }
    }
}

/// One row of a build's before/after table (report.json `profile`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// `original`, `optimized` (after the passes) or a target's name.
    pub stage: String,
    pub artifact: Option<String>,
    /// What ran it: `tract`, `litert`, or none.
    pub runtime: Option<String>,
    /// Median end-to-end milliseconds on this host.
    pub latency_ms: Option<f64>,
    pub bytes: Option<u64>,
    pub macs: u64,
    /// Against the fp32 original on the validation data, where measured.
    pub top1_agreement: Option<f64>,
    /// Why it was not measured.
    pub note: Option<String>,
    /// The target's `device:` when its profile has a cost model, and kiln's ESTIMATE of the latency there
    /// (compiler/src/cost.rs): the total and, in `estimate`, per layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<serde_json::Value>,
}

/// LiteRT's benchmark tool: `KILN_LITERT_BENCHMARK`, else `litert-benchmark` on PATH.
pub fn litert_benchmark() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_LITERT_BENCHMARK") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|d| d.join("litert-benchmark")).find(|p| p.is_file())
    })
}

/// How to get the tool, for messages.
pub const LITERT_HINT: &str = "LiteRT's benchmark tool `litert-benchmark` is not on PATH: it comes with the \
    `ai-edge-litert` wheel (`python3 -m pip install ai-edge-litert`); put its bin folder on PATH or set \
    KILN_LITERT_BENCHMARK to the tool's path";

/// Median end-to-end milliseconds of a .tflite in LiteRT.
pub fn tflite_median_ms(
    tool: &Path,
    path: &Path,
    warmup: usize,
    runs: usize,
    threads: usize,
) -> Result<f64> {
    let io = |e: std::io::Error| Error::io(tool, e);
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kiln-litert-{}-{k}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let json = dir.join("result.json");
    let out = std::process::Command::new(tool)
        .arg(format!("--model={}", path.display()))
        .arg(format!("--num_runs={}", runs.max(1)))
        .arg(format!("--warmup_runs={warmup}"))
        .arg(format!("--num_threads={}", threads.max(1)))
        .arg(format!("--result_json={}", json.display()))
        .output()
        .map_err(io);
    let result = out.and_then(|out| {
        if !out.status.success() {
            return Err(Error::Eval(format!(
                "{} failed on {}: {}",
                tool.display(),
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let bytes = std::fs::read(&json).map_err(|e| Error::io(&json, e))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Eval(format!("{}: unreadable result: {e}", tool.display())))?;
        v["latency"]["median_ms"]
            .as_f64()
            .ok_or_else(|| Error::Eval(format!("{} reported no median latency", tool.display())))
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A deterministic ramp for each runtime input of `m` (its declared shape, symbolic dims 1), unless
/// `given` has it.
pub fn feeds(m: &Model, given: &[(String, TensorData)]) -> Result<Vec<(String, TensorData)>> {
    let g = &m.graph;
    let mut out = Vec::new();
    for name in g.runtime_input_names() {
        if let Some((_, t)) = given.iter().find(|(n, _)| *n == name) {
            out.push((name, t.clone()));
            continue;
        }
        let Some(v) = g.find(&name).map(|v| g.value(v)) else { continue };
        let dims: Vec<i64> = v
            .shape
            .as_ref()
            .map(|s| s.iter().map(|d| d.known().unwrap_or(1)).collect())
            .unwrap_or_default();
        let n = dims.iter().product::<i64>().max(0) as usize;
        let t = match v.dtype {
            DType::F32 => TensorData::from_f32(
                dims,
                &(0..n).map(|i| ((i * 7919 % 255) as f32 / 255.0) - 0.5).collect::<Vec<_>>(),
            ),
            DType::I64 => TensorData::from_i64(dims, &vec![0; n]),
            other => {
                return Err(Error::Input {
                    name,
                    reason: format!(
                        "no data of type {other} to profile with: give the input a sample"
                    ),
                })
            }
        };
        out.push((name, t));
    }
    Ok(out)
}

/// Median end-to-end milliseconds of `m` in kiln's evaluator.
pub fn onnx_median_ms(
    m: &Model,
    feeds: &[(String, TensorData)],
    warmup: usize,
    runs: usize,
) -> Result<f64> {
    let ev = crate::eval::Evaluator::as_written_for(m, feeds)?;
    Ok(ev.profile(feeds, warmup, runs)?.total * 1e3)
}

/// Measures an artifact kind the compiler cannot run itself (the binary registers the Vulkan runtime for
/// `.kvk`): median end-to-end milliseconds, fed `feeds` where they name its inputs, after `warmup` runs.
pub type Runner =
    fn(&Path, &[(String, TensorData)], usize, usize) -> std::result::Result<f64, String>;

type Runners = std::collections::BTreeMap<String, (&'static str, Runner)>;

fn runners() -> &'static std::sync::Mutex<Runners> {
    static R: std::sync::OnceLock<std::sync::Mutex<Runners>> = std::sync::OnceLock::new();
    R.get_or_init(Default::default)
}

/// Register `r`, named `runtime` in reports, for artifacts with extension `ext`.
pub fn register_runner(ext: &str, runtime: &'static str, r: Runner) {
    if let Ok(mut m) = runners().lock() {
        m.insert(ext.to_string(), (runtime, r));
    }
}

/// The runtime name and runner registered for `ext`.
pub fn runner(ext: &str) -> Option<(&'static str, Runner)> {
    runners().lock().ok()?.get(ext).copied()
}
