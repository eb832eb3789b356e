//! The build driver behind `kiln build`: config → import → pin shapes → passes → one artifact per
//! target → manifest. Incremental: when the manifest's recorded inputs (model, external data, config)
//! and artifacts still hash the same, nothing is rebuilt. Every file is written atomically and the
//! manifest last, so an interrupted build is simply rebuilt next time.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::accuracy::Metrics;
use crate::artifact::write_atomic;
use crate::backend::{Backend, Fp16, Precision, TargetRules};
use crate::config::{LoadedConfig, PassSpec, Target};
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::pipeline::{Pass, PassContext, PassRecord, QuantizeJob, Quantized, Quantizer};
use crate::stats::{model_stats, ModelStats};

pub const KILN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A hashed input file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InputRecord {
    pub role: String,
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// One written artifact file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArtifactRecord {
    pub target: String,
    pub backend: String,
    pub precision: String,
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// `OUTPUT/manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub kiln_version: String,
    pub inputs: Vec<InputRecord>,
    pub artifacts: Vec<ArtifactRecord>,
}

/// `OUTPUT/report.json`: what the build did (statistics, per-pass table).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The config and the model, relative to the config's folder.
    pub config: String,
    pub model_path: String,
    /// The validation section's accuracy budget (absent values: no bound).
    pub budget: Budget,
    pub model: ModelStats,
    pub optimized: ModelStats,
    pub passes: Vec<PassRecord>,
    pub targets: BTreeMap<String, Vec<ArtifactRecord>>,
    /// Per quantized target: what the quantizer did.
    pub quantization: BTreeMap<String, serde_json::Value>,
    /// Calibration: samples used, seconds, and whether statistics came from the cache.
    pub calibration: Option<CalibrationReport>,
    /// Per non-fp32 target: accuracy against the fp32 original on the validation data.
    pub accuracy: BTreeMap<String, crate::accuracy::Metrics>,
    /// Per target, what its backend reports (the NPU partition summary: ops and MACs on the NPU, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub backend: BTreeMap<String, serde_json::Value>,
    /// Targets whose backend failed, with the reason (an op it cannot lower, named with its node).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub failed: BTreeMap<String, String>,
    /// Where the build's time went, per stage and per target (seconds).
    pub timings: Timings,
    /// What passes reported, by pass (`prune`: channels removed, and kept with the reason).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pass_reports: BTreeMap<String, serde_json::Value>,
    /// When a pass changed the model's function (`prune` with `approximate: true`): the optimized model
    /// against the imported one on the validation data (or the calibration data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passes_fidelity: Option<Metrics>,
    /// Per quantized target: SQNR (dB) of every Conv/Gemm/MatMul output against the optimized fp32 model,
    /// on up to 16 calibration samples, in graph order.
    pub layer_sqnr: BTreeMap<String, Vec<LayerSqnr>>,
    /// One row per target, in config order: what the build prints at the end.
    pub summary: Vec<SummaryRow>,
    /// With `profile:`: the original, the optimized model and every artifact measured on this host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<crate::profile::Row>,
}

/// A target's line in the build summary (`report.json` → `summary`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SummaryRow {
    pub target: String,
    pub backend: String,
    pub precision: String,
    /// The target's model: the first file its backend emits (relative to the output folder); absent
    /// when it failed.
    pub artifact: Option<String>,
    /// The model's bytes, its external data (`<artifact>.data`) included; companions (an NPU partition
    /// report, a QDQ twin) are not.
    pub bytes: u64,
    /// `bytes` over the input model's (ONNX file and external data).
    pub vs_input: f64,
    /// Against the fp32 original on the validation data, where measured.
    pub top1_agreement: Option<f64>,
    pub mean_cosine: Option<f64>,
    /// Preparing (quantization, float16 search), validating and emitting this target.
    pub seconds: f64,
    /// Why the target produced no artifact.
    pub failed: Option<String>,
}

/// The summary rows of a finished build, in config order.
fn summary(
    cfg: &LoadedConfig,
    inputs: &[InputRecord],
    rec: &Record,
    timings: &Timings,
) -> Vec<SummaryRow> {
    let input_bytes: u64 = inputs
        .iter()
        .filter(|i| i.role == "model" || i.role == "external_data")
        .map(|i| i.bytes)
        .sum();
    cfg.config
        .targets
        .iter()
        .map(|t| {
            let files = rec.by_target.get(&t.name).map(Vec::as_slice).unwrap_or_default();
            let main = files.first().map(|a| a.path.clone());
            let bytes: u64 = files
                .iter()
                .filter(|a| {
                    main.as_ref().is_some_and(|m| a.path == *m || a.path == format!("{m}.data"))
                })
                .map(|a| a.bytes)
                .sum();
            let acc = rec.accuracy.get(&t.name);
            let tt = timings.targets.get(&t.name);
            SummaryRow {
                target: t.name.clone(),
                backend: t.backend.clone(),
                precision: t.precision.to_string(),
                artifact: main,
                bytes,
                vs_input: if input_bytes > 0 { bytes as f64 / input_bytes as f64 } else { 0.0 },
                top1_agreement: acc.map(|m| m.top1_agreement),
                mean_cosine: acc.map(|m| m.mean_cosine),
                seconds: tt.map_or(0.0, |t| t.prepare + t.validate + t.emit),
                failed: rec.failed.get(&t.name).cloned(),
            }
        })
        .collect()
}

/// The summary of the build that wrote `out` (an up-to-date build prints it again), if its report has one.
pub fn previous_summary(out: &Path) -> Vec<SummaryRow> {
    let Ok(bytes) = std::fs::read(out.join("report.json")) else { return Vec::new() };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return Vec::new() };
    v.get("summary").and_then(|s| serde_json::from_value(s.clone()).ok()).unwrap_or_default()
}

/// The accuracy budget every quantized target is held to.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Budget {
    pub min_top1_agreement: Option<f64>,
    pub min_cosine: Option<f64>,
    pub max_accuracy_drop: Option<f64>,
}

/// The report's `calibration` entry.
#[derive(Clone, Debug, Serialize)]
pub struct CalibrationReport {
    pub samples: usize,
    /// Every lookup came from `OUTPUT/.kiln-cache`.
    pub cached: bool,
    /// Statistics computed or looked up (one per distinct model quantized).
    pub lookups: usize,
    pub seconds: f64,
}

/// One row of the per-layer SQNR table.
#[derive(Clone, Debug, Serialize)]
pub struct LayerSqnr {
    /// The layer's output value.
    pub layer: String,
    /// The node computing it.
    pub node: String,
    pub sqnr_db: f64,
    /// Kept in float by the quantizer (mixed precision, the quality guard): its weights are not
    /// dequantized from int8 in the artifact.
    pub float: bool,
}

/// A `validation:` section's files, its loaded samples and labels.
type Validation = (Vec<PathBuf>, Vec<crate::ir::TensorData>, Option<Vec<i64>>);

/// The validation samples must fit the model (the imported one, inputs pinned).
fn check_validation(cfg: &LoadedConfig, model: &Model, v: &Option<Validation>) -> Result<()> {
    let (Some((_, samples, _)), Some(section)) = (v, &cfg.config.validation) else { return Ok(()) };
    let input = model.graph.data_input_name().unwrap_or_default();
    let source = match (&section.images, &section.tensors) {
        (Some(dir), _) => crate::calib::Source::Images {
            dir: cfg.dir.join(dir),
            preprocess: section.preprocess.clone().unwrap_or_default(),
        },
        (None, Some(t)) => crate::calib::Source::Tensors(cfg.dir.join(t)),
        _ => return Ok(()),
    };
    check_samples(model, &input, samples, &source, "validation")
}

/// Files of a `validation:` section, its loaded samples and labels.
fn validation_data(cfg: &LoadedConfig, model: &Model) -> Result<Option<Validation>> {
    let Some(v) = &cfg.config.validation else { return Ok(None) };
    let limit = v.samples.unwrap_or(usize::MAX);
    let (source, mut files) = match (&v.images, &v.tensors) {
        (Some(dir), _) => {
            let dir = cfg.dir.join(dir);
            let files = crate::calib::data::image_files(&dir, limit)?;
            (
                crate::calib::Source::Images {
                    dir,
                    preprocess: v.preprocess.clone().unwrap_or_default(),
                },
                files,
            )
        }
        (None, Some(t)) => (crate::calib::Source::Tensors(cfg.dir.join(t)), vec![cfg.dir.join(t)]),
        _ => return Ok(None),
    };
    let samples = crate::calib::data::load(&source, limit)?;
    register_other_inputs(cfg, model, "validation", &v.other_inputs, &samples)?;
    files.extend(v.other_inputs.values().map(|f| cfg.dir.join(f)));
    let labels = match &v.labels {
        Some(l) => {
            let p = cfg.dir.join(l);
            files.push(p.clone());
            let t = crate::npy::read(&p)?;
            Some(t.to_i64_vec().ok_or_else(|| Error::Npy {
                path: p.clone(),
                reason: "labels must be integers".into(),
            })?)
        }
        None => None,
    };
    Ok(Some((files, samples, labels)))
}

/// Load a section's `other_inputs:` (an .npy per input name, samples along axis 0) and register sample i
/// of each with sample i of the data input (`eval::register_companions`), so every evaluation feeds them.
fn register_other_inputs(
    cfg: &LoadedConfig,
    model: &Model,
    section: &str,
    other: &BTreeMap<String, PathBuf>,
    samples: &[crate::ir::TensorData],
) -> Result<()> {
    if other.is_empty() {
        return Ok(());
    }
    let names = model.graph.runtime_input_names();
    let mut per_input = Vec::new();
    for (name, file) in other {
        if !names.iter().skip(1).any(|n| n == name) {
            return Err(Error::Config {
                path: cfg.path.clone(),
                reason: format!(
                    "`{section}: other_inputs: {name}`: not one of the model's other inputs ({})",
                    if names.len() > 1 { names[1..].join(", ") } else { "it has none".into() }
                ),
            });
        }
        let p = cfg.dir.join(file);
        let parts =
            crate::calib::data::load(&crate::calib::Source::Tensors(p.clone()), usize::MAX)?;
        if parts.len() < samples.len() {
            return Err(Error::Npy {
                path: p,
                reason: format!(
                    "`{section}: other_inputs: {name}` has {} samples for {} data samples",
                    parts.len(),
                    samples.len()
                ),
            });
        }
        for t in parts.iter().take(1) {
            crate::eval::check_input(model, name, &t.dims).map_err(|e| Error::Npy {
                path: cfg.dir.join(file),
                reason: format!("`{section}: other_inputs: {name}`: {e}"),
            })?;
        }
        per_input.push((name.clone(), parts));
    }
    for (i, s) in samples.iter().enumerate() {
        let extra = per_input.iter().map(|(n, parts)| (n.clone(), parts[i].clone())).collect();
        crate::eval::register_companions(s, extra);
    }
    Ok(())
}

/// Every sample must fit the model's declared input dims; for image folders the error says which
/// `preprocess:` keys make them fit.
fn check_samples(
    model: &Model,
    input: &str,
    samples: &[crate::ir::TensorData],
    source: &crate::calib::Source,
    section: &str,
) -> Result<()> {
    for s in samples {
        if let Err(Error::Input { name, reason }) = crate::eval::check_input(model, input, &s.dims)
        {
            let hint = match source {
                crate::calib::Source::Images { .. } => format!(
                    "; the images of `{section}:` are resized and cropped by its `preprocess:` (resize: N, crop: M) to fit"
                ),
                crate::calib::Source::Tensors(p) => format!(" (`{section}:` tensors {})", p.display()),
            };
            return Err(Error::Input { name, reason: format!("{reason}{hint}") });
        }
    }
    Ok(())
}

/// Fail when metrics miss the budget.
fn check_budget(cfg: &LoadedConfig, target: &str, m: &crate::accuracy::Metrics) -> Result<()> {
    check_budget_with(cfg, target, m, 0.0)
}

/// The budget, tightened by `margin` on top-1 agreement and on accuracy drop.
fn check_budget_with(
    cfg: &LoadedConfig,
    target: &str,
    m: &crate::accuracy::Metrics,
    margin: f64,
) -> Result<()> {
    let Some(v) = &cfg.config.validation else { return Ok(()) };
    let mut miss = Vec::new();
    if let Some(t) = v.min_top1_agreement.map(|t| (t + margin).min(1.0)) {
        if m.top1_agreement < t {
            miss.push(format!("top-1 agreement {:.3} < {t}", m.top1_agreement));
        }
    }
    if let Some(t) = v.min_cosine {
        if m.mean_cosine < t {
            miss.push(format!("mean cosine {:.4} < {t}", m.mean_cosine));
        }
    }
    if let (Some(t), Some(a), Some(r)) =
        (v.max_accuracy_drop.map(|t| (t - margin).max(0.0)), m.accuracy, m.accuracy_reference)
    {
        if r - a > t {
            miss.push(format!("accuracy {a:.4} is {:.4} below fp32's {r:.4} (allowed {t})", r - a));
        }
    }
    if miss.is_empty() {
        return Ok(());
    }
    Err(Error::Backend {
        backend: "validation".into(),
        target: target.into(),
        reason: format!(
            "accuracy budget not met on {} validation samples: {}",
            m.samples,
            miss.join("; ")
        ),
    })
}

/// What `build` did.
pub struct Outcome {
    pub up_to_date: bool,
    pub manifest: Manifest,
    pub output_dir: PathBuf,
    /// Where the time went (absent when the build was up to date).
    pub timings: Option<Timings>,
    /// One row per target (from the previous report when up to date).
    pub summary: Vec<SummaryRow>,
    /// Targets that failed alone, with the reason; the others were written. The caller reports the
    /// build as failed ([`failure`]); the next build rebuilds.
    pub failed: BTreeMap<String, String>,
}

/// The error for a build whose targets failed.
pub fn failure(failed: &BTreeMap<String, String>) -> Error {
    let list: Vec<String> = failed.iter().map(|(t, e)| format!("target '{t}': {e}")).collect();
    Error::Backend {
        backend: "build".into(),
        target: failed.keys().cloned().collect::<Vec<_>>().join(", "),
        reason: format!(
            "{} target(s) failed (the others were written):\n  {}",
            failed.len(),
            list.join("\n  ")
        ),
    }
}

/// A Make/Ninja depfile for a finished build: `OUTPUT/manifest.json` depends on every file the build
/// read (config, model, external data, calibration and validation data, device profiles), with absolute
/// paths, so `make` and `ninja` rebuild exactly when one of them changes.
pub fn depfile(cfg: &LoadedConfig, outcome: &Outcome) -> String {
    fn escape(p: &Path) -> String {
        let mut s = String::new();
        for c in p.display().to_string().chars() {
            match c {
                ' ' | '#' => {
                    s.push('\\');
                    s.push(c)
                }
                '$' => s.push_str("$$"),
                _ => s.push(c),
            }
        }
        s
    }
    // Absolute and without `..` (lexically: symlinks stay as the user wrote them).
    let abs = |p: &Path| {
        let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                c => out.push(c.as_os_str()),
            }
        }
        out
    };
    let mut text = format!("{}:", escape(&abs(&outcome.output_dir.join("manifest.json"))));
    for i in &outcome.manifest.inputs {
        let p = if Path::new(&i.path).is_absolute() {
            PathBuf::from(&i.path)
        } else {
            cfg.dir.join(&i.path)
        };
        text.push_str(" \\\n  ");
        text.push_str(&escape(&abs(&p)));
    }
    text.push('\n');
    text
}

/// The report's `timings`: where a build's wall time went, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// Import, hashing the inputs, loading validation data.
    pub import: f64,
    pub passes: f64,
    /// Loading the calibration data and computing (or reading cached) statistics, for every target.
    pub calibration: f64,
    /// Running the fp32 original on the validation data (once; every comparison reuses it).
    pub reference: f64,
    /// Per target, by name.
    pub targets: BTreeMap<String, TargetTimings>,
    /// Measuring latencies (`profile:`).
    #[serde(default)]
    pub profile: f64,
    pub total: f64,
}

/// One target's stages, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetTimings {
    /// Quantization (calibration excluded) or the float16 island search; 0 for float targets.
    pub prepare: f64,
    /// Accuracy against the fp32 original on the validation data.
    pub validate: f64,
    /// The backend: lowering, serializing, writing the files.
    pub emit: f64,
    /// The quantization's own stages within `prepare` (equalization, calibration, range refinement, build,
    /// mixed precision, quality guard), from its summary.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub stages: BTreeMap<String, f64>,
}

/// Where the build's progress lines go (from any target's thread).
pub type Log<'a> = &'a (dyn Fn(&str) + Sync);

/// Resolves pass specs to passes (the binary wires in kiln-passes).
pub type PassFactory<'a> = &'a dyn Fn(&PassSpec) -> Result<Box<dyn Pass>>;

pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only map of a file we only hash.
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Ok((0, hex(&Sha256::digest([]))));
    }
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    Ok((len, hex(&Sha256::digest(&map[..]))))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `path` relative to `base` (both canonicalized), with `..` where needed, so manifests do not depend
/// on where the checkout lives.
fn rel(path: &Path, base: &Path) -> String {
    use std::path::Component;
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (p, b) = (canon(path), canon(base));
    let pc: Vec<Component> = p.components().collect();
    let bc: Vec<Component> = b.components().collect();
    let common = pc.iter().zip(&bc).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return p.display().to_string();
    }
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &pc[common..] {
        out.push(c.as_os_str());
    }
    out.display().to_string()
}

fn input_record(role: &str, path: &Path, base: &Path) -> Result<InputRecord> {
    let (bytes, sha256) = sha256_file(path)?;
    Ok(InputRecord { role: role.into(), path: rel(path, base), bytes, sha256 })
}

/// True when the previous manifest still describes the current inputs and artifacts.
fn up_to_date(cfg: &LoadedConfig, out: &Path) -> Option<Manifest> {
    if std::fs::read_to_string(out.join(STAMP)).ok()? != build_stamp() {
        return None;
    }
    let text = std::fs::read(out.join("manifest.json")).ok()?;
    let m: Manifest = serde_json::from_slice(&text).ok()?;
    if m.kiln_version != KILN_VERSION {
        return None;
    }
    let cfg_sha = hex(&Sha256::digest(&cfg.bytes));
    if !m.inputs.iter().any(|i| i.role == "config" && i.sha256 == cfg_sha) {
        return None;
    }
    for i in &m.inputs {
        let p = if Path::new(&i.path).is_absolute() {
            PathBuf::from(&i.path)
        } else {
            cfg.dir.join(&i.path)
        };
        if i.role != "config" && sha256_file(&p).ok()?.1 != i.sha256 {
            return None;
        }
    }
    // The same targets (`kiln build --target` builds a subset), each with its files.
    let built: std::collections::BTreeSet<&str> =
        m.artifacts.iter().map(|a| a.target.as_str()).collect();
    let wanted: std::collections::BTreeSet<&str> =
        cfg.config.targets.iter().map(|t| t.name.as_str()).collect();
    if built != wanted {
        return None;
    }
    for a in &m.artifacts {
        if sha256_file(&out.join(&a.path)).ok()?.1 != a.sha256 {
            return None;
        }
    }
    Some(m)
}

/// File in the output folder identifying the kiln executable that wrote it (kept out of the manifest so
/// the manifest stays byte-identical across machines): a rebuilt kiln rebuilds the artifacts.
const STAMP: &str = ".kiln-stamp";

fn build_stamp() -> String {
    let exe = std::env::current_exe().ok().and_then(|p| std::fs::metadata(p).ok());
    let (len, mtime) = exe
        .map(|m| {
            (
                m.len(),
                m.modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            )
        })
        .unwrap_or((0, 0));
    format!("kiln {KILN_VERSION} exe {len} {mtime}\n")
}

/// Run passes in order, recording before/after statistics.
/// A model at opset 11 or 12 is first upgraded to 13 (`onnx::upgrade`), recorded as the pass `upgrade`;
/// an empty pass list (a round trip) leaves it as written.
pub fn run_passes(model: &mut Model, passes: &[Box<dyn Pass>], cx: &mut PassContext) -> Result<()> {
    use crate::onnx::upgrade;
    if !passes.is_empty() && (upgrade::OLDEST..upgrade::TARGET).contains(&model.opset()) {
        crate::pipeline::run_pass(&UpgradePass, model, cx, None)?;
    }
    for p in passes {
        crate::pipeline::run_pass(p.as_ref(), model, cx, None)?;
    }
    Ok(())
}

/// `onnx::upgrade` as a pass: its report (from, to, nodes rewritten) goes to report.json's `pass_reports`.
struct UpgradePass;

impl Pass for UpgradePass {
    fn name(&self) -> &'static str {
        "upgrade"
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<bool> {
        let Some(u) = crate::onnx::upgrade::upgrade(model)? else { return Ok(false) };
        let json = serde_json::to_value(&u).map_err(|e| Error::invalid(e.to_string()))?;
        cx.reports.push(("upgrade".into(), json));
        Ok(true)
    }
}

/// The calibration data files a config names (sorted, as many as `samples` allows).
fn calibration_files(cfg: &LoadedConfig) -> Result<(crate::calib::Source, Vec<PathBuf>)> {
    let c = cfg.config.calibration.as_ref().ok_or_else(|| Error::Config {
        path: cfg.path.clone(),
        reason: "no calibration section".into(),
    })?;
    let limit = c.samples.unwrap_or(usize::MAX);
    let others = c.other_inputs.values().map(|f| cfg.dir.join(f));
    if let Some(t) = &c.tensors {
        let p = cfg.dir.join(t);
        return Ok((
            crate::calib::Source::Tensors(p.clone()),
            [p].into_iter().chain(others).collect(),
        ));
    }
    let dir = cfg.dir.join(c.images.as_ref().ok_or_else(|| Error::Config {
        path: cfg.path.clone(),
        reason: "calibration: no images or tensors".into(),
    })?);
    let mut files = crate::calib::data::image_files(&dir, limit)?;
    files.extend(others);
    Ok((
        crate::calib::Source::Images { dir, preprocess: c.preprocess.clone().unwrap_or_default() },
        files,
    ))
}

/// The calibration samples for passes that need data (`prune: { method: channel }`), checked against the
/// imported model.
fn pass_calibration(
    cfg: &LoadedConfig,
    model: &Model,
) -> Result<crate::pipeline::CalibrationSamples> {
    load_calibration(
        cfg,
        model,
        "a pass ranks or refits on calibration data (prune: { method: channel }): add a `calibration:` section",
    )
}

/// The config's calibration samples (other inputs registered), checked against `model`; `missing` is the
/// error when the config has no `calibration:` section.
fn load_calibration(
    cfg: &LoadedConfig,
    model: &Model,
    missing: &str,
) -> Result<crate::pipeline::CalibrationSamples> {
    let c = cfg
        .config
        .calibration
        .as_ref()
        .ok_or_else(|| Error::Config { path: cfg.path.clone(), reason: missing.into() })?;
    let (source, _) = calibration_files(cfg)?;
    let samples = crate::calib::data::load(&source, c.samples.unwrap_or(usize::MAX))?;
    register_other_inputs(cfg, model, "calibration", &c.other_inputs, &samples)?;
    let input =
        model.graph.data_input_name().ok_or_else(|| Error::invalid("the model has no input"))?;
    check_samples(model, &input, &samples, &source, "calibration")?;
    Ok(crate::pipeline::CalibrationSamples { input, samples })
}

/// The calibration samples of a build, and statistics over them for any model the quantizer asks about
/// (the optimized model, or its equalized form), from `OUTPUT/.kiln-cache` when the model, data and
/// settings hash the same as last time.
struct Calibrator<'a> {
    cfg: &'a LoadedConfig,
    cache_dir: PathBuf,
    data_hashes: Vec<String>,
    samples: Vec<crate::ir::TensorData>,
    input: String,
    /// Full-integer targets also need the values before fused activations.
    preact: bool,
    /// Every lookup of the build, for the report: (cached, seconds).
    lookups: Mutex<Vec<(bool, f64)>>,
    /// Log lines not yet printed (the quantizer calls `stats` where the build's log is not at hand).
    pending: Mutex<Vec<String>>,
    /// One lock per statistics key: targets building in parallel that need the same statistics
    /// compute them once (the second finds them in the cache).
    keys: Mutex<BTreeMap<String, Arc<Mutex<()>>>>,
}

impl<'a> Calibrator<'a> {
    fn new(
        cfg: &'a LoadedConfig,
        model: &Model,
        out: &Path,
        inputs: &[InputRecord],
        preact: bool,
    ) -> Result<Self> {
        let crate::pipeline::CalibrationSamples { input, samples } =
            load_calibration(cfg, model, "no calibration section")?;
        let data_hashes =
            inputs.iter().filter(|i| i.role == "calibration").map(|i| i.sha256.clone()).collect();
        Ok(Calibrator {
            cfg,
            cache_dir: out.join(".kiln-cache"),
            data_hashes,
            samples,
            input,
            preact,
            lookups: Default::default(),
            pending: Default::default(),
            keys: Default::default(),
        })
    }

    fn stats(&self, model: &Model) -> Result<crate::calib::Calibration> {
        let mut h = Sha256::new();
        // Bumped whenever what the statistics cover changes (v3: pre-activation values too, when a
        // full-integer target needs them).
        h.update(b"kiln-calibration-v3");
        h.update([u8::from(self.preact)]);
        h.update(crate::onnx::to_bytes(model, &Default::default())?);
        for d in &self.data_hashes {
            h.update(d.as_bytes());
        }
        h.update(serde_json::to_vec(&self.cfg.config.calibration).unwrap_or_default());
        let key = hex(&h.finalize());
        let cache = self.cache_dir.join(format!("calibration-{}.json", &key[..32]));
        let lock = locked(&self.keys).entry(key.clone()).or_default().clone();
        let _computing = locked(&lock);
        if let Ok(bytes) = std::fs::read(&cache) {
            if let Ok(stats) = serde_json::from_slice::<crate::calib::Calibration>(&bytes) {
                locked(&self.lookups).push((true, 0.0));
                locked(&self.pending).push("calibration statistics: cached".into());
                return Ok(stats);
            }
        }
        let t0 = std::time::Instant::now();
        let stats = crate::calib::collect_with(model, &self.input, &self.samples, self.preact)?;
        let secs = t0.elapsed().as_secs_f64();
        locked(&self.lookups).push((false, secs));
        locked(&self.pending)
            .push(format!("calibrated on {} samples in {secs:.1} s", stats.samples));
        write_atomic(&cache, &serde_json::to_vec(&stats).unwrap_or_default())?;
        Ok(stats)
    }

    /// Log what happened since the last call.
    fn flush(&self, log: Log) {
        let lines: Vec<String> = locked(&self.pending).drain(..).collect();
        lines.iter().for_each(|line| log(line));
    }

    /// The report entry: every calibration of the build.
    fn report(&self) -> Option<CalibrationReport> {
        let lookups = locked(&self.lookups);
        (!lookups.is_empty()).then(|| CalibrationReport {
            samples: self.samples.len(),
            cached: lookups.iter().all(|l| l.0),
            lookups: lookups.len(),
            seconds: lookups.iter().map(|l| l.1).sum(),
        })
    }
}

/// The lock's guard, also when another thread panicked holding it (the data is still consistent:
/// every guarded update is a single push or insert).
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Quantized models by quantization settings: targets with the same settings share one (and one
/// quality-guard failure). Each key has its own lock, held while its model is computed.
type SharedQuantized =
    Mutex<BTreeMap<String, Arc<Mutex<Option<std::result::Result<Quantized, String>>>>>>;

/// `f` over `items` on up to `jobs` threads (each takes the next item when done), results in item order.
fn parallel<T: Sync, R: Send>(items: &[T], jobs: usize, f: &(dyn Fn(&T) -> R + Sync)) -> Vec<R> {
    let jobs = jobs.clamp(1, items.len().max(1));
    if jobs == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                *locked(&slots[i]) = Some(r);
            });
        }
    });
    slots.into_iter().filter_map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner())).collect()
}

/// The optimized model against the imported one, after a pass that changed its function: on the
/// validation data, else on (up to 64 of) the calibration samples, else not measured (said in the log).
fn passes_fidelity(
    cfg: &LoadedConfig,
    original: &Model,
    model: &Model,
    validation: &Option<Validation>,
    why: &[String],
    log: Log,
) -> Result<Option<Metrics>> {
    let input = original.graph.data_input_name().unwrap_or_default();
    let owned;
    let (samples, labels): (&[crate::ir::TensorData], Option<&[i64]>) = match validation {
        Some((_, s, l)) => (s, l.as_deref()),
        None if cfg.config.calibration.is_some() => {
            let (source, _) = calibration_files(cfg)?;
            owned = crate::calib::data::load(&source, 64)?;
            if let Some(c) = &cfg.config.calibration {
                register_other_inputs(cfg, original, "calibration", &c.other_inputs, &owned)?;
            }
            (&owned, None)
        }
        None => {
            log(&format!(
                "warning: {}; no validation or calibration data to measure it",
                why.join("; ")
            ));
            return Ok(None);
        }
    };
    let m = crate::accuracy::compare(original, model, &input, samples, labels)?;
    log(&format!(
        "{}: against the imported model, top-1 agreement {:.3}, mean cosine {:.4}, SQNR {:.1} dB on {} samples",
        why.join("; "),
        m.top1_agreement,
        m.mean_cosine,
        m.sqnr_db,
        m.samples
    ));
    // A measured loss is the user's to accept, through the validation budget; without one, a model the
    // passes broke fails the build instead of shipping.
    let budget = cfg.config.validation.as_ref().is_some_and(|v| {
        v.min_top1_agreement.is_some() || v.min_cosine.is_some() || v.max_accuracy_drop.is_some()
    });
    if budget {
        check_budget(cfg, "(the optimized model, after passes)", &m)?;
    } else if m.sqnr_db < PASS_FLOOR_DB {
        return Err(Error::Pass {
            pass: "passes".into(),
            reason: format!(
                "{}: the optimized model measures SQNR {:.1} dB (top-1 agreement {:.3}) against the imported one on {} samples: it is broken. A validation budget (min_top1_agreement, min_cosine, max_accuracy_drop) states what loss is acceptable; a pruned model is best fine-tuned with its mask and imported as trained",
                why.join("; "),
                m.sqnr_db,
                m.top1_agreement,
                m.samples
            ),
        });
    }
    Ok(Some(m))
}

/// Below this output SQNR (dB) against the imported model, and without a validation budget, a model the
/// passes changed is refused (the quality guard's default floor for quantized models).
const PASS_FLOOR_DB: f64 = 4.0;

/// Every target with its backend and rules, in config order (checked when the config loaded).
fn plan<'a>(
    cfg: &'a LoadedConfig,
    backends: &'a [Box<dyn Backend>],
) -> Result<Vec<(&'a Target, &'a dyn Backend, TargetRules)>> {
    let targets = &cfg.config.targets;
    if cfg.rules.len() != targets.len() {
        return Err(Error::Config {
            path: cfg.path.clone(),
            reason: "targets were not checked by their backends".into(),
        });
    }
    targets
        .iter()
        .zip(&cfg.rules)
        .map(|(t, r)| {
            let b =
                backends.iter().find(|b| b.name() == t.backend).ok_or_else(|| Error::Config {
                    path: cfg.path.clone(),
                    reason: format!("target '{}': unknown backend '{}'", t.name, t.backend),
                })?;
            Ok((t, b.as_ref(), *r))
        })
        .collect()
}

/// Import the model and record every input file the build depends on (config, model, external data,
/// validation and calibration data).
fn load_inputs(
    cfg: &LoadedConfig,
    plan: &[(&Target, &dyn Backend, TargetRules)],
    log: Log,
) -> Result<(Model, Vec<InputRecord>, Option<Validation>)> {
    let model_path = cfg.model_path();
    log(&format!("importing {}", model_path.display()));
    let model = crate::onnx::load(&model_path)?;
    let mut inputs = vec![InputRecord {
        role: "config".into(),
        path: rel(&cfg.path, &cfg.dir),
        bytes: cfg.bytes.len() as u64,
        sha256: hex(&Sha256::digest(&cfg.bytes)),
    }];
    inputs.push(input_record("model", &model_path, &cfg.dir)?);
    for f in &model.external_files {
        inputs.push(input_record("external_data", f, &cfg.dir)?);
    }
    let targets = &cfg.config.targets;
    // Non-fp32 targets are measured on it, and so is a pass that changes the model's function (which
    // is known only once passes ran): a validation section is always read.
    let validation = validation_data(cfg, &model)?;
    if let Some((files, _, _)) = &validation {
        for f in files {
            inputs.push(input_record("validation", f, &cfg.dir)?);
        }
    }
    if targets.iter().any(|t| t.precision == Precision::Int8) {
        for f in calibration_files(cfg)?.1 {
            inputs.push(input_record("calibration", &f, &cfg.dir)?);
        }
    }
    for (t, b, _) in plan {
        for f in b.input_files(t) {
            let rec = input_record("device", &f, &cfg.dir)?;
            if !inputs.contains(&rec) {
                inputs.push(rec);
            }
        }
    }
    Ok((model, inputs, validation))
}

/// What a build shares between its targets.
struct Stages<'a> {
    cfg: &'a LoadedConfig,
    /// The imported model (shapes pinned), what accuracy is measured against.
    original: Model,
    /// After the configured passes: what every target starts from.
    model: Model,
    validation: Option<Validation>,
    /// The original's outputs on the validation samples, run once for every comparison.
    reference: Option<Vec<Vec<f64>>>,
    /// Accuracy of quantized models shared by several targets, by quantization settings.
    validated: Mutex<BTreeMap<String, Metrics>>,
    calibrator: Option<Calibrator<'a>>,
    quantizer: Option<&'a dyn Quantizer>,
}

/// A target's model, ready for its backend, and what preparing it reported.
struct Prepared {
    model: Option<Model>,
    quantization: Option<serde_json::Value>,
    layer_sqnr: Option<Vec<LayerSqnr>>,
    /// The quantization settings' key, when the model is shared with targets of the same settings.
    shared: Option<String>,
}

/// Why a target produced no artifact: it alone fails (`Target`), or the whole build stops (`Build`).
enum Failure {
    Target(String),
    Build(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Build(e)
    }
}

impl Stages<'_> {
    fn has_budget(&self) -> bool {
        self.cfg.config.validation.as_ref().is_some_and(|v| {
            v.min_top1_agreement.is_some()
                || v.min_cosine.is_some()
                || v.max_accuracy_drop.is_some()
        })
    }

    /// int8: quantize by the target's rules (targets with the same settings share one quantized model,
    /// and a quality-guard failure), then the per-layer SQNR table.
    fn quantize(
        &self,
        t: &Target,
        rules: &TargetRules,
        shared: &SharedQuantized,
        calibrating: &std::cell::Cell<f64>,
        log: Log,
    ) -> std::result::Result<Prepared, Failure> {
        let cal = self.calibrator.as_ref().ok_or_else(|| Error::invalid("no calibration"))?;
        let (samples, input) = (&cal.samples, &cal.input);
        let q = self.quantizer.ok_or_else(|| Error::Backend {
            backend: t.backend.clone(),
            target: t.name.clone(),
            reason: "this build of kiln has no quantizer".into(),
        })?;
        let ccfg =
            self.cfg.config.calibration.as_ref().ok_or_else(|| Error::invalid("no calibration"))?;
        let check = |cand: &Model| -> Result<(bool, crate::accuracy::Metrics)> {
            let Some((_, vs, labels)) = &self.validation else {
                return Err(Error::invalid("no validation data"));
            };
            let vin = self.original.graph.data_input_name().unwrap_or_default();
            let refs =
                self.reference.as_ref().ok_or_else(|| Error::invalid("no reference outputs"))?;
            let m = crate::accuracy::compare_with(refs, cand, &vin, vs, labels.as_deref())?;
            // The search aims past the budget by a margin: kiln simulates Q/DQ in float, integer
            // runtimes round differently, and a candidate exactly at the threshold can miss it there.
            let margin =
                self.cfg.config.validation.as_ref().and_then(|v| v.search_margin).unwrap_or(0.01);
            Ok((check_budget_with(self.cfg, &t.name, &m, margin).is_ok(), m))
        };
        let budget: Option<crate::pipeline::Budget> =
            if self.has_budget() && self.validation.is_some() { Some(&check) } else { None };
        let r = rules.quant;
        let key = serde_json::json!([
            r.full_integer,
            r.fused_activation as usize,
            r.symmetric_activations,
            format!("{:?}", r.placement),
            r.int32_bias,
            r.shared_scales,
            t.weights,
            t.activations,
            t.bias_correction,
            t.cle,
            t.refine_ranges,
            t.reduce_range,
            t.min_calibration_sqnr_db
        ])
        .to_string();
        let slot = locked(shared).entry(key.clone()).or_default().clone();
        let mut slot = locked(&slot);
        let quantized = match slot.as_ref() {
            Some(done) => done.clone(),
            None => {
                // Time spent on statistics (computing them, or waiting for another target to) is the
                // build's calibration time, not this target's.
                let calibrate = |m: &Model| {
                    let t0 = std::time::Instant::now();
                    let stats = cal.stats(m);
                    calibrating.set(calibrating.get() + t0.elapsed().as_secs_f64());
                    stats
                };
                let job = QuantizeJob {
                    model: &self.model,
                    target: t,
                    rules: &r,
                    calibrate: &calibrate,
                    calibration: ccfg,
                    input,
                    samples,
                    budget,
                };
                let done = q.quantize(&job);
                cal.flush(log);
                // A model the quality guard measured as broken fails its target alone (and every
                // target sharing its settings); any other error stops the build.
                let done = match done {
                    Err(Error::Guard(why)) => Err(why),
                    done => Ok(done?),
                };
                *slot = Some(done.clone());
                done
            }
        };
        drop(slot);
        let Quantized { model, summary, reference } =
            quantized.map_err(|why| Failure::Target(Error::Guard(why).to_string()))?;
        let is_layer = |op: &crate::ir::Op| {
            matches!(
                op,
                crate::ir::Op::Conv { .. } | crate::ir::Op::Gemm { .. } | crate::ir::Op::MatMul
            )
        };
        let g = &self.model.graph;
        let layers: Vec<(String, String)> = g
            .topo_order()?
            .into_iter()
            .filter(|id| is_layer(&g.nodes[*id].op))
            .filter_map(|id| {
                let n = &g.nodes[id];
                n.output(0).map(|v| (g.value(v).name.clone(), n.name.clone()))
            })
            .collect();
        let layer_outputs: Vec<String> = layers.iter().map(|(v, _)| v.clone()).collect();
        // Layers of the quantized model whose weights (input 1) no DequantizeLinear produces.
        let q = &model.graph;
        let float: std::collections::HashSet<&str> = q
            .nodes
            .node_indices()
            .filter(|id| is_layer(&q.nodes[*id].op))
            .filter(|id| {
                let w = q.nodes[*id].inputs.get(1).copied().flatten();
                let p = w.and_then(|v| q.value(v).producer).map(|(p, _)| &q.nodes[p].op);
                !matches!(p, Some(crate::ir::Op::DequantizeLinear { .. }))
            })
            .map(|id| q.nodes[id].name.as_str())
            .collect();
        let probe: Vec<crate::ir::TensorData> = samples.iter().take(16).cloned().collect();
        let table = crate::accuracy::value_sqnr(
            reference.as_ref().unwrap_or(&self.model),
            &model,
            input,
            &probe,
            &layer_outputs,
        )?;
        let node_of: BTreeMap<&str, &str> =
            layers.iter().map(|(v, n)| (v.as_str(), n.as_str())).collect();
        let table = table
            .into_iter()
            .map(|(layer, sqnr_db)| {
                let node = node_of.get(layer.as_str()).copied().unwrap_or_default().to_string();
                let float = float.contains(node.as_str());
                LayerSqnr { layer, node, sqnr_db, float }
            })
            .collect();
        Ok(Prepared {
            model: Some(model),
            quantization: Some(summary),
            layer_sqnr: Some(table),
            shared: Some(key),
        })
    }

    /// fp16: layers named in `fp32_layers` kept float32, and with validation data, the layers whose
    /// float16 error passes the bound (`fp16_max_error`) too.
    fn fp16(&self, t: &Target, rules: &TargetRules, log: Log) -> Result<Prepared> {
        if t.fp32_layers.is_empty() && self.validation.is_none() {
            log(&format!("target {}: no validation data, so float16 error is not measured and every layer is float16", t.name));
            return Ok(Prepared {
                model: None,
                quantization: None,
                layer_sqnr: None,
                shared: None,
            });
        }
        let mut m = self.model.clone();
        for name in &t.fp32_layers {
            let id = m.graph.nodes.node_indices().find(|id| &m.graph.nodes[*id].name == name).ok_or_else(|| Error::Config {
                path: self.cfg.path.clone(),
                reason: format!("target '{}': fp32_layers names '{name}', which is not a node of the optimized model (see `kiln dump`)", t.name),
            })?;
            if let Some(n) = m.graph.node_mut(id) {
                n.metadata.push((crate::ir::meta::WEIGHTS.into(), crate::ir::meta::FP32.into()));
            }
        }
        let mut summary = serde_json::json!({ "fp32_layers_configured": t.fp32_layers });
        if let (Some((_, vs, _)), Some(q)) = (&self.validation, self.quantizer) {
            let vin = self.model.graph.data_input_name().unwrap_or_default();
            let bound = t.fp16_max_error.unwrap_or(0.01);
            let (mm, s) = q.fp16_islands(&m, &vin, vs, bound, rules.fp16 == Fp16::Compute)?;
            let kept = s["fp32_layers"].as_array().map(|a| a.len()).unwrap_or(0);
            let err = s["max_rel_error"].as_f64().unwrap_or(0.0);
            if s["bound_met"].as_bool() == Some(false) {
                // The search could not meet the bound: say so, and why (report.json has the same).
                log(&format!(
                    "target {}: WARNING: float16 error {err:.2e} exceeds the bound {bound} with {kept} layer(s) kept float32{}; raise fp16_max_error to accept it, or name layers in fp32_layers",
                    t.name,
                    s["search_stopped"].as_str().map(|w| format!(" ({w})")).unwrap_or_default()
                ));
            } else {
                log(&format!(
                    "target {}: float16 error {err:.2e} with {kept} layer(s) kept float32 (bound {bound})",
                    t.name
                ));
            }
            summary = s;
            summary["fp32_layers_configured"] = serde_json::json!(t.fp32_layers);
            m = mm;
        }
        Ok(Prepared { model: Some(m), quantization: Some(summary), layer_sqnr: None, shared: None })
    }

    /// int8 targets: accuracy against the fp32 original on the validation data, held to the budget
    /// (measured once per quantized model that targets share: `shared`).
    fn validate(
        &self,
        t: &Target,
        m: &Model,
        shared: Option<&str>,
        log: Log,
    ) -> Result<Option<Metrics>> {
        let (Some((_, samples, labels)), Precision::Int8) = (&self.validation, t.precision) else {
            return Ok(None);
        };
        let known = shared.and_then(|k| locked(&self.validated).get(k).cloned());
        let metrics = match known {
            Some(m) => m,
            None => {
                let input = self.original.graph.data_input_name().unwrap_or_default();
                let refs = self
                    .reference
                    .as_ref()
                    .ok_or_else(|| Error::invalid("no reference outputs"))?;
                let m = crate::accuracy::compare_with(refs, m, &input, samples, labels.as_deref())?;
                if let Some(k) = shared {
                    locked(&self.validated).insert(k.to_string(), m.clone());
                }
                m
            }
        };
        log(&format!(
            "target {}: top-1 agreement {:.3}, mean cosine {:.4}, SQNR {:.1} dB on {} samples",
            t.name, metrics.top1_agreement, metrics.mean_cosine, metrics.sqnr_db, metrics.samples
        ));
        check_budget(self.cfg, &t.name, &metrics)?;
        Ok(Some(metrics))
    }
}

/// One target's results, gathered into the [`Record`] in config order.
struct TargetDone {
    name: String,
    quantization: Option<serde_json::Value>,
    layer_sqnr: Option<Vec<LayerSqnr>>,
    accuracy: Option<Metrics>,
    backend: Option<serde_json::Value>,
    artifacts: Vec<ArtifactRecord>,
    failed: Option<String>,
    timings: Option<TargetTimings>,
}

impl Stages<'_> {
    /// One target: prepare by its precision (quantize, float16 search), validate, emit and write its
    /// files. A failure of this target alone is in the result; an error stops the build.
    fn target(
        &self,
        (t, backend, rules): &(&Target, &dyn Backend, TargetRules),
        shared: &SharedQuantized,
        out: &Path,
        log: Log,
    ) -> Result<TargetDone> {
        let secs = |t: std::time::Instant| t.elapsed().as_secs_f64();
        log(&format!("target {}: {} {}", t.name, t.backend, t.precision));
        let mut done = TargetDone {
            name: t.name.clone(),
            quantization: None,
            layer_sqnr: None,
            accuracy: None,
            backend: None,
            artifacts: Vec::new(),
            failed: None,
            timings: None,
        };
        let (t0, calibrating) = (std::time::Instant::now(), std::cell::Cell::new(0.0));
        let prepared = match t.precision {
            Precision::Int8 => self.quantize(t, rules, shared, &calibrating, log),
            Precision::Fp16 => self.fp16(t, rules, log).map_err(Failure::Build),
            _ => Ok(Prepared { model: None, quantization: None, layer_sqnr: None, shared: None }),
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(Failure::Build(e)) => return Err(e),
            Err(Failure::Target(why)) => {
                log(&format!("target {}: FAILED: {why}", t.name));
                done.failed = Some(why);
                return Ok(done);
            }
        };
        done.quantization = prepared.quantization;
        done.layer_sqnr = prepared.layer_sqnr;
        // The quantization's stage times go to the timings: the report's `quantization` stays the same
        // for every run and schedule.
        let stages = done
            .quantization
            .as_mut()
            .and_then(|q| q.as_object_mut())
            .and_then(|q| q.remove("seconds"))
            .and_then(|s| s.as_object().cloned())
            .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect())
            .unwrap_or_default();
        let mut tt = TargetTimings {
            prepare: (secs(t0) - calibrating.get()).max(0.0),
            stages,
            ..Default::default()
        };
        let target_model = prepared.model.as_ref().unwrap_or(&self.model);
        let t0 = std::time::Instant::now();
        done.accuracy = self.validate(t, target_model, prepared.shared.as_deref(), log)?;
        tt.validate = secs(t0);
        let t0 = std::time::Instant::now();
        // A target whose backend cannot express the model fails alone: the others still build.
        let emitted = match backend.emit(target_model, t) {
            Ok(e) => e,
            Err(e) => {
                log(&format!("target {}: FAILED: {e}", t.name));
                done.failed = Some(e.to_string());
                return Ok(done);
            }
        };
        done.backend = emitted.summary;
        for f in emitted.files {
            let rel_path = format!("{}/{}", t.name, f.rel_path);
            write_atomic(&out.join(&rel_path), &f.bytes)?;
            done.artifacts.push(ArtifactRecord {
                target: t.name.clone(),
                backend: t.backend.clone(),
                precision: t.precision.to_string(),
                path: rel_path,
                bytes: f.bytes.len() as u64,
                sha256: hex(&Sha256::digest(&f.bytes)),
            });
        }
        tt.emit = secs(t0);
        done.timings = Some(tt);
        Ok(done)
    }
}

impl Record {
    fn add(&mut self, d: TargetDone, timings: &mut Timings) {
        let name = d.name;
        if let Some(q) = d.quantization {
            self.quantization.insert(name.clone(), q);
        }
        if let Some(t) = d.layer_sqnr {
            self.layer_sqnr.insert(name.clone(), t);
        }
        if let Some(m) = d.accuracy {
            self.accuracy.insert(name.clone(), m);
        }
        if let Some(s) = d.backend {
            self.backend.insert(name.clone(), s);
        }
        if let Some(why) = d.failed {
            self.failed.insert(name.clone(), why);
        }
        if let Some(t) = d.timings {
            timings.targets.insert(name.clone(), t);
        }
        if !d.artifacts.is_empty() {
            self.by_target.insert(name, d.artifacts.clone());
        }
        self.artifacts.extend(d.artifacts);
    }
}

/// What the build wrote and measured, gathered target by target.
#[derive(Default)]
struct Record {
    artifacts: Vec<ArtifactRecord>,
    by_target: BTreeMap<String, Vec<ArtifactRecord>>,
    quantization: BTreeMap<String, serde_json::Value>,
    accuracy: BTreeMap<String, Metrics>,
    layer_sqnr: BTreeMap<String, Vec<LayerSqnr>>,
    backend: BTreeMap<String, serde_json::Value>,
    failed: BTreeMap<String, String>,
}

/// `profile:`: the original and the optimized model in kiln's evaluator, each artifact where it runs
/// here (ONNX: the evaluator; TFLite: LiteRT's benchmark tool). Fed the first validation (else
/// calibration) sample. What cannot be measured is noted, or fails the build with `profile: required`.
fn profile_rows(
    stages: &Stages,
    rows: &[SummaryRow],
    out: &Path,
    input_bytes: Option<u64>,
    log: Log,
) -> Result<Vec<crate::profile::Row>> {
    use crate::profile::{self as p, Mode, Row};
    let required = stages.cfg.config.profile == Mode::Required;
    let (warmup, runs, threads) = (3, 20, 2);
    let input = stages.original.graph.data_input_name();
    let sample = stages
        .validation
        .as_ref()
        .and_then(|(_, s, _)| s.first().cloned())
        .or_else(|| stages.calibrator.as_ref().and_then(|c| c.samples.first().cloned()));
    let given: Vec<(String, crate::ir::TensorData)> = match (input, sample) {
        (Some(i), Some(s)) => vec![(i, s)],
        _ => Vec::new(),
    };
    let tract = |m: &Model| -> Result<f64> {
        let feeds = p::feeds(m, &given)?;
        p::onnx_median_ms(m, &feeds, warmup, runs)
    };
    let macs = model_stats(&stages.model).macs;
    let mut out_rows = vec![
        Row {
            stage: "original".into(),
            artifact: None,
            runtime: Some("tract".into()),
            latency_ms: Some(tract(&stages.original)?),
            bytes: input_bytes,
            macs: model_stats(&stages.original).macs,
            top1_agreement: None,
            note: None,
            device: None,
            estimated_ms: None,
            estimate: None,
        },
        Row {
            stage: "optimized".into(),
            artifact: None,
            runtime: Some("tract".into()),
            latency_ms: Some(tract(&stages.model)?),
            bytes: None,
            macs,
            top1_agreement: None,
            note: None,
            device: None,
            estimated_ms: None,
            estimate: None,
        },
    ];
    let tool = p::litert_benchmark();
    for r in rows.iter().filter(|r| r.failed.is_none()) {
        let Some(a) = &r.artifact else { continue };
        let path = out.join(a);
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let measured: std::result::Result<(String, f64), String> = match (ext, &tool) {
            ("onnx", _) => crate::onnx::load(&path)
                .and_then(|mut m| {
                    let pins: crate::shape::Pins =
                        given.iter().map(|(n, t)| (n.clone(), t.dims.clone())).collect();
                    crate::shape::infer(&mut m, &pins)?;
                    tract(&m)
                })
                .map(|ms| ("tract".to_string(), ms))
                .map_err(|e| e.to_string()),
            ("tflite", Some(t)) => p::tflite_median_ms(t, &path, warmup, runs, threads)
                .map(|ms| ("litert".to_string(), ms))
                .map_err(|e| e.to_string()),
            ("tflite", None) => Err(p::LITERT_HINT.to_string()),
            _ => match p::runner(ext) {
                Some((name, run)) => {
                    run(&path, &given, warmup, runs).map(|ms| (name.to_string(), ms))
                }
                None => Err(format!("a .{ext} artifact is not run by kiln's profiler")),
            },
        };
        let (runtime, latency_ms, note) = match measured {
            Ok((rt, ms)) => (Some(rt), Some(ms), None),
            Err(e) if required => {
                return Err(Error::Config {
                    path: stages.cfg.path.clone(),
                    reason: format!(
                        "profile: required, and target {} cannot be measured here: {e}",
                        r.target
                    ),
                })
            }
            Err(e) => (None, None, Some(e)),
        };
        // An estimate on the target's device, where its profile has a cost model (phone CPUs: tflite's
        // `device:`), from the optimized IR at the target's precision.
        let device = stages
            .cfg
            .config
            .targets
            .iter()
            .find(|t| t.name == r.target)
            .and_then(|t| t.options.get("device").and_then(|d| d.as_str()).map(str::to_string));
        let cost = device.as_deref().and_then(|d| crate::cost::device(d).ok().map(|c| (d, c)));
        let estimate = match cost {
            Some((d, c)) => {
                // TFLite's fp16 and dynamic models compute in float32 on a CPU.
                let wanted = if r.precision == "int8" { "int8" } else { "fp32" };
                let precision = if c.precisions.contains_key(r.precision.as_str()) {
                    r.precision.as_str()
                } else {
                    wanted
                };
                match crate::cost::estimate(&stages.model, d, &c, precision) {
                    Ok(e) => {
                        log(&format!(
                            "profile: {} on {d}: {:.3} ms ESTIMATED ({precision}, {} threads; kiln's cost model)",
                            r.target, e.total_ms, e.threads
                        ));
                        Some(e)
                    }
                    Err(e) => {
                        log(&format!("profile: {} on {d}: no estimate: {e}", r.target));
                        None
                    }
                }
            }
            None => None,
        };
        out_rows.push(Row {
            stage: r.target.clone(),
            artifact: Some(a.clone()),
            runtime,
            latency_ms,
            bytes: Some(r.bytes),
            macs,
            top1_agreement: r.top1_agreement,
            note,
            device: estimate.as_ref().map(|e| e.device.clone()),
            estimated_ms: estimate.as_ref().map(|e| e.total_ms),
            estimate: estimate.map(|e| serde_json::to_value(e).unwrap_or_default()),
        });
    }
    for r in &out_rows {
        match r.latency_ms {
            Some(ms) => log(&format!(
                "profile: {} {:.3} ms ({}, median of {runs})",
                r.stage,
                ms,
                r.runtime.as_deref().unwrap_or("")
            )),
            None => log(&format!(
                "profile: {} not measured: {}",
                r.stage,
                r.note.as_deref().unwrap_or("")
            )),
        }
    }
    Ok(out_rows)
}

/// Build every target of `cfg`: load → passes → calibrate (once, cached) → per target: quantize or
/// float16 by its rules → validate → emit → record; then the report and, last, the manifest. Targets
/// build on `jobs` threads (they share calibration statistics and quantized models with the same
/// settings); artifacts and reports do not depend on the schedule.
pub fn build(
    cfg: &LoadedConfig,
    force: bool,
    make_pass: PassFactory,
    backends: &[Box<dyn Backend>],
    quantizer: Option<&dyn Quantizer>,
    jobs: usize,
    log: Log,
) -> Result<Outcome> {
    let out = cfg.output_dir();
    let plan = plan(cfg, backends)?;
    let passes: Vec<Box<dyn Pass>> =
        cfg.config.passes.iter().map(make_pass).collect::<Result<_>>()?;
    if !force {
        if let Some(manifest) = up_to_date(cfg, &out) {
            // Newer than its inputs again, so Make and Ninja (which compare times) see it done.
            let path = out.join("manifest.json");
            std::fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()))
                .map_err(|e| Error::io(&path, e))?;
            let summary = previous_summary(&out);
            return Ok(Outcome {
                up_to_date: true,
                manifest,
                output_dir: out,
                timings: None,
                summary,
                failed: BTreeMap::new(),
            });
        }
    }
    let started = std::time::Instant::now();
    let secs = |t: std::time::Instant| t.elapsed().as_secs_f64();
    let mut timings = Timings::default();
    let (mut model, inputs, validation) = load_inputs(cfg, &plan, log)?;
    let pins: crate::shape::Pins =
        cfg.config.inputs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    crate::shape::infer(&mut model, &pins)?;
    check_validation(cfg, &model, &validation)?;
    let original = model.clone();
    let before = model_stats(&model);
    timings.import = secs(started);
    let t0 = std::time::Instant::now();
    let mut cx = PassContext::default();
    if passes.iter().any(|p| p.needs_calibration()) {
        cx.calibration = Some(Arc::new(pass_calibration(cfg, &model)?));
    }
    run_passes(&mut model, &passes, &mut cx)?;
    timings.passes = secs(t0);
    for n in &cx.notes {
        log(n);
    }
    if let Some((_, u)) = cx.reports.iter().find(|(p, _)| p == "upgrade") {
        log(&format!(
            "upgraded the model from opset {} to {} ({})",
            u["from"],
            u["to"],
            u["rewritten"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        ));
    }
    for w in &cx.warnings {
        log(&format!("warning: {w}"));
    }
    let passes_fidelity = if cx.inexact.is_empty() {
        None
    } else {
        passes_fidelity(cfg, &original, &model, &validation, &cx.inexact, log)?
    };
    let calibrator = if plan.iter().any(|(t, _, _)| t.precision == Precision::Int8) {
        // Full-integer targets also need the values before the activations they split off.
        let preact = plan.iter().any(|(t, _, r)| {
            t.precision == Precision::Int8 && (r.quant.full_integer || r.quant.preactivation_ranges)
        });
        let t0 = std::time::Instant::now();
        let c = Calibrator::new(cfg, &model, &out, &inputs, preact)?;
        timings.calibration = secs(t0);
        Some(c)
    } else {
        None
    };
    let t0 = std::time::Instant::now();
    let measured = plan.iter().any(|(t, _, _)| t.precision != Precision::Fp32);
    let reference = match &validation {
        Some((_, samples, _)) if measured => {
            let input = original.graph.data_input_name().unwrap_or_default();
            Some(crate::accuracy::reference_outputs(&original, &input, samples)?)
        }
        _ => None,
    };
    timings.reference = secs(t0);
    let stages = Stages {
        cfg,
        original,
        model,
        validation,
        reference,
        validated: Mutex::new(BTreeMap::new()),
        calibrator,
        quantizer,
    };
    let shared = SharedQuantized::default();
    let results = parallel(&plan, jobs, &|p| stages.target(p, &shared, &out, log));
    let mut rec = Record::default();
    for r in results {
        rec.add(r?, &mut timings);
    }
    let calibration = stages.calibrator.as_ref().and_then(|c| c.report());
    timings.calibration += calibration.as_ref().map_or(0.0, |c| c.seconds);
    timings.total = secs(started);
    let rows = summary(cfg, &inputs, &rec, &timings);
    let profile = if cfg.config.profile == crate::profile::Mode::Off {
        Vec::new()
    } else {
        let t0 = std::time::Instant::now();
        let input_bytes = rows.first().map(|r| (r.bytes as f64 / r.vs_input.max(1e-12)) as u64);
        let p = profile_rows(&stages, &rows, &out, input_bytes, log)?;
        timings.profile = secs(t0);
        timings.total = secs(started);
        p
    };
    let manifest =
        Manifest { kiln_version: KILN_VERSION.into(), inputs, artifacts: rec.artifacts.clone() };
    let v = cfg.config.validation.as_ref();
    let report = Report {
        config: rel(&cfg.path, &cfg.dir),
        model_path: rel(&cfg.model_path(), &cfg.dir),
        budget: Budget {
            min_top1_agreement: v.and_then(|v| v.min_top1_agreement),
            min_cosine: v.and_then(|v| v.min_cosine),
            max_accuracy_drop: v.and_then(|v| v.max_accuracy_drop),
        },
        model: before,
        optimized: model_stats(&stages.model),
        passes: cx.records,
        targets: rec.by_target,
        quantization: rec.quantization,
        calibration,
        accuracy: rec.accuracy,
        layer_sqnr: rec.layer_sqnr,
        failed: rec.failed.clone(),
        backend: rec.backend,
        timings: timings.clone(),
        pass_reports: cx.reports.iter().cloned().collect(),
        passes_fidelity,
        summary: rows.clone(),
        profile,
    };
    finish(&out, &report, &manifest, &rec.failed)?;
    Ok(Outcome {
        up_to_date: false,
        manifest,
        output_dir: out,
        timings: Some(timings),
        summary: rows,
        failed: rec.failed,
    })
}

/// Write the report, then the manifest (what marks the build complete), then the stamp, unless a target
/// failed (the others were written; without a stamp the next build rebuilds).
fn finish(
    out: &Path,
    report: &Report,
    manifest: &Manifest,
    failed: &BTreeMap<String, String>,
) -> Result<()> {
    let json = |v: &dyn erased::Ser| v.to_json();
    write_atomic(&out.join("report.json"), &json(report))?;
    write_atomic(&out.join("report.html"), crate::html::render(report)?.as_bytes())?;
    write_atomic(&out.join("manifest.json"), &json(manifest))?;
    if !failed.is_empty() {
        // No stamp: the next run rebuilds instead of calling a partial build up to date.
        let _ = std::fs::remove_file(out.join(STAMP));
        return Ok(());
    }
    write_atomic(&out.join(STAMP), build_stamp().as_bytes())
}

mod erased {
    pub trait Ser {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> Vec<u8> {
            let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
            v.push(b'\n');
            v
        }
    }
}
